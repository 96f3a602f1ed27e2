"""``eacnet make-bag`` and ``eacnet bag-eval``: rosbag2 in and out without a ROS install.

make-bag turns CamVid splits, image folders or videos into a bag that ``ros2 bag play``
accepts: frames as ``sensor_msgs/Image`` bgr8 (or ``CompressedImage``), labels as mono8
Images carrying their frame's header, stamps spaced at ``--rate``.

bag-eval replays a bag through exactly the ROS node's path, using the node's own code
(``codec.to_bgr`` -> ``node_logic.FrameProcessor`` (Segmenter.segment, colour mask,
overlay) -> ``node_logic.encode_frame`` (codec.array_to_image, input header)), pairs
label images with frames by header stamp and reports mIoU, per-class IoU, latency and
FPS; optionally it writes the node's outputs into a new bag beside the input frames.

Choices worth knowing:
- Bags are written as rosbag2 metadata version 8. Version 9 (Jazzy's) stores QoS
  profiles as a YAML list that Humble's string parser rejects; Jazzy reads version 8.
- Message definitions come from the ROS2_HUMBLE typestore; sensor_msgs/Image and
  CompressedImage are identical (same RIHS01 hash) in Jazzy.
- Outputs are staged in a hidden sibling folder and renamed into place only when
  complete, so an interrupted run never leaves a half-written bag under the real name,
  and ``--overwrite`` replaces an old bag only after the new one is whole.
"""

from __future__ import annotations

import argparse
import array
import itertools
import logging
import os
import shutil
import struct
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from eacnet_core import datasets
from eacnet_core.inference import Segmenter
from eacnet_core.outputs import OutputError, check_outputs, real_path, write_json
from eacnet_core.progress import progress_bar

from . import codec
from .node_logic import FrameProcessor, SegmentedFrame, encode_frame

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
#: node_logic.encode_frame's keys -> the topics the node publishes them on (default namespace)
OUTPUT_TOPICS = {"mask": "/eacnet/mask", "color_mask": "/eacnet/color_mask", "overlay": "/eacnet/overlay"}
#: Default first stamp of make-bag (2023-11-14 22:13:20 UTC): fixed so the same input gives the same bag.
DEFAULT_START_NS = 1_700_000_000 * 10**9


class BagError(ValueError):
    """A bag that cannot be read or written as asked; the message names the path or topic."""


class BagNotFoundError(FileNotFoundError):
    """The bag path does not exist."""


# ====================================================================== output staging
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


# ====================================================================== make-bag
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


def camvid_pairs(root: Path, split: str) -> list[tuple[Path, Optional[Path]]]:
    """(image, annotation or None) per entry of a CamVid split (SegNet layout, read by the
    training loader's own list reader); annotations are None where withheld."""
    return [(image, label if label.is_file() else None) for image, label in datasets.camvid_pairs(root, split)]


def camvid_frames(root: Path, split: str, labels_dir: Optional[Path] = None) -> Iterator[Frame]:
    """Frames (BGR) and labels of a CamVid split; ``labels_dir`` overrides ``<split>annot``.
    The split is checked now, not on first iteration, so a bad path fails before any output."""
    pairs = camvid_pairs(root, split)
    if labels_dir is not None and not labels_dir.is_dir():
        raise FileNotFoundError(f"labels folder {labels_dir} does not exist")
    return _camvid_iter(pairs, labels_dir)


def _camvid_iter(pairs: list[tuple[Path, Optional[Path]]], labels_dir: Optional[Path]) -> Iterator[Frame]:
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
    from eacnet_core.segment import iter_frames

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


def _check_make_options(opts: MakeBagOptions) -> None:
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
    _check_make_options(opts)
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


# ====================================================================== reading bags
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


def _deserialize(raw: bytes, msgtype: str) -> Optional[Any]:
    """A message, or None when its bytes are not valid CDR for the type."""
    try:
        return STORE.deserialize_cdr(raw, msgtype)
    except Exception:
        return None


# ====================================================================== bag-eval
@dataclass(frozen=True)
class EvalOptions:
    image_topic: str = "auto"
    label_topic: Optional[str] = None  # None: DEFAULT_LABEL_TOPIC when the bag has it
    out: Optional[Path] = None
    overwrite: bool = False
    limit: int = 0
    alpha: float = 0.5
    samples: int = 4  # frames kept for the report's strip
    progress: bool = True


