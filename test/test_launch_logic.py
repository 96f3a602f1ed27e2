"""The decisions inside launch/segment.launch.py that a real launch here cannot show.

What a real launch can show (namespace, remapping, transport, parameter precedence and
types, shutdown) is tested for real in test_launch_real.py. What stays here needs programs
that have no wheels (``ros2 bag play``, rviz2), or is cheaper to check than to launch: the
argument list against the node's parameters, number parsing, the packaged defaults.

The launch file runs on the real ``launch`` and ``launch_ros``: a real ``LaunchContext``
holds the caller's arguments, the real ``DeclareLaunchArgument`` fills in defaults and the
real ``OpaqueFunction`` returns the actions, which are the real classes (they check their
arguments). Only their constructor arguments are recorded on the way (``.kwargs``), because
the real actions keep them private until they execute. Nothing is executed: no process
starts. Loading it here also proves the launch file imports without torch or eacnet_core.
"""

from __future__ import annotations

import importlib.util
import types
from pathlib import Path
from typing import Any

import pytest
import yaml

from eacnet_ros.node.params import PARAMETERS

launch_actions = pytest.importorskip("launch.actions", reason="launch is not installed (scripts/setup.sh)")
launch_ros_actions = pytest.importorskip("launch_ros.actions", reason="launch_ros is not installed")
from launch.event_handlers import OnProcessExit, OnProcessIO, OnProcessStart  # noqa: E402
from launch.launch_context import LaunchContext  # noqa: E402
from launch_ros.event_handlers import OnStateTransition  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILE = REPO / "launch" / "segment.launch.py"
#: Launch arguments that are not parameters of the node (use_sim_time is rclpy's).
LAUNCH_ONLY = {"image_topic", "namespace", "params_file", "rviz", "use_sim_time", "bag", "large_frames",
               "camera_topics", "managed", "autostart"}


def recording(real: type) -> type:
    """``real`` with its constructor arguments kept as ``.kwargs`` (and ``.args``)."""
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        real.__init__(self, *args, **kwargs)
        self.args, self.kwargs = args, kwargs

    return type(real.__name__, (real,), {"__init__": __init__})


DeclareLaunchArgument = recording(launch_actions.DeclareLaunchArgument)
ExecuteProcess = recording(launch_actions.ExecuteProcess)
EmitEvent = recording(launch_actions.EmitEvent)
RegisterEventHandler = recording(launch_actions.RegisterEventHandler)
Node = recording(launch_ros_actions.Node)
LifecycleNode = recording(launch_ros_actions.LifecycleNode)
#: The names the launch file uses, bound to the recording classes once it is loaded.
RECORDED = {"DeclareLaunchArgument": DeclareLaunchArgument, "ExecuteProcess": ExecuteProcess, "EmitEvent": EmitEvent,
            "RegisterEventHandler": RegisterEventHandler, "Node": Node, "LifecycleNode": LifecycleNode,
            "ChangeState": recording(__import__("launch_ros.events.lifecycle", fromlist=["ChangeState"]).ChangeState),
            "OnProcessExit": recording(OnProcessExit), "OnProcessIO": recording(OnProcessIO),
            "OnProcessStart": recording(OnProcessStart), "OnStateTransition": recording(OnStateTransition)}


