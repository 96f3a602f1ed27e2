"""rosbag2 in and out without a ROS install: writing frames and labels into a bag
(``make_bag``), opening and reading one, and staging outputs so a bag appears only whole.

The format choices are ``FORMAT_NOTES`` below (also shown by ``eacnet bag-eval --help``).
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import struct
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from eacnet_core.data import datasets
from eacnet_core.progress import progress_bar

from ..node import codec

#: What a user of the bags should know about them; part of ``eacnet bag-eval --help``.
FORMAT_NOTES = """Choices worth knowing:
- Bags are written as rosbag2 metadata version 8. Version 9 (Jazzy's) stores QoS
  profiles as a YAML list that Humble's string parser rejects; Jazzy reads version 8.
- Message definitions come from the ROS2_HUMBLE typestore; sensor_msgs/Image and
  CompressedImage are identical (same RIHS01 hash) in Jazzy.
- Outputs are staged in a hidden sibling folder and renamed into place only when
  complete, so an interrupted run never leaves a half-written bag under the real name,
  and ``--overwrite`` replaces an old bag only after the new one is whole.
"""

log = logging.getLogger(__name__)

STORE = get_typestore(Stores.ROS2_HUMBLE)
IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
IMAGE_TYPES = (IMAGE_TYPE, COMPRESSED_TYPE)
Image = STORE.types[IMAGE_TYPE]
CompressedImage = STORE.types[COMPRESSED_TYPE]
Header = STORE.types["std_msgs/msg/Header"]
Time = STORE.types["builtin_interfaces/msg/Time"]

BAG_VERSION = 8
STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
DEFAULT_IMAGE_TOPIC = "/camera/image_raw"
DEFAULT_LABEL_TOPIC = "/camera/labels"
OUTPUT_PREFIX = "/eacnet/"
#: node.pipeline.encode_frame's keys -> the topics the node publishes them on (default namespace)
OUTPUT_TOPICS = {"mask": "/eacnet/mask", "color_mask": "/eacnet/color_mask", "overlay": "/eacnet/overlay",
                 "confidence": "/eacnet/confidence"}
#: Default first stamp of make-bag (2023-11-14 22:13:20 UTC): fixed so the same input gives the same bag.
DEFAULT_START_NS = 1_700_000_000 * 10**9


class BagError(ValueError):
    """A bag that cannot be read or written as asked; the message names the path or topic."""


class BagNotFoundError(FileNotFoundError):
    """The bag path does not exist."""


# ---------------------------------------------------------------------- output staging
def check_output_path(out: Path, overwrite: bool, inputs: Sequence[Path] = ()) -> None:
    """Refuse outputs that would destroy data: the input itself, a folder holding the input
    or inside it, an existing path without --overwrite, and (even with --overwrite) anything
    that is not a rosbag2 folder, so a mistyped ``--out ~`` cannot remove a home folder."""
    target = out.resolve()
    for source in inputs:
        src = source.resolve()
        if target == src or target in src.parents or src in target.parents:
            raise BagError(f"output {out} is, contains or lies inside the input {source}; choose another --out")
    if not out.exists() and not out.is_symlink():
        return
    if not overwrite:
        raise BagError(f"output {out} exists; pass --overwrite to replace it")
    if not out.is_dir() or out.is_symlink() or not ((out / "metadata.yaml").is_file() or not any(out.iterdir())):
        raise BagError(f"refusing to replace {out}: it is not a rosbag2 folder (no metadata.yaml)")


@contextmanager
def staged_output(out: Path, overwrite: bool = False, inputs: Sequence[Path] = ()) -> Iterator[Path]:
    """Yield a path to write the bag to; move it to ``out`` only when the block succeeds.

    The staging folder is a hidden sibling of ``out`` (same filesystem, so the final
    rename is atomic); on any exception, Ctrl-C included, it is removed."""
    check_output_path(out, overwrite, inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        target = staging / out.name
        yield target
        _swap_into_place(target, out, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _swap_into_place(new: Path, out: Path, staging: Path) -> None:
    """Rename ``new`` to ``out``; an existing ``out`` is moved aside first and restored if
    the rename fails, so the old bag is only deleted (with ``staging``) once the new one is in place."""
    if not new.exists():
        raise BagError(f"nothing was written for {out}")
    old = staging / ".replaced"
    if out.exists():
        os.replace(out, old)
    try:
        os.replace(new, out)
    except BaseException:
        if old.exists():
            os.replace(old, out)
        raise


# ---------------------------------------------------------------------- writing bags (make-bag)
@dataclass
class Frame:
    """One source frame: BGR pixels (None when unreadable) and its label, if any."""

    name: str
    bgr: Optional[np.ndarray]
    label: Optional[np.ndarray] = None


@dataclass(frozen=True)
class MakeBagOptions:
    storage: str = "mcap"
    rate: float = 10.0
    compressed: Optional[str] = None  # None: raw bgr8 Image; "jpeg" | "png": CompressedImage
    image_topic: str = DEFAULT_IMAGE_TOPIC
    label_topic: str = DEFAULT_LABEL_TOPIC
    frame_id: str = "camera"
    limit: int = 0
    start_ns: int = DEFAULT_START_NS
    overwrite: bool = False
    progress: bool = True


def read_label(path: Path, frame_shape: Optional[tuple[int, ...]] = None) -> np.ndarray:
    """A single-channel uint8 label PNG; refuse colour labels and labels whose size differs
    from the frame's, since either would silently corrupt evaluation."""
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if label is None:
        raise ValueError(f"label {path}: missing or unreadable")
    if label.dtype != np.uint8 or label.ndim != 2:
        raise ValueError(f"label {path}: expected a single-channel uint8 image of class ids, "
                         f"got {label.dtype} of shape {label.shape}")
    if frame_shape is not None and label.shape != tuple(frame_shape[:2]):
        raise ValueError(f"label {path} is {label.shape[1]}x{label.shape[0]} but its frame is "
                         f"{frame_shape[1]}x{frame_shape[0]} (WxH)")
    return label


def camvid_frames(root: Path, split: str, labels_dir: Optional[Path] = None) -> Iterator[Frame]:
    """Frames (BGR) and labels of a CamVid split; ``labels_dir`` overrides ``<split>annot``.
    The split is checked now, not on first iteration, so a bad path fails before any output.
    Withheld annotations (CamVid's test split) give frames without a label."""
    pairs = datasets.camvid_pairs(root, split)
    if labels_dir is not None and not labels_dir.is_dir():
        raise FileNotFoundError(f"labels folder {labels_dir} does not exist")
    return _camvid_iter(pairs, labels_dir)


def _camvid_iter(pairs: list[tuple[Path, Path]], labels_dir: Optional[Path]) -> Iterator[Frame]:
    for image_path, label_path in pairs:
        if labels_dir is not None:
            label_path = labels_dir / image_path.name
        label_path = label_path if label_path.is_file() else None
        bgr = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
        label = read_label(label_path, bgr.shape) if bgr is not None and label_path is not None else None
        yield Frame(image_path.stem, bgr, label)


def folder_frames(images: Path, labels_dir: Optional[Path] = None) -> Iterator[Frame]:
    """Sorted images of a folder (or one video), labels matched by file stem as ``<stem>.png``.
    The first frame is read now, so a missing or empty source fails before any output."""
    from eacnet_core.infer.segment import iter_frames

    if labels_dir is not None and not labels_dir.is_dir():
        raise FileNotFoundError(f"labels folder {labels_dir} does not exist")
    frames = iter_frames(images)
    first = next(frames, None)
    return _folder_iter(itertools.chain([first] if first else [], frames), labels_dir)


def _folder_iter(frames: Iterable[tuple[str, Optional[np.ndarray]]], labels_dir: Optional[Path]) -> Iterator[Frame]:
    for name, bgr in frames:
        label_path = labels_dir / f"{name}.png" if labels_dir is not None else None
        has_label = bgr is not None and label_path is not None and label_path.is_file()
        yield Frame(name, bgr, read_label(label_path, bgr.shape) if has_label else None)


def _header(stamp_ns: int, frame_id: str) -> Any:
    return Header(stamp=Time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9), frame_id=frame_id)


