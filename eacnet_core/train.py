"""``eacnet train``: train a registry model on CamVid, Cityscapes or a plain folder dataset.

One process or many (``torchrun --nproc_per_node=N``: DistributedDataParallel, nccl on
GPU, gloo on CPU). Checkpoints are self-describing (``checkpoint.make_checkpoint``) and
load with ``weights_only=True``: ``last.pt`` every epoch (and on SIGINT/SIGTERM),
``best.pt`` by validation mIoU. ``--resume`` continues exactly where ``last.pt`` stopped,
mid-epoch included: model, optimiser, scheduler, AMP scaler, position in the epoch and
the RNG states of every process are restored, and the data order and augmentation are
functions of (seed, epoch, index), not of how far global RNGs have run.

Hierarchical training (the paper): train a backbone (``erfnet_enc`` or ``dabnet``), then
``--init-from`` its checkpoint into the larger model (``eacnet_erf``, ``eacnet_erf_nl``,
``erfnet``, ``eacnet_dab``); parameter names are matched directly or through the
``backbone.`` prefix, whichever matches more.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Sampler

from .checkpoint import FORMAT, CheckpointError, load_checkpoint, make_checkpoint, save_atomic
from .classes import DatasetInfo
from .datasets import (
    DATA_ROOT_HELP,
    DATASET_KINDS,
    DatasetError,
    SegmentationDataset,
    build_dataset,
    class_pixel_counts,
    dataset_info,
    default_data_root,
    prepare_worker_fork,
)
from .device_augment import DeviceTrainData
from .evaluate import EvalResult, autocast, eval_loader, evaluate_model
from .losses import LOSSES, WEIGHTINGS, build_criterion, class_weights
from .models import MODELS, build_model
from .models.attention import SelfCalibrationAttention
from .options import Alias, add_device, add_option, add_threads, hxw, wxh
from .progress import progress_bar
from .runtime import collective_device, configure_torch, resolve_device, resolve_precision
from .train_config import AMP_DTYPES, OPTIMIZERS, RESUME_OVERRIDABLE, TrainConfig
from .transforms import EvalTransform, TrainTransform

LAST, BEST, LOG = "last.pt", "best.pt", "metrics.jsonl"


class NonFiniteLoss(RuntimeError):
    """The loss became NaN/inf: the run stops and the last good checkpoint stays."""


# ============================================================================ distributed
@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_spec: str) -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun describes (WORLD_SIZE/RANK/LOCAL_RANK/MASTER_*), or
    run alone. nccl on CUDA, gloo on CPU; each process drives cuda:LOCAL_RANK."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    # No silent CPU fallback when CUDA was asked for: days of training on the wrong device is worse than an error.
    if world <= 1:
        return DistInfo(), resolve_device(device_spec, fallback=False)
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    device = resolve_device(device_spec, fallback=False)
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return info, device


def teardown_distributed(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_values(values: Sequence[float], device: torch.device, info: DistInfo) -> list[float]:
    """Sum a few scalars over processes (identity when alone)."""
    if not info.enabled:
        return [float(v) for v in values]
    t = torch.tensor(list(values), dtype=torch.float64, device=collective_device(device))
    dist.all_reduce(t)
    return t.cpu().tolist()


# ============================================================================ sampling
class ShardSampler(Sampler[int]):
    """Per-epoch shuffle seeded by (seed, epoch), sharded over processes like
    DistributedSampler (padded by repetition so every process gets the same number of
    batches), trimmed to whole batches, and able to skip the batches a resumed run has
    already done. Works without a process group (one process)."""

    def __init__(self, size: int, batch_size: int, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True):
        self.size, self.batch_size = size, batch_size
        self.num_replicas, self.rank, self.seed, self.shuffle = num_replicas, rank, seed, shuffle
        self.epoch = 0
        self.skip_batches = 0

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.size / self.num_replicas) // self.batch_size

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip_batches = int(epoch), int(skip_batches)

    def _shard(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        total = math.ceil(self.size / self.num_replicas) * self.num_replicas
        order = (order * math.ceil(total / self.size))[:total]
        return order[self.rank::self.num_replicas][: self.batches_per_epoch * self.batch_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self._shard()[self.skip_batches * self.batch_size:])

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.skip_batches) * self.batch_size


class _Pairs:
    """A DataLoader's (image, label, index) batches as (image, label)."""

    def __init__(self, loader: DataLoader):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return ((image, label) for image, label, _ in self.loader)


