"""The model the node runs: device choice with a CPU fallback, loading and warming it once,
freeing it again (lifecycle cleanup), and its label map; ROS-free."""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any, Optional

from eacnet_core.infer.segmenter import Segmenter, SegmenterOptions, return_freed_memory
from eacnet_core.runtime import device_or_reason

from .params import NodeConfig

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
    """Load the model once, choose its engine (backend/precision auto) and warm it at the
    size the node expects (``NodeConfig.start_size``), so the first camera frame is not the
    slow one and no frame waits for the choice (``choice.EngineChoice``).

    Errors (missing weights, fp16 on CPU, onnxruntime with fp16...) propagate as
    ValueError subclasses with one clear message; ``main`` prints it and exits 1."""
    device, precision, warning = choose_device(config.device, config.precision)
    if warning:
        warn(warning)
    segmenter = Segmenter.from_name(config.model_name, config.weights or None,
                                    segmenter_options(config, device, precision))
    height, width = config.start_size  # backend/precision auto chooses here, before the node listens
    segmenter.tune(height, width)
    segmenter.warmup(height, width)
    return segmenter


def free_model_memory(device: str) -> None:
    """Once the node has dropped its Segmenter (lifecycle cleanup): collect it now and hand
    its memory back (the CUDA cache, glibc's heap), so a cleaned-up node holds no model."""
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
    return_freed_memory()


# ---------------------------------------------------------------------------- labels

LABEL_THRESHOLD = 0.0  # argmax segmentation: every pixel gets a class, no confidence cut-off


def label_info(label_info_type: type, vision_class_type: type, header: Any, segmenter: Segmenter) -> Any:
    """The vision_msgs/LabelInfo the node latches on ``label_info``: each mask id with its
    class name. The message classes are passed in (rclpy's, or rosbags' in tests): vision_msgs
    is optional, and this stays ROS-free."""
    classes = [vision_class_type(class_id=i, class_name=name) for i, name in label_map(segmenter)]
    return label_info_type(header=header, class_map=classes, threshold=LABEL_THRESHOLD)


def label_map(segmenter: Segmenter) -> list[tuple[int, str]]:
    """(class id, class name) pairs for vision_msgs/LabelInfo; the ids are the mask values."""
    return list(enumerate(segmenter.dataset.class_names))


def missing_vision_msgs_text(ros_distro: Optional[str]) -> str:
    """The warning when vision_msgs cannot be imported: label_info is then not published.
    vision_msgs comes with a ROS 2 install (rosdep key vision_msgs); the ROS 2 wheels on the
    Python package index have none, so a pip-only setup is told that rather than an apt
    command it cannot run."""
    text = "vision_msgs is not importable, so label_info (the class name of each mask id) is not published. "
    if ros_distro:
        return text + f"Install it: sudo apt install ros-{ros_distro}-vision-msgs (or rosdep install)."
    return text + ("No ROS 2 install is sourced (ROS_DISTRO unset) and the ROS 2 wheels on the Python package index "
                   "hold no vision_msgs: source a ROS 2 install with ros-<distro>-vision-msgs to get label_info.")

