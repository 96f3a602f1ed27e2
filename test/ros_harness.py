"""Real ROS 2 in the loop: helpers for tests that run ``segment_node`` on the real middleware.

Imported by ``test_node_real.py`` (the node in this process) and ``test_node_real_process.py``
(the node as ``python -m eacnet_ros.node.main``). Without rclpy the importing test module
is skipped, never reported as passed.

Isolation: on import this sets, for this process and every node process it starts,
``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` (no discovery traffic leaves the machine) and one
random ``ROS_DOMAIN_ID`` in 1..232 for the whole test session (``EACNET_TEST_ROS_DOMAIN_ID``
pins it; the workers of one pytest-xdist run get distinct ones), so concurrent sessions on one
machine do not see each other. It must happen before
the first ``rclpy.init``, which is why it is done at import. ROS log files go to a temporary
folder, not ``~/.ros/log``.

Building blocks:

* ``SpunNode``: a node spun by its own ``SingleThreadedExecutor`` in a thread; ``close()``
  joins the thread, then destroys the node (contexts are shut down only after that).
* ``RosContext``: an ``rclpy.Context`` initialised without signal handlers (pytest keeps its
  Ctrl-C) and shut down after its nodes are gone.
* ``Probe``: a plain node with real publishers/subscriptions, inboxes, discovery waits,
  "resend until the output arrives", /diagnostics, parameter-service and lifecycle-service
  (``change_state``, ``get_state``) helpers.
* ``NodeProcess``: the node as a subprocess with the same environment: stdout/stderr lines,
  waiting for a log line (ROS logs go to stderr), signals at a chosen moment, exit code.
* ``shm_snapshot``/``shm_leftovers``: Fast DDS shared-memory files created and not removed.

With Fast DDS's default settings, nodes in one process exchange messages through its
intra-process path (no shared-memory segment, no fragmentation): what only the wire shows
(large best-effort frames between processes) belongs in the process tests.
"""

from __future__ import annotations

import array
import atexit
import contextlib
import glob
import importlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, TypeVar

import numpy as np
import pytest
from launch_harness import entry_point  # setup.py's console scripts, read in one place

REPO = Path(__file__).resolve().parents[1]

rclpy = pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not installed: real-middleware tests skipped")

# ---------------------------------------------------------------------------- environment (before rclpy.init)

def _session_domain_id() -> int:
    """The pinned domain, else a random one; the workers of one pytest-xdist run (they share
    its run id) take neighbouring domains from one random start, so no two of them meet."""
    if os.environ.get("EACNET_TEST_ROS_DOMAIN_ID"):
        return int(os.environ["EACNET_TEST_ROS_DOMAIN_ID"])
    run_id, worker = os.environ.get("PYTEST_XDIST_TESTRUNUID"), os.environ.get("PYTEST_XDIST_WORKER", "")
    if run_id and worker.startswith("gw") and worker[2:].isdigit():
        return (int(run_id, 16) + int(worker[2:])) % 232 + 1
    return random.SystemRandom().randint(1, 232)


DOMAIN_ID = _session_domain_id()
_LOG_DIR = tempfile.mkdtemp(prefix="eacnet_ros_test_logs_")
atexit.register(shutil.rmtree, _LOG_DIR, True)

_ISOLATION = {
    "ROS_DOMAIN_ID": str(DOMAIN_ID),
    "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
    "ROS_LOG_DIR": _LOG_DIR,
    "RCUTILS_COLORIZED_OUTPUT": "0",
    "RCUTILS_LOGGING_BUFFERED_STREAM": "1",  # line-buffered stderr: log lines arrive as they happen
}
_CONFLICTING = ("ROS_LOCALHOST_ONLY", "ROS_STATIC_PEERS", "ROS_DISCOVERY_SERVER", "ROS_SECURITY_ENABLE")
os.environ.update(_ISOLATION)
for _name in _CONFLICTING:
    os.environ.pop(_name, None)

