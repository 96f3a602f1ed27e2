"""``segment_node``: semantic segmentation of camera streams, with
``segment_lifecycle_node`` the only modules importing rclpy.

Topics (relative, so ``namespace`` and remapping apply):

* in:  ``image`` (sensor_msgs/Image) or, with ``transport: compressed``,
  ``image/compressed`` (sensor_msgs/CompressedImage); KEEP_LAST depth 1, reliability
  from the ``reliability`` parameter (``auto``: follows the publishers, re-checked each second).
* out: ``mask`` (mono8 class ids), ``color_mask`` and ``overlay`` (bgr8), ``confidence``
  (mono8, 255 = softmax maximum 1.0), all at the input size with the input's header,
  reliable KEEP_LAST ``OUTPUT_DEPTH``, colour mask, overlay and confidence made only while
  subscribed; ``low_confidence`` (std_msgs/Float32, the smoothed frame score, 0 trustworthy
  .. 1 not, per frame while subscribed and ``frame_score`` is on); ``label_info``
  (vision_msgs/LabelInfo, transient_local); ``/diagnostics`` once a second, WARN while the
  smoothed frame score is above ``score_warn_above`` (until it falls under ``score_clear_below``).
* With ``cameras: [front, left]`` each camera ``C`` has the same topics under ``C/``
  (``front/image`` -> ``front/mask``, ...), served by one model (``scheduler``); the
  diagnostics then hold the total and one status per camera.

The process (``main``) owns SIGINT and SIGTERM: either ends it with exit code 0 at any
moment (while the model loads, at idle, while streaming), tearing down in order (worker,
node, context). Every start-up error, rcl's own included, is one ``[eacnet] error:`` line
and exit code 1.

Everything except the ROS wiring lives in the ROS-free modules beside this one (``params``,
``model``, ``qos``, ``pipeline``, ``worker``, ``scheduler``, ``stats``; tested without ROS);
the module docstring of ``worker`` explains the threading: the
subscription callback only stores the newest message and counts overwritten ones as
dropped; a worker thread runs the model.

``SegmentationMixin`` holds the node's work in the steps of a managed node (configure,
activate, deactivate, cleanup): ``SegmentNode`` takes the first two in its constructor,
``segment_lifecycle_node.SegmentLifecycleNode`` on its lifecycle transitions.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSPolicyKind, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Float32, Header

from .choice import EngineChoice
from .model import free_model_memory, label_info, load_segmenter, missing_vision_msgs_text
from .params import (
    PARAMETERS,
    SPECS,
    NodeConfig,
    ParamSpec,
    batch_frames,
    camera_topic,
    check_command_line,
    parameter_update_error,
    score_thresholds_error,
)
from .pipeline import FrameProcessor
from .process import SignalStop, Stopped, startup_error_text
from .qos import BEST_EFFORT, RELIABLE, endpoint_owner, follow_publishers, incompatible_qos_text, initial_reliability
from .scheduler import FrameScheduler, MultiCameraWorker
from .stats import ERROR, OK, WARN, CameraStats, static_diagnostics
from .steady import freeze_long_lived, steady_allocator
from .worker import FrameWorker

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
OUTPUT_TOPICS = ("mask", "color_mask", "overlay", "confidence")
#: The smoothed frame score (std_msgs/Float32), beside the images while ``frame_score`` is on.
SCORE_TOPIC = "low_confidence"
#: Output history. Measured on Fast DDS (docs/RESULTS.md, "Output QoS"): depth 1 lost up to
#: 29 of 40 colour masks to a reliable subscriber, because a new sample replaces one still
#: being repaired; depth 5 lost none. The cost is memory for 5 frames per output.
OUTPUT_DEPTH = 5
_POLICY_NAMES = {ReliabilityPolicy.RELIABLE: RELIABLE, ReliabilityPolicy.BEST_EFFORT: BEST_EFFORT}
_LEVELS = {OK: DiagnosticStatus.OK, WARN: DiagnosticStatus.WARN,
           ERROR: DiagnosticStatus.ERROR}


def descriptor_for(spec: ParamSpec, managed: bool = False) -> ParameterDescriptor:
    """ParameterDescriptor with description, allowed values and range; what
    ``ros2 param describe`` shows and what rclpy enforces (ranges, read-only). The managed
    node's start-up parameters are not read-only: they may change while it is unconfigured
    (its on-set callback refuses them in the other states)."""
    descriptor = ParameterDescriptor(description=spec.full_description(managed),
                                     additional_constraints=spec.constraints(),
                                     read_only=spec.read_only and not managed)
    if spec.int_range:
        descriptor.integer_range = [IntegerRange(from_value=spec.int_range[0], to_value=spec.int_range[1], step=1)]
    if spec.float_range:
        descriptor.floating_point_range = [FloatingPointRange(from_value=spec.float_range[0],
                                                              to_value=spec.float_range[1], step=0.0)]
    return descriptor


def as_declared_types(parameters: list) -> list:
    """rclpy's pre-set callback: an integer for a float parameter (``ros2 param set ...
    overlay_alpha 1``) becomes that float, so the stored type stays the declared one."""
    return [Parameter(p.name, Parameter.Type.DOUBLE, float(p.value))
            if isinstance(getattr(SPECS.get(p.name), "default", None), float) and type(p.value) is int else p
            for p in parameters]


def image_qos(reliability: str) -> QoSProfile:
    """Newest frame only: the middleware must not queue frames a slow model cannot use."""
    policy = ReliabilityPolicy.RELIABLE if reliability == RELIABLE else ReliabilityPolicy.BEST_EFFORT
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


@dataclass
class _Input:
    """One camera's image subscription and the reliability it was created with."""

    subscription: Any
    reliability: str


