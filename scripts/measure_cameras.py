"""Several cameras on one CPU: one node for all of them against one node per camera
(docs/RESULTS.md, "Several cameras, one model").

    python scripts/measure_cameras.py [--cameras 1 2 4] [--rate 10] [--size 480x360]
        [--seconds 20] [--warmup 6] [--setups one,batched,separate] [-p NAME:=VALUE ...]
        [--json OUT]

For each camera count N and each setup, fresh node processes (``python -m
eacnet_ros.node.main``, the ``segment_node`` script) with the node's defaults plus the
``-p`` values:

* ``one``:      one node, ``cameras:=[cam0, ..]``, ``batch_cameras:=never``;
* ``batched``:  the same with ``batch_cameras:=always`` (N >= 2);
* ``separate``: N single-camera nodes, namespaces ``.../cam0``, ... (what users run today).

Both give the same topics (``<ns>/cam<i>/image`` in, ``<ns>/cam<i>/mask`` out), so this
process is the same camera rig for every setup: N reliable KEEP_LAST 1 publishers sending
CamVid val frames (synthetic where CamVid is absent) resized to ``--size``, all cameras at
the same instants (a hardware-triggered rig) at ``--rate`` Hz, each frame stamped with the
wall clock when it is sent. After ``--warmup`` seconds (backend auto settles on the first
frames) it times ``--seconds``:

* per-camera fps: masks received for the frames sent in the window, per second;
* latency: mask arrival minus the frame's stamp (one machine, one clock), p50 and p90;
* total throughput (the sum) against what was offered (N x rate), and the share dropped,
  split by where: lost on the way to the node (sent minus the node's own frames_received,
  from /diagnostics, over the whole run) or dropped by the node (replaced while waiting);
* memory: the resident set (VmRSS) of the node processes, summed, at the window's end.

How loaded the machine was, for each run: the CPU time the node processes and this
process used in the window, and the CPU time everything else used (other people's jobs on
a shared machine), each as a share of all cores; and the load average before and after.

Sets ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST and a random ROS_DOMAIN_ID unless they are set.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(random.SystemRandom().randint(1, 232)))

import rclpy  # noqa: E402  (after the discovery settings)
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from eacnet_ros.bench.dds import NodeProcess, resized, source_frames  # noqa: E402
from eacnet_ros.node import codec  # noqa: E402

SETUPS = ("one", "batched", "separate")
TAIL_S = 3.0  # after the window, for the last masks (and diagnostics newer than the last frame) to come back


@dataclass
class Result:
    cameras: int
    setup: str
    processes: int
    backends: list[str]
    offered_fps: float
    fps: list[float]
    p50_ms: list[float]
    p90_ms: list[float]
    lost_in_transport: float  # share of the frames sent that the node(s) never received
    rss_mb: float
    our_cpu: float  # share of all cores the node processes and this rig used in the window
    other_cpu: float  # share of all cores everything else used in the window
    load_before: float
    load_after: float

    @property
    def total_fps(self) -> float:
        return sum(self.fps)

    @property
    def dropped(self) -> float:
        return 1.0 - self.total_fps / self.offered_fps


class Rig:
    """N camera publishers and mask subscriptions in a context of their own, received on an
    executor thread (arrival times are taken when DDS hands the mask over)."""

    def __init__(self, namespace: str, cameras: int, frames: Sequence[np.ndarray]):
        self.context = Context()
        rclpy.init(args=[], context=self.context)  # not sys.argv: rcl would read "-p a:=b" as remap rules
        self.node = rclpy.create_node("eacnet_measure_cameras", namespace=namespace, context=self.context)
        camera_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                durability=DurabilityPolicy.VOLATILE)
        mask_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.names = [f"cam{i}" for i in range(cameras)]
        self.publishers = [self.node.create_publisher(Image, f"{name}/image", camera_qos) for name in self.names]
        self.messages = [codec.array_to_image(Image, Header(frame_id=name), frames[i % len(frames)], "bgr8")
                         for i, name in enumerate(self.names)]
        self._lock = threading.Lock()
        self.namespace = namespace
        self.sent: list[dict[tuple[int, int], float]] = [{} for _ in self.names]
        self.received: list[dict[tuple[int, int], float]] = [{} for _ in self.names]
        self.sent_total = [0] * cameras
        self.node_received: dict[str, int] = {}  # camera -> the node's frames_received, newest diagnostics
        for index, name in enumerate(self.names):
            self.node.create_subscription(Image, f"{name}/mask", lambda msg, i=index: self._on_mask(i, msg), mask_qos)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, QoSProfile(depth=50))
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    def _on_mask(self, index: int, msg: Any) -> None:
        now = time.time()
        with self._lock:
            self.received[index][(msg.header.stamp.sec, msg.header.stamp.nanosec)] = now

    def _on_diagnostics(self, msg: Any) -> None:
        """frames_received per camera, from one node per camera ('<ns>/cam0/segment_node:
        segmentation') or one node for all ('<ns>/segment_node: segmentation cam0')."""
        for status in msg.status:
            for name in self.names:
                if (status.name == f"{self.namespace}/segment_node: segmentation {name}"
                        or status.name == f"{self.namespace}/{name}/segment_node: segmentation"):
                    values = {kv.key: kv.value for kv in status.values}
                    with self._lock:
                        self.node_received[name] = int(values["frames_received"])

    def transport_loss(self) -> float:
        """Share of all frames sent so far that the node(s) have not received (call once
        the node's diagnostics are newer than the last frame)."""
        with self._lock:
            received = sum(self.node_received.get(name, 0) for name in self.names)
            return 1.0 - received / max(1, sum(self.sent_total))

    def wait_matched(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not all(p.get_subscription_count() > 0 for p in self.publishers):
            if time.monotonic() > deadline:
                raise TimeoutError("the node(s) never subscribed to every camera")
            time.sleep(0.1)
        time.sleep(2.5)  # reliability auto re-checks the publishers once a second

    def run(self, seconds: float, rate: float) -> None:
        """Publish every camera's frame at the same instants, ``rate`` times a second."""
        start = time.monotonic()
        for tick in range(int(seconds * rate)):
            time.sleep(max(0.0, start + tick / rate - time.monotonic()))
            now = time.time()
            sec, nanosec = int(now), int((now % 1) * 1e8) * 10  # the last digit: the camera (at most 10)
            for index, (publisher, msg) in enumerate(zip(self.publishers, self.messages, strict=True)):
                msg.header.stamp.sec, msg.header.stamp.nanosec = sec, nanosec + index
                with self._lock:
                    self.sent[index][(sec, nanosec + index)] = now
                    self.sent_total[index] += 1
                publisher.publish(msg)

    def reset(self) -> None:
        with self._lock:
            self.sent = [{} for _ in self.names]
            self.received = [{} for _ in self.names]

    def per_camera(self, seconds: float) -> tuple[list[float], list[float], list[float]]:
        """fps, latency p50 and p90 (ms) per camera over the frames sent in the window."""
        fps, p50, p90 = [], [], []
        with self._lock:
            for sent, received in zip(self.sent, self.received, strict=True):
                latencies = [1000.0 * (received[key] - at) for key, at in sent.items() if key in received]
                fps.append(len(latencies) / seconds)
                p50.append(float(np.percentile(latencies, 50)) if latencies else float("nan"))
                p90.append(float(np.percentile(latencies, 90)) if latencies else float("nan"))
        return fps, p50, p90

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=5.0)
        self._thread.join(5.0)
        self.node.destroy_node()
        self.context.try_shutdown()


class CpuShares:
    """CPU time over a window: the machine's busy time (/proc/stat) and that of ``pids``."""

    def __init__(self, pids: Sequence[int]):
        self.pids = list(pids)
        self._start = (time.monotonic(), _busy_ticks(), _process_ticks(self.pids))

    def shares(self) -> tuple[float, float]:
        """(ours, others): CPU time as a share of all cores over the window so far."""
        elapsed, busy, ours = (time.monotonic(), _busy_ticks(), _process_ticks(self.pids))
        capacity = (elapsed - self._start[0]) * os.sysconf("SC_CLK_TCK") * (os.cpu_count() or 1)
        our_share = (ours - self._start[2]) / capacity
        return our_share, max(0.0, (busy - self._start[1]) / capacity - our_share)


def _busy_ticks() -> int:
    with open("/proc/stat") as stat:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in stat.readline().split()[1:9])
    return user + nice + system + irq + softirq + steal