class _DeviceBatches:
    """The sampler's order cut into batches on the device (DeviceTrainData)."""

    def __init__(self, data: DeviceTrainData, order: list[int], batch_size: int, epoch: int):
        self.data, self.order, self.batch_size, self.epoch = data, order, batch_size, epoch

    def __len__(self) -> int:
        return math.ceil(len(self.order) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self.order), self.batch_size):
            yield self.data.batch(self.order[start:start + self.batch_size], self.epoch)


def _worker_init(_: int) -> None:
    """DataLoader workers ignore SIGINT: Ctrl-C reaches the whole process group, and a
    worker dying of it would turn a clean "save and stop" into a crash."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


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


def parameter_groups(cfg: TrainConfig, model: nn.Module) -> list[dict]:
    """The backbone's parameters, then (when the model has one) the attention's in a group
    of their own: its own learning-rate multiple and weight decay. gamma starts at 0 and,
    at the base rate with weight decay, stayed below 0.02 in 50 epochs here; DANet-style
    heads train at 10x. Both groups follow the same poly schedule (LambdaLR scales each)."""
    attention_ids = {id(p) for m in model.modules() if isinstance(m, SelfCalibrationAttention)
                     for p in m.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if id(p) not in attention_ids], "lr": cfg.lr,
               "weight_decay": cfg.weight_decay}]
    attention = [p for p in trainable if id(p) in attention_ids]
    wd = cfg.attention_weight_decay if cfg.attention_weight_decay >= 0 else cfg.weight_decay
    if cfg.attention_lr_mult == 1.0 and wd == cfg.weight_decay:
        return [{"params": trainable, "lr": cfg.lr, "weight_decay": cfg.weight_decay}]  # one group, as before
    if attention:
        groups.append({"params": attention, "lr": cfg.lr * cfg.attention_lr_mult, "weight_decay": wd})
    return [g for g in groups if g["params"]]


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Adam (betas 0.9/0.999, eps 1e-8, as ERFNet's reference) or SGD with momentum."""
    groups = parameter_groups(cfg, model)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


# ============================================================================ RNG state
def rng_state() -> dict:
    """torch (CPU + CUDA), numpy and python ``random`` states as tensors/primitives only."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": int(py_version), "internal": torch.tensor(py_internal, dtype=torch.int64),
                   "gauss_next": py_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_rng_states(dist_info: DistInfo) -> list[dict]:
    """Every process's RNG state, by rank (collective: all processes must call it)."""
    state = rng_state()
    if not dist_info.enabled:
        return [state]
    states: list = [None] * dist_info.world_size
    dist.all_gather_object(states, state)
    return states


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ============================================================================ init-from
@dataclass
class InitReport:
    """What ``--init-from`` did: target keys loaded, target keys left new, source keys unused."""

    source: str
    mapping: str
    loaded: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def format(self) -> str:
        return "\n".join([
            f"init-from {self.source} (names matched {self.mapping}):",
            f"  loaded     {len(self.loaded):4d}: {_summarise(self.loaded)}",
            f"  new        {len(self.new):4d}: {_summarise(self.new)}",
            f"  unexpected {len(self.unexpected):4d}: {_summarise(self.unexpected)}",
        ])


_KEY_MAPPINGS: dict[str, Callable[[str], str]] = {
    "directly": lambda k: k,
    "with a 'backbone.' prefix added": lambda k: "backbone." + k,
    "with the 'backbone.' prefix removed": lambda k: k[len("backbone."):] if k.startswith("backbone.") else k,
}


def _source_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state_dict from one of our checkpoints, or a bare (possibly DDP ``module.``) state_dict."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: --init-from checkpoint not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        obj = load_checkpoint(path)["state_dict"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: holds no state_dict of tensors")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}


