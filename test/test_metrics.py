"""ConfusionMatrix against a hand-computed example."""

from __future__ import annotations

import numpy as np
import pytest

from eacnet_core.evaluate.metrics import ConfusionMatrix


def _example() -> ConfusionMatrix:
    """3 classes (+ ignore 255). Pixels (label -> pred):
    0->0 x3, 0->1 x1, 1->1 x2, 1->0 x1, 2->2 x1, 2->1 x1, and two ignored pixels."""
    label = np.array([[0, 0, 0, 0, 1, 1], [1, 2, 2, 255, 255, 0]], dtype=np.uint8)
    pred = np.array([[0, 0, 0, 1, 1, 1], [0, 2, 1, 2, 0, 0]], dtype=np.uint8)
    # last pixel: label 0 pred 0 -> 0->0 total 4 (three above + this one)
    cm = ConfusionMatrix(3, ignore_index=255, class_names=["a", "b", "c"])
    cm.update(pred, label)
    return cm


def test_confusion_matrix_hand_computed():
    cm = _example()
    assert cm.matrix.tolist() == [[4, 1, 0],
                                  [1, 2, 0],
                                  [0, 1, 1]]
    assert cm.total == 10
    # IoU: a 4/(4+1+1)=4/6, b 2/(2+2+1)=2/5, c 1/(1+0+1)=1/2
    assert cm.per_class_iou == pytest.approx([4 / 6, 2 / 5, 1 / 2])
    assert cm.miou == pytest.approx((4 / 6 + 2 / 5 + 1 / 2) / 3)
    assert cm.pixel_accuracy == pytest.approx(7 / 10)
    assert cm.per_class_accuracy == pytest.approx([4 / 5, 2 / 3, 1 / 2])
    summary = cm.summary()
    assert summary["per_class"] == pytest.approx({"a": 4 / 6, "b": 2 / 5, "c": 1 / 2})
    assert set(summary) == {"miou", "pixel_acc", "per_class"}


def test_miou_averages_over_all_classes_including_absent():
    cm = ConfusionMatrix(4, ignore_index=255)
    cm.update(np.array([0, 0, 1]), np.array([0, 0, 1]))
    assert cm.per_class_iou.tolist() == [1.0, 1.0, 0.0, 0.0]
    assert cm.miou == pytest.approx(0.5)  # not 1.0: classes 2 and 3 count
    assert cm.absent_classes == ["class_2", "class_3"]


def test_accumulates_merges_and_resets():
    a, b = _example(), _example()
    a.update(np.array([2]), np.array([2]))
    assert a.matrix[2, 2] == 2
    b.merge(a)
    assert b.total == 10 + 11
    with pytest.raises(ValueError, match="merge"):
        b.merge(ConfusionMatrix(2))
    b.reset()
    assert b.total == 0 and b.pixel_accuracy == 0.0 and b.miou == 0.0


def test_matches_a_brute_force_count_on_random_data():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 6, size=(7, 50, 60))
    label[label == 5] = 255
    pred = rng.integers(0, 5, size=label.shape)
    cm = ConfusionMatrix(5, 255)
    for p, lbl in zip(pred, label, strict=True):
        cm.update(p, lbl)
    brute = np.zeros((5, 5), np.int64)
    for t, p in zip(label.ravel(), pred.ravel(), strict=True):
        if t != 255:
            brute[t, p] += 1
    assert np.array_equal(cm.matrix, brute)


def test_bad_inputs():
    cm = ConfusionMatrix(3, ignore_index=255)
    with pytest.raises(ValueError, match="shape"):
        cm.update(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="label values outside"):
        cm.update(np.zeros(2, int), np.array([0, 7]))
    with pytest.raises(ValueError, match="predicted class ids outside"):
        cm.update(np.array([0, 3]), np.array([0, 1]))
    with pytest.raises(ValueError):
        ConfusionMatrix(0)
    with pytest.raises(ValueError, match="names"):
        ConfusionMatrix(2, class_names=["x"])


def test_without_ignore_index_every_pixel_counts():
    cm = ConfusionMatrix(2)
    cm.update(np.array([0, 1, 1]), np.array([0, 1, 0]))
    assert cm.total == 3


def test_table_layout_has_every_class_and_wraps():
    names = [f"longclassname{i}" for i in range(19)]
    cm = ConfusionMatrix(19, 255, names)
    cm.update(np.arange(19), np.arange(19))
    table = cm.table(title="eacnet_erf")
    assert all(n in table for n in names) and "mIoU" in table and "100.00" in table
    assert max(len(line) for line in table.splitlines()) <= 120
    assert table.splitlines()[1].startswith("eacnet_erf")