from builtin_interfaces.msg import Time  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rcl_interfaces.msg import Log  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.parameter_client import AsyncParameterClient  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from rclpy.signals import SignalHandlerOptions  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

#: What camera drivers use: best effort (rclpy's sensor-data profile) and the reliable default.
BEST_EFFORT = qos_profile_sensor_data
RELIABLE = QoSProfile(depth=10)
#: What a careful consumer of the outputs uses (rviz's default is reliable too).
RELIABLE_SUB = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)

#: The cheapest model the node can run: small backbone, no attention, packaged weights.
SMALL_MODEL = {"backbone": "dabnet", "attention": "none", "threads": 1, "backend": "torch", "device": "cpu"}

#: Generous: two CPU cores shared with training runs and other suites. Every wait ends
#: as soon as what it waits for happens, so a long bound costs nothing on success.
DISCOVERY_TIMEOUT_S = 60.0
OUTPUT_TIMEOUT_S = 60.0
#: Diagnostics come once a second: a minute of them missing is a failure, not load.
DIAGNOSTICS_TIMEOUT_S = 60.0
#: A configure loads and warms a model: seconds on a busy 2-core CPU.
LIFECYCLE_TIMEOUT_S = 120.0


def segment_node_module() -> Any:
    """The real eacnet_ros.node.segment_node (test_segment_node.py imports it against a double and
    forgets it again; make sure the one used here is bound to the real rclpy)."""
    module = sys.modules.get("eacnet_ros.node.segment_node")
    if module is None or getattr(module, "rclpy", None) is not rclpy:
        sys.modules.pop("eacnet_ros.node.segment_node", None)
        module = importlib.import_module("eacnet_ros.node.segment_node")
    assert module.rclpy is rclpy
    return module


def ros_env(**extra: str) -> dict[str, str]:
    """The environment for a node process: this one's, with the session's isolation."""
    env = {k: v for k, v in os.environ.items() if k not in _CONFLICTING}
    env.update(_ISOLATION)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def unique_namespace(label: str) -> str:
    """A namespace no other test (or concurrent session) uses: /rt<domain>_<pid>_<label>."""
    return f"/rt{DOMAIN_ID}_{os.getpid()}_{label}"


# ---------------------------------------------------------------------------- waiting

