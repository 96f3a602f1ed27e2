"""The decisions inside launch/segment.launch.py that a real launch here cannot show.

What a real launch can show (namespace, remapping, transport, parameter precedence and
types, shutdown) is tested for real in test_launch_real.py. What stays here needs programs
that have no wheels (``ros2 bag play``, rviz2), or is cheaper to check than to launch: the
argument list against the node's parameters, number parsing, the packaged defaults.

The launch file is loaded against a small recording double of the launch / launch_ros
classes it uses (not a launch implementation). ``run_launch`` mimics the one piece of
launch semantics that matters here, as ``ros2 launch`` and IncludeLaunchDescription do it:
the caller's arguments are set as launch configurations first, then the description's
entities are visited in order (DeclareLaunchArgument fills in a default only where no
value is set; an OpaqueFunction returns more actions). Loading it here also proves the
launch file imports without torch or eacnet_core.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import yaml

from eacnet_ros import node_logic

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILE = REPO / "launch" / "segment.launch.py"
#: Launch arguments that are not parameters of the node (use_sim_time is rclpy's).
LAUNCH_ONLY = {"image_topic", "namespace", "params_file", "rviz", "use_sim_time", "bag", "large_frames"}


class Recorded:
    """Any launch action: keeps its arguments."""

    def __init__(self, *args: Any, **kwargs: Any):
        self.args, self.kwargs = args, kwargs


class DeclareLaunchArgument(Recorded):
    def __init__(self, name: str, default_value: str = None, description: str = ""):
        super().__init__(name, default_value=default_value, description=description)
        self.name, self.default_value = name, default_value


class OpaqueFunction(Recorded):
    def __init__(self, function):
        super().__init__(function=function)
        self.function = function


class LaunchConfiguration:
    def __init__(self, name: str):
        self.name = name

    def perform(self, context) -> str:
        return context.launch_configurations[self.name]


class ParameterValue:
    def __init__(self, value: Any, value_type: type = None):
        self.value, self.value_type = value, value_type

    def __eq__(self, other):
        return isinstance(other, ParameterValue) and (self.value, self.value_type) == (other.value, other.value_type)

    def __repr__(self):
        return f"ParameterValue({self.value!r}, {self.value_type})"


class Node(Recorded):
    pass


class ExecuteProcess(Recorded):
    pass


class RegisterEventHandler(Recorded):
    def __init__(self, event_handler):
        super().__init__(event_handler)
        self.event_handler = event_handler


class OnProcessIO(Recorded):
    pass


class LaunchDescription(Recorded):
    def __init__(self, entities):
        super().__init__(entities)
        self.entities = list(entities)


def _modules() -> dict[str, types.ModuleType]:
    def module(name: str, **attrs: Any) -> types.ModuleType:
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        return m

    return {
        "launch": module("launch"),
        "launch.actions": module("launch.actions", DeclareLaunchArgument=DeclareLaunchArgument,
                                 ExecuteProcess=ExecuteProcess, OpaqueFunction=OpaqueFunction,
                                 RegisterEventHandler=RegisterEventHandler),
        "launch.event_handlers": module("launch.event_handlers", OnProcessIO=OnProcessIO),
        "launch.launch_context": module("launch.launch_context", LaunchContext=object),
        "launch.launch_description": module("launch.launch_description", LaunchDescription=LaunchDescription),
        "launch.substitutions": module("launch.substitutions", LaunchConfiguration=LaunchConfiguration),
        "launch_ros": module("launch_ros"),
        "launch_ros.actions": module("launch_ros.actions", Node=Node),
        "launch_ros.parameter_descriptions": module("launch_ros.parameter_descriptions",
                                                    ParameterValue=ParameterValue),
        "ament_index_python": None,  # not installed: the launch file falls back to the source tree
        "ament_index_python.packages": None,
    }


@pytest.fixture
def launch_module(monkeypatch):
    for name, module in _modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("segment_launch_under_test", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_launch(launch_module, **given: str) -> list:
    """The actions the launch would start, given these command-line arguments."""
    context = types.SimpleNamespace(launch_configurations=dict(given))
    started = []
    pending = list(launch_module.generate_launch_description().entities)
    while pending:
        entity = pending.pop(0)
        if isinstance(entity, DeclareLaunchArgument):
            context.launch_configurations.setdefault(entity.name, entity.default_value)
        elif isinstance(entity, OpaqueFunction):
            pending[:0] = entity.function(context) or []
        else:
            started.append(entity)
    return started


def segment_node(actions: list) -> Node:
    (node,) = [a for a in actions if isinstance(a, Node) and a.kwargs["executable"] == "segment_node"]
    return node


def declared(launch_module) -> dict[str, str]:
    """Declared argument -> default, as `ros2 launch --show-args` lists them."""
    return {e.name: e.default_value for e in launch_module.generate_launch_description().entities
            if isinstance(e, DeclareLaunchArgument)}


def test_every_node_parameter_is_a_launch_argument(launch_module):
    assert set(declared(launch_module)) == {spec.name for spec in node_logic.PARAMETERS} | LAUNCH_ONLY
    assert launch_module.OVERRIDES == {spec.name: type(spec.default) for spec in node_logic.PARAMETERS}


def test_parameter_arguments_show_the_packaged_yaml_values(launch_module):
    """The YAML lists every parameter, and --show-args shows its values (never applied)."""
    packaged = yaml.safe_load((REPO / "config" / "segment.yaml").read_text())["/**"]["ros__parameters"]
    assert set(packaged) == {spec.name for spec in node_logic.PARAMETERS}
    defaults = declared(launch_module)
    assert {name: defaults[name] for name in packaged} == {name: str(value) for name, value in packaged.items()}
    assert {name: defaults[name] for name in LAUNCH_ONLY} == {
        "image_topic": "/camera/image_raw", "namespace": "eacnet", "params_file": str(REPO / "config" / "segment.yaml"),
        "rviz": "false", "use_sim_time": "false", "bag": "", "large_frames": "false"}


def test_without_arguments_the_node_gets_the_packaged_yaml_alone(launch_module):
    actions = run_launch(launch_module)
    assert len(actions) == 1
    assert segment_node(actions).kwargs["parameters"] == [str(REPO / "config" / "segment.yaml")]


@pytest.mark.parametrize("name, text, value", [("overlay_alpha", "1", 1.0), ("threads", " 2 ", 2),
                                                ("max_input_pixels", "100", 100), ("weights", "2024", "2024")])
def test_arguments_take_the_type_of_their_parameter(launch_module, name, text, value):
    """rclpy refuses an int for a float parameter; launch_ros would read '2024' as an int."""
    (override,) = segment_node(run_launch(launch_module, **{name: text})).kwargs["parameters"][1].values()
    assert override == ParameterValue(value, type(value)) and type(override.value) is type(value)


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


def test_bad_boolean_is_an_error(launch_module):
    with pytest.raises(ValueError, match="expected true or false"):
        run_launch(launch_module, rviz="maybe")


def test_large_frames_gives_the_node_the_packaged_fastdds_profile(launch_module):
    environment = segment_node(run_launch(launch_module, large_frames="true")).kwargs["additional_env"]
    profile = REPO / "config" / "fastdds_large_frames.xml"
    assert environment == {name: str(profile) for name in ("FASTRTPS_DEFAULT_PROFILES_FILE",
                                                           "FASTDDS_DEFAULT_PROFILES_FILE")}
    assert profile.is_file() and "<segment_size>67108864</segment_size>" in profile.read_text()
    assert segment_node(run_launch(launch_module)).kwargs["additional_env"] is None
