"""``eacnet labels``: get a team's own annotations into the shape training reads.

``from-colors SRC DST --classes classes.yaml`` turns colour-coded masks (what CVAT, Label
Studio or labelme export) into class-id PNGs through the YAML's colours; a colour the YAML
does not list is an error naming the file, the colour and its pixel count (every bad file
is checked before anything is written), or the ignore index with ``--unknown-to-ignore``.
``check DATA_ROOT`` checks a folder dataset before a run is spent on it: every label the
size of its image, every value a class id or the ignore index, every class present
somewhere; it prints each class's share of the labelled pixels and exits non-zero naming
each bad file and its bad values.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from eacnet_core.data.classes import DatasetInfo
from eacnet_core.data.datasets import (
    FOLDER_YAML_NAMES,
    IMAGE_EXTS,
    LABEL_EXTS,
    DatasetError,
    classes_from_yaml,
    folder_info,
)
from eacnet_core.options import add_overwrite
from eacnet_core.outputs import check_output_folder, check_outputs, write_image

#: Bad files named in full before the rest are counted.
SHOWN = 20


# ---------------------------------------------------------------------------- from-colors
def read_classes(path: str | Path) -> DatasetInfo:
    """The classes of a ``classes.yaml`` (the file, or the folder holding it), which must
    give colours here."""
    path = Path(path)
    if path.is_dir():
        path = next((path / n for n in FOLDER_YAML_NAMES if (path / n).is_file()), path / FOLDER_YAML_NAMES[0])
    return classes_from_yaml(path, path.parent.name, need_colours=True)


def colour_codes(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) int64 codes r << 16 | g << 8 | b."""
    c = rgb.astype(np.int64)
    return (c[..., 0] << 16) | (c[..., 1] << 8) | c[..., 2]


def _rgb(code: int) -> list[int]:
    return [(code >> 16) & 255, (code >> 8) & 255, code & 255]


@dataclass
class Converted:
    ids: np.ndarray
    unknown: dict[tuple[int, int, int], int] = field(default_factory=dict)  # colour -> pixels


def ids_from_colours(rgb: np.ndarray, info: DatasetInfo, unknown_to_ignore: bool = False) -> Converted:
    """Class ids of a colour mask; colours the palette lacks become the ignore index and
    are counted (the caller decides whether that is an error)."""
    codes = colour_codes(rgb)
    present, inverse, counts = np.unique(codes.ravel(), return_inverse=True, return_counts=True)
    palette = {int(c): i for i, c in enumerate(colour_codes(info.palette_array()[None])[0])}
    table = np.array([palette.get(int(c), info.ignore_index) for c in present], dtype=np.int64)
    unknown = {tuple(_rgb(int(c))): int(n) for c, n in zip(present, counts, strict=True) if int(c) not in palette}
    dtype = np.uint8 if max(info.num_classes - 1, info.ignore_index) <= 255 else np.uint16
    ids = table[inverse].reshape(codes.shape).astype(dtype)
    return Converted(ids, {} if unknown_to_ignore else unknown)


def _read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)  # drops an alpha channel; grey masks become 3 equal channels
    if bgr is None:
        raise DatasetError(f"{path}: not a readable image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def mask_files(src: Path) -> list[Path]:
    if src.is_file():
        return [src]
    if not src.is_dir():
        raise DatasetError(f"{src}: colour masks not found (give a folder of masks or one mask file)")
    files = sorted(p for p in src.iterdir() if p.is_file() and p.suffix.lower() in LABEL_EXTS)
    if not files:
        raise DatasetError(f"{src}: no masks ({', '.join(LABEL_EXTS)}) found")
    return files


def from_colours(src: str | Path, dst: str | Path, info: DatasetInfo, unknown_to_ignore: bool = False,
                 overwrite: bool = False) -> list[Path]:
    """Write ``dst/<stem>.png`` class-id masks for the colour masks in ``src``. Nothing is
    written until every mask has converted: a run that fails leaves ``dst`` as it was.
    Existing files in ``dst`` are replaced only with ``overwrite``; a mask never replaces itself."""
    src, dst = Path(src), Path(dst)
    files = mask_files(src)
    outputs = [dst / f"{f.stem}.png" for f in files]
    if not src.is_file():
        check_output_folder(dst, [src], "DST")
    check_outputs(outputs, inputs=files, overwrite=overwrite)
    bad = []
    for path in files:
        unknown = ids_from_colours(_read_rgb(path), info, unknown_to_ignore).unknown
        if unknown:
            shown = ", ".join(f"{list(c)} ({n} px)" for c, n in sorted(unknown.items(), key=lambda kv: -kv[1])[:5])
            bad.append(f"{path}: colour(s) not in the classes: {shown}" + (" ..." if len(unknown) > 5 else ""))
    if bad:
        raise DatasetError(f"{len(bad)} of {len(files)} mask(s) hold colours the classes do not list (add them to "
                           "the YAML, or pass --unknown-to-ignore to label them ignore):\n  "
                           + "\n  ".join(bad[:SHOWN]) + (f"\n  ... and {len(bad) - SHOWN} more" if len(bad) > SHOWN
                                                         else ""))
    dst.mkdir(parents=True, exist_ok=True)
    for path, out in zip(files, outputs, strict=True):
        write_image(out, ids_from_colours(_read_rgb(path), info, True).ids)
    return outputs


# ---------------------------------------------------------------------------- check
@dataclass
class CheckReport:
    info: DatasetInfo
    pairs: int = 0
    pixels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    ignored: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def missing_classes(self) -> list[str]:
        return [n for n, c in zip(self.info.class_names, self.pixels, strict=True) if c == 0]

    @property
    def ok(self) -> bool:
        return not self.problems and not self.missing_classes

    def format(self) -> str:
        total = max(1, int(self.pixels.sum()))
        width = max(len(n) for n in self.info.class_names)
        lines = [f"{self.pairs} image/label pairs, {self.info.num_classes} classes ({self.info.name}); "
                 f"share of the labelled pixels:"]
        lines += [f"  {i:3d} {n:<{width}} {100 * c / total:6.2f}%  ({int(c)} px)"
                  for i, (n, c) in enumerate(zip(self.info.class_names, self.pixels, strict=True))]
        lines.append(f"  ignore ({self.info.ignore_index}): {self.ignored} px")
        if self.missing_classes:
            lines.append(f"classes that appear in no label: {', '.join(self.missing_classes)}")
        if self.problems:
            lines.append(f"{len(self.problems)} bad file(s):")
            lines += [f"  {p}" for p in self.problems[:SHOWN]]
            if len(self.problems) > SHOWN:
                lines.append(f"  ... and {len(self.problems) - SHOWN} more")
        lines.append("ok" if self.ok else "FAILED")
        return "\n".join(lines)


def _split_folders(root: Path) -> Iterator[Path]:
    """``<root>/<split>/`` for every split folder with images/, else the root itself."""
    splits = sorted(p for p in root.iterdir() if p.is_dir() and (p / "images").is_dir())
    yield from splits or [root]


def _image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the header (Pillow reads no pixels for it); None if unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, UnidentifiedImageError):
        return None


