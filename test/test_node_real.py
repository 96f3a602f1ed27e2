"""segment_node on the real ROS 2 middleware, in this process (see ros_harness.py).

Every node runs from ``SegmentNode(context=..., parameter_overrides=...)`` in a context of
its own, spun by a SingleThreadedExecutor in a thread; a probe node in another context talks
to it through real topics and real parameter services only: discovery, QoS matching,
serialization and the executor are rclpy's and Fast DDS's, not a double's.

The model is the cheapest one (dabnet without attention, torch, one thread, CPU). One node
("main") serves most tests; nodes with other parameters are started where a test needs them.
"""

from __future__ import annotations

import array
import logging
import time
from typing import Any

import numpy as np
import pytest
import ros_harness as h  # skips this module without rclpy
from rclpy.clock import ClockType  # noqa: E402  (after ros_harness: it skips without rclpy)
from ros_harness import RunningNode, endpoints

from eacnet_ros.node.params import PARAMETERS

# rclpy's default incompatible-QoS handler still calls the deprecated Logger.warn
pytestmark = pytest.mark.filterwarnings("ignore:Deprecated in favor of:DeprecationWarning")

NUM_CLASSES = 11  # CamVid: the packaged dabnet weights
INPUT_SIZES = ((360, 480), (480, 640), (720, 1280), (1080, 1920))  # (height, width): 480x360 ... 1920x1080


# ---------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def session():
    with h.closed_without_leftovers(lambda: h.Session("real_probe")) as created:
        yield created


@pytest.fixture(scope="module")
def main(session):
    """The node most tests share: auto reliability, raw transport, inference at 320x240."""
    return session.start("main", inference_height=240, inference_width=320)


@pytest.fixture
def probe(session):
    return session.probe


# ---------------------------------------------------------------------------- helpers

def counters(probe: h.Probe, node: RunningNode, since: float,
             timeout: float = h.DIAGNOSTICS_TIMEOUT_S) -> dict[str, float]:
    """The frame counters of diagnostics ``node`` published after ``since`` (waits for one)."""
    status = probe.wait_diagnostics(node.fqn, timeout=timeout, since=since)
    values = h.diag_values(status)
    return {k: float(values[k]) for k in ("frames_received", "frames_processed", "frames_dropped",
                                           "frames_bad", "frames_failed")}


def check_output(out: Any, sent: Any, encoding: str) -> np.ndarray:
    """The output (an Image for the raw Image ``sent``) has the input's header unchanged and
    the input's size; its pixels."""
    assert h.same_stamp(out.header, sent.header) and out.header.frame_id == sent.header.frame_id
    assert (out.encoding, out.height, out.width) == (encoding, sent.height, sent.width)
    pixels = h.image_array(out)
    assert pixels.shape[2] == (1 if encoding == "mono8" else 3)
    return pixels


# ---------------------------------------------------------------------------- parameters over the services

def test_parameters_are_declared_with_their_descriptors(main, probe):
    names = [spec.name for spec in PARAMETERS]
    descriptors = dict(zip(names, probe.describe_parameters(main.fqn, *names), strict=True))
    for spec in PARAMETERS:
        descriptor = descriptors[spec.name]
        assert descriptor.read_only == (not spec.runtime), spec.name
        assert descriptor.description == spec.full_description()
        assert descriptor.additional_constraints == spec.constraints()
    assert [spec.name for spec in PARAMETERS if spec.runtime] == ["overlay_alpha", "score_warn_above",
                                                                   "score_clear_below"]
    alpha = descriptors["overlay_alpha"].floating_point_range[0]
    assert (alpha.from_value, alpha.to_value) == (0.0, 1.0)
    keys = ("reliability", "transport", "max_input_pixels", "backbone")
    values = dict(zip(keys, probe.get_parameters(main.fqn, *keys), strict=True))
    assert values == {"reliability": "auto", "transport": "raw", "max_input_pixels": 3840 * 2160,
                      "backbone": "dabnet"}