@dataclass
class Sample:
    """Small copies of one frame's images for the report (BGR; ``truth`` None without a label)."""

    stamp: int
    image: np.ndarray
    prediction: np.ndarray
    overlay: np.ndarray
    truth: Optional[np.ndarray] = None


@dataclass
class BagEvalResult:
    bag: str
    image_topic: str
    label_topic: Optional[str]
    model: str
    trained: bool
    segmenter: str
    frames: int = 0
    evaluated: int = 0
    undecodable: int = 0
    unpaired: int = 0
    ambiguous_labels: int = 0  # labels whose header stamp other frames or labels share: not scored
    mismatched_labels: int = 0
    miou: Optional[float] = None
    pixel_accuracy: Optional[float] = None
    per_class: dict = field(default_factory=dict)
    absent_classes: list = field(default_factory=list)
    latency_ms: dict = field(default_factory=dict)
    fps: Optional[float] = None
    wall_s: float = 0.0
    output_bag: Optional[str] = None
    class_names: tuple = ()
    palette: tuple = ()  # RGB per class, for the report's legend and chart
    latencies: array.array = field(default_factory=lambda: array.array("d"), repr=False)
    samples: list = field(default_factory=list, repr=False)

    def to_json(self) -> dict:
        """The documented JSON: fractions in [0, 1], null where there is nothing to measure."""
        keys = ("frames", "evaluated", "miou", "pixel_accuracy", "per_class", "absent_classes", "latency_ms", "fps",
                "undecodable", "unpaired", "ambiguous_labels", "mismatched_labels", "output_bag", "trained", "model",
                "bag", "image_topic", "label_topic", "segmenter", "wall_s")
        return {k: getattr(self, k) for k in keys}


@dataclass
class _Scan:
    """What a first, cheap pass over the headers tells the pairing: which frames have a label.

    A label is paired with the frame of the same header stamp only when that stamp is
    unique, to one frame and one label: drivers that leave stamps at zero (or repeat them)
    would otherwise have labels scored against the wrong frames."""

    frame_stamps: array.array  # stamps of the frames the run processes (the first --limit), in bag order
    label_set: set  # stamps held by exactly one of those frames and one label: the pairs to score
    unpaired: int  # labels whose stamp no processed frame has (with --limit: up to its last frame's stamp)
    ambiguous: int  # labels whose stamp several frames or labels share: not scored
    shared_stamp: Optional[tuple[int, int]] = None  # (stamp, frames) of the most shared one, for the warning


def _prescan(reader: Reader, frame_conns: list, label_conns: list, path: Path, limit: int = 0) -> _Scan:
    """Read only the header stamps (``header_stamp``: 8 bytes, nothing deserialised) of the
    first ``limit`` (all when 0) frames and of every label, so the main pass keeps a
    prediction only for frames whose label is still to come (memory stays flat over long
    bags) and knows which stamps are ambiguous."""
    frames, messages = array.array("q"), 0
    for _, _, raw in read_messages(reader, frame_conns, path):
        messages += 1
        stamp = header_stamp(raw)
        if stamp is not None:
            frames.append(stamp)
        if limit and messages >= limit:
            break
    labels = [s for s in (header_stamp(raw) for _, _, raw in read_messages(reader, label_conns, path)) if s is not None]
    per_frame, per_label = Counter(frames), Counter(labels)
    last = max(frames, default=None) if limit else None
    shared = {s: n for s, n in per_label.items() if s in per_frame and (n > 1 or per_frame[s] > 1)}
    most = max(shared, key=lambda s: per_frame[s], default=None)
    return _Scan(frame_stamps=frames,
                 label_set={s for s, n in per_label.items() if n == 1 and per_frame.get(s) == 1},
                 unpaired=sum(n for s, n in per_label.items() if s not in per_frame and (last is None or s <= last)),
                 ambiguous=sum(shared.values()),
                 shared_stamp=None if most is None else (most, per_frame[most]))


def _label_array(msg: Any) -> Optional[np.ndarray]:
    """A label Image as (H, W) class ids, or None when it is not a single-channel uint8 image."""
    if str(msg.encoding) not in ("mono8", "8UC1"):
        return None
    try:
        return codec.image_to_array(msg)[..., 0]
    except codec.ImageDecodeError:
        return None


def _shrink(image: np.ndarray, width: int = 320) -> np.ndarray:
    if image.shape[1] <= width:
        return image.copy()
    height = max(1, round(image.shape[0] * width / image.shape[1]))
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_NEAREST)


