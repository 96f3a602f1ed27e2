"""Image/label transforms for training and evaluation.

Normalisation is the one step that MUST be identical to the inference path
(``inference.Segmenter.preprocess``): BGR uint8 from cv2 -> RGB float32 -> subtract
the RGB mean, multiply by the reciprocal std (0..255 units) -> CHW. A model trained on
anything else would see shifted inputs on the robot. ``normalize_bgr`` performs exactly
those float operations in that order, so the two paths agree bit for bit.

Geometric augmentation (paper, section 4 of docs/REFERENCE.md): random scale from a
fixed set, random horizontal flip, random crop padded with the ignore label. Scaling
and flipping happen on uint8 (cheap, and what the reference does); the crop pads the
*normalised* image with 0, i.e. with the dataset's mean colour, as the reference does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

PAPER_SCALES: tuple[float, ...] = (0.75, 1.0, 1.25, 1.5, 1.75, 2.0)


def normalize_bgr(bgr: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """BGR uint8 (H, W, 3) -> normalised RGB float32 (3, H, W), contiguous.

    Same operations, same order and same dtypes as ``Segmenter.preprocess`` (which
    multiplies by a float32 reciprocal rather than dividing), so results are identical."""
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32)
    rgb -= np.asarray(mean, dtype=np.float32)
    rgb *= 1.0 / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))


def resize_pair(bgr: np.ndarray, label: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize image (bilinear) and label (nearest: class ids must never be blended)."""
    image = cv2.resize(bgr, (width, height), interpolation=cv2.INTER_LINEAR)
    label = cv2.resize(label, (width, height), interpolation=cv2.INTER_NEAREST)
    return image, label


def pad_and_crop(image: np.ndarray, label: np.ndarray, crop_hw: tuple[int, int], ignore_index: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random crop of a normalised CHW image and its HW label to ``crop_hw``.

    Sides shorter than the crop are padded at the bottom/right first (image with 0 = the
    mean colour after normalisation, label with ``ignore_index`` so padding never
    contributes to the loss)."""
    ch, cw = crop_hw
    h, w = label.shape
    pad_h, pad_w = max(ch - h, 0), max(cw - w, 0)
    if pad_h or pad_w:
        image = np.pad(image, ((0, 0), (0, pad_h), (0, pad_w)), constant_values=0.0)
        label = np.pad(label, ((0, pad_h), (0, pad_w)), constant_values=ignore_index)
        h, w = label.shape
    top = int(rng.integers(0, h - ch + 1))
    left = int(rng.integers(0, w - cw + 1))
    image = np.ascontiguousarray(image[:, top:top + ch, left:left + cw])
    label = np.ascontiguousarray(label[top:top + ch, left:left + cw])
    return image, label


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
        image = normalize_bgr(bgr, self.mean, self.std)
        return pad_and_crop(image, label, self.crop_hw, self.ignore_index, rng)


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


def parse_hw(text: str) -> tuple[int, int]:
    """'360x480' (H x W) -> (360, 480); '0' or '' -> (0, 0) meaning "not set"."""
    text = (text or "").strip().lower()
    if text in ("", "0"):
        return (0, 0)
    parts = text.split("x")
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"expected a size as HxW (e.g. 360x480), got {text!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {text!r}")
    return h, w