def test_overlay_alpha_changes_live(main, probe):
    overlay_sub, overlays = probe.subscribe(h.Image, main.topic("overlay"))
    color_sub, colors = probe.subscribe(h.Image, main.topic("color_mask"))
    pub = probe.publisher(h.Image, main.topic("image"))
    pixels = h.noise_bgr(360, 480, seed=5)
    with endpoints(probe, overlay_sub, color_sub, pub):
        probe.wait_matched(pub, [overlay_sub, color_sub])
        try:
            (result,) = probe.set_parameters(main.fqn, overlay_alpha=0.0)
            assert result.successful, result.reason
            assert probe.get_parameters(main.fqn, "overlay_alpha") == [0.0]
            sent, out = probe.send_until_output(pub, lambda: h.raw_image(360, 480, pixels=pixels), overlays)
            assert np.array_equal(check_output(out, sent, "bgr8"), pixels), "alpha 0: the overlay is the input"

            (result,) = probe.set_parameters(main.fqn, overlay_alpha=1.0)
            assert result.successful, result.reason
            sent, out = probe.send_until_output(pub, lambda: h.raw_image(360, 480, pixels=pixels), overlays)
            color = colors.wait_for(lambda m: h.same_stamp(m.header, sent.header), h.OUTPUT_TIMEOUT_S)
            assert color is not None, "no color_mask for the frame whose overlay arrived"
            assert np.array_equal(check_output(out, sent, "bgr8"), check_output(color, sent, "bgr8")), \
                "alpha 1: the overlay is the colour mask"
        finally:
            probe.set_parameters(main.fqn, overlay_alpha=0.5)


def test_out_of_range_and_read_only_parameters_are_rejected_with_a_reason(main, probe):
    (result,) = probe.set_parameters(main.fqn, overlay_alpha=1.5)
    assert not result.successful and result.reason.strip()
    assert probe.get_parameters(main.fqn, "overlay_alpha") == [0.5]
    (result,) = probe.set_parameters(main.fqn, backbone="erfnet")
    assert not result.successful and result.reason.strip()
    assert probe.get_parameters(main.fqn, "backbone") == ["dabnet"]
    (result,) = probe.set_parameters(main.fqn, use_sim_time=False)  # rclpy's own: not the node's to refuse
    assert result.successful, result.reason


# ---------------------------------------------------------------------------- outputs

def test_outputs_carry_the_input_header_at_the_input_size(main, probe):
    mask_sub, masks = probe.subscribe(h.Image, main.topic("mask"))
    color_sub, colors = probe.subscribe(h.Image, main.topic("color_mask"))
    pub = probe.publisher(h.Image, main.topic("image"))
    with endpoints(probe, mask_sub, color_sub, pub):
        probe.wait_matched(pub, [mask_sub, color_sub])
        sent, mask = probe.send_until_output(pub, lambda: h.raw_image(360, 480, frame_id="cam_left_optical"), masks)
        ids = check_output(mask, sent, "mono8")
        assert (mask.height, mask.width, mask.step) == (360, 480, 480) and ids.max() < NUM_CLASSES
        color = colors.wait_for(lambda m: h.same_stamp(m.header, sent.header), h.OUTPUT_TIMEOUT_S)
        assert color is not None and color.header.frame_id == "cam_left_optical"
        assert (color.height, color.width) == (360, 480)
        check_output(color, sent, "bgr8")


def test_graph_shows_relative_topics_with_their_types_and_qos(main, probe):
    """What ``ros2 topic info -v`` shows: the node's endpoints, in its namespace."""
    def endpoints_of(topic: str, publishers: bool) -> list:
        infos = (probe.node.get_publishers_info_by_topic if publishers else probe.node.get_subscriptions_info_by_topic)
        return [i for i in infos(topic) if i.node_name == "segment_node" and i.node_namespace == main.namespace]

    for name in ("mask", "color_mask", "overlay"):
        (info,) = h.wait_until(lambda n=name: endpoints_of(main.topic(n), True), h.DISCOVERY_TIMEOUT_S, name)
        assert info.topic_type == "sensor_msgs/msg/Image"
        assert info.qos_profile.reliability == h.ReliabilityPolicy.RELIABLE
    (info,) = h.wait_until(lambda: endpoints_of(main.topic("image"), False), h.DISCOVERY_TIMEOUT_S, "image")
    assert info.topic_type == "sensor_msgs/msg/Image"
    (info,) = h.wait_until(lambda: endpoints_of("/diagnostics", True), h.DISCOVERY_TIMEOUT_S, "/diagnostics")
    assert info.topic_type == "diagnostic_msgs/msg/DiagnosticArray"


