"""Segmentation datasets: CamVid (SegNet layout), Cityscapes (official layout) and plain
``images/`` + ``labels/`` folders described by a small ``classes.yaml``.

Every layout becomes the same thing: a list of (image, label) file pairs plus a label
rule, wrapped by ``SegmentationDataset``, which reads with OpenCV, checks what it read
and hands (normalised CHW float32 image, int64 label, index) to a DataLoader. Bad input
(missing or unreadable files, size mismatches, label values outside the class range)
raises ``DatasetError`` naming the file, because "CUDA error: device-side assert" ten
minutes into a run is the usual way a bad label announces itself otherwise.

Augmentation randomness is drawn from a generator seeded by (seed, epoch, index), not
from global RNGs, so a sample's augmentation does not depend on the number of DataLoader
workers or on which worker loads it: runs are reproducible and ``--resume`` is exact.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from eacnet_core.data.classes import CAMVID, CITYSCAPES, DatasetInfo, generic
from eacnet_core.data.transforms import EvalTransform

DATASET_KINDS = ("camvid", "cityscapes", "folder")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm", ".webp")
LABEL_EXTS = (".png", ".bmp", ".tif", ".tiff", ".pgm")
CAMVID_LIST_PREFIX = "/SegNet/CamVid/"
FOLDER_YAML_NAMES = ("classes.yaml", "classes.yml")
#: Splits made of others when the dataset has no list/folder of that name: the paper and
#: its peers (DABNet, LMFFNet) train their CamVid test-set models on train + val.
COMBINED_SPLITS = {"trainval": ("train", "val")}
#: ImageNet statistics (RGB, 0..255) for folder datasets whose YAML gives no mean/std.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)

#: Cityscapes label id -> train id, from cityscapesscripts' ``labels`` table. Ids not
#: listed (unlabeled, ego vehicle, parking, rail track, guard rail, ..., license plate)
#: have trainId 255 / -1 there and are ignored.
CITYSCAPES_ID_TO_TRAINID: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
    24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}


class DatasetError(ValueError):
    """Bad or missing dataset input; the message names the offending file or folder."""

    @classmethod
    def clean(cls, exc: DatasetError) -> DatasetError:
        """A DatasetError re-raised from a DataLoader worker carries the worker's traceback
        in its message; keep only the original one-line message (which names the file).
        ``exc`` loses its own traceback: its frames hold the DataLoader's iterator, whose
        workers would then wait for a later garbage collection (and its 5 s timeout) to stop."""
        exc.with_traceback(None)
        last = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        return cls(last.split("DatasetError: ", 1)[-1])


# ---------------------------------------------------------------------------- label rules
@dataclass(frozen=True)
class LabelRule:
    """How raw label pixel values become class ids.

    ``table`` maps raw values to class ids (None: the raw value is the class id). Values
    that are neither a class id, ``ignore_index`` nor in the table are an error naming the
    file, unless ``unknown_to_ignore`` (Cityscapes: every id without a train id is void)."""

    num_classes: int
    ignore_index: int
    table: Optional[dict[int, int]] = None
    unknown_to_ignore: bool = False
    _luts: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def out_dtype(self) -> type:
        """uint8 when ids fit (cheap to resize/flip), int32 otherwise (cv2 handles both)."""
        return np.uint8 if max(self.num_classes - 1, self.ignore_index) <= 255 else np.int32

    def _lut(self, size: int) -> np.ndarray:
        """raw value -> class id, -1 marking values that are not allowed."""
        if size not in self._luts:
            lut = np.full(size, self.ignore_index if self.unknown_to_ignore else -1, dtype=np.int64)
            if self.table is None:
                lut[: min(self.num_classes, size)] = np.arange(min(self.num_classes, size))
                if 0 <= self.ignore_index < size:
                    lut[self.ignore_index] = self.ignore_index
            else:
                for raw, cls in self.table.items():
                    if 0 <= raw < size:
                        lut[raw] = cls
            self._luts[size] = lut
        return self._luts[size]

    def apply(self, raw: np.ndarray, path: Path) -> np.ndarray:
        if raw.ndim != 2:
            raise DatasetError(f"{path}: label must be a single-channel image of class ids, got shape {raw.shape} "
                               "(colour-coded labels are not supported: convert them to id images)")
        if raw.dtype not in (np.uint8, np.uint16):
            if not np.issubdtype(raw.dtype, np.integer) or raw.size and raw.min() < 0:
                raise DatasetError(f"{path}: label must hold non-negative integer class ids, got dtype {raw.dtype}")
            raw = raw.astype(np.int64)
        size = 256 if raw.dtype == np.uint8 else max(65536 if raw.dtype == np.uint16 else int(raw.max()) + 1, 256)
        mapped = self._lut(size)[raw]
        bad = mapped < 0
        if bad.any():
            values = np.unique(raw[bad])
            shown = ", ".join(str(int(v)) for v in values[:10]) + (" ..." if len(values) > 10 else "")
            raise DatasetError(f"{path}: label values {shown} are outside the class range 0..{self.num_classes - 1} "
                               f"(ignore = {self.ignore_index})")
        return mapped.astype(self.out_dtype)


def cityscapes_rule(train_ids: bool) -> LabelRule:
    """``*_labelTrainIds.png`` hold train ids already; ``*_labelIds.png`` go through the table."""
    if train_ids:
        return LabelRule(CITYSCAPES.num_classes, CITYSCAPES.ignore_index)
    return LabelRule(CITYSCAPES.num_classes, CITYSCAPES.ignore_index, table=CITYSCAPES_ID_TO_TRAINID,
                     unknown_to_ignore=True)


# ---------------------------------------------------------------------------- the dataset
@dataclass(frozen=True)
class Sample:
    image: Path
    label: Path
    rule: str = "default"  # key into the dataset's label rules


Transform = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


class SegmentationDataset(Dataset):
    """(image, label) pairs -> ``(image float32 (3, H, W), label int64 (H, W), index)``.

    ``transform`` is a callable ``(bgr, label, rng) -> (chw float32, label)``; the default
    only normalises (evaluation). ``set_epoch`` changes the augmentation draw per epoch."""

    def __init__(self, samples: Sequence[Sample], info: DatasetInfo, rules: dict[str, LabelRule],
                 transform: Optional[Transform] = None, seed: int = 0, name: str = ""):
        self.samples = list(samples)
        self.info = info
        self.rules = rules
        self.transform: Transform = transform or EvalTransform(info.mean, info.std)
        self.seed = int(seed)
        self.epoch = 0
        self.name = name or info.name
        self._cache: Optional[list[tuple[np.ndarray, np.ndarray]]] = None

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return f"SegmentationDataset({self.name!r}, {len(self)} images, {self.info.num_classes} classes)"

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def read_image(self, index: int) -> np.ndarray:
        """BGR uint8 (H, W, 3), as cv2 and the inference path read it."""
        path = self.samples[index].image
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise DatasetError(f"{path}: cannot read image ({'missing' if not path.exists() else 'unreadable'})")
        return image

    def read_label(self, index: int) -> np.ndarray:
        """Class-id label (H, W): mapped by the sample's rule, values checked."""
        sample = self.samples[index]
        raw = cv2.imread(str(sample.label), cv2.IMREAD_UNCHANGED)
        if raw is None:
            state = "missing" if not sample.label.exists() else "unreadable"
            raise DatasetError(f"{sample.label}: cannot read label ({state})")
        return self.rules[sample.rule].apply(raw, sample.label)

    def cache_in_memory(self) -> int:
        """Decode every pair once and keep it (call before forking DataLoader workers, which
        then share the pages copy-on-write): PNG decoding and the label check are no longer
        paid per step. Returns the bytes held; small datasets only (CamVid's 467 pairs
        hold about 320 MB)."""
        self._cache = None
        self._cache = [self.load(i) for i in range(len(self))]
        return sum(image.nbytes + label.nbytes for image, label in self._cache)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw pair (BGR image, class-id label) with the sizes checked against each other."""
        if self._cache is not None:
            return self._cache[index]
        image, label = self.read_image(index), self.read_label(index)
        if image.shape[:2] != label.shape:
            sample = self.samples[index]
            raise DatasetError(f"{sample.label}: label size {label.shape[1]}x{label.shape[0]} (WxH) differs from "
                               f"image {sample.image} size {image.shape[1]}x{image.shape[0]}")
        return image, label

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        image, label = self.load(index)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        image, label = self.transform(image, label, rng)
        return torch.from_numpy(image), torch.from_numpy(label.astype(np.int64)), index


def prepare_worker_fork() -> None:
    """Call before starting DataLoader worker processes: turn off OpenCV's own thread
    pool in this process. A worker forked while that pool exists inherits its locks
    without its threads, and its first threaded cv2 call can wait forever (seen here as
    a hang inside cv2.setNumThreads in a fresh worker). Workers give the parallelism."""
    cv2.setNumThreads(0)


# ---------------------------------------------------------------------------- layouts
def camvid(root: str | os.PathLike, split: str, limit: int = 0, transform: Optional[Transform] = None,
           seed: int = 0, info: DatasetInfo = CAMVID) -> SegmentationDataset:
    """CamVid in the SegNet layout: ``<split>.txt`` lists image/annotation pairs; without
    a list file, ``<split>/*.png`` paired with ``<split>annot/*.png``."""
    root = _existing_dir(root, "CamVid data root")
    samples = [Sample(i, lbl) for i, lbl in _limited(camvid_pairs(root, split), limit)]
    _check_files(samples, f"CamVid {split}", root)
    rules = {"default": LabelRule(info.num_classes, info.ignore_index)}
    return SegmentationDataset(samples, info, rules, transform, seed, name=f"camvid/{split}")


def camvid_pairs(root: str | os.PathLike, split: str) -> list[tuple[Path, Path]]:
    """(image, annotation) paths of a CamVid split, from ``<split>.txt`` or else the
    ``<split>/`` folder. Resolved, not checked: callers decide whether a missing annotation
    (withheld test labels) is an error (training, eval) or a frame without label (bags)."""
    root = _existing_dir(root, "CamVid data root")
    list_file = root / f"{split}.txt"
    if split in COMBINED_SPLITS and not list_file.is_file() and not (root / split).is_dir():
        return [pair for part in COMBINED_SPLITS[split] for pair in camvid_pairs(root, part)]
    if list_file.is_file():
        return _read_list_file(list_file, root)
    if (root / split).is_dir():
        pairs = [(p, root / f"{split}annot" / p.name) for p in _files(root / split, (".png",))]
        if not pairs:
            raise DatasetError(f"{root / split}: CamVid split {split!r} holds no .png images")
        return pairs
    raise DatasetError(f"{list_file}: CamVid split {split!r} not found (neither the list file nor "
                       f"{root / split}/ exists)")


def cityscapes(root: str | os.PathLike, split: str, limit: int = 0, transform: Optional[Transform] = None,
               seed: int = 0) -> SegmentationDataset:
    """Cityscapes, official layout. ``*_gtFine_labelTrainIds.png`` is used when present
    (created by cityscapesscripts), else ``*_gtFine_labelIds.png`` mapped to train ids."""
    root = _existing_dir(root, "Cityscapes data root")
    image_dir = _existing_dir(root / "leftImg8bit" / split, f"Cityscapes {split} images")
    images = sorted(image_dir.glob("*/*_leftImg8bit.png"))
    if not images:
        raise DatasetError(f"{image_dir}: no <city>/*_leftImg8bit.png images found")
    samples = []
    for image in _limited(images, limit):
        stem = image.name[: -len("_leftImg8bit.png")]
        label_dir = root / "gtFine" / split / image.parent.name
        train_ids = label_dir / f"{stem}_gtFine_labelTrainIds.png"
        if train_ids.is_file():
            samples.append(Sample(image, train_ids, "train_ids"))
        else:
            samples.append(Sample(image, label_dir / f"{stem}_gtFine_labelIds.png", "label_ids"))
    _check_files(samples, f"Cityscapes {split}", root)
    rules = {"train_ids": cityscapes_rule(True), "label_ids": cityscapes_rule(False)}
    return SegmentationDataset(samples, CITYSCAPES, rules, transform, seed, name=f"cityscapes/{split}")


