"""Launch the EACNet segmentation node, optionally with rviz2 and a bag replay.

    ros2 launch eacnet_ros segment.launch.py image_topic:=/camera/image_raw device:=cpu
    ros2 launch eacnet_ros segment.launch.py weights:=/path/best.pt rviz:=true
    ros2 launch eacnet_ros segment.launch.py bag:=/data/drive_bag image_topic:=/cam/image_raw
    ros2 launch eacnet_ros segment.launch.py namespace:=cam1 transport:=compressed threads:=2
    ros2 launch eacnet_ros segment.launch.py cameras:="[front, left]" \
        camera_topics:="[/front/camera/image_raw, /left/camera/image_raw]"
    ros2 launch eacnet_ros segment.launch.py managed:=true autostart:=true

Parameters come from ``params_file`` (default: the installed config/segment.yaml). Every
node parameter (config/segment.yaml lists them) and ``use_sim_time`` is also a launch
argument: one given on the command line overrides the YAML, typed like the parameter
(``weights:=2024`` stays a string, ``threads:=2`` is an integer, ``overlay_alpha:=1`` a
float), so rclpy accepts it; one that is not given leaves the YAML value alone, so a custom
params_file is never silently overwritten by a launch default.

The node's relative input ``image`` is remapped to ``image_topic`` and
``image/compressed`` to ``image_topic``/compressed, so either transport works; outputs
appear under ``namespace`` (/eacnet/mask, /eacnet/overlay, ...).

Several cameras, one model: ``cameras:="[front, left]"`` makes the node read
``<namespace>/front/image`` and write ``<namespace>/front/mask``, ...; ``camera_topics``
(same length, same order) remaps each camera's input to its driver's topic (and
``.../compressed`` for ``transport:=compressed``). ``image_topic`` is not used then.

``managed:=true`` runs ``segment_lifecycle_node`` (same parameters and node name), which
waits unconfigured for its lifecycle transitions; ``autostart:=true`` has this launch
configure it and, once it is inactive, activate it (the nav2 convention).

With ``bag:=`` the replay starts only once the node reports it is listening (model loaded
and warmed), so the bag's first frames are not published into a node that isn't there yet.
"""

import hashlib
import os
import tempfile
from typing import NamedTuple, Optional

import yaml
from launch.actions import DeclareLaunchArgument, EmitEvent, ExecuteProcess, OpaqueFunction, RegisterEventHandler
from launch.event_handlers import OnProcessExit, OnProcessIO, OnProcessStart
from launch.events import matches_action
from launch.launch_context import LaunchContext
from launch.launch_description import LaunchDescription
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from launch_ros.parameter_descriptions import ParameterValue
from lifecycle_msgs.msg import Transition

PACKAGE = "eacnet_ros"


class Argument(NamedTuple):
    """A launch argument; ``kind`` is the type of the node parameter it overrides."""

    name: str
    default: str
    description: str
    kind: type = str


