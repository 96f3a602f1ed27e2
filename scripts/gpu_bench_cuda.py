#!/usr/bin/env python3
"""The CUDA measurements of the segmentation path, in one call on a GPU machine.

Each section runs in its own process with its own time limit (a compiler that hangs or a
CUDA graph capture that crashes loses that section only) and writes ``<out>/<section>.json``;
``<out>/summary.json`` says which sections finished, failed or ran out of time. Sections,
cheapest and most important first:

``env``       torch / CUDA / Triton versions and the GPU.
``forward``   the network alone (``eacnet_core.evaluate.bench``): eager against compiled torch
              (``graphs``: eager kernels in a CUDA graph; ``inductor+graphs``: torch.compile and
              a graph), fp32 / fp16 / bf16, both EACNets, 480x360, batch 1.
``pipeline``  the whole per-frame path of the node in-process through ``Segmenter.submit_frames``
              (mask, colour mask, overlay, each output's bytes taken as the encoder does),
              frames back to back with the next submitted before the last is collected:
              CPU-side frame with eager torch (the old path) against the frame on the device
              with eager and compiled torch; 480x360 and 1920x1080 bgr8 input, the network at
              480x360 and, for 1080p, at full size too.
``cameras``   several cameras: batches of 1/2/4/8 480x360 frames per forward pass (a CUDA graph
              per batch size), frames per second over all cameras.
``accuracy``  fp16 / bf16 (eager and compiled) against fp32 on CamVid val with the packaged
              weights: mask agreement and mIoU. Needs the val split at ``--data`` (CamVid
              layout; carry it, e.g. ``out/gpu-data/CamVid`` made by ``stage``).
``ros``       ``eacnet bench-pipeline`` (decode/encode through rosbags messages) when rosbags
              imports on that machine; skipped with the reason otherwise.

Usage on the GPU machine (repo root; ``OUT`` is where results go)::

    python3 scripts/gpu_bench_cuda.py stage --data ../shared/data/CamVid   # here, before: val -> out/gpu-data
    timeout 540 python3 scripts/gpu_bench_cuda.py run --out $OUT --budget-s 480

``run --device cpu --dry-run`` runs every section at tiny sizes on the CPU with a quick
compiler backend (the test suite does), so the script itself is checked without a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_DATA = REPO / "out" / "gpu-data" / "CamVid"
MODELS = ("eacnet_erf", "eacnet_dab")
#: (section, share of the budget it may use at most)
SECTIONS = (("env", 0.05), ("forward", 0.30), ("pipeline", 0.30), ("accuracy", 0.20), ("cameras", 0.15),
            ("ros", 0.10))


# ---------------------------------------------------------------------------- sizes per mode
def plan(dry_run: bool) -> dict[str, Any]:
    """What each section measures; the dry run keeps every code path at tiny sizes."""
    if dry_run:
        return {"models": ("eacnet_erf",), "net_hw": (48, 64), "big_hw": (72, 96), "runs": 3, "warmup": 1,
                "frames": 4, "batches": (1, 2), "precisions": ("fp32",), "modes": ("inductor",),
                "limit": 2}
    return {"models": MODELS, "net_hw": (360, 480), "big_hw": (1080, 1920), "runs": 100, "warmup": 10,
            "frames": 300, "batches": (1, 2, 4, 8), "precisions": ("fp32", "fp16", "bf16"),
            "modes": ("graphs", "inductor+graphs"), "limit": 0}


def _setup(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from eacnet_core.infer import compiled
    if args.dry_run:
        compiled.COMPILER = "eager"  # dynamo tracing and guards, no code generation: the logic, quickly
        torch.set_num_threads(1)
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    return plan(args.dry_run)


# ---------------------------------------------------------------------------- sections
def section_env(args: argparse.Namespace) -> dict[str, Any]:
    import importlib.util

    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(), "triton": importlib.util.find_spec("triton") is not None,
            "rosbags": importlib.util.find_spec("rosbags") is not None, "cpu_count": os.cpu_count()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    if shutil.which("nvidia-smi"):
        info["nvidia_smi"] = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    return info


def section_forward(args: argparse.Namespace) -> dict[str, Any]:
    from dataclasses import asdict

    from eacnet_core.evaluate.bench import BenchConfig, run_bench

    p = _setup(args)
    rows, errors = [], {}
    precisions = p["precisions"] if args.device.startswith("cuda") else ("fp32",)
    for mode in p["modes"]:  # the quick graphs first: its figures survive a slow compiler
        for precision in precisions:
            cfg = BenchConfig(models=p["models"], height=p["net_hw"][0], width=p["net_hw"][1], classes=11,
                              device=args.device, precision=precision, channels_last=True,
                              backend="torch,torch_compiled", compile_mode=mode, warmup=p["warmup"],
                              runs=p["runs"])
            try:
                rows += [{**asdict(r), "compile_mode": mode if r.backend == "torch_compiled" else ""}
                         for r in run_bench(cfg, progress=False)]
            except Exception as exc:  # one configuration failing keeps the others
                errors[f"{mode}/{precision}"] = _error(exc)
            _write(args, "forward", {"rows": rows, "errors": errors, "partial": True})
    return {"rows": rows, "errors": errors}


def section_pipeline(args: argparse.Namespace) -> dict[str, Any]:
    p = _setup(args)
    net, big = p["net_hw"], p["big_hw"]
    precision = "fp16" if args.device.startswith("cuda") else "fp32"
    configs = [("cpu-frame eager", "torch", "off"), ("device-frame eager", "torch", "on"),
               ("device-frame compiled", "torch_compiled", "on")]
    cases = [(net, net), (big, net)] + ([] if args.dry_run else [(big, big)])  # (input, network)
    rows, errors = [], {}
    for model in p["models"]:
        for image_hw, net_hw in cases:
            for label, backend, frame in configs:
                key = f"{model} {image_hw[1]}x{image_hw[0]} net {net_hw[1]}x{net_hw[0]} {label}"
                if image_hw == big and net_hw == big and backend == "torch_compiled" and not args.dry_run:
                    backend_mode = "graphs"  # a full-HD inductor compile does not fit the window
                else:
                    backend_mode = "auto"
                try:
                    rows.append({"case": key, "model": model, "input": f"{image_hw[1]}x{image_hw[0]}",
                                 "network": f"{net_hw[1]}x{net_hw[0]}", "config": label, "precision": precision,
                                 "compile_mode": backend_mode if backend == "torch_compiled" else "",
                                 **_stream(args, model, backend, precision, frame, image_hw, net_hw, p["frames"],
                                           compile_mode=backend_mode)})
                except Exception as exc:
                    errors[key] = _error(exc)
                _write(args, "pipeline", {"rows": rows, "errors": errors, "partial": True})
    return {"rows": rows, "errors": errors}


def section_cameras(args: argparse.Namespace) -> dict[str, Any]:
    p = _setup(args)
    precision = "fp16" if args.device.startswith("cuda") else "fp32"
    rows, errors = [], {}
    mode = "graphs" if args.device.startswith("cuda") else "inductor"  # one compile per batch size otherwise
    for model in p["models"]:
        for batch in p["batches"]:
            key = f"{model} x{batch}"
            try:
                rows.append({"model": model, "cameras": batch, "precision": precision, "compile_mode": mode,
                             **_stream(args, model, "torch_compiled", precision, "on", p["net_hw"], p["net_hw"],
                                       max(2, p["frames"] // batch), cameras=batch, compile_mode=mode)})
            except Exception as exc:
                errors[key] = _error(exc)
            _write(args, "cameras", {"rows": rows, "errors": errors, "partial": True})
    return {"rows": rows, "errors": errors}


def section_accuracy(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from eacnet_core.data.classes import CAMVID
    from eacnet_core.data.datasets import camvid_pairs
    from eacnet_core.evaluate.metrics import ConfusionMatrix

    p = _setup(args)
    data = Path(args.data)
    if not (data / "val").is_dir():
        return {"skipped": f"no CamVid val split at {data}: carry it (scripts/gpu_bench_cuda.py stage) to measure"}
    pairs = camvid_pairs(data, "val")[: p["limit"] or None]
    images = [_read(path, color=True) for path, _ in pairs]
    labels = [_read(path, color=False) for _, path in pairs]
    cuda = args.device.startswith("cuda")
    configs = [("fp32", "torch")] + ([("fp16", "torch"), ("bf16", "torch"), ("fp16", "torch_compiled"),
                                      ("bf16", "torch_compiled")] if cuda else [("fp32", "torch_compiled")])
    rows, errors = [], {}
    for model in p["models"]:
        reference = None
        for precision, backend in configs:
            key = f"{model} {precision} {backend}"
            try:
                seg = _segmenter(args, model, backend, precision, "on" if cuda else "off", (0, 0),
                                 weights="packaged")
                masks = [r.mask for image in images for r in seg.segment_frames([image])]
                confusion = ConfusionMatrix(CAMVID.num_classes, CAMVID.ignore_index)
                for mask, label in zip(masks, labels, strict=True):
                    confusion.update(mask, label)
                reference = masks if reference is None else reference
                agree = float(np.mean([(a == b).mean() for a, b in zip(masks, reference, strict=True)]))
                rows.append({"model": model, "precision": precision, "backend": backend, "images": len(masks),
                             "miou": confusion.miou, "pixel_acc": confusion.pixel_accuracy,
                             "agreement_with_fp32": agree, "describe": seg.describe()})
            except Exception as exc:
                errors[key] = _error(exc)
            _write(args, "accuracy", {"rows": rows, "errors": errors, "partial": True})
    return {"rows": rows, "errors": errors, "data": str(data)}


def section_ros(args: argparse.Namespace) -> dict[str, Any]:
    import importlib.util

    if importlib.util.find_spec("rosbags") is None:
        return {"skipped": "rosbags is not installed here: eacnet bench-pipeline builds sensor_msgs/Image with it"}
    p = _setup(args)
    out = Path(args.out) / "bench_pipeline.json"
    net = p["net_hw"]
    precision = "fp16" if args.device.startswith("cuda") else "fp32"
    sizes = [f"{net[1]}x{net[0]}", f"{p['big_hw'][1]}x{p['big_hw'][0]}"]
    argv = ["bench-pipeline", "--model", p["models"][0], "--device", args.device, "--sizes", *sizes,
            "--configs", f"torch:{precision}", f"torch_compiled:{precision}", "--resize", f"{net[1]}x{net[0]}",
            "--runs", str(min(p["runs"], 50)), "--warmup", str(p["warmup"]), "--streamed", str(p["frames"]),
            "--json", str(out), "--overwrite"]
    from eacnet_ros.cli import main

    code = main(argv)
    return {"exit_code": code, "argv": argv, "results": json.loads(out.read_text()) if out.is_file() else None}


# ---------------------------------------------------------------------------- helpers
def _segmenter(args: argparse.Namespace, model: str, backend: str, precision: str, frame: str,
               net_hw: tuple[int, int], weights: str = "random", compile_mode: str = "auto"):
    import torch

    from eacnet_core.infer.segmenter import Segmenter, SegmenterOptions

    torch.manual_seed(0)
    options = SegmenterOptions(device=args.device, precision=precision, backend=backend, inference_height=net_hw[0],
                               inference_width=net_hw[1], frame_on_device=frame, compile_mode=compile_mode,
                               compiled_shapes=8)
    if weights == "packaged":
        return Segmenter.from_name(model, None, options)
    return Segmenter.from_name(model, None, options, allow_untrained=True, num_classes=11) if weights == "random" \
        else Segmenter.from_checkpoint(weights, options)


def _stream(args: argparse.Namespace, model: str, backend: str, precision: str, frame: str,
            image_hw: tuple[int, int], net_hw: tuple[int, int], frames: int, cameras: int = 1,
            compile_mode: str = "auto") -> dict[str, Any]:
    """Frames per second of the whole path, back to back, the next batch submitted before the
    last is collected; the set-up (compiling) is timed apart."""
    import numpy as np

    start = time.perf_counter()
    seg = _segmenter(args, model, backend, precision, frame, net_hw, compile_mode=compile_mode)
    seg.warmup(*net_hw)
    images = [_frame(image_hw, seed) for seed in range(cameras)]
    wanted = [(True, True)] * cameras
    for _ in range(3):  # each batch size's first pass compiles / captures: not a measured frame
        seg.segment_frames(images, wanted)
    setup_s = time.perf_counter() - start

    def collect(pending) -> None:
        for r in pending.result():
            for array in (r.mask, r.color_mask, r.overlay):
                array.tobytes()  # what building the Image message costs

    t0, pending = time.perf_counter(), None
    for _ in range(frames):
        submitted = seg.submit_frames(images, wanted)
        if pending is not None:
            collect(pending)
        pending = submitted
    collect(pending)
    seconds = time.perf_counter() - t0
    mask = seg.segment_frames(images[:1])[0].mask
    return {"fps": frames * cameras / seconds, "ms_per_batch": 1000 * seconds / frames, "frames": frames * cameras,
            "setup_s": setup_s, "backend": seg.backend, "frame_on_device": seg.frame_on_device,
            "mask_classes": int(len(np.unique(mask))), "describe": seg.describe()}


def _frame(hw: tuple[int, int], seed: int):
    """A camera-like bgr8 frame (the one bench-pipeline uses), different per camera."""
    import numpy as np

    from eacnet_ros.bench.pipeline import synthetic_frame

    return np.roll(synthetic_frame(*hw), seed * 7, axis=1)


def _read(path: Path, color: bool):
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR if color else cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"{path}: cannot read")
    return image


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}\n" + "".join(traceback.format_exception(exc)[-6:])


def _write(args: argparse.Namespace, name: str, data: Any) -> None:
    path = Path(args.out) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


SECTION_FUNCS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "env": section_env, "forward": section_forward, "pipeline": section_pipeline, "accuracy": section_accuracy,
    "cameras": section_cameras, "ros": section_ros}


# ---------------------------------------------------------------------------- commands
def run(args: argparse.Namespace) -> int:
    """Every chosen section in its own process, each limited to its share of what is left."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    chosen = args.sections.split(",") if args.sections else [name for name, _ in SECTIONS]
    unknown = [s for s in chosen if s not in SECTION_FUNCS]
    if unknown:
        raise SystemExit(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTION_FUNCS)}")
    deadline = time.monotonic() + args.budget_s
    summary: dict[str, Any] = {"device": args.device, "dry_run": args.dry_run, "budget_s": args.budget_s,
                               "sections": {}}
    shares = dict(SECTIONS)
    for name in chosen:
        left = deadline - time.monotonic()
        limit = min(left, max(60.0, shares[name] * args.budget_s * 1.5))  # a minute at least: torch's import
        if left < 5:
            summary["sections"][name] = {"status": "not run: budget spent"}
            continue
        cmd = [sys.executable, str(Path(__file__).resolve()), "section", name, "--out", str(out), "--device",
               args.device, "--data", str(args.data)] + (["--dry-run"] if args.dry_run else [])
        start = time.monotonic()
        print(f"== {name} (limit {limit:.0f} s)", flush=True)
        try:
            proc = subprocess.run(cmd, timeout=limit, cwd=REPO)
            status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
        except subprocess.TimeoutExpired:
            status = f"timed out after {limit:.0f} s (its partial results are in {name}.json)"
        summary["sections"][name] = {"status": status, "seconds": round(time.monotonic() - start, 1)}
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(f"== {name}: {status}", flush=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


def section(args: argparse.Namespace) -> int:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        result = SECTION_FUNCS[args.name](args)
    except Exception as exc:
        _write(args, args.name, {"error": _error(exc)})
        raise
    _write(args, args.name, result)
    print(json.dumps(result, indent=1, default=str)[:3000], flush=True)
    return 0


def stage(args: argparse.Namespace) -> int:
    """Copy CamVid's val split (PNG, ~29 MB) into the repo's ignored out/ folder, to be carried."""
    src, dst = Path(args.data), Path(args.to)
    for part in ("val", "valannot"):
        if not (src / part).is_dir():
            raise SystemExit(f"{src / part}: not found (expected the CamVid SegNet layout)")
        shutil.copytree(src / part, dst / part, dirs_exist_ok=True)
    size = sum(f.stat().st_size for f in dst.rglob("*") if f.is_file())
    print(f"staged {dst} ({size / 2**20:.1f} MiB)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "section"):
        p = sub.add_parser(name)
        if name == "section":
            p.add_argument("name", choices=tuple(SECTION_FUNCS))
        p.add_argument("--out", default=os.environ.get("OUT", "out/gpu-bench"))
        p.add_argument("--device", default="cuda")
        p.add_argument("--data", default=str(DEFAULT_DATA), help="CamVid root with val/ and valannot/")
        p.add_argument("--dry-run", action="store_true", help="tiny sizes and a quick compiler (CPU check)")
        if name == "run":
            p.add_argument("--budget-s", type=float, default=480, help="wall-clock budget for all sections")
            p.add_argument("--sections", default="", help="comma-separated subset (default: all, in order)")
    p = sub.add_parser("stage")
    p.add_argument("--data", required=True, help="a CamVid folder (SegNet layout)")
    p.add_argument("--to", default=str(DEFAULT_DATA))
    args = parser.parse_args(argv)
    return {"run": run, "section": section, "stage": stage}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
