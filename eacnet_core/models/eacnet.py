"""EACNet: a single-branch backbone whose coarse logits are refined by self-calibration
attention before the final upsample. Parameters live under ``backbone.*`` and
``attention.*`` so a trained backbone checkpoint loads straight into ``backbone``."""

from __future__ import annotations

from torch import Tensor, nn

from .attention import SelfCalibrationAttention


class EACNet(nn.Module):
    def __init__(self, backbone: nn.Module, pool: int = 2):
        super().__init__()
        self.num_classes = backbone.num_classes
        self.backbone = backbone
        self.attention = SelfCalibrationAttention(self.num_classes, pool=pool)

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone(x, refine=self.attention)