def init_from(model: nn.Module, path: str | os.PathLike) -> InitReport:
    """Load matching weights from ``path`` into ``model`` (hierarchical training).

    Of the key mappings (direct, add ``backbone.``, strip ``backbone.``) the one matching
    most target names wins. A matched name with a different shape is an error: silently
    skipping it would train a different model than the user asked for."""
    source = _source_state(path)
    target = model.state_dict()
    name, mapper = max(_KEY_MAPPINGS.items(), key=lambda item: sum(item[1](k) in target for k in source))
    mapped = {mapper(k): (k, v) for k, v in source.items()}
    matched = {t: kv for t, kv in mapped.items() if t in target}
    if not matched:
        raise CheckpointError(f"{path}: no parameter name in common with the model "
                              f"(source keys look like {next(iter(source), '-')!r}, model keys like "
                              f"{next(iter(target), '-')!r})")
    mismatched = [f"{src} {tuple(v.shape)} -> {t} {tuple(target[t].shape)}"
                  for t, (src, v) in matched.items() if v.shape != target[t].shape]
    if mismatched:
        raise CheckpointError(f"{path}: shape mismatch for {len(mismatched)} tensor(s): "
                              + "; ".join(mismatched[:5]) + (" ..." if len(mismatched) > 5 else "")
                              + " (different number of classes?)")
    model.load_state_dict({t: v for t, (_, v) in matched.items()}, strict=False)
    return InitReport(str(path), name, loaded=sorted(matched), new=sorted(set(target) - set(matched)),
                      unexpected=sorted(src for t, (src, _) in mapped.items() if t not in target))


def _summarise(keys: Sequence[str], limit: int = 8) -> str:
    """Short lists in full; long ones grouped by their first two name components."""
    if not keys:
        return "-"
    if len(keys) <= limit:
        return ", ".join(keys)
    groups: dict[str, int] = {}
    for key in keys:
        prefix = ".".join(key.split(".")[:2])
        groups[prefix] = groups.get(prefix, 0) + 1
    return ", ".join(f"{g}.* ({n})" for g, n in groups.items())


def freeze_unused(model: nn.Module) -> list[str]:
    """Freeze parameters the forward pass never uses (ERFNet keeps its encoder's 1x1
    classifier, as the reference does). They would get no gradient anyway; frozen, DDP
    needs no ``find_unused_parameters`` and the optimiser skips them."""
    was_training = model.training
    model.eval()
    x = torch.zeros(1, 3, 64, 64, device=next(model.parameters()).device)
    model(x).float().sum().backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    for n, p in model.named_parameters():
        p.grad = None
        if n in unused:
            p.requires_grad_(False)
    model.train(was_training)
    return unused