#: One argument per node parameter (eacnet_ros.node.params.PARAMETERS, listed here rather than
#: imported: that module needs torch, and the launch file must load without it). The defaults
#: are those of config/segment.yaml, shown by `ros2 launch --show-args`; they are never applied.
PARAMETER_ARGUMENTS = (
    Argument("backbone", "erfnet", "network backbone: erfnet | dabnet"),
    Argument("attention", "eac", "attention head: eac | nonlocal | none"),
    Argument("weights", "", "checkpoint file; empty: the packaged default weights of the model"),
    Argument("device", "auto", "auto | cpu | cuda | cuda:N"),
    Argument("precision", "auto", "auto | fp32 | fp16 | bf16 | int8 (CPU, onnxruntime)"),
    Argument("int8_calibration", "", "precision int8: folder of camera frames that calibrates the quantisation"),
    Argument("backend", "auto", "auto | torch | torch_compiled | onnxruntime | openvino"),
    Argument("inference_height", "0", "network input height; 0 (with inference_width 0): the image's own size",
             int),
    Argument("inference_width", "0", "network input width; 0 (with inference_height 0): the image's own size", int),
    Argument("threads", "0", "CPU inference threads; 0: every core", int),
    Argument("overlay_alpha", "0.5", "weight of the colour mask in the overlay, 0..1", float),
    Argument("reliability", "auto", "image subscription QoS: auto | reliable | best_effort"),
    Argument("max_input_pixels", "8294400", "larger input frames are skipped unread", int),
    Argument("transport", "raw", "raw: sensor_msgs/Image on image_topic; compressed: CompressedImage on "
             "image_topic/compressed"),
    Argument("cameras", "[]", "camera names, one model for all: C/image -> C/mask, C/color_mask, C/overlay under "
             "namespace (see camera_topics); [] leaves the params_file's value (default: one camera on image_topic)",
             list),
    Argument("batch_cameras", "auto", "several cameras' frames in one forward pass: auto (on CUDA) | always | never"),
    Argument("frame_score", "True", "every frame's confidence and frame score into /diagnostics and low_confidence; "
             "false: confidence only while subscribed", bool),
    Argument("score_warn_above", "0.5", "/diagnostics WARN above this smoothed frame score, 0..1", float),
    Argument("score_clear_below", "0.35", "the warning clears under this smoothed frame score, 0..score_warn_above",
             float),
    Argument("score_window", "15", "frames the frame score is averaged over, 1..1000", int),
    Argument("camera_height", "360", "the camera's frame height, expected at start-up: backend/precision auto "
             "choose the engine for it before the node listens", int),
    Argument("camera_width", "480", "the camera's frame width, expected at start-up (see camera_height)", int),
)
#: Arguments of the launch itself (use_sim_time is a parameter too, but rclpy's, not the node's).
LAUNCH_ARGUMENTS = (
    Argument("image_topic", "/camera/image_raw", "camera topic (sensor_msgs/Image; +/compressed for compressed)"),
    Argument("namespace", "eacnet", "namespace of the node and its outputs"),
    Argument("params_file", "", "YAML parameter file (default: the installed config/segment.yaml); the "
             "parameter arguments override it when given"),
    Argument("rviz", "false", "also start rviz2 with config/segment.rviz"),
    Argument("use_sim_time", "false", "use /clock (set automatically with bag)"),
    Argument("bag", "", "rosbag2 to replay with `ros2 bag play <bag> --clock` (sets use_sim_time)"),
    Argument("large_frames", "false", "run the node with config/fastdds_large_frames.xml (64 MiB Fast DDS "
             "shared-memory segment): best-effort subscribers of large outputs lose none; set the same profile "
             "for a best-effort camera driver too (README, QoS)"),
    Argument("camera_topics", "[]", "with cameras: the cameras' input topics, in their order (C/image is remapped "
             "to the i-th, C/image/compressed to it + /compressed); []: C/image under namespace"),
    Argument("managed", "false", "run segment_lifecycle_node: a managed node, configured and activated through "
             "its lifecycle services (ros2 lifecycle set ...)"),
    Argument("autostart", "false", "with managed: configure and then activate the node from this launch"),
)
#: Fast DDS profile of large_frames:=true; both variables, for Fast DDS 2 (Humble) and 3 (Jazzy+).
FASTDDS_PROFILE = "fastdds_large_frames.xml"
FASTDDS_PROFILE_VARIABLES = ("FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE")
#: Launch arguments that override the node parameter of the same name when given.
OVERRIDES = {argument.name: argument.kind for argument in PARAMETER_ARGUMENTS}
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
    except (PackageNotFoundError, OSError):  # not installed, or no AMENT_PREFIX_PATH at all
        return source_tree


def _is_true(name: str, text: str) -> bool:
    value = text.strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no", "on", "off", ""):
        raise ValueError(f"{name}:={text!r}: expected true or false")
    return value in ("true", "1", "yes", "on")


def _names(name: str, text: str) -> list[str]:
    """A list argument such as ``[front, left]`` as a list of strings (YAML, as rcl reads it)."""
    try:
        value = yaml.safe_load(text) if text.strip() else []
    except yaml.YAMLError:
        value = None
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
        raise ValueError(f"{name}:={text!r}: expected a list such as [front, left]")
    return [str(v) for v in value]