def _sample_positions(scan: _Scan, count: int) -> list[int]:
    """Positions (in ``scan.frame_stamps``) of up to ``count`` frames spread over the run,
    labelled frames preferred."""
    positions = range(len(scan.frame_stamps))
    labelled = [i for i in positions if scan.frame_stamps[i] in scan.label_set] or list(positions)
    if not labelled or count <= 0:
        return []
    picks = np.linspace(0, len(labelled) - 1, min(count, len(labelled))).round().astype(int)
    return sorted({labelled[i] for i in picks})


class _Evaluator:
    """The main pass: node path per frame, stamp pairing, metrics, output bag, samples."""

    def __init__(self, segmenter: Segmenter, opts: EvalOptions, scan: _Scan, result: BagEvalResult,
                 writer: Optional[Writer], frame_type: str):
        from eacnet_core.metrics import ConfusionMatrix

        self.seg, self.opts, self.scan, self.result = segmenter, opts, scan, result
        self.processor = FrameProcessor(segmenter, opts.alpha)
        self.writer, self.frame_type = writer, frame_type
        self.metric = ConfusionMatrix(segmenter.num_classes, segmenter.dataset.ignore_index,
                                      segmenter.dataset.class_names)
        self.pending_preds: dict[int, np.ndarray] = {}  # stamp -> mask awaiting its label
        self.pending_labels: dict[int, np.ndarray] = {}  # stamp -> label awaiting its frame
        self.failed: set = set()  # stamps of undecodable frames: their labels are dropped
        self.position = 0  # frames with a readable header so far: the index into scan.frame_stamps
        self.samples: dict[int, Optional[Sample]] = dict.fromkeys(_sample_positions(scan, opts.samples))
        self.sample_of_stamp = {scan.frame_stamps[i]: i for i in self.samples if scan.frame_stamps[i] in scan.label_set}
        self.out_conns: dict[str, Any] = {}
        self.warm = False

    # -------------------------------------------------------------- node path
    def node_path(self, msg: Any) -> tuple[np.ndarray, SegmentedFrame, dict[str, Any]]:
        """Exactly what the ROS node's worker does with one frame, through its own code
        (node_logic): decode, segment, colour mask and overlay (as with both subscribed), encode."""
        bgr = codec.to_bgr(msg)
        frame = self.processor.process(bgr, want_color=True, want_overlay=True)
        return bgr, frame, encode_frame(frame, msg.header, Image)

    def on_frame(self, conn: Any, receive_ns: int, raw: bytes) -> None:
        self.result.frames += 1
        position, raw_stamp = self.position, header_stamp(raw)
        if raw_stamp is not None:
            self.position += 1
        msg = _deserialize(raw, self.frame_type)
        if msg is None:
            self.result.undecodable += 1
            if raw_stamp is not None:  # its label must not wait for it
                self.failed.add(raw_stamp)
            return
        stamp = stamp_ns(msg)
        if not self.warm:
            self._warmup(msg)
        start = time.perf_counter()
        try:
            bgr, frame, outputs = self.node_path(msg)
        except codec.ImageDecodeError as exc:
            log.debug("undecodable frame at %d: %s", stamp, exc)
            self.result.undecodable += 1
            self.failed.add(stamp)
            self.pending_labels.pop(stamp, None)
            return
        self.result.latencies.append(1000.0 * (time.perf_counter() - start))
        if self.writer is not None:
            self._write(conn, receive_ns, raw, outputs)
        if position in self.samples:
            self.samples[position] = Sample(stamp, _shrink(bgr), _shrink(frame.color_mask), _shrink(frame.overlay))
        if stamp in self.pending_labels:
            self._score(stamp, frame.mask, self.pending_labels.pop(stamp))
        elif stamp in self.scan.label_set:
            self.pending_preds[stamp] = frame.mask

    def _warmup(self, msg: Any) -> None:
        """First-frame costs (allocation, kernel choice) happen at node start-up, not per frame."""
        try:
            bgr = codec.to_bgr(msg)
        except codec.ImageDecodeError:
            return  # try again on the next frame
        self.warm = True
        self.seg.warmup(bgr.shape[0], bgr.shape[1])

    def _write(self, conn: Any, receive_ns: int, raw: bytes, outputs: dict[str, Any]) -> None:
        """The input frame unchanged, then the node's outputs, all at the frame's receive time."""
        if not self.out_conns:
            self.out_conns["input"] = self.writer.add_connection(
                conn.topic, conn.msgtype, typestore=STORE,
                offered_qos_profiles=getattr(conn.ext, "offered_qos_profiles", ()))
            for key, topic in OUTPUT_TOPICS.items():
                self.out_conns[key] = self.writer.add_connection(topic, IMAGE_TYPE, typestore=STORE)
        self.writer.write(self.out_conns["input"], receive_ns, raw)
        for key, msg in outputs.items():
            self.writer.write(self.out_conns[key], receive_ns, STORE.serialize_cdr(msg, IMAGE_TYPE))

    # -------------------------------------------------------------- labels
    def on_label(self, raw: bytes) -> None:
        msg = _deserialize(raw, IMAGE_TYPE)
        if msg is None:
            self._mismatch("undeserialisable label message")
            return
        stamp = stamp_ns(msg)
        if stamp in self.failed or stamp not in self.scan.label_set:
            return  # frame undecodable (counted there), absent (unpaired) or its stamp shared (ambiguous)
        label = _label_array(msg)
        if label is None:
            self._mismatch(f"label at stamp {stamp} has encoding {msg.encoding!r}, expected mono8")
            return
        if stamp in self.pending_preds:
            self._score(stamp, self.pending_preds.pop(stamp), label)
        else:
            self.pending_labels[stamp] = label

    def _score(self, stamp: int, mask: np.ndarray, label: np.ndarray) -> None:
        if label.shape != mask.shape:
            self._mismatch(f"label at stamp {stamp} is {label.shape[1]}x{label.shape[0]} but its frame is "
                           f"{mask.shape[1]}x{mask.shape[0]} (WxH)")
            return
        try:
            self.metric.update(mask, label)
        except ValueError as exc:  # label ids outside the model's class set
            self._mismatch(f"label at stamp {stamp}: {exc}")
            return
        self.result.evaluated += 1
        sample = self.samples.get(self.sample_of_stamp.get(stamp, -1))
        if sample is not None:
            sample.truth = _shrink(self.seg.colorize(label))

    def _mismatch(self, why: str) -> None:
        if not self.result.mismatched_labels:
            log.warning("skipping unusable label(s); first: %s", why)
        self.result.mismatched_labels += 1

    def done(self) -> bool:
        return bool(self.opts.limit) and self.result.frames >= self.opts.limit and not self.pending_preds