def _process_ticks(pids: Sequence[int]) -> int:
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
    return total


def rss_mb(pids: Sequence[int]) -> float:
    total_kb = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as status:
            total_kb += next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return total_kb / 1024.0


def nodes_for(setup: str, cameras: int, namespace: str, params: dict[str, str]) -> list[tuple[dict, str]]:
    """(parameters, namespace) of each node process of ``setup``."""
    names = [f"cam{i}" for i in range(cameras)]
    if setup == "separate":
        return [(dict(params), f"{namespace}/{name}") for name in names]
    batch = "always" if setup == "batched" else "never"
    return [({**params, "cameras": f"[{', '.join(names)}]", "batch_cameras": batch}, namespace)]


def measure(setup: str, cameras: int, args: argparse.Namespace, frames: Sequence[np.ndarray]) -> Result:
    namespace = f"/eacnet_cameras_{os.getpid()}_{setup}_{cameras}"
    load_before = os.getloadavg()[0]
    rig = Rig(namespace, cameras, frames)
    try:
        with ExitStack() as stack:
            nodes = [stack.enter_context(NodeProcess(params, ns))
                     for params, ns in nodes_for(setup, cameras, namespace, args.params)]
            rig.wait_matched()
            rig.run(args.warmup, args.rate)
            backends = [node.runtime().label for node in nodes]
            rig.reset()
            cpu = CpuShares([node.pid for node in nodes] + [os.getpid()])
            rig.run(args.seconds, args.rate)
            our_cpu, other_cpu = cpu.shares()
            memory = rss_mb([node.pid for node in nodes])
            time.sleep(TAIL_S)
            fps, p50, p90 = rig.per_camera(args.seconds)
            lost = rig.transport_loss()
    finally:
        rig.close()
    return Result(cameras, setup, len(nodes), backends, cameras * args.rate, fps, p50, p90, lost, memory, our_cpu,
                  other_cpu, load_before, os.getloadavg()[0])