def image_folder(root: str | os.PathLike, split: str, limit: int = 0, transform: Optional[Transform] = None,
                 seed: int = 0) -> SegmentationDataset:
    """``<root>/<split>/images`` + ``<root>/<split>/labels`` when the split folder exists,
    else ``<root>/images`` + ``<root>/labels`` for every split. Images and labels pair by
    file stem; classes come from ``<root>/classes.yaml`` (see ``folder_info``)."""
    root = _existing_dir(root, "dataset root")
    info = folder_info(root)
    base = root / split if (root / split / "images").is_dir() else root
    image_dir = _existing_dir(base / "images", "image folder")
    label_dir = _existing_dir(base / "labels", "label folder")
    images = _files(image_dir, IMAGE_EXTS)
    if not images:
        raise DatasetError(f"{image_dir}: no images ({', '.join(IMAGE_EXTS)}) found")
    labels = {p.stem: p for p in reversed(_files(label_dir, LABEL_EXTS))}  # .png wins over other extensions
    samples = [Sample(img, labels.get(img.stem, label_dir / f"{img.stem}.png")) for img in _limited(images, limit)]
    _check_files(samples, f"{root.name} {split}", root)
    rules = {"default": LabelRule(info.num_classes, info.ignore_index)}
    return SegmentationDataset(samples, info, rules, transform, seed, name=f"{info.name}/{split}")


