"""Wiring of eacnet_ros.segment_node, run against ``rclpy_double`` (see its docstring:
a recording test double, not a ROS implementation).

What this proves: the node declares its parameters with the right descriptors, creates
the subscription and publishers with the intended names, types and QoS, hands frames from
the callback to the worker, publishes with the input header, builds LabelInfo and
DiagnosticArray messages that serialize with the real layouts, handles parameter updates,
and ``main`` turns start-up errors into one line and exit code 1. What it cannot prove
(discovery, real QoS matching, executor behaviour) is left to test_segment_launch.py,
which runs under ``colcon test`` on a ROS 2 machine.
"""

from __future__ import annotations

import importlib
import logging
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
import rclpy_double as ros
import torch

from eacnet_core.checkpoint import make_checkpoint, save_atomic
from eacnet_core.classes import CAMVID
from eacnet_core.models import build_model
from eacnet_ros import codec, node_logic

H, W = 24, 32
MSG = ros.MSG




@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(2)
    return save_atomic(make_checkpoint("eacnet_erf", build_model("eacnet_erf", CAMVID.num_classes), CAMVID),
                       tmp_path_factory.mktemp("weights") / "eacnet_erf_tiny.pt")


def _install(monkeypatch, with_vision_msgs: bool):
    for name, module in ros.modules(with_vision_msgs).items():
        monkeypatch.setitem(sys.modules, name, module)
    sys.modules.pop("eacnet_ros.segment_node", None)
    return importlib.import_module("eacnet_ros.segment_node")


@pytest.fixture
def node_module(monkeypatch):
    """eacnet_ros.segment_node imported against the double; removed again afterwards so
    no other test sees a module bound to fake rclpy."""
    module = _install(monkeypatch, with_vision_msgs=True)
    yield module
    _forget_node_module()


def _forget_node_module():
    sys.modules.pop("eacnet_ros.segment_node", None)
    import eacnet_ros

    eacnet_ros.__dict__.pop("segment_node", None)


def make_node(module, checkpoint, namespace="/eacnet", **params):
    values = {"weights": str(checkpoint), "device": "cpu", "inference_height": 16, "inference_width": 24, **params}
    ros.init(args=[])
    overrides = [ros.Parameter(name, value) for name, value in values.items()]
    return module.SegmentNode(namespace=namespace, parameter_overrides=overrides)


@pytest.fixture
def node(node_module, checkpoint):
    created = make_node(node_module, checkpoint)
    yield created
    created.destroy_node()


def publisher(node, topic: str) -> ros.Publisher:
    (found,) = [p for p in node.publishers if p.topic == topic]
    return found


def image(sec: int = 5, encoding: str = "bgr8", frame_id: str = "cam_optical"):
    header = MSG["std_msgs/msg/Header"](stamp=MSG["builtin_interfaces/msg/Time"](sec=sec, nanosec=6),
                                        frame_id=frame_id)
    pixels = np.random.default_rng(sec).integers(0, 256, (H, W, 3), dtype=np.uint8)
    msg = codec.array_to_image(MSG["sensor_msgs/msg/Image"], header, pixels, "bgr8")
    msg.encoding = encoding
    return msg


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the worker"
        time.sleep(0.005)


def roundtrip(msg):
    return ros.STORE.deserialize_cdr(ros.STORE.serialize_cdr(msg, msg.__msgtype__), msg.__msgtype__)


# ---------------------------------------------------------------------------- declarations

def test_parameters_are_declared_with_descriptors(node):
    for spec in node_logic.PARAMETERS:
        descriptor = node.describe_parameter(spec.name)
        assert descriptor.read_only == (spec.name != "overlay_alpha")
        assert descriptor.description == spec.full_description()
        assert descriptor.additional_constraints == spec.constraints()
    alpha = node.describe_parameter("overlay_alpha").floating_point_range[0]
    assert (alpha.from_value, alpha.to_value) == (0.0, 1.0)
    height = node.describe_parameter("inference_height").integer_range[0]
    assert (height.from_value, height.to_value) == (0, node_logic.MAX_INFERENCE_SIZE)
    assert node.get_parameter("weights").value.endswith("eacnet_erf_tiny.pt")


def test_subscription_is_relative_newest_frame_only_and_best_effort_by_default(node):
    (sub,) = node.subscriptions
    assert sub.topic == "image" and sub.topic_name == "/eacnet/image"
    assert sub.msg_type is MSG["sensor_msgs/msg/Image"]
    assert (sub.qos.history, sub.qos.depth) == (ros.HistoryPolicy.KEEP_LAST, 1)
    assert sub.qos.reliability is ros.ReliabilityPolicy.BEST_EFFORT


