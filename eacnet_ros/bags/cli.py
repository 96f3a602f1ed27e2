"""``eacnet make-bag`` and ``eacnet bag-eval``: rosbag2 in and out without a ROS install.

make-bag turns CamVid splits, image folders or videos into a bag that ``ros2 bag play``
accepts: frames as ``sensor_msgs/Image`` bgr8 (or ``CompressedImage``), labels as mono8
Images carrying their frame's header, stamps spaced at ``--rate``.

bag-eval replays a bag through exactly the ROS node's path, using the node's own code
(``codec.to_bgr`` -> ``node.pipeline.FrameProcessor`` (Segmenter.segment, colour mask,
overlay) -> ``node.pipeline.encode_frame`` (codec.array_to_image, input header)), pairs
label images with frames by header stamp and reports mIoU, per-class IoU, latency and
FPS; optionally it writes the node's outputs into a new bag beside the input frames.

"""

from __future__ import annotations

# The command line only: bag I/O lives in bags.io, the scoring in bags.eval.
import argparse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Optional

from eacnet_core.infer.args import add_model_arguments, add_runtime_arguments, segmenter_from_args
from eacnet_core.options import at_least, number_in, opacity
from eacnet_core.outputs import OutputError, check_outputs, real_path, write_json

from .eval import BagEvalResult, EvalOptions, evaluate_bag, format_result
from .io import (
    DEFAULT_IMAGE_TOPIC,
    DEFAULT_LABEL_TOPIC,
    DEFAULT_START_NS,
    FORMAT_NOTES,
    STORAGES,
    BagNotFoundError,
    Frame,
    MakeBagOptions,
    camvid_frames,
    check_make_options,
    check_output_path,
    folder_frames,
    make_bag,
)
from .report import check_report_folder, write_report


def add_parser(subparsers) -> None:
    """Register ``make-bag`` and ``bag-eval``."""
    _add_make_bag(subparsers)
    _add_bag_eval(subparsers)


def _add_make_bag(subparsers) -> None:
    p = subparsers.add_parser("make-bag", help="write CamVid / images / a video into a rosbag2",
                              description="Write frames (and labels) into a rosbag2 that `ros2 bag play` accepts.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--camvid", type=Path, metavar="ROOT", help="CamVid folder (SegNet layout); needs --split")
    src.add_argument("--images", type=Path, metavar="DIR", help="folder of images (sorted by name)")
    src.add_argument("--video", type=Path, metavar="FILE", help="video file")
    p.add_argument("--split", choices=("train", "val", "test"), help="CamVid split (with --camvid)")
    p.add_argument("--labels", type=Path, metavar="DIR", help="label PNGs named like the frames (class ids)")
    p.add_argument("--out", type=Path, required=True, metavar="BAG", help="output bag folder (must not exist)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output bag")
    p.add_argument("--storage", choices=tuple(STORAGES), default="mcap",
                   help="mcap (Jazzy default, default here) or sqlite3 (Humble default)")
    p.add_argument("--rate", type=number_in(0, low_open=True), default=10.0,
                   help="frames per second of the stamps (default 10)")
    p.add_argument("--compressed", choices=("jpeg", "png"), help="frames as CompressedImage on <topic>/compressed")
    p.add_argument("--image-topic", default=DEFAULT_IMAGE_TOPIC, help=f"default {DEFAULT_IMAGE_TOPIC}")
    p.add_argument("--label-topic", default=DEFAULT_LABEL_TOPIC, help=f"default {DEFAULT_LABEL_TOPIC}")
    p.add_argument("--frame-id", default="camera", help="header frame_id (default camera)")
    p.add_argument("--limit", type=at_least(0), default=0, help="write at most N frames (default all)")
    p.add_argument("--start-time", type=number_in(0), default=DEFAULT_START_NS / 1e9,
                   help="first stamp in seconds since the epoch (default fixed, for reproducible bags)")
    p.set_defaults(func=run_make_bag)


