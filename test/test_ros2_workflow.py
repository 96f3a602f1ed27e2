"""The ROS user's own workflow, for real: ``colcon build`` of the package in a temporary
workspace, ``source install/setup.bash``, then the ``ros2`` command line against the launched
node: ``ros2 launch`` (with arguments and a params file), ``ros2 node info``, ``ros2 param
dump/get/set/describe``, ``ros2 topic hz`` and ``echo --once`` on the outputs of frames a test
publisher sends, ``ros2 lifecycle set`` through every transition, the launch's exit status
(non-zero when the node cannot start; 0 and nothing left behind on SIGINT). docs/ROS.md gives
users exactly these commands.

colcon comes from the package index (the test extra), the ``ros2`` command line from the
sources in ``../shared/ros2cli`` (``scripts/setup.sh`` installs it); without those sources the
module is skipped. Isolation as everywhere (ros_harness): LOCALHOST discovery and a random
domain; the ``ros2`` daemon that the commands start is stopped at the end.

Speed: one build, one plain and one managed launch shared by the checks, the smallest model
(dabnet without attention, torch, one thread) at a 48x32 inference size. A ``ros2`` command
spends most of its second or two waiting (discovery, the node's answer), so commands that do
not depend on one another run at once (``together``); between lifecycle transitions the
probe reads the state through the node's ``get_state`` service, and ``ros2 lifecycle get``
reads it where the state is first, last and active.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional, TypeVar

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ROS2CLI_SOURCES = (REPO / os.environ.get("EACNET_ROS2CLI_SRC", "../shared/ros2cli")).resolve()
pytestmark = pytest.mark.skipif(not (ROS2CLI_SOURCES / "install.sh").is_file(),
                                reason=f"no ros2cli sources at {ROS2CLI_SOURCES} (the ros2 command line has no wheel)")

import ros_harness as h  # noqa: E402  (skips without rclpy; sets the session's ROS isolation)

from eacnet_ros.node.params import PARAMETERS  # noqa: E402

#: What `colcon build` needs of the repository: the package's declared contents only.
PACKAGE_CONTENTS = ("package.xml", "setup.py", "setup.cfg", "resource", "launch", "config", "eacnet_core",
                    "eacnet_ros")
#: The cheapest model, given through a params file (the launch's params_file argument).
SMALL_MODEL = {"attention": "none", "backend": "torch", "device": "cpu", "threads": 1, "inference_height": 32,
               "inference_width": 48}
BIN = Path(sys.executable).parent
START_TIMEOUT_S = 120.0
COMMAND_TIMEOUT_S = 60.0


# ---------------------------------------------------------------------------- the workspace

@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A colcon workspace with this checkout as its one package, built."""
    for tool in ("colcon", "ros2"):
        if not (BIN / tool).is_file():
            pytest.fail(f"{tool} is not installed in {BIN}: run scripts/setup.sh (colcon comes with the test "
                        f"extra, ros2 from {ROS2CLI_SOURCES})")
    ws = tmp_path_factory.mktemp("ws")
    source = ws / "src" / "eacnet_ros"
    source.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    for name in PACKAGE_CONTENTS:
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy2)(REPO / name, source / name,
                                                                       **({"ignore": ignore} if (REPO / name).is_dir()
                                                                          else {}))
    build = subprocess.run([str(BIN / "colcon"), "build", "--packages-select", "eacnet_ros"], cwd=ws,
                           env={**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"},
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    assert "Summary: 1 package finished" in build.stdout
    return ws


@pytest.fixture(scope="module")
def sourced(workspace) -> Iterator[dict[str, str]]:
    """The environment after ``source install/setup.bash``, with the session's isolation;
    ``ros2 daemon stop`` when the module ends."""
    dump = subprocess.run(["bash", "-c", "source install/setup.bash && env -0"], cwd=workspace,
                          env={**h.ros_env(), "PATH": f"{BIN}:{os.environ.get('PATH', '')}"},
                          capture_output=True, timeout=60, check=True)
    env = dict(item.split("=", 1) for item in dump.stdout.decode().split("\0") if "=" in item)
    site = next((workspace / "install" / "eacnet_ros" / "lib").glob("python3*/site-packages"))
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(site), "the built package comes first"
    assert str(workspace / "install" / "eacnet_ros") in env["AMENT_PREFIX_PATH"].split(os.pathsep)
    try:
        yield env
    finally:
        subprocess.run([str(BIN / "ros2"), "daemon", "stop"], env=env, capture_output=True, timeout=60)


def ros2(env: dict[str, str], *args: str, timeout: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ros2"), *args], env=env, capture_output=True, text=True, timeout=timeout)


T = TypeVar("T")


def together(*commands: Callable[[], T]) -> list[T]:
    """Run commands that do not depend on one another at once; their results in order."""
    with ThreadPoolExecutor(max_workers=len(commands)) as pool:
        return [future.result() for future in [pool.submit(command) for command in commands]]


def until(run: Callable[[], subprocess.CompletedProcess], ok: Callable[[subprocess.CompletedProcess], bool],
          timeout: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess:
    """Repeat a command until ``ok`` (discovery takes a moment); the last result either way."""
    deadline = time.monotonic() + timeout
    while True:
        result = run()
        if ok(result) or time.monotonic() > deadline:
            return result
        time.sleep(1.0)


# ---------------------------------------------------------------------------- launches

class Launch:
    """``ros2 launch -n eacnet_ros segment.launch.py ARGS`` in its own process group; output
    collected line by line. ``stop`` sends SIGINT to the group, as Ctrl-C in a terminal does."""

    def __init__(self, env: dict[str, str], args: Sequence[str]):
        self.process = subprocess.Popen([str(BIN / "ros2"), "launch", "-n", "eacnet_ros", "segment.launch.py", *args],
                                        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        start_new_session=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = START_TIMEOUT_S) -> None:
        h.wait_until(lambda: text in self.output or self.process.poll() is not None, timeout, repr(text))
        assert text in self.output, self.output[-4000:]

    def stop(self, timeout: float = 60.0) -> Optional[int]:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
        try:
            return self.process.wait(timeout)
        finally:
            self._reader.join(5.0)

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10.0)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def params_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("params") / "small.yaml"
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": SMALL_MODEL}}))
    return path


@pytest.fixture(scope="module")
def plain(sourced, params_file) -> Iterator[tuple[Launch, str]]:
    """The plain node: params file, backbone and namespace arguments, raw transport."""
    namespace = h.unique_namespace("wf_plain").strip("/")
    launch = Launch(sourced, [f"params_file:={params_file}", "backbone:=dabnet", f"namespace:={namespace}",
                              f"image_topic:=/{namespace}/camera", "transport:=raw"])
    try:
        launch.wait_for("listening on ")
        yield launch, f"/{namespace}/segment_node"
    finally:
        launch.kill()


@pytest.fixture(scope="module")
def managed(sourced, params_file) -> Iterator[tuple[Launch, str]]:
    """The managed node, unconfigured: compressed transport."""
    namespace = h.unique_namespace("wf_managed").strip("/")
    launch = Launch(sourced, [f"params_file:={params_file}", "backbone:=dabnet", f"namespace:={namespace}",
                              f"image_topic:=/{namespace}/camera", "transport:=compressed", "managed:=true",
                              "autostart:=false"])
    try:
        launch.wait_for("unconfigured: configure loads the model")
        yield launch, f"/{namespace}/segment_node"
    finally:
        launch.kill()


@pytest.fixture(scope="module")
def probe() -> Iterator[h.Probe]:
    probe = h.Probe("workflow_probe")
    try:
        yield probe
    finally:
        probe.close()


class Frames:
    """A test publisher sending frames at ~5 Hz in a thread while the block runs."""

    def __init__(self, probe: h.Probe, topic: str, compressed: bool = False):
        self.publisher = probe.publisher(h.CompressedImage if compressed else h.Image, topic)
        self.compressed = compressed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        bgr = np.random.default_rng(0).integers(0, 256, (36, 48, 3), dtype=np.uint8)
        msg = h.compressed_image(bgr) if self.compressed else h.raw_image(36, 48, pixels=bgr)
        while not self._stop.wait(0.2):
            self.publisher.publish(msg)

    def __enter__(self) -> Frames:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5.0)


# ---------------------------------------------------------------------------- the plain node

def test_ros2_node_info_shows_the_nodes_topics(sourced, plain):
    _, node = plain
    namespace = node.rsplit("/", 1)[0]
    info = until(lambda: ros2(sourced, "node", "info", node, "--spin-time", "3"),
                 lambda r: f"{namespace}/mask" in r.stdout)
    assert info.returncode == 0, info.stderr
    for line in (f"{namespace}/camera: sensor_msgs/msg/Image", f"{namespace}/mask: sensor_msgs/msg/Image",
                 f"{namespace}/overlay: sensor_msgs/msg/Image", "/diagnostics: diagnostic_msgs/msg/DiagnosticArray",
                 f"{node}/set_parameters: rcl_interfaces/srv/SetParameters"):
        assert line in info.stdout, info.stdout


def _expected_parameters(**changes) -> dict:
    values = {spec.name: spec.default for spec in PARAMETERS}
    values.update(SMALL_MODEL, backbone="dabnet", **changes)
    return values


def test_ros2_param_dump_holds_every_parameter_with_its_value(sourced, plain):
    _, node = plain
    dump, cameras = together(lambda: until(lambda: ros2(sourced, "param", "dump", node), lambda r: r.returncode == 0),
                             lambda: until(lambda: ros2(sourced, "param", "get", node, "cameras"),
                                           lambda r: r.returncode == 0))
    assert dump.returncode == 0, dump.stderr
    values = yaml.safe_load(dump.stdout)[node]["ros__parameters"]
    expected = _expected_parameters()
    assert {k: values[k] for k in expected} == expected
    assert values["use_sim_time"] is False
    assert cameras.returncode == 0 and "String values are: []" in cameras.stdout, cameras.stdout + cameras.stderr


def test_ros2_param_set_is_accepted_and_refused_with_the_reason(sourced, plain):
    _, node = plain
    accepted = ros2(sourced, "param", "set", node, "overlay_alpha", "0.25")
    assert accepted.returncode == 0 and "Set parameter successful" in accepted.stdout, accepted.stdout
    as_integer = ros2(sourced, "param", "set", node, "overlay_alpha", "1")  # users type 1
    assert "Set parameter successful" in as_integer.stdout, as_integer.stdout + as_integer.stderr
    # the refused sets change nothing: they, the read-back and describe go at once
    got, out_of_range, read_only, described = together(
        lambda: ros2(sourced, "param", "get", node, "overlay_alpha"),
        lambda: ros2(sourced, "param", "set", node, "overlay_alpha", "1.5"),
        lambda: ros2(sourced, "param", "set", node, "threads", "2"),
        lambda: ros2(sourced, "param", "describe", node, "overlay_alpha", "threads"))
    assert "Double value is: 1.0" in got.stdout, got.stdout + got.stderr
    assert "Setting parameter failed" in out_of_range.stderr, out_of_range.stdout + out_of_range.stderr
    assert "Setting parameter failed" in read_only.stderr and "read-only" in read_only.stderr, read_only.stderr
    assert "Min value: 0.0" in described.stdout and "Max value: 1.0" in described.stdout, described.stdout
    assert "Read only: true" in described.stdout.split("Parameter name: threads")[1]


def test_ros2_topic_hz_and_echo_see_the_outputs(sourced, plain, probe):
    _, node = plain
    namespace = node.rsplit("/", 1)[0]
    with Frames(probe, f"{namespace}/camera"):
        # hz listens while echo waits for its one message
        hz = subprocess.Popen([str(BIN / "ros2"), "topic", "hz", f"{namespace}/mask", "--window", "5"], env=sourced,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            lines: list[str] = []
            reader = threading.Thread(target=lambda: lines.extend(iter(hz.stdout.readline, "")), daemon=True)
            reader.start()
            echo = until(lambda: ros2(sourced, "topic", "echo", "--once", "--no-arr", f"{namespace}/mask",
                                      timeout=30), lambda r: "height: 36" in r.stdout)
            assert "height: 36" in echo.stdout and "width: 48" in echo.stdout and "encoding: mono8" in echo.stdout, \
                echo.stdout + echo.stderr
            h.wait_until(lambda: any("average rate:" in line for line in lines), 45.0, "a rate from ros2 topic hz")
        finally:
            os.killpg(hz.pid, signal.SIGINT)
            hz.wait(20)
    rate = float(next(line for line in lines if "average rate:" in line).split(":")[1])
    assert 0.5 < rate < 20.0, lines  # frames go out at ~5 Hz


def test_sigint_ends_the_launch_cleanly_with_nothing_left(plain):
    launch, _ = plain
    pgid = launch.process.pid
    assert launch.stop() == 0, launch.output[-4000:]
    assert "process has finished cleanly" in launch.output, launch.output[-4000:]
    h.wait_until(lambda: not _group_alive(pgid), 10.0, "every process of the launch to end")


# ---------------------------------------------------------------------------- the managed node

def _lifecycle(env: dict[str, str], node: str, transition: str) -> subprocess.CompletedProcess:
    return until(lambda: ros2(env, "lifecycle", "set", node, transition, timeout=START_TIMEOUT_S),
                 lambda r: "Transitioning successful" in r.stdout or "Transitioning failed" in r.stderr)


def test_ros2_param_dump_of_the_managed_node_holds_every_parameter(sourced, managed):
    _, node = managed
    dump = until(lambda: ros2(sourced, "param", "dump", node), lambda r: r.returncode == 0)
    assert yaml.safe_load(dump.stdout)[node]["ros__parameters"]["cameras"] == [], dump.stdout + dump.stderr
    expected = _expected_parameters(transport="compressed")
    values = yaml.safe_load(dump.stdout)[node]["ros__parameters"]
    assert {k: values[k] for k in expected} == expected


def test_ros2_lifecycle_set_through_every_transition(sourced, managed, probe):
    launch, node = managed
    namespace = node.rsplit("/", 1)[0]
    # until the command has discovered the node (a first command may not have yet)
    get = lambda: until(lambda: ros2(sourced, "lifecycle", "get", node), lambda r: r.stdout.strip()).stdout  # noqa: E731
    # start-up parameters change while unconfigured
    state, accepted = together(get, lambda: ros2(sourced, "param", "set", node, "threads", "2"))
    assert state.startswith("unconfigured"), state
    assert "Set parameter successful" in accepted.stdout, accepted.stdout + accepted.stderr
    for transition, state in (("configure", "inactive"), ("activate", "active")):
        result = _lifecycle(sourced, node, transition)
        assert "Transitioning successful" in result.stdout, result.stdout + result.stderr + launch.output[-3000:]
        assert probe.lifecycle_state(node) == state
    with Frames(probe, f"{namespace}/camera/compressed", compressed=True):
        state, after, echo = together(
            get, lambda: ros2(sourced, "param", "set", node, "threads", "1"),
            lambda: until(lambda: ros2(sourced, "topic", "echo", "--once", "--no-arr", f"{namespace}/mask", timeout=30),
                          lambda r: "height: 36" in r.stdout))
    assert state.startswith("active"), state
    assert "Setting parameter failed" in after.stderr and "unconfigured" in after.stderr, after.stdout + after.stderr
    assert "height: 36" in echo.stdout, echo.stdout + echo.stderr
    for transition, state in (("deactivate", "inactive"), ("cleanup", "unconfigured"), ("shutdown", "finalized")):
        result = _lifecycle(sourced, node, transition)
        assert "Transitioning successful" in result.stdout, result.stdout + result.stderr
        if state != "finalized":
            assert probe.lifecycle_state(node) == state
    assert get().startswith("finalized")
    assert launch.stop() == 0, launch.output[-4000:]


# ---------------------------------------------------------------------------- failures

@pytest.mark.parametrize("arguments, words", [
    (["backbone:=foo"], "backbone='foo' must be one of: erfnet, dabnet"),
    (["managed:=maybe"], "managed:='maybe': expected true or false"),
])
def test_the_launch_exits_non_zero_naming_what_was_wrong(sourced, params_file, arguments, words):
    launch = Launch(sourced, [f"params_file:={params_file}", f"namespace:={h.unique_namespace('wf_bad').strip('/')}",
                              *arguments])
    try:
        code = launch.process.wait(START_TIMEOUT_S)
    finally:
        launch.kill()
        launch._reader.join(5.0)
    assert code != 0, launch.output[-4000:]
    assert words in launch.output, launch.output[-4000:]
