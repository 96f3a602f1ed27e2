"""Everything the segmentation node does that does not need rclpy.

``segment_node.py`` is a thin shell: it declares the parameters listed here, creates the
subscription and publishers, and hands messages to the objects below. Keeping the logic
here means parameter validation, the per-frame pipeline, drop counting, diagnostics and
the label map are tested on any machine, with rosbags' message classes standing in for
the rclpy ones (the codec is duck-typed, see ``codec.py``).

Threading model (the reason for ``LatestFrame`` and ``FrameWorker``):

* The subscription callback runs on the executor thread and only calls
  ``LatestFrame.put``: it stores the newest message and, if the previous one was never
  taken, counts it as dropped. It never waits for the model.
* ``FrameWorker`` is a plain daemon thread that takes the newest message, decodes,
  segments, encodes and publishes. Inference (torch, onnxruntime, OpenCV) releases the
  GIL, so the executor keeps receiving and counting while a frame is being processed.

Why a dedicated thread rather than a timer or the subscription callback itself:

* Doing the work in the subscription callback would leave the backlog to the middleware's
  KEEP_LAST(1) queue: frames would still be dropped, but silently, and nobody could count
  them. Drops must be visible in diagnostics.
* A polling timer adds up to one period of latency per frame and burns wake-ups when no
  images come; the worker waits on a condition variable and starts the moment a frame
  arrives.
* A thread is independent of the executor: it works under ``rclpy.spin`` (single
  threaded) without callback groups, and the diagnostics timer and parameter services
  stay responsive while a slow model runs. rclpy publishers may be used from any thread.

What cannot be counted: a message replaced inside the middleware's depth-1 queue before
the executor ran the callback at all. The callback is a few microseconds, so that needs an
executor starved for a whole frame interval.
"""

from __future__ import annotations

import gc
import math
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol, Union

import numpy as np

from eacnet_core.inference import BACKENDS, Segmenter, SegmenterOptions, return_freed_memory
from eacnet_core.models.registry import model_for
from eacnet_core.runtime import PRECISIONS, device_or_reason

from . import codec

Scalar = Union[bool, int, float, str]
ParamValue = Union[Scalar, list]

# ---------------------------------------------------------------------------- parameters

_OPTIONS = SegmenterOptions()  # the Segmenter's defaults are the node's defaults: one place each
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
MAX_INFERENCE_SIZE = 8192
DEFAULT_MAX_INPUT_PIXELS = 3840 * 2160
#: A camera name: one or more ROS name tokens (letters, digits, underscores, not starting with
#: a digit) joined by '/'. Relative, so the node's namespace applies to its topics.
CAMERA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*")


@dataclass(frozen=True)
class ParamSpec:
    """One node parameter: what ``declare_parameter`` needs and what validation checks.

    ``runtime`` parameters may change while the node runs; all others are read-only,
    because changing them means rebuilding the model, the subscription or the QoS."""

    name: str
    default: ParamValue  # a list: a string array (never mutated)
    description: str
    choices: tuple[str, ...] = ()
    int_range: Optional[tuple[int, int]] = None
    float_range: Optional[tuple[float, float]] = None
    runtime: bool = False

    @property
    def read_only(self) -> bool:
        return not self.runtime

    def constraints(self) -> str:
        """Human-readable allowed values (ParameterDescriptor.additional_constraints)."""
        if self.choices:
            return "one of: " + ", ".join(self.choices)
        if isinstance(self.default, list):
            return "list of names, e.g. [front, left]"
        if self.int_range:
            return f"integer in [{self.int_range[0]}, {self.int_range[1]}]"
        if self.float_range:
            return f"number in [{self.float_range[0]}, {self.float_range[1]}]"
        return ""

    def full_description(self, managed: bool = False) -> str:
        """The description with when a change applies; ``managed``: for the lifecycle node,
        whose start-up parameters are read by configure and may change while unconfigured."""
        if self.runtime:
            note = "Changes apply at run time."
        elif managed:
            note = "Read by configure: set it while the node is unconfigured."
        else:
            note = "Read-only: restart the node to change it."
        return f"{self.description} {note}"


PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec("backbone", "erfnet", "Network backbone; with 'attention' it selects the registry model.",
              choices=("erfnet", "dabnet")),
    ParamSpec("attention", "eac", "Attention head on the backbone's coarse logits (dabnet has no nonlocal).",
              choices=("eac", "nonlocal", "none")),
    ParamSpec("weights", "", "Checkpoint file written by `eacnet train`; empty: the packaged default weights "
                             "of the chosen model."),
    ParamSpec("device", _OPTIONS.device, "Where the model runs; auto and an unavailable cuda fall back to CPU.",
              choices=("auto", "cpu", "cuda", "cuda:N")),
    ParamSpec("precision", _OPTIONS.precision, "Arithmetic precision; auto: fp16 on CUDA, fp32 on CPU; int8: "
              "statically quantised onnxruntime model on the CPU (built at start-up from int8_calibration frames "
              "and cached; ~1.8x faster for erfnet models, slower for dabnet ones on our CPU: docs/RESULTS.md).",
              choices=PRECISIONS),
    ParamSpec("int8_calibration", _OPTIONS.calibration_data, "precision int8: folder of camera frames (or a "
              "CamVid folder: its train/ split) that calibrates the quantisation; empty: $EACNET_DATA or "
              "../shared/data/CamVid when present. Only read when the int8 model is not cached yet."),
    ParamSpec("backend", _OPTIONS.backend, "Inference engine; auto: on CPU the fastest of torch (NHWC, NCHW), "
              "onnxruntime and openvino (when installed), measured at start-up; on CUDA the faster of torch and "
              "torch_compiled (torch.compile + CUDA graphs, compiled at start-up).", choices=BACKENDS),
    ParamSpec("inference_height", _OPTIONS.inference_height, "Network input height in pixels; 0 (with "
              "inference_width 0): the image's own size.", int_range=(0, MAX_INFERENCE_SIZE)),
    ParamSpec("inference_width", _OPTIONS.inference_width, "Network input width in pixels; 0 (with "
              "inference_height 0): the image's own size.", int_range=(0, MAX_INFERENCE_SIZE)),
    ParamSpec("threads", _OPTIONS.threads, "CPU threads for inference (torch, onnxruntime); 0: the library "
              "default (every core). On a robot whose CPU also runs other nodes, 1-2 avoids the thread contention "
              "that made inference up to 10x slower in our measurements.", int_range=(0, 256)),
    ParamSpec("overlay_alpha", 0.5, "Weight of the colour mask in the overlay image.", float_range=(0.0, 1.0),
              runtime=True),
    ParamSpec("reliability", "auto", "QoS reliability of the image subscription. auto: follow the publishers "
              "on the topic (reliable when all of them are, best_effort otherwise), as ros2 bag record does; "
              "reliable: loses no fragment of large frames but cannot match best-effort publishers; best_effort: "
              "matches every publisher, but Fast DDS loses most frames over ~512 KiB (640x480 bgr8) from it.",
              choices=("auto", "reliable", "best_effort")),
    ParamSpec("max_input_pixels", DEFAULT_MAX_INPUT_PIXELS, "Largest accepted input frame, in pixels "
              "(width x height, also the size a compressed frame's header claims); larger frames are counted as "
              "bad and skipped, never decoded. Default 3840x2160.", int_range=(1, MAX_INFERENCE_SIZE ** 2)),
    ParamSpec("transport", "raw", "raw: sensor_msgs/Image on 'image'; compressed: sensor_msgs/CompressedImage "
              "(jpeg, png) on 'image/compressed'.", choices=("raw", "compressed")),
    ParamSpec("cameras", [], "Camera names, one model for all: for each name C the node reads C/image "
              "(C/image/compressed) and publishes C/mask, C/color_mask and C/overlay, relative to its namespace, "
              "serving the cameras' newest frames in turn. Empty: one camera on image, mask, ..."),
    ParamSpec("batch_cameras", "auto", "With several cameras, run the frames waiting from several cameras in one "
              "forward pass: more throughput, more latency. auto: on CUDA only (on a 2-core CPU it gave 12-21% more "
              "frames for 30-130% more latency, docs/RESULTS.md); always / never force it. onnxruntime runs frames "
              "one by one either way.", choices=("auto", "always", "never")),
)
SPECS: dict[str, ParamSpec] = {p.name: p for p in PARAMETERS}


class ParameterError(ValueError):
    """Invalid node parameters; the message names every bad one and what it accepts."""