def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll ``condition`` until it returns something truthy (returned) or fail with ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class Inbox:
    """Thread-safe list of received messages (with their monotonic arrival time)."""

    def __init__(self):
        self._cond = threading.Condition()
        self.items: list[tuple[float, Any]] = []

    def __call__(self, msg: Any) -> None:
        with self._cond:
            self.items.append((time.monotonic(), msg))
            self._cond.notify_all()

    @property
    def messages(self) -> list[Any]:
        with self._cond:
            return [m for _, m in self.items]

    def since(self, t0: float) -> list[Any]:
        with self._cond:
            return [m for t, m in self.items if t >= t0]

    def clear(self) -> None:
        with self._cond:
            self.items.clear()

    def find(self, predicate: Callable[[Any], bool], since: float = 0.0) -> Optional[Any]:
        with self._cond:
            for t, m in self.items:
                if t >= since and predicate(m):
                    return m
        return None

    def wait_for(self, predicate: Callable[[Any], bool], timeout: float, since: float = 0.0) -> Optional[Any]:
        """The first message (arrived at or after ``since``) matching, or None on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for t, m in self.items:
                    if t >= since and predicate(m):
                        return m
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(min(remaining, 0.1))


# ---------------------------------------------------------------------------- contexts and spinning

class RosContext:
    """An initialised ``rclpy.Context`` of its own (no signal handlers: pytest keeps Ctrl-C)."""

    def __init__(self):
        self.context = Context()
        rclpy.init(context=self.context, signal_handler_options=SignalHandlerOptions.NO)
        self.nodes: list[SpunNode] = []

    def spin(self, node: Node) -> SpunNode:
        record_shm_mappings()  # the context's participant exists now
        spun = SpunNode(node, self.context)
        self.nodes.append(spun)
        return spun

    def close(self) -> None:
        """Join every executor thread and destroy every node, then shut the context down."""
        record_shm_mappings()
        for spun in reversed(self.nodes):
            spun.close()
        self.nodes.clear()
        self.context.try_shutdown()


class SpunNode:
    """``node`` spun by its own SingleThreadedExecutor in a daemon thread."""

    def __init__(self, node: Node, context: Context):
        self.node = node
        self._stop = threading.Event()
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(node)
        self._thread = threading.Thread(target=self._spin, name=f"spin-{node.get_name()}", daemon=True)
        self._thread.start()
        self._closed = False

    def _spin(self) -> None:
        while not self._stop.is_set() and self.executor.context.ok():
            self.executor.spin_once(timeout_sec=0.05)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), f"executor thread of {self.node.get_name()} did not stop"
        self.executor.remove_node(self.node)
        self.executor.shutdown(timeout_sec=5)
        self.node.destroy_node()


@dataclass
class RunningNode:
    """A node under test in ``namespace``, spun by ``spun``."""

    namespace: str
    node: Any
    spun: SpunNode

    @property
    def fqn(self) -> str:
        return self.node.get_fully_qualified_name()

    def topic(self, name: str) -> str:
        return f"{self.namespace}/{name}"


# ---------------------------------------------------------------------------- messages

_PIXELS: dict[tuple[int, int], array.array] = {}
_STAMPS = iter(range(1000, 10 ** 9))


def noise_bgr(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def header(frame_id: str = "camera_optical") -> Header:
    """A header with a stamp no other frame of this session has (sec counts up, odd nanosec)."""
    sec = next(_STAMPS)
    return Header(stamp=Time(sec=sec, nanosec=(sec * 7919) % 999_999_000 + 1), frame_id=frame_id)


def raw_image(height: int, width: int, frame_id: str = "camera_optical", pixels: Optional[np.ndarray] = None,
              encoding: str = "bgr8") -> Image:
    """A bgr8 Image (noise, cached per size: big frames are cheap to publish again)."""
    if pixels is None:
        data = _PIXELS.get((height, width))
        if data is None:
            data = _PIXELS[(height, width)] = array.array("B", noise_bgr(height, width).tobytes())
    else:
        data = array.array("B", np.ascontiguousarray(pixels).tobytes())
    return Image(header=header(frame_id), height=height, width=width, encoding=encoding, is_bigendian=0,
                 step=width * 3, data=data)


def compressed_image(bgr: np.ndarray, fmt: str = "jpeg", frame_id: str = "camera_optical") -> CompressedImage:
    import cv2

    ok, encoded = cv2.imencode(".jpg" if fmt == "jpeg" else ".png", bgr)
    assert ok
    return CompressedImage(header=header(frame_id), format=fmt, data=array.array("B", encoded.tobytes()))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and an IHDR chunk (valid CRC) claiming ``width`` x ``height`` RGB, then
    a truncated IDAT: a decoder that trusts the header allocates width*height*3 bytes."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (len(payload).to_bytes(4, "big") + kind + payload
                + (zlib.crc32(kind + payload) & 0xFFFFFFFF).to_bytes(4, "big"))

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)


def same_stamp(a: Header, b: Header) -> bool:
    return a.stamp.sec == b.stamp.sec and a.stamp.nanosec == b.stamp.nanosec


def image_array(msg: Image) -> np.ndarray:
    channels = msg.step // msg.width if msg.width else 0
    return np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width, channels)


def frames_through(pub: Any, masks: Inbox, size: tuple[int, int], count: int, period_s: float = 0.2,
                   wait_s: float = 8.0) -> int:
    """Publish ``count`` bgr8 frames of ``size`` (height, width), at most one per ``period_s``
    (5 Hz), each waiting up to ``wait_s`` for its mask; how many got one. A mask must have the
    frame's size and header. Gives up after two misses in a row with none through."""
    got = misses = 0
    for _ in range(count):
        started = time.monotonic()
        msg = raw_image(*size)
        pub.publish(msg)
        out = masks.wait_for(lambda m, s=msg: same_stamp(m.header, s.header), wait_s)
        if out is None:
            misses += 1
            if misses >= 2 and got == 0:
                break
            continue
        assert (out.encoding, out.height, out.width) == ("mono8", *size)
        assert out.header.frame_id == msg.header.frame_id
        got += 1
        time.sleep(max(0.0, period_s - (time.monotonic() - started)))
    return got


