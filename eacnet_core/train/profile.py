"""``eacnet train-profile``: where a training step's time goes, and the step's img/s, for
eager vs compiled and one model vs several trained together.

For each configuration (compile mode x model set) it builds the models as ``train`` does
(registry model, channels-last, autocast, weighted cross-entropy, fused Adam), then

- times each stage of a step with the device synchronised around it: data (augmenting a
  batch on the device from CamVid, or drawing random tensors without ``--data-root``),
  forward (+ loss when compiled: one graph), loss, backward, optimiser step;
- measures the real rate: ``--steps`` steps without any synchronisation inside, one at
  the end, as training runs (several models: one batch feeds each, each on its own
  CUDA stream).

One table, one line per configuration; img/s counts every model's images (a pair at 100
steps/s of batch 16 is 3,200 img/s).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from eacnet_core.models import MODELS, build_model
from eacnet_core.options import add_option, add_threads, at_least, wxh
from eacnet_core.runtime import autocast, configure_torch, resolve_device, sync
from eacnet_core.train.config import COMPILE_MODES, TrainConfig
from eacnet_core.train.losses import build_criterion
from eacnet_core.train.parts import build_optimizer
from eacnet_core.train.step import compile_mode_for, compiled_loss

STAGES = ("data", "forward", "loss", "backward", "optimizer")


@dataclass
class _Member:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_of: Callable
    forward: Callable
    criterion: nn.Module


def _member(name: str, classes: int, device: torch.device, amp: torch.dtype | None, mode: str) -> _Member:
    torch.manual_seed(0)
    model = build_model(name, classes).to(device).to(memory_format=torch.channels_last).train()
    criterion = build_criterion("weighted-ce", 255, torch.ones(classes)).to(device)
    optimizer = build_optimizer(TrainConfig(model=name, out="-", lr=1e-3, weight_decay=2e-4), model, device)

    def forward(image):
        with autocast(device, amp):
            return model(image)

    return _Member(model, optimizer, compiled_loss(model, criterion, device, amp, mode), forward, criterion)


class _Batches:
    """Augmented CamVid batches on the device (``DeviceTrainData``), or random ones."""

    def __init__(self, data_root: str, batch: int, crop: tuple[int, int], device: torch.device, classes: int):
        self.batch, self.crop, self.device, self.classes, self.step = batch, crop, device, classes, 0
        self.data = None
        if data_root:
            from eacnet_core.data.datasets import build_dataset, dataset_info
            from eacnet_core.data.transforms import TrainTransform
            from eacnet_core.train.device_data import DeviceTrainData

            info = dataset_info("camvid", data_root)
            tf = TrainTransform(crop, info.mean, info.std, info.ignore_index)
            dataset = build_dataset("camvid", data_root, "trainval", 0, tf, 0)
            dataset.cache_in_memory()
            self.data = DeviceTrainData(dataset, tf, device)

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.step += 1
        if self.data is not None:
            indices = [(self.step * self.batch + i) % len(self.data) for i in range(self.batch)]
            image, label = self.data.batch(indices, epoch=0)
        else:
            image = torch.randn(self.batch, 3, *self.crop, device=self.device)
            label = torch.randint(0, self.classes, (self.batch, *self.crop), device=self.device)
        return image.contiguous(memory_format=torch.channels_last), label


def _train_step(member: _Member, image, label) -> torch.Tensor:
    loss = member.loss_of(image, label)
    member.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    member.optimizer.step()
    return loss.detach()


def _staged(members: Sequence[_Member], batches: _Batches, compiled: bool, steps: int,
            device: torch.device) -> dict[str, float]:
    """Mean ms per step of each stage, the device synchronised around each."""
    totals = dict.fromkeys(STAGES, 0.0)

    def timed(stage: str, fn):
        sync(device)
        start = time.perf_counter()
        out = fn()
        sync(device)
        totals[stage] += time.perf_counter() - start
        return out

    for _ in range(steps):
        image, label = timed("data", batches)
        for m in members:
            if compiled:
                loss = timed("forward", lambda m=m, x=image, y=label: m.loss_of(x, y))
            else:
                logits = timed("forward", lambda m=m, x=image: m.forward(x))
                loss = timed("loss", lambda m=m, z=logits, y=label: m.criterion(z.float(), y))
            m.optimizer.zero_grad(set_to_none=True)
            timed("backward", loss.backward)
            timed("optimizer", m.optimizer.step)
    return {k: 1e3 * v / steps for k, v in totals.items()}


def _rate(members: Sequence[_Member], batches: _Batches, steps: int, device: torch.device) -> float:
    """Images per second over ``steps`` unsynchronised steps (all models' images)."""
    streams = [torch.cuda.Stream(device) for _ in members] if device.type == "cuda" and len(members) > 1 else None
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        image, label = batches()
        if streams is None:
            for m in members:
                _train_step(m, image, label)
            continue
        current = torch.cuda.current_stream(device)
        for m, stream in zip(members, streams, strict=True):
            stream.wait_stream(current)
            with torch.cuda.stream(stream):
                _train_step(m, image, label)
            image.record_stream(stream)
            label.record_stream(stream)
        for stream in streams:
            current.wait_stream(stream)
    sync(device)
    return steps * batches.batch * len(members) / (time.perf_counter() - start)


def profile(models: Sequence[Sequence[str]], modes: Sequence[str], device: torch.device, batch: int,
            crop: tuple[int, int], amp: torch.dtype | None, steps: int, warmup: int, data_root: str = "",
            classes: int = 11, log=print) -> list[dict]:
    rows = []
    batches = _Batches(data_root, batch, crop, device, classes)
    for mode in modes:
        concrete = compile_mode_for(mode, device)
        for names in models:
            row = {"models": ",".join(names), "compile": concrete or "eager", "batch": batch,
                   "crop": f"{crop[1]}x{crop[0]}", "device": str(device), "amp": str(amp).replace("torch.", "")}
            try:
                members = [_member(n, classes, device, amp, concrete) for n in names]
                started = time.perf_counter()
                for _ in range(warmup):  # compiles, autotunes, records CUDA graphs
                    image, label = batches()
                    for m in members:
                        _train_step(m, image, label)
                sync(device)
                row["warmup_s"] = time.perf_counter() - started
                row["ms"] = _staged(members, batches, bool(concrete), max(1, steps // 4), device)
                row["img_s"] = _rate(members, batches, steps, device)
            except Exception as exc:  # one failing configuration must not cost the others' figures
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
            rows.append(row)
            log(_line(row))
    return rows


def _line(row: dict) -> str:
    head = f"{row['models']:<22} {row['compile']:<28}"
    if "error" in row:
        return f"{head} failed: {row['error']}"
    stages = "  ".join(f"{k} {v:7.2f}" for k, v in row["ms"].items())
    return f"{head} {row['img_s']:8.1f} img/s   ms/step: {stages}   (warm-up {row['warmup_s']:.0f} s)"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("train-profile", help="per-stage timings and img/s of training steps",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["eacnet_dab", "dabnet", "eacnet_dab,dabnet"],
                   help="model sets, each comma-separated (a set trains together); default: each of the DAB "
                        "pair alone, then the pair")
    p.add_argument("--compile", nargs="+", default=["", "auto"], choices=COMPILE_MODES, metavar="MODE",
                   help="compile modes to compare ('' = eager; default: eager and auto)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=at_least(1), default=16)
    add_option(p, "--crop-size", dest="crop", type=wxh, default=(360, 480), metavar="WxH",
               help="training crop WxH (default 480x360)")
    p.add_argument("--amp-dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    p.add_argument("--steps", type=at_least(1), default=40, help="timed steps per configuration")
    p.add_argument("--warmup", type=at_least(0), default=5, help="untimed steps first (compilation happens here)")
    p.add_argument("--data-root", default="", help="CamVid folder: time the on-device augmentation of real batches")
    add_threads(p)
    p.add_argument("--json", help="also write the rows to this file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for names in args.models:
        unknown = [n for n in names.split(",") if n not in MODELS]
        if unknown:
            raise ValueError(f"--models: unknown {', '.join(unknown)}; known: {', '.join(MODELS)}")
    if args.batch_size < 1 or args.steps < 1 or args.warmup < 0:
        raise ValueError("--batch-size and --steps must be >= 1, --warmup >= 0")
    device = resolve_device(args.device, fallback=False)
    configure_torch(device, args.threads)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[args.amp_dtype]
    print(f"training steps on {device}: batch {args.batch_size}, crop {args.crop[1]}x{args.crop[0]}, "
          f"{args.amp_dtype}, channels-last, fused Adam, {args.steps} steps"
          + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""))
    rows = profile([n.split(",") for n in args.models], args.compile, device, args.batch_size, tuple(args.crop), amp,
                   args.steps, args.warmup, args.data_root)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0 if all("error" not in r for r in rows) else 1
