"""``eacnet train``: train a registry model on CamVid, Cityscapes or a plain folder dataset.

One process or many (``torchrun --nproc_per_node=N``: DistributedDataParallel, nccl on
GPU, gloo on CPU). Checkpoints are self-describing (``checkpoint.make_checkpoint``) and
load with ``weights_only=True``: ``last.pt`` every epoch (and on SIGINT/SIGTERM),
``best.pt`` by validation mIoU. ``--resume`` continues exactly where ``last.pt`` stopped,
mid-epoch included: model, optimiser, scheduler, AMP scaler, position in the epoch and
the RNG states of every process are restored, and the data order and augmentation are
functions of (seed, epoch, index), not of how far global RNGs have run.

Several models can train in one process on the same batches (``train_together``, the
CLI's ``--models``): one augmented batch per step feeds each model in turn (on its own
CUDA stream on a GPU), so an equal-budget pair sees identical data and costs one data
pipeline. Each model keeps its own run folder, checkpoints and random state, and ends
exactly where it would have trained alone.

The run's parts (``train.parts``), its files and --resume (``train.run_files``), the
attention's statistics (``train.attention_stats``), several models on the same batches
(``train.together``), the processes (``train.distributed``), ``--init-from``
(``train.init_from``), the step's device-side pieces (``train.step``) and the command
line (``train.cli``) live beside this loop.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from eacnet_core.checkpoint import make_checkpoint, save_atomic
from eacnet_core.data.datasets import DatasetError, prepare_worker_fork
from eacnet_core.data.roots import default_data_root
from eacnet_core.evaluate.evaluation import EvalResult, eval_loader, evaluate_model
from eacnet_core.progress import progress_bar
from eacnet_core.runtime import configure_torch
from eacnet_core.train.attention_stats import attention_entropy, attention_gamma
from eacnet_core.train.config import TrainConfig, sized_config
from eacnet_core.train.device_data import DeviceTrainData
from eacnet_core.train.distributed import (
    all_reduce_values,
    gather_rng_states,
    seed_everything,
    set_rng_state,
    setup_distributed,
    teardown_distributed,
)
from eacnet_core.train.model_card import write_model_card
from eacnet_core.train.parts import (
    RunData,
    amp_dtype_for,
    build_optimisation,
    build_run_data,
    build_run_model,
    grad_scaler,
)
from eacnet_core.train.run_files import BEST, LAST, EpochLog, resumable_checkpoint, resumed_config
from eacnet_core.train.step import LossMeter, WeightEma, adam_implementation, compile_mode_for, compiled_loss

__all__ = ["NonFiniteLoss", "StopSignal", "Trainer", "TrainResult", "train"]

#: The progress bar's loss (a device read) is refreshed every this many steps.
PROGRESS_LOSS_EVERY = 20


class NonFiniteLoss(RuntimeError):
    """The loss became NaN/inf: the run stops and the last good checkpoint stays."""


class _Pairs:
    """A DataLoader's (image, label, index) batches as (image, label)."""

    def __init__(self, loader: DataLoader):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return ((image, label) for image, label, _ in self.loader)