def _frame_message(header: Any, bgr: np.ndarray, compressed: Optional[str]) -> tuple[Any, str]:
    """The frame as the camera driver would publish it, through the shared codec."""
    if compressed:
        return codec.bgr_to_compressed(CompressedImage, header, bgr, compressed), COMPRESSED_TYPE
    return codec.array_to_image(Image, header, bgr, "bgr8"), IMAGE_TYPE


def check_make_options(opts: MakeBagOptions) -> None:
    if opts.storage not in STORAGES:
        raise ValueError(f"storage must be one of {', '.join(STORAGES)}; got {opts.storage!r}")
    if not opts.rate > 0:
        raise ValueError(f"--rate must be positive, got {opts.rate}")
    if opts.compressed not in (None, "jpeg", "png"):
        raise ValueError(f"--compressed must be jpeg or png, got {opts.compressed!r}")
    if opts.limit < 0:
        raise ValueError(f"--limit must be >= 0, got {opts.limit}")


def make_bag(frames: Iterable[Frame], out: Path, opts: MakeBagOptions = MakeBagOptions(),
             inputs: Sequence[Path] = ()) -> dict:
    """Write ``frames`` into a new bag at ``out``; returns counts and topics.

    Header stamps equal the bag receive times, so ``ros2 bag play`` republishes frames at
    ``opts.rate`` and a label always carries exactly its frame's header."""
    check_make_options(opts)
    topic = f"{opts.image_topic.rstrip('/')}/compressed" if opts.compressed else opts.image_topic
    counts = {"frames": 0, "labels": 0, "skipped": 0}
    with staged_output(out, opts.overwrite, inputs) as target:
        with Writer(target, version=BAG_VERSION, storage_plugin=STORAGES[opts.storage]) as writer:
            image_type = COMPRESSED_TYPE if opts.compressed else IMAGE_TYPE
            image_conn = writer.add_connection(topic, image_type, typestore=STORE)
            label_conn = None
            for frame in progress_bar(frames, enabled=opts.progress, desc="make-bag", unit="frame",
                                      total=opts.limit or None):
                if opts.limit and counts["frames"] >= opts.limit:
                    break
                if frame.bgr is None:
                    log.warning("skipping unreadable frame %s", frame.name)
                    counts["skipped"] += 1
                    continue
                stamp = opts.start_ns + round(counts["frames"] * 1e9 / opts.rate)
                header = _header(stamp, opts.frame_id)
                msg, msgtype = _frame_message(header, frame.bgr, opts.compressed)
                writer.write(image_conn, stamp, STORE.serialize_cdr(msg, msgtype))
                counts["frames"] += 1
                if frame.label is not None:
                    if label_conn is None:
                        label_conn = writer.add_connection(opts.label_topic, IMAGE_TYPE, typestore=STORE)
                    label = codec.array_to_image(Image, header, frame.label, "mono8")
                    writer.write(label_conn, stamp, STORE.serialize_cdr(label, IMAGE_TYPE))
                    counts["labels"] += 1
            if counts["frames"] == 0:
                raise ValueError("no readable frames to write; the bag was not created")
    return {"bag": str(out), "storage": opts.storage, "image_topic": topic,
            "label_topic": opts.label_topic if counts["labels"] else None, **counts}


