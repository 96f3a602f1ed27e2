"""Image/label transforms for training and evaluation.

Normalisation is the one step that MUST be identical to the inference path
(``Segmenter.preprocess``): BGR uint8 from cv2 -> RGB float32 -> subtract
the RGB mean, multiply by the reciprocal std (0..255 units) -> CHW. A model trained on
anything else would see shifted inputs on the robot. ``normalize_bgr`` performs exactly
those float operations in that order, so the two paths agree bit for bit.

Geometric augmentation (the paper's section 4, Experiments): random scale from a
fixed set, random horizontal flip, random crop padded with the ignore label. Scaling
and flipping happen on uint8 (cheap, and what the reference does); the crop pads the
*normalised* image with 0, i.e. with the dataset's mean colour, as the reference does.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

PAPER_SCALES: tuple[float, ...] = (0.75, 1.0, 1.25, 1.5, 1.75, 2.0)


def normalisation_lut(mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(v - mean) * (1 / std) in float32 for every uint8 value v, per RGB channel: one
    cv2.LUT pass normalises an image. Shared by training and the Segmenter, so both feed
    the network bit-identical tensors."""
    return _lut(tuple(float(m) for m in mean), tuple(float(s) for s in std))


@functools.lru_cache(maxsize=8)
def _lut(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    mean32, inv_std32 = np.asarray(mean, dtype=np.float32), 1.0 / np.asarray(std, dtype=np.float32)
    return ((np.arange(256, dtype=np.float32)[:, None] - mean32) * inv_std32).reshape(256, 1, 3)


def normalize_bgr(bgr: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """BGR uint8 (H, W, 3) -> normalised RGB float32 (3, H, W), contiguous.

    Same float32 arithmetic as ``Segmenter.preprocess`` ((v - mean) times the float32
    reciprocal of std), done through a 256-entry lookup table as it does, so the results
    are bit-identical (test_transforms checks it)."""
    rgb = cv2.LUT(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), normalisation_lut(mean, std))
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))


def resize_pair(bgr: np.ndarray, label: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize image (bilinear) and label (nearest: class ids must never be blended)."""
    image = cv2.resize(bgr, (width, height), interpolation=cv2.INTER_LINEAR)
    label = cv2.resize(label, (width, height), interpolation=cv2.INTER_NEAREST)
    return image, label


def random_crop_box(height: int, width: int, crop_hw: tuple[int, int], rng: np.random.Generator) -> tuple[int, int]:
    """Top-left corner of a random ``crop_hw`` window in the image padded (bottom/right)
    up to at least the crop size."""
    ch, cw = crop_hw
    top = int(rng.integers(0, max(height, ch) - ch + 1))
    left = int(rng.integers(0, max(width, cw) - cw + 1))
    return top, left


def crop_with_fill(array: np.ndarray, top: int, left: int, crop_hw: tuple[int, int], fill) -> np.ndarray:
    """``array[top:top+h, left:left+w]`` (HW, or HWC: trailing dims are kept), filled with
    ``fill`` where the window extends past the bottom/right edge."""
    ch, cw = crop_hw
    window = array[top:top + ch, left:left + cw]
    if window.shape[:2] == (ch, cw):
        return np.ascontiguousarray(window)
    out = np.full((ch, cw) + array.shape[2:], fill, dtype=array.dtype)
    out[: window.shape[0], : window.shape[1]] = window
    return out


@dataclass(frozen=True)
class TrainTransform:
    """Paper augmentation: random scale, horizontal flip, normalise, pad + random crop."""

    crop_hw: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    ignore_index: int
    scales: tuple[float, ...] = PAPER_SCALES
    flip: bool = True

    def __post_init__(self):
        if min(self.crop_hw) < 1:
            raise ValueError(f"crop size must be positive, got {self.crop_hw[0]}x{self.crop_hw[1]} (HxW)")
        if not self.scales or min(self.scales) <= 0:
            raise ValueError(f"scales must be positive numbers, got {self.scales}")

    def __call__(self, bgr: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(BGR uint8 HxWx3, label HxW) -> (float32 3xhxw, label hxw) with h, w = crop size."""
        scale = float(self.scales[int(rng.integers(0, len(self.scales)))])
        if scale != 1.0:
            h, w = label.shape
            bgr, label = resize_pair(bgr, label, max(1, round(h * scale)), max(1, round(w * scale)))
        if self.flip and rng.random() < 0.5:
            bgr, label = cv2.flip(bgr, 1), cv2.flip(label, 1)
        # Crop first, normalise the window only (normalisation is per pixel, so this equals
        # normalise-then-crop, at a quarter of the work for a 2x-scaled image).
        top, left = random_crop_box(label.shape[0], label.shape[1], self.crop_hw, rng)
        h, w = min(label.shape[0] - top, self.crop_hw[0]), min(label.shape[1] - left, self.crop_hw[1])
        image = np.zeros((3,) + tuple(self.crop_hw), dtype=np.float32)  # 0 = the mean colour after normalising
        image[:, :h, :w] = normalize_bgr(np.ascontiguousarray(bgr[top:top + h, left:left + w]), self.mean, self.std)
        return image, crop_with_fill(label, top, left, self.crop_hw, self.ignore_index)


@dataclass(frozen=True)
class EvalTransform:
    """No augmentation. With ``size_hw`` the image (not the label) is resized to the
    inference size, as the Segmenter does; the metric then runs at full label resolution."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    size_hw: tuple[int, int] | None = None

    def __call__(self, bgr: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        if self.size_hw and tuple(bgr.shape[:2]) != tuple(self.size_hw):
            bgr = cv2.resize(bgr, (self.size_hw[1], self.size_hw[0]), interpolation=cv2.INTER_LINEAR)
        return normalize_bgr(bgr, self.mean, self.std), label
