"""Making the packaged weights: ``eacnet slim`` (a training checkpoint -> a deployable fp16
one) and ``record_check`` (score it on CamVid through the Segmenter and store the result).

Its own module because it sits above both ``checkpoint`` (which it writes) and the
Segmenter (which it runs): kept in ``checkpoint`` it made the import cycle
checkpoint -> infer.segmenter -> infer.export -> checkpoint.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from eacnet_core.checkpoint import load_checkpoint, save_atomic
from eacnet_core.data.classes import CAMVID
from eacnet_core.data.datasets import camvid
from eacnet_core.evaluate.metrics import ConfusionMatrix
from eacnet_core.infer.segmenter import Segmenter, SegmenterOptions
from eacnet_core.options import add_out, add_overwrite, at_least, warn_deprecated
from eacnet_core.outputs import check_outputs

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
    p.add_argument("--check-images", type=at_least(1), default=10, help="images for --check-data (default 10)")
    p.set_defaults(func=_run_slim)


def _slim_destination(args) -> str:
    """--out, or the deprecated positional DST."""
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
