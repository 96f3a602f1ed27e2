"""Pieces shared by every network: input padding and the final upsample.

All our networks downsample by 8 with stride-2 layers whose branches (conv and
max-pool) only agree on even sizes, so inputs whose sides are not multiples of 8
are zero-padded at the bottom/right and the logits cropped back. Zero after
normalisation is the dataset mean colour, the least surprising filler.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import torch.nn.functional as F
from torch import Tensor

OUTPUT_STRIDE = 8

#: Optional hook applied to the coarse (1/8) logits before the final upsample;
#: EACNet passes its self-calibration attention here.
Refine = Optional[Callable[[Tensor], Tensor]]


def pad_to_stride(x: Tensor, stride: int = OUTPUT_STRIDE) -> Tensor:
    """Zero-pad H and W up to the next multiple of ``stride`` (no-op when aligned)."""
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % stride, (-w) % stride
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h))
    return x


def upsample_and_crop(logits: Tensor, padded_hw: tuple[int, int], out_hw: tuple[int, int]) -> Tensor:
    """Bilinear (align_corners=False, as the reference code) to the padded size, then crop."""
    if tuple(logits.shape[-2:]) != tuple(padded_hw):
        logits = F.interpolate(logits, size=padded_hw, mode="bilinear", align_corners=False)
    return logits[..., : out_hw[0], : out_hw[1]]