@dataclass(frozen=True)
class NodeConfig:
    """The validated parameters of one node run (defaults: ``PARAMETERS``, via ``from_values({})``)."""

    backbone: str
    attention: str
    weights: str
    device: str
    precision: str
    int8_calibration: str
    backend: str
    inference_height: int
    inference_width: int
    threads: int
    overlay_alpha: float
    reliability: str
    max_input_pixels: int
    transport: str
    cameras: tuple[str, ...] = ()
    batch_cameras: str = "auto"

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> NodeConfig:
        """Validate parameter values (missing ones take their defaults) and report every
        problem at once, so a bad launch file is fixed in one go."""
        merged = {p.name: values.get(p.name, p.default) for p in PARAMETERS}
        errors = [e for p in PARAMETERS for e in [check_value(p, merged[p.name])] if e]
        if not errors:
            errors += _cross_check(merged)
        if errors:
            raise ParameterError("invalid parameters: " + "; ".join(errors))
        merged["overlay_alpha"] = float(merged["overlay_alpha"])
        merged["weights"] = os.path.expanduser(merged["weights"]) if merged["weights"] else ""
        merged["int8_calibration"] = os.path.expanduser(merged["int8_calibration"]) if merged["int8_calibration"] \
            else ""
        merged["device"] = merged["device"].lower()
        merged["cameras"] = tuple(merged["cameras"])
        return cls(**merged)

    @property
    def model_name(self) -> str:
        return model_for(self.backbone, self.attention)

    @property
    def compressed(self) -> bool:
        return self.transport == "compressed"

    @property
    def input_topic(self) -> str:
        """Relative, so namespaces and remapping apply."""
        return "image/compressed" if self.compressed else "image"

    @property
    def camera_names(self) -> tuple[str, ...]:
        """The cameras served; ``("",)`` for the single camera on the node's own topics."""
        return self.cameras or ("",)

    def camera_input(self, camera: str) -> str:
        return camera_topic(camera, self.input_topic)


def camera_topic(camera: str, name: str) -> str:
    """``front/mask`` for camera ``front``; ``mask`` for the single camera (``""``)."""
    return f"{camera}/{name}" if camera else name


def check_value(spec: ParamSpec, value: Any) -> Optional[str]:
    """Why ``value`` is not acceptable for ``spec``, or None when it is."""
    expected = type(spec.default)
    if expected is list:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            return f"{spec.name}={value!r} must be a list of strings, e.g. [front, left]"
        return camera_names_error(value)
    if expected is float:
        ok_type = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok_type = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
    if not ok_type:
        return f"{spec.name}={value!r} must be a {expected.__name__}"
    if spec.name == "device":
        return None if DEVICE_PATTERN.fullmatch(value.lower()) else f"device={value!r} must be {spec.constraints()}"
    if spec.choices and value not in spec.choices:
        return f"{spec.name}={value!r} must be {spec.constraints()}"
    bounds = spec.int_range or spec.float_range
    if bounds and not (bounds[0] <= value <= bounds[1] and not (isinstance(value, float) and math.isnan(value))):
        return f"{spec.name}={value!r} must be a {spec.constraints()}"
    return None


def camera_names_error(names: Sequence[str]) -> Optional[str]:
    """Why these camera names cannot become topic names, or None when they can."""
    bad = [name for name in names if not CAMERA_NAME.fullmatch(name)]
    if bad:
        return (f"cameras: {', '.join(map(repr, bad))} not valid: each name is letters, digits and underscores "
                "(not starting with a digit), parts joined by '/', relative (no leading '/')")
    repeated = sorted({name for name in names if list(names).count(name) > 1})
    if repeated:
        return f"cameras: {', '.join(repeated)} given more than once"
    return None


def batch_frames(mode: str, device_type: str) -> bool:
    """Whether the frames of several cameras go through the model together (``batch_cameras``).
    auto: on CUDA only. On this project's 2-core CPU a batch raised the throughput by 12-21%
    but the latency by 30-130% (docs/RESULTS.md, "Several cameras, one model"): a trade a
    robot should choose (always), not get by default. The GPU measurement is pending."""
    return mode == "always" or (mode == "auto" and device_type == "cuda")


def _cross_check(values: Mapping[str, Any]) -> list[str]:
    errors = []
    try:
        model_for(values["backbone"], values["attention"])
    except ValueError as exc:
        errors.append(str(exc))
    if (values["inference_height"] == 0) != (values["inference_width"] == 0):
        errors.append(f"inference_height={values['inference_height']} and inference_width="
                      f"{values['inference_width']} must both be positive or both 0 (the image's own size)")
    return errors


