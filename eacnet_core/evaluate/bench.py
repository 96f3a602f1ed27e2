"""``eacnet bench``: latency, parameters and operation counts of the model family.

All requested models are timed in one process, interleaved round by round (one run of
each model per round), so slow drifts of a shared machine hit every model alike and
the ratios stay fair. Warm-up runs are excluded; CUDA is synchronised around each run.
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eacnet_core.evaluate.flops import module_macs, total_flops
from eacnet_core.models import MODELS, build_model
from eacnet_core.options import (
    Alias,
    add_batch_size,
    add_device,
    add_height_width_aliases,
    add_overwrite,
    add_threads,
    at_least,
    size_from_height_width,
    wxh,
)
from eacnet_core.outputs import check_outputs, write_json
from eacnet_core.progress import progress_bar
from eacnet_core.runtime import DTYPES, configure_torch, resolve_device, resolve_precision, sync

#: The clock every timed run reads (seconds); a module attribute so a test can put in a
#: clock it drives and check the figures exactly.
clock: Callable[[], float] = time.perf_counter


@dataclass
class BenchResult:
    model: str
    params: int
    gmacs: float
    gflops: float
    latency_ms_median: float
    latency_ms_p90: float
    fps: float
    height: int
    width: int
    batch: int
    device: str
    precision: str
    backend: str


@dataclass(frozen=True)
class BenchConfig:
    models: tuple[str, ...] = tuple(MODELS)
    height: int = 512
    width: int = 1024
    classes: int = 19
    batch: int = 1
    device: str = "cpu"
    precision: str = "fp32"
    channels_last: bool = False
    backend: str = "torch"  # or several, comma-separated: each model runs on each, interleaved
    compile_mode: str = "auto"  # torch_compiled: compiled.COMPILE_MODES
    warmup: int = 3
    runs: int = 10
    threads: int = 0


BACKEND_CHOICES = ("torch", "torch_compiled", "onnxruntime")


def _torch_runner(model: torch.nn.Module, cfg: BenchConfig, device: torch.device, precision: str,
                  compiled: bool = False) -> Callable:
    model = model.to(device, dtype=DTYPES[precision]).eval()
    x = torch.randn(cfg.batch, 3, cfg.height, cfg.width, device=device, dtype=DTYPES[precision])
    if cfg.channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    forward = model
    if compiled:  # compiled.py: torch.compile (+ a CUDA graph on CUDA), prepared here, untimed and logged
        from eacnet_core.infer.compiled import CompiledForward

        forward = CompiledForward(model, device, DTYPES[precision], cfg.channels_last, mode=cfg.compile_mode)
        forward.prepare(cfg.batch, cfg.height, cfg.width)

    def step():
        with torch.inference_mode():
            forward(x)
        sync(device)

    return step


def _ort_runner(model: torch.nn.Module, name: str, cfg: BenchConfig, device: torch.device, folder: Path) -> Callable:
    from eacnet_core.infer.export import export_onnx, ort_session

    path = export_onnx(model, folder / f"{name}.onnx", cfg.height, cfg.width, dynamic_batch=cfg.batch > 1)
    session = ort_session(path, device, cfg.threads)
    x = np.random.default_rng(0).standard_normal((cfg.batch, 3, cfg.height, cfg.width), dtype=np.float32)
    return lambda: session.run(None, {"image": x})


def run_bench(cfg: BenchConfig, progress: bool = True) -> list[BenchResult]:
    import tempfile

    unknown = [m for m in cfg.models if m not in MODELS]
    if unknown:
        raise ValueError(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(MODELS)}")
    limits = (("--size height", cfg.height, 8), ("--size width", cfg.width, 8), ("--batch-size", cfg.batch, 1),
              ("--runs", cfg.runs, 1), ("--warmup", cfg.warmup, 0), ("--threads", cfg.threads, 0))
    problems = [f"{name} must be >= {low}, got {value}" for name, value, low in limits if value < low]
    if problems:
        raise ValueError("; ".join(problems))
    device = resolve_device(cfg.device, fallback=False)
    precision = resolve_precision(cfg.precision, device)
    backends = _backends(cfg.backend)
    if "onnxruntime" in backends and precision != "fp32":
        raise ValueError("the onnxruntime backend runs fp32 only")
    configure_torch(device, cfg.threads)

    steps = len(cfg.models) * len(backends) * (1 + cfg.warmup + cfg.runs)  # per runner: its set-up, then each run
    counts, runners = {}, {}
    with tempfile.TemporaryDirectory(prefix="eacnet-bench-") as tmp, \
            progress_bar(total=steps, enabled=progress, desc="bench set-up", unit="step", leave=False) as bar:
        for name in cfg.models:
            built = build_model(name, cfg.classes).eval()
            counts[name] = (sum(p.numel() for p in built.parameters()), module_macs(built, cfg.height, cfg.width),
                            total_flops(built, cfg.height, cfg.width))
            for backend in backends:  # one copy of the model per backend: layouts and compiled code stay apart
                model = built if len(backends) == 1 else copy.deepcopy(built)
                runners[(name, backend)] = (
                    _ort_runner(model, name, cfg, device, Path(tmp)) if backend == "onnxruntime"
                    else _torch_runner(model, cfg, device, precision, compiled=backend == "torch_compiled"))
                bar.update()
        times = _interleaved(runners, cfg.warmup, cfg.runs, bar)
    results = []
    for (name, backend), samples in times.items():
        params, macs, flops = counts[name]
        median = float(np.median(samples))
        results.append(BenchResult(model=name, params=params, gmacs=macs / 1e9, gflops=flops / 1e9,
                                   latency_ms_median=median, latency_ms_p90=float(np.percentile(samples, 90)),
                                   fps=1000.0 * cfg.batch / median, height=cfg.height, width=cfg.width,
                                   batch=cfg.batch, device=str(device), precision=precision, backend=backend))
    return results


def _backends(text: str) -> tuple[str, ...]:
    """'torch' or 'torch,torch_compiled' -> the backends, each checked."""
    backends = tuple(dict.fromkeys(b.strip() for b in text.split(",") if b.strip()))
    unknown = [b for b in backends if b not in BACKEND_CHOICES]
    if not backends or unknown:
        raise ValueError(f"backend must be one or more of {', '.join(BACKEND_CHOICES)} (comma-separated); "
                         f"got {text!r}")
    return backends


def _backend_list(text: str) -> str:
    """argparse type of --backend: the comma-separated list checked at parse time (``_backends``)."""
    try:
        return ",".join(_backends(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _interleaved(runners: dict[Any, Callable], warmup: int, runs: int, bar: Any) -> dict[Any, list[float]]:
    """Milliseconds per timed run of each runner (keyed by (model, backend)), round by round;
    ``bar`` (a tqdm, drawn on a terminal only) advances after every run, outside the timed window."""
    bar.set_description("bench warm-up")
    for _ in range(warmup):
        for step in runners.values():
            step()
            bar.update()
    bar.set_description("bench timing")
    times: dict[Any, list[float]] = {name: [] for name in runners}
    for _ in range(runs):
        for name, step in runners.items():
            start = clock()
            step()
            times[name].append(1000.0 * (clock() - start))
            bar.update()
    return times


def format_table(results: Sequence[BenchResult]) -> str:
    several = len({r.backend for r in results}) > 1
    names = [f"{r.model} {r.backend}" if several else r.model for r in results]
    width = max(14, *(len(n) + 1 for n in names))
    # "x erfnet": against erfnet on the same backend (several backends: one ratio per backend)
    bases = {r.backend: r.latency_ms_median for r in results if r.model == "erfnet"}
    header = f"{'model':<{width}}{'params':>11}{'GMACs':>9}{'GFLOPs':>9}{'median ms':>11}{'p90 ms':>9}{'FPS':>8}"
    header += f"{'x erfnet':>10}" if bases else ""
    lines = [header, "-" * len(header)]
    for r, name in zip(results, names, strict=True):
        line = (f"{name:<{width}}{r.params:>11,}{r.gmacs:>9.3f}{r.gflops:>9.3f}{r.latency_ms_median:>11.1f}"
                f"{r.latency_ms_p90:>9.1f}{r.fps:>8.2f}")
        base = bases.get(r.backend)
        lines.append(line + (f"{r.latency_ms_median / base:>10.2f}" if base else (" " * 10 if bases else "")))
    first = results[0]
    backends = ", ".join(dict.fromkeys(r.backend for r in results))
    lines.append(f"{first.width}x{first.height} (WxH), batch {first.batch}, {first.device}, {first.precision}, "
                 f"{backends}. GMACs: module MACs (paper/thop convention, attention products excluded); "
                 "GFLOPs: all conv + matrix-product FLOPs (2 per MAC).")
    return "\n".join(lines)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("bench", help="time the model family (latency, FPS, params, MACs)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="all", help="comma-separated registry names, or 'all' (default)")
    p.add_argument("--size", type=wxh, default=None, metavar="WxH", help="input size WxH (default 1024x512, as the "
                                                                         "paper's Cityscapes tables)")
    add_height_width_aliases(p)
    p.add_argument("--classes", type=at_least(1), default=19, help="number of classes (default 19, as the paper)")
    add_batch_size(p, default=1, aliases=[Alias("--batch")])
    add_device(p)
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"), help="default fp32")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format (torch backend)")
    p.add_argument("--backend", default="torch", type=_backend_list,
                   help="torch (eager), torch_compiled (torch.compile, + CUDA graphs on CUDA; compiled before "
                        "timing) or onnxruntime (the exported ONNX graph); several, comma-separated, are timed "
                        "side by side (default torch)")
    p.add_argument("--warmup", type=at_least(0), default=3, help="untimed runs per model (default 3)")
    p.add_argument("--runs", type=at_least(1), default=10, help="timed rounds (default 10)")
    add_threads(p)
    p.add_argument("--json", type=Path, help="write the results as a JSON list to this path")
    add_overwrite(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    names = tuple(MODELS) if args.models == "all" else tuple(m.strip() for m in args.models.split(",") if m.strip())
    height, width = size_from_height_width(args, default=(BenchConfig.height, BenchConfig.width))
    if args.json:
        check_outputs([args.json], overwrite=args.overwrite)
    cfg = BenchConfig(models=names, height=height, width=width, classes=args.classes, batch=args.batch_size,
                      device=args.device, precision=args.precision, channels_last=args.channels_last,
                      backend=args.backend, warmup=args.warmup, runs=args.runs, threads=args.threads)
    results = run_bench(cfg)
    print(format_table(results))
    if args.json:
        write_json(args.json, [asdict(r) for r in results])
    return 0
