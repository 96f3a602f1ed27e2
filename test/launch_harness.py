"""Run launch/segment.launch.py for real (launch, launch_ros, rclpy, Fast DDS) inside pytest.

Why the shape below:

* ``LaunchService`` installs its SIGINT/SIGTERM handling in the main thread only, so it runs
  in pytest's main thread and the test's own ROS node (the probe) runs in a second thread,
  with its own ``rclpy.Context`` so it shares nothing with launch_ros' node in this process.
* A launch costs a model load per node (seconds on a busy 2-core CPU), so a test module
  starts one launch (several nodes, each include in its own scoped group so its arguments
  do not leak into the next) and its tests check what the probe recorded.
* ``launch_ros`` finds ``segment_node`` through the ament index, as ``ros2 launch`` does on
  an installed workspace; ``install_prefix`` lays out that index in a temporary folder.
* Every ROS participant gets a random ``ROS_DOMAIN_ID`` and discovery limited to this
  machine, so parallel runs do not see each other and no traffic leaves the machine.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "eacnet_ros"
#: Where scripts/setup.sh installs launch and launch_ros from (they have no wheels).
ROS_LAUNCH_SOURCES = (REPO / os.environ.get("EACNET_ROS_LAUNCH_SRC", "../shared/ros-launch")).resolve()
#: The console scripts the launch file runs (managed:=true: the lifecycle node).
NODE_SCRIPTS = ("segment_node", "segment_lifecycle_node")
#: Shutdown at the latest after this, even if a probe hangs, so a test run always ends.
DEFAULT_TIMEOUT_S = 300.0
#: Variables that could widen discovery beyond this machine or pick another middleware; unset
#: for the launch (the ros extra installs Fast DDS only).
UNSET_VARIABLES = ("ROS_STATIC_PEERS", "ROS_LOCALHOST_ONLY", "ROS_DISCOVERY_SERVER", "FASTRTPS_DEFAULT_PROFILES_FILE",
                   "FASTDDS_DEFAULT_PROFILES_FILE", "RMW_IMPLEMENTATION")


def skip_reason() -> Optional[str]:
    """Why a real launch cannot run here, or None when it can. An import, not a look-up: a
    launch_ros that is there but cannot load (no rclpy, a missing message package) cannot
    launch anything either."""
    try:
        import launch_ros.actions  # noqa: F401  (imports launch and rclpy as well)
    except ImportError as exc:
        where = (f"scripts/setup.sh installs launch and launch_ros from {ROS_LAUNCH_SOURCES}"
                 if (ROS_LAUNCH_SOURCES / "install.sh").is_file()
                 else f"no ROS 2 installation, and no launch sources at {ROS_LAUNCH_SOURCES}")
        return f"real launch tests need launch_ros, which cannot be imported ({exc}); {where}"
    return None


def ros_environment() -> dict[str, str]:
    """Variables for every ROS participant of one launch: isolated, and local only."""
    return {"ROS_DOMAIN_ID": str(random.SystemRandom().randint(1, 232)), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
            "RCUTILS_COLORIZED_OUTPUT": "0"}


def entry_point(script: str = "segment_node") -> tuple[str, str]:
    """(module, function) of a console script, read from setup.py: the executable in the
    prefix must run what ``colcon build`` would install, even before ``pip install -e`` is
    rerun to refresh the installed metadata."""
    match = re.search(rf'"{script}\s*=\s*([\w.]+):(\w+)"', (REPO / "setup.py").read_text())
    if not match:
        raise LookupError(f"setup.py declares no console script {script!r}")
    return match.group(1), match.group(2)


def install_prefix(root: Path) -> Path:
    """A minimal ament install prefix of this checkout: package marker, share files and
    ``lib/eacnet_ros/<each of NODE_SCRIPTS>``; put it on AMENT_PREFIX_PATH. The executables
    run this checkout's code with this interpreter, whatever else is installed."""
    share = root / "share" / PACKAGE
    marker = root / "share" / "ament_index" / "resource_index" / "packages" / PACKAGE
    for folder in (share / "launch", share / "config", marker.parent, root / "lib" / PACKAGE):
        folder.mkdir(parents=True, exist_ok=True)
    marker.write_text("")
    shutil.copy2(REPO / "package.xml", share / "package.xml")
    shutil.copy2(REPO / "launch" / "segment.launch.py", share / "launch" / "segment.launch.py")
    for config in (REPO / "config").iterdir():
        shutil.copy2(config, share / "config" / config.name)
    for script in NODE_SCRIPTS:
        module, function = entry_point(script)
        executable = root / "lib" / PACKAGE / script
        executable.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(REPO)!r})\n"
                              f"from {module} import {function}\nsys.exit({function}())\n")
        executable.chmod(0o755)
    return root


def launch_file(prefix: Path) -> Path:
    return prefix / "share" / PACKAGE / "launch" / "segment.launch.py"


@dataclass
class LaunchRun:
    """What one launch left behind: the probe's findings, how each process ended, its output."""

    results: dict[str, Any] = field(default_factory=dict)
    error: Optional[BaseException] = None
    return_code: Optional[int] = None
    exits: list[tuple[str, int]] = field(default_factory=list)  # (process command line, exit code)
    output: list[str] = field(default_factory=list)

    def get(self, key: str) -> Any:
        """A probe result; a missing or failed one fails the test with the probe's error and
        the processes' last output, which is what explains a node that never answered."""
        value = self.results.get(key, self.error)
        if key not in self.results or isinstance(value, BaseException):
            raise AssertionError(f"the probe recorded no {key!r}: {value!r}\n--- launch output (tail) ---\n"
                                 + "".join(self.output)[-4000:])
        return value


