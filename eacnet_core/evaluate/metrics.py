"""Confusion matrix, IoU and the per-class table: the one metric implementation shared by
training's validation, ``eacnet eval`` and the bag evaluator.

mIoU is the mean over ALL classes of the dataset. A class that appears neither in the
labels nor in the predictions has an undefined IoU; it counts as 0 here (and is flagged
in ``absent_classes``) rather than being dropped, because dropping classes is the known
way one reference implementation inflated its mIoU. On a full validation split every
class is present and the question does not arise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np


class ConfusionMatrix:
    """Accumulates a (num_classes x num_classes) matrix: rows = label, columns = prediction.

    ``update(pred, label)`` takes integer arrays of the same shape (any integer dtype,
    numpy or anything ``np.asarray`` accepts); pixels whose label is ``ignore_index`` are
    skipped. Other label values outside 0..num_classes-1 and predictions outside that
    range raise ValueError: they mean a class-set mismatch, not something to average over.
    """

    def __init__(self, num_classes: int, ignore_index: Optional[int] = None,
                 class_names: Optional[Sequence[str]] = None):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.class_names = tuple(class_names) if class_names is not None else \
            tuple(f"class_{i}" for i in range(num_classes))
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    # ------------------------------------------------------------------ accumulate
    def update(self, pred: np.ndarray, label: np.ndarray) -> None:
        pred, label = np.asarray(pred), np.asarray(label)
        if pred.shape != label.shape:
            raise ValueError(f"prediction shape {pred.shape} differs from label shape {label.shape}")
        label = label.ravel().astype(np.int64, copy=False)
        pred = pred.ravel().astype(np.int64, copy=False)
        if self.ignore_index is not None:
            keep = label != self.ignore_index
            label, pred = label[keep], pred[keep]
        n = self.num_classes
        if label.size and (label.min() < 0 or label.max() >= n):
            raise ValueError(f"label values outside 0..{n - 1} (ignore {self.ignore_index}): "
                             f"{np.unique(label[(label < 0) | (label >= n)])[:10].tolist()}")
        if pred.size and (pred.min() < 0 or pred.max() >= n):
            bad = np.unique(pred[(pred < 0) | (pred >= n)])[:10].tolist()
            raise ValueError(f"predicted class ids outside 0..{n - 1}: {bad}")
        self.matrix += np.bincount(label * n + pred, minlength=n * n).reshape(n, n)

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix (e.g. from another process or another bag) into this one."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge {other.num_classes}-class and {self.num_classes}-class matrices")
        self.matrix += other.matrix
        return self

    def reset(self) -> None:
        self.matrix[:] = 0

    # ------------------------------------------------------------------ metrics
    @property
    def total(self) -> int:
        """Valid (non-ignored) pixels counted so far."""
        return int(self.matrix.sum())

    @property
    def per_class_iou(self) -> np.ndarray:
        """IoU per class in [0, 1]: TP / (TP + FP + FN); 0 where that union is empty."""
        tp = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(0) + self.matrix.sum(1) - tp
        return np.divide(tp, union, out=np.zeros_like(tp), where=union > 0)

    @property
    def miou(self) -> float:
        """Mean IoU over all ``num_classes`` classes (not only those present)."""
        return float(self.per_class_iou.mean())

    @property
    def pixel_accuracy(self) -> float:
        total = self.total
        return float(np.trace(self.matrix) / total) if total else 0.0

    @property
    def per_class_accuracy(self) -> np.ndarray:
        """Recall per class: TP / labelled pixels of the class (0 where absent)."""
        tp = np.diag(self.matrix).astype(np.float64)
        support = self.matrix.sum(1)
        return np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)

    @property
    def absent_classes(self) -> list[str]:
        """Classes with no labelled pixel: their IoU is 0 or undefined, worth a warning."""
        return [name for name, n in zip(self.class_names, self.matrix.sum(1), strict=True) if n == 0]

    def summary(self) -> dict:
        """JSON-ready: mIoU, pixel accuracy and per-class IoU as fractions in [0, 1]."""
        return {"miou": self.miou, "pixel_acc": self.pixel_accuracy,
                "per_class": {name: float(v) for name, v in zip(self.class_names, self.per_class_iou, strict=True)}}

    def table(self, title: str = "IoU %", width: int = 120) -> str:
        """The paper's layout: one column per class, then mIoU; wrapped to ``width``."""
        cells = [(name, f"{100 * v:.1f}") for name, v in zip(self.class_names, self.per_class_iou, strict=True)]
        cells.append(("mIoU", f"{100 * self.miou:.2f}"))
        first = max(len(title), 6) + 1
        lines, header, values = [], f"{'':<{first}}", f"{title:<{first}}"
        for name, value in cells:
            col = max(len(name), len(value), 5) + 1
            if len(header) + col > width and header.strip():
                lines += [header.rstrip(), values.rstrip()]
                header, values = f"{'':<{first}}", f"{'':<{first}}"
            header += f"{name:>{col}}"
            values += f"{value:>{col}}"
        lines += [header.rstrip(), values.rstrip()]
        return "\n".join(lines)