# ---------------------------------------------------------------------- reading bags
@contextmanager
def open_bag(path: Path) -> Iterator[Reader]:
    """An open rosbags Reader; every way a path can fail to be a readable bag becomes one
    BagError (or BagNotFoundError) naming the path, instead of a library traceback."""
    if not path.exists():
        raise BagNotFoundError(f"bag {path} does not exist")
    if path.is_dir() and not (path / "metadata.yaml").is_file():
        raise BagError(f"{path} is not a rosbag2 folder (no metadata.yaml)")
    if path.is_file() and path.suffix not in (".db3", ".mcap"):
        raise BagError(f"{path} is not a bag: expected a rosbag2 folder or a .db3/.mcap file")
    try:
        reader = Reader(path)
        reader.open()
    except Exception as exc:  # rosbags, apsw, struct, yaml, zstd: all mean "not readable"
        raise BagError(f"bag {path} cannot be read (corrupt or truncated?): {type(exc).__name__}: {exc}") from None
    try:
        yield reader
    finally:
        reader.close()


def read_messages(reader: Reader, connections: Sequence[Any], path: Path) -> Iterator[tuple[Any, int, bytes]]:
    """reader.messages, with storage errors mid-bag (truncation, corruption) turned into a
    BagError that says how far it got."""
    stream = reader.messages(connections=connections)
    count = 0
    while True:
        try:
            item = next(stream)
        except StopIteration:
            return
        except Exception as exc:
            raise BagError(f"bag {path} is corrupt or truncated after {count} message(s): "
                           f"{type(exc).__name__}: {exc}") from None
        count += 1
        yield item