def attempt(results: dict, key: str, measure: Callable[[], Any]) -> None:
    """``results[key] = measure()``, or the exception it raised: one failed check must not
    keep the probe from the others, so a test run shows every broken thing at once."""
    try:
        results[key] = measure()
    except Exception as exc:
        results[key] = exc


def run_launch(path: Path, includes: Iterable[Mapping[str, str]], probe: Callable[[dict], None],
               timeout: float = DEFAULT_TIMEOUT_S) -> LaunchRun:
    """Launch ``path`` once per argument set in ``includes`` and call ``probe(results)`` in a
    second thread; shut the launch down when the probe returns (or fails, or after
    ``timeout``) and return once every process has ended. Call from the main thread."""
    from launch.actions import GroupAction, IncludeLaunchDescription, RegisterEventHandler
    from launch.event_handlers import OnProcessExit, OnProcessIO
    from launch.events import Shutdown
    from launch.launch_description import LaunchDescription
    from launch.launch_description_sources import PythonLaunchDescriptionSource
    from launch.launch_service import LaunchService

    run = LaunchRun()
    groups = [GroupAction([IncludeLaunchDescription(PythonLaunchDescriptionSource(str(path)),
                                                    launch_arguments=dict(arguments).items())], scoped=True)
              for arguments in includes]
    watchers = [RegisterEventHandler(OnProcessExit(on_exit=lambda event, _: run.exits.append(
                    (" ".join(event.cmd), event.returncode)))),
                RegisterEventHandler(OnProcessIO(on_stdout=lambda event: run.output.append(_text(event)),
                                                 on_stderr=lambda event: run.output.append(_text(event))))]
    service = LaunchService(noninteractive=True)
    service.include_launch_description(LaunchDescription(groups + watchers))
    stop_once = threading.Lock()

    def stop(reason: str) -> None:
        """Queued if the service is not running yet (unlike LaunchService.shutdown)."""
        if stop_once.acquire(blocking=False):
            service.emit_event(Shutdown(reason=reason))

    def drive() -> None:
        try:
            probe(run.results)
        except BaseException as exc:  # reported by the tests through LaunchRun.get
            run.error = exc
        finally:
            stop("probe finished")

    watchdog = threading.Timer(timeout, stop, args=(f"timeout after {timeout} s",))
    driver = threading.Thread(target=drive, name="launch-probe", daemon=True)
    watchdog.start()
    driver.start()
    try:
        run.return_code = service.run(shutdown_when_idle=False)
    finally:
        watchdog.cancel()
        stop("launch ended")
        driver.join(timeout=30)
    return run


def _text(event: Any) -> str:
    return event.text.decode("utf-8", errors="replace")


class Probe:
    """A real rclpy node in its own context, spun only by the thread that uses it."""

    def __init__(self, name: str = "eacnet_launch_probe"):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.signals import SignalHandlerOptions

        self.context = rclpy.Context()
        # No signal handlers: Ctrl-C and the nodes' shutdown belong to pytest and the launch.
        rclpy.init(context=self.context, signal_handler_options=SignalHandlerOptions.NO)
        try:
            self.node = rclpy.create_node(name, context=self.context)
            self.executor = SingleThreadedExecutor(context=self.context)
            self.executor.add_node(self.node)
        except BaseException:
            self.context.try_shutdown()
            raise

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.context.try_shutdown()

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def spin_until(self, condition: Callable[[], bool], timeout: float,
                   every: Optional[tuple[float, Callable[[], None]]] = None) -> bool:
        """Spin until ``condition()``; with ``every=(period, action)`` also call ``action``
        each period, e.g. to resend a frame until discovery has matched the node."""
        deadline, last = time.monotonic() + timeout, float("-inf")
        while time.monotonic() < deadline:
            if every and time.monotonic() - last >= every[0]:
                every[1]()
                last = time.monotonic()
            self.executor.spin_once(timeout_sec=0.05)
            if condition():
                return True
        return False

    def node_names(self) -> set[str]:
        """Fully qualified names of the nodes on the graph."""
        return {f"{ns.rstrip('/')}/{name}" for name, ns in self.node.get_node_names_and_namespaces()}

    def lifecycle_state(self, node: str, timeout: float = 30.0) -> str:
        """A managed node's state label through its real lifecycle_msgs/srv/GetState service."""
        from lifecycle_msgs.srv import GetState

        client = self.node.create_client(GetState, f"{node}/get_state")
        try:
            if not client.wait_for_service(timeout_sec=timeout):
                raise TimeoutError(f"no lifecycle service {node}/get_state")
            future = client.call_async(GetState.Request())
            if not self.spin_until(future.done, timeout):
                raise TimeoutError(f"{node}/get_state did not answer")
            return future.result().current_state.label
        finally:
            self.node.destroy_client(client)

    def get_parameters(self, node: str, names: list[str], timeout: float = 30.0) -> dict[str, Any]:
        """Values through the node's real parameter service (rcl_interfaces/srv/GetParameters),
        as Python values, so their types are checked as well."""
        from rcl_interfaces.srv import GetParameters
        from rclpy.parameter import parameter_value_to_python

        client = self.node.create_client(GetParameters, f"{node}/get_parameters")
        try:
            if not client.wait_for_service(timeout_sec=timeout):
                raise TimeoutError(f"no parameter service {node}/get_parameters")
            future = client.call_async(GetParameters.Request(names=names))
            if not self.spin_until(future.done, timeout):
                raise TimeoutError(f"{node}/get_parameters did not answer")
            values = future.result().values
            return {name: parameter_value_to_python(value) for name, value in zip(names, values, strict=True)}
        finally:
            self.node.destroy_client(client)
