"""Class masks from logits, and the checks and colours around them; pure functions, no model.

The rules every path shares: the argmax at the network's size then a nearest-neighbour resize
to the image's (``mask_at_size``: ``eacnet eval`` scores masks made by it, so its mIoU is the
mIoU of what the Segmenter and the node publish), the input check, and the colour mask and
overlay made from a dataset's palette (``Palette``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import cv2
import numpy as np
import torch

from eacnet_core.infer.confidence import argmax_planes


class Palette:
    """A dataset's colours as BGR lookup tables: the colour mask and the overlay of a mask."""

    def __init__(self, palette_rgb: np.ndarray):
        self.bgr = np.ascontiguousarray(palette_rgb[:, ::-1])
        self._lut = np.zeros((256, 1, 3), np.uint8)  # ids without a colour stay black
        self._lut[:min(len(self.bgr), 256), 0] = self.bgr[:256]

    def colorize(self, mask: np.ndarray) -> np.ndarray:
        """BGR colour mask; ids outside the palette (e.g. ignore) are black."""
        if mask.dtype == np.uint8 and mask.ndim == 2:  # the node's case: one table lookup per pixel
            # applyColorMap with a user table is that lookup in one pass: 0.08 ms at 480x360
            # against 0.73 ms for merge + LUT (same bytes), which kept the stages outside the
            # network above 5% of a bf16 forward pass.
            return cv2.applyColorMap(mask, self._lut)
        palette = self.bgr
        if mask.max(initial=0) >= len(palette):
            palette = np.concatenate([palette, np.zeros((256 - len(palette), 3), np.uint8)])
        return palette[mask]

    def overlay(self, bgr: np.ndarray, mask: np.ndarray, alpha: float = 0.5,
                color_mask: Optional[np.ndarray] = None) -> np.ndarray:
        """alpha * colour mask + (1 - alpha) * image, BGR uint8."""
        check_alpha(alpha)
        colours = self.colorize(mask) if color_mask is None else color_mask
        return cv2.addWeighted(colours, alpha, as_bgr(bgr), 1.0 - alpha, 0.0)


def check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay alpha must be in [0, 1], got {alpha}")


def wanted_outputs(wanted: Optional[Sequence[Sequence[bool]]], count: int) -> list[tuple[bool, bool, bool]]:
    """(colour, overlay, confidence) per image from ``segment_frames``' ``wanted`` (pairs or
    triples; None: none of them), checked against the number of images."""
    if wanted is None:
        return [(False, False, False)] * count
    wanted = list(wanted)
    if len(wanted) != count:
        raise ValueError(f"{len(wanted)} output choices for {count} images")
    out = []
    for want in wanted:
        if len(want) not in (2, 3):
            raise ValueError(f"an output choice is (colour, overlay) or (colour, overlay, confidence); got {want!r}")
        out.append((bool(want[0]), bool(want[1]), bool(want[2]) if len(want) == 3 else False))
    return out


def mask_at_size(logits: np.ndarray | torch.Tensor, size_hw: tuple[int, int]) -> np.ndarray:
    """(1, C, h, w) logits -> uint8 (H, W) class ids at ``size_hw``: the argmax at the network's
    size, then a nearest-neighbour resize. The one home of this rule: ``eacnet eval`` scores
    masks made by it, so its mIoU is the mIoU of what the Segmenter and the node publish."""
    return restore_size(argmax_classes(logits), size_hw)


def argmax_classes(logits: np.ndarray | torch.Tensor) -> np.ndarray:
    """uint8 class id per pixel of (1, C, h, w) logits; the first maximum wins, as in argmax.

    On CPU, argmax over the channel axis of NCHW memory walks it with a stride of h*w and
    was the slowest step after the forward pass (50 ms at 480x360 and 236 ms at 1280x720,
    11 classes, one thread, `eacnet bench-pipeline`). A running maximum over the C contiguous
    planes gives the same ids in 1.5 ms / 11 ms, in single-threaded numpy on purpose: a loop
    of small multi-threaded torch ops slowed down 7x when other processes loaded the CPU.
    Channels-last memory and GPUs keep torch's argmax, fast there."""
    if isinstance(logits, torch.Tensor):
        x = logits[0]
        if x.device.type != "cpu" or x.stride(0) == 1:
            return x.argmax(0).to(torch.uint8).cpu().numpy()
        planes = x.float().numpy()
    else:
        planes = logits[0]
    return argmax_planes(planes)[0]


def stack_batches(batches: Sequence[np.ndarray]) -> np.ndarray:
    """Preprocessed (1, 3, h, w) frames -> one (N, 3, h, w) batch with the channels-last
    memory ``preprocess`` gives, so the torch path makes no layout copy for it either."""
    if len(batches) == 1:
        return batches[0]
    return np.stack([b[0].transpose(1, 2, 0) for b in batches]).transpose(0, 3, 1, 2)


def restore_size(mask: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of the class mask to the input image's size.

    Chosen over "bilinear-upsample the logits, then argmax" by measurement (erfnet_enc on
    30 CamVid val images, inference at 320x240 and 240x180, masks at 480x360): the same
    mIoU to 0.02 points, 99.4% identical pixels, at 1-2 ms instead of 28 ms per frame
    (one uint8 resize instead of C float planes). Details in docs/RESULTS.md."""
    if mask.shape == tuple(size_hw):
        return mask
    return cv2.resize(mask, (size_hw[1], size_hw[0]), interpolation=cv2.INTER_NEAREST)


def check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"expected a BGR uint8 image of shape (H, W, 3), got a {desc}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"empty image of shape {image.shape}")


def as_bgr(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image
