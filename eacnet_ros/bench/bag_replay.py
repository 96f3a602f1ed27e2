"""``eacnet bag-replay``: a recorded bag through the running node over Fast DDS, scored as
``eacnet bag-eval`` scores it offline.

``ros2 bag play`` (rosbag2 is C++) has no wheel, so the launch file's ``bag:=`` path cannot
run without a ROS install. This plays its part: the bag's image topic (raw or compressed,
each message's own header stamp kept) is published through rclpy and Fast DDS into
``segment_node`` running as a process of its own, the masks it publishes come back, and
each is paired by header stamp with the bag's label for that frame, as bag-eval pairs them.

* ``--pace closed`` (default): the next frame goes out once the previous mask is back (or
  after a timeout: then it counts as dropped): every frame is scored, and the figures say
  how fast the node takes frames.
* ``--pace recorded``: frames go out at the bag's recorded rate whatever the node does; an
  overloaded node drops frames by design (its newest-frame mailbox), and only the frames
  that came back are scored.

The mIoU must agree with bag-eval's for the same model settings: both run the node's code
(``node.pipeline``); what differs is the transport around it. Latency here is publish ->
mask received (bag-eval's is the in-process pipeline alone).
"""

from __future__ import annotations

import argparse
import array
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from eacnet_core.data.classes import CAMVID
from eacnet_core.evaluate.metrics import ConfusionMatrix
from eacnet_core.options import add_overwrite, at_least, number_in
from eacnet_core.outputs import check_outputs, write_json

from ..bags.eval import latency_percentiles
from ..bags.io import (
    COMPRESSED_TYPE,
    BagError,
    deserialize,
    open_bag,
    pick_image_topic,
    read_messages,
    resolve_label_topic,
    stamp_ns,
)
from ..node import codec
from ..node.params import SPECS, Scalar
from .dds import FIRST_FRAME_TIMEOUT_S, DdsClient, NodeProcess

PACES = ("closed", "recorded")
#: A stamp for the warm-up frame that no camera frame has (1 ns after the epoch).
WARMUP_STAMP = (0, 1)


@dataclass
class ReplayResult:
    bag: str
    image_topic: str
    label_topic: Optional[str]
    pace: str
    sent: int = 0
    received: int = 0
    evaluated: int = 0
    miou: Optional[float] = None
    pixel_accuracy: Optional[float] = None
    per_class: dict = field(default_factory=dict)
    latency_ms: dict = field(default_factory=dict)
    fps: float = 0.0
    node: str = ""

    @property
    def dropped(self) -> int:
        return self.sent - self.received

    def to_json(self) -> dict:
        return {**asdict(self), "dropped": self.dropped}


@dataclass(frozen=True)
class BagFrames:
    """What is replayed: the frames (bag message, receive time) and the labels by stamp."""

    topic: str
    label_topic: Optional[str]
    compressed: bool
    frames: list
    labels: dict


def read_bag(bag: Path, limit: int = 0) -> BagFrames:
    """The image topic's frames (the first ``limit``) and the label of each stamp that has
    exactly one label (bag-eval's pairing: a shared stamp cannot be paired)."""
    with open_bag(bag) as reader:
        label_topic = resolve_label_topic(reader, None, bag)
        topic = pick_image_topic(reader, "auto", label_topic, bag)
        frame_conns = [c for c in reader.connections if c.topic == topic]
        label_conns = [c for c in reader.connections if c.topic == label_topic]
        msgtype = frame_conns[0].msgtype
        frames: list = []
        for _, receive_ns, raw in read_messages(reader, frame_conns, bag):
            msg = deserialize(raw, msgtype)
            if msg is not None:
                frames.append((msg, receive_ns))
            if limit and len(frames) >= limit:
                break
        labels: dict[int, Optional[np.ndarray]] = {}
        for _, _, raw in read_messages(reader, label_conns, bag):
            msg = deserialize(raw, "sensor_msgs/msg/Image")
            if msg is None or str(msg.encoding) not in ("mono8", "8UC1"):
                continue
            stamp = stamp_ns(msg)
            labels[stamp] = None if stamp in labels else codec.image_to_array(msg)[..., 0]
    if not frames:
        raise BagError(f"bag {bag}: no readable frame on {topic}")
    return BagFrames(topic, label_topic, msgtype == COMPRESSED_TYPE, frames,
                     {s: label for s, label in labels.items() if label is not None})


