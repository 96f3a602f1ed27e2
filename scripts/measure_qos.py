"""The QoS measurements behind the node's defaults (docs/RESULTS.md, "Output QoS" and
"Input QoS with real cameras"). Both run real Fast DDS between separate processes, which
is what matters: two participants in one process may take an intra-process shortcut.

    python scripts/measure_qos.py output DEPTH WxH [N] [RATE]
        a reliable KEEP_LAST DEPTH publisher sends N bgr8 frames at RATE Hz to a reliable
        depth-10 subscriber (rviz's default) in a child process: how many arrive, how late.
    python scripts/measure_qos.py input WxH reliable|best_effort [N] [RATE] [--namespace NS]
        publishes N frames on NS/image with that reliability to a running segment_node and
        counts the NS/mask messages that come back (NS: the node's namespace, default none).

Set ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST and a ROS_DOMAIN_ID of your own first.
"""

from __future__ import annotations

import array
import subprocess
import sys
import time

import numpy as np
import rclpy
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image


def reliable(depth: int) -> QoSProfile:
    return QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)


def frame(width: int, height: int, index: int) -> Image:
    """A random bgr8 frame whose header says which one it is and when it was sent."""
    pixels = np.random.default_rng(index).integers(0, 256, height * width * 3, dtype=np.uint8)
    msg = Image(height=height, width=width, encoding="bgr8", step=width * 3, data=array.array("B", pixels.tobytes()))
    now = time.time()
    msg.header.stamp.sec, msg.header.stamp.nanosec = int(now), int((now % 1) * 1e9)
    msg.header.frame_id = str(index)
    return msg


def spin_for(node: Node, seconds: float, until=lambda: False) -> None:
    end = time.time() + seconds
    while time.time() < end and not until():
        rclpy.spin_once(node, timeout_sec=0.02)


def receive(count: int, seconds: float) -> None:
    """Child process of ``output``: count frames on 'out' and their latency."""
    node = rclpy.create_node("qos_receiver")
    latencies: list[float] = []

    def on_frame(msg: Image) -> None:
        latencies.append(time.time() - msg.header.stamp.sec - msg.header.stamp.nanosec * 1e-9)

    node.create_subscription(Image, "out", on_frame, reliable(10))
    spin_for(node, seconds, until=lambda: len(latencies) >= count)
    worst = max(latencies, default=0.0)
    print(f"RESULT received {len(latencies)} of {count}, latency max {worst:.2f} s", flush=True)


def output(depth: int, width: int, height: int, count: int, rate: float) -> None:
    child = subprocess.Popen([sys.executable, __file__, "receive", str(count), str(count / rate + 15)])
    node = rclpy.create_node("qos_sender")
    publisher = node.create_publisher(Image, "out", reliable(depth))
    spin_for(node, 30, until=lambda: publisher.get_subscription_count() > 0)
    spin_for(node, 0.5)
    for index in range(count):
        publisher.publish(frame(width, height, index))
        spin_for(node, 1.0 / rate)
    spin_for(node, 3)
    child.wait()


def probe_node(width: int, height: int, reliability: str, count: int, rate: float, namespace: str = "") -> None:
    node = rclpy.create_node("qos_probe")
    qos = reliable(10) if reliability == "reliable" else qos_profile_sensor_data
    prefix = "/" + namespace.strip("/") if namespace.strip("/") else ""
    publisher = node.create_publisher(Image, f"{prefix}/image", qos)
    masks: set[str] = set()
    node.create_subscription(Image, f"{prefix}/mask", lambda msg: masks.add(msg.header.frame_id), reliable(10))
    spin_for(node, 30, until=lambda: publisher.get_subscription_count() > 0
             and node.count_publishers(f"{prefix}/mask") > 0)
    spin_for(node, 2.5)  # reliability auto re-checks the publishers once a second
    for index in range(count):
        publisher.publish(frame(width, height, index))
        spin_for(node, 1.0 / rate)
    spin_for(node, 5, until=lambda: len(masks) >= count)
    print(f"RESULT {width}x{height} {reliability}: {len(masks)} of {count} masks", flush=True)


def size(text: str) -> tuple[int, int]:
    width, height = (int(v) for v in text.lower().split("x"))
    return width, height


def main(argv: list[str]) -> None:
    namespace = ""
    if "--namespace" in argv:
        at = argv.index("--namespace")
        namespace, argv = argv[at + 1], argv[:at] + argv[at + 2:]
    rclpy.init()
    try:
        if argv[0] == "receive":
            receive(int(argv[1]), float(argv[2]))
        elif argv[0] == "output":
            output(int(argv[1]), *size(argv[2]), int(argv[3]) if len(argv) > 3 else 40,
                   float(argv[4]) if len(argv) > 4 else 10.0)
        elif argv[0] == "input":
            probe_node(*size(argv[1]), argv[2], int(argv[3]) if len(argv) > 3 else 15,
                       float(argv[4]) if len(argv) > 4 else 2.0, namespace)
        else:
            sys.exit(__doc__)
    finally:
        rclpy.try_shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
