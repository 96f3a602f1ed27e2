"""``segment_node``: semantic segmentation of a camera stream, the only module importing rclpy.

Topics (relative, so ``namespace`` and remapping give one node per camera):

* in:  ``image`` (sensor_msgs/Image) or, with ``transport: compressed``,
  ``image/compressed`` (sensor_msgs/CompressedImage); KEEP_LAST depth 1, reliability
  from the ``reliability`` parameter (``auto``: follows the publishers, re-checked each second).
* out: ``mask`` (mono8 class ids), ``color_mask`` and ``overlay`` (bgr8), all at the input
  size with the input's header, reliable KEEP_LAST ``OUTPUT_DEPTH``; ``label_info``
  (vision_msgs/LabelInfo, transient_local); ``/diagnostics`` once a second.

The process (``main``) owns SIGINT and SIGTERM: either ends it with exit code 0 at any
moment (while the model loads, at idle, while streaming), tearing down in order (worker,
node, context). Every start-up error, rcl's own included, is one ``[eacnet] error:`` line
and exit code 1.

Everything except the ROS wiring lives in ``node_logic`` (tested without ROS); the module
docstring there explains the threading: the subscription callback only stores the newest
message and counts overwritten ones as dropped; a worker thread runs the model.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, Optional

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSPolicyKind, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from . import node_logic
from .node_logic import FrameProcessor, FrameStats, FrameWorker, LatestFrame, NodeConfig, ParamSpec
from .segment_main import SignalStop, Stopped

try:  # Iron and later
    from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks
except ImportError:  # pragma: no cover - Humble
    from rclpy.qos_event import PublisherEventCallbacks, SubscriptionEventCallbacks

try:
    from rclpy.signals import SignalHandlerOptions
except ImportError:  # pragma: no cover - very old rclpy: it installs its own handlers
    SignalHandlerOptions = None

try:  # Jazzy raises this from spin() when the context is shut down by a signal; Humble may lack it
    from rclpy.executors import ExternalShutdownException
except ImportError:  # pragma: no cover - depends on the ROS distribution
    class ExternalShutdownException(Exception):  # mirrors rclpy's name
        """Placeholder: never raised where rclpy does not define it."""

try:  # optional: without vision_msgs the node runs, only label_info is skipped
    from vision_msgs.msg import LabelInfo, VisionClass
except ImportError:
    LabelInfo = VisionClass = None

NODE_NAME = "segment_node"
DIAGNOSTICS_PERIOD_S = 1.0
OUTPUT_TOPICS = ("mask", "color_mask", "overlay")
#: Output history. Measured on Fast DDS (docs/RESULTS.md, "Output QoS"): depth 1 lost up to
#: 29 of 40 colour masks to a reliable subscriber, because a new sample replaces one still
#: being repaired; depth 5 lost none. The cost is memory for 5 frames per output.
OUTPUT_DEPTH = 5
_POLICY_NAMES = {ReliabilityPolicy.RELIABLE: node_logic.RELIABLE, ReliabilityPolicy.BEST_EFFORT: node_logic.BEST_EFFORT}
_LEVELS = {node_logic.OK: DiagnosticStatus.OK, node_logic.WARN: DiagnosticStatus.WARN,
           node_logic.ERROR: DiagnosticStatus.ERROR}


def descriptor_for(spec: ParamSpec) -> ParameterDescriptor:
    """ParameterDescriptor with description, allowed values and range; what
    ``ros2 param describe`` shows and what rclpy enforces (ranges, read-only)."""
    descriptor = ParameterDescriptor(description=spec.full_description(),
                                     additional_constraints=spec.constraints(), read_only=spec.read_only)
    if spec.int_range:
        descriptor.integer_range = [IntegerRange(from_value=spec.int_range[0], to_value=spec.int_range[1], step=1)]
    if spec.float_range:
        descriptor.floating_point_range = [FloatingPointRange(from_value=spec.float_range[0],
                                                              to_value=spec.float_range[1], step=0.0)]
    return descriptor


def image_qos(reliability: str) -> QoSProfile:
    """Newest frame only: the middleware must not queue frames a slow model cannot use."""
    policy = ReliabilityPolicy.RELIABLE if reliability == node_logic.RELIABLE else ReliabilityPolicy.BEST_EFFORT
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=policy,
                      durability=DurabilityPolicy.VOLATILE)


def output_qos() -> QoSProfile:
    """Reliable, so both reliable (rviz's default) and best-effort subscribers receive."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=OUTPUT_DEPTH, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)


def describe_qos(qos: QoSProfile, remote: bool = False) -> str:
    """'reliable, volatile, keep_last 5': the policies an incompatibility can be about.
    The graph does not report a remote endpoint's history, so ``remote`` leaves it out."""
    reliability = _POLICY_NAMES.get(qos.reliability, str(qos.reliability.name).lower())
    text = f"{reliability}, {str(qos.durability.name).lower()}"
    return text if remote else f"{text}, {str(qos.history.name).lower()} {qos.depth}"


def _policy_name(kind: Any) -> str:
    """'reliability' from rclpy's QoSPolicyKind (an enum, or the int the event carries)."""
    try:
        return QoSPolicyKind(int(kind)).name.lower()
    except (TypeError, ValueError):
        return str(getattr(kind, "name", kind)).lower()


def _endpoint_owner(info: Any) -> str:
    """The node behind a graph endpoint; rmw reports unknown names for non-ROS DDS writers."""
    if "UNKNOWN" in info.node_name:
        return "a publisher/subscriber without a ROS node name"
    return f"{info.node_namespace.rstrip('/')}/{info.node_name}"


def latched_qos() -> QoSProfile:
    """transient_local: late subscribers get the label map without it being republished."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


class _RosLogHandler(logging.Handler):
    """Forwards eacnet_core's Python logging (e.g. warnings while loading) to the node's
    ROS logger, so it reaches /rosout and the launch log instead of bare stderr."""

    def __init__(self, logger: Any):
        super().__init__(logging.INFO)
        self._logger = logger

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.levelno >= logging.ERROR:
            self._logger.error(text)
        elif record.levelno >= logging.WARNING:
            self._logger.warning(text)
        else:
            self._logger.info(text)


class SegmentNode(Node):
    """Subscribes to camera images and publishes mask, colour mask, overlay, labels and
    diagnostics. Construction loads and warms the model; it raises on any start-up error."""

    def __init__(self, command_line: Sequence[str] = (), **kwargs: Any):
        """``command_line``: the process's arguments, to refuse ``-p`` values that are
        invalid or that rcl dropped; ``kwargs`` go to rclpy's Node (context, overrides)."""
        super().__init__(NODE_NAME, **kwargs)
        self._worker: Optional[FrameWorker] = None
        self.subscription = None
        self._warned_incompatible: set = set()
        core_logger = logging.getLogger("eacnet_core")
        self._log_bridge = _RosLogHandler(self.get_logger())
        self._core_level = core_logger.level
        core_logger.addHandler(self._log_bridge)
        core_logger.setLevel(logging.INFO)  # the backend choice and load notes are INFO lines
        try:
            self._start(command_line)
        except BaseException:
            with contextlib.suppress(Exception):  # the start-up error is the one to report
                self.destroy_node()
            raise

    def _start(self, command_line: Sequence[str]) -> None:
        """Parameters, model, publishers, worker, subscription, timer: in that order, so no
        frame arrives before everything it needs exists."""
        node_logic.check_command_line(command_line)
        self.config = self._declare_parameters()
        node_logic.check_command_line(command_line, {p.name: self.get_parameter(p.name).value
                                                     for p in node_logic.PARAMETERS})
        self.segmenter = node_logic.load_segmenter(self.config, warn=self.get_logger().warning)
        self.get_logger().info(f"loaded {self.segmenter.describe()}")
        self.processor = FrameProcessor(self.segmenter, self.config.overlay_alpha)
        self.stats = FrameStats()
        self.output_publishers = {name: self._output_publisher(name) for name in OUTPUT_TOPICS}
        self.diagnostics_publisher = self.create_publisher(DiagnosticArray, "/diagnostics", QoSProfile(depth=10))
        self.label_publisher = self._publish_label_info()
        self._slot = LatestFrame()
        self._worker = FrameWorker(self._slot, self.processor, self.stats, self.output_publishers, Image,
                                   warn=self.get_logger().warning, active=self.context.ok,
                                   max_pixels=self.config.max_input_pixels)
        self._worker.start()
        self._subscribe(node_logic.initial_reliability(self.config.reliability))
        # A steady clock: diagnostics keep coming while a replayed bag's /clock is paused.
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self.diagnostics_timer = self.create_timer(DIAGNOSTICS_PERIOD_S, self._on_timer, clock=steady)
        # Registered last: rclpy also calls these callbacks for the declarations above.
        self.add_on_set_parameters_callback(self._on_set_parameters)
        # The ready line: segment.launch.py starts a bag replay when it sees "listening on ".
        mode = ("auto: follows the publishers, best_effort until one appears" if self.config.reliability == "auto"
                else self.config.reliability)
        self.get_logger().info(f"listening on {self.subscription.topic_name} ({self._message_type.__name__}, "
                               f"{mode}); publishing {', '.join(OUTPUT_TOPICS)}")

    # ------------------------------------------------------------------ set-up
    def _declare_parameters(self) -> NodeConfig:
        values = {spec.name: self.declare_parameter(spec.name, spec.default, descriptor_for(spec)).value
                  for spec in node_logic.PARAMETERS}
        return NodeConfig.from_values(values)

    @property
    def _message_type(self) -> type:
        return CompressedImage if self.config.compressed else Image

    def _output_publisher(self, name: str) -> Any:
        events = PublisherEventCallbacks(incompatible_qos=lambda info, topic=name: self._on_incompatible(
            info, topic, we_publish=True))
        return self.create_publisher(Image, name, output_qos(), event_callbacks=events)

    def _subscribe(self, reliability: str) -> None:
        """(Re)create the image subscription with ``reliability``; KEEP_LAST 1 either way."""
        if self.subscription is not None:
            self.destroy_subscription(self.subscription)
        self.input_reliability = reliability
        events = SubscriptionEventCallbacks(incompatible_qos=lambda info: self._on_incompatible(
            info, self.config.input_topic, we_publish=False))
        self.subscription = self.create_subscription(self._message_type, self.config.input_topic, self._on_image,
                                                     image_qos(reliability), event_callbacks=events)

    def _publish_label_info(self) -> Optional[Any]:
        if LabelInfo is None:
            distro = os.environ.get("ROS_DISTRO", "<distro>")
            self.get_logger().warning("vision_msgs is not installed: label_info is not published "
                                      f"(install ros-{distro}-vision-msgs for class names)")
            return None
        publisher = self.create_publisher(LabelInfo, "label_info", latched_qos())
        classes = [VisionClass(class_id=i, class_name=name) for i, name in node_logic.label_map(self.segmenter)]
        publisher.publish(LabelInfo(header=self._header_now(), class_map=classes,
                                    threshold=node_logic.LABEL_THRESHOLD))
        return publisher

    def _header_now(self) -> Header:
        return Header(stamp=self.get_clock().now().to_msg(), frame_id="")

    # ------------------------------------------------------------------ callbacks
    def _on_image(self, msg: Any) -> None:
        """Executor thread: store the newest frame and count the one it replaces, if any."""
        self.stats.on_received(dropped_previous=self._slot.put(msg, time.monotonic()))

    def _on_set_parameters(self, parameters: list) -> SetParametersResult:
        for parameter in parameters:
            reason = node_logic.parameter_update_error(parameter.name, parameter.value)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
        for parameter in parameters:
            if parameter.name == "overlay_alpha":
                self.processor.overlay_alpha = parameter.value
                self.get_logger().info(f"overlay_alpha set to {self.processor.overlay_alpha}")
        return SetParametersResult(successful=True)

    def _on_timer(self) -> None:
        """Once a second: follow the publishers' QoS (reliability auto), then diagnostics."""
        self._follow_publishers()
        self._publish_diagnostics()

    def _follow_publishers(self) -> None:
        if self.config.reliability != "auto":
            return  # a fixed reliability never changes: no graph query
        topic = self.subscription.topic_name
        offered = [_POLICY_NAMES.get(info.qos_profile.reliability, node_logic.BEST_EFFORT)
                   for info in self.get_publishers_info_by_topic(topic)]
        wanted = node_logic.follow_publishers(self.config.reliability, self.input_reliability, offered)
        if wanted != self.input_reliability:
            self.get_logger().info(f"input QoS: {topic} now {wanted} (publishers offer {', '.join(offered)})")
            self._subscribe(wanted)

    def _on_incompatible(self, info: Any, topic: str, we_publish: bool) -> None:
        """One warning per topic and policy, naming both sides' QoS and the fix."""
        policy = _policy_name(info.last_policy_kind)
        if (topic, policy) in self._warned_incompatible:
            return
        if not we_publish and self.config.reliability == "auto" and policy == "reliability":
            return  # auto switches to the publishers' reliability within a second
        self._warned_incompatible.add((topic, policy))
        endpoint = self.output_publishers[topic] if we_publish else self.subscription
        resolved = endpoint.topic_name  # namespaced and remapped
        ours = describe_qos(endpoint.qos_profile)
        others = (self.get_subscriptions_info_by_topic if we_publish else self.get_publishers_info_by_topic)(resolved)
        theirs = [f"{_endpoint_owner(info)}: {describe_qos(info.qos_profile, remote=True)}" for info in others]
        self.get_logger().warning(node_logic.incompatible_qos_text(resolved, policy, ours, theirs, we_publish))

    def _publish_diagnostics(self) -> None:
        # Rebuilt each time: with backend auto at the camera's size, the backend is chosen on the first frame.
        report = self.stats.report(node_logic.static_diagnostics(self.segmenter, self.config))
        status = DiagnosticStatus(level=_LEVELS[report.level],
                                  name=f"{self.get_fully_qualified_name()}: segmentation",
                                  message=report.message, hardware_id=str(self.segmenter.device),
                                  values=[KeyValue(key=k, value=v) for k, v in report.values])
        self.diagnostics_publisher.publish(DiagnosticArray(header=self._header_now(), status=[status]))

    # ------------------------------------------------------------------ shutdown
    def destroy_node(self) -> None:
        """Stop the worker before the publishers it uses are destroyed."""
        if self._worker is not None:
            self._worker.stop()
        core_logger = logging.getLogger("eacnet_core")
        core_logger.removeHandler(self._log_bridge)
        core_logger.setLevel(self._core_level)
        super().destroy_node()


def _init_context(argv: list[str]) -> Context:
    context = Context()
    options = {} if SignalHandlerOptions is None else {"signal_handler_options": SignalHandlerOptions.NO}
    rclpy.init(args=argv, context=context, **options)
    return context


def _spin(node: SegmentNode, executor: SingleThreadedExecutor, stop: SignalStop) -> None:
    """Spin until a signal; an exception escaping a callback is logged, never fatal."""
    while not stop.requested and node.context.ok():
        try:
            executor.spin_once(timeout_sec=0.2)
        except (KeyboardInterrupt, ExternalShutdownException):
            return
        except Exception as exc:
            if not node.context.ok():
                return
            node.get_logger().error(f"callback failed: {type(exc).__name__}: {exc}", throttle_duration_sec=5.0)


def _teardown(node: Optional[SegmentNode], executor: Optional[SingleThreadedExecutor],
              context: Optional[Context]) -> None:
    """Worker and node first, then the executor, then the context: nothing is used after
    the middleware it needs is gone (Fast DDS also removes its shared-memory files)."""
    with contextlib.suppress(Exception):
        if executor is not None:
            executor.shutdown(timeout_sec=1.0)
    with contextlib.suppress(Exception):
        if node is not None:
            node.destroy_node()
    with contextlib.suppress(Exception):
        if context is not None:
            context.try_shutdown()


def _error(exc: BaseException) -> int:
    print(f"[eacnet] error: {node_logic.startup_error_text(exc)}", file=sys.stderr, flush=True)
    return 1


def run(argv: list[str], stop: SignalStop) -> int:
    """The process after the imports (see ``segment_main``): a start-up error is one
    ``[eacnet] error: ...`` line and exit code 1; a signal at any moment ends with 0."""
    context = node = executor = None
    status = 0
    try:
        context = _init_context(argv)
        node = SegmentNode(command_line=argv, context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        stop.raise_now = False
        if not stop.requested:
            _spin(node, executor, stop)
    except (Stopped, KeyboardInterrupt):
        pass
    except Exception as exc:  # start-up errors: one clear line, no traceback
        stop.raise_now = False
        status = _error(exc)
    finally:
        stop.raise_now = False  # a second signal during teardown must not interrupt it
        _teardown(node, executor, context)
    return status


def main(args: Optional[list] = None) -> int:
    """``segment_main.main``: signals are handled from before the heavy imports there."""
    from .segment_main import main as light_main

    return light_main(args)


if __name__ == "__main__":
    sys.exit(main())