def folder_info(root: str | os.PathLike) -> DatasetInfo:
    """Read ``classes.yaml``::

        name: mydata                  # optional (default: the folder name)
        names: [background, person]   # required, index = class id
        colors: [[0, 0, 0], [220, 20, 60]]  # optional RGB palette ("colours" works too)
        ignore_index: 255             # optional (default 255)
        mean: [123.7, 116.3, 103.5]   # optional RGB, 0..255 (default: ImageNet statistics)
        std: [58.4, 57.1, 57.4]       # optional
    """
    root = Path(root)
    path = next((root / n for n in FOLDER_YAML_NAMES if (root / n).is_file()), root / FOLDER_YAML_NAMES[0])
    if not path.is_file():
        raise DatasetError(f"{path}: missing; a folder dataset needs it (names: [...], optional colors, "
                           "ignore_index, mean, std)")
    return classes_from_yaml(path, root.name)


def classes_from_yaml(path: Path, default_name: str, need_colours: bool = False) -> DatasetInfo:
    """A ``classes.yaml`` file (see ``folder_info``) as a DatasetInfo, every problem named;
    ``need_colours``: a file without colours is an error (``eacnet labels from-colors``)."""
    import yaml

    if not path.is_file():
        raise DatasetError(f"{path}: classes file not found")
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise DatasetError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(spec, dict) or not spec.get("names") or not isinstance(spec["names"], list):
        raise DatasetError(f"{path}: needs a non-empty 'names' list of class names")
    problems = class_spec_problems(spec)
    if problems:
        raise DatasetError(f"{path}: " + "; ".join(problems))
    names = tuple(str(n) for n in spec["names"])
    colours = spec.get("colors", spec.get("colours"))
    if need_colours and colours is None:
        raise DatasetError(f"{path}: gives no 'colors': one [r, g, b] per class name is needed to read colour masks")
    try:
        palette = (tuple(tuple(int(v) for v in c) for c in colours) if colours is not None
                   else generic(len(names)).palette)
        info = DatasetInfo(name=str(spec.get("name", default_name)), class_names=names, palette=palette,
                           ignore_index=int(spec.get("ignore_index", 255)),
                           mean=_triple(spec.get("mean", IMAGENET_MEAN)), std=_triple(spec.get("std", IMAGENET_STD)))
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{path}: {exc}") from None
    if any(len(c) != 3 for c in info.palette) or min(info.std) <= 0:
        raise DatasetError(f"{path}: colours must be [r, g, b] triples and std values positive")
    return info


