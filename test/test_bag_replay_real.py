"""``eacnet bag-replay``: a make-bag bag played through Fast DDS into segment_node running
as a process, its masks scored against the bag's labels; the figures agree with bag-eval's
offline ones for the same model settings (both run the node's code, only the transport
differs), and every frame comes back in closed-loop pace.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import ros_harness as h  # noqa: F401  (skips without rclpy; sets the session's ROS isolation)

from eacnet_core.infer.segmenter import Segmenter, SegmenterOptions
from eacnet_ros.bags.eval import EvalOptions, evaluate_bag
from eacnet_ros.bags.io import Frame, MakeBagOptions, make_bag
from eacnet_ros.bench import bag_replay
from eacnet_ros.cli import main

pytestmark = pytest.mark.filterwarnings("ignore:Deprecated in favor of:DeprecationWarning")

SIZE = (40, 56)
FRAMES = 6
MODEL = {"backbone": "dabnet", "attention": "none", "backend": "torch", "device": "cpu", "threads": 1,
         "inference_height": 32, "inference_width": 48}


def _frames() -> list[Frame]:
    """Frames with labels that vary in space (bands of classes), so the mIoU is a real figure."""
    rng = np.random.default_rng(11)
    frames = []
    for i in range(FRAMES):
        label = (np.arange(SIZE[1])[None, :] // 8 + i + np.arange(SIZE[0])[:, None] // 10) % 11
        label = label.astype(np.uint8)
        label[:3] = 11  # some ignored pixels (CamVid's void)
        frames.append(Frame(f"f{i}", rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8), label))
    return frames


@pytest.fixture(scope="module", params=[None, "png"], ids=["raw", "compressed"])
def bag(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("replay") / "bag"
    make_bag(_frames(), path, MakeBagOptions(compressed=request.param, rate=20.0, progress=False))
    return path


@pytest.fixture(scope="module")
def offline(bag):
    options = SegmenterOptions(device="cpu", backend="torch", threads=1, inference_height=32, inference_width=48)
    segmenter = Segmenter.from_name("dabnet", None, options)
    return evaluate_bag(bag, segmenter, EvalOptions(progress=False))


def test_replay_through_the_node_scores_what_bag_eval_scores_offline(bag, offline):
    result = bag_replay.replay(bag, dict(MODEL), pace="closed")
    assert (result.sent, result.received, result.dropped) == (FRAMES, FRAMES, 0)
    assert result.evaluated == offline.evaluated == FRAMES
    assert result.miou == pytest.approx(offline.miou, abs=1e-9)
    assert result.pixel_accuracy == pytest.approx(offline.pixel_accuracy, abs=1e-9)
    assert result.per_class == pytest.approx(offline.per_class, abs=1e-9)
    assert result.latency_ms["p50"] > 0 and result.fps > 0
    assert "dabnet" in result.node


def test_the_command_replays_at_the_recorded_rate_and_writes_json(bag, tmp_path, capsys):
    out = tmp_path / "replay.json"
    params = [arg for name, value in MODEL.items() for arg in ("--param", f"{name}:={value}")]
    assert main(["bag-replay", "--bag", str(bag), "--pace", "recorded", "--json", str(out), *params]) == 0
    figures = json.loads(out.read_text())
    assert figures["sent"] == FRAMES and 0 < figures["received"] <= FRAMES
    assert figures["dropped"] == FRAMES - figures["received"] and figures["pace"] == "recorded"
    assert "masks back" in capsys.readouterr().out


def test_a_parameter_the_bag_decides_is_refused():
    with pytest.raises(SystemExit):
        main(["bag-replay", "--bag", "x", "--param", "transport:=raw"])