# ============================================================================ stopping
class StopSignal:
    """SIGINT/SIGTERM ask the loop to stop after the current step, save and exit. A
    second SIGINT (Ctrl-C pressed twice) interrupts at once."""

    def __init__(self):
        self.signum = 0

    def request(self, signum: int = signal.SIGINT) -> None:
        self.signum = self.signum or int(signum)

    def _handler(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.request(signum)
        print(f"\n{signal.Signals(signum).name}: stopping after this step and saving {LAST} "
              "(Ctrl-C again to abort without saving)", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def installed(self):
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self._handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


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


def build_run_model(cfg: TrainConfig, num_classes: int, dist_info: DistInfo, device: torch.device,
                    log: Callable[[str], None], initialise: bool) -> RunModel:
    """The registry model on ``device`` (``--init-from`` weights when ``initialise``), its unused
    parameters frozen, in channels-last memory when asked, wrapped for DDP when distributed."""
    kwargs = {"pool": cfg.pool} if cfg.pool else {}
    try:
        model = build_model(cfg.model, num_classes, **kwargs)
    except TypeError:
        raise ValueError(f"--pool applies to eacnet_erf and eacnet_dab, not {cfg.model}") from None
    if cfg.init_from and initialise:
        log(init_from(model, cfg.init_from).format())
    model.to(device)
    frozen = freeze_unused(model)
    if frozen:
        log(f"unused by {cfg.model}'s forward, frozen: {_summarise(frozen)}")
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
    return RunModel(model, forward, kwargs)


@dataclass
class Optimisation:
    """Loss, optimiser and the poly learning-rate schedule of a run."""

    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    poly: PolyWarmup
    scheduler: torch.optim.lr_scheduler.LambdaLR


def build_optimisation(cfg: TrainConfig, model: nn.Module, data: RunData, total_iters: int,
                       device: torch.device, log: Callable[[str], None]) -> Optimisation:
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
    optimizer = build_optimizer(cfg, model)
    poly = PolyWarmup(total_iters, cfg.poly_power, cfg.warmup_iters, cfg.warmup_ratio)
    return Optimisation(criterion, optimizer, poly, torch.optim.lr_scheduler.LambdaLR(optimizer, poly))


def amp_dtype_for(cfg: TrainConfig, device: torch.device) -> Optional[torch.dtype]:
    """--amp's autocast dtype (auto: fp16 on CUDA, bf16 on CPU), None without --amp."""
    if not cfg.amp:
        return None
    wanted = cfg.amp_dtype if cfg.amp_dtype != "auto" else ("fp16" if device.type == "cuda" else "bf16")
    return {"fp16": torch.float16, "bf16": torch.bfloat16}[resolve_precision(wanted, device)]


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


# ============================================================================ the run
@dataclass
class TrainResult:
    out: Path
    epochs_done: int
    iterations: int
    best_miou: float
    stopped_by_signal: int = 0
    history: list[dict] = field(default_factory=list)


class Trainer:
    """One training run: built from a resolved TrainConfig, then ``run()``."""

    def __init__(self, cfg: TrainConfig, resume: bool = False, log: Callable[[str], None] = print):
        self._print = log
        self.dist, self.device = setup_distributed(cfg.device)
        try:
            self._build(cfg, resume)
        except BaseException:
            teardown_distributed(self.dist)
            raise

    def _build(self, cfg: TrainConfig, resume: bool) -> None:
        self.out = Path(cfg.out)
        self.resume_ckpt = resumable_checkpoint(self.out) if resume else None
        if self.resume_ckpt is not None:
            cfg = _resumed_config(self.resume_ckpt, cfg, self._log)
        else:
            for name in (LAST, BEST):  # a new run would replace them
                if (self.out / name).exists():
                    raise ValueError(f"{self.out / name} exists: pass --resume to continue that run, or choose "
                                     "another --out")
        self.cfg = cfg.resolved()
        self.stop = StopSignal()
        self.on_step: Optional[Callable[[Trainer], None]] = None  # called after every optimiser step
        self._setup_runtime()
        root = default_data_root(self.cfg.dataset, self.cfg.data_root)
        self.cfg = replace(self.cfg, data_root=str(root))  # the checkpoint records where the data was
        self.data = build_run_data(self.cfg, self.dist, self.device, self._log)
        self.total_iters = self.data.iters_per_epoch * self.cfg.epochs
        run_model = build_run_model(self.cfg, self.data.info.num_classes, self.dist, self.device, self._log,
                                    initialise=self.resume_ckpt is None)
        self.model, self.ddp_model, self.model_kwargs = run_model.model, run_model.forward, run_model.kwargs
        self._log_model()
        opt = build_optimisation(self.cfg, self.model, self.data, self.total_iters, self.device, self._log)
        self.criterion, self.optimizer = opt.criterion, opt.optimizer
        self.poly, self.scheduler = opt.poly, opt.scheduler
        self.epoch, self.iteration, self.epoch_iteration = 0, 0, 0
        self.epoch_loss, self.epoch_images, self.best_miou = 0.0, 0, -1.0
        if self.resume_ckpt is not None:
            self._restore(self.resume_ckpt)
        self.epoch_log = EpochLog(self.out, tensorboard=self.cfg.tensorboard and self.dist.is_main)

    # ------------------------------------------------------------------ setup
    def _log(self, message: str) -> None:
        if self.dist.is_main:
            self._print(message)

    def _setup_runtime(self) -> None:
        configure_torch(self.device, self.cfg.threads)
        seed_everything(self.cfg.seed + self.dist.rank)
        self.amp_dtype = amp_dtype_for(self.cfg, self.device)
        self.scaler = _grad_scaler(self.device, enabled=self.amp_dtype == torch.float16)

    def _log_model(self) -> None:
        params = sum(p.numel() for p in self.model.parameters())
        self._log(f"model: {self.cfg.model}, {self.data.info.num_classes} classes, {params:,} parameters, "
                  f"device {self.device}{f', {self.dist.world_size} processes' if self.dist.enabled else ''}"
                  f"{f', amp {self.amp_dtype}' if self.amp_dtype else ''}")

    def _loader(self, dataset, sampler, batch_size: int) -> DataLoader:
        # An explicit generator: creating an iterator must not advance the global torch RNG
        # (it would shift dropout masks between an uninterrupted and a resumed run).
        if self.cfg.workers > 0:
            prepare_worker_fork()
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=self.cfg.workers,
                          pin_memory=self.device.type == "cuda", drop_last=False, worker_init_fn=_worker_init,
                          generator=torch.Generator().manual_seed(self.cfg.seed))

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint(self, metrics: dict, training_state: bool) -> dict:
        extra = {"config": self.cfg.to_dict(), "epoch": self.epoch, "iteration": self.iteration,
                 "metrics": metrics, "model_kwargs": dict(self.model_kwargs)}
        if training_state:
            extra.update(epoch_iteration=self.epoch_iteration, optimizer=self.optimizer.state_dict(),
                         scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict(),
                         best_miou=self.best_miou, epoch_loss=self.epoch_loss, epoch_images=self.epoch_images,
                         world_size=self.dist.world_size, rng=gather_rng_states(self.dist))
        return make_checkpoint(self.cfg.model, self.model, self.data.info, **extra)

    def save_last(self, metrics: dict) -> None:
        ckpt = self._checkpoint(metrics, training_state=True)  # collective when distributed
        if self.dist.is_main:
            save_atomic(ckpt, self.out / LAST)

    def _restore(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["state_dict"], strict=True)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.poly.total_iters != self.total_iters:  # --epochs changed: stretch the schedule
            self._log(f"schedule: {self.poly.total_iters} -> {self.total_iters} iterations (new --epochs)")
            self.poly.total_iters = self.total_iters
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.iteration = int(ckpt["epoch"]), int(ckpt["iteration"])
        self.epoch_iteration = int(ckpt.get("epoch_iteration", 0))
        self.epoch_loss, self.epoch_images = float(ckpt.get("epoch_loss", 0.0)), int(ckpt.get("epoch_images", 0))
        self.best_miou = float(ckpt.get("best_miou", -1.0))
        states = ckpt.get("rng", [])
        if len(states) == self.dist.world_size:
            set_rng_state(states[self.dist.rank])
        else:
            self._log(f"note: {LAST} was written by {len(states)} process(es), now {self.dist.world_size}: "
                      "RNG states reseeded, the run continues but not bit-exactly")
        self._log(f"resumed {self.out / LAST}: epoch {self.epoch} + {self.epoch_iteration} iterations, "
                  f"iteration {self.iteration}")

    # ------------------------------------------------------------------ training
    def run(self) -> TrainResult:
        """Train to ``cfg.epochs``; returns early (after saving) on SIGINT/SIGTERM."""
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        history: list[dict] = []
        self._log(f"training {cfg.model}: {cfg.epochs} epochs x {self.data.iters_per_epoch} iterations, batch "
                  f"{cfg.batch_size} x {self.dist.world_size}, crop {cfg.crop[1]}x{cfg.crop[0]}, {cfg.optimizer} "
                  f"lr {cfg.lr:g}, loss {cfg.loss}, out {self.out}")
        with self.stop.installed():
            while self.epoch < cfg.epochs:
                started = time.perf_counter()
                completed = self._train_epoch()
                if not completed:
                    self.save_last({"train_loss": self._mean_loss()})
                    self._log(f"stopped by {signal.Signals(self.stop.signum).name}: saved {self.out / LAST} "
                              f"(epoch {self.epoch} + {self.epoch_iteration} iterations); continue with --resume")
                    return self._result(history, self.stop.signum)
                record = self._end_epoch(time.perf_counter() - started)
                history.append(record)
                if self._agreed_stop():
                    self._log(f"stopped by {signal.Signals(self.stop.signum).name} after epoch {self.epoch}; "
                              "continue with --resume")
                    return self._result(history, self.stop.signum)
        return self._result(history, 0)

    def _result(self, history: list[dict], signum: int) -> TrainResult:
        self.epoch_log.close()
        return TrainResult(self.out, self.epoch, self.iteration, self.best_miou, signum, history)

    def _mean_loss(self) -> float:
        return self.epoch_loss / max(1, self.epoch_images)

    def _agreed_stop(self) -> bool:
        """All processes stop together (or none do), whoever got the signal."""
        return all_reduce_values([float(self.stop.signum > 0)], self.device, self.dist)[0] > 0

    def _train_epoch(self) -> bool:
        """One (possibly resumed) epoch; False when stopped by a signal mid-epoch."""
        self.ddp_model.train()
        self.data.sampler.set_epoch(self.epoch, self.epoch_iteration)
        self.data.train_set.set_epoch(self.epoch)
        loader = self._batches()
        bar = self._progress(len(loader))
        tick = time.perf_counter()
        self._session_images = self._session_iters = 0
        try:
            for image, label in loader:
                loss, stop = self._step(image, label)
                self.epoch_iteration += 1
                self.iteration += 1
                n = image.shape[0] * self.dist.world_size
                self.epoch_loss += loss * n
                self.epoch_images += n
                self._session_images += n
                self._session_iters += 1
                if self.on_step is not None:
                    self.on_step(self)
                if bar is not None:
                    rate = self._session_images / max(1e-9, time.perf_counter() - tick)
                    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}",
                                    img_s=f"{rate:.1f}", refresh=False)
                    bar.update(1)
                if stop or (self.stop.signum and not self.dist.enabled):  # many processes: agreed in _step
                    return False
        except DatasetError as exc:
            raise DatasetError.clean(exc) from None
        finally:
            if bar is not None:
                bar.close()
        return True

    def _batches(self) -> _Pairs | _DeviceBatches:
        """This epoch's (image, label) batches: from the DataLoader, or cut on the device."""
        if self.data.device_data is None:
            return _Pairs(self._loader(self.data.train_set, self.data.sampler, self.cfg.batch_size))
        return _DeviceBatches(self.data.device_data, list(self.data.sampler), self.cfg.batch_size, self.epoch)

    def _progress(self, total: int):
        if not (self.cfg.progress and self.dist.is_main):
            return None
        return progress_bar(total=total, desc=f"epoch {self.epoch + 1}/{self.cfg.epochs}", unit="it",
                            dynamic_ncols=True, leave=False)

    def _step(self, image: torch.Tensor, label: torch.Tensor) -> tuple[float, bool]:
        """Forward, loss, agreement on (mean loss, stop request) across processes, then the
        update. A non-finite loss raises before the update touches the weights."""
        image = image.to(self.device, non_blocking=True)
        label = label.to(self.device, non_blocking=True)
        if self.cfg.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.amp_dtype):
            logits = self.ddp_model(image)
        loss = self.criterion(logits.float(), label)
        loss_sum, stop = all_reduce_values([loss.item(), float(self.stop.signum > 0)], self.device, self.dist)
        mean_loss = loss_sum / self.dist.world_size
        if not math.isfinite(mean_loss):
            raise NonFiniteLoss(f"loss is {mean_loss} at epoch {self.epoch + 1}, iteration {self.iteration + 1}: "
                                f"stopping; the last good checkpoint {self.out / LAST} is kept "
                                "(lower --lr, check the labels, or try without --amp)")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if stop > 0 and not self.stop.signum:
            self.stop.request(signal.SIGTERM)  # another process got the signal
        return mean_loss, stop > 0

    def _end_epoch(self, seconds: float) -> dict:
        cfg = self.cfg
        images, iters = self._session_images, self._session_iters  # this process's share of a resumed epoch
        record = {"epoch": self.epoch + 1, "iteration": self.iteration, "train_loss": self._mean_loss(),
                  "lr": self.scheduler.get_last_lr()[0], "images": self.epoch_images, "seconds": seconds,
                  "images_per_s": images / seconds if seconds > 0 else 0.0,
                  "seconds_per_iter": seconds / iters if iters else 0.0}
        gamma = attention_gamma(self.model)
        if gamma is not None:
            record["attention_gamma"] = gamma
        self.epoch += 1
        self.epoch_iteration, self.epoch_loss, self.epoch_images = 0, 0.0, 0
        val: Optional[EvalResult] = None
        if self.data.val_set is not None and (self.epoch % cfg.val_every == 0 or self.epoch == cfg.epochs):
            val = self.validate()
            record.update(val_miou=val.confusion.miou, val_pixel_acc=val.confusion.pixel_accuracy,
                          val_per_class=val.confusion.summary()["per_class"], val_images=val.images)
            entropy = attention_entropy(self.model, self.data.val_set, self.device)
            if entropy is not None:
                record["attention_entropy"], record["attention_entropy_uniform"] = entropy
        improved = val is not None and val.confusion.miou > self.best_miou
        if improved:
            self.best_miou = val.confusion.miou
        record["best_miou"] = self.best_miou if self.best_miou >= 0 else None
        metrics = {k: v for k, v in record.items() if k not in ("epoch", "iteration")}
        self.save_last(metrics)
        if self.dist.is_main:
            if improved:
                save_atomic(self._checkpoint(metrics, training_state=False), self.out / BEST)
            self.epoch_log.write(record)
        self._log(_epoch_line(record, cfg.epochs))
        return record

    def validate(self) -> EvalResult:
        """Validation on every process's shard with rank 0's BatchNorm statistics (DDP
        keeps parameters equal, but each process updates its running stats locally)."""
        if self.dist.enabled:
            for buffer in self.model.buffers():
                dist.broadcast(buffer.data, src=0)
        indices = list(range(self.dist.rank, len(self.data.val_set), self.dist.world_size))
        loader = eval_loader(self.data.val_set, self.cfg.val_batch_size, self.cfg.workers, sampler=indices,
                             pin_memory=self.device.type == "cuda")
        try:
            return evaluate_model(self.model, loader, self.data.val_set.info, self.device, self.amp_dtype)
        except DatasetError as exc:
            raise DatasetError.clean(exc) from None

    def close(self) -> None:
        teardown_distributed(self.dist)


