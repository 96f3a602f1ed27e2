"""Model registry: a name is all a checkpoint, the CLI or the ROS node needs to build a net."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .dabnet import DABNet
from .eacnet import EACNet
from .erfnet import ERFNet, ERFNetEncoderSeg

MODELS: dict[str, Callable[..., nn.Module]] = {
    "erfnet": lambda num_classes: ERFNet(num_classes),
    "erfnet_enc": lambda num_classes: ERFNetEncoderSeg(num_classes),
    "eacnet_erf": lambda num_classes, pool=2: EACNet(ERFNetEncoderSeg(num_classes), pool=pool),
    "eacnet_erf_nl": lambda num_classes: EACNet(ERFNetEncoderSeg(num_classes), pool=1),
    "dabnet": lambda num_classes: DABNet(num_classes),
    "eacnet_dab": lambda num_classes, pool=2: EACNet(DABNet(num_classes), pool=pool),
}

#: (backbone, attention) as the ROS node's parameters name them -> registry name.
BY_BACKBONE: dict[tuple[str, str], str] = {
    ("erfnet", "eac"): "eacnet_erf",
    ("erfnet", "nonlocal"): "eacnet_erf_nl",
    ("erfnet", "none"): "erfnet_enc",
    ("dabnet", "eac"): "eacnet_dab",
    ("dabnet", "none"): "dabnet",
}


def build_model(name: str, num_classes: int = 19, **kwargs) -> nn.Module:
    """Build a registered network; unknown names list the known ones."""
    try:
        builder = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODELS)}") from None
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return builder(num_classes, **kwargs)


def model_for(backbone: str, attention: str) -> str:
    """Registry name for a backbone/attention pair, with a message listing valid pairs."""
    try:
        return BY_BACKBONE[(backbone, attention)]
    except KeyError:
        pairs = ", ".join(f"{b}+{a}" for b, a in BY_BACKBONE)
        raise ValueError(f"no model for backbone={backbone!r} attention={attention!r}; valid: {pairs}") from None