def latency_percentiles(latencies: Sequence[float]) -> dict:
    if not len(latencies):
        return {"p50": None, "p90": None, "p99": None, "mean": None}
    values = np.asarray(latencies, dtype=np.float64)
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(values.mean())}


def _finish(result: BagEvalResult, ev: _Evaluator) -> None:
    """Fill the figures from the confusion matrix and the latencies."""
    result.segmenter = ev.seg.describe()  # after the run: backend=auto has chosen by now
    result.latency_ms = latency_percentiles(result.latencies)
    total_s = sum(result.latencies) / 1000.0
    result.fps = len(result.latencies) / total_s if total_s > 0 else None
    result.samples = [s for s in ev.samples.values() if s is not None]
    result.class_names = tuple(ev.seg.dataset.class_names)
    result.palette = tuple(ev.seg.dataset.palette)
    if result.evaluated:
        summary = ev.metric.summary()  # the shared metric: absent classes count as IoU 0
        result.miou, result.pixel_accuracy = summary["miou"], summary["pixel_acc"]
        result.per_class = summary["per_class"]
        result.absent_classes = ev.metric.absent_classes


def evaluate_bag(bag: Path, segmenter: Segmenter, opts: EvalOptions = EvalOptions(),
                 on_frame: Optional[Callable[[int], None]] = None) -> BagEvalResult:
    """Replay ``bag`` through the node's path; see the module docstring.

    ``on_frame(n)`` is called after each frame (for progress or memory measurements)."""
    if opts.limit < 0:
        raise ValueError(f"--limit must be >= 0, got {opts.limit}")
    started = time.perf_counter()
    with open_bag(bag) as reader:
        label_topic = resolve_label_topic(reader, opts.label_topic, bag)
        topic = pick_image_topic(reader, opts.image_topic, label_topic, bag)
        if topic == label_topic:
            raise BagError(f"image topic {topic} is also the label topic in {bag}; pass --label-topic")
        frame_conns = [c for c in reader.connections if c.topic == topic]
        label_conns = [c for c in reader.connections if c.topic == label_topic]
        frame_type = frame_conns[0].msgtype
        scan = _prescan(reader, frame_conns, label_conns, bag, opts.limit)
        if not len(scan.frame_stamps):
            listed = sum(c.msgcount for c in frame_conns)
            raise BagError(f"bag {bag}: no readable frame on {topic} (its metadata lists {listed} message(s))")
        if scan.ambiguous:
            log.warning("%d label(s) share their header stamp with other frames or labels (stamp %d ns is on %d "
                        "frames): they cannot be paired by stamp and are not scored; the camera driver must give "
                        "each frame its own stamp", scan.ambiguous, *scan.shared_stamp)
        result = BagEvalResult(bag=str(bag), image_topic=topic, label_topic=label_topic,
                               model=segmenter.model_name, trained=segmenter.trained,
                               segmenter=segmenter.describe(), unpaired=scan.unpaired,
                               ambiguous_labels=scan.ambiguous)
        if opts.out is None:
            ev = _run(reader, segmenter, opts, scan, result, None, frame_conns, label_conns, frame_type, on_frame)
        else:
            with staged_output(opts.out, opts.overwrite, inputs=(bag,)) as target:
                with Writer(target, version=BAG_VERSION, storage_plugin=STORAGES[_storage_of(bag)]) as writer:
                    ev = _run(reader, segmenter, opts, scan, result, writer, frame_conns, label_conns,
                              frame_type, on_frame)
                    if not ev.out_conns:
                        raise BagError(f"no decodable frame on {topic} in {bag}: no output bag written")
            result.output_bag = str(opts.out)
    _finish(result, ev)
    result.wall_s = time.perf_counter() - started
    return result