def _add_bag_eval(subparsers) -> None:
    p = subparsers.add_parser("bag-eval", help="replay a bag through the segmentation node's path and score it",
                              description=__doc__ + FORMAT_NOTES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bag", type=Path, required=True, help="input rosbag2 folder (or .db3/.mcap file)")
    add_model_arguments(p)
    p.add_argument("--image-topic", default="auto", help="auto (the only image topic) or a topic name")
    p.add_argument("--label-topic", default=None, help=f"label images (default {DEFAULT_LABEL_TOPIC} when present)")
    p.add_argument("--out", type=Path, help="write /eacnet/mask, color_mask, overlay and the input frames here")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out bag, --json file and --report (never the input)")
    p.add_argument("--json", type=Path, help="write the figures as JSON here")
    p.add_argument("--report", type=Path, metavar="DIR", help="write an HTML report with charts and samples here "
                                                              "(a new or empty folder)")
    p.add_argument("--limit", type=at_least(0), default=0, help="process at most N frames (default all)")
    p.add_argument("--alpha", type=opacity, default=0.5, help="overlay opacity (default 0.5, as the node)")
    p.add_argument("--confidence", action="store_true",
                   help="with --out: also write /eacnet/confidence (mono8, 255 = softmax maximum 1.0)")
    add_runtime_arguments(p)
    p.set_defaults(func=run_bag_eval)


def frames_from_args(args: argparse.Namespace) -> tuple[Iterator[Frame], Path]:
    """The frame source an invocation names, and its path (to keep --out off it)."""
    if args.camvid is not None:
        if not args.split:
            raise ValueError("--camvid needs --split train|val|test")
        return camvid_frames(args.camvid, args.split, args.labels), args.camvid
    if args.split:
        raise ValueError("--split only applies to --camvid")
    if args.video is not None:
        if args.labels is not None:
            raise ValueError("--labels does not apply to --video")
        return folder_frames(args.video), args.video
    return folder_frames(args.images, args.labels), args.images


def run_make_bag(args: argparse.Namespace) -> int:
    opts = MakeBagOptions(storage=args.storage, rate=args.rate, compressed=args.compressed,
                          image_topic=args.image_topic, label_topic=args.label_topic, frame_id=args.frame_id,
                          limit=args.limit, start_ns=round(args.start_time * 1e9), overwrite=args.overwrite)
    check_make_options(opts)  # option mistakes first: cheaper than reading the source
    frames, source = frames_from_args(args)
    summary = make_bag(frames, args.out, opts, inputs=(source,))
    print(f"wrote {summary['frames']} frame(s) on {summary['image_topic']}"
          + (f" and {summary['labels']} label(s) on {summary['label_topic']}" if summary["labels"] else "")
          + (f", skipped {summary['skipped']} unreadable" if summary["skipped"] else "")
          + f" to {summary['bag']} ({summary['storage']})")
    return 0


def run_bag_eval(args: argparse.Namespace) -> int:
    bag = Path(args.bag)
    if not bag.exists():  # before loading a model: the cheapest mistakes to report
        raise BagNotFoundError(f"bag {bag} does not exist")
    if args.out is not None:
        check_output_path(args.out, args.overwrite, inputs=(bag,))
    check_result_outputs(args.json, args.report, [bag] + ([args.out] if args.out else []), args.overwrite)
    segmenter = segmenter_from_args(args)
    print(segmenter.describe())
    opts = EvalOptions(image_topic=args.image_topic, label_topic=args.label_topic, out=args.out,
                       overwrite=args.overwrite, limit=args.limit, alpha=args.alpha, confidence=args.confidence)
    result = evaluate_bag(bag, segmenter, opts)
    print(format_result(result))
    save_outputs(result, args.json, args.report)
    return 0


def check_result_outputs(json_path: Optional[Path], report_dir: Optional[Path], bag_paths: Sequence[Path],
                         overwrite: bool = False) -> None:
    """Before the run: --json and --report lie outside every bag of the run (input and
    output), --json is no bag file and exists only with ``overwrite``, and --report is a new
    or empty folder unless ``overwrite``."""
    for path in (p for p in (json_path, report_dir) if p is not None):
        real = real_path(path)
        for bag in bag_paths:
            if real_path(bag) == real or real_path(bag) in real.parents:
                raise OutputError(f"{path} is or lies inside the bag {bag}; write it elsewhere")
    if json_path is not None:
        check_outputs([json_path], overwrite=overwrite)
    if report_dir is not None:
        check_report_folder(report_dir, overwrite)


def save_outputs(result: BagEvalResult, json_path: Optional[Path], report_dir: Optional[Path]) -> None:
    if json_path is not None:
        write_json(json_path, result.to_json())
        print(f"json: {json_path}")
    if report_dir is not None:
        print(f"report: {write_report(report_dir, result)}")
