"""launch_testing: start launch/segment.launch.py for real and talk to the node over ROS 2.

Runs under ``colcon test`` (or ``launch_test``) on a ROS 2 machine with this package built.
Without ROS 2 (no launch_testing / rclpy) the whole module is reported as skipped, never
as passed.

The node runs eacnet_erf on the CPU with a tiny random-weight checkpoint this test
writes (packaged weights need not exist) and the installed config/segment.yaml.
test_launch_real.py runs the same launch file without launch_testing (which has no
wheel) on the pip-installed ROS 2 wheels; this test is for a ROS 2 machine's colcon test.
"""

import tempfile
import time
import unittest
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("launch_testing")
rclpy = pytest.importorskip("rclpy")

import launch_testing.actions  # noqa: E402
import launch_testing.asserts  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from launch.actions import IncludeLaunchDescription  # noqa: E402
from launch.launch_description import LaunchDescription  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from eacnet_ros.node import codec  # noqa: E402

NAMESPACE = "eacnet_launch_test"
IMAGE_TOPIC = "/eacnet_launch_test_camera/image_raw"
H, W = 48, 64
STARTUP_TIMEOUT_S = 120.0  # torch import, model load and warm-up on a slow CI machine
#: Waits once the node is up: generous for a loaded machine, and each ends on success.
WAIT_S = 60.0


def _launch_file() -> str:
    """The installed launch file (what `ros2 launch` runs); the source tree's otherwise."""
    try:
        from ament_index_python.packages import get_package_share_directory

        return str(Path(get_package_share_directory("eacnet_ros")) / "launch" / "segment.launch.py")
    except Exception:
        return str(Path(__file__).resolve().parents[1] / "launch" / "segment.launch.py")


def _tiny_checkpoint() -> str:
    """The suite's tiny checkpoint (conftest), an eacnet_erf, in a folder of its own: the
    launch description is built before any fixture exists."""
    from conftest import save_tiny_checkpoint

    return str(save_tiny_checkpoint(Path(tempfile.mkdtemp(prefix="eacnet_launch_test_")) / "eacnet_erf_tiny.pt",
                                    "eacnet_erf"))


@pytest.mark.launch_test
def generate_test_description():
    # backend and threads: no start-up benchmark of the CPU backends, no thread contention on CI
    arguments = {"backbone": "erfnet", "attention": "eac", "device": "cpu", "backend": "torch", "threads": "1",
                 "weights": _tiny_checkpoint(), "namespace": NAMESPACE, "image_topic": IMAGE_TOPIC, "rviz": "false"}
    segment = IncludeLaunchDescription(PythonLaunchDescriptionSource(_launch_file()),
                                       launch_arguments=arguments.items())
    return LaunchDescription([segment, launch_testing.actions.ReadyToTest()]), {}


def _image(sec: int, encoding: str = "bgr8") -> Image:
    header = Header(frame_id="launch_test_cam")
    header.stamp.sec, header.stamp.nanosec = sec, 4242
    pixels = np.random.default_rng(sec).integers(0, 256, (H, W, 3), dtype=np.uint8)
    msg = codec.array_to_image(Image, header, pixels, "bgr8")
    msg.encoding = encoding
    return msg


class TestSegmentNode(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        rclpy.init()
        cls.node = rclpy.create_node("eacnet_launch_tester")
        reliable = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)
        cls.camera = cls.node.create_publisher(Image, IMAGE_TOPIC, reliable)
        cls.received = {"mask": [], "overlay": []}
        cls.subscriptions = [cls.node.create_subscription(Image, f"/{NAMESPACE}/{topic}", cls.received[topic].append,
                                                          reliable) for topic in cls.received]
        cls.next_sec = 1000

    @classmethod
    def tearDownClass(cls):
        cls.node.destroy_node()
        rclpy.shutdown()

    def _send_until(self, condition, make_msg, timeout: float) -> bool:
        """Publish ``make_msg()`` every half second and spin until ``condition()``."""
        deadline, last = time.monotonic() + timeout, 0.0
        while time.monotonic() < deadline:
            if time.monotonic() - last > 0.5:
                self.camera.publish(make_msg())
                last = time.monotonic()
            rclpy.spin_once(self.node, timeout_sec=0.05)
            if condition():
                return True
        return False

    def _frame_round_trip(self, timeout: float = STARTUP_TIMEOUT_S) -> tuple[Image, Image, Image]:
        """Send one stamp repeatedly until its mask and overlay come back."""
        type(self).next_sec += 1
        sent = _image(self.next_sec)

        def outputs():
            return [next((m for m in self.received[t] if m.header.stamp.sec == sent.header.stamp.sec), None)
                    for t in ("mask", "overlay")]

        self.assertTrue(self._send_until(lambda: all(outputs()), lambda: sent, timeout),
                        "no mask/overlay for a published image")
        mask, overlay = outputs()
        return sent, mask, overlay

    def test_mask_and_overlay_have_the_input_size_encoding_and_header(self):
        sent, mask, overlay = self._frame_round_trip()
        self.assertEqual((mask.encoding, mask.height, mask.width, mask.step), ("mono8", H, W, W))
        self.assertEqual((overlay.encoding, overlay.height, overlay.width, overlay.step), ("bgr8", H, W, 3 * W))
        for out in (mask, overlay):
            self.assertEqual(out.header, sent.header)
        self.assertLess(int(codec.image_to_array(mask).max()), 11)

    def test_bad_frame_is_skipped_and_the_node_keeps_running(self, proc_output):
        self._frame_round_trip()  # the node is up
        for _ in range(5):
            self.camera.publish(_image(1, encoding="bogus8"))
            rclpy.spin_once(self.node, timeout_sec=0.2)
        proc_output.assertWaitFor("unsupported encoding 'bogus8'", timeout=WAIT_S)
        sent, mask, _ = self._frame_round_trip(timeout=WAIT_S)
        self.assertEqual(mask.header, sent.header)

    def test_diagnostics_report_rate_latency_and_device(self):
        statuses = []
        sub = self.node.create_subscription(DiagnosticArray, "/diagnostics",
                                            lambda m: statuses.extend(m.status), 10)
        try:
            self._frame_round_trip()
            ok = self._send_until(lambda: any("segment_node" in s.name for s in statuses),
                                  lambda: _image(1), timeout=WAIT_S)
            self.assertTrue(ok, "no diagnostics from segment_node")
        finally:
            self.node.destroy_subscription(sub)
        status = next(s for s in statuses if "segment_node" in s.name)
        values = {kv.key: kv.value for kv in status.values}
        for key in ("fps", "latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "frames_dropped", "frames_bad"):
            self.assertIn(key, values)
        self.assertEqual((values["device"], values["precision"]), ("cpu", "fp32"))

    def test_label_info_is_latched(self):
        try:
            from vision_msgs.msg import LabelInfo
        except ImportError:
            self.skipTest("vision_msgs is not installed")
        labels = []
        latched = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self._frame_round_trip()  # published at start-up, before this subscriber exists
        sub = self.node.create_subscription(LabelInfo, f"/{NAMESPACE}/label_info", labels.append, latched)
        try:
            deadline = time.monotonic() + WAIT_S
            while not labels and time.monotonic() < deadline:
                rclpy.spin_once(self.node, timeout_sec=0.1)
        finally:
            self.node.destroy_subscription(sub)
        self.assertTrue(labels, "no latched label_info")
        self.assertEqual([c.class_name for c in labels[0].class_map][:2], ["Sky", "Building"])


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):
    def test_node_exits_cleanly(self, proc_info):
        launch_testing.asserts.assertExitCodes(proc_info, allowable_exit_codes=[0])
