"""Losses against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from eacnet_core.train.losses import (
    CrossEntropy,
    OhemCrossEntropy,
    build_criterion,
    class_weights,
    masked_cross_entropy,
)

IGNORE = 255


def _two_class_logits(probs: list[float]) -> torch.Tensor:
    """(1, 2, 1, N) logits whose softmax probability of class 0 is exactly ``probs``."""
    p = torch.tensor(probs, dtype=torch.float64)
    return torch.stack([p.log(), (1 - p).log()])[None, :, None, :].float().requires_grad_(True)


# true-class probabilities of four valid pixels, then one ignored pixel
PROBS = [0.9, 0.6, 0.3, 0.8, 0.05]
TARGET = torch.tensor([[[0, 0, 0, 0, IGNORE]]])


@pytest.mark.parametrize("min_kept, kept_probs", [
    (2, [0.6, 0.3]),  # 2nd smallest prob 0.6 < 0.7: threshold 0.7 keeps {0.6, 0.3}
    (3, [0.6, 0.3, 0.8]),  # 3rd smallest 0.8 > 0.7 becomes the threshold: keeps 0.8 too (<=)
    (4, [0.9, 0.6, 0.3, 0.8]),  # threshold 0.9: everything valid
    (10, [0.9, 0.6, 0.3, 0.8]),  # fewer valid pixels than min_kept: keep all valid
    (0, [0.6, 0.3]),  # no minimum: plain threshold
])
def test_ohem_hand_computed(min_kept, kept_probs):
    logits = _two_class_logits(PROBS)
    loss = OhemCrossEntropy(IGNORE, thresh=0.7, min_kept=min_kept)(logits, TARGET)
    expected = -sum(math.log(p) for p in kept_probs) / len(kept_probs)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_ohem_gradient_only_through_kept_pixels():
    logits = _two_class_logits(PROBS)
    OhemCrossEntropy(IGNORE, thresh=0.7, min_kept=2)(logits, TARGET).backward()
    touched = (logits.grad.abs().sum(1)[0, 0] > 0).tolist()
    assert touched == [False, True, True, False, False]


def test_ohem_lower_threshold_keeps_fewer():
    logits = _two_class_logits(PROBS)
    ohem = OhemCrossEntropy(IGNORE, thresh=0.5, min_kept=1)
    assert ohem.kept_mask(logits, TARGET)[0, 0].tolist() == [False, False, True, False, False]


def test_ohem_with_class_weights_is_weighted_mean_over_kept():
    logits = torch.randn(2, 3, 4, 5)
    target = torch.randint(0, 3, (2, 4, 5))
    target[0, 0] = IGNORE
    weight = torch.tensor([1.0, 2.0, 0.5])
    ohem = OhemCrossEntropy(IGNORE, thresh=0.7, min_kept=10, weight=weight)
    kept = ohem.kept_mask(logits, target)
    expected = F.cross_entropy(logits, torch.where(kept, target, IGNORE), weight=weight, ignore_index=IGNORE)
    assert ohem(logits, target).item() == pytest.approx(expected.item(), rel=1e-5)


def test_all_ignored_batch_gives_zero_not_nan():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    target = torch.full((1, 4, 4), IGNORE)
    for loss_fn in (CrossEntropy(IGNORE), OhemCrossEntropy(IGNORE, min_kept=1),
                    CrossEntropy(IGNORE, torch.ones(3))):
        loss = loss_fn(logits, target)
        assert loss.item() == 0.0
        loss.backward()
        assert torch.isfinite(logits.grad).all()


def test_cross_entropy_matches_torch():
    logits = torch.randn(2, 4, 6, 7)
    target = torch.randint(0, 4, (2, 6, 7))
    target[:, 0] = IGNORE
    weight = torch.tensor([0.5, 1.0, 3.0, 2.0])
    assert CrossEntropy(IGNORE)(logits, target).item() == pytest.approx(
        F.cross_entropy(logits, target, ignore_index=IGNORE).item(), rel=1e-6)
    assert masked_cross_entropy(logits, target, IGNORE, weight).item() == pytest.approx(
        F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE).item(), rel=1e-6)


def test_enet_weights_hand_computed():
    counts = np.array([700, 200, 100, 0])
    w = class_weights(counts, method="enet", c=1.02)
    expected = [1 / math.log(1.02 + p) for p in (0.7, 0.2, 0.1, 0.0)]
    assert w == pytest.approx(expected)
    assert class_weights(counts, method="enet", c=1.10)[0] == pytest.approx(1 / math.log(1.8))


def test_median_frequency_weights_hand_computed():
    counts = np.array([600, 100, 50, 0])
    image_pixels = np.array([1000, 400, 100, 0])  # class 1 appears in images totalling 400 pixels, ...
    freq = [0.6, 0.25, 0.5]
    median = 0.5
    w = class_weights(counts, image_pixels, method="median")
    assert w == pytest.approx([median / f for f in freq] + [0.0])


def test_weight_errors():
    with pytest.raises(ValueError, match="no labelled pixels"):
        class_weights(np.zeros(3))
    with pytest.raises(ValueError, match="c > 1"):
        class_weights(np.ones(3), c=1.0)
    with pytest.raises(ValueError, match="median"):
        class_weights(np.ones(3), method="median")
    with pytest.raises(ValueError, match="unknown class weighting"):
        class_weights(np.ones(3), method="magic")


def test_build_criterion():
    assert isinstance(build_criterion("ohem", IGNORE, ohem_min_kept=5), OhemCrossEntropy)
    assert build_criterion("ce", IGNORE).weight is None
    assert torch.equal(build_criterion("weighted-ce", IGNORE, torch.ones(2)).weight, torch.ones(2))
    with pytest.raises(ValueError, match="class weights"):
        build_criterion("weighted-ce", IGNORE)
    with pytest.raises(ValueError, match="unknown loss"):
        build_criterion("focal", IGNORE)
    with pytest.raises(ValueError, match="threshold"):
        OhemCrossEntropy(IGNORE, thresh=0.0)


def _reference_kept(logits: torch.Tensor, target: torch.Tensor, thresh: float, min_kept: int) -> torch.Tensor:
    """The reference rule with data-dependent shapes: k-th smallest of the valid pixels' probabilities."""
    valid = target != 255
    if int(valid.sum()) < min_kept or not bool(valid.any()):
        return valid
    prob = torch.softmax(logits, 1).gather(1, target.clamp(0, logits.shape[1] - 1).unsqueeze(1)).squeeze(1)
    kth = torch.kthvalue(prob[valid], min(min_kept, int(valid.sum()))).values.item() if min_kept else thresh
    return valid & (prob <= max(thresh, kth))


@pytest.mark.parametrize("void_share, min_kept", [(0.0, 40), (0.5, 40), (0.95, 40), (1.0, 40), (0.3, 0),
                                                  (0.3, 500)])
def test_ohem_fixed_shape_selection_equals_the_reference(void_share, min_kept):
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 4, 8, 12, generator=generator) * 3
    target = torch.randint(0, 4, (2, 8, 12), generator=generator)
    target[torch.rand(target.shape, generator=generator) < void_share] = 255
    ohem = OhemCrossEntropy(255, thresh=0.3, min_kept=min_kept)
    assert torch.equal(ohem.kept_mask(logits, target), _reference_kept(logits, target, 0.3, min_kept))
