"""A training run's parts, built from its resolved config: the data and how it is dealt out
(``RunData``), the network and its DDP wrapper (``RunModel``), the loss, optimiser and
poly schedule (``Optimisation``), and the autocast dtype and gradient scaler of --amp.
The loop (``train.loop.Trainer``) builds each once and keeps them; ``train-profile``
builds its optimiser the same way."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from eacnet_core.data.classes import DatasetInfo
from eacnet_core.data.datasets import SegmentationDataset, build_dataset, class_pixel_counts, dataset_info
from eacnet_core.data.transforms import EvalTransform, TrainTransform
from eacnet_core.models import build_model
from eacnet_core.models.attention import SelfCalibrationAttention
from eacnet_core.runtime import resolve_precision
from eacnet_core.train.attention_stats import set_attention_gamma
from eacnet_core.train.config import TrainConfig
from eacnet_core.train.device_data import DeviceTrainData
from eacnet_core.train.distributed import DistInfo, ShardSampler
from eacnet_core.train.init_from import freeze_unused, init_from, summarise_keys
from eacnet_core.train.losses import build_criterion, class_weights
from eacnet_core.train.step import adam_implementation


# ============================================================================ schedule
class PolyWarmup:
    """lr factor: linear warm-up from ``warmup_ratio`` to 1 over ``warmup_iters``, times
    (1 - it / total) ** power, per iteration (the reference WarmupPolyLR). A class, not a
    closure, so LambdaLR's state_dict keeps its numbers (weights_only-safe primitives)."""

    def __init__(self, total_iters: int, power: float = 0.9, warmup_iters: int = 0, warmup_ratio: float = 1 / 3):
        self.total_iters, self.power = int(total_iters), float(power)
        self.warmup_iters, self.warmup_ratio = int(warmup_iters), float(warmup_ratio)

    def __call__(self, it: int) -> float:
        factor = max(0.0, 1.0 - it / max(1, self.total_iters)) ** self.power
        if it < self.warmup_iters:
            alpha = it / self.warmup_iters
            factor *= self.warmup_ratio * (1 - alpha) + alpha
        return factor


def parameter_groups(cfg: TrainConfig, model: nn.Module, head: Sequence[str] = ()) -> list[dict]:
    """The backbone's parameters, then (when the model has one) the attention's in a group
    of their own: its own learning-rate multiple and weight decay. gamma starts at 0 and,
    at the base rate with weight decay, stayed below 0.02 in 50 epochs here; DANet-style
    heads train at 10x. Both groups follow the same poly schedule (LambdaLR scales each).
    With ``head`` (the tensors ``--init-from`` did not load as trained) and a
    ``head_lr_mult`` other than 1, those form a last group at lr x head_lr_mult: fine-tuning
    moves the fresh head fast and the loaded features slowly."""
    head_ids = ({id(p) for n, p in model.named_parameters() if n in set(head)} if cfg.head_lr_mult != 1.0
                else set())
    wd = cfg.attention_weight_decay if cfg.attention_weight_decay >= 0 else cfg.weight_decay
    own_attention = cfg.attention_lr_mult != 1.0 or wd != cfg.weight_decay
    attention_ids = {id(p) for m in model.modules() if isinstance(m, SelfCalibrationAttention)
                     for p in m.parameters()} - head_ids if own_attention else set()
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not own_attention and not head_ids:
        return [{"params": trainable, "lr": cfg.lr, "weight_decay": cfg.weight_decay}]  # one group, as before
    groups = [{"params": [p for p in trainable if id(p) not in attention_ids | head_ids], "lr": cfg.lr,
               "weight_decay": cfg.weight_decay},
              {"params": [p for p in trainable if id(p) in attention_ids], "lr": cfg.lr * cfg.attention_lr_mult,
               "weight_decay": wd},
              {"params": [p for p in trainable if id(p) in head_ids], "lr": cfg.lr * cfg.head_lr_mult,
               "weight_decay": cfg.weight_decay}]
    return [g for g in groups if g["params"]]


def build_optimizer(cfg: TrainConfig, model: nn.Module, device: Optional[torch.device] = None,
                    head: Sequence[str] = ()) -> torch.optim.Optimizer:
    """Adam (betas 0.9/0.999, eps 1e-8, as ERFNet's reference; fused on CUDA, multi-tensor
    elsewhere) or SGD with momentum."""
    groups = parameter_groups(cfg, model, head)
    if cfg.optimizer == "adam":
        device = device or next(model.parameters()).device
        return torch.optim.Adam(groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=cfg.weight_decay,
                                **adam_implementation(device))
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, foreach=True)


# ============================================================================ a run's parts
@dataclass
class RunData:
    """What a run trains and validates on, and how the training set is dealt out."""

    info: DatasetInfo
    train_set: SegmentationDataset
    val_set: Optional[SegmentationDataset]
    device_data: Optional[DeviceTrainData]  # --data-on-device: the set held and augmented there
    sampler: ShardSampler

    @property
    def iters_per_epoch(self) -> int:
        return self.sampler.batches_per_epoch