def close_batches(batches: Iterator) -> None:
    """End an epoch's batches now: a DataLoader's workers stop when its iterator goes, and a
    frame kept by an error's traceback would otherwise keep it until a garbage collection."""
    close = getattr(batches, "close", None)
    if close is not None:
        close()


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
    """One training run: built from a resolved TrainConfig, then ``run()``. ``data`` lets
    several runs share one dataset, sampler and device copy (``train_together``)."""

    def __init__(self, cfg: TrainConfig, resume: bool = False, log: Callable[[str], None] = print,
                 data: Optional[RunData] = None):
        self._print = log
        self.dist, self.device = setup_distributed(cfg.device)
        try:
            self._build(cfg, resume, data)
        except BaseException:
            teardown_distributed(self.dist)
            raise

    def _build(self, cfg: TrainConfig, resume: bool, data: Optional[RunData]) -> None:
        self.out = Path(cfg.out)
        self.resume_ckpt = resumable_checkpoint(self.out) if resume else None
        if self.resume_ckpt is not None:
            cfg = resumed_config(self.resume_ckpt, cfg, self._log)
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
        self.data = data or build_run_data(self.cfg, self.dist, self.device, self._log)
        self.cfg = sized_config(self.cfg, len(self.data.train_set), self.data.iters_per_epoch)
        self.total_iters = self.data.iters_per_epoch * self.cfg.epochs
        run_model = build_run_model(self.cfg, self.data.info, self.dist, self.device, self._log,
                                    initialise=self.resume_ckpt is None)
        self.model, self.ddp_model, self.model_kwargs = run_model.model, run_model.forward, run_model.kwargs
        self.head = run_model.head if self.resume_ckpt is None else list(self.resume_ckpt.get("head_params", []))
        self._log_model()
        opt = build_optimisation(self.cfg, self.model, self.data, self.total_iters, self.device, self._log,
                                 self.head)
        self.criterion, self.optimizer = opt.criterion, opt.optimizer
        self.poly, self.scheduler = opt.poly, opt.scheduler
        self.ema = WeightEma(self.model, self.cfg.ema) if self.cfg.ema > 0 else None
        self.compile_mode = compile_mode_for(self.cfg.compile, self.device)
        self.loss_of = compiled_loss(self.ddp_model, self.criterion, self.device, self.amp_dtype, self.compile_mode)
        self.epoch, self.iteration, self.epoch_iteration = 0, 0, 0
        self.epoch_images, self.best_miou = 0, -1.0
        self.loss_meter = LossMeter(self.device)
        if self.resume_ckpt is not None:
            self._restore(self.resume_ckpt)
        self.resume_ckpt = None  # read once; not kept for the whole run
        self.epoch_log = EpochLog(self.out, tensorboard=self.cfg.tensorboard and self.dist.is_main)

    # ------------------------------------------------------------------ setup
    def _log(self, message: str) -> None:
        if self.dist.is_main:
            self._print(message)

    def _setup_runtime(self) -> None:
        configure_torch(self.device, self.cfg.threads)
        seed_everything(self.cfg.seed + self.dist.rank)
        self.amp_dtype = amp_dtype_for(self.cfg, self.device)
        self.scaler = grad_scaler(self.device, enabled=self.amp_dtype == torch.float16)

    def _log_model(self) -> None:
        params = sum(p.numel() for p in self.model.parameters())
        self._log(f"model: {self.cfg.model}, {self.data.info.num_classes} classes, {params:,} parameters, "
                  f"device {self.device}{f', {self.dist.world_size} processes' if self.dist.enabled else ''}"
                  f"{f', amp {self.amp_dtype}' if self.amp_dtype else ''}"
                  f"{f', compiled ({self.cfg.compile})' if self.cfg.compile else ''}"
                  f"{f', ema {self.cfg.ema:g}' if self.cfg.ema else ''}")

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
        """A checkpoint of the run. With --ema its ``state_dict`` is the average (what is
        evaluated and shipped) and ``train_state_dict`` the weights training continues from."""
        extra = {"config": self.cfg.to_dict(), "epoch": self.epoch, "iteration": self.iteration,
                 "metrics": metrics, "model_kwargs": dict(self.model_kwargs)}
        if self.head:
            extra["head_params"] = list(self.head)
        if training_state:
            extra.update(epoch_iteration=self.epoch_iteration, optimizer=self.optimizer.state_dict(),
                         scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict(),
                         best_miou=self.best_miou, epoch_loss=self._loss_sum(), epoch_images=self.epoch_images,
                         world_size=self.dist.world_size, rng=gather_rng_states(self.dist))
        ckpt = make_checkpoint(self.cfg.model, self.model, self.data.info, **extra)
        if self.ema is not None:
            if training_state:
                ckpt.update(train_state_dict=ckpt["state_dict"], ema_updates=self.ema.updates)
            ckpt["state_dict"] = self.ema.state_dict()
        return ckpt

    def save_last(self, metrics: dict) -> None:
        ckpt = self._checkpoint(metrics, training_state=True)  # collective when distributed
        if self.dist.is_main:
            save_atomic(ckpt, self.out / LAST)

    def _restore(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt.get("train_state_dict", ckpt["state_dict"]), strict=True)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        for group in self.optimizer.param_groups:  # this device's kernel, whatever device saved the state
            if self.cfg.optimizer == "adam":
                group.update({"foreach": None, "fused": None, **adam_implementation(self.device)})
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.poly.total_iters != self.total_iters:  # --epochs changed: stretch the schedule
            self._log(f"schedule: {self.poly.total_iters} -> {self.total_iters} iterations (new --epochs)")
            self.poly.total_iters = self.total_iters
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None and "train_state_dict" in ckpt:
            self.ema.load(ckpt["state_dict"], ckpt.get("ema_updates", 0))
        elif self.ema is not None:
            self._log("note: the checkpoint has no weight average: --ema starts from its weights")
        self.epoch, self.iteration = int(ckpt["epoch"]), int(ckpt["iteration"])
        self.epoch_iteration = int(ckpt.get("epoch_iteration", 0))
        self.loss_meter.reset(float(ckpt.get("epoch_loss", 0.0)))
        self.epoch_images = int(ckpt.get("epoch_images", 0))
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
        self.out.mkdir(parents=True, exist_ok=True)
        history: list[dict] = []
        self.announce()
        with self.stop.installed():
            while self.epoch < self.cfg.epochs:
                started = time.perf_counter()
                self.begin_epoch()
                completed = self._train_epoch()
                if not completed and not self.epoch_done:
                    return self.stopped_mid_epoch(history)
                history.append(self.end_epoch(time.perf_counter() - started))
                if not completed or self._agreed_stop():
                    return self.stopped_after_epoch(history)
        return self._result(history, 0)

    def announce(self) -> None:
        cfg = self.cfg
        self._log(f"training {cfg.model}: {cfg.epochs} epochs x {self.data.iters_per_epoch} iterations, batch "
                  f"{cfg.batch_size} x {self.dist.world_size}, crop {cfg.crop[1]}x{cfg.crop[0]}, {cfg.optimizer} "
                  f"lr {cfg.lr:g}, loss {cfg.loss}, out {self.out}")
        if cfg.recipe == "finetune" and not cfg.init_from:
            self._log("note: --recipe finetune without --init-from trains from scratch at fine-tuning rates")
        if cfg.recipe:
            self._log(f"recipe {cfg.recipe}: {len(self.data.train_set)} training images -> {cfg.epochs} epochs, "
                      f"warm-up {cfg.warmup_iters} iterations, lr {cfg.lr:g} (loaded), "
                      f"{cfg.lr * cfg.head_lr_mult:g} (fresh: {len(self.head)} tensors)")

    @property
    def epoch_done(self) -> bool:
        """Every batch of the epoch trained (a stop on its last step still ends the epoch)."""
        return self.epoch_iteration >= self.data.iters_per_epoch

    def stopped_mid_epoch(self, history: list[dict]) -> TrainResult:
        self.check_finite()
        self.save_last({"train_loss": self._mean_loss()})
        self._log(f"stopped by {signal.Signals(self.stop.signum).name}: saved {self.out / LAST} "
                  f"(epoch {self.epoch} + {self.epoch_iteration} iterations); continue with --resume")
        return self._result(history, self.stop.signum)

    def stopped_after_epoch(self, history: list[dict]) -> TrainResult:
        self._log(f"stopped by {signal.Signals(self.stop.signum).name} after epoch {self.epoch}; "
                  "continue with --resume")
        return self._result(history, self.stop.signum)

    def _result(self, history: list[dict], signum: int) -> TrainResult:
        self.epoch_log.close()
        return TrainResult(self.out, self.epoch, self.iteration, self.best_miou, signum, history)

    def _loss_sum(self) -> float:
        return self.loss_meter.read()[0]

    def _mean_loss(self) -> float:
        return self._loss_sum() / max(1, self.epoch_images)

    def check_finite(self) -> None:
        """Raise NonFiniteLoss when a loss of this epoch was NaN/inf (one device read),
        before anything of the epoch is saved: the previous checkpoint stays the last good one."""
        _, bad = self.loss_meter.read()
        if bad is None:
            return
        iteration, value = bad
        raise NonFiniteLoss(f"loss is {value} at epoch {self.epoch + 1}, iteration {iteration + 1}: "
                            f"stopping; the last good checkpoint {self.out / LAST} is kept "
                            "(lower --lr, check the labels, or try without --amp)")

    def _agreed_stop(self) -> bool:
        """All processes stop together (or none do), whoever got the signal."""
        return all_reduce_values([float(self.stop.signum > 0)], self.device, self.dist)[0] > 0

    def begin_epoch(self) -> None:
        """Train mode, and the sampler and augmentation set to this (possibly resumed) epoch."""
        self.ddp_model.train()
        self.data.sampler.set_epoch(self.epoch, self.epoch_iteration)
        self.data.train_set.set_epoch(self.epoch)
        self._session_images = self._session_iters = 0

    def _train_epoch(self) -> bool:
        """One (possibly resumed) epoch; False when stopped by a signal mid-epoch."""
        loader = self.batches()
        bar = self._progress(len(loader))
        tick = time.perf_counter()
        pairs = iter(loader)
        try:
            for image, label in pairs:
                image, label = self.to_device(image, label)
                stop = self.step(image, label)
                if bar is not None:
                    self._show_progress(bar, tick)
                if stop:
                    return False
        except DatasetError as exc:
            raise DatasetError.clean(exc) from None
        finally:
            close_batches(pairs)  # the error's traceback keeps this frame: stop the workers now
            if bar is not None:
                bar.close()
        return True

    def batches(self) -> _Pairs | _DeviceBatches:
        """This epoch's (image, label) batches: from the DataLoader, or cut on the device."""
        if self.data.device_data is None:
            return _Pairs(self._loader(self.data.train_set, self.data.sampler, self.cfg.batch_size))
        return _DeviceBatches(self.data.device_data, list(self.data.sampler), self.cfg.batch_size, self.epoch)

    def to_device(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image = image.to(self.device, non_blocking=True)
        label = label.to(self.device, non_blocking=True)
        if self.cfg.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        return image, label

    def _progress(self, total: int):
        if not (self.cfg.progress and self.dist.is_main):
            return None
        return progress_bar(total=total, desc=f"epoch {self.epoch + 1}/{self.cfg.epochs}", unit="it",
                            dynamic_ncols=True, leave=False)

    def _show_progress(self, bar, tick: float) -> None:
        """The bar moves every step; the loss on it (a device read) is refreshed every
        PROGRESS_LOSS_EVERY steps only."""
        postfix = {"lr": f"{self.scheduler.get_last_lr()[0]:.2e}",
                   "img_s": f"{self._session_images / max(1e-9, time.perf_counter() - tick):.1f}"}
        if self._session_iters % PROGRESS_LOSS_EVERY == 1:
            postfix["loss"] = f"{self._mean_loss():.4f}"
            bar.set_postfix(**postfix, refresh=False)
        bar.update(1)

    def step(self, image: torch.Tensor, label: torch.Tensor) -> bool:
        """Forward, loss, backward and update on device-resident ``image``/``label``, with
        no read of the device (many processes: the loss and a stop request are agreed on
        first, as DDP synchronises every step anyway). True when the run should stop."""
        loss = self.loss_of(image, label)
        logged, stop = loss.detach(), bool(self.stop.signum)
        if self.dist.enabled:
            loss_sum, stopping = all_reduce_values([loss.item(), float(stop)], self.device, self.dist)
            logged, stop = torch.tensor(loss_sum / self.dist.world_size, device=self.device), stopping > 0
            if stop and not self.stop.signum:
                self.stop.request(signal.SIGTERM)  # another process got the signal
        n = image.shape[0] * self.dist.world_size
        self.loss_meter.add(logged, n, self.iteration)
        if self.dist.enabled and not math.isfinite(loss_sum):  # read already: stop before the update
            self.check_finite()
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.epoch_iteration += 1
        self.iteration += 1
        self.epoch_images += n
        self._session_images += n
        self._session_iters += 1
        if self.on_step is not None:
            self.on_step(self)
        return stop or (bool(self.stop.signum) and not self.dist.enabled)  # many processes: agreed above

    def end_epoch(self, seconds: float) -> dict:
        """Check the epoch's losses, record it, validate when due, save; the epoch's one device read."""
        self.check_finite()
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
        self.epoch_iteration, self.epoch_images = 0, 0
        self.loss_meter.reset()
        val: Optional[EvalResult] = None
        if self.data.val_set is not None and (self.epoch % cfg.val_every == 0 or self.epoch == cfg.epochs):
            val = self.validate()
            record.update(val_miou=val.confusion.miou, val_pixel_acc=val.confusion.pixel_accuracy,
                          val_per_class=val.confusion.summary()["per_class"], val_images=val.images)
            with self._evaluated_weights():
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
            write_model_card(cfg, self.data.info, len(self.data.train_set),
                             len(self.data.val_set) if self.data.val_set is not None else None, str(self.device))
        self._log(_epoch_line(record, cfg.epochs))
        return record

    def _evaluated_weights(self):
        """The weights validation and checkpoints judge: the average with --ema, else the model's own."""
        return self.ema.applied(self.model) if self.ema is not None else contextlib.nullcontext(self.model)

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
            with self._evaluated_weights():
                return evaluate_model(self.model, loader, self.data.val_set.info, self.device, self.amp_dtype)
        except DatasetError as exc:
            raise DatasetError.clean(exc) from None

    def close(self) -> None:
        teardown_distributed(self.dist)


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


def train(cfg: TrainConfig, resume: bool = False, on_step: Optional[Callable[[Trainer], None]] = None,
          log: Callable[[str], None] = print) -> TrainResult:
    """Programmatic entry point (the CLI and the tests use it)."""
    trainer = Trainer(cfg, resume=resume, log=log)
    trainer.on_step = on_step
    try:
        return trainer.run()
    finally:
        trainer.close()
