"""A minimal test double of the parts of rclpy (and of the message packages) that
``eacnet_ros.node.segment_node`` uses, for the one thing real rclpy cannot show in the test
environment: the vision_msgs/LabelInfo the node latches on ``label_info``. vision_msgs is
not among the ROS 2 wheels the tests install, so real rclpy cannot create that publisher;
everything else the node does is tested on the real middleware (test_node_real.py,
test_node_real_process.py).

This is NOT a claim of ROS compatibility and not a ROS implementation: there is no
middleware, no executor and no discovery. It records what the node declares, creates and
publishes. Where rclpy behaviour matters to the node, the double copies it and says so:

* ``declare_parameter``: a ``-p name:=value`` given to ``rclpy.init`` (or a
  ``parameter_overrides`` entry) wins over the default; its type must match the default's
  (rclpy: InvalidParameterTypeException); integer/floating-point ranges are enforced
  (rclpy: InvalidParameterValueException). Declared with ``Parameter.Type.STRING_ARRAY``
  instead of a default, the value is None unless overridden by a list of strings.
* ``set_parameters``: read-only parameters are rejected with rclpy's own reason *before*
  the node's callbacks run; ranges next; then the on-set callbacks, newest first.
* Topic names are resolved against the namespace like rcl (relative names only).

Messages are rosbags' Humble dataclasses (vision_msgs registered from its .msg
definitions), so what the node builds is checked against the real field layouts by a CDR
round trip in the tests.
"""

from __future__ import annotations

import enum
import threading
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

STORE = get_typestore(Stores.ROS2_HUMBLE)
STORE.register(get_types_from_msg("uint16 class_id\nstring class_name\n", "vision_msgs/msg/VisionClass"))
STORE.register(get_types_from_msg("std_msgs/Header header\nvision_msgs/VisionClass[] class_map\nfloat32 threshold\n",
                                  "vision_msgs/msg/LabelInfo"))
MSG = STORE.types

# ---------------------------------------------------------------------------- rcl_interfaces.msg

@dataclass
class FloatingPointRange:
    from_value: float = 0.0
    to_value: float = 0.0
    step: float = 0.0


@dataclass
class IntegerRange:
    from_value: int = 0
    to_value: int = 0
    step: int = 0


@dataclass
class ParameterDescriptor:
    name: str = ""
    type: int = 0
    description: str = ""
    additional_constraints: str = ""
    read_only: bool = False
    dynamic_typing: bool = False
    floating_point_range: list = field(default_factory=list)
    integer_range: list = field(default_factory=list)


@dataclass
class SetParametersResult:
    successful: bool = False
    reason: str = ""


# ---------------------------------------------------------------------------- rclpy pieces

class InvalidParameterTypeException(Exception):
    pass


class InvalidParameterValueException(Exception):
    pass


class ExternalShutdownException(Exception):
    pass


@dataclass
class Parameter:
    name: str
    value: Any = None

    class Type(enum.Enum):
        """The one parameter type the node declares by type rather than by a default."""

        STRING_ARRAY = 9


class HistoryPolicy(enum.Enum):
    KEEP_LAST = 1
    KEEP_ALL = 2


class ReliabilityPolicy(enum.Enum):
    RELIABLE = 1
    BEST_EFFORT = 2


class DurabilityPolicy(enum.Enum):
    TRANSIENT_LOCAL = 1
    VOLATILE = 2


class QoSPolicyKind(enum.Enum):
    INVALID = 1
    DURABILITY = 2
    HISTORY = 4
    RELIABILITY = 5


class SignalHandlerOptions(enum.Enum):
    NO = 0
    SIGINT = 1
    SIGTERM = 2
    ALL = 3


class PublisherEventCallbacks:
    def __init__(self, **callbacks: Any):
        self.callbacks = callbacks


class SubscriptionEventCallbacks(PublisherEventCallbacks):
    pass


class SingleThreadedExecutor:
    """Only so the node module imports; the double has no executor."""

    def __init__(self, *, context: Any = None):
        self.context = context


class QoSProfile:
    def __init__(self, *, history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                 durability=DurabilityPolicy.VOLATILE):
        self.history, self.depth, self.reliability, self.durability = history, depth, reliability, durability


class ClockType(enum.Enum):
    ROS_TIME = 1
    SYSTEM_TIME = 2
    STEADY_TIME = 3