def command_line_overrides(argv: Sequence[str]) -> dict[str, tuple[str, Any]]:
    """This node's parameters given as ``-p NAME:=VALUE`` (or ``--param``) after ``--ros-args``:
    name -> (the text as given, the value parsed as rcl parses it: YAML). Later ones win."""
    import yaml

    found: dict[str, tuple[str, Any]] = {}
    in_ros_args, expect_value = False, False
    for token in argv:
        if token == "--ros-args":
            in_ros_args = True
        elif token == "--":
            in_ros_args = False
        elif in_ros_args and token in ("-p", "--param"):
            expect_value = True
            continue
        elif in_ros_args and expect_value and ":=" in token:
            name, text = token.split(":=", 1)
            name = name.rsplit(":", 1)[-1]  # a node-name prefix, if any
            if name in SPECS:
                try:
                    value = yaml.safe_load(text) if text else ""
                except yaml.YAMLError:
                    value = text
                found[name] = (token, value)
        expect_value = False
    return found


def check_command_line(argv: Sequence[str], declared: Optional[Mapping[str, Any]] = None) -> None:
    """Refuse ``-p`` values of the wrong type or range, and (given the values the node
    actually declared) ones that rcl silently dropped: when a ``--params-file`` sets the
    same parameter with another type, rcl keeps the file's value without a word, so
    ``-p threads:=abc`` or ``-p overlay_alpha:=1`` would otherwise be ignored."""
    errors = []
    for name, (token, value) in command_line_overrides(argv).items():
        problem = check_value(SPECS[name], value)
        if not problem and isinstance(SPECS[name].default, float) and isinstance(value, int):
            problem = f"{name}={value!r} must be written as a float ({float(value)!r}): ROS parameters are typed"
        if problem:
            errors.append(f"-p {token}: {problem}")
        elif declared is not None and name in declared and not _same_value(declared[name], value):
            errors.append(f"-p {token} was not applied (rcl kept {name}={declared[name]!r} from the params file, "
                          f"whose value has another type): write it as a {type(SPECS[name].default).__name__}")
    if errors:
        raise ParameterError("invalid parameters: " + "; ".join(errors))


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b) and type(a) is type(b)
    return a == b


def parameter_update_error(name: str, value: Any, lifecycle_state: Optional[str] = None) -> Optional[str]:
    """Reason to reject a parameter change while the node runs, or None to accept it.

    rclpy already rejects writes to read-only parameters before calling the node's
    callback; this check also covers anything else (e.g. a future non-read-only
    parameter) and validates the value of the run-time ones. Parameters the node does
    not own (use_sim_time, ...) are accepted untouched.

    ``lifecycle_state``: the managed node's state label (None for the plain node). Its
    start-up parameters are read by configure, so they may change while 'unconfigured'
    (values are checked one by one here; configure checks them together)."""
    spec = SPECS.get(name)
    if spec is None:
        return None
    if not spec.runtime and lifecycle_state is None:
        return f"{name} is read at start-up: restart the node to change it"
    if not spec.runtime and lifecycle_state != "unconfigured":
        return (f"{name} is read by configure: it can change only while the node is unconfigured "
                f"(it is {lifecycle_state}: deactivate and cleanup first)")
    return check_value(spec, value)


# ---------------------------------------------------------------------------- start-up

def choose_device(device: str, precision: str, cuda_available: Optional[bool] = None,
                  cuda_count: Optional[int] = None) -> tuple[str, str, Optional[str]]:
    """Resolve ``device``/``precision`` for the Segmenter; a robot must still start, so
    auto and an unavailable CUDA device fall back to CPU with one warning (returned, not
    logged, so the caller logs it once through ROS). A GPU-only precision requested for
    the fallback CPU becomes fp32 in the same warning."""
    device = device.lower()
    if device == "cpu":
        return "cpu", precision, None
    if precision == "int8":  # a CPU path by design, also where a GPU is present
        return "cpu", precision, (None if device == "auto" else f"device {device}: precision int8 runs on the CPU")
    chosen, reason = device_or_reason(device, cuda_available, cuda_count)
    if reason is None:
        return str(chosen), precision, None
    warning = f"device {device}: {reason}; running on CPU"
    if precision not in ("auto", "fp32"):
        warning += f" with fp32 instead of {precision}"
        precision = "fp32"
    return "cpu", precision, warning