class SegmentationMixin:
    """Everything the node does, in the steps a managed node takes one at a time:
    ``_configure`` (parameters, model, publishers), ``_activate`` (worker, subscriptions,
    diagnostics), ``_deactivate`` and ``_cleanup``. ``SegmentNode`` runs the first two in
    its constructor; ``segment_lifecycle_node.SegmentLifecycleNode`` on its transitions.

    Mixed into an rclpy ``Node`` (``self``); call ``_init_segmentation`` right after the
    Node's constructor."""

    #: The managed node's start-up parameters may change while it is unconfigured.
    MANAGED = False

    def _init_segmentation(self) -> None:
        self.config: Optional[NodeConfig] = None
        self.segmenter = None
        self.processor: Optional[FrameProcessor] = None
        self.stats: Optional[CameraStats] = None
        self.output_publishers: dict[str, dict[str, Any]] = {}  # camera -> output name -> publisher
        self.diagnostics_publisher = None
        self.label_publisher = None
        self.diagnostics_timer = None
        self._inputs: dict[str, _Input] = {}  # camera -> its image subscription
        self._scheduler: Optional[FrameScheduler] = None
        self._worker: Optional[Any] = None  # FrameWorker (one camera) or MultiCameraWorker
        self._warned_incompatible: set = set()
        core_logger = logging.getLogger("eacnet_core")
        self._log_bridge = _RosLogHandler(self.get_logger())
        self._core_level = core_logger.level
        core_logger.addHandler(self._log_bridge)
        core_logger.setLevel(logging.INFO)  # the backend choice and load notes are INFO lines

    # ------------------------------------------------------------------ parameters
    def _declare_parameters(self, command_line: Sequence[str]) -> None:
        """Declare every parameter with a value (refusing bad or dropped ``-p`` values of
        ``command_line``), then register the callbacks (rclpy would call them for the
        declarations too)."""
        check_command_line(command_line)
        for spec in PARAMETERS:
            self._declare(spec)
        check_command_line(command_line, self._parameter_values())
        if hasattr(self, "add_pre_set_parameters_callback"):  # Iron and later
            self.add_pre_set_parameters_callback(as_declared_types)
        self.add_on_set_parameters_callback(self._on_set_parameters)

    def _declare(self, spec: ParamSpec) -> None:
        """Declare ``spec`` so that it holds a value from the start: rclpy's get_parameters
        service answers nothing for a request that names a parameter without one, so
        ``ros2 param dump``, rqt_reconfigure and Foxglove would see an empty node.

        * A string array: rclpy types an empty list as a byte array, so it is declared by
          type, writable for a moment, given its default unless ``-p`` set it, and then
          its real descriptor (read-only for the plain node).
        * A float: dynamically typed, so ``-p overlay_alpha:=1`` (an integer to rcl) is
          accepted; an integer is then stored as the float it means."""
        descriptor = descriptor_for(spec, self.MANAGED)
        if isinstance(spec.default, list):
            writable = descriptor_for(spec, self.MANAGED)
            writable.read_only = False
            self.declare_parameter(spec.name, Parameter.Type.STRING_ARRAY, writable)
            if self.get_parameter_or(spec.name).type_ == Parameter.Type.NOT_SET:  # no -p value
                self.set_parameters([Parameter(spec.name, Parameter.Type.STRING_ARRAY, list(spec.default))])
            descriptor.type = Parameter.Type.STRING_ARRAY.value
            self.set_descriptor(spec.name, descriptor)
        elif isinstance(spec.default, float):
            descriptor.dynamic_typing = True
            value = self.declare_parameter(spec.name, spec.default, descriptor).value
            if isinstance(value, int) and not isinstance(value, bool):
                self.set_parameters([Parameter(spec.name, Parameter.Type.DOUBLE, float(value))])
        else:
            self.declare_parameter(spec.name, spec.default, descriptor)

    def _parameter_values(self) -> dict[str, Any]:
        """The node's parameters now."""
        return {spec.name: self.get_parameter(spec.name).value for spec in PARAMETERS}

    def _lifecycle_state(self) -> Optional[str]:
        """The managed node's state label for parameter changes; None for the plain node."""
        return None

    def _on_set_parameters(self, parameters: list) -> SetParametersResult:
        state = self._lifecycle_state()
        for parameter in parameters:
            reason = parameter_update_error(parameter.name, parameter.value, state)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
        thresholds = {name: self.get_parameter(name).value for name in ("score_warn_above", "score_clear_below")}
        thresholds.update({p.name: float(p.value) for p in parameters if p.name in thresholds})
        reason = score_thresholds_error(thresholds["score_warn_above"], thresholds["score_clear_below"])
        if reason:
            return SetParametersResult(successful=False, reason=reason)
        for parameter in parameters:
            if parameter.name == "overlay_alpha" and self.processor is not None:
                self.processor.overlay_alpha = parameter.value
                self.get_logger().info(f"overlay_alpha set to {self.processor.overlay_alpha}")
        if any(p.name in thresholds for p in parameters) and self.stats is not None and self.config is not None:
            self.stats.configure_score(self.config.score_window, thresholds["score_warn_above"],
                                       thresholds["score_clear_below"])
            self.get_logger().info(f"frame score: WARN above {thresholds['score_warn_above']}, cleared under "
                                   f"{thresholds['score_clear_below']}")
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ configure / cleanup
    def _configure(self) -> None:
        """Validate the parameters, load and warm the model (once, for every camera), create
        the publishers. Raises on any error, having created nothing that outlives it."""
        config = NodeConfig.from_values(self._parameter_values())
        segmenter = load_segmenter(config, warn=self.get_logger().warning)
        self.config, self.segmenter = config, segmenter
        self.get_logger().info(f"loaded {segmenter.describe()}")
        self.processor = FrameProcessor(segmenter, config.overlay_alpha,
                                        EngineChoice(segmenter, warn=self.get_logger().warning))
        self.output_publishers = {camera: {name: self._output_publisher(camera, name) for name in OUTPUT_TOPICS}
                                  for camera in config.camera_names}
        if config.frame_score:
            for camera, publishers in self.output_publishers.items():
                publishers[SCORE_TOPIC] = self.create_publisher(Float32, camera_topic(camera, SCORE_TOPIC),
                                                                output_qos())
        self.diagnostics_publisher = self.create_publisher(DiagnosticArray, "/diagnostics", QoSProfile(depth=10))
        self.label_publisher = self._publish_label_info()

    def _cleanup(self) -> None:
        """Destroy the publishers and free the model (back to the state before configure)."""
        for publishers in self.output_publishers.values():
            for publisher in publishers.values():
                self.destroy_publisher(publisher)
        for publisher in (self.diagnostics_publisher, self.label_publisher):
            if publisher is not None:
                self.destroy_publisher(publisher)
        if self.processor is not None and self.processor.choice is not None:
            self.processor.choice.close()
        device = str(self.segmenter.device) if self.segmenter is not None else "cpu"
        self.output_publishers, self.diagnostics_publisher, self.label_publisher = {}, None, None
        self.segmenter = self.processor = self.config = None
        free_model_memory(device)

    # ------------------------------------------------------------------ activate / deactivate
    def _activate(self) -> None:
        """Worker, then subscriptions, then the diagnostics timer: no frame arrives before
        everything it needs exists. Ends with the ready line."""
        config = self.config
        self.stats = CameraStats(config.camera_names)
        self.stats.configure_score(config.score_window, self.get_parameter("score_warn_above").value,
                                   self.get_parameter("score_clear_below").value)
        self._scheduler = FrameScheduler(config.camera_names)
        pipelines = {camera: self._pipeline(camera) for camera in config.camera_names}
        batched = batch_frames(config.batch_cameras, self.segmenter.device.type)
        self._worker = (MultiCameraWorker(self._scheduler, pipelines, self.processor, batched,
                                          warn=self.get_logger().warning)
                        if config.cameras else pipelines[""])
        self._worker.start()
        for camera in config.camera_names:
            self._subscribe(camera, initial_reliability(config.reliability))
        # A steady clock: diagnostics keep coming while a replayed bag's /clock is paused.
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self.diagnostics_timer = self.create_timer(DIAGNOSTICS_PERIOD_S, self._on_timer, clock=steady)
        # The ready line: segment.launch.py starts a bag replay when it sees "listening on ".
        mode = ("auto: follows the publishers, best_effort until one appears" if config.reliability == "auto"
                else config.reliability)
        topics = ", ".join(entry.subscription.topic_name for entry in self._inputs.values())
        outputs = ", ".join(OUTPUT_TOPICS) if not config.cameras else (
            f"{', '.join(OUTPUT_TOPICS)} under each of {', '.join(config.cameras)}; frames "
            + ("batched" if batched else "one by one"))
        self.get_logger().info(f"listening on {topics} ({self._message_type.__name__}, {mode}); publishing {outputs}")

    def _pipeline(self, camera: str) -> FrameWorker:
        """``camera``'s decode/segment/publish steps, counting into its statistics."""
        warn = self.get_logger().warning
        return FrameWorker(self._scheduler.slot(camera), self.processor, self.stats.camera(camera),
                           self.output_publishers[camera], Image,
                           warn=warn if not camera else (lambda text, c=camera: warn(f"camera {c}: {text}")),
                           active=self.context.ok, max_pixels=self.config.max_input_pixels,
                           score=self.config.frame_score, float_type=Float32)

    def _deactivate(self) -> None:
        """Stop subscribing and publishing: subscriptions and timer go, the worker thread
        ends (nothing runs until the next activate)."""
        for entry in self._inputs.values():
            self.destroy_subscription(entry.subscription)
        self._inputs = {}
        if self.diagnostics_timer is not None:
            self.destroy_timer(self.diagnostics_timer)
            self.diagnostics_timer = None
        if self._worker is not None:
            self._worker.stop()
        self._worker = self._scheduler = None

    # ------------------------------------------------------------------ set-up helpers
    @property
    def _message_type(self) -> type:
        return CompressedImage if self.config.compressed else Image

    def _output_publisher(self, camera: str, name: str) -> Any:
        events = PublisherEventCallbacks(incompatible_qos=lambda info: self._on_incompatible(info, camera, name))
        return self.create_publisher(Image, camera_topic(camera, name), output_qos(),
                                     event_callbacks=events)

    def _subscribe(self, camera: str, reliability: str) -> None:
        """(Re)create ``camera``'s image subscription with ``reliability``; KEEP_LAST 1 either way."""
        if camera in self._inputs:
            self.destroy_subscription(self._inputs.pop(camera).subscription)
        events = SubscriptionEventCallbacks(incompatible_qos=lambda info: self._on_incompatible(info, camera, None))
        subscription = self.create_subscription(self._message_type, self.config.camera_input(camera),
                                                lambda msg: self._on_image(camera, msg), image_qos(reliability),
                                                event_callbacks=events)
        self._inputs[camera] = _Input(subscription, reliability)

    def _publish_label_info(self) -> Optional[Any]:
        if LabelInfo is None:
            self.get_logger().warning(missing_vision_msgs_text(os.environ.get("ROS_DISTRO")))
            return None
        publisher = self.create_publisher(LabelInfo, "label_info", latched_qos())
        publisher.publish(label_info(LabelInfo, VisionClass, self._header_now(), self.segmenter))
        return publisher

    def _header_now(self) -> Header:
        return Header(stamp=self.get_clock().now().to_msg(), frame_id="")

    # ------------------------------------------------------------------ callbacks
    def _on_image(self, camera: str, msg: Any) -> None:
        """Executor thread: store the camera's newest frame and count the one it replaces."""
        scheduler, stats = self._scheduler, self.stats
        if scheduler is not None:
            stats.camera(camera).on_received(dropped_previous=scheduler.put(camera, msg, time.monotonic()))

    def _on_timer(self) -> None:
        """Once a second: follow the publishers' QoS (reliability auto), then diagnostics."""
        self._follow_publishers()
        self._publish_diagnostics()

    def _follow_publishers(self) -> None:
        if self.config.reliability != "auto":
            return  # a fixed reliability never changes: no graph query
        for camera, entry in list(self._inputs.items()):
            topic = entry.subscription.topic_name
            offered = [_POLICY_NAMES.get(info.qos_profile.reliability, BEST_EFFORT)
                       for info in self.get_publishers_info_by_topic(topic)]
            wanted = follow_publishers(self.config.reliability, entry.reliability, offered)
            if wanted != entry.reliability:
                self.get_logger().info(f"input QoS: {topic} now {wanted} (publishers offer {', '.join(offered)})")
                self._subscribe(camera, wanted)

    def _on_incompatible(self, info: Any, camera: str, output: Optional[str]) -> None:
        """One warning per topic and policy, naming both sides' QoS and the fix; ``output``:
        the output's name, None for the camera's input."""
        we_publish = output is not None
        policy = _policy_name(info.last_policy_kind)
        if not we_publish and self.config.reliability == "auto" and policy == "reliability":
            return  # auto switches to the publishers' reliability within a second
        endpoint = (self.output_publishers.get(camera, {}).get(output) if we_publish
                    else getattr(self._inputs.get(camera), "subscription", None))
        if endpoint is None:
            return  # destroyed meanwhile (deactivate, cleanup)
        resolved = endpoint.topic_name  # namespaced and remapped
        if (resolved, policy) in self._warned_incompatible:
            return
        self._warned_incompatible.add((resolved, policy))
        ours = describe_qos(endpoint.qos_profile)
        others = (self.get_subscriptions_info_by_topic if we_publish else self.get_publishers_info_by_topic)(resolved)
        theirs = [f"{endpoint_owner(info.node_name, info.node_namespace)}: "
                  f"{describe_qos(info.qos_profile, remote=True)}" for info in others]
        self.get_logger().warning(incompatible_qos_text(resolved, policy, ours, theirs, we_publish))

    def _publish_diagnostics(self) -> None:
        """The total, then (several cameras) one status per camera: '<node>: segmentation'
        and '<node>: segmentation <camera>'. Rebuilt each time: with backend auto at the
        camera's size, the backend is chosen on the first frame."""
        reports = self.stats.report(static_diagnostics(self.segmenter, self.config))
        name = f"{self.get_fully_qualified_name()}: segmentation"
        statuses = [DiagnosticStatus(level=_LEVELS[report.level], name=f"{name} {camera}".rstrip(),
                                     message=report.message, hardware_id=str(self.segmenter.device),
                                     values=[KeyValue(key=k, value=v) for k, v in report.values])
                    for camera, report in reports]
        self.diagnostics_publisher.publish(DiagnosticArray(header=self._header_now(), status=statuses))

    # ------------------------------------------------------------------ shutdown
    def _after_error(self, what: str, step: Callable[[], None]) -> None:
        """A clean-up step after an error that is the one to report: a failure of its own is
        logged as a warning and never raised over it."""
        try:
            step()
        except Exception as exc:
            self.get_logger().warning(f"after the error above, {what} failed too: {type(exc).__name__}: {exc}")

    def _release(self) -> None:
        """Stop the worker (before the publishers it uses are destroyed) and detach the
        eacnet_core log bridge; for destroy_node."""
        if self._worker is not None:
            self._worker.stop()
        if self.processor is not None and self.processor.choice is not None:
            self.processor.choice.close()  # a choice under way must not outlive the node
        core_logger = logging.getLogger("eacnet_core")
        core_logger.removeHandler(self._log_bridge)
        core_logger.setLevel(self._core_level)