class _MaskClient(DdsClient):
    """bench-dds's camera and listener, keeping each mask's pixels (for scoring) and
    publishing each frame with the stamp it carries in the bag."""

    def __init__(self, namespace: str, transport: str):
        super().__init__(namespace, transport)
        self.masks: dict[tuple[int, int], np.ndarray] = {}

    def _on_mask(self, msg: Any) -> None:
        pixels = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.step)[:, :msg.width].copy()
        with self._cond:
            self.masks[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = pixels
        super()._on_mask(msg)

    def ros_message(self, bag_msg: Any) -> Any:
        """The bag's message as an rclpy one, header and payload unchanged."""
        from builtin_interfaces.msg import Time
        from std_msgs.msg import Header

        header = Header(stamp=Time(sec=int(bag_msg.header.stamp.sec), nanosec=int(bag_msg.header.stamp.nanosec)),
                        frame_id=str(bag_msg.header.frame_id))
        data = array.array("B", np.asarray(bag_msg.data, np.uint8).tobytes())
        if self.transport == "compressed":
            return self.compressed_type(header=header, format=str(bag_msg.format), data=data)
        return self.image_type(header=header, height=int(bag_msg.height), width=int(bag_msg.width),
                               encoding=str(bag_msg.encoding), is_bigendian=int(bag_msg.is_bigendian),
                               step=int(bag_msg.step), data=data)

    def publish_as_recorded(self, msg: Any) -> tuple[int, int]:
        key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        with self._cond:
            self._sent[key] = time.perf_counter()
        self.publisher.publish(msg)
        return key


def _warm_up(client: _MaskClient, first: Any) -> None:
    """Discovery, the model's first frame and the reliability switch (reliability auto)
    happen on a frame that is not scored."""
    msg = client.ros_message(first)
    msg.header.stamp.sec, msg.header.stamp.nanosec = WARMUP_STAMP
    deadline = time.monotonic() + FIRST_FRAME_TIMEOUT_S
    while not client.wait_mask(client.publish_as_recorded(msg), 2.0):
        if time.monotonic() > deadline:
            raise ChildProcessError(f"no mask for the first frame within {FIRST_FRAME_TIMEOUT_S:.0f} s")
    with client._cond:
        client._sent.pop(WARMUP_STAMP, None)
        client._received.pop(WARMUP_STAMP, None)
        client.masks.pop(WARMUP_STAMP, None)


def _send(client: _MaskClient, frames: list, pace: str, timeout: float) -> list[tuple[int, int]]:
    keys = []
    start, first_ns = time.perf_counter(), frames[0][1]
    for bag_msg, receive_ns in frames:
        msg = client.ros_message(bag_msg)
        if pace == "recorded":
            time.sleep(max(0.0, start + (receive_ns - first_ns) / 1e9 - time.perf_counter()))
        keys.append(client.publish_as_recorded(msg))
        if pace == "closed":
            client.wait_mask(keys[-1], timeout)
    if pace == "recorded":
        client.wait_quiet(min(timeout, 3.0))
    return keys


def replay(bag: Path, params: dict[str, Scalar], pace: str = "closed", limit: int = 0,
           timeout: float = 30.0) -> ReplayResult:
    """Replay ``bag`` into a fresh ``segment_node`` started with ``params``; see the module docstring."""
    if pace not in PACES:
        raise ValueError(f"--pace must be one of {', '.join(PACES)}, got {pace!r}")
    content = read_bag(bag, limit)
    transport = "compressed" if content.compressed else "raw"
    namespace = f"/eacnet_bag_replay_{os.getpid()}"
    result = ReplayResult(str(bag), content.topic, content.label_topic, pace)
    with _MaskClient(namespace, transport) as client, \
            NodeProcess({**params, "transport": transport}, namespace) as node:
        client.wait_matched(reliable=params.get("reliability", "auto") != "best_effort")
        _warm_up(client, content.frames[0][0])
        keys = _send(client, content.frames, pace, timeout)
        result.node = next((line.split("loaded ", 1)[1] for line in node.lines if "loaded model=" in line), "")
        latencies = client.latencies_ms(keys)
        with client._cond:
            masks = {k: client.masks[k] for k in keys if k in client.masks}
    result.sent, result.received = len(keys), len(latencies)
    result.latency_ms = latency_percentiles(latencies)
    result.fps = (1000.0 * len(latencies) / sum(latencies) if latencies else 0.0) if pace == "closed" \
        else client.output_fps(keys)
    _score(result, masks, content.labels)
    return result


def _score(result: ReplayResult, masks: dict[tuple[int, int], np.ndarray], labels: dict[int, np.ndarray]) -> None:
    """bag-eval's metric on the masks that came back and have a label of their own size."""
    metric = ConfusionMatrix(CAMVID.num_classes, CAMVID.ignore_index, CAMVID.class_names)
    for (sec, nanosec), mask in masks.items():
        label = labels.get(sec * 10**9 + nanosec)
        if label is not None and label.shape == mask.shape:
            metric.update(mask, label)
            result.evaluated += 1
    if result.evaluated:
        summary = metric.summary()
        result.miou, result.pixel_accuracy, result.per_class = summary["miou"], summary["pixel_acc"], \
            summary["per_class"]


def format_result(result: ReplayResult) -> str:
    lat = result.latency_ms
    lines = [f"{result.pace} pace: sent {result.sent}, masks back {result.received}, dropped {result.dropped}, "
             f"scored {result.evaluated}",
             (f"mIoU {100 * result.miou:.2f}%  pixel accuracy {100 * (result.pixel_accuracy or 0):.2f}%"
              if result.miou is not None else "mIoU: n/a (no label paired with a mask)")]
    if lat.get("p50") is not None:
        lines.append(f"latency ms (publish -> mask) p50 {lat['p50']:.1f}  p90 {lat['p90']:.1f}  p99 {lat['p99']:.1f}"
                     f"  FPS {result.fps:.2f}")
    lines.append(f"node: {result.node}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- CLI

def _node_param(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":=")
    if not sep or name not in SPECS or name == "transport":
        names = ", ".join(n for n in SPECS if n != "transport")
        raise argparse.ArgumentTypeError(f"--param {text!r}: expected NAME:=VALUE with a node parameter other than "
                                         f"transport (the bag decides it): {names}")
    return name, value


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("bag-replay", help="replay a bag through the running node over Fast DDS and score it "
                                                 "like bag-eval", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bag", type=Path, required=True, help="rosbag2 with an image topic (and labels, as make-bag "
                                                           "writes them)")
    p.add_argument("--param", type=_node_param, action="append", default=[], metavar="NAME:=VALUE",
                   help="a node parameter, as -p gives it (repeatable), e.g. --param backbone:=dabnet")
    p.add_argument("--pace", choices=PACES, default="closed", help="closed (default): the next frame once the mask "
                                                                   "is back; recorded: the bag's own rate")
    p.add_argument("--limit", type=at_least(0), default=0, help="replay at most N frames (default all)")
    p.add_argument("--timeout", type=number_in(0, low_open=True), default=30.0,
                   help="seconds to wait for one mask (default 30)")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    add_overwrite(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.limit < 0 or args.timeout <= 0:
        raise ValueError("--limit must be >= 0 and --timeout > 0")
    if not args.bag.exists():
        raise FileNotFoundError(f"bag {args.bag} does not exist")
    if args.json:
        check_outputs([args.json], overwrite=args.overwrite)
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    result = replay(args.bag, dict(args.param), args.pace, args.limit, args.timeout)
    print(format_result(result))
    if args.json:
        write_json(args.json, result.to_json())
    return 0
