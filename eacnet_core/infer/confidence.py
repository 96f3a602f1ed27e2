"""Per-pixel confidence and a per-frame score: when not to trust the mask.

**The confidence** of a pixel is the softmax maximum of its logits (divided by the model's
``temperature``, 1.0 unless calibrated: ``Segmenter.temperature``), as uint8: 255 = probability
1.0 of the chosen class. It is the network's own estimate that its chosen class is right. It is
*not* a probability that the pixel is right under conditions the network was not trained for:
in fog or behind a dirty lens the network can stay confident and wrong, which is why the frame
score adds image cues the network is blind to.

**The frame score** (0 = trustworthy .. 1 = not) combines a few anomaly terms (a noisy OR), each
0 inside the range the training frames cover and rising to 1 beyond it (``ScoreReference``):

* the share of pixels whose confidence is under ``low_confidence`` (the network's doubt);
* the image's RMS contrast (fog, haze, a washed-out lens lower it);
* its sharpness, the mean absolute Laplacian of the grey image at a fixed scale (defocus,
  motion blur and fog lower it);
* its grain: the Laplacian at full resolution over the Laplacian at half resolution (sensor
  noise lives at the finest scale and raises it; detail does not);
* its blockiness: the mean grey-level step across the 8-pixel grid of JPEG/MPEG blocks over
  the mean step elsewhere (about 1 for a clean frame, 1.6+ for JPEG quality 15);
* its exposure: the share of near-black and near-white pixels (night, tunnels, glare, a
  lens cap) and the share of the frame with no texture at all (a covered part of the lens).

The clean edges are the 0.5th/99.5th percentiles on CamVid's train split (``eacnet
bench-confidence --reference-frames`` measures them; docs/RESULTS.md); val serves to measure
the score. A camera far from CamVid (another sensor, another country, a sky-heavy view) should
measure its own clean ranges the same way before trusting the alarm.

``ScoreSmoother`` averages the score over a short window and raises an alarm with
hysteresis: on above ``warn_above``, off again only below ``clear_below``, so a score near
the threshold does not make the alarm flicker.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass
from typing import Optional

import cv2
import numpy as np
import torch

#: The grey image's size for the image cues: fixed, so sharpness means the same at any camera
#: resolution, and small, so the cues cost well under a millisecond.
CUE_HW = (180, 240)
#: Grain and blockiness look at the full-resolution pixels: of a central crop at most this
#: big (aligned to the 8-pixel block grid), so their cost does not grow with the camera.
FINE_CROP = 256


def confidence_u8(probability: np.ndarray) -> np.ndarray:
    """Probabilities in [0, 1] (float) -> uint8, 255 = 1.0, rounded to nearest."""
    return np.floor(probability * 255.0 + 0.5).clip(0, 255).astype(np.uint8)


def ids_and_confidence(logits: np.ndarray | torch.Tensor, temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(1, C, h, w) logits -> uint8 class ids (the first maximum, as argmax) and uint8
    confidence, the softmax maximum of ``logits / temperature`` (255 = 1.0).

    The maximum of a softmax needs no normalised planes: it is 1 / sum_c exp((l_c - max) / T).
    On the CPU this walks the C contiguous planes of NCHW memory once with a running maximum
    (as ``masks.argmax_classes``) and once for the sum, single-threaded on purpose (see
    there); channels-last tensors and GPUs use torch."""
    if isinstance(logits, torch.Tensor):
        x = logits[0]
        if x.device.type != "cpu" or x.stride(0) == 1:
            probability = torch.softmax(x.float() / temperature, 0).amax(0)
            return x.argmax(0).to(torch.uint8).cpu().numpy(), confidence_tensor(probability).cpu().numpy()
        planes = x.float().numpy()
    else:
        planes = logits[0]
    ids, best = argmax_planes(planes)
    total = np.zeros(best.shape, np.float32)
    shifted = np.empty(best.shape, np.float32)
    scale = np.float32(1.0 / temperature)
    for c in range(planes.shape[0]):
        np.subtract(planes[c], best, out=shifted)
        if scale != 1.0:
            shifted *= scale
        total += cv2.exp(shifted)  # OpenCV's vectorised exp: ~4x numpy's on this CPU
    return ids, confidence_u8(1.0 / total)