def test_colour_mask_and_overlay_are_computed_only_when_subscribed(main, probe, monkeypatch):
    """The node asks real rclpy how many subscriptions matched each output; a spy on its
    frame processor records what it was asked to compute."""
    asked = []
    process = main.node.processor.process

    def spy(bgr, want_color, want_overlay, network_hw=None, want_confidence=False):
        asked.append((want_color, want_overlay))
        return process(bgr, want_color, want_overlay, network_hw, want_confidence)

    monkeypatch.setattr(main.node.processor, "process", spy)
    for name in ("color_mask", "overlay"):  # subscriptions of earlier tests are gone from the graph
        h.wait_until(lambda n=name: probe.node.count_subscribers(main.topic(n)) == 0, h.DISCOVERY_TIMEOUT_S,
                     f"no subscriber left on {name}")
    mask_sub, masks = probe.subscribe(h.Image, main.topic("mask"))
    pub = probe.publisher(h.Image, main.topic("image"))
    with endpoints(probe, mask_sub, pub):
        probe.wait_matched(pub, [mask_sub])
        probe.send_until_output(pub, lambda: h.raw_image(120, 160), masks)
        assert asked[-1] == (False, False), asked
        overlay_sub, overlays = probe.subscribe(h.Image, main.topic("overlay"))
        with endpoints(probe, overlay_sub):
            probe.wait_matched(pub, [overlay_sub])
            probe.send_until_output(pub, lambda: h.raw_image(120, 160), overlays)
            assert asked[-1] == (False, True), asked
    assert masks.find(lambda m: m.encoding != "mono8") is None


def test_outputs_are_not_lost_by_a_reliable_subscriber(main, probe):
    n = 10
    mask_sub, masks = probe.subscribe(h.Image, main.topic("mask"), h.RELIABLE_SUB)
    color_sub, colors = probe.subscribe(h.Image, main.topic("color_mask"), h.RELIABLE_SUB)
    pub = probe.publisher(h.Image, main.topic("image"))
    with endpoints(probe, mask_sub, color_sub, pub):
        probe.wait_matched(pub, [mask_sub, color_sub])
        probe.wait_input_reliability(main.topic("image"), main.namespace, h.ReliabilityPolicy.RELIABLE)
        warm, _ = probe.send_until_output(pub, lambda: h.raw_image(480, 640), masks)
        assert colors.wait_for(lambda m: h.same_stamp(m.header, warm.header), h.OUTPUT_TIMEOUT_S) is not None
        sent = []
        for _ in range(n):  # one at a time: publish, wait for both outputs
            msg = h.raw_image(480, 640)
            sent.append(msg)
            pub.publish(msg)
            for inbox in (masks, colors):
                inbox.wait_for(lambda m, s=msg: h.same_stamp(m.header, s.header), h.OUTPUT_TIMEOUT_S)
        for name, inbox in (("mask", masks), ("color_mask", colors)):
            got = [m for m in inbox.messages if any(h.same_stamp(m.header, s.header) for s in sent)]
            assert len(got) == n, f"{name}: {len(got)} of {n} frames arrived"
            assert len({(m.header.stamp.sec, m.header.stamp.nanosec) for m in got}) == n


def test_diagnostics_once_a_second_with_the_frame_counters(main, probe):
    mask_sub, masks = probe.subscribe(h.Image, main.topic("mask"))
    pub = probe.publisher(h.Image, main.topic("image"))
    with endpoints(probe, mask_sub, pub):
        probe.wait_matched(pub, [mask_sub])
        probe.send_until_output(pub, lambda: h.raw_image(360, 480), masks)
    # once a second: the node's timer, on the steady clock (counting arrivals against this
    # test's clock would measure the machine's load, not the node)
    timer = main.node.diagnostics_timer
    assert timer.timer_period_ns == 10**9 and timer.clock.clock_type == ClockType.STEADY_TIME
    start = time.monotonic()

    def three() -> list:
        statuses = probe.node_diagnostics(main.fqn, since=start)
        return statuses if len(statuses) >= 3 else []

    statuses = h.wait_until(three, h.DIAGNOSTICS_TIMEOUT_S, "three diagnostics of the node")
    status = statuses[-1]
    values = h.diag_values(status)
    for key in ("frames_received", "frames_processed", "frames_dropped", "frames_bad", "frames_failed", "fps",
                "latency_ms_p50"):
        assert key in values, key
    assert status.name.startswith(main.fqn) and status.hardware_id == "cpu"
    assert int(values["frames_processed"]) >= 1 and float(values["latency_ms_p50"]) > 0
    assert h.level(status) in (0, 1, 2) and status.message