def build_run_data(cfg: TrainConfig, dist_info: DistInfo, device: torch.device, log: Callable[[str], None]) -> RunData:
    """The datasets of ``cfg`` (its ``data_root`` resolved), cached or moved to ``device`` as asked."""
    root = Path(cfg.data_root)
    dataset = dataset_info(cfg.dataset, root)
    train_tf = TrainTransform(cfg.crop, dataset.mean, dataset.std, dataset.ignore_index, tuple(cfg.scales), cfg.flip)
    val_tf = EvalTransform(dataset.mean, dataset.std, cfg.val_size if cfg.val_size != (0, 0) else None)
    train_set = build_dataset(cfg.dataset, root, cfg.train_split, cfg.limit, train_tf, cfg.seed)
    if cfg.cache or cfg.data_on_device:
        megabytes = train_set.cache_in_memory() / 2**20
        log(f"data: {len(train_set)} training pairs decoded into memory ({megabytes:.0f} MB)")
    device_data: Optional[DeviceTrainData] = None
    if cfg.data_on_device:
        device_data = DeviceTrainData(train_set, train_tf, device)
        log(f"data: training set on {device} ({device_data.nbytes / 2**20:.0f} MB), augmented there")
    val_set: Optional[SegmentationDataset] = None
    if cfg.val_every > 0:
        val_set = build_dataset(cfg.dataset, root, cfg.val_split, cfg.limit, val_tf, cfg.seed)
        train_images = {s.image for s in train_set.samples}
        if all(s.image in train_images for s in val_set.samples):
            log(f"note: every {cfg.val_split} image is also a training image: val mIoU measures fit, "
                "not generalisation (choose schedules on runs that hold val out)")
    sampler = ShardSampler(len(train_set), cfg.batch_size, dist_info.world_size, dist_info.rank, cfg.seed)
    if sampler.batches_per_epoch == 0:
        raise ValueError(f"{train_set.name}: {len(train_set)} training images are fewer than "
                         f"--batch-size {cfg.batch_size} x {dist_info.world_size} process(es)")
    log(f"data: {train_set} (train), {val_set or 'no validation'} (val), root {root}")
    return RunData(dataset, train_set, val_set, device_data, sampler)


@dataclass
class RunModel:
    """The network of a run: ``model`` is saved and validated, ``forward`` (the model, or its
    DistributedDataParallel wrapper) is what training steps run."""

    model: nn.Module
    forward: nn.Module
    kwargs: dict  # build_model's extra arguments, recorded in checkpoints
    head: list[str] = field(default_factory=list)  # tensors --init-from did not load as trained


def build_run_model(cfg: TrainConfig, info: DatasetInfo, dist_info: DistInfo, device: torch.device,
                    log: Callable[[str], None], initialise: bool) -> RunModel:
    """The registry model on ``device`` (``--init-from`` weights when ``initialise``, moved to
    ``info``'s classes), its unused parameters frozen, in channels-last memory when asked,
    wrapped for DDP when distributed."""
    kwargs = {"pool": cfg.pool} if cfg.pool else {}
    head: list[str] = []
    try:
        model = build_model(cfg.model, info.num_classes, **kwargs)
    except TypeError:
        raise ValueError(f"--pool applies to eacnet_erf and eacnet_dab, not {cfg.model}") from None
    if initialise and cfg.attention_gamma_init:
        set_attention_gamma(model, cfg.attention_gamma_init)
    if cfg.init_from and initialise:
        report = init_from(model, cfg.init_from, info.class_names, cfg.class_map or None)
        log(report.format())
        head = report.head
    model.to(device)
    frozen = freeze_unused(model)
    if frozen:
        log(f"unused by {cfg.model}'s forward, frozen: {summarise_keys(frozen)}")
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    forward: nn.Module = model
    if dist_info.enabled:
        if cfg.sync_bn and device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif cfg.sync_bn:
            log("note: --sync-bn needs CUDA; using per-process BatchNorm")
        ids = [device.index] if device.type == "cuda" else None
        forward = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return RunModel(model, forward, kwargs, head)


@dataclass
class Optimisation:
    """Loss, optimiser and the poly learning-rate schedule of a run."""

    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    poly: PolyWarmup
    scheduler: torch.optim.lr_scheduler.LambdaLR


def build_optimisation(cfg: TrainConfig, model: nn.Module, data: RunData, total_iters: int,
                       device: torch.device, log: Callable[[str], None], head: Sequence[str] = ()) -> Optimisation:
    """The criterion (class weights counted on the training set for weighted-ce), optimiser and schedule."""
    weight = None
    if cfg.loss == "weighted-ce":
        counts, image_pixels = class_pixel_counts(data.train_set)
        weights = class_weights(counts, image_pixels, cfg.class_weights, cfg.class_weight_c)
        log(f"class weights ({cfg.class_weights}): "
            + ", ".join(f"{n} {w:.2f}" for n, w in zip(data.info.class_names, weights, strict=True)))
        weight = torch.tensor(weights, dtype=torch.float32)
    criterion = build_criterion(cfg.loss, data.info.ignore_index, weight, cfg.ohem_thresh,
                                cfg.ohem_min_kept).to(device)
    optimizer = build_optimizer(cfg, model, device, head)
    poly = PolyWarmup(total_iters, cfg.poly_power, cfg.warmup_iters, cfg.warmup_ratio)
    return Optimisation(criterion, optimizer, poly, torch.optim.lr_scheduler.LambdaLR(optimizer, poly))


# ============================================================================ precision
def amp_dtype_for(cfg: TrainConfig, device: torch.device) -> Optional[torch.dtype]:
    """--amp's autocast dtype (auto: fp16 on CUDA, bf16 on CPU), None without --amp."""
    if not cfg.amp:
        return None
    wanted = cfg.amp_dtype if cfg.amp_dtype != "auto" else ("fp16" if device.type == "cuda" else "bf16")
    return {"fp16": torch.float16, "bf16": torch.bfloat16}[resolve_precision(wanted, device)]


def grad_scaler(device: torch.device, enabled: bool):
    """GradScaler for fp16 autocast (bf16 needs none); torch.amp's where available."""
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler(device.type, enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)  # torch < 2.3