def test_reliable_and_compressed_subscription(node_module, checkpoint):
    node = make_node(node_module, checkpoint, reliability="reliable", transport="compressed")
    try:
        (sub,) = node.subscriptions
        assert sub.topic == "image/compressed" and sub.msg_type is MSG["sensor_msgs/msg/CompressedImage"]
        assert sub.qos.reliability is ros.ReliabilityPolicy.RELIABLE and sub.qos.depth == 1
    finally:
        node.destroy_node()


def test_publishers_names_types_and_qos(node):
    for topic in ("mask", "color_mask", "overlay"):
        pub = publisher(node, f"/eacnet/{topic}")
        assert pub.msg_type is MSG["sensor_msgs/msg/Image"]
        assert pub.qos.reliability is ros.ReliabilityPolicy.RELIABLE and pub.qos.depth == 1
    assert publisher(node, "/diagnostics").msg_type is MSG["diagnostic_msgs/msg/DiagnosticArray"]
    labels = publisher(node, "/eacnet/label_info")
    assert labels.qos.durability is ros.DurabilityPolicy.TRANSIENT_LOCAL


def test_label_info_is_published_once_with_the_class_names(node):
    (msg,) = publisher(node, "/eacnet/label_info").sent
    msg = roundtrip(msg)
    assert [(c.class_id, c.class_name) for c in msg.class_map] == list(enumerate(CAMVID.class_names))
    assert msg.threshold == node_logic.LABEL_THRESHOLD


def test_without_vision_msgs_label_info_is_skipped_with_one_warning(monkeypatch, checkpoint):
    module = _install(monkeypatch, with_vision_msgs=False)
    try:
        node = make_node(module, checkpoint)
        node.destroy_node()
    finally:
        _forget_node_module()
    assert [p.topic for p in node.publishers if p.topic.endswith("label_info")] == []
    warnings = node.get_logger().messages("warning")
    assert len([w for w in warnings if "vision_msgs" in w]) == 1


def test_start_up_logs_model_device_precision_and_size(node):
    info = " ".join(node.get_logger().messages("info"))
    assert "model=eacnet_erf" in info and "device=cpu" in info and "precision=fp32" in info
    assert "inference=24x16" in info and "/eacnet/image" in info


# ---------------------------------------------------------------------------- frames

def test_frame_flows_from_callback_to_mask_with_the_input_header(node):
    (sub,) = node.subscriptions
    msg = image(sec=77)
    sub.callback(msg)
    mask_pub = publisher(node, "/eacnet/mask")
    wait_for(lambda: mask_pub.sent)
    out = roundtrip(mask_pub.sent[0])
    assert (out.encoding, out.height, out.width) == ("mono8", H, W)
    assert (out.header.stamp.sec, out.header.stamp.nanosec, out.header.frame_id) == (77, 6, "cam_optical")
    assert codec.image_to_array(out).max() < CAMVID.num_classes
    assert publisher(node, "/eacnet/color_mask").sent == [] and publisher(node, "/eacnet/overlay").sent == []


def test_colour_mask_and_overlay_follow_subscribers(node):
    publisher(node, "/eacnet/overlay").subscription_count = 1
    node.subscriptions[0].callback(image(sec=8))
    overlay = publisher(node, "/eacnet/overlay")
    wait_for(lambda: overlay.sent)
    assert overlay.sent[0].encoding == "bgr8" and overlay.sent[0].header.stamp.sec == 8
    assert publisher(node, "/eacnet/color_mask").sent == []


def test_callback_counts_frames_it_overwrites(node):
    node._worker.stop()  # nothing consumes: every put after the first overwrites
    for sec in range(4):
        node.subscriptions[0].callback(image(sec=sec))
    totals = node.stats.totals()
    assert (totals["received"], totals["dropped"]) == (4, 3)


def test_bad_frame_is_warned_counted_and_the_node_continues(node):
    callback = node.subscriptions[0].callback
    callback(image(sec=1, encoding="bayer_xyz8"))
    wait_for(lambda: node.stats.totals()["bad"] == 1)
    callback(image(sec=2))
    wait_for(lambda: publisher(node, "/eacnet/mask").sent)
    assert publisher(node, "/eacnet/mask").sent[0].header.stamp.sec == 2
    assert any("unsupported encoding 'bayer_xyz8'" in w for w in node.get_logger().messages("warning"))


# ---------------------------------------------------------------------------- parameters at run time