def test_frames_faster_than_the_model_are_dropped_and_counted(session, probe):
    """1280x720 frames at 30 Hz to a model slowed to 0.1 s a pass (three frame intervals)."""
    with session.node("drops", inference_height=64, inference_width=96) as node:
        node.node.processor.segmenter = h.Slowed(node.node.processor.segmenter, 0.1)
        _burst(node, probe)


def _burst(node: RunningNode, probe: h.Probe) -> None:
    mask_sub, masks = probe.subscribe(h.Image, node.topic("mask"))
    pub = probe.publisher(h.Image, node.topic("image"))
    with endpoints(probe, mask_sub, pub):
        probe.wait_matched(pub, [mask_sub])
        probe.send_until_output(pub, lambda: h.raw_image(720, 1280), masks)
        before = counters(probe, node, since=time.monotonic())
        start = time.monotonic()
        last = None
        for i in range(60):  # 30 Hz for 2 s
            last = h.raw_image(720, 1280)
            pub.publish(last)
            time.sleep(max(0.0, start + (i + 1) / 30.0 - time.monotonic()))
        assert masks.wait_for(lambda m: h.same_stamp(m.header, last.header), h.OUTPUT_TIMEOUT_S) is not None, \
            "the newest frame of the burst was never processed"
        after = counters(probe, node, since=time.monotonic())
    assert after["frames_dropped"] > before["frames_dropped"], (before, after)
    accounted = after["frames_processed"] + after["frames_dropped"] + after["frames_bad"] + after["frames_failed"]
    assert 0 <= after["frames_received"] - accounted <= 1, after


# ---------------------------------------------------------------------------- input QoS and frame sizes

@pytest.mark.parametrize("publisher_qos", ["reliable", "best_effort"])
def test_auto_reliability_receives_every_size_from_either_publisher(session, probe, publisher_qos):
    qos = h.RELIABLE if publisher_qos == "reliable" else h.BEST_EFFORT
    with session.node(f"auto_{publisher_qos}", inference_height=240, inference_width=320) as node:
        mask_sub, masks = probe.subscribe(h.Image, node.topic("mask"))
        pub = probe.publisher(h.Image, node.topic("image"), qos)
        with endpoints(probe, mask_sub, pub):
            probe.wait_matched(pub, [mask_sub])
            probe.send_until_output(pub, lambda: h.raw_image(360, 480), masks)
            got = {size: h.frames_through(pub, masks, size, count=5) for size in INPUT_SIZES}
    assert all(n >= 4 for n in got.values()), f"frames with a mask per (height, width), of 5: {got}"


@pytest.mark.parametrize("mode, sizes", [("reliable", ((360, 480), (1080, 1920))), ("best_effort", ((360, 480),))])
def test_a_fixed_reliability_with_a_publisher_of_the_same(session, probe, mode, sizes):
    """reliable and best_effort as set, each with a publisher of its own kind (best-effort
    only at 480x360: larger frames need the large-frames profile, see README)."""
    with session.node(mode, reliability=mode, inference_height=240, inference_width=320) as node:
        mask_sub, masks = probe.subscribe(h.Image, node.topic("mask"))
        pub = probe.publisher(h.Image, node.topic("image"), h.RELIABLE if mode == "reliable" else h.BEST_EFFORT)
        with endpoints(probe, mask_sub, pub):
            probe.wait_matched(pub, [mask_sub])
            probe.send_until_output(pub, lambda: h.raw_image(360, 480), masks)
            got = {size: h.frames_through(pub, masks, size, count=4) for size in sizes}
    assert all(n >= 3 for n in got.values()), f"frames with a mask per (height, width), of 4: {got}"


def test_an_incompatible_publisher_gets_one_warning_naming_both_sides_and_the_fix(session, probe):
    """reliability reliable and a best-effort camera: no frame can arrive, and the log says why."""
    start = time.monotonic()
    with session.node("incompatible_in", reliability="reliable", inference_height=64, inference_width=96) as node:
        pub = probe.publisher(h.Image, node.topic("image"), h.BEST_EFFORT)
        with endpoints(probe, pub):
            label = node.namespace.strip("/")
            log = probe.rosout.wait_for(lambda m: label in m.name and "incompatible QoS" in m.msg, h.OUTPUT_TIMEOUT_S,
                                        since=start)
            time.sleep(1.0)  # a second publisher event must not repeat it
            repeats = [m for m in probe.rosout.since(start) if label in m.name and "incompatible QoS" in m.msg]
    assert log is not None, "no incompatible-QoS warning on /rosout"
    assert h.level(log) >= 30 and node.topic("image") in log.msg and "reliability" in log.msg
    assert "asks for reliable" in log.msg and "best_effort" in log.msg and "-p reliability:=auto" in log.msg
    assert len(repeats) == 1


