"""Training losses: OHEM cross-entropy, plain and class-weighted cross-entropy.

OHEM follows the common "probability" form (the OhemCrossEntropy of the DABNet / ERFNet training code):
per valid pixel take the softmax probability of its true class; threshold =
max(thresh, the min_kept-th smallest of those probabilities); keep pixels whose
probability is at or below the threshold (``<=`` as the reference code, so at least
min_kept pixels survive); mean CE over the kept pixels. With fewer than min_kept valid
pixels every valid pixel is kept. Selection happens over the whole batch.

All losses return 0 (with a graph) when a batch has no valid pixel, instead of the NaN
``F.cross_entropy`` gives, so an all-void random crop never trips the non-finite check.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

LOSSES = ("ohem", "ce", "weighted-ce")
WEIGHTINGS = ("enet", "median")


def masked_cross_entropy(logits: Tensor, target: Tensor, ignore_index: int,
                         weight: Optional[Tensor] = None) -> Tensor:
    """``F.cross_entropy(..., reduction='mean')`` semantics (weighted mean over valid
    pixels), but 0 instead of NaN when no pixel is valid. No value is read back to the
    host (the training step runs without device syncs, and compiles to one graph)."""
    losses = F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index, reduction="none")
    valid = target != ignore_index
    if weight is None:
        denominator = valid.sum()
    else:
        denominator = (weight[target.clamp(0, logits.shape[1] - 1)] * valid).sum()
    # Ignored pixels contribute 0 to the sum: with no valid pixel this is 0 / tiny = 0, with a graph.
    return losses.sum() / denominator.clamp_min(torch.finfo(losses.dtype).tiny)


class CrossEntropy(nn.Module):
    """Plain or class-weighted cross-entropy with an ignore index."""

    def __init__(self, ignore_index: int, weight: Optional[Tensor] = None):
        super().__init__()
        self.ignore_index = ignore_index
        self.register_buffer("weight", weight.float() if weight is not None else None)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return masked_cross_entropy(logits, target, self.ignore_index, self.weight)


class OhemCrossEntropy(nn.Module):
    """Online hard example mining cross-entropy (probability threshold form)."""

    def __init__(self, ignore_index: int, thresh: float = 0.7, min_kept: int = 100_000,
                 weight: Optional[Tensor] = None):
        super().__init__()
        if not 0.0 < thresh <= 1.0:
            raise ValueError(f"OHEM threshold must be in (0, 1], got {thresh}")
        if min_kept < 0:
            raise ValueError(f"OHEM min_kept must be >= 0, got {min_kept}")
        self.ignore_index = ignore_index
        self.thresh = float(thresh)
        self.min_kept = int(min_kept)
        self.register_buffer("weight", weight.float() if weight is not None else None)

    def kept_mask(self, logits: Tensor, target: Tensor) -> Tensor:
        """Boolean mask (B, H, W) of the pixels that enter the loss.

        Without reading the device: invalid pixels get a probability of 2 (above any real
        one), so the min_kept-th smallest of all pixels is the min_kept-th smallest valid
        probability when there are that many valid pixels, and 2 (keep every valid pixel)
        when there are fewer, which is the reference's rule in fixed shapes."""
        with torch.no_grad():
            valid = target != self.ignore_index
            prob = torch.softmax(logits.float(), dim=1)
            true_prob = prob.gather(1, target.clamp(0, logits.shape[1] - 1).unsqueeze(1)).squeeze(1)
            if self.min_kept == 0:
                return valid & (true_prob <= self.thresh)
            ranked = torch.where(valid, true_prob, torch.full_like(true_prob, 2.0)).flatten()
            kth = torch.kthvalue(ranked, min(self.min_kept, ranked.numel())).values
            return valid & (true_prob <= kth.clamp_min(self.thresh))

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        kept = self.kept_mask(logits, target)
        hard_target = torch.where(kept, target, torch.full_like(target, self.ignore_index))
        return masked_cross_entropy(logits, hard_target, self.ignore_index, self.weight)


def class_weights(counts: np.ndarray, image_pixels: Optional[np.ndarray] = None, method: str = "enet",
                  c: float = 1.02) -> np.ndarray:
    """Class weights from training-label statistics.

    - ``enet``: w = 1 / ln(c + p), p = class pixels / all valid pixels (ENet; DABNet uses
      c = 1.10). Bounded by 1 / ln(c), so absent classes get the largest weight, not inf.
    - ``median``: SegNet's median-frequency balancing, w = median(f) / f with f = class
      pixels / valid pixels of the images containing the class (needs ``image_pixels``).
      Absent classes get weight 0 (they cannot be learnt from these labels anyway)."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.sum() <= 0:
        raise ValueError("no labelled pixels in the training labels: cannot compute class weights")
    if method == "enet":
        if c <= 1.0:
            raise ValueError(f"ENet weighting needs c > 1 (1/ln(c + p) must stay finite), got {c}")
        return 1.0 / np.log(c + counts / counts.sum())
    if method == "median":
        if image_pixels is None:
            raise ValueError("median-frequency weights need the pixel totals of the images holding each class")
        pixels = np.asarray(image_pixels, dtype=np.float64)
        freq = np.divide(counts, pixels, out=np.zeros_like(counts), where=pixels > 0)
        present = freq > 0
        weights = np.zeros_like(freq)
        weights[present] = np.median(freq[present]) / freq[present]
        return weights
    raise ValueError(f"unknown class weighting {method!r}; known: {', '.join(WEIGHTINGS)}")


def build_criterion(kind: str, ignore_index: int, weight: Optional[Tensor] = None, ohem_thresh: float = 0.7,
                    ohem_min_kept: int = 100_000) -> nn.Module:
    """``ohem`` (optionally weighted when ``weight`` is given), ``ce`` or ``weighted-ce``."""
    if kind == "ohem":
        return OhemCrossEntropy(ignore_index, ohem_thresh, ohem_min_kept, weight)
    if kind == "ce":
        return CrossEntropy(ignore_index)
    if kind == "weighted-ce":
        if weight is None:
            raise ValueError("weighted-ce needs class weights")
        return CrossEntropy(ignore_index, weight)
    raise ValueError(f"unknown loss {kind!r}; known: {', '.join(LOSSES)}")
