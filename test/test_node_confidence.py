"""The node's confidence output, frame score and alarm without ROS: the worker publishes the
confidence only while subscribed and the smoothed score on low_confidence, the diagnostics
turn WARN with hysteresis, and out-of-range thresholds are refused by name."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from rosbags.typesys import Stores, get_typestore

from eacnet_core.data.classes import CAMVID
from eacnet_core.data.corruptions import corrupt
from eacnet_core.infer.segmenter import Segmenter, SegmenterOptions
from eacnet_core.models import build_model
from eacnet_ros.node import codec
from eacnet_ros.node.params import NodeConfig, ParameterError, check_command_line
from eacnet_ros.node.pipeline import FrameProcessor
from eacnet_ros.node.stats import OK, WARN, CameraStats, FrameStats
from eacnet_ros.node.worker import FrameWorker, LatestFrame

TYPES = get_typestore(Stores.ROS2_HUMBLE).types
Image = TYPES["sensor_msgs/msg/Image"]
Float32 = TYPES["std_msgs/msg/Float32"]
H, W = 48, 64


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    torch.manual_seed(0)
    options = SegmenterOptions(device="cpu", backend="torch", inference_height=24, inference_width=32)
    return Segmenter(build_model("eacnet_dab", CAMVID.num_classes), "eacnet_dab", CAMVID, options)


class Publisher:
    def __init__(self, subscribers: int = 0):
        self.subscribers, self.sent = subscribers, []

    def publish(self, msg) -> None:
        self.sent.append(msg)

    def get_subscription_count(self) -> int:
        return self.subscribers


def _msg(bgr: np.ndarray):
    header = TYPES["std_msgs/msg/Header"](stamp=TYPES["builtin_interfaces/msg/Time"](sec=3, nanosec=5), frame_id="cam")
    return codec.array_to_image(Image, header, bgr, "bgr8")


def _worker(segmenter, score: bool, confidence_subs: int = 0, score_subs: int = 0) -> FrameWorker:
    publishers = {"mask": Publisher(), "color_mask": Publisher(), "overlay": Publisher(),
                  "confidence": Publisher(confidence_subs), "low_confidence": Publisher(score_subs)}
    return FrameWorker(LatestFrame(), FrameProcessor(segmenter), FrameStats(), publishers, Image, warn=print,
                       score=score, float_type=Float32)


def test_confidence_is_published_only_while_subscribed_with_the_input_header(segmenter):
    bgr = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    quiet = _worker(segmenter, score=False)
    assert quiet.wanted() == (False, False, False)  # nothing beyond the mask is made
    assert quiet.process_one(_msg(bgr), 0.0)
    assert quiet.publishers["confidence"].sent == [] and quiet.publishers["low_confidence"].sent == []
    assert "frame_score" not in dict(quiet.stats.report().values)
    watched = _worker(segmenter, score=False, confidence_subs=1)
    assert watched.process_one(_msg(bgr), 0.0)
    (out,) = watched.publishers["confidence"].sent
    assert (out.encoding, out.height, out.width, out.header.frame_id, out.header.stamp.sec) == ("mono8", H, W, "cam", 3)
    scored = _worker(segmenter, score=True, score_subs=1)
    assert scored.wanted() == (False, False, True)  # made for the score ...
    assert scored.process_one(_msg(bgr), 0.0)
    assert scored.publishers["confidence"].sent == []  # ... but not published without a subscriber
    (level,) = scored.publishers["low_confidence"].sent
    assert 0.0 <= level.data <= 1.0
    assert float(dict(scored.stats.report().values)["frame_score"]) == pytest.approx(level.data, abs=1e-3)


def test_diagnostics_warn_on_corrupted_frames_and_clear_with_hysteresis(segmenter):
    clock = [0.0]
    stats = FrameStats(clock=lambda: clock[0])
    stats.configure_score(window=2, warn_above=0.5, clear_below=0.3)
    for score in (0.1, 0.2):
        stats.on_received(False)
        stats.on_score(score)
        stats.on_published(clock[0])
    report = stats.report()
    assert report.level == OK and report.value("frame_score_alarm") == "false"
    for score in (0.9, 0.9):
        stats.on_score(score)
    report = stats.report()
    assert report.level == WARN and "low confidence" in report.message
    assert report.value("frame_score") == "0.900" and report.value("frame_score_warn_above") == "0.5"
    stats.on_score(0.1)  # mean 0.5: between the thresholds, still WARN
    assert stats.report().level == WARN
    stats.on_score(0.1)  # mean 0.1: cleared
    assert stats.report().level == OK
    stats.configure_score(window=2, warn_above=0.05, clear_below=0.0)  # a run-time change keeps the scores
    assert stats.report().value("frame_score") == "0.100"


class _Sure(torch.nn.Module):
    """An untrained network is unsure everywhere: its logits, scaled up, make a sure one."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * 1000.0