def attention_gamma(model: nn.Module) -> Optional[float]:
    """The attention's residual scale, or None for a model without one. It starts at 0, so
    it is the quickest sign of whether fine-tuning is using the attention at all."""
    for module in model.modules():
        if isinstance(module, SelfCalibrationAttention):
            return float(module.gamma.detach().float().cpu())
    return None


@torch.no_grad()
def attention_entropy(model: nn.Module, dataset: SegmentationDataset, device: torch.device,
                      images: int = 2) -> Optional[tuple[float, float]]:
    """Mean entropy (nats) of the attention's rows on the first ``images`` of ``dataset``,
    and the entropy a uniform row would have (log N'). Near the uniform value the module
    only averages; far below it, each pixel attends to a few regions. None without attention."""
    modules = [m for m in model.modules() if isinstance(m, SelfCalibrationAttention)]
    if not modules or len(dataset) == 0:
        return None
    inputs: list[torch.Tensor] = []
    hook = modules[0].register_forward_pre_hook(lambda _module, args: inputs.append(args[0]))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for index in range(min(images, len(dataset))):
                model(dataset[index][0].unsqueeze(0).to(device))
    finally:
        hook.remove()
        model.train(was_training)
    rows = [modules[0].attention_map(x.float()) for x in inputs]
    entropy = torch.stack([-(p * p.clamp_min(1e-12).log()).sum(-1).mean() for p in rows]).mean()
    return float(entropy), float(math.log(rows[0].shape[-1]))


