"""``segment_node``: semantic segmentation of a camera stream, the only module importing rclpy.

Topics (relative, so ``namespace`` and remapping give one node per camera):

* in:  ``image`` (sensor_msgs/Image) or, with ``transport: compressed``,
  ``image/compressed`` (sensor_msgs/CompressedImage); KEEP_LAST depth 1, reliability
  from the ``reliability`` parameter.
* out: ``mask`` (mono8 class ids), ``color_mask`` and ``overlay`` (bgr8), all at the input
  size with the input's header; ``label_info`` (vision_msgs/LabelInfo, transient_local);
  ``/diagnostics`` once a second.

Everything except the ROS wiring lives in ``node_logic`` (tested without ROS); the module
docstring there explains the threading: the subscription callback only stores the newest
message and counts overwritten ones as dropped; a worker thread runs the model.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Optional

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from . import node_logic
from .node_logic import FrameProcessor, FrameStats, FrameWorker, LatestFrame, NodeConfig, ParamSpec

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
    policy = ReliabilityPolicy.RELIABLE if reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=policy,
                      durability=DurabilityPolicy.VOLATILE)


def output_qos() -> QoSProfile:
    """Reliable, so both reliable (rviz's default) and best-effort subscribers receive."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)


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

    def __init__(self, **kwargs: Any):
        super().__init__(NODE_NAME, **kwargs)
        self._worker: Optional[FrameWorker] = None
        self._log_bridge = _RosLogHandler(self.get_logger())
        logging.getLogger("eacnet_core").addHandler(self._log_bridge)
        try:
            self._start()
        except BaseException:
            logging.getLogger("eacnet_core").removeHandler(self._log_bridge)
            raise

    def _start(self) -> None:
        """Parameters, model, publishers, worker, subscription, timer: in that order, so no
        frame arrives before everything it needs exists."""
        self.config = self._declare_parameters()
        self.segmenter = node_logic.load_segmenter(self.config, warn=self.get_logger().warning)
        self.get_logger().info(f"loaded {self.segmenter.describe()}")
        self.processor = FrameProcessor(self.segmenter, self.config.overlay_alpha)
        self.stats = FrameStats()
        self._static_diagnostics = node_logic.static_diagnostics(self.segmenter, self.config)
        self.output_publishers = {name: self.create_publisher(Image, name, output_qos()) for name in OUTPUT_TOPICS}
        self.diagnostics_publisher = self.create_publisher(DiagnosticArray, "/diagnostics", QoSProfile(depth=10))
        self.label_publisher = self._publish_label_info()
        self._slot = LatestFrame()
        self._worker = FrameWorker(self._slot, self.processor, self.stats, self.output_publishers, Image,
                                   warn=self.get_logger().warning, active=self.context.ok)
        self._worker.start()
        message_type = CompressedImage if self.config.compressed else Image
        self.subscription = self.create_subscription(message_type, self.config.input_topic, self._on_image,
                                                     image_qos(self.config.reliability))
        # A steady clock: diagnostics keep coming while a replayed bag's /clock is paused.
        self.diagnostics_timer = self.create_timer(DIAGNOSTICS_PERIOD_S, self._publish_diagnostics,
                                                   clock=Clock(clock_type=ClockType.STEADY_TIME))
        # Registered last: rclpy also calls these callbacks for the declarations above.
        self.add_on_set_parameters_callback(self._on_set_parameters)
        # The ready line: segment.launch.py starts a bag replay when it sees "listening on ".
        self.get_logger().info(f"listening on {self.subscription.topic_name} ({message_type.__name__}, "
                               f"{self.config.reliability}); publishing {', '.join(OUTPUT_TOPICS)}")

    # ------------------------------------------------------------------ set-up
    def _declare_parameters(self) -> NodeConfig:
        values = {spec.name: self.declare_parameter(spec.name, spec.default, descriptor_for(spec)).value
                  for spec in node_logic.PARAMETERS}
        return NodeConfig.from_values(values)

    def _publish_label_info(self) -> Optional[Any]:
        if LabelInfo is None:
            self.get_logger().warning("vision_msgs is not installed: label_info is not published "
                                      "(install ros-$ROS_DISTRO-vision-msgs for class names)")
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

    def _publish_diagnostics(self) -> None:
        report = self.stats.report(self._static_diagnostics)
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
        logging.getLogger("eacnet_core").removeHandler(self._log_bridge)
        super().destroy_node()


def main(args: Optional[list] = None) -> int:
    """Console script: a start-up error is one ``[eacnet] error: ...`` line and exit code 1;
    Ctrl-C (or a launch shutdown) ends cleanly with 0."""
    rclpy.init(args=args)
    try:
        node = SegmentNode()
    except KeyboardInterrupt:
        rclpy.try_shutdown()
        return 0
    except Exception as exc:  # start-up errors: one clear line, no traceback
        print(f"[eacnet] error: {node_logic.startup_error_text(exc)}", file=sys.stderr, flush=True)
        rclpy.try_shutdown()
        return 1
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
