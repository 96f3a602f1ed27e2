"""Per-pixel confidence on every backend, the frame score, its smoother, the corruptions and the
benchmark's statistics (eacnet_core.infer.confidence, corruptions, bench_confidence)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from eacnet_core.data.classes import generic
from eacnet_core.data.corruptions import CORRUPTIONS, corrupt
from eacnet_core.evaluate.bench_confidence import auroc, calibration, fit_temperature, histogram_auroc
from eacnet_core.infer import chooser
from eacnet_core.infer.confidence import (
    ScoreSmoother,
    cue_anomalies,
    frame_score,
    ids_and_confidence,
    image_cues,
)
from eacnet_core.infer.segmenter import Segmenter, SegmenterOptions
from eacnet_core.models import build_model


def _segmenter(backend: str = "torch", temperature: float = 1.0, **kw) -> Segmenter:
    torch.manual_seed(0)
    model = build_model("dabnet", 3)
    last = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]  # the classifier
    with torch.no_grad():  # a random model's logits are nearly equal: widen them so confidences spread
        last.weight.mul_(30.0)
    return Segmenter(model, "dabnet", generic(3),
                     SegmenterOptions(device="cpu", backend=backend, precision="fp32", threads=1, **kw),
                     temperature=temperature)


def _frame(h: int = 40, w: int = 56, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _expected(seg: Segmenter, frame: np.ndarray) -> np.ndarray:
    logits = torch.as_tensor(np.asarray(seg.logits(seg.preprocess(frame))))[0].float()
    return np.floor(torch.softmax(logits / seg.temperature, 0).amax(0).numpy() * 255 + 0.5).astype(np.uint8)


def test_ids_and_confidence_is_the_softmax_maximum_in_every_memory_layout():
    logits = torch.randn(1, 5, 7, 9, generator=torch.Generator().manual_seed(0)) * 3
    want = np.floor(torch.softmax(logits[0] / 2.0, 0).amax(0).numpy() * 255 + 0.5)
    for given in (logits, logits.numpy(), logits.contiguous(memory_format=torch.channels_last)):
        ids, conf = ids_and_confidence(given, temperature=2.0)
        assert ids.dtype == conf.dtype == np.uint8
        assert np.array_equal(ids, logits[0].argmax(0).numpy())
        assert np.abs(conf.astype(int) - want).max() <= 1
    certain = torch.zeros(1, 3, 2, 2)
    certain[0, 1] = 100.0
    assert (ids_and_confidence(certain)[1] == 255).all()
    assert (ids_and_confidence(torch.zeros(1, 4, 2, 2))[1] == 64).all()  # 1/4 of 255, rounded


BACKENDS = [("torch", {"channels_last": False}), ("torch", {}), ("torch", {"frame_on_device": "on"})]
try:
    import onnxruntime  # noqa: F401

    BACKENDS.append(("onnxruntime", {}))
    import openvino  # noqa: F401

    BACKENDS.append(("openvino", {}))
except ImportError:
    pass


@pytest.mark.parametrize("backend, extra", BACKENDS)
def test_confidence_on_every_backend_at_the_input_size_and_the_mask_unchanged(backend, extra):
    """The device path runs here on CPU tensors (frame_on_device on); OpenVINO computes the
    confidence in its graph, a second output beside the argmax."""
    seg = _segmenter(backend, temperature=1.5, **extra)
    reference = _segmenter("torch", temperature=1.5, channels_last=False)
    frame = _frame()
    mask, conf = seg.segment_confidence(frame)
    assert conf.shape == mask.shape == frame.shape[:2] and conf.dtype == np.uint8
    error = np.abs(conf.astype(int) - _expected(reference, frame))
    if backend == "openvino":  # computed at every second row and column in the graph, repeated over 2x2
        assert error[::2, ::2].max() <= 1 and error.mean() < 4
    else:
        assert error.max() <= 1
    assert conf.std() > 0  # not a constant image
    assert np.array_equal(mask, seg.segment(frame))  # asking for confidence never changes the mask
    plain = seg.segment_frames([frame], [(True, False)])[0]
    assert plain.confidence is None and plain.color_mask is not None  # only computed when asked


@pytest.mark.parametrize("backend, extra", BACKENDS)
def test_confidence_is_resized_to_the_frame_as_the_mask_is(backend, extra):
    seg = _segmenter(backend, inference_height=24, inference_width=32, **extra)
    frames = [_frame(48, 64, 1), _frame(30, 40, 2)]
    results = seg.segment_frames(frames, [(False, False, True), (False, False, False)])
    assert results[0].confidence.shape == (48, 64) and results[1].confidence is None
    small = seg.segment_frames([_frame(24, 32, 1)], [(False, False, True)])[0]
    assert small.confidence.shape == (24, 32)
    odd = _segmenter(backend, **extra).segment_frames([_frame(41, 57, 3)], [(False, False, True)])[0]
    assert odd.confidence.shape == (41, 57)  # OpenVINO's half-resolution confidence, odd sizes too


def test_openvino_confidence_graph_and_the_remembered_choice(tmp_path, monkeypatch):
    """backend auto times only the logits graphs (the accuracy guard compares their argmax);
    the confidence graph is compiled beside the chosen one when asked, the choice remembered
    from the cache serves it too, and the compiled models of one size count as one size."""
    pytest.importorskip("openvino")
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(chooser, "machine_load", lambda: 0.0)  # idle: the choice is remembered
    frame = _frame()
    first = _segmenter("auto")
    first.tune(40, 56)
    chosen = (first.backend, first.precision)
    expected = _expected(first, frame)
    mask, conf = first.segment_confidence(frame)
    assert np.abs(conf.astype(int) - expected)[::2, ::2].max() <= 1
    again = _segmenter("auto")
    again.tune(40, 56)  # from the cache: the same path
    assert (again.backend, again.precision) == chosen
    assert np.array_equal(again.segment_confidence(frame)[0], mask)
    ov = _segmenter("openvino", ort_sessions=1)
    ov.segment(frame)
    ov.segment_confidence(frame)
    assert ov.engines[("openvino", "fp32")].sizes == ((40, 56),)  # logits + ids + confidence: one size
    ov.segment(_frame(32, 48))
    assert ov.engines[("openvino", "fp32")].sizes == ((32, 48),)


def test_segment_frames_refuses_bad_output_choices():
    seg = _segmenter()
    with pytest.raises(ValueError, match="output choice"):
        seg.segment_frames([_frame()], [(True,)])
    with pytest.raises(ValueError, match="2 output choices for 1 images"):
        seg.segment_frames([_frame()], [(True, False), (True, False)])


def test_temperature_from_the_checkpoint_and_its_range(tmp_path):
    from eacnet_core.checkpoint import make_checkpoint, save_atomic

    model = build_model("dabnet", 3)
    ckpt = make_checkpoint("dabnet", model, generic(3), temperature=1.7)
    path = save_atomic(ckpt, tmp_path / "t.pt")
    assert Segmenter.from_checkpoint(path, SegmenterOptions(device="cpu", backend="torch")).temperature == 1.7
    with pytest.raises(ValueError, match="temperature"):
        Segmenter(model, "dabnet", generic(3), SegmenterOptions(device="cpu", backend="torch"), temperature=0.0)


# ---------------------------------------------------------------------------- the frame score

def _scene(h: int = 180, w: int = 240) -> np.ndarray:
    """A synthetic street-like frame inside CamVid's clean ranges: a gradient, patches, and
    texture at every scale (as natural images have)."""
    rng = np.random.default_rng(3)
    base = np.zeros((h, w, 3), np.float32) + np.linspace(10, 170, w)[None, :, None]
    for _ in range(25):
        y, x = rng.integers(0, h - 20), rng.integers(0, w - 20)
        base[y:y + rng.integers(5, 40), x:x + rng.integers(5, 40)] = rng.integers(0, 256, 3)
    for scale in (1, 2, 4, 8, 16):
        noise = rng.normal(0, 3.0 + scale, (h // scale, w // scale, 1)).astype(np.float32)
        base += cv2.resize(noise, (w, h), interpolation=cv2.INTER_LINEAR)[..., None]
    return np.clip(base, 0, 255).astype(np.uint8)


def test_the_frame_score_rises_for_each_corruption_on_a_textured_frame():
    clean = _scene()
    sure = np.full(clean.shape[:2], 250, np.uint8)
    clean_score = frame_score(sure, clean)
    assert clean_score < 0.1
    for name in CORRUPTIONS:
        bad = corrupt(clean, name, 3, seed=0)
        assert bad.shape == clean.shape and bad.dtype == np.uint8
        assert frame_score(sure, bad) > clean_score + 0.1, name
    doubtful = np.full(clean.shape[:2], 60, np.uint8)  # the network unsure everywhere
    assert frame_score(doubtful, clean) == pytest.approx(1.0)


def test_cue_anomalies_are_zero_inside_the_clean_range_and_one_far_outside():
    cues = {"contrast": 0.25, "sharpness": 0.09, "grain": 0.9, "blocky": 1.0, "clipped": 0.05, "flat": 0.07}
    assert set(cue_anomalies(cues, 0.01).values()) == {0.0}
    far = {"contrast": 0.05, "sharpness": 0.005, "grain": 2.0, "blocky": 1.8, "clipped": 0.9, "flat": 0.9}
    assert set(cue_anomalies(far, 0.9).values()) == {1.0}
    assert set(image_cues(_scene())) == set(cues)


def test_corruptions_are_reproducible_and_checked():
    frame = _scene(64, 80)
    assert np.array_equal(corrupt(frame, "fog", 3, seed=4), corrupt(frame, "fog", 3, seed=4))
    assert (corrupt(frame, "covered")[:, :40] == corrupt(frame, "covered")[0, 0]).all()
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(frame, "rain")
    with pytest.raises(ValueError, match="severity"):
        corrupt(frame, "fog", 6)


def test_smoother_averages_and_holds_its_alarm_with_hysteresis():
    smoother = ScoreSmoother(window=2, warn_above=0.5, clear_below=0.3)
    assert smoother.value is None
    assert smoother.update(0.2) == pytest.approx(0.2) and not smoother.alarm
    assert smoother.update(0.9) == pytest.approx(0.55) and smoother.alarm
    assert smoother.update(0.2) == pytest.approx(0.55) and smoother.alarm  # window 2: (0.9 + 0.2) / 2
    assert smoother.update(0.5) == pytest.approx(0.35) and smoother.alarm  # between: stays raised
    assert smoother.update(0.1) == pytest.approx(0.3) and smoother.alarm  # not under 0.3 yet
    assert smoother.update(0.1) == pytest.approx(0.1) and not smoother.alarm
    with pytest.raises(ValueError, match="clear_below"):
        ScoreSmoother(clear_below=0.6, warn_above=0.5)
    with pytest.raises(ValueError, match="warn_above must be in"):
        ScoreSmoother(warn_above=1.5)


# ---------------------------------------------------------------------------- the benchmark's statistics

def test_auroc_counts_ties_half_and_matches_the_histogram_form():
    assert auroc([0, 1], [2, 3]) == 1.0 and auroc([2, 3], [0, 1]) == 0.0
    assert auroc([1, 1], [1, 1]) == 0.5
    rng = np.random.default_rng(0)
    neg, pos = rng.integers(0, 256, 300), rng.integers(60, 256, 200)
    hist = histogram_auroc(np.bincount(neg, minlength=256), np.bincount(pos, minlength=256))
    assert hist == pytest.approx(auroc(neg, pos))


def test_ece_of_a_calibrated_and_an_overconfident_model():
    correct, wrong = np.zeros(256), np.zeros(256)
    correct[255], correct[128], wrong[128] = 100, 50, 50  # p=1 always right, p=0.5 right half the time
    assert calibration(correct, wrong)["ece"] == pytest.approx(abs(128 / 255 - 0.5) / 2, abs=1e-6)
    over_correct, over_wrong = np.zeros(256), np.zeros(256)
    over_correct[255], over_wrong[255] = 60, 40
    assert calibration(over_correct, over_wrong)["ece"] == pytest.approx(0.4)


def test_fit_temperature_recovers_the_scale_of_overconfident_logits():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 1.0, (4000, 5)).astype(np.float32)
    labels = np.array([rng.choice(5, p=np.exp(row) / np.exp(row).sum()) for row in true_logits])
    assert fit_temperature(true_logits * 3.0, labels) == pytest.approx(3.0, rel=0.15)


def test_bench_confidence_command_writes_its_json_and_plot(tmp_path, synthetic, monkeypatch):
    """The command end to end on a tiny CamVid-layout folder, an untrained checkpoint."""
    from eacnet_core.checkpoint import make_checkpoint, save_atomic
    from eacnet_core.data.classes import CAMVID
    from eacnet_ros.cli import main

    synthetic.camvid(tmp_path / "CamVid", {"train": 2, "val": 2}, 48, 64)
    model = build_model("eacnet_dab", CAMVID.num_classes)
    weights = save_atomic(make_checkpoint("eacnet_dab", model, CAMVID), tmp_path / "w.pt")
    out = tmp_path / "out"
    code = main(["bench-confidence", "--models", str(weights), "--data", str(tmp_path / "CamVid"), "--json",
                 str(out / "b.json"), "--plot", str(out / "b.png"), "--reference-frames", "2", "--fit-temperature",
                 str(out), "--no-progress", "--backend", "torch", "--device", "cpu"])
    assert code == 0
    report = json.loads((out / "b.json").read_text())
    result = report["models"][0]
    assert set(result["frame_auroc"]) == set(CORRUPTIONS) and 0.0 <= result["pixel_auroc"] <= 1.0
    assert "contrast" in report["train_clean_ranges"] and (out / "b.png").stat().st_size > 1000
    calibrated = torch.load(out / "w_calibrated.pt", weights_only=True)
    assert calibrated["temperature"] == pytest.approx(result["fitted_temperature"])


def test_segment_command_writes_confidence_pngs_and_frame_scores(tmp_path, shared_checkpoint, capsys):
    from eacnet_ros.cli import main

    frames = tmp_path / "in"
    frames.mkdir()
    for i in range(2):
        cv2.imwrite(str(frames / f"f{i}.png"), _frame(40, 56, seed=i))
    out, report = tmp_path / "out", tmp_path / "scores.json"
    assert main(["segment", "--weights", str(shared_checkpoint), "--input", str(frames), "--out", str(out),
                 "--confidence", "--json", str(report), "--backend", "torch", "--device", "cpu"]) == 0
    for i in range(2):
        confidence = cv2.imread(str(out / f"f{i}_confidence.png"), cv2.IMREAD_UNCHANGED)
        assert confidence.dtype == np.uint8 and confidence.shape == (40, 56)
    scores = json.loads(report.read_text())
    assert [f["name"] for f in scores["frames"]] == ["f0", "f1"] and scores["skipped"] == []
    assert all(0.0 <= f["frame_score"] <= 1.0 for f in scores["frames"])
    assert "frame scores to" in capsys.readouterr().out
    for kind in ("mask", "color", "overlay"):  # only the confidence PNGs left: they are refused too
        for path in out.glob(f"*_{kind}.png"):
            path.unlink()
    assert main(["segment", "--weights", str(shared_checkpoint), "--input", str(frames), "--out", str(out),
                 "--confidence", "--backend", "torch"]) != 0
    assert "f0_confidence.png exists" in capsys.readouterr().err
    plain = tmp_path / "plain"
    assert main(["segment", "--weights", str(shared_checkpoint), "--input", str(frames), "--out", str(plain),
                 "--backend", "torch", "--device", "cpu"]) == 0
    assert not list(plain.glob("*_confidence.png"))