def segmenter_options(config: NodeConfig, device: str, precision: str) -> SegmenterOptions:
    return SegmenterOptions(device=device, precision=precision, backend=config.backend,
                            calibration_data=config.int8_calibration,
                            inference_height=config.inference_height, inference_width=config.inference_width,
                            threads=config.threads)


def load_segmenter(config: NodeConfig, warn: Callable[[str], None]) -> Segmenter:
    """Load the model once and warm it, so the first camera frame is not the slow one.

    Errors (missing weights, fp16 on CPU, onnxruntime with fp16...) propagate as
    ValueError subclasses with one clear message; ``main`` prints it and exits 1."""
    device, precision, warning = choose_device(config.device, config.precision)
    if warning:
        warn(warning)
    segmenter = Segmenter.from_name(config.model_name, config.weights or None,
                                    segmenter_options(config, device, precision))
    segmenter.warmup()
    return segmenter


def free_model_memory(device: str) -> None:
    """Once the node has dropped its Segmenter (lifecycle cleanup): collect it now and hand
    its memory back (the CUDA cache, glibc's heap), so a cleaned-up node holds no model."""
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
    return_freed_memory()


_RCL_SOURCE_LOCATION = re.compile(r",? at /[^,]*?:\d+")


def startup_error_text(exc: BaseException) -> str:
    """One line for ``[eacnet] error: ...``: our own errors carry a message made for
    users; anything else also names its type so it can be searched for. rcl's messages
    lose the C source locations they carry (", at /project/src/rcl/arguments.c:415")."""
    text = _RCL_SOURCE_LOCATION.sub("", " ".join(str(exc).split())).strip() or "(no message)"
    return text if isinstance(exc, (ValueError, OSError)) else f"{type(exc).__name__}: {text}"


# ---------------------------------------------------------------------------- input QoS

RELIABLE, BEST_EFFORT = "reliable", "best_effort"


def initial_reliability(mode: str) -> str:
    """``auto`` starts best-effort: it matches every publisher, so nothing is incompatible
    before the publishers are known."""
    return BEST_EFFORT if mode == "auto" else mode


def follow_publishers(mode: str, current: str, publishers: Sequence[str]) -> str:
    """The subscription's reliability given the publishers' ones (``reliable`` /
    ``best_effort``), as ``ros2 bag record`` adapts: reliable when every publisher is
    (Fast DDS then repairs lost fragments of large frames, which best-effort loses),
    best-effort as soon as one is not (a reliable subscription cannot match it). With no
    publisher, or a fixed mode, nothing changes."""
    if mode != "auto" or not publishers:
        return current
    return RELIABLE if all(p == RELIABLE for p in publishers) else BEST_EFFORT


def incompatible_qos_text(topic: str, policy: str, ours: str, theirs: Sequence[str], we_publish: bool) -> str:
    """The one warning for an incompatible-QoS event: topic, both sides, and the fix."""
    others = ", ".join(theirs) or "unknown"
    if we_publish:
        return (f"a subscriber of {topic} asks for QoS this node does not offer ({policy}): the node publishes "
                f"{ours}; the subscriber(s): {others}. Fix: subscribe with reliability reliable or best_effort "
                "and durability volatile (rviz: Durability Policy 'Volatile')")
    return (f"the publishers of {topic} and this node's subscription have incompatible QoS ({policy}): the node "
            f"asks for {ours}; the publisher(s) offer {others}. No frame can arrive. Fix: -p reliability:=auto "
            "(follows the publishers) or the publishers' policy")


# ---------------------------------------------------------------------------- labels

LABEL_THRESHOLD = 0.0  # argmax segmentation: every pixel gets a class, no confidence cut-off


def label_map(segmenter: Segmenter) -> list[tuple[int, str]]:
    """(class id, class name) pairs for vision_msgs/LabelInfo; the ids are the mask values."""
    return list(enumerate(segmenter.dataset.class_names))


# ---------------------------------------------------------------------------- per-frame pipeline

@dataclass
class SegmentedFrame:
    """Outputs of one frame; colour mask and overlay are None when nobody wants them."""

    mask: np.ndarray
    color_mask: Optional[np.ndarray] = None
    overlay: Optional[np.ndarray] = None


