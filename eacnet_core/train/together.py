"""Several models trained in one process on the same batches (``train_together``, the CLI's
``--models``): one augmented batch per step feeds each model in turn (on its own CUDA
stream on a GPU); each keeps its own run folder, checkpoints, optimiser and random
stream, so each ends exactly where it would have trained alone."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Optional

import torch
from torch import nn

from eacnet_core.checkpoint import CheckpointError
from eacnet_core.data.datasets import DatasetError
from eacnet_core.train.config import TrainConfig
from eacnet_core.train.loop import Trainer, TrainResult, close_batches, train

#: Options that must agree for models to train on the same batches (``train_together``).
SHARED_DATA_FIELDS = ("dataset", "data_root", "train_split", "val_split", "epochs", "batch_size", "crop", "scales",
                      "flip", "val_every", "val_size", "limit", "seed", "device", "cache", "data_on_device",
                      "channels_last", "workers")


class _MemberRng:
    """A model's own torch random stream (dropout masks) while several models take turns
    on one process: swapped in around each of its steps, so each model draws exactly what
    it would draw training alone. Only models with dropout need one."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        outside = _MemberRng(self.device)
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)
        try:
            yield
        finally:
            self.cpu = torch.get_rng_state()
            if self.cuda is not None:
                self.cuda = torch.cuda.get_rng_state(self.device)
            torch.set_rng_state(outside.cpu)
            if outside.cuda is not None:
                torch.cuda.set_rng_state(outside.cuda, self.device)


def _stochastic(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules())


@contextlib.contextmanager
def _on_stream(stream, tensors: Sequence[torch.Tensor]) -> Iterator[None]:
    """Run the block on ``stream`` (None: the current one) after the work queued so far,
    the shared ``tensors`` kept alive until the stream has used them."""
    if stream is None:
        yield
        return
    stream.wait_stream(torch.cuda.current_stream(stream.device))
    with torch.cuda.stream(stream):
        yield
    for tensor in tensors:
        tensor.record_stream(stream)


def _check_together(cfgs: Sequence[TrainConfig]) -> None:
    if len({c.model for c in cfgs}) != len(cfgs) or len({c.out for c in cfgs}) != len(cfgs):
        raise ValueError("--models: each model once, each with its own run folder")
    for name in SHARED_DATA_FIELDS:
        values = {repr(getattr(c, name)) for c in cfgs}
        if len(values) > 1:
            raise ValueError(f"models trained together share their batches: --{name.replace('_', '-')} differs "
                             f"({', '.join(sorted(values))})")


def train_together(cfgs: Sequence[TrainConfig], resume: bool = False, log: Callable[[str], None] = print,
                   on_step: Optional[Callable[[Trainer], None]] = None) -> list[TrainResult]:
    """Train several models (e.g. an equal-budget pair) in one process on the same batches.

    One batch per step, augmented once, feeds each model in turn (each on its own CUDA
    stream on a GPU, so one model's small kernels fill the other's gaps); each model has
    its own run folder, checkpoints, log, optimiser and random stream, so it ends exactly
    where training it alone would have (the same draws). A signal stops all of them at
    the same step. Records' ``seconds`` are the shared epoch's wall time."""
    if len(cfgs) == 1:
        return [train(cfgs[0], resume=resume, on_step=on_step, log=log)]
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("--models trains in one process; under torchrun train one model per run")
    _check_together(cfgs)
    members: list[Trainer] = []
    rngs: list[Optional[_MemberRng]] = []
    try:
        for cfg in cfgs:
            members.append(Trainer(cfg, resume=resume, log=log, data=members[0].data if members else None))
            rngs.append(_MemberRng(members[-1].device) if _stochastic(members[-1].model) else None)
        positions = {(m.epoch, m.epoch_iteration) for m in members}
        if len(positions) > 1:
            raise CheckpointError("--models --resume: the runs stand at different points (epoch, iteration): "
                                  f"{sorted(positions)}; resume them one by one to the same point first")
        return _run_together(members, rngs, on_step)
    finally:
        for member in members:
            member.close()


def _run_together(members: list[Trainer], rngs: list, on_step) -> list[TrainResult]:
    first = members[0]
    for member in members:
        member.stop, member.on_step = first.stop, on_step
        member.out.mkdir(parents=True, exist_ok=True)
        member.announce()
    cuda = first.device.type == "cuda"
    streams = [torch.cuda.Stream(first.device) if cuda else None for _ in members]
    histories: list[list[dict]] = [[] for _ in members]
    with first.stop.installed():
        while first.epoch < first.cfg.epochs:
            started = time.perf_counter()
            for member in members:
                member.begin_epoch()
            pairs = iter(first.batches())
            try:
                for image, label in pairs:
                    image, label = first.to_device(image, label)
                    for member, stream, rng in zip(members, streams, rngs, strict=True):
                        with _on_stream(stream, (image, label)), (rng.active() if rng else contextlib.nullcontext()):
                            member.step(image, label)
                    if cuda:
                        for stream in streams:
                            torch.cuda.current_stream(first.device).wait_stream(stream)
                    if first.stop.signum and not first.epoch_done:
                        return [m.stopped_mid_epoch(h) for m, h in zip(members, histories, strict=True)]
                    if first.stop.signum:
                        break
            except DatasetError as exc:
                raise DatasetError.clean(exc) from None
            finally:
                close_batches(pairs)
            seconds = time.perf_counter() - started
            for member, history in zip(members, histories, strict=True):
                history.append(member.end_epoch(seconds))
            if first.stop.signum:
                return [m.stopped_after_epoch(h) for m, h in zip(members, histories, strict=True)]
    return [m._result(h, 0) for m, h in zip(members, histories, strict=True)]