def argmax_planes(planes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(C, h, w) class planes -> (uint8 ids of the first maximum, as argmax; the float32
    maximum), walking the C contiguous planes once with a running maximum: the ids in a
    fraction of a strided argmax's time on NCHW memory (``masks.argmax_classes``)."""
    best = planes[0].astype(np.float32, copy=True)
    ids = np.zeros(best.shape, np.uint8)
    greater = np.empty(best.shape, bool)
    for c in range(1, planes.shape[0]):
        np.greater(planes[c], best, out=greater)
        np.copyto(ids, np.uint8(c), where=greater)
        np.maximum(best, planes[c], out=best)
    return ids, best


def confidence_tensor(probability: torch.Tensor) -> torch.Tensor:
    """``confidence_u8`` for tensors on any device (the device path, ``device_frame``)."""
    return torch.floor(probability.float() * 255.0 + 0.5).clamp_(0, 255).to(torch.uint8)


# ---------------------------------------------------------------------------- the frame score

@dataclass(frozen=True)
class ScoreReference:
    """Where each cue's anomaly is 0 (the edge of the clean range) and how far beyond it the
    anomaly reaches 1. The edges were set from the 0.5th/99.5th percentiles of 80 CamVid train
    frames (grain and blockiness then on the whole frame, not the crop); over all 367 train
    frames (`eacnet bench-confidence --reference-frames 367`, docs/RESULTS.md) those percentiles
    are contrast 0.184, sharpness 0.039, grain 1.20, blockiness 1.12, clipped 0.327, flat 0.254.
    Contrast and sharpness are ramped on a log scale, the rest linearly."""

    low_confidence: float = 0.5  # a pixel counts as doubtful under this probability
    # share of doubtful pixels: 0 up to here, 1 from doubt_bad. 80 train frames gave at most 0.034
    # with the shipped eacnet_dab (p99.5 0.031), but it trained on them: the margin is for frames
    # a network did not train on, which it doubts more.
    doubt_clean: float = 0.10
    doubt_bad: float = 0.40
    contrast_clean: float = 0.20  # RMS contrast of the grey image (0..1): 0 above this ...
    contrast_factor: float = 2.0  # ... 1 at contrast_clean / factor
    sharp_low: float = 0.037  # mean |Laplacian| (grey 0..1) at CUE_HW: 0 above this ...
    sharp_factor: float = 2.0  # ... 1 at sharp_low / factor
    grain_clean: float = 1.21  # full-resolution / half-resolution Laplacian: 0 up to here ...
    grain_bad: float = 1.6  # ... 1 from here
    blocky_clean: float = 1.09  # step across the 8-pixel grid / step elsewhere: 0 up to here ...
    blocky_bad: float = 1.4  # ... 1 from here
    clipped_clean: float = 0.33  # share of pixels under 0.04 or over 0.96: 0 up to here ...
    clipped_bad: float = 0.60  # ... 1 from here
    flat_clean: float = 0.25  # share of 6x6 blocks (at CUE_HW) with no texture: 0 up to here ...
    flat_bad: float = 0.50  # ... 1 from here

    def to_dict(self) -> dict:
        return asdict(self)


CAMVID_REFERENCE = ScoreReference()


def image_cues(bgr: np.ndarray) -> dict[str, float]:
    """Cheap image-quality cues of a BGR uint8 frame (about a millisecond): contrast,
    sharpness, clipped and flat shares at ``CUE_HW``; grain and blockiness on a full-resolution
    crop (see the module docstring)."""
    full = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    grey = cv2.resize(full, (CUE_HW[1], CUE_HW[0]), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    laplacian = np.abs(cv2.Laplacian(grey, cv2.CV_32F, ksize=1))
    block_hw = (CUE_HW[1] // 6, CUE_HW[0] // 6)  # 6x6-pixel blocks: their mean and mean square
    mean = cv2.resize(grey, block_hw, interpolation=cv2.INTER_AREA)
    variance = cv2.resize(grey * grey, block_hw, interpolation=cv2.INTER_AREA) - mean * mean
    return {"contrast": float(grey.std()), "sharpness": float(laplacian.mean()),
            "clipped": float(np.mean((grey < 0.04) | (grey > 0.96))), "flat": float(np.mean(variance < 0.004 ** 2)),
            **_fine_cues(full)}


def _fine_cues(full: np.ndarray) -> dict[str, float]:
    """Grain and blockiness of a full-resolution grey image (uint8), on a central crop of at
    most ``FINE_CROP`` pixels whose corner sits on the 8-pixel block grid."""
    height, width = full.shape
    top, left = (max(0, height - FINE_CROP) // 2) // 8 * 8, (max(0, width - FINE_CROP) // 2) // 8 * 8
    crop = full[top:top + FINE_CROP, left:left + FINE_CROP].astype(np.float32) / 255.0
    if min(crop.shape) < 16:
        return {"grain": 1.0, "blocky": 1.0}
    fine = float(np.abs(cv2.Laplacian(crop, cv2.CV_32F, ksize=1)).mean())
    half = cv2.resize(crop, (crop.shape[1] // 2, crop.shape[0] // 2), interpolation=cv2.INTER_AREA)
    coarse = float(np.abs(cv2.Laplacian(half, cv2.CV_32F, ksize=1)).mean())
    dx, dy = np.abs(np.diff(crop, axis=1)), np.abs(np.diff(crop, axis=0))
    blocky = 0.5 * (dx[:, 7::8].mean() / (dx.mean() + 1e-6) + dy[7::8].mean() / (dy.mean() + 1e-6))
    return {"grain": fine / (coarse + 1e-6), "blocky": float(blocky)}


def doubt(confidence: np.ndarray, reference: ScoreReference = CAMVID_REFERENCE) -> float:
    """Share of pixels whose confidence (uint8) is under ``reference.low_confidence``."""
    return float(np.mean(confidence < reference.low_confidence * 255.0))


def _ramp(value: float, clean: float, bad: float) -> float:
    """0 at ``clean``, 1 at ``bad`` (either side), linear between."""
    return float(np.clip((value - clean) / (bad - clean), 0.0, 1.0))


def cue_anomalies(cues: dict[str, float], doubtful: float,
                  reference: ScoreReference = CAMVID_REFERENCE) -> dict[str, float]:
    """Each term of the frame score in [0, 1] (0: inside the clean range)."""
    r = reference
    log = np.log
    return {
        "doubt": _ramp(doubtful, r.doubt_clean, r.doubt_bad),
        "contrast": _ramp(-log(max(cues["contrast"], 1e-6)), -log(r.contrast_clean),
                          -log(r.contrast_clean / r.contrast_factor)),
        "blur": _ramp(-log(max(cues["sharpness"], 1e-6)), -log(r.sharp_low), -log(r.sharp_low / r.sharp_factor)),
        "grain": _ramp(cues["grain"], r.grain_clean, r.grain_bad),
        "blocky": _ramp(cues["blocky"], r.blocky_clean, r.blocky_bad),
        "clipped": _ramp(cues["clipped"], r.clipped_clean, r.clipped_bad),
        "flat": _ramp(cues["flat"], r.flat_clean, r.flat_bad),
    }


def frame_score(confidence: np.ndarray, bgr: np.ndarray, reference: ScoreReference = CAMVID_REFERENCE) -> float:
    """One frame's score, 0 (trustworthy) .. 1 (not): the anomaly terms combined as a noisy
    OR, 1 - prod(1 - a_i), so two moderate anomalies (fog: low contrast *and* blur) add up,
    with one more term, a tenth of the mean doubt (1 - mean confidence), so frames inside
    every clean range still rank by the network's own uncertainty."""
    terms = cue_anomalies(image_cues(bgr), doubt(confidence, reference), reference)
    trust = 1.0 - 0.1 * (1.0 - float(confidence.mean()) / 255.0)
    for value in terms.values():
        trust *= 1.0 - value
    return float(np.clip(1.0 - trust, 0.0, 1.0))


class ScoreSmoother:
    """The mean of the last ``window`` frame scores and an alarm with hysteresis: raised
    when the mean exceeds ``warn_above``, cleared when it falls under ``clear_below``."""

    def __init__(self, window: int = 10, warn_above: float = 0.5, clear_below: float = 0.35):
        if window < 1:
            raise ValueError(f"score window must be >= 1 frame, got {window}")
        for name, value in (("warn_above", warn_above), ("clear_below", clear_below)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if clear_below > warn_above:
            raise ValueError(f"clear_below ({clear_below}) must not exceed warn_above ({warn_above})")
        self.warn_above, self.clear_below = warn_above, clear_below
        self._scores: deque[float] = deque(maxlen=window)
        self.alarm = False

    def reconfigured(self, window: int, warn_above: float, clear_below: float) -> ScoreSmoother:
        """A smoother with new settings that keeps the last ``window`` scores seen here, and
        the alarm while their mean has not fallen under the new ``clear_below``."""
        smoother = ScoreSmoother(window, warn_above, clear_below)
        for score in list(self._scores)[-window:]:
            smoother.update(score)
        smoother.alarm = self.alarm and smoother.value is not None and smoother.value >= clear_below
        return smoother

    @property
    def value(self) -> Optional[float]:
        """The smoothed score; None before the first frame."""
        return float(np.mean(self._scores)) if self._scores else None

    def update(self, score: float) -> float:
        """Add one frame's score; returns the smoothed score (``alarm`` updated)."""
        self._scores.append(float(score))
        smoothed = self.value
        if self.alarm and smoothed < self.clear_below:
            self.alarm = False
        elif not self.alarm and smoothed > self.warn_above:
            self.alarm = True
        return smoothed