def _run(reader: Reader, segmenter: Segmenter, opts: EvalOptions, scan: _Scan, result: BagEvalResult,
         writer: Optional[Writer], frame_conns: list, label_conns: list, frame_type: str,
         on_frame: Optional[Callable[[int], None]]) -> _Evaluator:
    ev = _Evaluator(segmenter, opts, scan, result, writer, frame_type)
    frame_ids = {c.id for c in frame_conns}
    total = len(scan.frame_stamps)
    with progress_bar(total=total, enabled=opts.progress, desc="bag-eval", unit="frame") as bar:
        for conn, receive_ns, raw in read_messages(reader, frame_conns + label_conns, Path(result.bag)):
            if conn.id not in frame_ids:
                ev.on_label(raw)
            elif not opts.limit or result.frames < opts.limit:
                ev.on_frame(conn, receive_ns, raw)
                bar.update()
                if on_frame is not None:
                    on_frame(result.frames)
            if ev.done():
                break
    return ev


def _storage_of(bag: Path) -> str:
    """The input's storage, reused for the output so it plays where the input played."""
    if bag.is_file():
        return "mcap" if bag.suffix == ".mcap" else "sqlite3"
    return "mcap" if any(bag.glob("*.mcap")) else "sqlite3"


# ====================================================================== printing and files
def format_result(result: BagEvalResult) -> str:
    """A few human lines; the untrained warning comes first so nobody misreads the numbers."""
    lines = []
    if not result.trained:
        lines.append(f"WARNING: model {result.model} is UNTRAINED (random weights): its predictions and mIoU "
                     "are noise, not a measure of the method")
    lat = result.latency_ms
    lines.append(f"frames {result.frames}  evaluated {result.evaluated}  undecodable {result.undecodable}  "
                 f"unpaired labels {result.unpaired}  unusable labels {result.mismatched_labels}"
                 + (f"  labels with shared stamps (not scored) {result.ambiguous_labels}"
                    if result.ambiguous_labels else ""))
    if result.miou is not None:
        lines.append(f"mIoU {100 * result.miou:.2f}%  pixel accuracy {100 * (result.pixel_accuracy or 0):.2f}%")
        lines.append("per-class IoU %: " + ", ".join(f"{n} {100 * v:.1f}" for n, v in result.per_class.items()))
        if result.absent_classes:
            lines.append(f"classes absent from the labels (IoU counted as 0): {', '.join(result.absent_classes)}")
    else:
        lines.append("mIoU: n/a (no label paired with a frame)")
    if lat.get("p50") is not None:
        lines.append(f"latency ms p50 {lat['p50']:.1f}  p90 {lat['p90']:.1f}  p99 {lat['p99']:.1f}  "
                     f"FPS {result.fps:.2f}  (decode + segment + colour + overlay + encode, per frame)")
    if result.output_bag:
        lines.append(f"output bag: {result.output_bag}")
    lines.append(f"ran: {result.segmenter}")
    return "\n".join(lines)