def test_an_output_subscriber_asking_for_transient_local_gets_one_warning(main, probe):
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    start = time.monotonic()
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    sub, _ = probe.subscribe(h.Image, main.topic("color_mask"), latched)
    with endpoints(probe, sub):
        label = main.namespace.strip("/")
        log = probe.rosout.wait_for(lambda m: label in m.name and "does not offer" in m.msg, h.OUTPUT_TIMEOUT_S,
                                        since=start)
    assert log is not None, "no incompatible-QoS warning for the output on /rosout"
    assert main.topic("color_mask") in log.msg and "durability" in log.msg and "transient_local" in log.msg


# ---------------------------------------------------------------------------- bad frames

def _one_bad_frame(probe: h.Probe, node: RunningNode, pub: Any, msg: Any, what: str) -> None:
    """Publish one bad frame and wait until frames_bad counts it (one at a time, so no bad
    frame replaces another in the node's newest-frame slot and is counted as dropped)."""
    bad = float(h.diag_values(probe.wait_diagnostics(node.fqn, since=time.monotonic()))["frames_bad"])
    pub.publish(msg)
    status = probe.wait_diagnostics(node.fqn, lambda s: float(h.diag_values(s)["frames_bad"]) > bad)
    values = h.diag_values(status)
    assert float(values["frames_bad"]) == bad + 1, f"{what}: {values}"


def test_bad_raw_frames_are_counted_and_the_node_goes_on(main, probe):
    mask_sub, masks = probe.subscribe(h.Image, main.topic("mask"))
    pub = probe.publisher(h.Image, main.topic("image"))
    start = time.monotonic()
    with endpoints(probe, mask_sub, pub):
        probe.wait_matched(pub, [mask_sub])
        probe.send_until_output(pub, lambda: h.raw_image(360, 480), masks)

        short = h.raw_image(360, 480)
        short.data = short.data[: 360 * short.step - 480]  # a row and a half missing
        _one_bad_frame(probe, main, pub, short, "data shorter than height*step")
        odd = h.raw_image(360, 480)
        odd.encoding = "bayer_xyz8"
        _one_bad_frame(probe, main, pub, odd, "unsupported encoding")

        sent, out = probe.send_until_output(pub, lambda: h.raw_image(360, 480), masks)
        check_output(out, sent, "mono8")
    warnings = probe.rosout.since(start)
    assert any(h.level(log) >= 30 and "segment_node" in log.name and main.namespace.strip("/") in log.name
               for log in warnings), "no warning about the bad frames on /rosout"


def test_bad_compressed_frames_are_counted_and_good_jpeg_and_png_work(session, probe):
    with session.node("compressed", transport="compressed", inference_height=240, inference_width=320) as node:
        mask_sub, masks = probe.subscribe(h.Image, node.topic("mask"))
        pub = probe.publisher(h.CompressedImage, node.topic("image/compressed"))
        pixels = h.noise_bgr(360, 480, seed=9)
        with endpoints(probe, mask_sub, pub):
            probe.wait_matched(pub, [mask_sub])
            for fmt in ("jpeg", "png"):
                sent, out = probe.send_until_output(pub, lambda f=fmt: h.compressed_image(pixels, f), masks)
                assert (out.encoding, out.height, out.width) == ("mono8", 360, 480), fmt
                assert h.same_stamp(out.header, sent.header) and out.header.frame_id == sent.header.frame_id

            garbage = h.compressed_image(pixels, "jpeg")
            garbage.data = array.array("B", np.random.default_rng(3).integers(0, 256, 4000, np.uint8).tobytes())
            _one_bad_frame(probe, node, pub, garbage, "garbage bytes")
            bomb = h.compressed_image(pixels, "png")
            bomb.data = array.array("B", h.png_header_only(100_000, 100_000))
            _one_bad_frame(probe, node, pub, bomb, "a PNG header claiming 100000x100000")

            sent, out = probe.send_until_output(pub, lambda: h.compressed_image(pixels, "jpeg"), masks)
            assert (out.height, out.width) == (360, 480) and h.same_stamp(out.header, sent.header)


