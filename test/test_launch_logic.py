"""The decisions inside launch/segment.launch.py, checked without ROS 2.

The launch file is loaded against a small recording double of the launch / launch_ros
classes it uses (not a launch implementation). ``run_launch`` mimics the one piece of
launch semantics that matters here, as ``ros2 launch`` and IncludeLaunchDescription do it:
the caller's arguments are set as launch configurations first, then the description's
entities are visited in order (DeclareLaunchArgument fills in a default only where no
value is set; an OpaqueFunction returns more actions). The real thing runs in
test_segment_launch.py under ``colcon test``.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILE = REPO / "launch" / "segment.launch.py"


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


def test_declared_arguments_and_defaults(launch_module):
    declared = {e.name: e.default_value for e in launch_module.generate_launch_description().entities
                if isinstance(e, DeclareLaunchArgument)}
    assert declared == {
        "backbone": "erfnet", "attention": "eac", "weights": "", "image_topic": "/camera/image_raw",
        "namespace": "eacnet", "device": "auto", "precision": "auto",
        "params_file": str(REPO / "config" / "segment.yaml"), "rviz": "false", "use_sim_time": "false", "bag": ""}


def test_defaults_start_one_node_with_the_yaml_and_no_overrides(launch_module):
    actions = run_launch(launch_module)
    node = segment_node(actions)
    assert len(actions) == 1
    assert node.kwargs["package"] == "eacnet_ros" and node.kwargs["namespace"] == "eacnet"
    assert node.kwargs["parameters"] == [str(REPO / "config" / "segment.yaml")]
    assert node.kwargs["remappings"] == [("image", "/camera/image_raw"),
                                         ("image/compressed", "/camera/image_raw/compressed")]


def test_only_given_arguments_override_the_yaml(launch_module):
    node = segment_node(run_launch(launch_module, weights="/w/2024", device="cuda:1", params_file="/my.yaml"))
    params_file, overrides = node.kwargs["parameters"]
    assert params_file == "/my.yaml"  # YAML first, overrides second: the later one wins in ROS 2
    assert overrides == {"weights": ParameterValue("/w/2024", str), "device": ParameterValue("cuda:1", str)}


def test_a_given_backbone_overrides_but_its_default_does_not(launch_module):
    node = segment_node(run_launch(launch_module, backbone="dabnet", attention="none"))
    assert node.kwargs["parameters"][1] == {"backbone": ParameterValue("dabnet", str),
                                            "attention": ParameterValue("none", str)}
    assert len(segment_node(run_launch(launch_module)).kwargs["parameters"]) == 1


def test_image_topic_and_namespace(launch_module):
    node = segment_node(run_launch(launch_module, image_topic="/front/image", namespace="front_seg"))
    assert node.kwargs["namespace"] == "front_seg"
    assert node.kwargs["remappings"] == [("image", "/front/image"), ("image/compressed", "/front/image/compressed")]


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


def test_the_node_logs_the_line_the_launch_waits_for(launch_module):
    source = (REPO / "eacnet_ros" / "segment_node.py").read_text()
    assert f'info(f"{launch_module.READY_LOG}' in source


@pytest.mark.parametrize("text, expected", [("true", True), ("False", False), ("1", True)])
def test_use_sim_time_is_a_bool(launch_module, text, expected):
    node = segment_node(run_launch(launch_module, use_sim_time=text))
    assert node.kwargs["parameters"][1] == {"use_sim_time": expected}


def test_rviz_uses_the_packaged_config(launch_module):
    actions = run_launch(launch_module, rviz="true")
    (rviz,) = [a for a in actions if isinstance(a, Node) and a.kwargs["executable"] == "rviz2"]
    assert rviz.kwargs["arguments"] == ["-d", str(REPO / "config" / "segment.rviz")]
    assert rviz.kwargs["parameters"] == [{"use_sim_time": False}]


def test_rviz_config_follows_a_custom_camera_and_namespace(launch_module):
    actions = run_launch(launch_module, rviz="true", image_topic="/front/image", namespace="front_seg", bag="/b")
    (rviz,) = [a for a in actions if isinstance(a, Node) and a.kwargs["executable"] == "rviz2"]
    path = Path(rviz.kwargs["arguments"][1])
    try:
        topics = [d["Topic"]["Value"] for d in yaml.safe_load(path.read_text())["Visualization Manager"]["Displays"]]
    finally:
        path.unlink()
    assert topics == ["/front/image", "/front_seg/overlay", "/front_seg/color_mask"]
    assert rviz.kwargs["parameters"] == [{"use_sim_time": True}]


def test_bad_boolean_is_an_error(launch_module):
    with pytest.raises(ValueError, match="expected true or false"):
        run_launch(launch_module, rviz="maybe")
