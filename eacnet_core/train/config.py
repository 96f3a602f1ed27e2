"""The one configuration object of a training run.

Every choice a run makes lives in ``TrainConfig``; ``resolved()`` replaces the "use the
dataset's / optimiser's default" markers (0, empty) with concrete values, and the
resolved config is what the checkpoint stores (``to_dict``), so a checkpoint says
exactly how it was trained and ``--resume`` continues with the same settings.

Named training recipes (``eacnet train --recipe NAME``): a set of defaults for the
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
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from eacnet_core.data.transforms import PAPER_SCALES
from eacnet_core.train.losses import LOSSES, WEIGHTINGS

OPTIMIZERS = ("adam", "sgd")
AMP_DTYPES = ("auto", "fp16", "bf16")
#: ``--compile`` modes of the training step: "" = eager; "auto" = reduce-overhead (CUDA graphs) on CUDA,
#: torch.compile's default elsewhere (train.step.compile_mode_for).
COMPILE_MODES = ("", "auto", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: H x W crops of the paper / reference code.
DEFAULT_CROPS = {"camvid": (360, 480), "cityscapes": (512, 1024), "folder": (512, 512)}
#: Reference learning rates: Adam 5e-4 (ERFNet/EACNet-ERF), SGD 4.5e-2 (DABNet on Cityscapes).
DEFAULT_LR = {"adam": 5e-4, "sgd": 4.5e-2}
#: Fields that may change when a run is resumed: they do not alter the training state.
RESUME_OVERRIDABLE = ("epochs", "cache", "data_on_device", "data_root", "workers", "device", "threads", "val_every",
                      "val_batch_size", "tensorboard", "progress", "compile", "ema")


@dataclass(frozen=True)
class TrainConfig:
    model: str = ""
    dataset: str = "camvid"
    data_root: str = ""  # "" = the dataset's default location (CamVid only)
    out: str = ""
    init_from: str = ""  # checkpoint or packaged model name whose weights initialise the model
    class_map: str = ""  # YAML new class -> old classes: class-sized rows start from the old ones (--init-from)
    recipe: str = ""  # a named set of defaults (RECIPES below), sized to the data by the Trainer
    head_lr_mult: float = 1.0  # lr of the tensors --init-from did not load as trained, as a multiple of lr
    train_split: str = "train"  # "trainval" (CamVid) = train + val, the paper's test-set protocol
    val_split: str = "val"
    epochs: int = 400
    batch_size: int = 8  # per process
    crop: tuple[int, int] = (0, 0)  # H, W; (0, 0) = dataset default
    lr: float = 0.0  # 0 = optimiser default
    optimizer: str = "adam"
    momentum: float = 0.9  # SGD
    weight_decay: float = 1e-4
    attention_lr_mult: float = 1.0  # the attention's parameters train at lr x this (DANet-style heads: 10)
    attention_weight_decay: float = -1.0  # weight decay of the attention's parameters; < 0 = --weight-decay
    poly_power: float = 0.9
    warmup_iters: int = 0
    warmup_ratio: float = 1.0 / 3.0  # lr factor at iteration 0 of the warm-up
    loss: str = "ohem"
    ohem_thresh: float = 0.7
    ohem_min_kept: int = 0  # 0 = batch * crop_h * crop_w / 16, as the DABNet reference
    class_weights: str = "enet"  # for weighted-ce: enet | median
    class_weight_c: float = 1.02  # ENet constant (DABNet: 1.10)
    scales: tuple[float, ...] = PAPER_SCALES
    flip: bool = True
    val_every: int = 1  # epochs between validations; 0 = never
    val_size: tuple[int, int] = (0, 0)  # inference size for validation; (0, 0) = native
    val_batch_size: int = 1
    limit: int = 0  # first N images of each split; 0 = all
    workers: int = 2
    cache: bool = False  # decode the training images once into memory
    data_on_device: bool = False  # hold the training set on the device and augment there (GPU training)
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    amp_dtype: str = "auto"  # auto = fp16 on CUDA, bf16 on CPU
    threads: int = 0  # torch CPU threads; 0 = library default
    sync_bn: bool = False
    pool: int = 0  # EAC key/value pooling for eacnet_erf / eacnet_dab; 0 = model default
    channels_last: bool = False
    compile: str = ""  # torch.compile mode of the training step ("" = eager; see train.step.COMPILE_MODES)
    ema: float = 0.0  # decay of the weights' exponential moving average (evaluated and shipped); 0 = off
    attention_gamma_init: float = 0.0  # the attention's residual scale at the start (the paper: 0)
    tensorboard: bool = True
    progress: bool = True

    def resolved(self) -> TrainConfig:
        """Concrete values for every "default" marker, after validating the choices."""
        self.validate()
        crop = self.crop if self.crop != (0, 0) else DEFAULT_CROPS[self.dataset]
        lr = self.lr or DEFAULT_LR[self.optimizer]
        min_kept = self.ohem_min_kept or max(1, self.batch_size * crop[0] * crop[1] // 16)
        return replace(self, crop=tuple(crop), lr=lr, ohem_min_kept=min_kept)

    def validate(self) -> None:
        from eacnet_core.data.datasets import DATASET_KINDS
        from eacnet_core.models import MODELS

        checks = [
            (self.model in MODELS, f"--model must be one of {', '.join(MODELS)}, got {self.model!r}"),
            (self.dataset in DATASET_KINDS, f"--dataset must be one of {', '.join(DATASET_KINDS)}"),
            (bool(self.out), "--out DIR is required"),
            (self.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}"),
            (self.loss in LOSSES, f"--loss must be one of {', '.join(LOSSES)}"),
            (self.class_weights in WEIGHTINGS, f"--class-weights must be one of {', '.join(WEIGHTINGS)}"),
            (self.amp_dtype in AMP_DTYPES, f"--amp-dtype must be one of {', '.join(AMP_DTYPES)}"),
            (self.epochs >= (0 if self.recipe else 1) and self.batch_size >= 1 and self.val_batch_size >= 1,
             "--epochs, --batch-size and --val-batch-size must be >= 1"),
            (not self.recipe or self.recipe in RECIPES, f"--recipe must be one of {', '.join(RECIPES)}"),
            (not self.class_map or bool(self.init_from), "--class-map needs --init-from (the model it maps from)"),
            (self.head_lr_mult > 0, "--head-lr-mult must be > 0"),
            (self.attention_lr_mult > 0, "--attention-lr-mult must be > 0"),
            (bool(self.train_split) and bool(self.val_split), "--train-split and --val-split must not be empty"),
            (self.lr >= 0 and self.weight_decay >= 0 and self.warmup_iters >= (-1 if self.recipe else 0)
             and 0 < self.warmup_ratio <= 1,
             "--lr, --weight-decay and --warmup-iters must be >= 0 and --warmup-ratio in (0, 1]"),
            (self.val_every >= 0 and self.limit >= 0 and self.workers >= 0 and self.pool >= 0,
             "--val-every, --limit, --workers and --pool must be >= 0"),
            (len(self.crop) == 2 and len(self.val_size) == 2, "--crop-size and --val-resize are WxH"),
            (self.compile in COMPILE_MODES, f"--compile must be one of {', '.join(COMPILE_MODES[1:])}"),
            (self.ema == 0.0 or 0.0 < self.ema < 1.0, f"--ema must be in (0, 1) (0 = off), got {self.ema}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def to_dict(self) -> dict:
        """Plain containers only (lists, not tuples) for a ``weights_only`` checkpoint."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """Inverse of ``to_dict``; unknown keys (from a newer version) are dropped."""
        known = {f.name for f in fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
        return cls(**values)


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