def test_a_covered_lens_raises_the_score_of_the_real_pipeline():
    """Image cues the network is blind to raise the score of a sure network: half the frame
    covered, darkness."""
    torch.manual_seed(0)
    model = _Sure(build_model("eacnet_dab", CAMVID.num_classes))
    segmenter = Segmenter(model, "eacnet_dab", CAMVID, SegmenterOptions(device="cpu", backend="torch",
                                                                        inference_height=24, inference_width=32))
    rng = np.random.default_rng(3)
    clean = np.zeros((180, 240, 3), np.float32) + np.linspace(10, 170, 240)[None, :, None]
    for scale in (1, 2, 4, 8, 16):  # texture at every scale, as natural images have
        noise = rng.normal(0, 3.0 + scale, (180 // scale, 240 // scale, 1)).astype(np.float32)
        clean += cv2.resize(noise, (240, 180), interpolation=cv2.INTER_LINEAR)[..., None]
    clean = np.clip(clean, 0, 255).astype(np.uint8)
    processor = FrameProcessor(segmenter)
    scores = {name: processor.process(corrupt(clean, name) if name != "clean" else clean, False, False,
                                      want_confidence=True).score for name in ("clean", "covered", "darkness")}
    assert scores["clean"] < 0.2 and scores["covered"] > scores["clean"] + 0.3
    assert scores["darkness"] > scores["clean"] + 0.1


def test_multi_camera_scores_stay_per_camera():
    stats = CameraStats(["front", "left"])
    stats.configure_score(1, 0.5, 0.4)
    stats.camera("front").on_score(0.9)
    stats.camera("left").on_score(0.1)
    reports = dict(stats.report())
    assert reports["front"].value("frame_score_alarm") == "true"
    assert reports["left"].value("frame_score_alarm") == "false"
    assert "frame_score" not in dict(reports[""].values)  # no mixed score: the total's level is the worst camera's
    assert reports[""].level == WARN


@pytest.mark.parametrize("values, named", [
    ({"score_warn_above": 1.5}, "score_warn_above=1.5"),
    ({"score_clear_below": -0.1}, "score_clear_below=-0.1"),
    ({"score_warn_above": 0.3, "score_clear_below": 0.4}, "score_clear_below=0.4 must not exceed"),
    ({"score_window": 0}, "score_window=0"),
    ({"frame_score": "yes"}, "frame_score='yes'"),
])
def test_out_of_range_score_parameters_are_refused_by_name(values, named):
    with pytest.raises(ParameterError, match=named):
        NodeConfig.from_values(values)


def test_score_parameters_on_the_command_line():
    with pytest.raises(ParameterError, match="score_warn_above"):
        check_command_line(["--ros-args", "-p", "score_warn_above:=2.0"])
    config = NodeConfig.from_values({"score_warn_above": 1, "frame_score": False})
    assert config.score_warn_above == 1.0 and isinstance(config.score_warn_above, float) and not config.frame_score


# ---------------------------------------------------------------------------- bag-eval

def test_bag_eval_writes_the_confidence_topic_and_plots_the_frame_score_beside_frame_miou(tmp_path):
    from test_bags import QUIET, oracle_segmenter, read_bag, synthetic_frames

    from eacnet_ros.bags.eval import EvalOptions, evaluate_bag
    from eacnet_ros.bags.io import MakeBagOptions, make_bag
    from eacnet_ros.bags.report import write_report

    oracle = oracle_segmenter()
    frames = synthetic_frames(3, oracle)
    make_bag(frames, tmp_path / "in", MakeBagOptions(storage="mcap", rate=10.0, **QUIET))
    result = evaluate_bag(tmp_path / "in", oracle, EvalOptions(out=tmp_path / "out", confidence=True, **QUIET))
    written = read_bag(tmp_path / "out")
    assert "/eacnet/confidence" in written and len(written["/eacnet/confidence"]) == 3
    for (_, msg), (_, image) in zip(written["/eacnet/confidence"], written["/camera/image_raw"], strict=True):
        assert msg.encoding == "mono8" and (msg.height, msg.width) == (image.height, image.width)
        assert msg.header == image.header
    per_frame = result.to_json()["per_frame"]
    assert len(per_frame) == 3 and all(0.0 <= f["frame_score"] <= 1.0 for f in per_frame)
    assert [f["miou"] for f in per_frame] == [1.0, 1.0, 1.0]  # the oracle's labels are its own masks
    plain = evaluate_bag(tmp_path / "in", oracle, EvalOptions(out=tmp_path / "plain", **QUIET))
    assert "/eacnet/confidence" not in read_bag(tmp_path / "plain") and len(plain.frame_scores) == 3
    html = write_report(tmp_path / "report", result).read_text()
    assert "Frame score" in html and (tmp_path / "report" / "frame_score.png").stat().st_size > 1000


# ---------------------------------------------------------------------------- bench-pipeline

def test_bench_pipeline_times_confidence_on_against_off(tmp_path, capsys):
    import argparse
    import json

    from eacnet_ros.bench import pipeline as pb

    parser = argparse.ArgumentParser(prog="eacnet")
    pb.add_parser(parser.add_subparsers())
    out = tmp_path / "bench.json"
    args = parser.parse_args(["bench-pipeline", "--model", "dabnet", "--sizes", "64x48", "--configs", "torch:fp32",
                              "--confidence", "--runs", "2", "--warmup", "1", "--json", str(out)])
    assert args.func(args) == 0
    rows = json.loads(out.read_text())
    assert [r["config"] for r in rows] == ["torch:fp32:nhwc", "torch:fp32:nhwc+conf"]
    assert all(set(r["ms"]) == set(pb.STAGES) for r in rows) and rows[1]["agreement"] == 1.0  # the same mask
    printed = capsys.readouterr().out
    assert "confidence + frame score on torch:fp32:nhwc add" in printed and "of its forward pass" in printed
    assert pb.PipelineConfig.parse("openvino:bf16+conf") == pb.PipelineConfig("openvino", "bf16", True, True)
