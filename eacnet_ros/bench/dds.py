"""``eacnet bench-dds``: the segmentation node end to end, through real ROS 2 (Fast DDS).

``eacnet bench-pipeline`` times the node's per-frame path in-process; what it cannot see is
everything a deployment adds around it: serialization by rclpy, the DDS transfer of a
0.5-2.7 MB frame, the subscription callback, the worker hand-off and the way back of the
mask. This command measures exactly that, per input size and transport:

* The node runs as its own process (``python -m eacnet_ros.node.main``, the
  ``segment_node`` script), as it would on a robot, so its executor, GIL and threads are
  not shared with the publisher. A fresh node
  per configuration, in a private namespace: transport is a start-up parameter, and
  backend=auto settles on the first frame's size, as it would for a camera of that size.
* This process plays the camera: a reliable, KEEP_LAST(1) publisher of real camera frames
  (CamVid val, resized; synthetic frames where CamVid is absent), bgr8 ``Image`` or jpeg
  ``CompressedImage``. JPEG encoding happens before the clock starts: it is the camera's
  cost, not the pipeline's.
* End-to-end latency: from just before ``publish`` to the ``mask`` message arriving here,
  matched by the header stamp the node copies through. Both ends read one clock.
* By default the loop is closed (the next frame goes out when the previous mask came
  back): latency without queueing, the number to compare with the forward pass. ``--rate``
  publishes at a fixed rate instead, where an overloaded node drops frames by design.
* Drops: frames sent minus masks received, and the node's own ``frames_dropped`` counter
  from ``/diagnostics`` (the difference over the timed frames).
* The forward pass it is judged against is timed in this process on the Segmenter alone,
  with the very execution path the node chose (model, device, precision, backend and layout
  read from its log after the warm-up frames; same threads), by ``bench-pipeline``'s stage
  timer on the same frame, on a worker thread as in the node. Closed loop, one such sample
  follows every round trip, while the node is idle, so the drifting load of a shared
  machine hits both sides alike; at a fixed rate the samples are taken before sending.

Target: everything but the forward pass, end to end (p50 latency minus the forward pass),
at most 5% of the forward pass.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np

from eacnet_core.data.datasets import DatasetError
from eacnet_core.data.roots import CAMVID_LOOKUP, default_data_root
from eacnet_core.infer.segmenter import BACKENDS, Segmenter
from eacnet_core.models.registry import model_for
from eacnet_core.options import add_overwrite, at_least, number_in
from eacnet_core.outputs import check_outputs, write_json

from ..bags.eval import latency_percentiles
from ..bags.io import camvid_frames
from ..node import codec
from ..node.params import SPECS, Scalar
from .pipeline import (
    DEFAULT_SIZES,
    PipelineConfig,
    build_segmenters,
    input_message,
    message_types,
    parse_size,
    run_frame,
    synthetic_frame,
)

log = logging.getLogger(__name__)

DEFAULT_TRANSPORTS = ("raw", "compressed")
CLOSED_LOOP = "closed loop"
OVERHEAD_TARGET = 0.05  # end-to-end time outside the forward pass, as a fraction of the forward pass
NODE_START_TIMEOUT_S = 300.0  # torch import, model load, backend autotune on a busy 2-core CPU
#: Discovery of the node's input and output (and its input turning reliable) after it said it
#: listens: seconds at most; ends as soon as it holds. Generous, because a loaded machine
#: (the node choosing its engine, other processes) slows discovery, and waiting costs nothing.
DISCOVERY_TIMEOUT_S = 120.0
FIRST_FRAME_TIMEOUT_S = 180.0  # a new size may make the node export an onnxruntime graph first
MIN_FRAME_TIMEOUT_S = 10.0
MAX_DISTINCT_FRAMES = 30  # frames are cycled beyond this: 30 720p frames are already ~80 MB twice over
READY_LINE = "listening on "  # what segment_node logs once it takes frames (segment.launch.py waits for it too)
LOADED_PATTERN = re.compile(r"loaded model=(?P<model>\S+) .*?device=(?P<device>\S+) precision=(?P<precision>\S+) "
                            r"backend=(?P<backend>\S+)(?P<nhwc> channels_last)?")
#: Segmenter's INFO line when auto chooses (at start-up, or for a new size), e.g. "... -> torch:fp32:nhwc"...
CHOICE_PATTERN = re.compile(r"auto at \d+x\d+ \(\w+\): .* -> (?P<backend>\w+):(?P<precision>\w+)"
                            r"(?::(?P<layout>nhwc|nchw))?$")


@dataclass(frozen=True)
class NodeRuntime:
    """The execution path the node settled on (after backend=auto's start-up timing)."""

    model: str
    device: str
    precision: str
    backend: str
    channels_last: bool

    @classmethod
    def parse(cls, log_line: str) -> Optional[NodeRuntime]:
        """From segment_node's ``loaded <Segmenter.describe()>`` line; None if it is not one.
        The backend is 'auto' while the choice waits for the first frame (``chosen``)."""
        match = LOADED_PATTERN.search(log_line)
        if match is None:
            return None
        return cls(match["model"], match["device"], match["precision"], match["backend"], bool(match["nhwc"]))

    def chosen(self, log_line: str) -> Optional[NodeRuntime]:
        """This runtime with backend=auto's choice from its INFO line; None if it is not one."""
        match = CHOICE_PATTERN.search(log_line)
        if match is None:
            return None
        return replace(self, backend=match["backend"], precision=match["precision"],
                       channels_last=match["layout"] == "nhwc")

    @property
    def label(self) -> str:
        return f"{self.backend}{':nhwc' if self.channels_last else ''} {self.precision} on {self.device}"

    @property
    def pipeline_config(self) -> PipelineConfig:
        return PipelineConfig(self.backend, self.precision, self.channels_last)


@dataclass
class DdsResult:
    """One configuration (size x transport) of one run."""

    size: str
    transport: str
    mode: str
    sent: int
    received: int
    latency_ms: dict
    fps: float
    forward_ms: float
    in_process_ms: float  # bench-pipeline's whole per-frame path, for comparison
    node_dropped: Optional[int]  # the node's frames_dropped counter over the timed frames
    node_received: Optional[int]
    runtime: str

    @property
    def dropped(self) -> int:
        return self.sent - self.received

    @property
    def overhead(self) -> Optional[float]:
        """(end-to-end p50 - forward) / forward; None without a single mask."""
        p50 = self.latency_ms.get("p50")
        return None if p50 is None else (p50 - self.forward_ms) / self.forward_ms

    def to_json(self) -> dict:
        return {**asdict(self), "dropped": self.dropped, "overhead": self.overhead}


# ---------------------------------------------------------------------------- frames

def source_frames(data_root: Optional[str], count: int) -> tuple[list[np.ndarray], str]:
    """Up to ``count`` CamVid val images at their own size, else one synthetic frame: real
    images give the JPEG path real compressed sizes and decode work."""
    try:
        root = default_data_root("camvid", data_root)
        frames = [f.bgr for f in itertools.islice(camvid_frames(root, "val"), count) if f.bgr is not None]
    except (DatasetError, FileNotFoundError):
        frames = []
    if frames:
        return frames, f"CamVid val ({len(frames)} images)"
    if data_root:
        raise FileNotFoundError(f"no CamVid val images under {data_root}")
    return [synthetic_frame(360, 480)], "synthetic"


def resized(frames: Sequence[np.ndarray], size_hw: tuple[int, int]) -> list[np.ndarray]:
    return [f if f.shape[:2] == size_hw else cv2.resize(f, (size_hw[1], size_hw[0]), interpolation=cv2.INTER_AREA)
            for f in frames]


# ---------------------------------------------------------------------------- the node, as its own process

class NodeProcess:
    """``python -m eacnet_ros.node.main`` in ``namespace``; a context manager that waits
    for the ready line and stops the node with SIGINT (its clean shutdown path)."""

    def __init__(self, params: Mapping[str, Scalar], namespace: str):
        self.command = [sys.executable, "-m", "eacnet_ros.node.main", "--ros-args", "-r", f"__ns:={namespace}"]
        for name, value in params.items():
            self.command += ["-p", f"{name}:={_ros_arg(value)}"]
        self.lines: list[str] = []
        self._ready = threading.Event()
        self._proc: Optional[subprocess.Popen] = None
        self._reader: Optional[threading.Thread] = None

    def __enter__(self) -> NodeProcess:
        env = {**os.environ, "RCUTILS_COLORIZED_OUTPUT": "0", "RCUTILS_LOGGING_BUFFERED_STREAM": "0",
               "PYTHONUNBUFFERED": "1"}
        self._proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      env=env)
        self._reader = threading.Thread(target=self._read, name="eacnet-bench-node-log", daemon=True)
        self._reader.start()
        try:
            self._wait_ready(NODE_START_TIMEOUT_S)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            self.lines.append(line.rstrip())
            if READY_LINE in line:
                self._ready.set()

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.2):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                why = f"exited with {self._proc.returncode}" if self._proc.poll() is not None else "did not start"
                raise ChildProcessError(f"segment_node {why} within {timeout:.0f} s: {self.log_tail()}")

    def runtime(self, timeout: float = 60.0) -> NodeRuntime:
        """The execution path from the node's log: the 'loaded' line, and with backend=auto
        the last choice it logged (at start-up, or for a size met later: call this after a
        frame went through)."""
        loaded = next((r for r in map(NodeRuntime.parse, self.lines) if r is not None), None)
        if loaded is None:
            raise ChildProcessError(f"segment_node never logged its 'loaded model=...' line: {self.log_tail()}")
        deadline = time.monotonic() + timeout
        while True:  # the last choice logged wins: a size measured after start-up replaces the first
            chosen = [r for r in map(loaded.chosen, list(self.lines)) if r is not None]
            if chosen:
                return chosen[-1]
            if loaded.backend != "auto":
                return loaded
            if time.monotonic() > deadline:
                raise ChildProcessError(f"segment_node never logged its backend=auto choice: {self.log_tail()}")
            time.sleep(0.05)

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc is not None else None

    def log_tail(self, count: int = 5) -> str:
        return " | ".join(self.lines[-count:]) or "(no output)"

    def stop(self, timeout: float = 20.0) -> None:
        """SIGINT first (rclpy shuts down cleanly), a kill only if that hangs."""
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.send_signal(signal.SIGINT)
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._reader is not None:
            self._reader.join(2.0)


