"""Self-describing checkpoints, safe loading and the packaged default weights.

A checkpoint is a plain dict that ``torch.load(path, weights_only=True)`` can read:

    {"format": "eacnet-checkpoint", "version": 1, "model": registry name,
     "num_classes": int, "dataset": DatasetInfo.to_dict(), "state_dict": {...},
     "config": {...} (the training run's config), "epoch": int, "metrics": {...},
     "model_kwargs": {...} (e.g. {"pool": 4}), ...training state for --resume}

Everything a consumer needs to run the model (classes, palette, mean/std) is in it,
so the Segmenter, the node and the bag tools carry no dataset knowledge.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from .classes import DatasetInfo
from .models import MODELS, build_model
from .outputs import atomic_write, check_outputs

FORMAT = "eacnet-checkpoint"
VERSION = 1
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or not what the caller expected."""


def make_checkpoint(model_name: str, model: nn.Module, dataset: DatasetInfo, **extra: Any) -> dict:
    state = {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}
    ckpt = {"format": FORMAT, "version": VERSION, "model": model_name, "num_classes": dataset.num_classes,
            "dataset": dataset.to_dict(), "state_dict": state}
    ckpt.update(extra)
    return ckpt


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save through the one atomic-write helper: a crash or SIGKILL mid-write never
    leaves a truncated checkpoint under the real name."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: str | os.PathLike, expect_model: Optional[str] = None,
                    expect_classes: Optional[int] = None) -> dict:
    """Read and validate a checkpoint with ``weights_only=True`` (no code execution).

    Raises CheckpointError naming the file and what was expected and found."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, not a torch file, unsafe pickle...
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: expected an {FORMAT} dict, found {found!r} "
                              "(was it written by `eacnet train` or eacnet_core.checkpoint?)")
    for key in ("model", "num_classes", "dataset", "state_dict"):
        if key not in ckpt:
            raise CheckpointError(f"{path}: checkpoint lacks the {key!r} field")
    if ckpt["model"] not in MODELS:
        raise CheckpointError(f"{path}: unknown model {ckpt['model']!r}; known: {', '.join(MODELS)}")
    if expect_model is not None and ckpt["model"] != expect_model:
        raise CheckpointError(f"{path}: expected weights for model {expect_model!r}, found {ckpt['model']!r}")
    if expect_classes is not None and ckpt["num_classes"] != expect_classes:
        raise CheckpointError(f"{path}: expected {expect_classes} classes, found {ckpt['num_classes']}")
    return ckpt


def dataset_info(ckpt: dict) -> DatasetInfo:
    return DatasetInfo.from_dict(ckpt["dataset"])


def model_from_checkpoint(ckpt: dict, path: str | os.PathLike = "<checkpoint>") -> nn.Module:
    """Build the registry model a checkpoint names and load its weights strictly."""
    model = build_model(ckpt["model"], ckpt["num_classes"], **ckpt.get("model_kwargs", {}))
    state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(f"{path}: weights do not fit model {ckpt['model']!r} with "
                              f"{ckpt['num_classes']} classes: {' '.join(first[:3])}") from None
    return model


#: Fields a deployed checkpoint keeps; optimiser, scheduler and RNG state only matter to --resume.
DEPLOY_FIELDS = ("format", "version", "model", "num_classes", "dataset", "state_dict", "model_kwargs", "config",
                 "epoch", "metrics")


def slim(src: str | os.PathLike, dst: str | os.PathLike, fp16: bool = True, overwrite: bool = False) -> dict:
    """Copy a training checkpoint without its training state, floats stored as fp16
    (half the size; loading converts back to fp32). Returns the slim checkpoint.

    ``dst`` is never ``src`` (slimming in place would drop the optimiser state that
    ``--resume`` needs) and replaces an existing file only with ``overwrite``."""
    check_outputs([dst], inputs=[src], overwrite=overwrite)
    ckpt = load_checkpoint(src)
    out = {k: ckpt[k] for k in DEPLOY_FIELDS if k in ckpt}
    if fp16:
        out["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    save_atomic(out, dst)
    return out


def record_check(path: str | os.PathLike, data_root: str | os.PathLike, images: int, split: str = "val") -> dict:
    """Score a checkpoint on the first ``images`` images of a CamVid split through the
    Segmenter (the deployed path) and store the result in its ``metrics["check"]``, so a
    test can later confirm the file still produces it."""
    from .classes import CAMVID
    from .datasets import camvid
    from .inference import Segmenter, SegmenterOptions
    from .metrics import ConfusionMatrix

    segmenter = Segmenter.from_checkpoint(path, SegmenterOptions(device="cpu", backend="torch"))
    data = camvid(data_root, split, limit=images)
    matrix = ConfusionMatrix(CAMVID.num_classes, CAMVID.ignore_index)
    for i in range(len(data)):
        matrix.update(segmenter.segment(data.read_image(i)), data.read_label(i))
    ckpt = load_checkpoint(path)
    check = {"split": split, "images": len(data), "miou": float(matrix.miou)}
    ckpt.setdefault("metrics", {})["check"] = check
    save_atomic(ckpt, path)
    return check


def add_parser(subparsers) -> None:
    from .options import add_out, add_overwrite

    p = subparsers.add_parser("slim", help="strip a training checkpoint down to a deployable one (fp16)",
                              description="Copy a checkpoint without optimiser/scheduler/RNG state, with fp16 "
                                          "weights (loading converts them back to fp32). This is how the packaged "
                                          "weights were made.")
    p.add_argument("src", help="checkpoint written by `eacnet train` (e.g. best.pt); never modified")
    p.add_argument("dst", nargs="?", help=argparse.SUPPRESS)  # the old positional output, deprecated
    add_out(p, "output checkpoint (never SRC)", metavar="DST")
    add_overwrite(p)
    p.add_argument("--fp32", action="store_true", help="keep fp32 weights")
    p.add_argument("--check-data", metavar="CAMVID_ROOT",
                   help="record the mIoU on the first --check-images CamVid val images in metrics['check']")
    p.add_argument("--check-images", type=int, default=10, help="images for --check-data (default 10)")
    p.set_defaults(func=_run_slim)


def _slim_destination(args) -> str:
    """--out, or the deprecated positional DST."""
    from .options import warn_deprecated

    if args.dst is not None and args.out is not None:
        raise ValueError("give the output once: --out DST (the positional DST is its old spelling)")
    if args.dst is not None:
        warn_deprecated("the positional DST of `eacnet slim`", "--out DST")
        return args.dst
    if args.out is None:
        raise ValueError("--out DST is required (the output checkpoint)")
    return args.out


def _run_slim(args) -> int:
    dst = _slim_destination(args)
    out = slim(args.src, dst, fp16=not args.fp32, overwrite=args.overwrite)
    if args.check_data:
        out["metrics"]["check"] = record_check(dst, args.check_data, args.check_images)
    print(f"wrote {dst} ({Path(dst).stat().st_size / 1e6:.1f} MB, model {out['model']}, "
          f"epoch {out.get('epoch')}, metrics {out.get('metrics')})")
    return 0


def packaged_weights(model_name: str) -> Optional[Path]:
    """The default weights shipped inside the package for ``model_name``, if any."""
    candidate = WEIGHTS_DIR / f"{model_name}_camvid.pt"
    return candidate if candidate.is_file() else None


def _unwrap(model: nn.Module) -> nn.Module:
    """The bare module under DistributedDataParallel / torch.compile wrappers."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return getattr(model, "_orig_mod", model)
