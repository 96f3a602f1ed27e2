"""The segmentation node's logic without rclpy: parameters, the per-frame pipeline, drop
counting, bad frames, diagnostics and labels; several cameras' scheduling, statistics and
worker (scheduler).

Messages are rosbags' sensor_msgs classes (the codec is duck-typed on the fields), the
model a tiny untrained eacnet_erf at a small inference size, so every test is fast.
"""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest
import torch
from conftest import save_tiny_checkpoint
from rosbags.typesys import Stores, get_typestore

from eacnet_core.checkpoint import CheckpointError, packaged_weights
from eacnet_core.data.classes import CAMVID
from eacnet_core.infer.segmenter import Segmenter, SegmenterOptions
from eacnet_core.models import build_model
from eacnet_ros.node import codec
from eacnet_ros.node.model import (
    choose_device,
    label_info,
    label_map,
    load_segmenter,
    missing_vision_msgs_text,
    segmenter_options,
)
from eacnet_ros.node.params import (
    PARAMETERS,
    SPECS,
    NodeConfig,
    ParameterError,
    batch_frames,
    camera_topic,
    check_command_line,
    command_line_overrides,
    parameter_update_error,
)
from eacnet_ros.node.pipeline import OUTPUT_ENCODINGS, FrameProcessor, FrameSizes, encode_frame
from eacnet_ros.node.process import startup_error_text
from eacnet_ros.node.qos import endpoint_owner, follow_publishers, incompatible_qos_text, initial_reliability
from eacnet_ros.node.scheduler import FrameScheduler, MultiCameraWorker
from eacnet_ros.node.stats import ERROR, OK, STALL_ERROR_S, WARN, CameraStats, FrameStats, static_diagnostics
from eacnet_ros.node.worker import FrameWorker, LatestFrame, Throttle

H, W = 24, 32
TYPES = get_typestore(Stores.ROS2_HUMBLE).types
Image = TYPES["sensor_msgs/msg/Image"]
CompressedImage = TYPES["sensor_msgs/msg/CompressedImage"]




@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    torch.manual_seed(0)
    options = SegmenterOptions(device="cpu", backend="torch", inference_height=16, inference_width=24)
    return Segmenter(build_model("eacnet_erf", CAMVID.num_classes), "eacnet_erf", CAMVID, options)  # untrained


def header(sec: int = 7, frame_id: str = "camera_optical"):
    return TYPES["std_msgs/msg/Header"](stamp=TYPES["builtin_interfaces/msg/Time"](sec=sec, nanosec=11),
                                        frame_id=frame_id)