def _typed(name: str, text: str, kind: type) -> Optional[ParameterValue]:
    """The argument as the parameter's own type. rclpy refuses a value whose type differs
    from the declared default's, and launch_ros would read an untyped '2024' as an integer
    and '1' as an integer where the node wants a float. None for an empty list, which
    neither launch_ros nor rcl can pass as a parameter."""
    if kind is str:
        return ParameterValue(text, value_type=str)
    if kind is bool:
        return ParameterValue(_is_true(name, text), value_type=bool)
    if kind is list:
        names = _names(name, text)
        return ParameterValue(names, value_type=list[str]) if names else None
    try:
        value = kind(text.strip())
    except ValueError:
        expected = "an integer" if kind is int else "a number"
        raise ValueError(f"{name}:={text!r}: expected {expected}") from None
    return ParameterValue(value, value_type=kind)


def _record_given(given: set):
    """Runs before the DeclareLaunchArgument actions: at that point only the arguments
    the caller passed (command line or an including launch file) are configured, so this
    tells a given value from a default."""
    def record(context: LaunchContext):
        given.update(name for name in (*OVERRIDES, "use_sim_time") if name in context.launch_configurations)
        return []
    return record


def _overrides(context: LaunchContext, given: set, bag: str) -> dict:
    """Parameter values for the node that come from launch arguments, typed explicitly."""
    typed = {name: _typed(name, LaunchConfiguration(name).perform(context), kind)
             for name, kind in OVERRIDES.items() if name in given}
    values = {name: value for name, value in typed.items() if value is not None}
    if bag:
        values["use_sim_time"] = True  # the bag's /clock drives time
    elif "use_sim_time" in given:
        values["use_sim_time"] = _is_true("use_sim_time", LaunchConfiguration("use_sim_time").perform(context))
    return values


def _rviz_config(template: str, image_topic: str, namespace: str) -> str:
    """config/segment.rviz with its topics pointed at this launch's camera and namespace."""
    prefix = "/" + namespace.strip("/") + "/" if namespace.strip("/") else "/"
    if image_topic == RVIZ_IMAGE_TOPIC and prefix == RVIZ_NAMESPACE:
        return template
    with open(template, encoding="utf-8") as f:
        text = f.read().replace(f"Value: {RVIZ_IMAGE_TOPIC}\n", f"Value: {image_topic}\n")
    text = text.replace(f"Value: {RVIZ_NAMESPACE}", f"Value: {prefix}")
    # One file per distinct configuration in the user's cache, reused by every launch (a
    # temporary file per launch was never removed), written atomically for concurrent launches.
    folder = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), PACKAGE)
    path = os.path.join(folder, f"segment_{hashlib.sha256(text.encode()).hexdigest()[:16]}.rviz")
    if not os.path.isfile(path):
        os.makedirs(folder, exist_ok=True)
        handle, tmp = tempfile.mkstemp(prefix=".segment_", suffix=".rviz.tmp", dir=folder)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as f:
                f.write(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    return path


def _camera_remappings(cameras: list[str], topics: list[str]) -> list[tuple[str, str]]:
    """Each camera's relative input (raw and compressed) to its topic in ``camera_topics``."""
    if topics and not cameras:
        raise ValueError(f"camera_topics:={topics} needs cameras:=[...] with a name for each topic")
    if not topics:
        return []  # C/image under the namespace
    if len(topics) != len(cameras):
        raise ValueError(f"camera_topics has {len(topics)} topic(s) for {len(cameras)} camera(s) {cameras}: "
                         "give one topic per camera, in the same order")
    return [rule for camera, topic in zip(cameras, topics, strict=True) for rule in
            ((f"{camera}/image", topic), (f"{camera}/image/compressed", topic + "/compressed"))]


def _autostart(node: LifecycleNode) -> list:
    """Configure the managed node once its process runs, then activate it once configure
    has brought it to inactive (only after that configure: a later deactivate by an
    operator is not undone)."""
    def change(transition: int) -> EmitEvent:
        return EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node), transition_id=transition))

    configure = change(Transition.TRANSITION_CONFIGURE)
    return [RegisterEventHandler(OnProcessStart(target_action=node, on_start=[configure])),
            RegisterEventHandler(OnStateTransition(target_lifecycle_node=node, start_state="configuring",
                                                   goal_state="inactive", handle_once=True,
                                                   entities=[change(Transition.TRANSITION_ACTIVATE)]))]


