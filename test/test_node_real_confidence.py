"""segment_node's confidence and its out-of-domain alarm on the real ROS 2 middleware (see
ros_harness.py): real CamVid val frames, clean, then corrupted (fog, a half-covered lens,
sensor noise), then clean again, through real topics; /diagnostics is OK, turns WARN, and
clears again. The packaged dabnet weights (trained on CamVid) judge the frames."""

from __future__ import annotations

import itertools
import time
from typing import Any

import cv2
import numpy as np
import pytest
import ros_harness as h  # skips this module without rclpy
from real_data import REAL_CAMVID, needs_real_camvid
from ros_harness import endpoints
from std_msgs.msg import Float32

from eacnet_core.data.corruptions import corrupt

pytestmark = [needs_real_camvid, pytest.mark.filterwarnings("ignore:Deprecated in favor of:DeprecationWarning")]

FRAMES = ("0016E5_07959.png", "0016E5_08085.png", "0016E5_08145.png")


@pytest.fixture(scope="module")
def session():
    with h.closed_without_leftovers(lambda: h.Session("confidence_probe")) as created:
        yield created


def _frames(corruption: str = "") -> list[np.ndarray]:
    images = [cv2.imread(str(REAL_CAMVID / "val" / name), cv2.IMREAD_COLOR) for name in FRAMES]
    if not corruption:
        return images
    return [corrupt(image, name, 3, seed=i) for i, image in enumerate(images)
            for name in ("fog", "covered", "gaussian_noise")]


def _alarm(status: Any) -> str:
    return h.diag_values(status).get("frame_score_alarm", "")


def _stream_until(probe: h.Probe, pub: Any, node: h.RunningNode, images: list[np.ndarray], alarm: str,
                  level: int, timeout: float = 60.0) -> Any:
    """Publish ``images`` in turn until a diagnostics status with ``alarm`` and ``level``."""
    start, deadline = time.monotonic(), time.monotonic() + timeout
    for image in itertools.cycle(images):
        pub.publish(h.raw_image(image.shape[0], image.shape[1], pixels=image))
        status = next((s for s in reversed(probe.node_diagnostics(node.fqn, since=start))
                       if _alarm(s) == alarm and h.level(s) == level), None)
        if status is not None or time.monotonic() > deadline:
            return status
        time.sleep(0.3)
    return None


def test_diagnostics_warn_on_corrupted_frames_and_clear_on_clean_ones(session):
    probe = session.probe
    with session.node("confidence", inference_height=240, inference_width=320, score_window=3) as node:
        conf_sub, confidences = probe.subscribe(h.Image, node.topic("confidence"))
        score_sub, scores = probe.subscribe(Float32, node.topic("low_confidence"))
        pub = probe.publisher(h.Image, node.topic("image"))
        with endpoints(probe, conf_sub, score_sub, pub):
            probe.wait_matched(pub, [conf_sub, score_sub])
            clean = _frames()
            sent, out = probe.send_until_output(pub, lambda: h.raw_image(360, 480, pixels=clean[0]), confidences)
            assert h.same_stamp(out.header, sent.header) and (out.encoding, out.height, out.width) == ("mono8", 360,
                                                                                                         480)
            assert np.median(h.image_array(out)) > 200  # a trained network on a CamVid frame: mostly sure

            ok = _stream_until(probe, pub, node, clean, "false", 0)
            assert ok is not None, "no OK diagnostics with a frame score on clean frames"
            assert float(h.diag_values(ok)["frame_score"]) < 0.35

            warned = _stream_until(probe, pub, node, _frames("corrupted"), "true", 1)
            assert warned is not None, "corrupted frames raised no frame-score warning"
            assert "low confidence" in warned.message and float(h.diag_values(warned)["frame_score"]) > 0.5
            assert scores.wait_for(lambda m: m.data > 0.5, h.OUTPUT_TIMEOUT_S) is not None

            cleared = _stream_until(probe, pub, node, clean, "false", 0)
            assert cleared is not None, "the warning did not clear on clean frames"


def test_score_thresholds_change_at_run_time_and_bad_ones_are_refused_by_name(session):
    probe = session.probe
    with session.node("thresholds", inference_height=120, inference_width=160) as node:
        (result,) = probe.set_parameters(node.fqn, score_warn_above=1.5)
        assert not result.successful and "score_warn_above" in result.reason
        (result,) = probe.set_parameters(node.fqn, score_clear_below=0.6)  # above warn_above 0.5
        assert not result.successful and "score_clear_below=0.6 must not exceed score_warn_above=0.5" in result.reason
        assert probe.set_parameters(node.fqn, score_warn_above=0.8, score_clear_below=0.6)[0].successful
        assert probe.get_parameters(node.fqn, "score_warn_above", "score_clear_below") == [0.8, 0.6]
        assert node.node.stats.total._score.warn_above == 0.8  # the running smoother follows
