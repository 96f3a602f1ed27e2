"""A run folder's files: ``last.pt`` (every epoch, and what --resume continues from),
``best.pt`` (by validation mIoU), ``metrics.jsonl`` (one record per epoch, with optional
TensorBoard scalars beside it), and reading the folder back for --resume."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from eacnet_core.checkpoint import CheckpointError, load_checkpoint
from eacnet_core.train.config import RESUME_OVERRIDABLE, TrainConfig

LAST, BEST, LOG = "last.pt", "best.pt", "metrics.jsonl"


class EpochLog:
    """Where the main process writes each epoch's record: a line of ``metrics.jsonl`` and,
    with --tensorboard (when installed; it is optional), its scalars."""

    SCALARS = ("train_loss", "lr", "images_per_s", "val_miou", "val_pixel_acc", "attention_gamma",
               "attention_entropy")

    def __init__(self, out: Path, tensorboard: bool):
        self.path = out / LOG
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                return
            self.writer = SummaryWriter(str(out / "tensorboard"))

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key in self.SCALARS:
                if key in record:
                    self.writer.add_scalar(key, record[key], record["epoch"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def resumable_checkpoint(out: Path) -> dict:
    """``out``'s last.pt, checked to hold what --resume needs (optimiser state and config)."""
    path = out / LAST
    if not path.is_file():
        raise CheckpointError(f"{path}: nothing to resume (no {LAST} in --out {out})")
    ckpt = load_checkpoint(path)
    if "optimizer" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"{path}: not a resumable training checkpoint (no optimiser state)")
    return ckpt


def resumed_config(ckpt: dict, given: TrainConfig, log: Callable[[str], None]) -> TrainConfig:
    """The checkpoint's config, with only the options that do not change the training
    state taken from the command line; others given differently are reported and ignored."""
    saved = TrainConfig.from_dict(ckpt["config"])
    default = TrainConfig()
    overrides = {k: getattr(given, k) for k in RESUME_OVERRIDABLE if getattr(given, k) != getattr(default, k)}
    ignored = [k for k in given.__dataclass_fields__ if k not in RESUME_OVERRIDABLE and k != "out"
               and getattr(given, k) != getattr(default, k) and getattr(given, k) != getattr(saved, k)]
    if ignored:
        log(f"note: --resume keeps the run's config; ignored: {', '.join('--' + k.replace('_', '-') for k in ignored)}")
    return replace(saved, out=given.out, **overrides)