def _cells(values: Sequence[float], digits: int) -> str:
    return " / ".join(f"{v:.{digits}f}" for v in values)


def table(results: Sequence[Result]) -> str:
    lines = ["| cameras | setup | node processes | per-camera fps | latency p50 ms | latency p90 ms | total fps "
             "(offered) | dropped: in all / lost on the way | RSS MB | CPU: ours / others | load before / after |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.cameras} | {r.setup} | {r.processes} | {_cells(r.fps, 1)} | {_cells(r.p50_ms, 0)} | "
                     f"{_cells(r.p90_ms, 0)} | {r.total_fps:.1f} ({r.offered_fps:.0f}) | {100 * r.dropped:.0f}% / "
                     f"{100 * r.lost_in_transport:.0f}% | "
                     f"{r.rss_mb:.0f} | {100 * r.our_cpu:.0f}% / {100 * r.other_cpu:.0f}% | "
                     f"{r.load_before:.2f} / {r.load_after:.2f} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cameras", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--setups", default=",".join(SETUPS), help=f"comma-separated, of {', '.join(SETUPS)}")
    parser.add_argument("--rate", type=float, default=10.0, help="frames per second per camera")
    parser.add_argument("--size", default="480x360", help="WxH of the camera frames")
    parser.add_argument("--seconds", type=float, default=20.0, help="timed window")
    parser.add_argument("--warmup", type=float, default=6.0, help="seconds of frames before the window")
    parser.add_argument("-p", dest="param", action="append", default=[], metavar="NAME:=VALUE",
                        help="a node parameter for every node (e.g. -p threads:=2)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    args.params = dict(p.split(":=", 1) for p in args.param)
    args.setups = [s for s in args.setups.split(",") if s]
    unknown = set(args.setups) - set(SETUPS)
    if unknown:
        parser.error(f"unknown setups {sorted(unknown)}; choose from {', '.join(SETUPS)}")
    if not all(1 <= n <= 10 for n in args.cameras):
        parser.error("--cameras: 1 to 10 cameras (a frame's stamp carries its camera in one digit)")
    width, height = (int(v) for v in args.size.lower().split("x"))
    args.size_hw = (height, width)
    return args


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    frames, source = source_frames(None, 8)
    frames = resized(frames, args.size_hw)
    print(f"frames: {source} at {args.size}; {args.rate:g} Hz per camera; node parameters {args.params or 'defaults'}; "
          f"ROS_DOMAIN_ID={os.environ['ROS_DOMAIN_ID']}", flush=True)
    results = []
    for cameras in args.cameras:
        for setup in args.setups:
            if setup == "batched" and cameras < 2:
                continue
            result = measure(setup, cameras, args, frames)
            results.append(result)
            print(table([result]).splitlines()[-1] + f" backends: {', '.join(result.backends)}", flush=True)
    print(table(results))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump([{**asdict(r), "total_fps": r.total_fps, "dropped": r.dropped} for r in results], handle,
                      indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
