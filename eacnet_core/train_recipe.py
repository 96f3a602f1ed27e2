"""Named training recipes (``eacnet train --recipe NAME``): a set of defaults for the
options a user does not give, some of them sized to the data once it is read.

``finetune`` is for a trained model moved to a team's own images and classes
(``--init-from eacnet_dab --recipe finetune``): a short schedule sized by the number of
training images, a lower learning rate for the loaded layers than for the tensors that
start fresh (the class-sized head), and a warm-up so the fresh head's first large
gradients do not wreck the loaded features. Every value it picks is written into the
run's config (``metrics.jsonl``'s run, the checkpoints, the model card), so a run says
exactly how it was trained; an option given on the command line always wins.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .train_config import TrainConfig

#: ``epochs`` / ``warmup_iters`` values that mean "the recipe sizes it from the data".
SIZED_EPOCHS, SIZED_WARMUP = 0, -1


@dataclass(frozen=True)
class Recipe:
    """Fixed defaults, plus the rule sizing the schedule: enough epochs that the run sees
    about ``images_seen`` training images (within ``epochs_range``), and a warm-up over
    ``warmup_fraction`` of its iterations."""

    name: str
    summary: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    images_seen: int = 0
    epochs_range: tuple[int, int] = (1, 1)
    warmup_fraction: float = 0.0

    def overlay(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """The config values: the recipe's defaults (sized ones marked) under ``given``."""
        values = {**self.defaults, "epochs": SIZED_EPOCHS, "warmup_iters": SIZED_WARMUP}
        values.update(given)
        values["recipe"] = self.name
        return values

    def epochs_for(self, num_images: int) -> int:
        low, high = self.epochs_range
        return max(low, min(high, math.ceil(self.images_seen / max(1, num_images))))

    def sized(self, cfg: TrainConfig, num_images: int, iters_per_epoch: int) -> TrainConfig:
        """``cfg`` with its marked epochs and warm-up replaced by values for this data."""
        epochs = self.epochs_for(num_images) if cfg.epochs == SIZED_EPOCHS else cfg.epochs
        warmup = (math.ceil(self.warmup_fraction * epochs * iters_per_epoch) if cfg.warmup_iters == SIZED_WARMUP
                  else cfg.warmup_iters)
        return replace(cfg, epochs=epochs, warmup_iters=warmup)

    def describe(self) -> str:
        fixed = ", ".join(f"{k.replace('_', '-')} {v:g}" if isinstance(v, float) else f"{k.replace('_', '-')} {v}"
                          for k, v in self.defaults.items())
        low, high = self.epochs_range
        return (f"{self.name}: {self.summary}; {fixed}; epochs = ceil({self.images_seen} / training images) in "
                f"[{low}, {high}]; warm-up over {100 * self.warmup_fraction:g}% of the iterations")


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("finetune", "a trained model moved to new images and classes (use with --init-from)",
           defaults={"optimizer": "adam", "lr": 2e-4, "head_lr_mult": 10.0, "warmup_ratio": 0.1},
           images_seen=1200, epochs_range=(4, 60), warmup_fraction=0.05),
)}


def sized_config(cfg: TrainConfig, num_images: int, iters_per_epoch: int) -> TrainConfig:
    """The config with the recipe's data-sized values filled in (unchanged without a recipe)."""
    return RECIPES[cfg.recipe].sized(cfg, num_images, iters_per_epoch) if cfg.recipe else cfg
