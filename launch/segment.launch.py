"""Launch the EACNet segmentation node, optionally with rviz2 and a bag replay.

    ros2 launch eacnet_ros segment.launch.py image_topic:=/camera/image_raw device:=cpu
    ros2 launch eacnet_ros segment.launch.py weights:=/path/best.pt rviz:=true
    ros2 launch eacnet_ros segment.launch.py bag:=/data/drive_bag image_topic:=/cam/image_raw

Parameters come from ``params_file`` (default: the installed config/segment.yaml). A
parameter argument given on the command line (backbone, attention, weights, device,
precision, use_sim_time) overrides the YAML; one that is not given leaves the YAML value
alone, so a custom params_file is never silently overwritten by a launch default.

The node's relative input ``image`` is remapped to ``image_topic`` and
``image/compressed`` to ``image_topic``/compressed, so either transport works; outputs
appear under ``namespace`` (/eacnet/mask, /eacnet/overlay, ...).

With ``bag:=`` the replay starts only once the node reports it is listening (model loaded
and warmed), so the bag's first frames are not published into a node that isn't there yet.
"""

import os
import tempfile
from typing import Optional

from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction, RegisterEventHandler
from launch.event_handlers import OnProcessIO
from launch.launch_context import LaunchContext
from launch.launch_description import LaunchDescription
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

PACKAGE = "eacnet_ros"
#: Launch arguments that override the node parameter of the same name when given.
STRING_OVERRIDES = ("backbone", "attention", "weights", "device", "precision")
#: The topics config/segment.rviz names; rewritten when image_topic or namespace differ.
RVIZ_IMAGE_TOPIC = "/camera/image_raw"
RVIZ_NAMESPACE = "/eacnet/"
#: segment_node logs a line with this once its model is loaded and warmed and it has subscribed.
READY_LOG = "listening on "


def _share_dir() -> str:
    """The installed share folder; the source tree when running uninstalled."""
    source_tree = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    except ImportError:
        return source_tree
    try:
        return get_package_share_directory(PACKAGE)
    except PackageNotFoundError:
        return source_tree


def _is_true(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no", "on", "off", ""):
        raise ValueError(f"expected true or false, got {text!r}")
    return value in ("true", "1", "yes", "on")


def _record_given(given: set):
    """Runs before the DeclareLaunchArgument actions: at that point only the arguments
    the caller passed (command line or an including launch file) are configured, so this
    tells a given value from a default."""
    def record(context: LaunchContext):
        given.update(name for name in (*STRING_OVERRIDES, "use_sim_time") if name in context.launch_configurations)
        return []
    return record


def _overrides(context: LaunchContext, given: set, bag: str) -> dict:
    """Parameter values for the node that come from launch arguments, typed explicitly
    (a weights path like '2024' must stay a string)."""
    values = {name: ParameterValue(LaunchConfiguration(name).perform(context), value_type=str)
              for name in STRING_OVERRIDES if name in given}
    if bag:
        values["use_sim_time"] = True  # the bag's /clock drives time
    elif "use_sim_time" in given:
        values["use_sim_time"] = _is_true(LaunchConfiguration("use_sim_time").perform(context))
    return values


def _rviz_config(template: str, image_topic: str, namespace: str) -> str:
    """config/segment.rviz with its topics pointed at this launch's camera and namespace."""
    prefix = "/" + namespace.strip("/") + "/" if namespace.strip("/") else "/"
    if image_topic == RVIZ_IMAGE_TOPIC and prefix == RVIZ_NAMESPACE:
        return template
    with open(template, encoding="utf-8") as f:
        text = f.read().replace(f"Value: {RVIZ_IMAGE_TOPIC}\n", f"Value: {image_topic}\n")
    text = text.replace(f"Value: {RVIZ_NAMESPACE}", f"Value: {prefix}")
    handle, path = tempfile.mkstemp(prefix="eacnet_segment_", suffix=".rviz")
    with os.fdopen(handle, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def _start_when_ready(node: Node, action: ExecuteProcess) -> RegisterEventHandler:
    """Start ``action`` once, on the node's first output line that holds READY_LOG (ROS
    logs go to stderr by default, to stdout with RCUTILS_LOGGING_USE_STDOUT=1)."""
    started = []

    def on_output(event) -> Optional[list]:
        if started or READY_LOG not in event.text.decode("utf-8", errors="replace"):
            return None
        started.append(action)
        return [action]

    return RegisterEventHandler(OnProcessIO(target_action=node, on_stdout=on_output, on_stderr=on_output))


def _launch_setup(given: set):
    def setup(context: LaunchContext):
        def arg(name: str) -> str:
            return LaunchConfiguration(name).perform(context)

        bag, image_topic, namespace = arg("bag"), arg("image_topic"), arg("namespace")
        overrides = _overrides(context, given, bag)
        parameters = [arg("params_file")] + ([overrides] if overrides else [])
        node = Node(package=PACKAGE, executable="segment_node", name="segment_node", namespace=namespace,
                    parameters=parameters, output="screen", emulate_tty=True,
                    remappings=[("image", image_topic), ("image/compressed", image_topic + "/compressed")])
        actions = [node]
        if bag:
            play = ExecuteProcess(cmd=["ros2", "bag", "play", bag, "--clock"], output="screen")
            actions.append(_start_when_ready(node, play))
        if _is_true(arg("rviz")):
            sim_time = bool(overrides.get("use_sim_time", False))
            rviz = _rviz_config(os.path.join(_share_dir(), "config", "segment.rviz"), image_topic, namespace)
            actions.append(Node(package="rviz2", executable="rviz2", name="rviz2", arguments=["-d", rviz],
                                parameters=[{"use_sim_time": sim_time}], output="screen"))
        return actions
    return setup


def generate_launch_description() -> LaunchDescription:
    given: set = set()
    default_params = os.path.join(_share_dir(), "config", "segment.yaml")
    arguments = [
        ("backbone", "erfnet", "network backbone: erfnet | dabnet"),
        ("attention", "eac", "attention head: eac | nonlocal | none"),
        ("weights", "", "checkpoint file; empty: the packaged default weights of the model"),
        ("image_topic", "/camera/image_raw", "camera topic (sensor_msgs/Image; +/compressed for compressed)"),
        ("namespace", "eacnet", "namespace of the node and its outputs"),
        ("device", "auto", "auto | cpu | cuda | cuda:N"),
        ("precision", "auto", "auto | fp32 | fp16 | bf16"),
        ("params_file", default_params, "YAML parameter file; the arguments above override it when given"),
        ("rviz", "false", "also start rviz2 with config/segment.rviz"),
        ("use_sim_time", "false", "use /clock (set automatically with bag)"),
        ("bag", "", "rosbag2 to replay with `ros2 bag play <bag> --clock` (sets use_sim_time)"),
    ]
    return LaunchDescription(
        [OpaqueFunction(function=_record_given(given))]
        + [DeclareLaunchArgument(name, default_value=default, description=text) for name, default, text in arguments]
        + [OpaqueFunction(function=_launch_setup(given))])
