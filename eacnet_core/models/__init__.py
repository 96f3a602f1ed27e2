"""The paper's six networks, built by registry name."""

from .attention import SelfCalibrationAttention
from .registry import BY_BACKBONE, MODELS, build_model, model_for

__all__ = ["BY_BACKBONE", "MODELS", "SelfCalibrationAttention", "build_model", "model_for"]