def image_topics(reader: Reader) -> dict[str, str]:
    """topic -> message type for every Image / CompressedImage topic of the bag."""
    return {name: info.msgtype for name, info in reader.topics.items() if info.msgtype in IMAGE_TYPES}


def pick_image_topic(reader: Reader, requested: str, label_topic: Optional[str], path: Path) -> str:
    """``auto``: the only image topic that is neither the label topic nor an eacnet output;
    an explicit topic must exist and be an image type. Errors list what is there."""
    topics = reader.topics
    images = image_topics(reader)
    if requested != "auto":
        if requested not in topics:
            raise BagError(f"bag {path} has no topic {requested}; its topics: {topic_listing(reader)}")
        if requested not in images:
            raise BagError(f"topic {requested} in {path} is {topics[requested].msgtype}, "
                           f"not {IMAGE_TYPE} or {COMPRESSED_TYPE}")
        return requested
    candidates = sorted(t for t in images if t != label_topic and not t.startswith(OUTPUT_PREFIX))
    if not candidates:
        raise BagError(f"bag {path}: --image-topic auto found no image topic to segment (an {IMAGE_TYPE} or "
                       f"{COMPRESSED_TYPE} topic other than the labels and {OUTPUT_PREFIX} outputs); its topics: "
                       f"{topic_listing(reader)}")
    if len(candidates) > 1:
        raise BagError(f"bag {path}: --image-topic auto found {len(candidates)} image topics; pass --image-topic "
                       f"with one of: {', '.join(f'{t} ({images[t]})' for t in candidates)}")
    return candidates[0]


def topic_listing(reader: Reader) -> str:
    """Every topic of the bag with its type, for error messages."""
    return ", ".join(f"{name} ({info.msgtype})" for name, info in sorted(reader.topics.items())) or "none at all"


def resolve_label_topic(reader: Reader, requested: Optional[str], path: Path) -> Optional[str]:
    """None -> the default label topic when the bag has it (else no labels); an explicit
    topic must exist and be a sensor_msgs/Image."""
    topics = reader.topics
    topic = requested or DEFAULT_LABEL_TOPIC
    if topic not in topics:
        if requested:
            raise BagError(f"bag {path} has no label topic {requested}; its topics: {topic_listing(reader)}")
        return None
    if topics[topic].msgtype != IMAGE_TYPE:
        raise BagError(f"label topic {topic} in {path} is {topics[topic].msgtype}, not {IMAGE_TYPE}")
    return topic


def stamp_ns(msg: Any) -> int:
    return int(msg.header.stamp.sec) * 10**9 + int(msg.header.stamp.nanosec)


#: CDR encapsulation kind (second byte of the 4-byte header) -> the header stamp's layout.
_CDR_STAMP = {0: struct.Struct(">iI"), 1: struct.Struct("<iI")}


def header_stamp(raw: bytes) -> Optional[int]:
    """The header stamp (ns) of a CDR message that starts with a std_msgs/Header (Image,
    CompressedImage), read from bytes 4-12 without deserialising the rest: after the
    encapsulation header come stamp.sec (int32) and stamp.nanosec (uint32). None when the
    bytes are too short or not plain CDR."""
    if len(raw) < 12 or raw[0] != 0 or raw[1] not in _CDR_STAMP:
        return None
    sec, nanosec = _CDR_STAMP[raw[1]].unpack_from(raw, 4)
    return sec * 10**9 + nanosec


def deserialize(raw: bytes, msgtype: str) -> Optional[Any]:
    """A message, or None when its bytes are not valid CDR for the type."""
    try:
        return STORE.deserialize_cdr(raw, msgtype)
    except Exception:
        return None