def _epoch_line(record: dict, epochs: int) -> str:
    line = (f"epoch {record['epoch']}/{epochs}  loss {record['train_loss']:.4f}  lr {record['lr']:.2e}  "
            f"{record['images_per_s']:.1f} img/s  {record['seconds_per_iter']:.2f} s/it")
    if "attention_gamma" in record:
        line += f"  gamma {record['attention_gamma']:+.4f}"
    if "attention_entropy" in record:
        line += f"  entropy {record['attention_entropy']:.2f}/{record['attention_entropy_uniform']:.2f}"
    if "val_miou" in record:
        line += f"  val mIoU {100 * record['val_miou']:.2f}% (best {100 * record['best_miou']:.2f}%)"
    return line


def _grad_scaler(device: torch.device, enabled: bool):
    """GradScaler for fp16 autocast (bf16 needs none); torch.amp's where available."""
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler(device.type, enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)  # torch < 2.3


def _resumed_config(ckpt: dict, given: TrainConfig, log: Callable[[str], None]) -> TrainConfig:
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


def train(cfg: TrainConfig, resume: bool = False, on_step: Optional[Callable[[Trainer], None]] = None,
          log: Callable[[str], None] = print) -> TrainResult:
    """Programmatic entry point (the CLI and the tests use it)."""
    trainer = Trainer(cfg, resume=resume, log=log)
    trainer.on_step = on_step
    try:
        return trainer.run()
    finally:
        trainer.close()