class _Time:
    def __init__(self, ns: int):
        self.nanoseconds = ns

    def to_msg(self):
        return MSG["builtin_interfaces/msg/Time"](sec=self.nanoseconds // 10**9, nanosec=self.nanoseconds % 10**9)


class Clock:
    def __init__(self, *, clock_type: ClockType = ClockType.SYSTEM_TIME):
        self.clock_type = clock_type

    def now(self) -> _Time:
        return _Time(time.monotonic_ns() if self.clock_type is ClockType.STEADY_TIME else time.time_ns())


class Logger:
    """Records (level, message); accepts rclpy's throttle_duration_sec/once keywords."""

    def __init__(self, name: str):
        self.name = name
        self.records: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def _log(self, level: str, message: str, **_kwargs: Any) -> None:
        with self._lock:
            self.records.append((level, message))

    def debug(self, message: str, **kwargs: Any) -> None:
        self._log("debug", message, **kwargs)

    def info(self, message: str, **kwargs: Any) -> None:
        self._log("info", message, **kwargs)

    def warning(self, message: str, **kwargs: Any) -> None:
        self._log("warning", message, **kwargs)

    def error(self, message: str, **kwargs: Any) -> None:
        self._log("error", message, **kwargs)

    def messages(self, level: str) -> list[str]:
        return [m for lvl, m in self.records if lvl == level]


class Context:
    def __init__(self):
        self._ok = True

    def ok(self) -> bool:
        return self._ok


class Publisher:
    def __init__(self, msg_type: type, topic: str, qos: QoSProfile):
        self.msg_type, self.topic, self.qos = msg_type, topic, qos
        self.subscription_count = 0
        self.sent: list = []
        self.destroyed = False

    def publish(self, msg: Any) -> None:
        assert isinstance(msg, self.msg_type), f"{type(msg).__name__} published on a {self.msg_type.__name__} topic"
        self.sent.append(msg)

    def get_subscription_count(self) -> int:
        return self.subscription_count


class Subscription:
    def __init__(self, msg_type: type, topic: str, topic_name: str, callback: Callable, qos: QoSProfile):
        self.msg_type, self.topic, self.topic_name, self.callback, self.qos = msg_type, topic, topic_name, callback, qos


class Timer:
    def __init__(self, period: float, callback: Callable, clock: Optional[Clock]):
        self.period, self.callback, self.clock = period, callback, clock


def _resolve(namespace: str, topic: str) -> str:
    return topic if topic.startswith("/") else f"{namespace.rstrip('/')}/{topic}"


_STATE = types.SimpleNamespace(context=None, overrides={})


class Node:
    def __init__(self, node_name: str, *, namespace: str = "/", parameter_overrides: Optional[list] = None,
                 context: Optional[Context] = None, **_kwargs: Any):
        self._name = node_name
        self._namespace = namespace if namespace.startswith("/") else "/" + namespace
        self._overrides = dict(_STATE.overrides)
        self._overrides.update({p.name: p.value for p in parameter_overrides or []})
        self._parameters: dict[str, Parameter] = {}
        self._descriptors: dict[str, ParameterDescriptor] = {}
        self._callbacks: list[Callable] = []
        self._logger = Logger(node_name)
        self.context = context or _STATE.context or Context()
        self.publishers: list[Publisher] = []
        self.subscriptions: list[Subscription] = []
        self.timers: list[Timer] = []
        self.destroyed = False

    # parameters
    def declare_parameter(self, name: str, value: Any = None, descriptor: Optional[ParameterDescriptor] = None):
        descriptor = descriptor or ParameterDescriptor()
        if isinstance(value, Parameter.Type):  # declared by type: no value unless overridden
            chosen = self._overrides.get(name)
            if chosen is not None and not (isinstance(chosen, list) and all(isinstance(v, str) for v in chosen)):
                raise InvalidParameterTypeException(f"Trying to set parameter '{name}' to '{chosen}', expecting "
                                                    "type 'STRING_ARRAY'")
            value = chosen
        chosen = self._overrides.get(name, value)
        if value is not None and type(chosen) is not type(value):
            raise InvalidParameterTypeException(f"Trying to set parameter '{name}' to '{chosen}' of type "
                                                f"'{type(chosen).__name__}', expecting type '{type(value).__name__}'")
        result = _check_range(name, chosen, descriptor)
        if not result.successful:
            raise InvalidParameterValueException(f"Invalid parameter value ({chosen}) for parameter '{name}'. "
                                                 f"Reason: {result.reason}")
        for callback in self._callbacks:
            result = callback([Parameter(name, chosen)])
            if not result.successful:
                raise InvalidParameterValueException(result.reason)
        self._parameters[name] = Parameter(name, chosen)
        self._descriptors[name] = descriptor
        return self._parameters[name]

    def get_parameter(self, name: str) -> Parameter:
        return self._parameters[name]

    def get_parameter_or(self, name: str, alternative: Parameter) -> Parameter:
        """rclpy: ``alternative`` for an undeclared parameter or one declared by type and not set."""
        parameter = self._parameters.get(name)
        return alternative if parameter is None or parameter.value is None else parameter

    def describe_parameter(self, name: str) -> ParameterDescriptor:
        return self._descriptors[name]

    def add_on_set_parameters_callback(self, callback: Callable) -> None:
        self._callbacks.insert(0, callback)

    def set_parameters(self, parameters: list) -> list[SetParametersResult]:
        return [self._set_one(p) for p in parameters]

    def _set_one(self, parameter: Parameter) -> SetParametersResult:
        descriptor = self._descriptors[parameter.name]
        if descriptor.read_only:
            return SetParametersResult(successful=False,
                                       reason=f"Trying to set a read-only parameter: {parameter.name}.")
        result = _check_range(parameter.name, parameter.value, descriptor)
        if not result.successful:
            return result
        for callback in self._callbacks:
            result = callback([parameter])
            if not result.successful:
                return result
        self._parameters[parameter.name] = parameter
        return SetParametersResult(successful=True)

    # entities
    def create_publisher(self, msg_type: type, topic: str, qos: QoSProfile, *,
                         event_callbacks: Optional[PublisherEventCallbacks] = None) -> Publisher:
        publisher = Publisher(msg_type, _resolve(self._namespace, topic), qos)
        self.publishers.append(publisher)
        return publisher

    def create_subscription(self, msg_type: type, topic: str, callback: Callable, qos: QoSProfile, *,
                            event_callbacks: Optional[SubscriptionEventCallbacks] = None) -> Subscription:
        subscription = Subscription(msg_type, topic, _resolve(self._namespace, topic), callback, qos)
        self.subscriptions.append(subscription)
        return subscription

    def destroy_subscription(self, subscription: Subscription) -> None:
        self.subscriptions.remove(subscription)

    def get_publishers_info_by_topic(self, topic: str) -> list:
        return []  # no graph: nobody publishes

    def resolve_topic_name(self, topic: str) -> str:
        return _resolve(self._namespace, topic)

    def create_timer(self, period: float, callback: Callable, callback_group: Any = None,
                     clock: Optional[Clock] = None) -> Timer:
        timer = Timer(period, callback, clock)
        self.timers.append(timer)
        return timer

    def get_logger(self) -> Logger:
        return self._logger

    def get_clock(self) -> Clock:
        return Clock(clock_type=ClockType.ROS_TIME)

    def get_name(self) -> str:
        return self._name

    def get_namespace(self) -> str:
        return self._namespace

    def get_fully_qualified_name(self) -> str:
        return _resolve(self._namespace, self._name)

    def destroy_node(self) -> None:
        self.destroyed = True


def _check_range(name: str, value: Any, descriptor: ParameterDescriptor) -> SetParametersResult:
    ranges = descriptor.floating_point_range if isinstance(value, float) else \
        descriptor.integer_range if isinstance(value, int) and not isinstance(value, bool) else []
    if ranges and not ranges[0].from_value <= value <= ranges[0].to_value:
        return SetParametersResult(successful=False, reason=f"Parameter {name} out of range. Min: "
                                   f"{ranges[0].from_value}, Max: {ranges[0].to_value}, value: {value}")
    return SetParametersResult(successful=True)


# ---------------------------------------------------------------------------- rclpy module functions

def init(*, args: Optional[list] = None) -> None:
    """Parses ``--ros-args -p name:=value`` (values as YAML, like rcl) into overrides."""
    _STATE.context = Context()
    _STATE.overrides = {}
    words = list(args or [])
    for i, word in enumerate(words):
        if word == "-p" and i + 1 < len(words):
            name, _, text = words[i + 1].partition(":=")
            _STATE.overrides[name] = yaml.safe_load(text) if text else ""


def ok() -> bool:
    return _STATE.context is not None and _STATE.context.ok()


def shutdown() -> None:
    if not ok():
        raise RuntimeError("Context must be initialized before it can be shutdown")
    _STATE.context._ok = False


def try_shutdown() -> None:
    if ok():
        shutdown()


# ---------------------------------------------------------------------------- module table

def _module(name: str, **attrs: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    return module


def modules(with_vision_msgs: bool = True) -> dict[str, types.ModuleType]:
    """The modules to place in ``sys.modules`` (a test's monkeypatch restores them)."""
    table = {
        "rclpy": _module("rclpy", init=init, ok=ok, shutdown=shutdown, try_shutdown=try_shutdown),
        "rclpy.node": _module("rclpy.node", Node=Node),
        "rclpy.context": _module("rclpy.context", Context=Context),
        "rclpy.qos": _module("rclpy.qos", QoSProfile=QoSProfile, HistoryPolicy=HistoryPolicy,
                             ReliabilityPolicy=ReliabilityPolicy, DurabilityPolicy=DurabilityPolicy,
                             QoSPolicyKind=QoSPolicyKind),
        "rclpy.clock": _module("rclpy.clock", Clock=Clock, ClockType=ClockType),
        "rclpy.executors": _module("rclpy.executors", ExternalShutdownException=ExternalShutdownException,
                                   SingleThreadedExecutor=SingleThreadedExecutor),
        "rclpy.event_handler": _module("rclpy.event_handler", PublisherEventCallbacks=PublisherEventCallbacks,
                                       SubscriptionEventCallbacks=SubscriptionEventCallbacks),
        "rclpy.signals": _module("rclpy.signals", SignalHandlerOptions=SignalHandlerOptions),
        "rclpy.parameter": _module("rclpy.parameter", Parameter=Parameter),
        "rcl_interfaces": _module("rcl_interfaces"),
        "rcl_interfaces.msg": _module("rcl_interfaces.msg", ParameterDescriptor=ParameterDescriptor,
                                      FloatingPointRange=FloatingPointRange, IntegerRange=IntegerRange,
                                      SetParametersResult=SetParametersResult),
        "sensor_msgs": _module("sensor_msgs"),
        "sensor_msgs.msg": _module("sensor_msgs.msg", Image=MSG["sensor_msgs/msg/Image"],
                                   CompressedImage=MSG["sensor_msgs/msg/CompressedImage"]),
        "std_msgs": _module("std_msgs"),
        "std_msgs.msg": _module("std_msgs.msg", Header=MSG["std_msgs/msg/Header"]),
        "diagnostic_msgs": _module("diagnostic_msgs"),
        "diagnostic_msgs.msg": _module("diagnostic_msgs.msg",
                                       DiagnosticArray=MSG["diagnostic_msgs/msg/DiagnosticArray"],
                                       DiagnosticStatus=MSG["diagnostic_msgs/msg/DiagnosticStatus"],
                                       KeyValue=MSG["diagnostic_msgs/msg/KeyValue"]),
    }
    table["rclpy"].node, table["rclpy"].qos = table["rclpy.node"], table["rclpy.qos"]
    table["rclpy"].clock, table["rclpy"].executors = table["rclpy.clock"], table["rclpy.executors"]
    table["rclpy"].parameter = table["rclpy.parameter"]
    table["rclpy"].context, table["rclpy"].signals = table["rclpy.context"], table["rclpy.signals"]
    table["rclpy"].event_handler = table["rclpy.event_handler"]
    if with_vision_msgs:
        table["vision_msgs"] = _module("vision_msgs")
        table["vision_msgs.msg"] = _module("vision_msgs.msg", LabelInfo=MSG["vision_msgs/msg/LabelInfo"],
                                           VisionClass=MSG["vision_msgs/msg/VisionClass"])
    else:  # None in sys.modules makes ``import vision_msgs.msg`` raise ImportError, as when it is not installed
        table["vision_msgs"] = None
        table["vision_msgs.msg"] = None
    return table