def frame(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def image_msg(seed: int = 0, sec: int = 7, encoding: str = "bgr8"):
    """A bgr8 frame; ``encoding`` relabels it (to build unsupported-encoding frames)."""
    msg = codec.array_to_image(Image, header(sec), frame(seed), "bgr8")
    msg.encoding = encoding
    return msg


class FakePublisher:
    """Records what is published; ``subscribers`` stands in for get_subscription_count()."""

    def __init__(self, subscribers: int = 0, fail: bool = False):
        self.subscribers = subscribers
        self.fail = fail
        self.sent: list = []

    def publish(self, msg) -> None:
        if self.fail:
            raise RuntimeError("publisher is gone")
        self.sent.append(msg)

    def get_subscription_count(self) -> int:
        return self.subscribers


def make_worker(segmenter, color_subs=0, overlay_subs=0, warnings=None, **kwargs) -> FrameWorker:
    publishers = {"mask": FakePublisher(), "color_mask": FakePublisher(color_subs),
                  "overlay": FakePublisher(overlay_subs)}
    return FrameWorker(LatestFrame(), FrameProcessor(segmenter, 0.5), FrameStats(), publishers, Image,
                       warn=(warnings if warnings is not None else []).append, **kwargs)


# ---------------------------------------------------------------------------- parameters

def test_parameter_set_matches_the_issue():
    assert [p.name for p in PARAMETERS] == [
        "backbone", "attention", "weights", "device", "precision", "int8_calibration", "backend",
        "inference_height", "inference_width", "threads", "overlay_alpha", "reliability", "max_input_pixels",
        "transport", "cameras", "batch_cameras", "frame_score", "score_warn_above", "score_clear_below",
        "score_window", "camera_height", "camera_width"]
    assert SPECS["backbone"].choices == ("erfnet", "dabnet")
    assert SPECS["attention"].choices == ("eac", "nonlocal", "none")
    assert SPECS["precision"].choices == ("auto", "fp32", "fp16", "bf16", "int8")
    assert SPECS["backend"].choices == ("auto", "torch", "torch_compiled", "onnxruntime", "openvino")
    assert SPECS["reliability"].choices == ("auto", "reliable", "best_effort")
    assert SPECS["transport"].choices == ("raw", "compressed")
    assert SPECS["overlay_alpha"].float_range == (0.0, 1.0)
    assert SPECS["inference_height"].int_range[0] == 0
    assert SPECS["threads"].default == 0 and SPECS["threads"].int_range == (0, 256)
    assert SPECS["cameras"].default == [] and SPECS["batch_cameras"].choices == ("auto", "always", "never")


def test_only_overlay_alpha_changes_at_run_time_and_descriptions_say_so():
    assert [p.name for p in PARAMETERS if not p.read_only] == ["overlay_alpha", "score_warn_above",
                                                               "score_clear_below"]
    for spec in PARAMETERS:
        assert spec.description and spec.full_description().startswith(spec.description)
        assert ("restart" in spec.full_description()) == spec.read_only
        assert spec.name in ("weights", "int8_calibration") or spec.constraints()  # free paths


def test_defaults_are_valid_and_pick_eacnet_erf():
    config = NodeConfig.from_values({})
    assert config.model_name == "eacnet_erf"
    assert (config.device, config.precision, config.backend) == ("auto", "auto", "auto")
    assert (config.inference_height, config.inference_width, config.overlay_alpha) == (0, 0, 0.5)
    assert config.input_topic == "image" and not config.compressed


@pytest.mark.parametrize("backbone, attention, model", [
    ("erfnet", "eac", "eacnet_erf"), ("erfnet", "nonlocal", "eacnet_erf_nl"), ("erfnet", "none", "erfnet_enc"),
    ("dabnet", "eac", "eacnet_dab"), ("dabnet", "none", "dabnet")])
def test_backbone_and_attention_pick_the_registry_model(backbone, attention, model):
    assert NodeConfig.from_values({"backbone": backbone, "attention": attention}).model_name == model


def test_compressed_transport_subscribes_to_image_compressed():
    assert NodeConfig.from_values({"transport": "compressed"}).input_topic == "image/compressed"


@pytest.mark.parametrize("values, words", [
    ({"backbone": "resnet"}, "backbone='resnet' must be one of: erfnet, dabnet"),
    ({"attention": "se"}, "attention='se' must be one of: eac, nonlocal, none"),
    ({"backbone": "dabnet", "attention": "nonlocal"}, "no model for backbone='dabnet' attention='nonlocal'"),
    ({"device": "gpu"}, "device='gpu' must be one of: auto, cpu, cuda, cuda:N"),
    ({"device": "cuda:x"}, "device='cuda:x'"),
    ({"precision": "int4"}, "precision='int4' must be one of: auto, fp32, fp16, bf16, int8"),
    ({"backend": "tensorrt"}, "backend='tensorrt' must be one of"),
    ({"inference_height": -1, "inference_width": 32}, "inference_height=-1 must be a integer in"),
    ({"inference_height": 360}, "must both be positive or both 0"),
    ({"overlay_alpha": 1.5}, r"overlay_alpha=1.5 must be a number in \[0.0, 1.0\]"),
    ({"overlay_alpha": float("nan")}, "overlay_alpha=nan"),
    ({"overlay_alpha": "half"}, "overlay_alpha='half' must be a float"),
    ({"inference_width": True}, "inference_width=True must be a int"),
    ({"reliability": "sometimes"}, "reliability='sometimes' must be one of: auto, reliable, best_effort"),
    ({"transport": "theora"}, "transport='theora' must be one of: raw, compressed"),
])
def test_invalid_parameters_raise_a_clear_message(values, words):
    with pytest.raises(ParameterError, match=words):
        NodeConfig.from_values(values)


def test_all_invalid_parameters_are_reported_at_once():
    with pytest.raises(ParameterError) as info:
        NodeConfig.from_values({"backbone": "x", "transport": "y", "overlay_alpha": 3.0})
    message = str(info.value)
    assert "backbone='x'" in message and "transport='y'" in message and "overlay_alpha=3.0" in message


def test_accepted_values_are_normalised():
    config = NodeConfig.from_values({"device": "CUDA:1", "overlay_alpha": 1, "weights": "~/w.pt"})
    assert config.device == "cuda:1" and config.overlay_alpha == 1.0 and isinstance(config.overlay_alpha, float)
    assert not config.weights.startswith("~") and config.weights.endswith("w.pt")


@pytest.mark.parametrize("name, value, words", [
    ("overlay_alpha", 0.25, None),
    ("overlay_alpha", 1.0, None),
    ("overlay_alpha", 1.2, "overlay_alpha=1.2 must be"),
    ("backbone", "dabnet", "backbone is read at start-up: restart the node"),
    ("reliability", "reliable", "restart the node"),
    ("use_sim_time", True, None),  # not ours: accepted untouched
])
def test_run_time_parameter_updates(name, value, words):
    reason = parameter_update_error(name, value)
    assert reason is None if words is None else words in reason


# ---------------------------------------------------------------------------- device and start-up

@pytest.mark.parametrize("device, precision, cuda, count, expected, warns", [
    ("cpu", "auto", True, 1, ("cpu", "auto"), None),
    ("auto", "auto", True, 1, ("cuda", "auto"), None),
    ("cuda:1", "fp16", True, 2, ("cuda:1", "fp16"), None),
    ("auto", "auto", False, 0, ("cpu", "auto"), "device auto: CUDA is not available; running on CPU"),
    ("cuda", "fp16", False, 0, ("cpu", "fp32"), "with fp32 instead of fp16"),
    ("cuda:3", "auto", True, 1, ("cpu", "auto"), "only 1 CUDA device(s)"),
    ("auto", "int8", True, 1, ("cpu", "int8"), None),  # int8 is a CPU path even beside a GPU
    ("cuda", "int8", True, 1, ("cpu", "int8"), "precision int8 runs on the CPU"),
    ("auto", "int8", False, 0, ("cpu", "int8"), None),
])
def test_choose_device_falls_back_to_cpu_with_one_warning(device, precision, cuda, count, expected, warns):
    chosen, new_precision, warning = choose_device(device, precision, cuda, count)
    assert (chosen, new_precision) == expected
    assert warning is None if warns is None else warns in warning


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("weights") / "tiny_eacnet_erf.pt", "eacnet_erf", seed=1)


def _config(**values) -> NodeConfig:
    base = {"device": "cpu", "inference_height": 16, "inference_width": 24}
    return NodeConfig.from_values({**base, **values})


def test_load_segmenter_loads_and_warms_the_checkpoint(checkpoint, monkeypatch):
    warmed = []
    monkeypatch.setattr(Segmenter, "warmup", lambda self, *a, **k: warmed.append(self))
    warnings: list[str] = []
    seg = load_segmenter(_config(weights=str(checkpoint)), warnings.append)
    assert seg.loaded_from_file and seg.weights == checkpoint and str(seg.device) == "cpu"
    assert warmed == [seg] and warnings == []
    assert seg.segment(frame()).shape == (H, W)