# ====================================================================== CLI
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
    p.add_argument("--rate", type=float, default=10.0, help="frames per second of the stamps (default 10)")
    p.add_argument("--compressed", choices=("jpeg", "png"), help="frames as CompressedImage on <topic>/compressed")
    p.add_argument("--image-topic", default=DEFAULT_IMAGE_TOPIC, help=f"default {DEFAULT_IMAGE_TOPIC}")
    p.add_argument("--label-topic", default=DEFAULT_LABEL_TOPIC, help=f"default {DEFAULT_LABEL_TOPIC}")
    p.add_argument("--frame-id", default="camera", help="header frame_id (default camera)")
    p.add_argument("--limit", type=int, default=0, help="write at most N frames (default all)")
    p.add_argument("--start-time", type=float, default=DEFAULT_START_NS / 1e9,
                   help="first stamp in seconds since the epoch (default fixed, for reproducible bags)")
    p.set_defaults(func=run_make_bag)


def _add_bag_eval(subparsers) -> None:
    from eacnet_core.segment import add_runtime_arguments

    p = subparsers.add_parser("bag-eval", help="replay a bag through the segmentation node's path and score it",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bag", type=Path, required=True, help="input rosbag2 folder (or .db3/.mcap file)")
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--weights", help="checkpoint written by `eacnet train`")
    model.add_argument("--model", help="registry model name; uses its packaged weights")
    p.add_argument("--allow-untrained", action="store_true",
                   help="with --model and no packaged weights: run a randomly initialised model (noise)")
    p.add_argument("--image-topic", default="auto", help="auto (the only image topic) or a topic name")
    p.add_argument("--label-topic", default=None, help=f"label images (default {DEFAULT_LABEL_TOPIC} when present)")
    p.add_argument("--out", type=Path, help="write /eacnet/mask, color_mask, overlay and the input frames here")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out bag, --json file and --report (never the input)")
    p.add_argument("--json", type=Path, help="write the figures as JSON here")
    p.add_argument("--report", type=Path, metavar="DIR", help="write an HTML report with charts and samples here "
                                                              "(a new or empty folder)")
    p.add_argument("--limit", type=int, default=0, help="process at most N frames (default all)")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity (default 0.5, as the node)")
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
    _check_make_options(opts)  # option mistakes first: cheaper than reading the source
    frames, source = frames_from_args(args)
    summary = make_bag(frames, args.out, opts, inputs=(source,))
    print(f"wrote {summary['frames']} frame(s) on {summary['image_topic']}"
          + (f" and {summary['labels']} label(s) on {summary['label_topic']}" if summary["labels"] else "")
          + (f", skipped {summary['skipped']} unreadable" if summary["skipped"] else "")
          + f" to {summary['bag']} ({summary['storage']})")
    return 0


def load_segmenter(args: argparse.Namespace) -> Segmenter:
    from eacnet_core.segment import options_from_args

    options = options_from_args(args)
    if args.weights:
        return Segmenter.from_checkpoint(args.weights, options)
    return Segmenter.from_name(args.model, options=options, allow_untrained=args.allow_untrained)


def run_bag_eval(args: argparse.Namespace) -> int:
    bag = Path(args.bag)
    if not bag.exists():  # before loading a model: the cheapest mistakes to report
        raise BagNotFoundError(f"bag {bag} does not exist")
    if args.out is not None:
        check_output_path(args.out, args.overwrite, inputs=(bag,))
    check_result_outputs(args.json, args.report, [bag] + ([args.out] if args.out else []), args.overwrite)
    segmenter = load_segmenter(args)
    print(segmenter.describe())
    opts = EvalOptions(image_topic=args.image_topic, label_topic=args.label_topic, out=args.out,
                       overwrite=args.overwrite, limit=args.limit, alpha=args.alpha)
    result = evaluate_bag(bag, segmenter, opts)
    print(format_result(result))
    save_outputs(result, args.json, args.report)
    return 0


def check_result_outputs(json_path: Optional[Path], report_dir: Optional[Path], bag_paths: Sequence[Path],
                         overwrite: bool = False) -> None:
    """Before the run: --json and --report lie outside every bag of the run (input and
    output), --json is no bag file and exists only with ``overwrite``, and --report is a new
    or empty folder unless ``overwrite``."""
    from .report import check_report_folder

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
        from .report import write_report

        print(f"report: {write_report(report_dir, result)}")