class SegmentNode(SegmentationMixin, Node):
    """Subscribes to camera images and publishes mask, colour mask, overlay, labels and
    diagnostics. Construction loads and warms the model; it raises on any start-up error."""

    def __init__(self, command_line: Sequence[str] = (), **kwargs: Any):
        """``command_line``: the process's arguments, to refuse ``-p`` values that are
        invalid or that rcl dropped; ``kwargs`` go to rclpy's Node (context, overrides)."""
        super().__init__(NODE_NAME, **kwargs)
        self._init_segmentation()
        try:
            self._declare_parameters(command_line)
            self._configure()
            self._activate()
        except BaseException:
            self._after_error("destroying the node", self.destroy_node)  # the start-up error is reported
            raise

    def destroy_node(self) -> None:
        """Stop the worker before the publishers it uses are destroyed."""
        self._release()
        super().destroy_node()


def _init_context(argv: list[str]) -> Context:
    context = Context()
    options = {} if SignalHandlerOptions is None else {"signal_handler_options": SignalHandlerOptions.NO}
    rclpy.init(args=argv, context=context, **options)
    return context


def _spin(node: Node, executor: SingleThreadedExecutor, stop: SignalStop) -> None:
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


def _teardown(node: Optional[Node], executor: Optional[SingleThreadedExecutor], context: Optional[Context],
              warn: Optional[Callable[[str], None]] = None) -> None:
    """Worker and node first, then the executor, then the context: nothing is used after
    the middleware it needs is gone (Fast DDS also removes its shared-memory files). A step
    that fails is logged as a warning and the next one still runs: the process is ending,
    but a failure here can leave shared-memory files or a stuck thread behind."""
    warn = warn or rclpy.logging.get_logger(NODE_NAME).warning
    steps = (("shutting the executor down", executor, lambda: executor.shutdown(timeout_sec=1.0)),
             ("destroying the node", node, lambda: node.destroy_node()),
             ("shutting the ROS context down", context, lambda: context.try_shutdown()))
    for what, target, step in steps:
        if target is None:
            continue
        try:
            step()
        except Exception as exc:
            warn(f"teardown: {what} failed: {type(exc).__name__}: {exc}")


def _error(exc: BaseException) -> int:
    print(f"[eacnet] error: {startup_error_text(exc)}", file=sys.stderr, flush=True)
    return 1


def run(argv: list[str], stop: SignalStop, node_class: Optional[Callable[..., Node]] = None) -> int:
    """The process after the imports (see ``main``): a start-up error is one
    ``[eacnet] error: ...`` line and exit code 1; a signal at any moment ends with 0.
    ``node_class``: SegmentNode, or the managed node of ``segment_lifecycle_node``."""
    context = node = executor = None
    status = 0
    try:
        steady_allocator()  # before any frame buffer exists (steady.py)
        context = _init_context(argv)
        node = (node_class or SegmentNode)(command_line=argv, context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        freeze_long_lived()  # what exists now lives as long as the process (steady.py)
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