def check_labels(root: str | Path) -> CheckReport:
    """Check every image/label pair of a folder dataset (``classes.yaml`` at ``root``)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset root not found")
    info = folder_info(root)
    report = CheckReport(info, pixels=np.zeros(info.num_classes, np.int64))
    for base in _split_folders(root):
        image_dir, label_dir = base / "images", base / "labels"
        for folder in (image_dir, label_dir):
            if not folder.is_dir():
                report.problems.append(f"{folder}: folder not found")
        if report.problems:
            continue
        images = {p.stem: p for p in sorted(image_dir.iterdir()) if p.suffix.lower() in IMAGE_EXTS}
        labels = {p.stem: p for p in sorted(label_dir.iterdir(), reverse=True) if p.suffix.lower() in LABEL_EXTS}
        for stem in sorted(set(images) - set(labels)):
            report.problems.append(f"{images[stem]}: no label ({label_dir / stem}.png)")
        for stem in sorted(set(labels) - set(images)):
            report.problems.append(f"{labels[stem]}: no image of that name in {image_dir}")
        for stem in sorted(set(images) & set(labels)):
            _check_pair(images[stem], labels[stem], report)
    return report


def _check_pair(image: Path, label: Path, report: CheckReport) -> None:
    info = report.info
    raw = cv2.imread(str(label), cv2.IMREAD_UNCHANGED)
    size = _image_size(image)
    if raw is None:
        report.problems.append(f"{label}: not a readable image")
        return
    if size is None:
        report.problems.append(f"{image}: not a readable image")
        return
    report.pairs += 1
    if raw.ndim == 3:
        report.problems.append(f"{label}: a colour image ({raw.shape[2]} channels), not class ids; convert it with "
                               "`eacnet labels from-colors`")
        return
    if (raw.shape[1], raw.shape[0]) != size:
        report.problems.append(f"{label}: {raw.shape[1]}x{raw.shape[0]}, but its image {image.name} is "
                               f"{size[0]}x{size[1]}")
    values, counts = np.unique(raw, return_counts=True)
    valid = (values < info.num_classes) | (values == info.ignore_index)
    if not valid.all():
        bad = ", ".join(f"{int(v)} ({int(n)} px)" for v, n in zip(values[~valid], counts[~valid], strict=True))
        report.problems.append(f"{label}: values {bad} are neither class ids 0..{info.num_classes - 1} nor the "
                               f"ignore index {info.ignore_index}")
    keep = values < info.num_classes
    np.add.at(report.pixels, values[keep].astype(np.int64), counts[keep])
    report.ignored += int(counts[values == info.ignore_index].sum())


# ---------------------------------------------------------------------------- command line
def add_parser(subparsers) -> None:
    p = subparsers.add_parser("labels", help="convert colour-coded masks to class ids; check a folder dataset",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="labels_command", metavar="ACTION", required=True)
    c = sub.add_parser("check", help="check a folder dataset's labels (sizes, values, every class present)")
    c.add_argument("data_root", metavar="DATA_ROOT", help="folder with classes.yaml and images/ + labels/ "
                                                          "(or <split>/images + <split>/labels)")
    c.set_defaults(func=_run_check)
    f = sub.add_parser("from-colors", help="colour-coded masks -> class-id PNGs through the YAML's colours")
    f.add_argument("src", metavar="SRC", help="folder of colour masks (PNG), or one mask; never modified")
    f.add_argument("dst", metavar="DST", help="folder for the class-id PNGs (same file names, .png)")
    f.add_argument("--classes", required=True, help="classes.yaml with names and colors (RGB), one per class")
    f.add_argument("--unknown-to-ignore", action="store_true",
                   help="label colours the YAML does not list with the ignore index instead of failing")
    add_overwrite(f)
    f.set_defaults(func=_run_from_colours)


def _run_check(args) -> int:
    report = check_labels(args.data_root)
    print(report.format())
    return 0 if report.ok else 1


def _run_from_colours(args) -> int:
    info = read_classes(args.classes)
    written = from_colours(args.src, args.dst, info, args.unknown_to_ignore, args.overwrite)
    print(f"wrote {len(written)} class-id mask(s) to {args.dst} ({info.num_classes} classes: "
          f"{', '.join(info.class_names)}; ignore {info.ignore_index})")
    return 0