def class_spec_problems(spec: dict) -> list[str]:
    """Everything wrong with a ``classes.yaml`` mapping at once (each named), so a user
    fixes the file in one go: duplicate names or colours, a colour that is not three values
    in 0..255, a colour list of another length than the names, an ignore index that is a
    class id. Duplicate colours matter because ``eacnet labels from-colors`` could not tell
    the two classes apart."""
    names = [str(n) for n in spec["names"]]
    problems = [f"class name {n!r} appears {names.count(n)} times" for n in dict.fromkeys(names) if names.count(n) > 1]
    colours = spec.get("colors", spec.get("colours"))
    if colours is not None:
        if not isinstance(colours, list):
            return problems + [f"colors must be a list of [r, g, b], got {colours!r}"]
        if len(colours) != len(names):
            problems.append(f"{len(names)} class names but {len(colours)} colours")
        seen: dict[tuple, str] = {}
        for i, colour in enumerate(colours):
            name = names[i] if i < len(names) else f"colour #{i}"
            if (not isinstance(colour, (list, tuple)) or len(colour) != 3
                    or not all(isinstance(v, int) and 0 <= v <= 255 for v in colour)):
                problems.append(f"colour of {name!r} must be [r, g, b] with values 0..255, got {colour!r}")
                continue
            if tuple(colour) in seen:
                problems.append(f"classes {seen[tuple(colour)]!r} and {name!r} share the colour {list(colour)}")
            seen.setdefault(tuple(colour), name)
    ignore = spec.get("ignore_index", 255)
    if not isinstance(ignore, int) or isinstance(ignore, bool):
        problems.append(f"ignore_index must be an integer, got {ignore!r}")
    elif 0 <= ignore < len(names):
        problems.append(f"ignore index {ignore} is a real class id ({names[ignore]!r}; class ids are "
                        f"0..{len(names) - 1}, the ignore index must be outside them, e.g. 255)")
    return problems