class Slowed:
    """A node's segmenter with every forward pass ``pass_s`` slower (a sleep: no CPU), for
    a model slower than a camera on any machine without the cost of a large one."""

    def __init__(self, inner: Any, pass_s: float):
        self._inner = inner
        self.pass_s = pass_s

    def segment(self, bgr: Any) -> Any:
        time.sleep(self.pass_s)
        return self._inner.segment(bgr)

    def segment_batch(self, images: Any) -> Any:
        time.sleep(self.pass_s)
        return self._inner.segment_batch(images)

    def segment_frames(self, images: Any, *args: Any, **kwargs: Any) -> Any:
        """The node's path: one pass per batch of frames (colour and overlay only when wanted)."""
        time.sleep(self.pass_s)
        return self._inner.segment_frames(images, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


# ---------------------------------------------------------------------------- the probe

class Probe:
    """A node of its own (own context unless given one) that talks to the node under test
    through real topics and services only."""

    def __init__(self, name: str = "probe", ros: Optional[RosContext] = None):
        self._own_context = ros is None
        self.ros = ros or RosContext()
        self.node = Node(f"{name}_{os.getpid()}", context=self.ros.context)
        self.diagnostics = Inbox()
        self.rosout = Inbox()
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics, QoSProfile(depth=100))
        # transient_local like rcl's /rosout publishers: start-up lines logged before discovery arrive too
        self.node.create_subscription(Log, "/rosout", self.rosout, QoSProfile(
            depth=1000, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        self.spun = self.ros.spin(self.node)
        self._param_clients: dict[str, AsyncParameterClient] = {}
        self._service_clients: dict[str, Any] = {}

    def close(self) -> None:
        if self._own_context:
            self.ros.close()
        else:
            self.spun.close()

    # ---------------------------------------------------------------- topics
    def publisher(self, msg_type: type, topic: str, qos: QoSProfile = RELIABLE) -> Any:
        return self.node.create_publisher(msg_type, topic, qos)

    def subscribe(self, msg_type: type, topic: str, qos: QoSProfile = RELIABLE_SUB) -> tuple[Any, Inbox]:
        inbox = Inbox()
        return self.node.create_subscription(msg_type, topic, inbox, qos), inbox

    def destroy(self, *entities: Any) -> None:
        for entity in entities:
            if hasattr(entity, "get_subscription_count"):
                self.node.destroy_publisher(entity)
            else:
                self.node.destroy_subscription(entity)

    def wait_matched(self, publisher: Any, subscriptions_of: Iterable[Any] = (),
                     timeout: float = DISCOVERY_TIMEOUT_S) -> None:
        """Until ``publisher`` has matched a subscription and every subscription in
        ``subscriptions_of`` has matched a publisher (both directions of discovery)."""
        wait_until(lambda: publisher.get_subscription_count() > 0, timeout,
                   f"a subscription on {publisher.topic_name} to match")
        for sub in subscriptions_of:
            wait_until(lambda s=sub: self.node.count_publishers(s.topic_name) > 0
                       and (not hasattr(s, "get_publisher_count") or s.get_publisher_count() > 0),
                       timeout, f"a publisher on {sub.topic_name}")

    def wait_for_subscriber(self, topic: str, timeout: float = DISCOVERY_TIMEOUT_S) -> None:
        wait_until(lambda: self.node.count_subscribers(topic) > 0, timeout, f"a subscriber on {topic}")

    def wait_for_publisher(self, topic: str, timeout: float = DISCOVERY_TIMEOUT_S) -> None:
        wait_until(lambda: self.node.count_publishers(topic) > 0, timeout, f"a publisher on {topic}")

    def wait_input_reliability(self, topic: str, node_namespace: str, reliability: Any,
                               timeout: float = DISCOVERY_TIMEOUT_S) -> None:
        """Until the segment_node in ``node_namespace`` has exactly one subscription on
        ``topic``, with ``reliability``: with reliability auto the node re-creates its
        subscription when the publishers change, and a frame sent meanwhile can be lost."""
        def settled() -> bool:
            ours = [i for i in self.node.get_subscriptions_info_by_topic(topic)
                    if i.node_name == "segment_node" and i.node_namespace == node_namespace]
            return len(ours) == 1 and ours[0].qos_profile.reliability == reliability

        wait_until(settled, timeout, f"the subscription on {topic} to be {reliability}")

    def send_until_output(self, publisher: Any, make: Callable[[], Any], inbox: Inbox,
                          timeout: float = OUTPUT_TIMEOUT_S, resend_s: float = 1.0) -> tuple[Any, Any]:
        """Publish ``make()`` every ``resend_s`` until ``inbox`` gets a message with the
        stamp of one of them; (sent, received). For warm-up across discovery races."""
        sent: list[Any] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = make()
            sent.append(msg)
            publisher.publish(msg)
            got = inbox.wait_for(lambda m: any(same_stamp(m.header, s.header) for s in sent),
                                 min(resend_s, max(deadline - time.monotonic(), 0.0)))
            if got is not None:
                (match,) = [s for s in sent if same_stamp(got.header, s.header)]
                return match, got
        raise AssertionError(f"no output on {inbox!r} for {len(sent)} frame(s) sent over {timeout:.0f} s "
                             f"to {publisher.topic_name}")

    # ---------------------------------------------------------------- diagnostics
    def node_diagnostics(self, node_fqn: str, since: float = 0.0) -> list[Any]:
        """DiagnosticStatus entries from ``node_fqn`` (name starts with it), oldest first."""
        return [status for array_msg in self.diagnostics.since(since) for status in array_msg.status
                if status.name.startswith(node_fqn)]

    def wait_diagnostics(self, node_fqn: str, predicate: Callable[[Any], bool] = lambda s: True,
                         timeout: float = DIAGNOSTICS_TIMEOUT_S, since: float = 0.0) -> Any:
        def found():
            return next((s for s in reversed(self.node_diagnostics(node_fqn, since)) if predicate(s)), None)

        return wait_until(found, timeout, f"diagnostics of {node_fqn} matching the condition", interval=0.05)

    # ---------------------------------------------------------------- parameters
    def param_client(self, node_fqn: str) -> AsyncParameterClient:
        client = self._param_clients.get(node_fqn)
        if client is None:
            client = self._param_clients[node_fqn] = AsyncParameterClient(self.node, node_fqn)
            assert client.wait_for_services(timeout_sec=DISCOVERY_TIMEOUT_S), f"parameter services of {node_fqn}"
        return client

    def set_parameters(self, node_fqn: str, **values: Any) -> list[Any]:
        """SetParameters over the real service; the SetParametersResult per parameter."""
        future = self.param_client(node_fqn).set_parameters([Parameter(k, value=v) for k, v in values.items()])
        return list(_result(future).results)

    def get_parameters(self, node_fqn: str, *names: str) -> list[Any]:
        return [_parameter_value(v) for v in _result(self.param_client(node_fqn).get_parameters(list(names))).values]

    def describe_parameters(self, node_fqn: str, *names: str) -> list[Any]:
        return list(_result(self.param_client(node_fqn).describe_parameters(list(names))).descriptors)

    # ---------------------------------------------------------------- lifecycle
    def _service(self, srv_type: type, name: str) -> Any:
        client = self._service_clients.get(name)
        if client is None:
            client = self._service_clients[name] = self.node.create_client(srv_type, name)
            assert client.wait_for_service(timeout_sec=DISCOVERY_TIMEOUT_S), f"no service {name}"
        return client

    def change_state(self, node_fqn: str, transition: str, timeout: float = LIFECYCLE_TIMEOUT_S) -> bool:
        """A lifecycle transition by label ('configure', 'activate', ...) through the node's
        real ``change_state`` service; its ``success``."""
        from lifecycle_msgs.srv import ChangeState

        request = ChangeState.Request()
        request.transition.label = transition
        return _result(self._service(ChangeState, f"{node_fqn}/change_state").call_async(request), timeout).success

    def lifecycle_state(self, node_fqn: str) -> str:
        """The node's state label through its real ``get_state`` service."""
        from lifecycle_msgs.srv import GetState

        return _result(self._service(GetState, f"{node_fqn}/get_state").call_async(GetState.Request())
                       ).current_state.label


class Session:
    """What the real-ROS test modules share: the nodes under test in one context, spun in
    threads, and a probe in a context of its own. Use it through ``closed_without_leftovers``
    so a module's nodes are gone, and their shared-memory files with them, when it ends."""

    def __init__(self, probe_name: str = "probe"):
        self.module = segment_node_module()
        self.nodes = RosContext()
        self.probe = Probe(probe_name)

    def start(self, label: str, **params: Any) -> RunningNode:
        """A SegmentNode in a namespace of its own, with SMALL_MODEL and ``params``."""
        namespace = unique_namespace(label)
        overrides = [Parameter(name, value=value) for name, value in {**SMALL_MODEL, **params}.items()]
        node = self.module.SegmentNode(context=self.nodes.context, namespace=namespace, parameter_overrides=overrides)
        return RunningNode(namespace, node, self.nodes.spin(node))

    @contextlib.contextmanager
    def node(self, label: str, **params: Any) -> Iterator[RunningNode]:
        """``start``, closed again when the block ends."""
        running = self.start(label, **params)
        try:
            yield running
        finally:
            running.spun.close()
            self.nodes.nodes.remove(running.spun)

    def close(self) -> None:
        self.probe.close()
        self.nodes.close()


@contextlib.contextmanager
def endpoints(probe: Probe, *entities: Any) -> Iterator[None]:
    """The probe's publishers/subscriptions ``entities``, destroyed when the block ends."""
    try:
        yield
    finally:
        probe.destroy(*entities)


def _result(future: Any, timeout: float = DISCOVERY_TIMEOUT_S) -> Any:
    wait_until(future.done, timeout, "a parameter service response")
    return future.result()


def _parameter_value(value: Any) -> Any:
    from rclpy.parameter import parameter_value_to_python

    return parameter_value_to_python(value)


def level(status: Any) -> int:
    """DiagnosticStatus.level as an int (rclpy gives the byte field as bytes)."""
    value = status.level
    return value[0] if isinstance(value, (bytes, bytearray)) else int(value)


def diag_values(status: Any) -> dict[str, str]:
    return {kv.key: kv.value for kv in status.values}


# ---------------------------------------------------------------------------- the node as a subprocess

def node_command(script: str = "segment_node") -> list[str]:
    """How ``ros2 run eacnet_ros segment_node`` starts the node: the console script. The
    installed wrapper is used when it calls what setup.py declares; otherwise (a stale
    editable install) the declared ``module:function`` is called the way the wrapper would."""
    module, function = entry_point(script)
    wrapper = Path(sys.executable).parent / script
    if wrapper.is_file() and f"from {module} import {function}" in wrapper.read_text(errors="replace"):
        return [str(wrapper)]
    return [sys.executable, "-c", f"import sys; from {module} import {function}; sys.exit({function}())"]


@dataclass
class ProcessResult:
    code: Optional[int]
    stdout: str
    stderr: str
    timed_out: bool = False

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("[eacnet] error:")]

    def explain(self) -> str:
        return f"exit code {self.code}{' (timed out)' if self.timed_out else ''}\n--- stderr:\n{self.stderr[-6000:]}" \
               f"\n--- stdout:\n{self.stdout[-2000:]}"


@dataclass
class NodeProcess:
    """The node's console script (``node_command``; or ``command``, e.g.
    ``[sys.executable, "-m", "eacnet_ros.node.main"]``) with ``--ros-args ARGS`` and the
    session's ROS environment.

    stdout and stderr are read line by line in threads; ``wait_for_stderr`` waits for a log
    line; ``send`` delivers a signal to this process only; ``finish`` waits for the exit
    (killing it after the timeout) and returns a ProcessResult. Use as a context manager so
    a failing test never leaves the process behind."""

    ros_args: Sequence[str]
    command: Optional[Sequence[str]] = None
    env: dict[str, str] = field(default_factory=ros_env)
    proc: subprocess.Popen = field(init=False)

    def __post_init__(self):
        command = list(self.command or node_command())
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(command + ["--ros-args", *self.ros_args], cwd=REPO, env=self.env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, errors="replace", start_new_session=True)
        self._cond = threading.Condition()
        self._out: list[str] = []
        self._err: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(stream, lines), daemon=True)
                         for stream, lines in ((self.proc.stdout, self._out), (self.proc.stderr, self._err))]
        for reader in self._readers:
            reader.start()
        self._watcher = threading.Thread(target=self._watch_shm, daemon=True)
        self._watcher.start()

    def _watch_shm(self) -> None:
        """Record the Fast DDS files the node maps, so leftovers can be told from other sessions'."""
        while self.proc.poll() is None:
            record_shm_mappings(self.proc.pid)
            time.sleep(0.2)

    def _read(self, stream: Any, lines: list[str]) -> None:
        for line in stream:
            with self._cond:
                lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def stderr(self) -> str:
        with self._cond:
            return "".join(self._err)

    def wait_for_stderr(self, text: str, timeout: float = 120.0) -> bool:
        """True once a stderr line contains ``text``; False if the process ended or timed out first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if any(text in line for line in self._err):
                    return True
                if self.proc.poll() is not None and not any(r.is_alive() for r in self._readers[1:]):
                    return False
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.1))

    def send(self, sig: int) -> None:
        if self.proc.poll() is None:
            record_shm_mappings(self.proc.pid)
            self.proc.send_signal(sig)

    def running(self) -> bool:
        return self.proc.poll() is None

    def finish(self, timeout: float = 60.0) -> ProcessResult:
        timed_out = False
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            self.proc.kill()
            self.proc.wait(timeout=30)
        for reader in self._readers:
            reader.join(timeout=10)
        with self._cond:
            return ProcessResult(self.proc.returncode, "".join(self._out), "".join(self._err), timed_out)

    def __enter__(self) -> NodeProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.finish(timeout=30)


def run_node(ros_args: Sequence[str], timeout: float = 120.0, stop_when_ready: bool = True) -> ProcessResult:
    """Run the node to its exit. A node that starts after all (``listening on``) when a test
    expects it not to is stopped with SIGINT, and the result says so through its exit code."""
    with NodeProcess(ros_args) as process:
        if stop_when_ready and process.wait_for_stderr("listening on ", timeout):
            process.send(signal.SIGINT)
        return process.finish(timeout=timeout)


def ros_args_for(namespace: str, params: dict[str, Any]) -> list[str]:
    args = ["-r", f"__ns:={namespace}"]
    for name, value in params.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        args += ["-p", f"{name}:={text}"]
    return args


# ---------------------------------------------------------------------------- Fast DDS shared memory
#
# Fast DDS keeps its shared-memory transport in /dev/shm: a segment per participant
# (fastdds_<16 hex>, plus <name>_el) and a port per locator (fastdds_port<N>, <name>_el and
# sem.fastdds_port<N>_mutex); Fast DDS 2 spelled them fastrtps_*, data sharing adds
# fast_datasharing*. Other sessions on this machine use the same folder at the same time, so
# a file counts as this session's only when one of its processes mapped it (segments) or its
# port belongs to this session's domain (7400 + 250 * domain and the 250 ports after it);
# ports outside that range (7000-7010 and the like) are shared by every domain and are never
# blamed on, or removed by, these tests.

SHM_PATTERNS = ("fastrtps_*", "fastdds_*", "fast_datasharing*", "sem.fastrtps_*", "sem.fastdds_*",
                "sem.fast_datasharing*")
_PORT_FILE = re.compile(r"/dev/shm/(?:sem\.)?fast(?:dds|rtps)_port(\d+)(?:_el|_mutex)?$")
_DOMAIN_PORTS = range(7400 + 250 * DOMAIN_ID, 7400 + 250 * (DOMAIN_ID + 1))
_MAPPED_BY_TESTS: set[str] = set()
_MAPPED_LOCK = threading.Lock()


def shm_snapshot() -> set[str]:
    return {path for pattern in SHM_PATTERNS for path in glob.glob(os.path.join("/dev/shm", pattern))}


def record_shm_mappings(pid: Optional[int] = None) -> None:
    """Remember the Fast DDS files process ``pid`` (this one by default) maps right now: they
    are this session's. Called while the test nodes run, before they are shut down."""
    try:
        with open(f"/proc/{pid or os.getpid()}/maps") as handle:
            paths = {line.split(None, 5)[-1].strip() for line in handle if "/dev/shm/fast" in line}
    except OSError:
        return
    with _MAPPED_LOCK:
        _MAPPED_BY_TESTS.update(paths)


