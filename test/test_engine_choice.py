"""eacnet_ros.node.choice.EngineChoice without ROS: which frames start a background choice,
when it is adopted, and that a failed one leaves the current engine serving."""

from __future__ import annotations

import threading

import numpy as np

from eacnet_ros.node.choice import EngineChoice


class FakeSegmenter:
    """Network size = the frame's size; ``chosen_copy`` is replaced per test."""

    chooses_on_cpu = True

    def __init__(self, chosen_size=(4, 6), complete=True):
        self.autotune_size, self.autotune_complete = chosen_size, complete
        self.adopted: list[str] = []

    def network_size(self, height, width):
        return height, width

    def chosen_copy(self, bgr):
        return f"twin {bgr.shape[0]}x{bgr.shape[1]}"

    def adopt(self, twin):
        self.adopted.append(twin)


def frame(height, width):
    return np.zeros((height, width, 3), np.uint8)


def gated(segmenter):
    """A measure that waits for ``gate`` (so the test decides when the choice ends)."""
    gate, calls = threading.Event(), []

    def measure(bgr):
        calls.append(bgr.shape[:2])
        gate.wait(30)
        return f"twin {bgr.shape[0]}x{bgr.shape[1]}"

    return gate, calls, measure


def test_the_start_up_size_needs_no_choice_a_new_one_is_measured_once_and_adopted_between_frames():
    segmenter = FakeSegmenter()
    gate, calls, measure = gated(segmenter)
    choice = EngineChoice(segmenter, warn=print, measure=measure)
    choice.before([frame(4, 6)])
    assert not choice.measuring and calls == []
    choice.before([frame(8, 10)])  # starts in the background, returns at once
    assert choice.measuring
    choice.before([frame(8, 10)])
    assert segmenter.adopted == []  # still measuring: the frame runs on the current engine
    gate.set()
    choice._thread.join(10)
    choice.before([frame(8, 10)])  # the next frame adopts it
    assert segmenter.adopted == ["twin 8x10"] and choice.adopted == 1 and not choice.measuring
    choice.before([frame(8, 10)])
    assert calls == [(8, 10)]  # each size once


def test_an_incomplete_start_up_choice_is_completed_on_the_first_camera_frame():
    segmenter = FakeSegmenter(complete=False)  # reduced precisions were not checked (no calibration frames)
    choice = EngineChoice(segmenter, warn=print)
    choice.before([frame(4, 6)])
    choice._thread.join(10)
    choice.before([frame(4, 6)])
    assert segmenter.adopted == ["twin 4x6"]


def test_a_failed_choice_warns_and_the_current_engine_serves_on():
    segmenter, warnings = FakeSegmenter(), []

    def fails(bgr):
        raise RuntimeError("no OpenVINO today")

    choice = EngineChoice(segmenter, warn=warnings.append, measure=fails)
    choice.before([frame(8, 10)])
    choice._thread.join(10)
    choice.before([frame(8, 10)])
    assert segmenter.adopted == [] and not choice.measuring
    assert len(warnings) == 1 and "10x8" in warnings[0] and "no OpenVINO today" in warnings[0]


def test_nothing_happens_without_a_cpu_choice():
    segmenter = FakeSegmenter()
    segmenter.chooses_on_cpu = False
    choice = EngineChoice(segmenter, warn=print, measure=lambda bgr: 1 / 0)
    choice.before([frame(8, 10)])
    assert not choice.measuring and segmenter.adopted == []


def test_chosen_copy_leaves_the_serving_segmenter_alone_until_adopted(monkeypatch):
    """The real Segmenter: a copy chooses for a new size (backend auto, fp32: torch, onnxruntime
    and OpenVINO where installed) while the original keeps its engine; ``adopt`` switches it."""
    import pytest
    import torch

    from eacnet_core.infer import chooser
    from eacnet_core.infer.segmenter import Segmenter, SegmenterOptions

    pytest.importorskip("onnxruntime")
    timings = iter(range(1, 10_000))  # each timed run slower than the last: the first candidate wins
    monkeypatch.setattr(chooser, "elapsed_ms", lambda run, *args: [run(*args), float(next(timings))][1])
    torch.manual_seed(0)
    segmenter = Segmenter.from_name("dabnet", options=SegmenterOptions(device="cpu", threads=1, precision="fp32",
                                                                      choice_cache=False), allow_untrained=True)
    segmenter.tune(24, 40)
    assert segmenter.autotune_size == (24, 40) and segmenter.autotune_complete
    before = (segmenter.backend, segmenter.precision)
    segmenter.temperature = 1.7  # as a checkpoint's fitted one: the engines the copy builds use it too
    image = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    twin = segmenter.chosen_copy(image)
    assert twin.autotune_size == (32, 48) and twin._model is not segmenter._model
    assert twin.temperature == 1.7
    assert segmenter.autotune_size == (24, 40) and (segmenter.backend, segmenter.precision) == before
    reference = twin.segment(image)
    segmenter.adopt(twin)
    assert segmenter.autotune_size == (32, 48) and (segmenter.backend, segmenter.precision) == (
        twin.backend, twin.precision)
    assert np.array_equal(segmenter.segment(image), reference)