def dataset_info(kind: str, root: str | os.PathLike) -> DatasetInfo:
    """Classes, palette, ignore index and mean/std of a dataset kind (folder: its YAML)."""
    if kind == "camvid":
        return CAMVID
    if kind == "cityscapes":
        return CITYSCAPES
    if kind == "folder":
        return folder_info(root)
    raise ValueError(f"unknown dataset {kind!r}; known: {', '.join(DATASET_KINDS)}")


def build_dataset(kind: str, root: str | os.PathLike, split: str, limit: int = 0,
                  transform: Optional[Transform] = None, seed: int = 0) -> SegmentationDataset:
    builders = {"camvid": camvid, "cityscapes": cityscapes, "folder": image_folder}
    if kind not in builders:
        raise ValueError(f"unknown dataset {kind!r}; known: {', '.join(DATASET_KINDS)}")
    return builders[kind](root, split, limit=limit, transform=transform, seed=seed)


def class_pixel_counts(dataset: SegmentationDataset) -> tuple[np.ndarray, np.ndarray]:
    """Per class: labelled pixels, and valid pixels of the images in which it appears.

    Reads labels only (no images, no augmentation). The two arrays are what ENet-style
    and median-frequency class weights need."""
    n = dataset.info.num_classes
    counts = np.zeros(n, dtype=np.int64)
    image_pixels = np.zeros(n, dtype=np.int64)
    for i in range(len(dataset)):
        label = dataset.read_label(i).ravel()
        hist = np.bincount(label[label < n].astype(np.int64), minlength=n)
        counts += hist
        image_pixels[hist > 0] += int(hist.sum())
    return counts, image_pixels


# ---------------------------------------------------------------------------- helpers
def _existing_dir(path: str | os.PathLike, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_dir():
        raise DatasetError(f"{path}: {what} not found")
    return path


def _files(folder: Path, exts: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in exts)


def _limited(items: Sequence, limit: int) -> Sequence:
    """The first ``limit`` items (all when limit <= 0): ``--limit`` smoke runs."""
    return items[:limit] if limit and limit > 0 else items


def _triple(values) -> tuple[float, float, float]:
    values = tuple(float(v) for v in values)
    if len(values) != 3:
        raise ValueError(f"mean/std need 3 values (R, G, B), got {len(values)}")
    return values  # type: ignore[return-value]


def _resolve_list_path(entry: str, root: Path) -> Path:
    """List entries look like ``/SegNet/CamVid/train/X.png``: strip that prefix and
    resolve against the data root; other relative paths resolve against the root too."""
    if entry.startswith(CAMVID_LIST_PREFIX):
        return root / entry[len(CAMVID_LIST_PREFIX):]
    path = Path(entry)
    return path if path.is_absolute() else root / path


def _read_list_file(list_file: Path, root: Path) -> list[tuple[Path, Path]]:
    pairs = []
    for number, line in enumerate(list_file.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise DatasetError(f"{list_file}:{number}: expected 'IMAGE LABEL', got {line.strip()!r}")
        pairs.append((_resolve_list_path(fields[0], root), _resolve_list_path(fields[1], root)))
    if not pairs:
        raise DatasetError(f"{list_file}: lists no images")
    return pairs


def _check_files(samples: Sequence[Sample], what: str, root: Path) -> None:
    """Fail before training starts if any listed file is missing, naming them."""
    missing_images = [s.image for s in samples if not s.image.is_file()]
    missing_labels = [s.label for s in samples if not s.label.is_file()]
    for kind, missing in (("image", missing_images), ("annotation", missing_labels)):
        if missing:
            shown = ", ".join(str(p) for p in missing[:3]) + (" ..." if len(missing) > 3 else "")
            hint = (" (annotations withheld in this copy? evaluate on a split that has them, e.g. val)"
                    if kind == "annotation" and len(missing) == len(samples) else "")
            raise DatasetError(f"{what}: {len(missing)} of {len(samples)} {kind} files missing under {root}: "
                               f"{shown}{hint}")