def test_cuda_request_without_cuda_warns_once_and_runs_on_cpu(checkpoint, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    warnings: list[str] = []
    seg = load_segmenter(_config(weights=str(checkpoint), device="cuda", precision="fp16"),
                                    warnings.append)
    assert str(seg.device) == "cpu" and seg.precision == "fp32"
    assert len(warnings) == 1 and "running on CPU" in warnings[0]


def test_missing_weights_file_is_a_clear_start_up_error(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint file not found") as info:
        load_segmenter(_config(weights=str(tmp_path / "nope.pt")), print)
    line = startup_error_text(info.value)
    assert "\n" not in line and "nope.pt" in line


def test_no_weights_and_no_packaged_default_says_which_file_to_pass(no_packaged_weights):
    with pytest.raises(CheckpointError, match="pass a checkpoint"):
        load_segmenter(_config(backbone="dabnet", attention="eac"), print)


def test_fp16_on_cpu_is_a_start_up_error(checkpoint):
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        load_segmenter(_config(weights=str(checkpoint), precision="fp16"), print)


def test_startup_error_text_is_one_line_and_names_unexpected_types():
    assert startup_error_text(ValueError("bad\n  thing")) == "bad thing"
    assert startup_error_text(RuntimeError("boom")) == "RuntimeError: boom"


# ---------------------------------------------------------------------------- per-frame processing

def test_mask_has_input_size_and_valid_class_ids(segmenter):
    out = FrameProcessor(segmenter).process(frame(), want_color=False, want_overlay=False)
    assert out.mask.shape == (H, W) and out.mask.dtype == np.uint8
    assert out.mask.max() < segmenter.num_classes
    assert out.color_mask is None and out.overlay is None


def test_colour_and_overlay_only_when_wanted(segmenter):
    processor = FrameProcessor(segmenter, overlay_alpha=0.5)
    image = frame()
    colour_only = processor.process(image, want_color=True, want_overlay=False)
    assert colour_only.overlay is None
    assert np.array_equal(colour_only.color_mask, segmenter.colorize(colour_only.mask))
    overlay_only = processor.process(image, want_color=False, want_overlay=True)
    assert overlay_only.color_mask is None and overlay_only.overlay.shape == (H, W, 3)


def test_overlay_alpha_is_applied_and_validated(segmenter):
    processor = FrameProcessor(segmenter, overlay_alpha=0.0)
    image = frame()
    assert np.array_equal(processor.process(image, False, True).overlay, image)
    processor.overlay_alpha = 1.0
    out = processor.process(image, True, True)
    assert np.array_equal(out.overlay, out.color_mask)
    with pytest.raises(ValueError, match="overlay_alpha"):
        processor.overlay_alpha = 1.5
    assert processor.overlay_alpha == 1.0


def test_encoded_outputs_carry_the_input_header(segmenter):
    store = get_typestore(Stores.ROS2_JAZZY)
    src = header(sec=42, frame_id="left")
    out = FrameProcessor(segmenter).process(frame(), True, True, want_confidence=True)
    assert out.score is not None and 0.0 <= out.score <= 1.0
    messages = encode_frame(out, src, store.types["sensor_msgs/msg/Image"])
    assert set(messages) == {"mask", "color_mask", "overlay", "confidence"}
    for topic, encoding in OUTPUT_ENCODINGS.items():
        msg = store.deserialize_cdr(store.serialize_cdr(messages[topic], "sensor_msgs/msg/Image"),
                                    "sensor_msgs/msg/Image")
        assert (msg.encoding, msg.height, msg.width) == (encoding, H, W)
        assert (msg.header.frame_id, msg.header.stamp.sec, msg.header.stamp.nanosec) == ("left", 42, 11)
    assert np.array_equal(codec.image_to_array(messages["mask"])[..., 0], out.mask)
    assert np.array_equal(codec.image_to_array(messages["confidence"])[..., 0], out.confidence)


# ---------------------------------------------------------------------------- newest-frame mailbox

def test_latest_frame_keeps_only_the_newest_and_reports_overwrites():
    slot = LatestFrame()
    assert slot.put("a", 1.0) is False
    assert slot.put("b", 2.0) is True  # "a" was never taken: dropped
    assert slot.take(timeout=0) == ("b", 2.0)
    assert slot.take(timeout=0.01) is None


def test_latest_frame_close_wakes_a_waiting_taker():
    slot = LatestFrame()
    result = []
    taker = threading.Thread(target=lambda: result.append(slot.take(timeout=5)))
    taker.start()
    time.sleep(0.05)
    slot.close()
    taker.join(30)  # returns as soon as the taker wakes
    assert not taker.is_alive() and result == [None]


# ---------------------------------------------------------------------------- the worker

def test_worker_publishes_mask_with_header_and_skips_unwatched_outputs(segmenter):
    worker = make_worker(segmenter)
    msg = image_msg(sec=99)
    assert worker.process_one(msg, time.monotonic())
    (mask,) = worker.publishers["mask"].sent
    assert mask.header is msg.header and mask.encoding == "mono8" and (mask.height, mask.width) == (H, W)
    assert worker.publishers["color_mask"].sent == [] and worker.publishers["overlay"].sent == []
    assert worker.stats.totals()["processed"] == 1


def test_worker_computes_colour_and_overlay_while_subscribed(segmenter):
    worker = make_worker(segmenter, color_subs=1, overlay_subs=2)
    worker.process_one(image_msg(), time.monotonic())
    assert worker.publishers["color_mask"].sent[0].encoding == "bgr8"
    assert worker.publishers["overlay"].sent[0].encoding == "bgr8"
    worker.publishers["color_mask"].subscribers = 0  # the viewer closed
    worker.process_one(image_msg(), time.monotonic())
    assert len(worker.publishers["color_mask"].sent) == 1 and len(worker.publishers["overlay"].sent) == 2


def test_worker_decodes_compressed_images(segmenter):
    jpeg = codec.bgr_to_compressed(CompressedImage, header(), frame(), "jpeg")
    worker = make_worker(segmenter)
    assert worker.process_one(jpeg, time.monotonic())
    assert worker.publishers["mask"].sent[0].width == W


def test_bad_frames_are_counted_warned_and_the_worker_goes_on(segmenter):
    warnings: list[str] = []
    worker = make_worker(segmenter, warnings=warnings)
    assert not worker.process_one(image_msg(encoding="32FC1"), time.monotonic())
    broken = image_msg()
    broken.data = broken.data[:-3]
    assert not worker.process_one(broken, time.monotonic())
    assert worker.process_one(image_msg(), time.monotonic())
    totals = worker.stats.totals()
    assert (totals["bad"], totals["processed"]) == (2, 1)
    assert len(warnings) == 1 and "unsupported encoding '32FC1'" in warnings[0]  # second one throttled


def test_an_exception_in_one_frame_is_counted_and_not_fatal(segmenter, monkeypatch):
    warnings: list[str] = []
    worker = make_worker(segmenter, warnings=warnings)
    calls = iter([RuntimeError("CUDA out of memory")])

    def flaky_segment(images, *args):
        error = next(calls, None)
        if error:
            raise error
        return Segmenter.segment_frames(segmenter, images, *args)

    monkeypatch.setattr(worker.processor, "segmenter", _Wrapped(segmenter, segment_frames=flaky_segment))
    assert not worker.process_one(image_msg(), time.monotonic())
    assert worker.process_one(image_msg(), time.monotonic())
    assert worker.stats.totals()["failed"] == 1 and worker.stats.totals()["processed"] == 1
    assert "RuntimeError: CUDA out of memory" in warnings[0]


def test_a_failing_publisher_is_counted_not_fatal(segmenter):
    worker = make_worker(segmenter)
    worker.publishers["mask"].fail = True
    assert not worker.process_one(image_msg(), time.monotonic())
    assert worker.stats.totals()["failed"] == 1


def test_nothing_is_published_after_shutdown(segmenter):
    worker = make_worker(segmenter, active=lambda: False)
    assert not worker.process_one(image_msg(), time.monotonic())
    assert worker.publishers["mask"].sent == []


class _Wrapped:
    """The segmenter with some methods replaced."""

    def __init__(self, inner, **methods):
        self._inner, self._methods = inner, methods

    def __getattr__(self, name):
        return self._methods.get(name) or getattr(self._inner, name)


def test_slow_model_drops_frames_instead_of_queueing(segmenter):
    """Frames arrive faster than the model runs (its pass waits until all 40 have arrived,
    so no scheduling on a busy machine can let it keep up): the worker always takes the
    newest, the overwritten ones are counted, and every received frame is accounted for."""
    all_arrived = threading.Event()

    def slow_segment(images, *args):
        all_arrived.wait(60)  # ends as soon as the last frame is in
        return Segmenter.segment_frames(segmenter, images, *args)

    worker = make_worker(segmenter)
    worker.processor.segmenter = _Wrapped(segmenter, segment_frames=slow_segment)
    worker.start()
    try:
        for i in range(40):
            msg = image_msg(seed=i % 3, sec=i)
            worker.stats.on_received(dropped_previous=worker.slot.put(msg, time.monotonic()))
        all_arrived.set()
        deadline = time.monotonic() + 60  # let the last frame finish, even on a busy machine
        while sum(worker.stats.totals()[k] for k in ("processed", "dropped")) < 40 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        all_arrived.set()
        worker.stop()
    totals = worker.stats.totals()
    sent = worker.publishers["mask"].sent
    # at most one frame was taken before the last arrived, then the newest: 1 or 2 processed
    assert totals["received"] == 40 and totals["processed"] in (1, 2) and totals["dropped"] >= 38
    assert totals["processed"] + totals["dropped"] == 40
    assert sent[-1].header.stamp.sec == 39  # the newest frame is never lost
    assert [m.header.stamp.sec for m in sent] == sorted(m.header.stamp.sec for m in sent)


def test_worker_stop_joins_the_thread(segmenter):
    worker = make_worker(segmenter)
    worker.start()
    worker.stop(timeout=30)  # returns as soon as the thread has ended
    assert not worker._thread.is_alive()


# ---------------------------------------------------------------------------- statistics and diagnostics

class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_report_gives_fps_latency_percentiles_and_counters():
    clock = FakeClock()
    stats = FrameStats(clock=clock)
    for i in range(10):
        stats.on_received(dropped_previous=i % 2 == 1)
        received = clock.now
        clock.now += 0.01 * (i + 1)  # published (even i): latencies 10, 30, 50, 70, 90 ms
        if i % 2 == 0:
            stats.on_published(received)
    clock.now = 102.0
    report = stats.report(static=(("device", "cpu"), ("precision", "fp32")))
    assert report.level == OK
    assert report.value("fps") == "2.50"  # 5 frames in 2 s
    assert report.value("latency_ms_p50") == "50.0"
    assert float(report.value("latency_ms_p90")) == pytest.approx(82.0)
    assert float(report.value("latency_ms_p99")) == pytest.approx(89.2)
    assert (report.value("frames_received"), report.value("frames_processed")) == ("10", "5")
    assert report.value("frames_dropped") == "5" and report.value("dropped_last_period") == "5"
    assert report.value("device") == "cpu" and report.value("precision") == "fp32"
    assert "2.5 fps" in report.message and "5 dropped" in report.message


def test_report_periods_reset_but_totals_accumulate():
    clock = FakeClock()
    stats = FrameStats(clock=clock)
    stats.on_received(True)
    stats.report()
    clock.now += STALL_ERROR_S
    second = stats.report()
    assert second.value("frames_dropped") == "1" and second.value("dropped_last_period") == "0"
    assert second.value("fps") == "0.00"
    assert (second.level, second.message) == (WARN, "no input images")
    assert second.value("latency_ms_p50") == "nan"


def test_report_levels_for_bad_and_failed_frames():
    stats = FrameStats()
    stats.on_received(False)
    stats.on_bad_frame()
    report = stats.report()
    assert report.level == WARN and "1 undecodable" in report.message
    assert report.value("frames_bad") == "1"
    stats.on_received(False)
    stats.on_failed_frame()
    report = stats.report()
    assert report.level == ERROR and report.value("frames_failed") == "1"


def test_static_diagnostics_name_model_device_precision(segmenter):
    values = dict(static_diagnostics(segmenter, _config()))
    assert values["model"] == "eacnet_erf" and values["device"] == "cpu" and values["precision"] == "fp32"
    assert values["backend"] == "torch" and values["inference_size"] == "24x16"
    assert values["weights"] == "untrained"


def test_label_map_lists_the_checkpoint_classes(segmenter):
    labels = label_map(segmenter)
    assert labels[0] == (0, "Sky") and labels[-1] == (10, "Bicyclist") and len(labels) == segmenter.num_classes


def test_throttle_lets_one_message_per_period_and_counts_the_rest():
    clock = FakeClock()
    throttle = Throttle(period_s=5.0, clock=clock)
    assert throttle("bad", "first") == "first"
    assert throttle("bad", "again") is None and throttle("bad", "again") is None
    assert throttle("other", "independent") == "independent"
    clock.now += 5.0
    assert throttle("bad", "later") == "later (2 similar message(s) suppressed)"


def test_empty_weights_parameter_uses_the_packaged_default():
    if packaged_weights("eacnet_erf") is None:
        pytest.fail("eacnet_erf weights are expected to ship with the package")
    segmenter = load_segmenter(_config(device="cpu", backend="torch"), print)
    assert segmenter.loaded_from_file and segmenter.weights == packaged_weights("eacnet_erf")


def test_threads_parameter_reaches_the_segmenter_options():
    options = segmenter_options(_config(threads=1), "cpu", "fp32")
    assert options.threads == 1
    with pytest.raises(ParameterError, match="threads=-1"):
        _config(threads=-1)


# ---------------------------------------------------------------------------- real-ROS start-up and QoS logic

def test_command_line_overrides_are_parsed_as_yaml_after_ros_args():
    argv = ["segment_node", "-p", "threads:=9", "--ros-args", "-p", "threads:=2", "--param", "overlay_alpha:=0.25",
            "-p", "use_sim_time:=true", "-r", "image:=/cam", "--", "-p", "backbone:=dabnet"]
    found = command_line_overrides(argv)
    assert found == {"threads": ("threads:=2", 2), "overlay_alpha": ("overlay_alpha:=0.25", 0.25)}


@pytest.mark.parametrize("argv, words", [
    (["--ros-args", "-p", "threads:=abc"], r"-p threads:=abc: threads='abc' must be a int"),
    (["--ros-args", "-p", "backbone:=nope"], r"backbone='nope' must be one of: erfnet, dabnet"),
    (["--ros-args", "-p", "overlay_alpha:=2"], r"overlay_alpha=2 must be a number in \[0.0, 1.0\]"),
])
def test_bad_command_line_values_are_refused_before_rcl_merges_them(argv, words):
    with pytest.raises(ParameterError, match=words):
        check_command_line(argv)


def test_an_integer_for_a_float_parameter_is_accepted():
    check_command_line(["--ros-args", "-p", "overlay_alpha:=1"])
    check_command_line(["--ros-args", "-p", "overlay_alpha:=1"], {"overlay_alpha": 1.0})
    with pytest.raises(ParameterError, match="overlay_alpha:=1 was not applied"):
        check_command_line(["--ros-args", "-p", "overlay_alpha:=1"], {"overlay_alpha": 0.5})


def test_a_command_line_value_rcl_dropped_is_refused():
    """rcl keeps a params file's value when -p gives the same parameter another type."""
    argv = ["--ros-args", "--params-file", "p.yaml", "-p", "inference_height:=240"]
    check_command_line(argv, {"inference_height": 240})
    with pytest.raises(ParameterError, match=r"-p inference_height:=240 was not applied"):
        check_command_line(argv, {"inference_height": 0})


def test_rcl_errors_lose_their_c_source_locations():
    exc = RuntimeError("failed to initialize rcl: Couldn't parse params file: '--params-file /x.yaml'. Error: "
                       "Error opening YAML file, at /project/src/parser.c:271, at /project/src/rcl/arguments.c:415")
    assert startup_error_text(exc) == ("RuntimeError: failed to initialize rcl: Couldn't parse params file: "
                                                  "'--params-file /x.yaml'. Error: Error opening YAML file")


@pytest.mark.parametrize("mode, current, publishers, wanted", [
    ("auto", "best_effort", [], "best_effort"),
    ("auto", "best_effort", ["reliable"], "reliable"),
    ("auto", "reliable", ["reliable", "best_effort"], "best_effort"),
    ("auto", "reliable", [], "reliable"),
    ("reliable", "reliable", ["best_effort"], "reliable"),
    ("best_effort", "best_effort", ["reliable"], "best_effort"),
])
def test_auto_reliability_follows_the_publishers(mode, current, publishers, wanted):
    assert follow_publishers(mode, current, publishers) == wanted


def test_auto_starts_best_effort_and_fixed_modes_start_as_given():
    assert [initial_reliability(m) for m in ("auto", "reliable", "best_effort")] == [
        "best_effort", "reliable", "best_effort"]


def test_incompatible_qos_warning_names_topic_both_sides_and_the_fix():
    text = incompatible_qos_text("/camera/image_raw", "reliability", "reliable, volatile, keep_last 1",
                                            ["/driver: best_effort, volatile"], we_publish=False)
    assert "/camera/image_raw" in text and "reliable, volatile" in text and "/driver: best_effort" in text
    assert "-p reliability:=auto" in text
    text = incompatible_qos_text("/eacnet/mask", "durability", "reliable, volatile, keep_last 5",
                                            ["/rviz: reliable, transient_local"], we_publish=True)
    assert "durability" in text and "transient_local" in text and "Volatile" in text


def test_frames_arriving_with_none_published_for_seconds_is_an_error():
    clock = FakeClock()
    stats = FrameStats(clock=clock)
    stats.on_received(False)
    stats.on_bad_frame()
    clock.now += 1.0
    assert stats.report().level == WARN  # one bad frame: a warning
    for _ in range(3):
        clock.now += 1.0
        stats.on_received(False)
        stats.on_bad_frame()
    report = stats.report()
    assert report.level == ERROR and "none was published for 4 s" in report.message
    assert report.value("seconds_since_output") == "4.0"
    stats.on_received(False)
    stats.on_published(clock.now)
    clock.now += 1.0
    assert stats.report().level == OK  # one published frame clears it


def test_a_slow_node_shows_its_real_rate_in_every_report():
    """One frame every 2 s, reports every second: the rate is over a window of seconds, not
    the last period (which alternated 0 and 1 fps)."""
    clock = FakeClock()
    stats = FrameStats(clock=clock)
    rates = []
    for second in range(30):
        if second % 2 == 0:
            stats.on_received(False)
            received = clock.now
            clock.now += 0.9
            stats.on_published(received)
            clock.now += 0.1
        else:
            clock.now += 1.0
        report = stats.report()
        rates.append(float(report.value("fps")))
        assert report.level == OK, report.message
    assert all(0.4 <= rate <= 0.6 for rate in rates[12:]), rates


def test_latency_percentiles_follow_the_recent_frames():
    """200 fast frames, then slow ones for longer than the window: the percentiles show the
    slow ones (a window of the last 200 frames kept showing the fast ones)."""
    clock = FakeClock()
    stats = FrameStats(clock=clock)
    for _ in range(200):
        stats.on_received(False)
        received = clock.now
        clock.now += 0.19
        stats.on_published(received)
        clock.now += 0.01
    assert float(stats.report().value("latency_ms_p50")) == pytest.approx(190.0)
    for _ in range(8):
        stats.on_received(False)
        received = clock.now
        clock.now += 1.8
        stats.on_published(received)
    report = stats.report()
    assert float(report.value("latency_ms_p50")) == pytest.approx(1800.0)
    assert float(report.value("fps")) == pytest.approx(1 / 1.8, rel=0.15)


def test_no_stall_once_the_input_stops_on_a_bad_frame():
    """Bad frames, then nothing: once nothing has arrived for STALL_ERROR_S it is no input,
    not "frames arrive but none was published" (whose count grew while nothing arrived)."""
    clock = FakeClock()
    stats = FrameStats(clock=clock)
    for _ in range(5):
        stats.on_received(False)
        stats.on_bad_frame()
        clock.now += 1.0
        stats.report()
    assert stats.report().level == ERROR  # frames keep arriving, none published: a stall
    levels = []
    for _ in range(10):
        clock.now += 1.0
        report = stats.report()
        levels.append((report.level, report.message))
    assert all(level != ERROR for level, _ in levels[3:]), levels
    assert levels[-1] == (WARN, "no input images")
    stats.on_received(False)  # input resumes: a stall is timed from here, not from before the gap
    stats.on_bad_frame()
    clock.now += 1.0
    assert stats.report().level == WARN


def test_a_long_idle_gap_is_not_a_stall():
    clock = FakeClock()
    stats = FrameStats(clock=clock)
    clock.now += 60.0  # no input for a minute, then one frame that is being processed
    stats.on_received(False)
    clock.now += 0.5
    assert stats.report().level == OK


def test_frames_over_max_input_pixels_are_bad_frames_and_the_worker_goes_on(segmenter):
    warnings: list[str] = []
    worker = make_worker(segmenter, warnings=warnings, max_pixels=H * W - 1)
    assert not worker.process_one(image_msg(), time.monotonic())
    assert worker.stats.totals()["bad"] == 1 and "over the limit" in warnings[0]
    worker.max_pixels = H * W
    assert worker.process_one(image_msg(), time.monotonic())


def test_the_worker_thread_survives_any_exception(segmenter, monkeypatch):
    """Even an error outside process_one's own guards (here: in the stats) does not end
    the thread: later frames are still processed."""
    worker = make_worker(segmenter)
    calls = {"n": 0}
    original = worker.process_one

    def explode_once(msg, received_at):
        calls["n"] += 1
        if calls["n"] == 1:
            raise MemoryError("cannot allocate")
        return original(msg, received_at)

    monkeypatch.setattr(worker, "process_one", explode_once)
    worker.start()
    try:
        worker.slot.put(image_msg(), time.monotonic())
        deadline = time.monotonic() + 60  # ends early once done
        while calls["n"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        worker.slot.put(image_msg(), time.monotonic())
        while not worker.publishers["mask"].sent and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        worker.stop()
    assert worker.publishers["mask"].sent and worker.stats.totals()["failed"] == 1


# ---------------------------------------------------------------------------- several cameras: parameters

def test_cameras_default_to_the_single_camera_on_the_nodes_own_topics():
    config = NodeConfig.from_values({})
    assert config.cameras == () and config.camera_names == ("",) and config.batch_cameras == "auto"
    assert config.camera_input("") == "image" and camera_topic("", "mask") == "mask"


def test_each_camera_gets_its_topics_under_its_name():
    config = NodeConfig.from_values({"cameras": ["front", "rear/left"], "transport": "compressed"})
    assert config.cameras == ("front", "rear/left") and config.camera_names == config.cameras
    assert config.camera_input("front") == "front/image/compressed"
    assert camera_topic("rear/left", "overlay") == "rear/left/overlay"


@pytest.mark.parametrize("cameras, words", [
    (["front", "/left"], "'/left' not valid"),
    (["2nd"], "'2nd' not valid"),
    (["front", "fr ont", "a//b"], "'fr ont', 'a//b' not valid"),
    (["front", "left", "front"], "cameras: front given more than once"),
    ("front", "cameras='front' must be a list of strings"),
    ([1, 2], "must be a list of strings"),
])
def test_bad_camera_names_are_refused_with_the_reason(cameras, words):
    with pytest.raises(ParameterError, match=words):
        NodeConfig.from_values({"cameras": cameras})


def test_cameras_on_the_command_line_are_a_yaml_list():
    argv = ["segment_node", "--ros-args", "-p", "cameras:=[front, left]", "-p", "batch_cameras:=never"]
    assert command_line_overrides(argv)["cameras"] == ("cameras:=[front, left]", ["front", "left"])
    with pytest.raises(ParameterError, match="batch_cameras='sometimes' must be one of: auto, always, never"):
        check_command_line(["--ros-args", "-p", "batch_cameras:=sometimes"])


@pytest.mark.parametrize("mode, device, batched", [
    ("auto", "cuda", True), ("auto", "cpu", False), ("always", "cpu", True), ("never", "cuda", False)])
def test_batching_is_on_for_cuda_or_when_forced(mode, device, batched):
    assert batch_frames(mode, device) is batched


@pytest.mark.parametrize("state, words", [
    ("unconfigured", None),
    ("inactive", "only while the node is unconfigured (it is inactive: deactivate and cleanup first)"),
    ("active", "(it is active"),
])
def test_the_managed_node_takes_start_up_parameters_only_while_unconfigured(state, words):
    reason = parameter_update_error("weights", "/tmp/best.pt", lifecycle_state=state)
    assert reason is None if words is None else words in reason
    assert parameter_update_error("overlay_alpha", 0.3, lifecycle_state=state) is None
    assert "must be one of" in parameter_update_error("backbone", "resnet", lifecycle_state="unconfigured")


def test_managed_descriptions_say_when_a_change_applies():
    assert SPECS["weights"].full_description(managed=True).endswith("set it while the node is unconfigured.")
    assert SPECS["overlay_alpha"].full_description(managed=True).endswith("Changes apply at run time.")


# ---------------------------------------------------------------------------- several cameras: scheduling

def test_the_scheduler_serves_waiting_cameras_round_robin():
    scheduler = FrameScheduler(["a", "b", "c"])
    assert scheduler.put("a", "a1", 1.0) is False and scheduler.put("c", "c1", 1.0) is False
    assert scheduler.put("a", "a2", 2.0) is True  # a1 never taken: a drop for camera a only
    assert scheduler.take() == [("a", "a2", 2.0)]
    scheduler.put("a", "a3", 3.0)
    assert scheduler.take() == [("c", "c1", 1.0)]  # c comes before a's next frame
    assert scheduler.take() == [("a", "a3", 3.0)]
    assert scheduler.take(timeout=0.01) == []


def test_a_busy_camera_cannot_starve_a_slow_one():
    """Camera 'fast' always has a new frame when the worker comes back; 'slow' gets one now
    and then. Each slow frame is served at the next take, never replaced while waiting."""
    scheduler = FrameScheduler(["fast", "slow"])
    served = []
    for i in range(40):
        scheduler.put("fast", f"fast{i}", float(i))
        if i % 10 == 3:
            assert scheduler.put("slow", f"slow{i}", float(i)) is False
        served.append(scheduler.take(timeout=0)[0][1])
    slow = [name for name in served if name.startswith("slow")]
    assert slow == ["slow3", "slow13", "slow23", "slow33"]
    assert all(served[served.index(name) - 1].startswith("fast") for name in slow)


def test_a_batch_take_returns_the_waiting_frame_of_every_camera_once():
    scheduler = FrameScheduler(["a", "b", "c"])
    scheduler.put("a", "a1", 1.0)
    scheduler.put("b", "b1", 1.0)
    scheduler.put("c", "c1", 1.0)
    assert scheduler.take(max_frames=2) == [("a", "a1", 1.0), ("b", "b1", 1.0)]
    scheduler.put("a", "a2", 2.0)
    assert scheduler.take(max_frames=3) == [("c", "c1", 1.0), ("a", "a2", 2.0)]  # from after b


def test_closing_the_scheduler_wakes_the_worker():
    scheduler = FrameScheduler(["a", "b"])
    result = []
    taker = threading.Thread(target=lambda: result.append(scheduler.take(timeout=5)))
    taker.start()
    time.sleep(0.05)
    scheduler.close()
    taker.join(30)  # returns as soon as the taker wakes
    assert not taker.is_alive() and result == [[]] and scheduler.slot("a").closed


# ---------------------------------------------------------------------------- several cameras: statistics

def test_camera_stats_count_per_camera_and_in_total():
    clock = FakeClock()
    stats = CameraStats(["front", "left"], clock=clock)
    front, left = stats.camera("front"), stats.camera("left")
    for _ in range(4):
        front.on_received(False)
        front.on_published(clock.now - 0.05)
    front.on_received(True)
    left.on_received(False)
    left.on_bad_frame()
    clock.now += 1.0
    reports = dict(stats.report(static=(("model", "dabnet"),)))
    assert list(reports) == ["", "front", "left"]
    total = reports[""]
    assert (total.value("frames_received"), total.value("frames_processed"), total.value("frames_bad")) == (
        "6", "4", "1")
    assert total.value("model") == "dabnet" and total.value("cameras") == "front, left"
    assert reports["front"].value("fps") == "4.00" and reports["front"].value("frames_dropped") == "1"
    assert reports["front"].value("camera") == "front" and reports["front"].level == OK
    assert reports["left"].level == WARN and reports["left"].value("frames_processed") == "0"
    assert total.level == WARN and total.message.startswith("left: 1 undecodable")
    assert "2 cameras: " in total.message


def test_the_single_camera_has_only_the_total():
    stats = CameraStats([""])
    assert stats.camera("") is stats.total
    stats.camera("").on_received(False)
    (name, report), = stats.report()
    assert name == "" and report.value("frames_received") == "1" and "cameras" not in dict(report.values)


# ---------------------------------------------------------------------------- several cameras: the worker

def make_multi_worker(segmenter, cameras=("front", "left"), batch=True, warnings=None) -> MultiCameraWorker:
    warnings = warnings if warnings is not None else []
    scheduler = FrameScheduler(list(cameras))
    stats = CameraStats(list(cameras))
    processor = FrameProcessor(segmenter, 0.5)
    pipelines = {camera: FrameWorker(scheduler.slot(camera), processor, stats.camera(camera),
                                     {"mask": FakePublisher(), "color_mask": FakePublisher(1),
                                      "overlay": FakePublisher()}, Image,
                                     warn=lambda text, c=camera: warnings.append(f"{c}: {text}"))
                 for camera in cameras}
    worker = MultiCameraWorker(scheduler, pipelines, processor, batch, warn=warnings.append)
    worker.stats = stats  # for the tests
    return worker


def camera_msg(camera: str, sec: int, height: int = H, width: int = W):
    pixels = np.random.default_rng(sec).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return codec.array_to_image(Image, header(sec, frame_id=f"{camera}_optical"), pixels, "bgr8")


def test_batched_frames_go_through_one_forward_pass_and_out_on_their_cameras_topics(segmenter, monkeypatch):
    worker = make_multi_worker(segmenter)
    batches = []
    real = worker.processor.process_batch
    monkeypatch.setattr(worker.processor, "process_batch",
                        lambda images, wanted, sizes: batches.append(len(images)) or real(images, wanted, sizes))
    front, left = camera_msg("front", 1), camera_msg("left", 2, height=30, width=40)
    assert worker.process([("front", front, time.monotonic()), ("left", left, time.monotonic())]) == 2
    assert batches == [2]
    for camera, msg in (("front", front), ("left", left)):
        publishers = worker.pipelines[camera].publishers
        (mask,) = publishers["mask"].sent
        (colour,) = publishers["color_mask"].sent
        assert mask.header is msg.header and colour.header is msg.header
        assert (mask.height, mask.width) == (msg.height, msg.width) and publishers["overlay"].sent == []
        assert worker.stats.per_camera[camera].totals()["processed"] == 1
    assert worker.stats.total.totals()["processed"] == 2


def test_a_bad_frame_in_a_batch_costs_only_its_camera(segmenter):
    warnings: list[str] = []
    worker = make_multi_worker(segmenter, warnings=warnings)
    bad = camera_msg("front", 3)
    bad.encoding = "32FC1"
    assert worker.process([("front", bad, time.monotonic()), ("left", camera_msg("left", 4), time.monotonic())]) == 1
    assert worker.stats.per_camera["front"].totals()["bad"] == 1
    assert worker.stats.per_camera["left"].totals()["processed"] == 1
    assert warnings and warnings[0].startswith("front: skipping an image")


def test_a_failing_batch_counts_a_failed_frame_per_camera_and_the_worker_goes_on(segmenter, monkeypatch):
    warnings: list[str] = []
    worker = make_multi_worker(segmenter, warnings=warnings)
    monkeypatch.setattr(segmenter, "segment_batch", lambda images: (_ for _ in ()).throw(RuntimeError("CUDA OOM")))
    frames = [("front", camera_msg("front", 5), time.monotonic()), ("left", camera_msg("left", 6), time.monotonic())]
    assert worker.process(frames) == 0
    assert [worker.stats.per_camera[c].totals()["failed"] for c in ("front", "left")] == [1, 1]
    assert all("RuntimeError: CUDA OOM" in w for w in warnings) and len(warnings) == 2
    monkeypatch.undo()
    assert worker.process(frames) == 2


@pytest.mark.parametrize("batch", [True, False])
def test_the_worker_thread_serves_every_camera(segmenter, batch):
    cameras = ("a", "b", "c", "d")
    worker = make_multi_worker(segmenter, cameras=cameras, batch=batch)
    worker.start()
    try:
        for round_ in range(3):
            for i, camera in enumerate(cameras):
                msg = camera_msg(camera, 10 * round_ + i)
                worker.pipelines[camera].stats.on_received(worker.scheduler.put(camera, msg, time.monotonic()))
            deadline = time.monotonic() + 60  # ends early once done
            while (worker.stats.total.totals()["processed"] + worker.stats.total.totals()["dropped"]
                   < 4 * (round_ + 1)) and time.monotonic() < deadline:
                time.sleep(0.01)
    finally:
        worker.stop()
    assert not worker.running
    for i, camera in enumerate(cameras):
        sent = worker.pipelines[camera].publishers["mask"].sent
        assert sent and all(m.header.frame_id == f"{camera}_optical" for m in sent)
        assert sent[-1].header.stamp.sec == 20 + i  # the newest frame of each camera is never lost


# ---------------------------------------------------------------------------- frames of changing sizes

@pytest.fixture(scope="module")
def own_size_segmenter() -> Segmenter:
    """No inference size: the network runs at the frame's size, one engine per size."""
    torch.manual_seed(0)
    options = SegmenterOptions(device="cpu", backend="torch")
    return Segmenter(build_model("eacnet_erf", CAMVID.num_classes), "eacnet_erf", CAMVID, options)


def test_odd_sized_frames_run_at_the_cameras_size_so_its_engine_stays(own_size_segmenter):
    """A publisher of random sizes on the camera's topic: the network only ever sees the
    camera's size (no engine per odd size to evict the camera's), and every frame still
    gets a mask at its own size."""
    seen: list[tuple[int, int]] = []

    def spy(images, *args):
        seen.extend(bgr.shape[:2] for bgr in images)
        return Segmenter.segment_frames(own_size_segmenter, images, *args)

    worker = make_worker(_Wrapped(own_size_segmenter, segment_frames=spy))
    rng = np.random.default_rng(3)
    odd_sizes = [(int(rng.integers(16, 80)), int(rng.integers(16, 80))) for _ in range(12)]
    for i, odd in enumerate(odd_sizes):
        for pixels in (frame(i), rng.integers(0, 256, (*odd, 3), dtype=np.uint8)):
            msg = codec.array_to_image(Image, header(i), pixels, "bgr8")
            assert worker.process_one(msg, time.monotonic())
    assert set(seen) == {(H, W)}
    masks = worker.publishers["mask"].sent
    assert [(m.height, m.width) for m in masks[1::2]] == odd_sizes
    assert worker.stats.totals()["processed"] == 2 * len(odd_sizes)


def test_the_busiest_recent_size_is_the_cameras():
    sizes = FrameSizes(history=8)
    assert sizes.network_size((360, 480)) is None
    assert sizes.network_size((720, 1280)) == (360, 480)  # a tie: the size seen first
    assert [sizes.network_size((720, 1280)) for _ in range(2)] == [None, None]  # now the busier one
    assert sizes.network_size((360, 480)) == (720, 1280)
    for _ in range(8):  # only the last 8 frames count: a camera switched to 720p takes over
        sizes.network_size((100, 100)) if _ < 3 else sizes.network_size((720, 1280))
    assert sizes.network_size((100, 100)) == (720, 1280)


def test_the_vision_msgs_warning_fits_how_the_node_was_installed():
    assert "sudo apt install ros-jazzy-vision-msgs" in missing_vision_msgs_text("jazzy")
    pip_only = missing_vision_msgs_text(None)
    assert "apt install" not in pip_only.replace("ros-<distro>-vision-msgs", "")
    assert "wheels" in pip_only and "label_info" in pip_only and "not published" in pip_only


def test_an_endpoint_whose_node_is_not_known_yet_is_not_called_nameless():
    assert endpoint_owner("_NODE_NAME_UNKNOWN_", "_NODE_NAMESPACE_UNKNOWN_").startswith(
        "an endpoint whose ROS node is not known yet")
    assert endpoint_owner("_ros2cli_1234", "/") == "/_ros2cli_1234"
    assert endpoint_owner("rviz", "/tools/") == "/tools/rviz"


def test_label_info_holds_every_class_name_with_its_mask_id(segmenter):
    """vision_msgs has no wheel: its message definitions, registered with rosbags, stand in
    for the generated classes, and a CDR round trip shows the wire layout holds them."""
    from rosbags.typesys import get_types_from_msg

    store = get_typestore(Stores.ROS2_HUMBLE)
    store.register(get_types_from_msg("uint16 class_id\nstring class_name\n", "vision_msgs/msg/VisionClass"))
    store.register(get_types_from_msg("std_msgs/Header header\nvision_msgs/VisionClass[] class_map\n"
                                      "float32 threshold\n", "vision_msgs/msg/LabelInfo"))
    info_type, class_type = store.types["vision_msgs/msg/LabelInfo"], store.types["vision_msgs/msg/VisionClass"]
    msg = label_info(info_type, class_type, header(3), segmenter)
    msg = store.deserialize_cdr(store.serialize_cdr(msg, msg.__msgtype__), msg.__msgtype__)
    assert [(c.class_id, c.class_name) for c in msg.class_map] == list(enumerate(CAMVID.class_names))
    assert msg.threshold == 0.0 and msg.header.stamp.sec == 3



def test_what_libpng_prints_while_decoding_goes_to_the_workers_throttled_warnings(segmenter, capfd):
    ok, png = cv2.imencode(".png", frame(2))
    data = bytearray(png.tobytes())
    idat = data.index(b"IDAT")
    data[idat + 4 + int.from_bytes(data[idat - 4:idat], "big")] ^= 0xFF  # the IDAT chunk's CRC
    msg = CompressedImage(header=header(), format="png", data=np.frombuffer(bytes(data), np.uint8))
    warnings: list[str] = []
    worker = make_worker(segmenter, warnings=warnings)
    assert not worker.process_one(msg, time.monotonic())
    assert any(w.startswith("image library, while decoding a frame: libpng") for w in warnings), warnings
    assert "libpng" not in capfd.readouterr().err
