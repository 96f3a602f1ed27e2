"""The node's parameters: one table (``PARAMETERS``) from which the node declares them,
validates ``-p`` values and run-time changes, and builds its ``NodeConfig``; ROS-free."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

from eacnet_core.infer.segmenter import BACKENDS, SegmenterOptions
from eacnet_core.models.registry import model_for
from eacnet_core.runtime import PRECISIONS

Scalar = Union[bool, int, float, str]
ParamValue = Union[Scalar, list]

# ---------------------------------------------------------------------------- parameters

_OPTIONS = SegmenterOptions()  # the Segmenter's defaults are the node's defaults: one place each
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
MAX_INFERENCE_SIZE = 8192
DEFAULT_MAX_INPUT_PIXELS = 3840 * 2160
#: Frames with a side under this are refused at decode: the networks downsample 8x, and
#: OpenVINO's pooling fails on the eacnet models below 12 pixels (a 1x1 or 8000x2 frame is
#: no camera image either).
MIN_INPUT_SIDE = 16
#: camera_height x camera_width by default: CamVid's 480x360, what the packaged models were trained at.
DEFAULT_CAMERA_HW = (360, 480)
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
        if isinstance(self.default, bool):
            return "true or false"
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
    ParamSpec("precision", _OPTIONS.precision, "Arithmetic precision; auto: fp16 on CUDA; on the CPU the fastest "
              "of fp32, bf16 and int8 (measured at start-up) whose masks agree with fp32 on >= 99% of pixels, "
              "int8 only when its model is cached or int8_calibration is given; int8: statically quantised "
              "onnxruntime (or OpenVINO) model on the CPU (built at start-up from int8_calibration frames and "
              "cached; ~1.8x faster for erfnet models, slower for dabnet ones on our CPU: docs/RESULTS.md).",
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
    ParamSpec("frame_score", True, "Compute every frame's confidence and frame score (0 trustworthy .. 1 not: the "
              "network's doubt and image cues for fog, blur, noise, darkness, JPEG blocks, a covered lens), smoothed "
              "into /diagnostics and low_confidence. false: the confidence is made only while 'confidence' is "
              "subscribed and diagnostics carry no score."),
    ParamSpec("score_warn_above", 0.5, "/diagnostics turns WARN when the smoothed frame score rises above this "
              "(0 = trustworthy .. 1 = not).", float_range=(0.0, 1.0), runtime=True),
    ParamSpec("score_clear_below", 0.35, "The frame-score warning clears only when the smoothed score falls under "
              "this (hysteresis); at most score_warn_above.", float_range=(0.0, 1.0), runtime=True),
    ParamSpec("score_window", 15, "Frames the frame score is averaged over for /diagnostics and low_confidence.",
              int_range=(1, 1000)),
    ParamSpec("camera_height", DEFAULT_CAMERA_HW[0], "Height of the camera's frames in pixels, as expected at "
              "start-up: with backend/precision auto and no inference size, the engine is chosen for this size "
              "(on a stand-in frame) before the node listens. Frames of another size are served on the current "
              "engine while the choice for their size is measured in the background.",
              int_range=(MIN_INPUT_SIDE, MAX_INFERENCE_SIZE)),
    ParamSpec("camera_width", DEFAULT_CAMERA_HW[1], "Width of the camera's frames in pixels, as expected at "
              "start-up (see camera_height).", int_range=(MIN_INPUT_SIDE, MAX_INFERENCE_SIZE)),
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
    frame_score: bool = True
    score_warn_above: float = 0.5
    score_clear_below: float = 0.35
    score_window: int = 15
    camera_height: int = DEFAULT_CAMERA_HW[0]
    camera_width: int = DEFAULT_CAMERA_HW[1]

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
        for name in ("overlay_alpha", "score_warn_above", "score_clear_below"):
            merged[name] = float(merged[name])
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

    @property
    def start_size(self) -> tuple[int, int]:
        """(height, width) of the frames the engine is chosen and warmed for at start-up."""
        return (self.inference_height, self.inference_width) if self.inference_height else (
            self.camera_height, self.camera_width)

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
    threshold_error = score_thresholds_error(values["score_warn_above"], values["score_clear_below"])
    if threshold_error:
        errors.append(threshold_error)
    if (values["inference_height"] == 0) != (values["inference_width"] == 0):
        errors.append(f"inference_height={values['inference_height']} and inference_width="
                      f"{values['inference_width']} must both be positive or both 0 (the image's own size)")
    return errors


def score_thresholds_error(warn_above: float, clear_below: float) -> Optional[str]:
    """Why the frame-score thresholds do not fit together, or None."""
    if clear_below > warn_above:
        return (f"score_clear_below={clear_below} must not exceed score_warn_above={warn_above} "
                "(the warning clears under the lower one)")
    return None


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
    ``-p threads:=abc`` would otherwise be ignored. An integer for a float parameter
    (``-p overlay_alpha:=1``) is accepted: users type 1."""
    errors = []
    for name, (token, value) in command_line_overrides(argv).items():
        problem = check_value(SPECS[name], value)
        if problem:
            errors.append(f"-p {token}: {problem}")
        elif declared is not None and name in declared and not _same_value(declared[name], value):
            errors.append(f"-p {token} was not applied (rcl kept {name}={declared[name]!r} from the params file, "
                          f"whose value has another type): write it as a {type(SPECS[name].default).__name__}")
    if errors:
        raise ParameterError("invalid parameters: " + "; ".join(errors))


def _same_value(a: Any, b: Any) -> bool:
    """Whether the declared value ``a`` is the ``-p`` value ``b``: an integer given for a float
    parameter is the same number (the node stores it as a float); otherwise the types agree."""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b) and (type(a) is type(b) or isinstance(a, float))
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