# ============================================================================ CLI
def _scales(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--scales takes comma-separated numbers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"--scales must be positive numbers, got {text!r}")
    return values


def add_parser(subparsers) -> None:
    d = TrainConfig()
    p = subparsers.add_parser("train", help="train a model (single process or torchrun DDP)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                              argument_default=argparse.SUPPRESS)
    a = p.add_argument
    a("--model", choices=tuple(MODELS), help="registry model to train (required unless --resume)")
    a("--dataset", choices=DATASET_KINDS, help=f"default {d.dataset}")
    a("--data-root", help=DATA_ROOT_HELP)
    a("--out", required=True, help="run folder: last.pt, best.pt, metrics.jsonl, tensorboard/")
    a("--init-from", help="checkpoint whose weights initialise the model (e.g. an erfnet_enc run's best.pt)")
    a("--train-split", help="split to train on (default train; camvid: trainval = train + val, the paper's "
                            "protocol for test-set models)")
    a("--val-split", help=f"split to validate on (default {d.val_split})")
    a("--resume", action="store_true", default=False, help="continue the run in --out from its last.pt")
    a("--epochs", type=int, help=f"default {d.epochs}")
    a("--batch-size", type=int, help=f"per process, default {d.batch_size}")
    add_option(p, "--crop-size", dest="crop", type=wxh, metavar="WxH",
               aliases=[Alias("--crop", hxw, "--crop was HxW; --crop-size is WxH: --crop 360x480 is "
                                             "--crop-size 480x360")],
               help="training crop WxH (default camvid 480x360, cityscapes 1024x512, folder 512x512)")
    a("--scales", type=_scales, help="random scales, comma-separated (default the paper's 0.75,...,2.0)")
    a("--no-flip", dest="flip", action="store_false", help="no random horizontal flip")
    a("--lr", type=float, help="initial learning rate (default adam 5e-4, sgd 4.5e-2)")
    a("--optimizer", choices=OPTIMIZERS, help=f"default {d.optimizer}")
    a("--attention-lr-mult", type=float, help="learning rate of the attention's parameters (gamma, q/k/v) "
                                              f"as a multiple of --lr (default {d.attention_lr_mult:g})")
    a("--attention-weight-decay", type=float, help="weight decay of the attention's parameters "
                                                   "(default: --weight-decay)")
    a("--momentum", type=float, help=f"SGD momentum, default {d.momentum}")
    a("--weight-decay", type=float, help=f"default {d.weight_decay:g}")
    a("--poly-power", type=float, help=f"poly decay power, default {d.poly_power}")
    a("--warmup-iters", type=int, help="linear warm-up iterations (default 0)")
    a("--warmup-ratio", type=float, help="lr factor at the start of the warm-up (default 1/3)")
    a("--loss", choices=LOSSES, help=f"default {d.loss}")
    a("--ohem-thresh", type=float, help=f"OHEM probability threshold, default {d.ohem_thresh}")
    a("--ohem-min-kept", type=int, help="OHEM minimum kept pixels per batch (default batch*crop pixels/16)")
    a("--class-weights", choices=WEIGHTINGS, help="weighting for --loss weighted-ce (default enet)")
    a("--class-weight-c", type=float, help=f"ENet constant c in 1/ln(c+p), default {d.class_weight_c}")
    a("--val-every", type=int, help="validate every N epochs (default 1; 0 = never)")
    add_option(p, "--val-resize", dest="val_size", type=wxh, metavar="WxH",
               aliases=[Alias("--val-size", hxw, "--val-size was HxW; --val-resize is WxH")],
               help="resize validation images to this size WxH for the network (default: their own size)")
    a("--val-batch-size", type=int, help=f"default {d.val_batch_size}")
    a("--limit", type=int, help="use only the first N images of each split (smoke runs)")
    a("--workers", type=int, help=f"DataLoader workers per process, default {d.workers}")
    a("--cache", action="store_true", help="decode the training images once into memory (small datasets)")
    a("--data-on-device", action="store_true", help="hold the training set on the device and augment it there "
                                                    "(GPU training of small datasets; implies --cache)")
    a("--seed", type=int, help=f"default {d.seed}")
    add_device(p, argparse.SUPPRESS, "; under torchrun cuda:LOCAL_RANK")
    a("--amp", action="store_true", help="mixed precision (autocast; GradScaler for fp16)")
    a("--amp-dtype", choices=AMP_DTYPES, help="auto = fp16 on CUDA, bf16 on CPU")
    add_threads(p, argparse.SUPPRESS)
    a("--sync-bn", action="store_true", help="SyncBatchNorm across processes (CUDA DDP)")
    a("--pool", type=int, help="EAC key/value pooling of eacnet_erf/eacnet_dab (default 2)")
    a("--channels-last", action="store_true", help="NHWC memory format")
    a("--no-tensorboard", dest="tensorboard", action="store_false", help="no TensorBoard logs")
    a("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig defaults overlaid with the options actually given."""
    known = TrainConfig.__dataclass_fields__
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in known})


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if not args.resume and not cfg.model:
        raise ValueError("--model is required (or --resume to continue a run)")
    try:
        result = train(cfg, resume=args.resume)
    except NonFiniteLoss as exc:
        print(f"eacnet train: {exc}", file=sys.stderr)
        return 1
    if result.stopped_by_signal:
        return 128 + result.stopped_by_signal
    if result.best_miou >= 0 and int(os.environ.get("RANK", "0")) == 0:
        print(f"done: best val mIoU {100 * result.best_miou:.2f}% -> {result.out / BEST}")
    return 0
