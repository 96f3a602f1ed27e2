"""Scoring a bag: replay it through exactly the ROS node's path (``codec.to_bgr`` ->
``node.pipeline.FrameProcessor`` -> ``node.pipeline.encode_frame``), pair label images with frames
by header stamp, and gather mIoU, per-class IoU, latency and FPS into a ``BagEvalResult``
(plain data the JSON and the HTML report are written from); optionally write the node's
outputs into a new bag beside the input frames. Every frame also gets the node's frame score
(``eacnet_core.infer.confidence``: 0 trustworthy .. 1 not, unsmoothed) and every scored frame its
own mIoU, so the report shows where the model struggles and whether the score saw it."""

from __future__ import annotations

import array
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np
from rosbags.rosbag2 import Reader, Writer

from eacnet_core.evaluate.metrics import ConfusionMatrix
from eacnet_core.infer.segmenter import Segmenter
from eacnet_core.progress import progress_bar

from ..node import codec
from ..node.pipeline import FrameProcessor, SegmentedFrame, encode_frame
from .io import (
    BAG_VERSION,
    IMAGE_TYPE,
    OUTPUT_TOPICS,
    STORAGES,
    STORE,
    BagError,
    Image,
    deserialize,
    header_stamp,
    open_bag,
    pick_image_topic,
    read_messages,
    resolve_label_topic,
    staged_output,
    stamp_ns,
)

log = logging.getLogger(__name__)

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
    confidence: bool = False  # also write the node's confidence topic into the output bag


@dataclass
class ReportSample:
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
    trained: bool  # Segmenter.loaded_from_file: weights from a checkpoint, not random (a documented JSON key)
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
    frame_scores: list = field(default_factory=list, repr=False)  # (stamp ns, frame score) per processed frame
    frame_miou: dict = field(default_factory=dict, repr=False)  # stamp ns -> that frame's own mIoU (scored frames)

    def per_frame(self) -> list[dict]:
        """Each processed frame's stamp, frame score and (scored frames) own mIoU, in bag order."""
        return [{"stamp_ns": stamp, "frame_score": round(score, 4),
                 "miou": None if stamp not in self.frame_miou else round(self.frame_miou[stamp], 4)}
                for stamp, score in self.frame_scores]

    def to_json(self) -> dict:
        """The documented JSON: fractions in [0, 1], null where there is nothing to measure."""
        keys = ("frames", "evaluated", "miou", "pixel_accuracy", "per_class", "absent_classes", "latency_ms", "fps",
                "undecodable", "unpaired", "ambiguous_labels", "mismatched_labels", "output_bag", "trained", "model",
                "bag", "image_topic", "label_topic", "segmenter", "wall_s")
        return {**{k: getattr(self, k) for k in keys}, "per_frame": self.per_frame()}


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
        self.seg, self.opts, self.scan, self.result = segmenter, opts, scan, result
        self.processor = FrameProcessor(segmenter, opts.alpha)
        self.writer, self.frame_type = writer, frame_type
        self.metric = ConfusionMatrix(segmenter.num_classes, segmenter.dataset.ignore_index,
                                      segmenter.dataset.class_names)
        self.pending_preds: dict[int, np.ndarray] = {}  # stamp -> mask awaiting its label
        self.pending_labels: dict[int, np.ndarray] = {}  # stamp -> label awaiting its frame
        self.failed: set = set()  # stamps of undecodable frames: their labels are dropped
        self.position = 0  # frames with a readable header so far: the index into scan.frame_stamps
        self.samples: dict[int, Optional[ReportSample]] = dict.fromkeys(_sample_positions(scan, opts.samples))
        self.sample_of_stamp = {scan.frame_stamps[i]: i for i in self.samples if scan.frame_stamps[i] in scan.label_set}
        self.out_conns: dict[str, Any] = {}
        self.warm = False

    # -------------------------------------------------------------- node path
    def node_path(self, msg: Any) -> tuple[np.ndarray, SegmentedFrame, dict[str, Any]]:
        """Exactly what the ROS node's worker does with one frame, through its own code
        (node.pipeline): decode, segment, colour mask, overlay and confidence with the frame score
        (as with all subscribed and the frame score on), encode; the confidence is written only
        with ``confidence``."""
        bgr = codec.to_bgr(msg)
        frame = self.processor.process(bgr, want_color=True, want_overlay=True, want_confidence=True)
        outputs = encode_frame(frame, msg.header, Image)
        if not self.opts.confidence:
            outputs.pop("confidence", None)
        return bgr, frame, outputs

    def on_frame(self, conn: Any, receive_ns: int, raw: bytes) -> None:
        self.result.frames += 1
        position, raw_stamp = self.position, header_stamp(raw)
        if raw_stamp is not None:
            self.position += 1
        msg = deserialize(raw, self.frame_type)
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
        if frame.score is not None:
            self.result.frame_scores.append((stamp, frame.score))
        if self.writer is not None:
            self._write(conn, receive_ns, raw, outputs)
        if position in self.samples:
            self.samples[position] = ReportSample(stamp, _shrink(bgr), _shrink(frame.color_mask),
                                                  _shrink(frame.overlay))
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
                if key in outputs:  # the confidence only when asked for
                    self.out_conns[key] = self.writer.add_connection(topic, IMAGE_TYPE, typestore=STORE)
        self.writer.write(self.out_conns["input"], receive_ns, raw)
        for key, msg in outputs.items():
            self.writer.write(self.out_conns[key], receive_ns, STORE.serialize_cdr(msg, IMAGE_TYPE))

    # -------------------------------------------------------------- labels
    def on_label(self, raw: bytes) -> None:
        msg = deserialize(raw, IMAGE_TYPE)
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
        own = ConfusionMatrix(self.seg.num_classes, self.seg.dataset.ignore_index, self.seg.dataset.class_names)
        own.update(mask, label)
        labelled = own.matrix.sum(1) > 0
        if labelled.any():  # one frame holds a few classes: its mIoU is over those it has labels of
            self.result.frame_miou[stamp] = float(own.per_class_iou[labelled].mean())
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
                               model=segmenter.model_name, trained=segmenter.loaded_from_file,
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


# ---------------------------------------------------------------------- printing
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