def test_overlay_alpha_changes_at_run_time(node):
    (result,) = node.set_parameters([ros.Parameter("overlay_alpha", 0.2)])
    assert result.successful and node.processor.overlay_alpha == 0.2
    (result,) = node.set_parameters([ros.Parameter("overlay_alpha", 3.0)])
    assert not result.successful and node.processor.overlay_alpha == 0.2


def test_restart_parameters_are_rejected_with_a_reason(node):
    (result,) = node.set_parameters([ros.Parameter("backbone", "dabnet")])
    assert not result.successful and "read-only" in result.reason  # rclpy's own check comes first
    result = node._on_set_parameters([ros.Parameter("device", "cuda")])
    assert not result.successful and "restart the node" in result.reason
    assert node._on_set_parameters([ros.Parameter("use_sim_time", True)]).successful


# ---------------------------------------------------------------------------- diagnostics

def test_diagnostics_once_a_second_on_a_steady_clock(node):
    (timer,) = node.timers
    assert timer.period == 1.0 and timer.clock.clock_type is ros.ClockType.STEADY_TIME
    node.subscriptions[0].callback(image(sec=3))
    wait_for(lambda: node.stats.totals()["processed"] == 1)
    timer.callback()
    (array,) = publisher(node, "/diagnostics").sent
    status = roundtrip(array).status[0]
    values = {kv.key: kv.value for kv in status.values}
    assert status.name == "/eacnet/segment_node: segmentation" and status.hardware_id == "cpu"
    assert status.level == MSG["diagnostic_msgs/msg/DiagnosticStatus"].OK
    assert float(values["fps"]) > 0 and float(values["latency_ms_p50"]) > 0
    assert values["frames_processed"] == "1" and values["frames_dropped"] == "0"
    assert (values["device"], values["precision"], values["model"]) == ("cpu", "fp32", "eacnet_erf")


# ---------------------------------------------------------------------------- start-up and main()

def test_core_logging_reaches_the_ros_logger(node):
    logging.getLogger("eacnet_core.inference").warning("something from the core")
    assert "something from the core" in node.get_logger().messages("warning")


def test_unavailable_cuda_falls_back_with_one_warning(node_module, checkpoint, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    node = make_node(node_module, checkpoint, device="cuda:0")
    node.destroy_node()
    assert str(node.segmenter.device) == "cpu"
    assert [w for w in node.get_logger().messages("warning") if "CUDA" in w] == [
        "device cuda:0: CUDA is not available; running on CPU"]


def _main(module, capsys, *params: str):
    args = ["--ros-args"] + [word for p in params for word in ("-p", p)]
    code = module.main(args)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("params, words", [
    (("weights:=/nonexistent/best.pt",), "checkpoint file not found"),
    (("backbone:=resnet",), "backbone='resnet' must be one of: erfnet, dabnet"),
    (("overlay_alpha:=2.0",), "overlay_alpha out of range"),
    (("inference_height:=abc",), "expecting type 'int'"),
])
def test_start_up_errors_are_one_line_and_exit_code_1(node_module, capsys, params, words):
    code, err = _main(node_module, capsys, "device:=cpu", *params)
    assert code == 1
    lines = [line for line in err.splitlines() if line.startswith("[eacnet]")]
    assert len(lines) == 1 and lines[0].startswith("[eacnet] error: ") and words in lines[0]
    assert "Traceback" not in err and not ros.ok()


def test_no_weights_error_says_which_file_to_pass(node_module, capsys, no_packaged_weights):
    code, err = _main(node_module, capsys, "device:=cpu")
    assert code == 1 and "pass a checkpoint" in err and "as weights" in err


def test_main_spins_and_shuts_down_cleanly_on_ctrl_c(node_module, capsys, checkpoint, monkeypatch):
    seen = SimpleNamespace(node=None)

    def spin_then_interrupt(node):
        seen.node = node
        node.subscriptions[0].callback(image(sec=9))
        wait_for(lambda: node.stats.totals()["processed"] == 1)
        raise KeyboardInterrupt

    monkeypatch.setattr(ros, "SPIN_ACTION", spin_then_interrupt)
    code, err = _main(node_module, capsys, f"weights:={checkpoint}", "device:=cpu", "inference_height:=16",
                      "inference_width:=24")
    assert code == 0 and "error" not in err
    assert seen.node.destroyed and not seen.node._worker._thread.is_alive() and not ros.ok()


def test_external_shutdown_is_clean_too(node_module, capsys, checkpoint, monkeypatch):
    def shutdown_by_signal(node):
        raise ros.ExternalShutdownException()

    monkeypatch.setattr(ros, "SPIN_ACTION", shutdown_by_signal)
    code, _ = _main(node_module, capsys, f"weights:={checkpoint}", "device:=cpu")
    assert code == 0