class FrameProcessor:
    """BGR frame -> mask (always), colour mask and overlay (only when subscribed)."""

    def __init__(self, segmenter: Segmenter, overlay_alpha: float = 0.5):
        self.segmenter = segmenter
        self.overlay_alpha = overlay_alpha

    @property
    def overlay_alpha(self) -> float:
        return self._alpha

    @overlay_alpha.setter
    def overlay_alpha(self, value: float) -> None:
        # Set from the parameter callback while the worker reads it: one float attribute
        # assignment is atomic, so no lock is needed.
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"overlay_alpha must be in [0, 1], got {value}")
        self._alpha = float(value)

    def process(self, bgr: np.ndarray, want_color: bool, want_overlay: bool) -> SegmentedFrame:
        return self.process_batch([bgr], [(want_color, want_overlay)])[0]

    def process_batch(self, images: Sequence[np.ndarray], wanted: Sequence[tuple[bool, bool]]) -> list[SegmentedFrame]:
        """Several frames (one per camera) through one forward pass per network size;
        ``wanted``: (colour, overlay) for each frame. ``Segmenter.segment_frames`` makes only
        the wanted outputs (on the GPU, it also copies only those back)."""
        results = self.segmenter.segment_frames(images, wanted, self._alpha)
        return [SegmentedFrame(r.mask, r.color_mask, r.overlay) for r in results]


OUTPUT_ENCODINGS = {"mask": "mono8", "color_mask": "bgr8", "overlay": "bgr8"}


def encode_frame(frame: SegmentedFrame, header: Any, image_type: type) -> dict[str, Any]:
    """Output topic -> Image message, each carrying the input's header unchanged so
    rviz and message_filters line them up with the camera frame."""
    arrays = {"mask": frame.mask, "color_mask": frame.color_mask, "overlay": frame.overlay}
    return {topic: codec.array_to_image(image_type, header, pixels, OUTPUT_ENCODINGS[topic])
            for topic, pixels in arrays.items() if pixels is not None}


# ---------------------------------------------------------------------------- newest-frame mailbox

class LatestFrame:
    """A one-slot mailbox between the subscription callback and the worker.

    ``put`` replaces whatever is waiting (returning True when it overwrote an untaken
    message: a dropped frame); ``take`` waits for a message. No backlog can build up.
    ``condition``: shared by the slots of several cameras, so one worker can wait for any
    of them (``multi_camera.FrameScheduler``)."""

    def __init__(self, condition: Optional[threading.Condition] = None):
        self._cond = condition or threading.Condition()
        self._item: Optional[tuple[Any, float]] = None
        self._closed = False

    def put(self, msg: Any, received_at: float) -> bool:
        with self._cond:
            replaced = self._item is not None
            self._item = (msg, received_at)
            self._cond.notify()
        return replaced

    def take(self, timeout: Optional[float] = None) -> Optional[tuple[Any, float]]:
        """The newest (message, receive time), or None on timeout or after ``close``."""
        with self._cond:
            self._cond.wait_for(lambda: self._item is not None or self._closed, timeout)
            item, self._item = self._item, None
        return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def waiting(self) -> bool:
        """A message is waiting; read under the (shared) condition's lock."""
        return self._item is not None

    def pop(self) -> Optional[tuple[Any, float]]:
        """The waiting (message, receive time) or None, without waiting; the caller holds
        the condition's lock (``FrameScheduler.take``)."""
        item, self._item = self._item, None
        return item


# ---------------------------------------------------------------------------- statistics and diagnostics

OK, WARN, ERROR = 0, 1, 2  # diagnostic_msgs/DiagnosticStatus levels


@dataclass(frozen=True)
class DiagnosticReport:
    level: int
    message: str
    values: tuple[tuple[str, str], ...]

    def value(self, key: str) -> str:
        return dict(self.values)[key]


@dataclass
class _Counters:
    received: int = 0
    processed: int = 0
    dropped: int = 0
    bad: int = 0
    failed: int = 0