def _ros_arg(value: Scalar) -> str:
    """A --ros-args parameter value: YAML, so booleans are lower case."""
    return str(value).lower() if isinstance(value, bool) else str(value)


# ---------------------------------------------------------------------------- our side: camera and listener

class DdsClient:
    """The camera publisher, the mask and /diagnostics subscriptions, with their own rclpy
    Context and an executor thread, so receive times are taken the moment a message is
    taken from DDS, not when the main loop next looks."""

    def __init__(self, namespace: str, transport: str):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CompressedImage, Image

        self.transport = transport
        self.image_type, self.compressed_type = Image, CompressedImage
        self._diagnostics_name = f"{namespace.rstrip('/')}/segment_node"
        self._cond = threading.Condition()
        self._sent: dict[tuple[int, int], float] = {}
        self._received: dict[tuple[int, int], float] = {}
        self._diagnostics: Optional[tuple[float, dict[str, str]]] = None
        self._last_stamp_ns = 0
        self._last_mask_at = 0.0
        self.context = Context()
        rclpy.init(args=[], context=self.context)  # not sys.argv: the command line is not for rcl
        self.node = rclpy.create_node("eacnet_bench_dds", namespace=namespace, context=self.context)
        camera_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                durability=DurabilityPolicy.VOLATILE)
        topic, message_type = ("image/compressed", CompressedImage) if transport == "compressed" else ("image", Image)
        self.publisher = self.node.create_publisher(message_type, topic, camera_qos)
        self._reliable = ReliabilityPolicy.RELIABLE
        mask_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.mask_subscription = self.node.create_subscription(Image, "mask", self._on_mask, mask_qos)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, QoSProfile(depth=10))
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self.executor.spin, name="eacnet-bench-dds-spin", daemon=True)
        self._thread.start()

    def __enter__(self) -> DdsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=5.0)
        self._thread.join(5.0)
        self.node.destroy_node()
        self.context.try_shutdown()

    def subscribe_outputs(self, names: Sequence[str]) -> dict[str, list[float]]:
        """Subscribe to the node's outputs ``names`` (colour mask, overlay: the node computes
        them only while subscribed), as rviz would; the arrival times of each, to count them."""
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        arrivals: dict[str, list[float]] = {name: [] for name in names}
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)
        for name in names:
            self.node.create_subscription(Image, name, lambda msg, got=arrivals[name]: got.append(time.perf_counter()),
                                          qos)
        deadline = time.monotonic() + 30.0
        while any(self.node.count_publishers(f"{self.node.get_namespace()}/{n}") < 1 for n in names):
            if time.monotonic() > deadline:
                raise ChildProcessError(f"the node's {', '.join(names)} publishers were not discovered in 30 s")
            time.sleep(0.05)
        return arrivals

    def record_node_latency(self) -> list[tuple[float, float, float]]:
        """(perf_counter, p50, p99) of the node's own latency from each of its /diagnostics
        messages from now on, in the list returned."""
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile

        found: list[tuple[float, float, float]] = []

        def on_diagnostics(msg: Any) -> None:
            for status in msg.status:
                if status.name.startswith(self._diagnostics_name):
                    values = {kv.key: kv.value for kv in status.values}
                    found.append((time.perf_counter(), float(values.get("latency_ms_p50", "nan")),
                                  float(values.get("latency_ms_p99", "nan"))))

        self.node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, QoSProfile(depth=10))
        return found

    def latencies_or_none(self, keys: Sequence[tuple[int, int]]) -> list[Optional[float]]:
        """Latency of each key in order; None where no mask arrived."""
        with self._cond:
            return [1000.0 * (self._received[k] - self._sent[k]) if k in self._received else None for k in keys]

    # ------------------------------------------------------------------ callbacks (executor thread)
    def _on_mask(self, msg: Any) -> None:
        now = time.perf_counter()
        with self._cond:
            self._received[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = now
            self._last_mask_at = now
            self._cond.notify_all()

    def _on_diagnostics(self, msg: Any) -> None:
        now = time.perf_counter()
        for status in msg.status:
            if status.name.startswith(self._diagnostics_name):
                with self._cond:
                    self._diagnostics = (now, {kv.key: kv.value for kv in status.values})
                    self._cond.notify_all()

    # ------------------------------------------------------------------ main thread
    def messages(self, frames: Sequence[np.ndarray]) -> list[Any]:
        """The frames as the camera driver would publish them (encoded now, before timing)."""
        from std_msgs.msg import Header

        if self.transport == "compressed":
            return [codec.bgr_to_compressed(self.compressed_type, Header(frame_id="camera"), f, "jpeg") for f in frames]
        return [codec.array_to_image(self.image_type, Header(frame_id="camera"), f, "bgr8") for f in frames]

    def wait_matched(self, reliable: bool, timeout: float = DISCOVERY_TIMEOUT_S) -> None:
        """Both directions discovered, so no frame is published into the void; with
        ``reliable``, also the node's input subscription reliable: reliability=auto starts
        best_effort and switches within a second, and a large frame sent before that is lost.
        Ends as soon as all that holds; the error names what was still missing."""
        deadline = time.monotonic() + timeout
        while missing := self._unmatched(reliable):
            if time.monotonic() > deadline:
                raise ChildProcessError(f"{missing} within {timeout:.0f} s (check ROS_DOMAIN_ID / "
                                        "ROS_AUTOMATIC_DISCOVERY_RANGE, and --reliability)")
            time.sleep(0.05)

    def _unmatched(self, reliable: bool) -> str:
        """What discovery still lacks ('' when nothing)."""
        if self.publisher.get_subscription_count() < 1:
            return f"the node's subscription to {self.publisher.topic_name} was not discovered"
        if self.mask_subscription.get_publisher_count() < 1:
            return f"the node's publisher of {self.mask_subscription.topic_name} was not discovered"
        infos = self.node.get_subscriptions_info_by_topic(self.publisher.topic_name)
        if reliable and not (infos and all(i.qos_profile.reliability == self._reliable for i in infos)):
            return f"the node's subscription to {self.publisher.topic_name} did not turn reliable"
        return ""

    def publish(self, msg: Any) -> tuple[int, int]:
        """Stamp (unique, wall-clock like a camera's) and publish; returns the stamp key."""
        stamp_ns = max(time.time_ns(), self._last_stamp_ns + 1)
        self._last_stamp_ns = stamp_ns
        key = (stamp_ns // 10**9, stamp_ns % 10**9)
        msg.header.stamp.sec, msg.header.stamp.nanosec = key
        with self._cond:
            self._sent[key] = time.perf_counter()
        self.publisher.publish(msg)
        return key

    def wait_mask(self, key: tuple[int, int], timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: key in self._received, timeout)

    def wait_quiet(self, window: float) -> None:
        """Until no mask has arrived for ``window`` seconds (the end of a fixed-rate run)."""
        start = time.perf_counter()
        with self._cond:
            while (left := max(start, self._last_mask_at) + window - time.perf_counter()) > 0:
                self._cond.wait(left)

    def latencies_ms(self, keys: Sequence[tuple[int, int]]) -> list[float]:
        """Latency of every key whose mask arrived."""
        with self._cond:
            return [1000.0 * (self._received[k] - self._sent[k]) for k in keys if k in self._received]

    def output_fps(self, keys: Sequence[tuple[int, int]]) -> float:
        """Masks per second from the first frame sent to the last mask received."""
        with self._cond:
            arrivals = [self._received[k] for k in keys if k in self._received]
            span = max(arrivals, default=0.0) - min(self._sent[k] for k in keys)
        return len(arrivals) / span if arrivals and span > 0 else 0.0

    def diagnostics_after(self, moment: float, timeout: float = 30.0) -> Optional[dict[str, str]]:
        """The node's first /diagnostics values received after ``moment`` (perf_counter; waits at most
        ``timeout`` s, generous for a loaded machine, ending when they arrive);
        published once a second, so they include every frame received before ``moment``."""
        with self._cond:
            self._cond.wait_for(lambda: self._diagnostics is not None and self._diagnostics[0] > moment, timeout)
            latest = self._diagnostics
        return latest[1] if latest is not None and latest[0] > moment else None


# ---------------------------------------------------------------------------- one configuration

@dataclass(frozen=True)
class BenchPlan:
    """What every configuration shares."""

    frames: int
    warmup: int
    rate: float  # Hz; 0: closed loop

    @property
    def mode(self) -> str:
        return f"{self.rate:g} Hz" if self.rate else CLOSED_LOOP


class ReferenceTimer:
    """bench-pipeline's stage timer (``run_frame``) on the node's own execution path, in this
    process, on one of the frames being sent. Closed loop, one sample follows each frame's
    round trip while the node is idle: a shared CPU's load then weighs on both alike.

    The samples run on one long-lived worker thread, as the node's FrameWorker runs the
    model, never on the main thread: measured under load on our 2-core VM, eacnet_erf with
    two torch threads took ~2,000 ms per 480x360 forward pass on the main thread and ~90 ms
    on a worker thread of the same process, so a main-thread reference would not be the
    node's forward pass at all."""

    def __init__(self, segmenter: Segmenter, frame: np.ndarray):
        self.segmenter = segmenter
        self.store, self.image_type = message_types()
        self.msg = input_message(self.store, self.image_type, frame)
        self.samples: list[dict[str, float]] = []
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eacnet-bench-reference")
        # Untimed: first-run allocations and, for onnxruntime, the export at this size.
        self.first_ms = sum(self._run().values())

    def __enter__(self) -> ReferenceTimer:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown()

    def _run(self) -> dict[str, float]:
        return self._pool.submit(run_frame, self.segmenter, self.msg, self.store, self.image_type).result()[0]

    def sample(self) -> None:
        self.samples.append(self._run())

    @property
    def forward_ms(self) -> float:
        return float(np.median([s["forward"] for s in self.samples]))

    @property
    def total_ms(self) -> float:
        return float(np.median([sum(s.values()) for s in self.samples]))


def send_closed_loop(client: DdsClient, messages: Sequence[Any], count: int, timeout: float,
                     between: Callable[[], None]) -> list[tuple[int, int]]:
    """Each frame waits for the previous mask (or ``timeout``: then it counts as lost);
    ``between`` runs after each round trip, while the node has nothing to do."""
    keys = []
    for msg in itertools.islice(itertools.cycle(messages), count):
        keys.append(client.publish(msg))
        client.wait_mask(keys[-1], timeout)
        between()
    return keys


def send_at_rate(client: DdsClient, messages: Sequence[Any], count: int, rate: float,
                 quiet_s: float) -> list[tuple[int, int]]:
    """Frames on a fixed schedule whatever the node does; then wait for the last masks."""
    keys, start = [], time.perf_counter()
    for i, msg in enumerate(itertools.islice(itertools.cycle(messages), count)):
        time.sleep(max(0.0, start + i / rate - time.perf_counter()))
        keys.append(client.publish(msg))
    client.wait_quiet(quiet_s)
    return keys


def warm_up(client: DdsClient, messages: Sequence[Any], count: int, label: str, reliability: str) -> None:
    """Untimed frames: discovery, first-frame allocations and a per-size onnxruntime export
    happen here. A frame that never comes back here is a transport problem, not a slow node."""
    for msg in itertools.islice(itertools.cycle(messages), count):
        if not client.wait_mask(client.publish(msg), FIRST_FRAME_TIMEOUT_S):
            hint = (" Fast DDS loses large frames to a best-effort subscription; try --reliability reliable."
                    if reliability != "reliable" else "")
            raise ChildProcessError(f"no mask for a {label} frame within {FIRST_FRAME_TIMEOUT_S:.0f} s.{hint}")


NODE_COUNTERS = ("frames_dropped", "frames_received")


def counter_deltas(before: Optional[dict[str, str]], after: Optional[dict[str, str]]) -> dict[str, Optional[int]]:
    """The node's cumulative /diagnostics counters over the timed frames (None: not seen)."""
    return {key: int(after[key]) - int(before[key]) if before and after and key in before and key in after else None
            for key in NODE_COUNTERS}


def send_timed(client: DdsClient, reference: ReferenceTimer, messages: Sequence[Any],
               plan: BenchPlan) -> tuple[list[tuple[int, int]], dict[str, Optional[int]]]:
    """The timed frames in the plan's mode, with the reference samples and the node's
    diagnostics counters taken around them."""
    timeout = max(MIN_FRAME_TIMEOUT_S, 10 * reference.first_ms / 1000.0)
    if plan.rate:  # the node is never idle during the run: the reference goes first
        for _ in range(plan.frames):
            reference.sample()
    before = client.diagnostics_after(time.perf_counter())
    if plan.rate:
        quiet_s = min(timeout, 3 * reference.total_ms / 1000.0 + 2.0)  # a few frames' time without a mask: done
        keys = send_at_rate(client, messages, plan.frames, plan.rate, quiet_s)
    else:
        keys = send_closed_loop(client, messages, plan.frames, timeout, between=reference.sample)
    return keys, counter_deltas(before, client.diagnostics_after(time.perf_counter()))


def summarize(client: DdsClient, keys: Sequence[tuple[int, int]], node: Mapping[str, Optional[int]],
              reference: ReferenceTimer, plan: BenchPlan, runtime: NodeRuntime, size: str) -> DdsResult:
    latencies = client.latencies_ms(keys)
    # Closed loop, the reference runs between frames: the loop's rate is 1 / mean latency.
    fps = client.output_fps(keys) if plan.rate else (1000.0 * len(latencies) / sum(latencies) if latencies else 0.0)
    return DdsResult(size=size, transport=client.transport, mode=plan.mode, sent=len(keys),
                     received=len(latencies), latency_ms=latency_percentiles(latencies), fps=fps,
                     forward_ms=reference.forward_ms, in_process_ms=reference.total_ms,
                     node_dropped=node["frames_dropped"], node_received=node["frames_received"],
                     runtime=runtime.label)


def bench_config(args: argparse.Namespace, size_hw: tuple[int, int], transport: str, threads: int,
                 frames: Sequence[np.ndarray], references: dict[NodeRuntime, Segmenter]) -> DdsResult:
    """A fresh node for one size and transport, as a camera of that kind would get: the
    transport is a start-up parameter, and backend=auto settles on the first frame's size."""
    plan, size = BenchPlan(args.frames, args.warmup, args.rate), f"{size_hw[1]}x{size_hw[0]}"
    log.info("bench-dds: %s %s, %d warm-up + %d frames, %s", size, transport, plan.warmup, plan.frames, plan.mode)
    namespace = f"/eacnet_bench_dds_{os.getpid()}_{transport}_{size}"
    # The publisher exists before the node starts, so reliability=auto finds it.
    with DdsClient(namespace, transport) as client, \
            NodeProcess(node_params(args, transport, threads, size_hw), namespace) as node:
        client.wait_matched(reliable=args.reliability != "best_effort")
        sized = resized(frames, size_hw)
        messages = client.messages(sized)
        warm_up(client, messages, plan.warmup, f"{size} {transport}", args.reliability)
        runtime = node.runtime()
        if runtime not in references:
            references[runtime] = build_segmenters(runtime.model, None, [runtime.pipeline_config], runtime.device,
                                                   (0, 0), threads)[0]
        with ReferenceTimer(references[runtime], sized[0]) as reference:
            keys, node_counts = send_timed(client, reference, messages, plan)
        return summarize(client, keys, node_counts, reference, plan, runtime, size)


# ---------------------------------------------------------------------------- report

def _ms(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def format_table(results: Sequence[DdsResult]) -> str:
    head = ("| input | transport | node path | mode | sent | masks | dropped | node frames_dropped | e2e p50 ms | "
            "p90 | p99 | fps | forward ms | non-model / forward |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        lat = r.latency_ms
        cells = [r.size, r.transport, r.runtime, r.mode, str(r.sent), str(r.received), str(r.dropped),
                 "n/a" if r.node_dropped is None else str(r.node_dropped), _ms(lat["p50"]), _ms(lat["p90"]),
                 _ms(lat["p99"]), f"{r.fps:.2f}", f"{r.forward_ms:.1f}",
                 "n/a" if r.overhead is None else f"{100 * r.overhead:.1f}%"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def check_targets(results: Sequence[DdsResult]) -> list[str]:
    """One PASS/FAIL line per configuration."""
    lines = []
    for r in results:
        ok = r.overhead is not None and r.overhead <= OVERHEAD_TARGET
        share = "no mask received" if r.overhead is None else f"{r.overhead:.1%}"
        lines.append(f"{'PASS' if ok else 'FAIL'} {r.size} {r.transport}: everything but the forward pass <= "
                     f"{OVERHEAD_TARGET:.0%} of it end to end ({share}: p50 {_ms(r.latency_ms['p50'])} ms against "
                     f"forward {r.forward_ms:.1f} ms; bench-pipeline in-process path {r.in_process_ms:.1f} ms)"
                     + ("" if r.mode == CLOSED_LOOP else f"; at {r.mode} this includes waiting behind earlier frames"))
    return lines


# ---------------------------------------------------------------------------- CLI

def add_parser(subparsers, soak: Optional[Callable[[argparse.Namespace, int, Sequence[np.ndarray]], int]] = None,
               ) -> None:
    """``soak``: what runs ``--duration`` (``eacnet_ros.bench.soak.run``, passed in by the CLI:
    that module builds on this one)."""
    p = subparsers.add_parser("bench-dds", help="time the segmentation node end to end through real ROS 2 DDS",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default=SPECS["backbone"].default, choices=SPECS["backbone"].choices,
                   help="node parameter backbone (default %(default)s)")
    p.add_argument("--attention", default=SPECS["attention"].default, choices=SPECS["attention"].choices,
                   help="node parameter attention (default %(default)s)")
    p.add_argument("--backend", default=SPECS["backend"].default, choices=BACKENDS,
                   help="node parameter backend (default %(default)s: the node times the CPU paths at start-up; "
                        "the forward reference uses whichever it chose)")
    p.add_argument("--threads", type=at_least(0), default=0,
                   help="CPU threads of the node and of the forward reference "
                        "(default 0: torch's default here, e.g. every core)")
    p.add_argument("--reliability", default=SPECS["reliability"].default, choices=SPECS["reliability"].choices,
                   help="node parameter reliability of its image subscription (default %(default)s)")
    p.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES), help="frame sizes WxH (default: %(default)s)")
    p.add_argument("--transports", nargs="+", default=list(DEFAULT_TRANSPORTS), choices=DEFAULT_TRANSPORTS,
                   help="raw (sensor_msgs/Image bgr8) and/or compressed (CompressedImage jpeg) (default: both)")
    p.add_argument("--frames", type=at_least(1), default=30, help="timed frames per configuration (default 30)")
    p.add_argument("--warmup", type=at_least(1), default=2, help="untimed frames first, per configuration (default 2)")
    p.add_argument("--rate", type=number_in(0), default=0.0,
                   help="publish at this rate in Hz (default: closed loop, the next frame "
                        "when the previous mask arrived)")
    p.add_argument("--duration", type=number_in(0), default=0.0,
                   help="with --rate: one node, open loop for this many seconds from its ready line, on the first "
                        "size and transport given: latency per window, frames lost by cause, the node's RSS, fds and "
                        "threads over time (eacnet_ros/bench/soak.py)")
    p.add_argument("--window", type=number_in(0, low_open=True), default=60.0,
                   help="with --duration: seconds per latency window; RSS is fitted after the first (default 60)")
    p.add_argument("--sample-every", type=number_in(0, low_open=True), default=5.0,
                   help="with --duration: seconds between samples of the node's RSS, fds and threads (default 5)")
    p.add_argument("--outputs", nargs="*", default=["color_mask", "overlay"], choices=["color_mask", "overlay"],
                   help="with --duration: outputs subscribed besides the mask (default: both; none: mask only)")
    p.add_argument("--data-root", help=f"CamVid root for the frames (default: {CAMVID_LOOKUP}; "
                                       "synthetic frames when it finds none)")
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    add_overwrite(p)
    p.set_defaults(func=run, soak=soak)


def _check_args(args: argparse.Namespace) -> None:
    if args.duration and not args.rate:
        raise ValueError("--duration runs open loop: give --rate HZ too")
    if args.duration and args.soak is None:
        raise ValueError("--duration needs the soak runner (eacnet_ros.bench.soak), which `eacnet` provides")
    for size in args.sizes:
        parse_size(size)
    model_for(args.backbone, args.attention)  # a clear error before any process starts
    if args.json:
        check_outputs([args.json], overwrite=args.overwrite)


def resolved_threads(requested: int) -> int:
    """0 becomes this process's torch thread count, handed to the node explicitly: the node
    and the reference must run the same count, and 'library default' is only the same in
    both while nothing in this process (a test fixture, an earlier Segmenter) changed it."""
    import torch

    return requested or torch.get_num_threads()


def node_params(args: argparse.Namespace, transport: str, threads: int,
                size_hw: Optional[tuple[int, int]] = None) -> dict[str, Scalar]:
    """The node's parameters; ``size_hw``: the frames' size, which backend auto chooses for
    at start-up (``camera_height``/``camera_width``), as a camera of that size would be set up."""
    params: dict[str, Scalar] = {"backbone": args.backbone, "attention": args.attention, "backend": args.backend,
                                 "threads": threads, "reliability": args.reliability, "transport": transport}
    if size_hw is not None:
        params.update(camera_height=size_hw[0], camera_width=size_hw[1])
    return params


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    # Nothing this benchmark sends has any business leaving the machine (2.7 MB frames).
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    frames, source = source_frames(args.data_root, min(args.frames, MAX_DISTINCT_FRAMES))
    threads = resolved_threads(args.threads)
    if args.duration:
        return args.soak(args, threads, frames)
    references: dict[NodeRuntime, Segmenter] = {}
    results = [bench_config(args, parse_size(size), transport, threads, frames, references)
               for size in args.sizes for transport in dict.fromkeys(args.transports)]
    print(f"model {model_for(args.backbone, args.attention)}, {threads} thread(s), reliability "
          f"{args.reliability}, {results[0].mode}, {args.frames} frames per configuration from {source}; latency = "
          "publish -> mask received; forward = the Segmenter alone, in-process, on the node's execution path")
    print(format_table(results))
    for line in check_targets(results):
        print(line)
    if args.json:
        write_json(args.json, [r.to_json() for r in results])
    return 0
