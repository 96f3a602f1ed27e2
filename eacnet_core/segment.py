"""``eacnet segment``: run a model over an image, a folder of images or a video and write,
per frame, the class-id PNG, the colour PNG and the overlay PNG."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from .inference import BACKENDS, Segmenter, SegmenterOptions
from .transforms import parse_hw

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}


def iter_frames(source: Path) -> Iterator[tuple[str, np.ndarray | None]]:
    """(frame name, BGR image or None when unreadable) for an image, a folder or a video."""
    if not source.exists():
        raise FileNotFoundError(f"input {source} does not exist")
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"input folder {source} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        for path in files:
            yield path.stem, cv2.imread(str(path), cv2.IMREAD_COLOR)
    elif source.suffix.lower() in VIDEO_SUFFIXES:
        yield from _video_frames(source)
    elif source.suffix.lower() in IMAGE_SUFFIXES:
        yield source.stem, cv2.imread(str(source), cv2.IMREAD_COLOR)
    else:
        raise ValueError(f"input {source}: not an image ({', '.join(sorted(IMAGE_SUFFIXES))}), "
                         f"a video ({', '.join(sorted(VIDEO_SUFFIXES))}) or a folder")


def _video_frames(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ValueError(f"input {path}: OpenCV cannot open this video")
    try:
        index = 0
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            yield f"{path.stem}_{index:06d}", frame
            index += 1
        if index == 0:
            raise ValueError(f"input {path}: no decodable frames")
    finally:
        capture.release()


def segment_to_files(segmenter: Segmenter, source: Path, out_dir: Path, alpha: float = 0.5,
                     progress: bool = True) -> dict:
    """Write <name>_mask.png (class ids), <name>_color.png and <name>_overlay.png per frame.
    Unreadable images are skipped and counted, never fatal."""
    from tqdm import tqdm

    out_dir.mkdir(parents=True, exist_ok=True)
    written, skipped = 0, []
    for name, frame in tqdm(iter_frames(source), desc="segment", unit="frame", disable=not progress):
        if frame is None:
            skipped.append(name)
            continue
        mask = segmenter.segment(frame)
        colour = segmenter.colorize(mask)
        for suffix, image in (("mask", mask), ("color", colour),
                              ("overlay", segmenter.overlay(frame, mask, alpha, colour))):
            if not cv2.imwrite(str(out_dir / f"{name}_{suffix}.png"), image):
                raise OSError(f"could not write {out_dir / f'{name}_{suffix}.png'}")
        written += 1
    return {"frames": written, "skipped": skipped, "output": str(out_dir)}


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """--device/--precision/--backend/--inference-size, shared by every command that runs a Segmenter."""
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "bf16"),
                        help="auto: fp16 on CUDA, fp32 on CPU")
    parser.add_argument("--backend", default="auto", choices=BACKENDS, help="torch or onnxruntime (default auto)")
    parser.add_argument("--inference-size", default=None, metavar="HxW",
                        help="resize frames to this size for the network (default: each frame's own size)")


def options_from_args(args: argparse.Namespace) -> SegmenterOptions:
    height, width = parse_hw(args.inference_size) if args.inference_size else (0, 0)
    return SegmenterOptions(device=args.device, precision=args.precision, backend=args.backend,
                            inference_height=height, inference_width=width)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("segment", help="segment an image, a folder of images or a video",
                              description=__doc__)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", help="checkpoint written by `eacnet train`")
    src.add_argument("--model", help="registry model name; uses its packaged weights")
    p.add_argument("--allow-untrained", action="store_true",
                   help="with --model and no packaged weights: run a randomly initialised model (noise)")
    p.add_argument("--input", required=True, help="an image, a folder of images or a video file")
    p.add_argument("--output", required=True, help="folder for <frame>_mask/_color/_overlay.png")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the colour mask (default 0.5)")
    add_runtime_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    options = options_from_args(args)
    segmenter = (Segmenter.from_checkpoint(args.weights, options) if args.weights
                 else Segmenter.from_name(args.model, options=options, allow_untrained=args.allow_untrained))
    print(segmenter.describe())
    summary = segment_to_files(segmenter, Path(args.input), Path(args.output), args.alpha)
    print(f"wrote {summary['frames']} frame(s) to {summary['output']}"
          + (f"; skipped {len(summary['skipped'])} unreadable: {', '.join(summary['skipped'][:5])}"
             if summary["skipped"] else ""))
    return 0