class FrameStats:
    """Thread-safe counters and latencies, updated by the callback and the worker and
    read once a second for diagnostics.

    Latency is measured from the subscription callback to the outputs being published
    (queue wait + decode + inference + encode + publish) with a monotonic clock: the part
    of the delay this node adds, independent of clock skew and of sim time."""

    def __init__(self, window: int = 200, clock: Callable[[], float] = time.monotonic):
        self._lock = threading.Lock()
        self._clock = clock
        self._total = _Counters()
        self._period = _Counters()
        self._latency_ms: deque[float] = deque(maxlen=window)
        self._period_start = clock()
        self._waiting_since: Optional[float] = None  # oldest frame received since the last publish

    def on_received(self, dropped_previous: bool) -> None:
        with self._lock:
            if self._waiting_since is None:
                self._waiting_since = self._clock()
            for c in (self._total, self._period):
                c.received += 1
                c.dropped += int(dropped_previous)

    def on_published(self, received_at: float) -> None:
        latency = (self._clock() - received_at) * 1000.0
        with self._lock:
            self._total.processed += 1
            self._period.processed += 1
            self._latency_ms.append(latency)
            self._waiting_since = None

    def on_bad_frame(self) -> None:
        with self._lock:
            self._total.bad += 1
            self._period.bad += 1

    def on_failed_frame(self) -> None:
        with self._lock:
            self._total.failed += 1
            self._period.failed += 1

    def totals(self) -> dict[str, int]:
        with self._lock:
            return dict(vars(self._total))

    def report(self, static: Sequence[tuple[str, str]] = ()) -> DiagnosticReport:
        """Diagnostics for the period since the previous report (then starts a new one)."""
        now = self._clock()
        with self._lock:
            period, total, latencies = self._period, _Counters(**vars(self._total)), list(self._latency_ms)
            elapsed = max(now - self._period_start, 1e-9)
            self._period, self._period_start = _Counters(), now
            stalled_s = now - self._waiting_since if self._waiting_since is not None else 0.0
        fps = period.processed / elapsed
        p50, p90, p99 = (np.percentile(latencies, [50, 90, 99]) if latencies else (math.nan,) * 3)
        values = (("fps", f"{fps:.2f}"), ("latency_ms_p50", f"{p50:.1f}"), ("latency_ms_p90", f"{p90:.1f}"),
                  ("latency_ms_p99", f"{p99:.1f}"), ("frames_received", str(total.received)),
                  ("frames_processed", str(total.processed)), ("frames_dropped", str(total.dropped)),
                  ("frames_bad", str(total.bad)), ("frames_failed", str(total.failed)),
                  ("dropped_last_period", str(period.dropped))) + tuple(static)
        level, message = _summary(period, fps, p50, stalled_s)
        return DiagnosticReport(level, message, values + (("seconds_since_output", f"{stalled_s:.1f}"),))


#: Frames arriving for this long with none published is an ERROR: the node looks alive
#: (it subscribes, it reports) but a consumer downstream gets nothing.
STALL_ERROR_S = 3.0


def _summary(period: _Counters, fps: float, p50: float, stalled_s: float = 0.0) -> tuple[int, str]:
    """Level and one-line message: ERROR when frames have been arriving for STALL_ERROR_S
    without one being published, or when every frame of the period failed; WARN for bad
    or failed frames or no input."""
    if stalled_s >= STALL_ERROR_S:
        return ERROR, (f"frames arrive but none was published for {stalled_s:.0f} s "
                       f"({period.bad} undecodable, {period.failed} failed in the last period; see the node's log)")
    if period.failed and not period.processed:
        return ERROR, f"all {period.failed} frame(s) of the last period failed"
    if period.bad or period.failed:
        return WARN, f"{period.bad} undecodable and {period.failed} failed frame(s) skipped; {fps:.1f} fps"
    if not period.received:
        return WARN, "no input images"
    return OK, f"{fps:.1f} fps, latency p50 {p50:.0f} ms, {period.dropped} dropped"


def static_diagnostics(segmenter: Segmenter, config: NodeConfig) -> tuple[tuple[str, str], ...]:
    """Key/values that do not change while the node runs."""
    size = (f"{config.inference_width}x{config.inference_height}" if config.inference_height else "input size")
    values = (("model", segmenter.model_name), ("device", str(segmenter.device)), ("precision", segmenter.precision),
              ("backend", segmenter.backend), ("inference_size", size),
              ("weights", str(segmenter.weights) if segmenter.weights else "untrained"),
              ("transport", config.transport))
    if config.cameras:
        batched = batch_frames(config.batch_cameras, segmenter.device.type)
        values += (("batch_cameras", f"{config.batch_cameras} ({'batched' if batched else 'one by one'})"),)
    return values