def _fail_when_it_fails(node: Node) -> RegisterEventHandler:
    """The launch ends with a non-zero exit status when the node exits with one before
    the launch shuts down (a start-up error such as backbone:=foo): launch itself returns 0
    for a process that failed, and a supervisor or a CI script could not tell. An error
    raised from an event handler is launch's documented way to fail: it logs the reason,
    shuts everything down and makes ``ros2 launch`` exit 1."""
    def on_exit(event, context: LaunchContext) -> None:
        if event.returncode and not context.is_shutdown:
            raise RuntimeError(f"{event.action.name} exited with code {event.returncode} during start-up or "
                               "operation (its [eacnet] error line above says why); shutting the launch down")

    return RegisterEventHandler(OnProcessExit(target_action=node, on_exit=on_exit))


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
        profile = os.path.join(_share_dir(), "config", FASTDDS_PROFILE)
        large_frames = _is_true("large_frames", arg("large_frames"))
        environment = {name: profile for name in FASTDDS_PROFILE_VARIABLES} if large_frames else {}
        cameras = _names("cameras", arg("cameras")) if "cameras" in given else []
        remappings = _camera_remappings(cameras, _names("camera_topics", arg("camera_topics")))
        if not cameras:
            remappings += [("image", image_topic), ("image/compressed", image_topic + "/compressed")]
        managed = _is_true("managed", arg("managed"))
        node = (LifecycleNode if managed else Node)(
            package=PACKAGE, executable="segment_lifecycle_node" if managed else "segment_node", name="segment_node",
            namespace=namespace, parameters=parameters, output="screen", emulate_tty=True,
            additional_env=environment or None, remappings=remappings)
        actions = [node, _fail_when_it_fails(node)]
        actions += _autostart(node) if managed and _is_true("autostart", arg("autostart")) else []
        if bag:
            play = ExecuteProcess(cmd=["ros2", "bag", "play", bag, "--clock"], output="screen")
            actions.append(_start_when_ready(node, play))
        if _is_true("rviz", arg("rviz")):
            sim_time = bool(overrides.get("use_sim_time", False))
            if cameras:  # rviz shows the first camera
                namespace = f"{namespace.strip('/')}/{cameras[0]}"
                image_topic = next((topic for name, topic in remappings if name == f"{cameras[0]}/image"),
                                   f"/{namespace.strip('/')}/image")
            rviz = _rviz_config(os.path.join(_share_dir(), "config", "segment.rviz"), image_topic, namespace)
            actions.append(Node(package="rviz2", executable="rviz2", name="rviz2", arguments=["-d", rviz],
                                parameters=[{"use_sim_time": sim_time}], output="screen"))
        return actions
    return setup


def _declarations() -> list:
    """DeclareLaunchArgument for every argument; the params_file default is resolved here
    because it depends on where the package is installed."""
    default_params = os.path.join(_share_dir(), "config", "segment.yaml")
    parameters = [DeclareLaunchArgument(a.name, default_value=a.default,
                                        description=f"{a.description} (overrides params_file when given)")
                  for a in PARAMETER_ARGUMENTS]
    launch = [DeclareLaunchArgument(a.name, default_value=default_params if a.name == "params_file" else a.default,
                                    description=a.description) for a in LAUNCH_ARGUMENTS]
    return parameters + launch


def generate_launch_description() -> LaunchDescription:
    given: set = set()
    return LaunchDescription(
        [OpaqueFunction(function=_record_given(given))]
        + _declarations()
        + [OpaqueFunction(function=_launch_setup(given))])