def _ours(path: str) -> bool:
    port = _PORT_FILE.match(path)
    if port:
        return int(port.group(1)) in _DOMAIN_PORTS
    base = path.replace("/dev/shm/sem.", "/dev/shm/")
    for suffix in ("_el", "_mutex"):
        base = base[: -len(suffix)] if base.endswith(suffix) else base
    with _MAPPED_LOCK:
        return base in _MAPPED_BY_TESTS


def _shm_in_use() -> set[str]:
    """/dev/shm files another live process maps or holds open. This process's own are not
    excused: its contexts are shut down when this is asked."""
    used: set[str] = set()
    own = f"/proc/{os.getpid()}/"
    for maps in glob.glob("/proc/[0-9]*/maps"):
        if maps.startswith(own):
            continue
        try:
            with open(maps) as handle:
                used.update(line.split(None, 5)[-1].strip() for line in handle if "/dev/shm/" in line)
        except OSError:
            continue
    for fd in glob.glob("/proc/[0-9]*/fd/*"):
        if fd.startswith(own):
            continue
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("/dev/shm/"):
            used.add(target)
    return used


def shm_leftovers(before: set[str], remove: bool = True) -> list[str]:
    """This session's Fast DDS files that appeared since ``before`` and that no live process
    uses any more: left behind by the nodes of these tests. Removed (``remove``), so one
    failure does not leak into the next run; nothing else is ever touched."""
    used = _shm_in_use()
    left = []
    for path in sorted(shm_snapshot() - before):
        if not _ours(path):
            continue
        port = _PORT_FILE.match(path)
        related = {path, path.replace("/dev/shm/sem.", "/dev/shm/").removesuffix("_mutex").removesuffix("_el")}
        if port:
            related.add(f"/dev/shm/fastdds_port{port.group(1)}")
        if not related & used:
            left.append(path)
    if remove:
        for path in left:
            try:
                os.remove(path)
            except OSError:
                pass
    return left



@contextlib.contextmanager
def no_shm_leftovers() -> Iterator[None]:
    """Around a fixture's whole life: Fast DDS files its processes leave behind fail the
    test session (and are removed)."""
    before = shm_snapshot()
    yield
    left = shm_leftovers(before)
    assert not left, f"Fast DDS shared-memory files left behind (now removed): {left}"


T = TypeVar("T")


@contextlib.contextmanager
def closed_without_leftovers(factory: Callable[[], T]) -> Iterator[T]:
    """A module fixture's session object (``factory()``, something with ``close()``), closed
    at the end and checked for Fast DDS shared-memory leftovers (``no_shm_leftovers``)."""
    with no_shm_leftovers():
        created = factory()
        try:
            yield created
        finally:
            created.close()
