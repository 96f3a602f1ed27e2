"""``eacnet segment``: run a model over an image, a folder of images or a video and write,
per frame, the class-id PNG, the colour PNG and the overlay PNG; with ``--confidence`` also
the confidence PNG (uint8, 255 = softmax maximum 1.0), and with ``--json`` each frame's
unsmoothed frame score (0 = trustworthy .. 1 = not; ``eacnet_core.infer.confidence``)."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from eacnet_core.infer.args import add_model_arguments, add_runtime_arguments, segmenter_from_args
from eacnet_core.infer.confidence import frame_score
from eacnet_core.infer.segmenter import Segmenter
from eacnet_core.options import Alias, add_out, add_overwrite, opacity
from eacnet_core.outputs import OutputError, check_output_folder, check_outputs, write_image, write_json
from eacnet_core.progress import progress_bar

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}
#: The files written per frame: <name>_<kind>.png
OUTPUT_KINDS = ("mask", "color", "overlay")
#: Written beside them with ``--confidence``.
CONFIDENCE_KIND = "confidence"


def image_files(source: Path) -> list[Path]:
    """The images a folder holds, sorted by name (an error when there are none)."""
    files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"input folder {source} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def iter_frames(source: Path) -> Iterator[tuple[str, np.ndarray | None]]:
    """(frame name, BGR image or None when unreadable) for an image, a folder or a video."""
    if not source.exists():
        raise FileNotFoundError(f"input {source} does not exist")
    if source.is_dir():
        for path in image_files(source):
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



def check_segment_outputs(source: Path, out_dir: Path, overwrite: bool = False, confidence: bool = False) -> None:
    """Everything that could lose data, before the first frame: ``out_dir`` is not the
    input's folder, no two inputs map to one output name (``a.png`` and ``a.jpg`` are both
    ``a``), no output replaces an input, and none exists unless ``overwrite``."""
    if not source.exists():
        raise FileNotFoundError(f"input {source} does not exist")
    check_output_folder(out_dir, [source if source.is_dir() else source.parent])
    if source.suffix.lower() in VIDEO_SUFFIXES and not source.is_dir():
        existing = [] if overwrite else _video_outputs(source, out_dir, _kinds(confidence))
        if existing:
            raise OutputError(f"output {existing[0]} exists ({len(existing)} output file(s) of {source.name} "
                              "there); pass --overwrite to replace them")
        return
    files = image_files(source) if source.is_dir() else [source]
    by_stem: dict[str, Path] = {}
    for path in files:
        if path.stem in by_stem:
            raise OutputError(f"inputs {by_stem[path.stem].name} and {path.name} would both be written as "
                              f"{path.stem}_mask.png (outputs are named by file stem); segment one of them on its own")
        by_stem[path.stem] = path
    check_outputs([out_dir / f"{stem}_{kind}.png" for stem in by_stem for kind in _kinds(confidence)], inputs=files,
                  overwrite=overwrite)


def _kinds(confidence: bool) -> tuple[str, ...]:
    return (*OUTPUT_KINDS, CONFIDENCE_KIND) if confidence else OUTPUT_KINDS


def _video_outputs(video: Path, out_dir: Path, kinds: tuple[str, ...] = OUTPUT_KINDS) -> list[Path]:
    """Outputs of ``video`` already in ``out_dir``: its frame names are only known while
    decoding, so any frame's output counts."""
    if not out_dir.is_dir():
        return []
    pattern = re.compile(rf"{re.escape(video.stem)}_\d{{6}}_({'|'.join(kinds)})\.png")
    return sorted(p for p in out_dir.iterdir() if pattern.fullmatch(p.name))


def segment_to_files(segmenter: Segmenter, source: Path, out_dir: Path, alpha: float = 0.5,
                     progress: bool = True, overwrite: bool = False, confidence: bool = False,
                     scores: bool = False) -> dict:
    """Write <name>_mask.png (class ids), <name>_color.png and <name>_overlay.png per frame
    (``confidence``: also <name>_confidence.png), each atomically, after
    ``check_segment_outputs``. ``scores``: the summary's "scores" lists each frame's
    unsmoothed frame score. Unreadable images are skipped and counted, never fatal here;
    ``out_dir`` is made by the first write, so a run that writes nothing leaves no empty
    folder behind."""
    check_segment_outputs(source, out_dir, overwrite, confidence)
    written, skipped, frame_scores = 0, [], []
    for name, frame in progress_bar(iter_frames(source), enabled=progress, desc="segment", unit="frame"):
        if frame is None:
            skipped.append(name)
            continue
        if confidence or scores:
            mask, sure = segmenter.segment_confidence(frame)
        else:
            mask, sure = segmenter.segment(frame), None
        colour = segmenter.colorize(mask)
        outputs = [mask, colour, segmenter.overlay(frame, mask, alpha, colour)] + ([sure] if confidence else [])
        for kind, image in zip(_kinds(confidence), outputs, strict=True):
            write_image(out_dir / f"{name}_{kind}.png", image)
        if scores:
            frame_scores.append({"name": name, "frame_score": round(frame_score(sure, frame), 4)})
        written += 1
    summary = {"frames": written, "skipped": skipped, "output": str(out_dir)}
    return {**summary, "scores": frame_scores} if scores else summary


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("segment", help="segment an image, a folder of images or a video",
                              description=__doc__)
    add_model_arguments(p)
    p.add_argument("--input", required=True, help="an image, a folder of images or a video file")
    add_out(p, "folder for <frame>_mask/_color/_overlay.png (not the input's folder)", required=True,
            aliases=[Alias("--output")], metavar="DIR")
    add_overwrite(p)
    p.add_argument("--alpha", type=opacity, default=0.5, help="overlay opacity of the colour mask (default 0.5)")
    p.add_argument("--confidence", action="store_true",
                   help="also write <frame>_confidence.png: the softmax maximum per pixel, 255 = 1.0")
    p.add_argument("--json", metavar="OUT", default="",
                   help="write each frame's name and unsmoothed frame score (0 trustworthy .. 1 not) to this JSON file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (it only shows on a terminal)")
    add_runtime_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    source, out = Path(args.input), Path(args.out)
    # before loading a model: the cheapest mistakes first
    check_segment_outputs(source, out, args.overwrite, args.confidence)
    if args.json:
        check_outputs([Path(args.json)], inputs=[source] if source.is_file() else [], overwrite=args.overwrite)
    segmenter = segmenter_from_args(args)
    segmenter.warmup(runs=0)  # backend/precision auto: chosen at the inference size now, else on the first frame
    summary = segment_to_files(segmenter, source, out, args.alpha, not args.no_progress, args.overwrite,
                               confidence=args.confidence, scores=bool(args.json))
    skipped = summary["skipped"]
    unreadable = f"{len(skipped)} unreadable: {', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}"
    if not summary["frames"]:
        raise ValueError(f"nothing segmented: no frame of {source} could be decoded ({unreadable}); "
                         "nothing was written")
    if args.json:
        write_json(Path(args.json), {"frames": summary["scores"], "skipped": skipped})
    print(f"wrote {summary['frames']} frame(s) to {summary['output']}" + (f"; skipped {unreadable}" if skipped else "")
          + (f"; frame scores to {args.json}" if args.json else ""))
    print(f"ran: {segmenter.describe()}")  # after the frames: backend auto has chosen by then
    return 0