# ---------------------------------------------------------------------------- throttled warnings

class Throttle:
    """At most one message per key and period, with a count of what was held back:
    a camera sending only bad frames at 30 Hz must not flood the log."""

    def __init__(self, period_s: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self.period_s = period_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, key: str, text: str) -> Optional[str]:
        """The text to log now (with a suppressed count), or None to stay quiet."""
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.period_s:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return None
            self._last[key] = now
            held = self._suppressed.pop(key, 0)
        return f"{text} ({held} similar message(s) suppressed)" if held else text


# ---------------------------------------------------------------------------- the worker

class PublisherLike(Protocol):
    def publish(self, msg: Any) -> None: ...

    def get_subscription_count(self) -> int: ...


@dataclass
class FrameWorker:
    """Takes the newest frame from ``slot``, runs the pipeline and publishes.

    ``publishers`` maps 'mask', 'color_mask', 'overlay' to rclpy publishers (or anything
    with ``publish`` and ``get_subscription_count``). A bad frame or an exception is
    logged (throttled), counted, and the loop goes on: one frame never kills the node."""

    slot: LatestFrame
    processor: FrameProcessor
    stats: FrameStats
    publishers: Mapping[str, PublisherLike]
    image_type: type
    warn: Callable[[str], None]
    active: Callable[[], bool] = lambda: True  # False once ROS is shut down: stop publishing
    max_pixels: Optional[int] = DEFAULT_MAX_INPUT_PIXELS
    throttle: Throttle = field(default_factory=Throttle)
    _thread: Optional[threading.Thread] = field(default=None, init=False)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="eacnet-segment-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Close the mailbox and wait for the frame in progress to finish."""
        self.slot.close()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self.slot.closed:
            item = self.slot.take(timeout=0.5)
            if item is None:
                continue
            try:
                self.process_one(*item)
            except Exception as exc:  # process_one catches everything; this is the last guard
                self.stats.on_failed_frame()
                self._warn("worker_error", f"unexpected error in the frame worker, frame skipped: "
                                           f"{type(exc).__name__}: {exc}")

    def process_one(self, msg: Any, received_at: float) -> bool:
        """Run one message through decode -> segment -> encode -> publish; True if published."""
        bgr = self.decode(msg)
        if bgr is None:
            return False
        try:
            frame = self.processor.process(bgr, *self.wanted())
        except Exception as exc:  # one frame must never kill the node
            return self.failed(exc)
        return self.publish(msg, frame, received_at)

    # The steps of process_one, also used by multi_camera.MultiCameraWorker, which segments
    # the frames of several cameras together between decode and publish.
    def decode(self, msg: Any) -> Optional[np.ndarray]:
        """The message as a BGR array; None for a bad frame (counted and warned)."""
        try:
            return codec.to_bgr(msg, self.max_pixels)
        except Exception as exc:  # ImageDecodeError, or a message too malformed to read at all
            self.stats.on_bad_frame()
            reason = str(exc) if isinstance(exc, codec.ImageDecodeError) else f"{type(exc).__name__}: {exc}"
            self._warn("bad_frame", f"skipping an image that cannot be decoded: {reason}")
            return None

    def wanted(self) -> tuple[bool, bool]:
        """(colour mask, overlay): each is computed only while someone subscribes to it."""
        return (self.publishers["color_mask"].get_subscription_count() > 0,
                self.publishers["overlay"].get_subscription_count() > 0)

    def publish(self, msg: Any, frame: SegmentedFrame, received_at: float) -> bool:
        """Encode and publish ``frame`` with ``msg``'s header; True if published."""
        try:
            messages = encode_frame(frame, msg.header, self.image_type)
            if not self.active():
                return False
            for topic, out in messages.items():
                self.publishers[topic].publish(out)
        except Exception as exc:  # one frame must never kill the node
            return self.failed(exc)
        self.stats.on_published(received_at)
        return True

    def failed(self, exc: BaseException) -> bool:
        """Count and warn (throttled) about a frame that could not be processed; False."""
        self.stats.on_failed_frame()
        self._warn("frame_error", f"processing a frame failed and it was skipped: {type(exc).__name__}: {exc}")
        return False

    def _warn(self, key: str, text: str) -> None:
        line = self.throttle(key, text)
        if line is not None:
            self.warn(line)