@pytest.fixture
def launch_module(monkeypatch):
    monkeypatch.delenv("AMENT_PREFIX_PATH", raising=False)  # not installed: the launch file uses the source tree
    spec = importlib.util.spec_from_file_location("segment_launch_under_test", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, cls in RECORDED.items():
        monkeypatch.setattr(module, name, cls)
    assert "torch" not in module.__dict__ and not any(m.startswith("eacnet_core") for m in vars(module))
    return module


def run_launch(launch_module, with_exit_handlers: bool = False, **given: str) -> list:
    """The actions the launch would start, given these command-line arguments (as
    ``ros2 launch`` sets them: launch configurations first, then the entities in order); the
    OnProcessExit handler every launch registers for the node only ``with_exit_handlers``."""
    context = LaunchContext()
    context.launch_configurations.update(given)
    started = []
    pending = list(launch_module.generate_launch_description().entities)
    while pending:
        entity = pending.pop(0)
        if isinstance(entity, (launch_actions.DeclareLaunchArgument, launch_actions.OpaqueFunction)):
            pending[:0] = entity.execute(context) or []
        elif with_exit_handlers or not isinstance(getattr(entity, "event_handler", None), OnProcessExit):
            started.append(entity)
    return started


def segment_node(actions: list) -> Any:
    (node,) = [a for a in actions if isinstance(a, launch_ros_actions.Node) and a.kwargs.get("name") == "segment_node"]
    return node


def declared(launch_module) -> dict[str, str]:
    """Declared argument -> default, as `ros2 launch --show-args` lists them."""
    return {e.kwargs["name"] if "name" in e.kwargs else e.args[0]: e.kwargs["default_value"]
            for e in launch_module.generate_launch_description().entities if isinstance(e, DeclareLaunchArgument)}


def typed(value: Any) -> tuple[Any, Any]:
    """A launch_ros ParameterValue as (value, type) (it has no equality of its own)."""
    return value.value, value.value_type


def test_every_node_parameter_is_a_launch_argument(launch_module):
    assert set(declared(launch_module)) == {spec.name for spec in PARAMETERS} | LAUNCH_ONLY
    assert launch_module.OVERRIDES == {spec.name: type(spec.default) for spec in PARAMETERS}


def test_parameter_arguments_show_the_packaged_yaml_values(launch_module):
    """The YAML lists every parameter, and --show-args shows its values (never applied)."""
    packaged = yaml.safe_load((REPO / "config" / "segment.yaml").read_text())["/**"]["ros__parameters"]
    assert set(packaged) == {spec.name for spec in PARAMETERS}
    defaults = declared(launch_module)
    assert {name: defaults[name] for name in packaged} == {name: str(value) for name, value in packaged.items()}
    assert {name: defaults[name] for name in LAUNCH_ONLY} == {
        "image_topic": "/camera/image_raw", "namespace": "eacnet", "params_file": str(REPO / "config" / "segment.yaml"),
        "rviz": "false", "use_sim_time": "false", "bag": "", "large_frames": "false", "camera_topics": "[]",
        "managed": "false", "autostart": "false"}


def test_without_arguments_the_node_gets_the_packaged_yaml_alone(launch_module):
    actions = run_launch(launch_module)
    assert len(actions) == 1
    node = segment_node(actions)
    assert type(node) is Node and node.kwargs["executable"] == "segment_node"
    assert node.kwargs["parameters"] == [str(REPO / "config" / "segment.yaml")]
    assert node.kwargs["remappings"] == [("image", "/camera/image_raw"), ("image/compressed",
                                                                         "/camera/image_raw/compressed")]


@pytest.mark.parametrize("name, text, value", [("overlay_alpha", "1", 1.0), ("threads", " 2 ", 2),
                                                ("max_input_pixels", "100", 100), ("weights", "2024", "2024")])
def test_arguments_take_the_type_of_their_parameter(launch_module, name, text, value):
    """rclpy refuses an int for a float parameter; launch_ros would read '2024' as an int."""
    (override,) = segment_node(run_launch(launch_module, **{name: text})).kwargs["parameters"][1].values()
    assert typed(override) == (value, type(value)) and type(override.value) is type(value)


@pytest.mark.parametrize("name, text, message", [("threads", "two", "threads:='two': expected an integer"),
                                                 ("overlay_alpha", "half", "overlay_alpha:='half': expected a number")])
def test_a_bad_number_is_a_clear_error(launch_module, name, text, message):
    with pytest.raises(ValueError, match=message):
        run_launch(launch_module, **{name: text})


def process_output(text: str) -> types.SimpleNamespace:
    """What launch hands an OnProcessIO callback: the chunk as bytes."""
    return types.SimpleNamespace(text=text.encode())


def test_bag_replay_plays_with_clock_and_sets_sim_time(launch_module):
    actions = run_launch(launch_module, bag="/data/drive")
    assert not [a for a in actions if isinstance(a, ExecuteProcess)]  # not at launch: once the node is ready
    (handler,) = [a.event_handler for a in actions if isinstance(a, RegisterEventHandler)]
    assert handler.kwargs["target_action"] is segment_node(actions)
    assert segment_node(actions).kwargs["parameters"][1] == {"use_sim_time": True}
    on_stderr, on_stdout = handler.kwargs["on_stderr"], handler.kwargs["on_stdout"]
    assert on_stderr(process_output("[INFO] [segment_node]: loaded eacnet_erf\n")) is None
    (play,) = on_stderr(process_output("[INFO] [1.5] [eacnet.segment_node]: listening on /camera/image_raw\n"))
    assert play.kwargs["cmd"] == ["ros2", "bag", "play", "/data/drive", "--clock"]
    assert on_stdout(process_output("listening on /camera/image_raw")) is None  # once only


def test_bag_replay_also_starts_on_a_ready_line_on_stdout(launch_module):
    actions = run_launch(launch_module, bag="/data/drive")
    (handler,) = [a.event_handler for a in actions if isinstance(a, RegisterEventHandler)]
    (play,) = handler.kwargs["on_stdout"](process_output("[INFO] listening on /cam (Image, best_effort)"))
    assert isinstance(play, ExecuteProcess)


def test_rviz_uses_the_packaged_config(launch_module):
    actions = run_launch(launch_module, rviz="true")
    (rviz,) = [a for a in actions if isinstance(a, Node) and a.kwargs["executable"] == "rviz2"]
    assert rviz.kwargs["arguments"] == ["-d", str(REPO / "config" / "segment.rviz")]
    assert rviz.kwargs["parameters"] == [{"use_sim_time": False}]


def rviz_config_of(actions: list) -> tuple[Node, Path]:
    (rviz,) = [a for a in actions if isinstance(a, Node) and a.kwargs["executable"] == "rviz2"]
    return rviz, Path(rviz.kwargs["arguments"][1])


def test_rviz_config_follows_a_custom_camera_and_namespace(launch_module, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    rviz, path = rviz_config_of(run_launch(launch_module, rviz="true", image_topic="/front/image",
                                           namespace="front_seg", bag="/b"))
    topics = [d["Topic"]["Value"] for d in yaml.safe_load(path.read_text())["Visualization Manager"]["Displays"]]
    assert topics == ["/front/image", "/front_seg/overlay", "/front_seg/color_mask"]
    assert rviz.kwargs["parameters"] == [{"use_sim_time": True}]


def test_rviz_configs_do_not_pile_up_one_per_launch(launch_module, monkeypatch, tmp_path):
    """Each launch once left a temporary .rviz file behind: now one file per configuration."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    paths = {rviz_config_of(run_launch(launch_module, rviz="true", namespace="cam1"))[1] for _ in range(3)}
    other = rviz_config_of(run_launch(launch_module, rviz="true", namespace="cam2"))[1]
    (path,) = paths
    assert path.parent == tmp_path / "eacnet_ros" and other != path
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([path.name, other.name])
    assert "Value: /cam1/overlay" in path.read_text() and "Value: /cam2/overlay" in other.read_text()


@pytest.mark.parametrize("name", ["rviz", "managed", "autostart", "large_frames", "use_sim_time"])
def test_a_bad_boolean_is_an_error_naming_the_argument(launch_module, name):
    arguments = {name: "maybe"} if name != "autostart" else {"managed": "true", name: "maybe"}
    with pytest.raises(ValueError, match=f"{name}:='maybe': expected true or false"):
        run_launch(launch_module, **arguments)


def test_large_frames_gives_the_node_the_packaged_fastdds_profile(launch_module):
    environment = segment_node(run_launch(launch_module, large_frames="true")).kwargs["additional_env"]
    profile = REPO / "config" / "fastdds_large_frames.xml"
    assert environment == {name: str(profile) for name in ("FASTRTPS_DEFAULT_PROFILES_FILE",
                                                           "FASTDDS_DEFAULT_PROFILES_FILE")}
    assert profile.is_file() and "<segment_size>67108864</segment_size>" in profile.read_text()
    assert segment_node(run_launch(launch_module)).kwargs["additional_env"] is None


# ---------------------------------------------------------------------------- several cameras

FRONT_LEFT = {"cameras": "[front, left]", "camera_topics": "[/front/camera/image_raw, /left/camera/image_raw]"}


def test_cameras_are_a_string_list_and_each_input_is_remapped_to_its_topic(launch_module):
    node = segment_node(run_launch(launch_module, **FRONT_LEFT))
    (cameras,) = node.kwargs["parameters"][1].values()
    assert typed(cameras) == (["front", "left"], list[str])
    assert node.kwargs["remappings"] == [
        ("front/image", "/front/camera/image_raw"), ("front/image/compressed", "/front/camera/image_raw/compressed"),
        ("left/image", "/left/camera/image_raw"), ("left/image/compressed", "/left/camera/image_raw/compressed")]


def test_cameras_without_topics_read_under_the_namespace(launch_module):
    node = segment_node(run_launch(launch_module, cameras="[front]"))
    assert node.kwargs["remappings"] == [] and node.kwargs["namespace"] == "eacnet"


def test_an_empty_camera_list_leaves_the_params_file_alone(launch_module):
    """launch_ros cannot pass an empty list, and rcl reads one as 'not set'."""
    assert segment_node(run_launch(launch_module, cameras="[]")).kwargs["parameters"] == [
        str(REPO / "config" / "segment.yaml")]


@pytest.mark.parametrize("given, message", [
    ({"cameras": "[front, left]", "camera_topics": "[/front/image_raw]"},
     r"camera_topics has 1 topic\(s\) for 2 camera\(s\)"),
    ({"camera_topics": "[/front/image_raw]"}, r"needs cameras:=\[...\]"),
    ({"cameras": "front: left"}, r"cameras:='front: left': expected a list such as \[front, left\]"),
])
def test_camera_arguments_that_do_not_fit_are_clear_errors(launch_module, given, message):
    with pytest.raises(ValueError, match=message):
        run_launch(launch_module, **given)


def test_rviz_shows_the_first_camera(launch_module):
    actions = run_launch(launch_module, rviz="true", namespace="seg", **FRONT_LEFT)
    (rviz,) = [a for a in actions if isinstance(a, Node) and a.kwargs["executable"] == "rviz2"]
    path = Path(rviz.kwargs["arguments"][1])
    try:
        topics = [d["Topic"]["Value"] for d in yaml.safe_load(path.read_text())["Visualization Manager"]["Displays"]]
    finally:
        path.unlink()
    assert topics == ["/front/camera/image_raw", "/seg/front/overlay", "/seg/front/color_mask"]


# ---------------------------------------------------------------------------- the managed node

def test_managed_runs_the_lifecycle_node_under_the_same_name_and_waits(launch_module):
    actions = run_launch(launch_module, managed="true")
    node = segment_node(actions)
    assert isinstance(node, LifecycleNode) and node.kwargs["executable"] == "segment_lifecycle_node"
    assert (node.kwargs["name"], node.kwargs["namespace"]) == ("segment_node", "eacnet")
    assert actions == [node]  # no autostart: an operator or a lifecycle manager drives it


def test_autostart_configures_at_process_start_then_activates_once_inactive(launch_module):
    actions = run_launch(launch_module, managed="true", autostart="true")
    node = segment_node(actions)
    on_start, on_inactive = [a.event_handler for a in actions if isinstance(a, RegisterEventHandler)]
    assert isinstance(on_start, OnProcessStart) and on_start.kwargs["target_action"] is node
    (configure,) = on_start.kwargs["on_start"]
    assert configure.event.kwargs["transition_id"] == Transition.TRANSITION_CONFIGURE
    assert configure.event.kwargs["lifecycle_node_matcher"](node)
    assert isinstance(on_inactive, OnStateTransition) and on_inactive.kwargs["target_lifecycle_node"] is node
    assert (on_inactive.kwargs["start_state"], on_inactive.kwargs["goal_state"]) == ("configuring", "inactive")
    assert on_inactive.kwargs["handle_once"] is True  # a later deactivate by an operator is not undone
    (activate,) = on_inactive.kwargs["entities"]
    assert activate.event.kwargs["transition_id"] == Transition.TRANSITION_ACTIVATE


def test_autostart_without_managed_changes_nothing(launch_module):
    actions = run_launch(launch_module, autostart="true")
    assert len(actions) == 1 and type(segment_node(actions)) is Node


@pytest.mark.parametrize("managed", ["false", "true"])
def test_the_launch_fails_when_the_node_exits_with_an_error(launch_module, managed):
    """launch returns 0 for a process that failed; an error raised from the exit handler
    makes `ros2 launch` exit 1 (checked for real in test_ros2_workflow.py)."""
    actions = run_launch(launch_module, with_exit_handlers=True, managed=managed)
    (handler,) = [a.event_handler for a in actions if isinstance(a, RegisterEventHandler)
                  and isinstance(a.event_handler, OnProcessExit)]
    assert handler.kwargs["target_action"] is segment_node(actions)
    on_exit = handler.kwargs["on_exit"]
    event = types.SimpleNamespace(returncode=1, action=types.SimpleNamespace(name="segment_node-1"))
    with pytest.raises(RuntimeError, match="segment_node-1 exited with code 1"):
        on_exit(event, types.SimpleNamespace(is_shutdown=False))
    assert on_exit(types.SimpleNamespace(returncode=0, action=event.action), types.SimpleNamespace(is_shutdown=False)) \
        is None
    assert on_exit(event, types.SimpleNamespace(is_shutdown=True)) is None  # killed while the launch shuts down