@pytest.fixture(scope="module")
def small(session):
    """A node that refuses frames over 10000 pixels."""
    return session.start("small", max_input_pixels=10_000, inference_height=64, inference_width=96)


def test_frames_over_max_input_pixels_are_refused(small, probe):
    mask_sub, masks = probe.subscribe(h.Image, small.topic("mask"))
    pub = probe.publisher(h.Image, small.topic("image"))
    with endpoints(probe, mask_sub, pub):
        probe.wait_matched(pub, [mask_sub])
        probe.send_until_output(pub, lambda: h.raw_image(80, 120), masks)  # 9600 pixels
        big = h.raw_image(120, 160)  # 19200 pixels
        _one_bad_frame(probe, small, pub, big, "a frame over max_input_pixels")
        assert masks.find(lambda m: h.same_stamp(m.header, big.header)) is None
        sent, out = probe.send_until_output(pub, lambda: h.raw_image(80, 120), masks)
        check_output(out, sent, "mono8")


def test_diagnostics_error_when_frames_arrive_but_none_is_published(small, probe):
    mask_sub, masks = probe.subscribe(h.Image, small.topic("mask"))
    pub = probe.publisher(h.Image, small.topic("image"))
    with endpoints(probe, mask_sub, pub):
        probe.wait_matched(pub, [mask_sub])
        probe.send_until_output(pub, lambda: h.raw_image(80, 120), masks)
        start = time.monotonic()
        error = None
        while time.monotonic() - start < h.DIAGNOSTICS_TIMEOUT_S and error is None:  # bad frames only, at 10 Hz
            bad = h.raw_image(80, 120)
            bad.encoding = "not_an_encoding"
            pub.publish(bad)
            time.sleep(0.1)
            error = next((s for s in probe.node_diagnostics(small.fqn, since=start) if h.level(s) == 2), None)
        levels = [(h.level(s), s.message) for s in probe.node_diagnostics(small.fqn, since=start)]
        assert error is not None, f"no ERROR diagnostics while only bad frames arrived: {levels}"
        assert time.monotonic() - start > 2.0, "ERROR before frames had been unpublished for a few seconds"
        assert "publish" in error.message.lower(), error.message
        sent, out = probe.send_until_output(pub, lambda: h.raw_image(80, 120), masks)
        check_output(out, sent, "mono8")


# ---------------------------------------------------------------------------- logging and start-up

def test_core_library_logging_reaches_rosout(main, probe):
    marker = f"core-logging-marker-{time.monotonic_ns()}"
    logging.getLogger("eacnet_core.infer.segmenter").warning(marker)
    log = probe.rosout.wait_for(lambda m: marker in m.msg and main.namespace.strip("/") in m.name, h.OUTPUT_TIMEOUT_S)
    assert log is not None and h.level(log) >= 30


def test_unavailable_cuda_falls_back_to_the_cpu_with_one_warning(session, probe, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    start = time.monotonic()
    with session.node("no_cuda", device="cuda:0", inference_height=64, inference_width=96) as node:
        status = probe.wait_diagnostics(node.fqn, since=start)
        assert status.hardware_id == "cpu"
        label = node.namespace.strip("/")
        warnings = [log.msg for log in probe.rosout.since(start) if label in log.name and "CUDA" in log.msg]
    assert warnings == ["device cuda:0: CUDA is not available; running on CPU"]


def test_without_vision_msgs_there_is_no_label_info_and_one_warning(main, probe):
    """The test environment's ROS wheels lack vision_msgs (test_segment_node.py covers
    label_info with it): the node runs without label_info and says so once."""
    try:
        import vision_msgs.msg  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("vision_msgs is installed: the node publishes label_info")
    label = main.namespace.strip("/")
    h.wait_until(lambda: probe.rosout.find(lambda m: label in m.name and "listening on " in m.msg),
                 h.DISCOVERY_TIMEOUT_S, "the node's start-up lines on /rosout")
    warnings = [m.msg for m in probe.rosout.messages if label in m.name and "vision_msgs" in m.msg]
    assert len(warnings) == 1 and "label_info" in warnings[0], warnings
    assert probe.node.count_publishers(main.topic("label_info")) == 0
