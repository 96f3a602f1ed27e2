"""Segmenter: preprocessing, backends, output shapes, weights errors; checkpoints."""

import gc
import json
import logging
import tempfile
import weakref

import cv2
import numpy as np
import pytest
import torch
from conftest import save_tiny_checkpoint

from eacnet_core.checkpoint import CheckpointError, load_checkpoint, save_atomic
from eacnet_core.data.classes import CAMVID
from eacnet_core.infer import chooser, engines, export, quantize
from eacnet_core.infer.chooser import Chooser
from eacnet_core.infer.segmenter import Segmenter, SegmenterOptions
from eacnet_core.models import build_model
from eacnet_ros.cli import main

#: What backend=auto times on the CPU in fp32: OpenVINO too where it is installed.
AUTO_PATHS = {"torch:fp32:nhwc", "torch:fp32:nchw", "onnxruntime:fp32"} | (
    {"openvino:fp32"} if engines._ov_available() else set())

CPU = SegmenterOptions(device="cpu")


@pytest.fixture(autouse=True)
def _own_user_cache(monkeypatch, tmp_path):
    """Choices and int8 models go to this test's own user cache: none is reused across tests.
    The machine reads as idle, so a choice is remembered whatever else runs beside the tests
    (test_chooser.py covers the busy machine)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    monkeypatch.setattr(chooser, "machine_load", lambda: 0.0)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "dab.pt", "eacnet_dab", attention_gamma=0.3,
                                epoch=3, metrics={"miou": 0.1})


@pytest.fixture
def frame():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (45, 61, 3), dtype=np.uint8)


def test_checkpoint_is_self_describing_and_weights_only(checkpoint):
    raw = torch.load(checkpoint, weights_only=True)
    assert raw["model"] == "eacnet_dab" and raw["num_classes"] == 11 and raw["epoch"] == 3
    assert raw["dataset"]["class_names"][3] == "Road"
    assert raw["dataset"]["palette"][0] == [128, 128, 128]
    assert load_checkpoint(checkpoint)["metrics"] == {"miou": 0.1}


def test_segment_returns_mask_at_input_size(checkpoint, frame):
    seg = Segmenter.from_checkpoint(checkpoint, CPU)
    mask = seg.segment(frame)
    assert mask.shape == frame.shape[:2] and mask.dtype == np.uint8
    assert mask.max() < 11
    colour = seg.colorize(mask)
    assert colour.shape == frame.shape and colour.dtype == np.uint8
    # colour mask is the palette in BGR order
    y, x = 10, 20
    assert tuple(colour[y, x]) == tuple(CAMVID.palette[mask[y, x]][::-1])
    over = seg.overlay(frame, mask, 0.25, colour)
    expected = np.round(0.25 * colour.astype(float) + 0.75 * frame.astype(float))
    assert np.abs(over.astype(float) - expected).max() <= 1
    assert seg.overlay(frame, mask, 0.0).tolist() == frame.tolist()


def test_preprocess_uses_checkpoint_normalisation(checkpoint):
    seg = Segmenter.from_checkpoint(checkpoint, CPU)
    bgr = np.full((8, 8, 3), (10, 20, 30), np.uint8)
    x = seg.preprocess(bgr)
    assert x.shape == (1, 3, 8, 8) and x.dtype == np.float32
    assert x[0, :, 0, 0] == pytest.approx((np.array([30, 20, 10]) - CAMVID.mean) / CAMVID.std, rel=1e-5)


def test_matches_the_model_on_the_same_tensor(checkpoint, frame):
    seg = Segmenter.from_checkpoint(checkpoint, SegmenterOptions(device="cpu", channels_last=False))
    model = build_model("eacnet_dab", 11).eval()
    model.load_state_dict(torch.load(checkpoint, weights_only=True)["state_dict"])
    with torch.inference_mode():
        ref = model(torch.from_numpy(seg.preprocess(frame)))[0].argmax(0).numpy()
    assert np.array_equal(seg.segment(frame), ref)


def test_inference_size_resizes_and_mask_returns_to_input_size(checkpoint, frame):
    seg = Segmenter.from_checkpoint(checkpoint, SegmenterOptions(device="cpu", inference_height=24,
                                                                 inference_width=32))
    assert seg.preprocess(frame).shape == (1, 3, 24, 32)
    assert seg.segment(frame).shape == frame.shape[:2]


def test_onnxruntime_backend_agrees_with_torch(checkpoint, frame):
    pytest.importorskip("onnxruntime")
    torch_mask = Segmenter.from_checkpoint(checkpoint, CPU).segment(frame)
    ort = Segmenter.from_checkpoint(checkpoint, SegmenterOptions(device="cpu", backend="onnxruntime"))
    assert ort.backend == "onnxruntime"
    assert (ort.segment(frame) == torch_mask).mean() > 0.99


def test_channels_last_agrees_with_contiguous(checkpoint, frame):
    a = Segmenter.from_checkpoint(checkpoint, SegmenterOptions(device="cpu", channels_last=True)).segment(frame)
    b = Segmenter.from_checkpoint(checkpoint, SegmenterOptions(device="cpu", channels_last=False)).segment(frame)
    assert (a == b).mean() > 0.99


def test_auto_picks_cpu_fp32_without_cuda(checkpoint):
    if torch.cuda.is_available():
        pytest.skip("this test describes a machine without CUDA")
    seg = Segmenter.from_checkpoint(checkpoint, SegmenterOptions())
    assert (seg.device.type, seg.precision, seg.backend) == ("cpu", "fp32", "torch")
    fallback = Segmenter.from_checkpoint(checkpoint, SegmenterOptions(device="cuda:1"))
    assert fallback.device.type == "cpu"


@pytest.mark.parametrize("options,message", [
    (SegmenterOptions(device="cpu", precision="fp16"), "fp16 needs a CUDA device"),
    (SegmenterOptions(device="cpu", backend="tensorrt"), "backend must be one of"),
    (SegmenterOptions(device="gpu0"), "device must be one of"),
    (SegmenterOptions(device="cpu", inference_height=10), "inference size"),
    (SegmenterOptions(device="cpu", ort_sessions=0), "ort_sessions must be >= 1"),
])
def test_bad_options_are_clear_errors(checkpoint, options, message):
    with pytest.raises(ValueError, match=message):
        Segmenter.from_checkpoint(checkpoint, options)


def test_bad_images_are_clear_errors(checkpoint):
    seg = Segmenter.from_checkpoint(checkpoint, CPU)
    with pytest.raises(ValueError, match="BGR uint8"):
        seg.segment(np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="empty image"):
        seg.segment(np.zeros((0, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="alpha"):
        seg.overlay(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8), 1.5)


def test_weights_errors_name_the_file_and_the_mismatch(checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match="missing.pt: checkpoint file not found"):
        Segmenter.from_checkpoint(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(checkpoint.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="corrupt.pt: not a readable checkpoint"):
        Segmenter.from_checkpoint(corrupt)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="foreign.pt: expected an eacnet-checkpoint"):
        Segmenter.from_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="expected weights for model 'eacnet_erf', found 'eacnet_dab'"):
        Segmenter.from_name("eacnet_erf", weights=checkpoint)
    with pytest.raises(CheckpointError, match="expected 19 classes, found 11"):
        load_checkpoint(checkpoint, expect_classes=19)
    wrong_shape = torch.load(checkpoint, weights_only=True)
    wrong_shape["num_classes"] = 19
    save_atomic(wrong_shape, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="mismatch.pt: weights do not fit model 'eacnet_dab' with 19 classes"):
        Segmenter.from_checkpoint(tmp_path / "mismatch.pt")


def test_untrained_model_needs_explicit_permission(monkeypatch, tmp_path):
    monkeypatch.setattr("eacnet_core.checkpoint.WEIGHTS_DIR", tmp_path)  # no packaged weights
    with pytest.raises(CheckpointError, match="no packaged weights for model 'dabnet'"):
        Segmenter.from_name("dabnet", options=CPU)
    seg = Segmenter.from_name("dabnet", options=CPU, allow_untrained=True)
    assert not seg.loaded_from_file and "UNTRAINED" in seg.describe()


def test_atomic_save_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    save_atomic({"a": torch.ones(2)}, target)

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(RuntimeError):
        save_atomic({"a": torch.zeros(2)}, target)
    assert torch.equal(torch.load(target, weights_only=True)["a"], torch.ones(2))  # old file intact
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp left behind


def test_segment_cli_writes_three_pngs_per_frame(checkpoint, tmp_path, capsys):
    images = tmp_path / "in"
    images.mkdir()
    rng = np.random.default_rng(1)
    for i in range(2):
        cv2.imwrite(str(images / f"f{i}.png"), rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
    (images / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    assert main(["segment", "--weights", str(checkpoint), "--input", str(images), "--out", str(out),
                 "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [f"f{i}_{k}.png" for i in range(2)
                                                     for k in ("color", "mask", "overlay")]
    mask = cv2.imread(str(out / "f0_mask.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (30, 40) and mask.max() < 11
    assert "skipped 1 unreadable: broken" in capsys.readouterr().out


def test_segment_cli_video(checkpoint, tmp_path):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (32, 24))
    for i in range(3):
        writer.write(np.full((24, 32, 3), 40 * i, np.uint8))
    writer.release()
    out = tmp_path / "out"
    assert main(["segment", "--weights", str(checkpoint), "--input", str(video), "--out", str(out),
                 "--device", "cpu"]) == 0
    assert len(list(out.glob("clip_*_overlay.png"))) == 3


def test_segment_cli_missing_input_is_one_line(checkpoint, tmp_path, capsys):
    assert main(["segment", "--weights", str(checkpoint), "--input", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err


def test_auto_backend_on_cpu_measures_and_keeps_the_fastest_exact_path(checkpoint, frame):
    pytest.importorskip("onnxruntime")
    reference = Segmenter.from_checkpoint(checkpoint, SegmenterOptions(device="cpu", backend="torch")).segment(frame)
    seg = Segmenter.from_checkpoint(checkpoint, SegmenterOptions(device="cpu", precision="fp32", inference_height=32,
                                                                 inference_width=48))
    seg.warmup()
    assert set(seg.autotune_ms) == AUTO_PATHS
    assert seg.autotune_size == (32, 48)  # a set inference size is known at start-up: timed there
    best = min(seg.autotune_ms, key=seg.autotune_ms.get)
    assert (seg.backend, seg.channels_last) == (best.split(":")[0], best.endswith("nhwc"))
    assert seg.backend in seg.describe()
    full = Segmenter.from_checkpoint(checkpoint, SegmenterOptions(device="cpu", precision="fp32"))
    full.warmup(45, 61)
    assert (full.segment(frame) == reference).mean() > 0.99


def test_explicit_backend_is_never_autotuned(checkpoint, frame):
    seg = Segmenter.from_checkpoint(checkpoint, SegmenterOptions(device="cpu", backend="torch"))
    seg.warmup(16, 16)
    seg.tune(16, 16)
    seg.warmup()
    seg.segment(frame)  # nor on the first frame
    assert seg.autotune_ms == {} and seg.autotune_size is None and seg.backend == "torch"


def test_slim_checkpoint_halves_size_and_keeps_predictions(checkpoint, frame, tmp_path):
    full = torch.load(checkpoint, weights_only=True)
    full["optimizer"] = {"state": {}, "param_groups": []}
    save_atomic(full, tmp_path / "train.pt")
    assert main(["slim", str(tmp_path / "train.pt"), "--out", str(tmp_path / "slim.pt")]) == 0
    slim = torch.load(tmp_path / "slim.pt", weights_only=True)
    assert "optimizer" not in slim and slim["epoch"] == 3
    assert all(v.dtype == torch.float16 for v in slim["state_dict"].values() if v.is_floating_point())
    assert (tmp_path / "slim.pt").stat().st_size < 0.6 * checkpoint.stat().st_size
    a = Segmenter.from_checkpoint(checkpoint, CPU).segment(frame)
    b = Segmenter.from_checkpoint(tmp_path / "slim.pt", CPU).segment(frame)
    assert (a == b).mean() > 0.99


# ---------------------------------------------------------------------------- onnxruntime sessions, auto's timing

def _dabnet(**options) -> Segmenter:
    """The smallest registry model, untrained, seeded: two calls give the same weights (fp32
    unless asked: precision auto's choice among precisions has tests of its own)."""
    torch.manual_seed(0)
    options = {"precision": "fp32", **options}
    return Segmenter.from_name("dabnet", options=SegmenterOptions(device="cpu", threads=1, **options),
                               allow_untrained=True)


def _image(height: int, width: int) -> np.ndarray:
    return np.random.default_rng(height * width).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _assert_matches_torch(ort_seg: Segmenter, torch_seg: Segmenter, height: int, width: int) -> None:
    batch = ort_seg.preprocess(_image(height, width))
    got, expected = ort_seg.logits(batch), torch_seg.logits(batch).numpy()
    assert got.shape == expected.shape == (1, ort_seg.num_classes, height, width)
    assert np.abs(got - expected).max() < 1e-4


@pytest.fixture
def counted_onnx(monkeypatch, tmp_path):
    """Count ONNX exports and onnxruntime sessions; weak references to the sessions, and the
    most sessions alive at once (counted when a new one is asked for, so it includes it)."""
    pytest.importorskip("onnxruntime")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the temporary .onnx files go
    real_export, real_session = export.export_onnx, export.ort_session
    record = {"exports": [], "sessions": [], "peak": 0, "tmp": tmp_path}

    def counting_export(*args, **kwargs):
        record["exports"].append(kwargs.get("dynamic_size", False))
        return real_export(*args, **kwargs)

    def counting_session(*args, **kwargs):
        gc.collect()
        alive = sum(ref() is not None for _, ref in record["sessions"])
        record["peak"] = max(record["peak"], alive + 1)
        session = real_session(*args, **kwargs)
        record["sessions"].append((kwargs.get("size"), weakref.ref(session)))
        return session

    monkeypatch.setattr(export, "export_onnx", counting_export)
    monkeypatch.setattr(export, "ort_session", counting_session)
    return record


def test_onnxruntime_sessions_are_a_bounded_lru_over_one_export(counted_onnx):
    seg = _dabnet(backend="onnxruntime", ort_sessions=2)
    reference = _dabnet(backend="torch", channels_last=False)
    seg.warmup()  # exports (and checks) the dynamic-size graph; no session at a guessed size
    assert counted_onnx["exports"] == [True] and seg.onnx_sessions == ()
    counted_onnx["sessions"].clear()
    counted_onnx["peak"] = 0
    a, b, c = (24, 40), (32, 56), (41, 57)  # c: not a multiple of 8, the padding path
    for size, expected in [(a, (a,)), (b, (a, b)), (a, (b, a)), (c, (a, c)), (b, (c, b))]:
        seg.logits(seg.preprocess(_image(*size)))
        assert seg.onnx_sessions == expected  # least recently used first: b went, then a
    assert [size for size, _ in counted_onnx["sessions"]] == [a, b, c, b]  # a's second use: no new session
    assert counted_onnx["peak"] == 2  # never more alive than the bound, even while creating
    gc.collect()
    assert [size for size, ref in counted_onnx["sessions"] if ref() is not None] == [c, b]  # evicted = freed
    assert counted_onnx["exports"] == [True]  # new sizes did not re-export
    _assert_matches_torch(seg, reference, *b)  # re-created after eviction, still torch's function
    _assert_matches_torch(seg, reference, *c)
    assert list(counted_onnx["tmp"].iterdir()) == []  # temporary .onnx files removed


def test_onnxruntime_exports_per_size_when_the_dynamic_graph_fails_its_check(counted_onnx, monkeypatch, caplog):
    monkeypatch.setattr("eacnet_core.infer.engines._graph_matches", lambda *args: False)
    seg = _dabnet(backend="onnxruntime", ort_sessions=1)
    reference = _dabnet(backend="torch", channels_last=False)
    with caplog.at_level(logging.WARNING, logger="eacnet_core"):
        _assert_matches_torch(seg, reference, 24, 40)
        _assert_matches_torch(seg, reference, 41, 57)
    assert counted_onnx["exports"] == [True, False, False]  # the rejected dynamic graph, then one per size
    assert seg.onnx_sessions == ((41, 57),)
    assert any("exporting one graph per input size" in r.getMessage() for r in caplog.records)


def test_auto_with_native_size_times_once_at_the_first_frames_size(monkeypatch, caplog):
    pytest.importorskip("onnxruntime")
    timed = []
    real = Chooser.choose_cpu

    def recording(self, batch, runs=3, probes=()):
        timed.append(batch.shape[2:])
        return real(self, batch, runs, probes)

    monkeypatch.setattr(Chooser, "choose_cpu", recording)
    caplog.set_level(logging.INFO, logger="eacnet_core")
    seg = _dabnet()
    seg.warmup(runs=1)
    assert timed == [] and seg.autotune_size is None  # start-up does not time at a guessed size
    assert "backend=auto (chosen on the first frame)" in seg.describe()
    assert seg.segment(_image(40, 56)).shape == (40, 56)
    assert timed == [(40, 56)] and seg.autotune_size == (40, 56)
    assert set(seg.autotune_ms) == AUTO_PATHS
    best = min(seg.autotune_ms, key=seg.autotune_ms.get)
    assert (seg.backend, seg.channels_last) == (best.split(":")[0], best.endswith("nhwc"))
    seg.segment(_image(24, 32))
    assert timed == [(40, 56)]  # only once: later sizes keep the choice
    lines = [r for r in caplog.records if r.name.startswith("eacnet_core") and "auto at" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    message = lines[0].getMessage()
    assert "\n" not in message and "56x40" in message and message.endswith(f"-> {best}")
    assert all(f"{path} {ms:.0f} ms" in message for path, ms in seg.autotune_ms.items())


def test_tune_times_at_the_network_size_now(monkeypatch):
    pytest.importorskip("onnxruntime")
    native = _dabnet()
    native.tune(24, 40)
    assert native.autotune_size == (24, 40)
    native.warmup(runs=0)
    native.segment(_image(32, 48))
    assert native.autotune_size == (24, 40)  # tuned already: neither warm-up nor the first frame re-times
    fixed = _dabnet(inference_height=16, inference_width=24)
    fixed.tune(720, 1280)  # the camera's size; the network runs at the inference size
    assert fixed.autotune_size == (16, 24)
    with pytest.raises(ValueError, match="positive image size"):
        fixed.tune(0, 1280)


def _clock_by_backend(monkeypatch, ms_by_backend: dict[str, float]) -> list[str]:
    """Every timed run still runs, but reports a fixed time per backend (the differences are
    100x a loaded machine's noise, and no real clock is read); returns the backends timed."""
    timed = []

    def elapsed(run, *args):
        run(*args)
        timed.append(run.__self__.backend)
        return ms_by_backend[run.__self__.backend]

    monkeypatch.setattr(chooser, "elapsed_ms", elapsed)
    return timed


def test_auto_frees_onnxruntime_when_torch_wins(monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setattr(chooser, "_ov_available", lambda: False)  # torch against onnxruntime alone
    _clock_by_backend(monkeypatch, {"onnxruntime": 400.0, "torch": 4.0})
    seg = _dabnet()
    seg.tune(24, 40)
    assert seg.autotune_ms == {"onnxruntime:fp32": 400.0, "torch:fp32:nhwc": 4.0, "torch:fp32:nchw": 4.0}
    assert seg.backend == "torch"
    assert seg.onnx_sessions == () and seg.engines == {}  # neither sessions nor the graph kept


def test_auto_drops_a_clear_loser_after_its_first_run(monkeypatch, caplog):
    pytest.importorskip("onnxruntime")
    monkeypatch.setattr(chooser, "_ov_available", lambda: False)  # torch against onnxruntime alone
    timed = _clock_by_backend(monkeypatch, {"onnxruntime": 2.0, "torch": 200.0})
    caplog.set_level(logging.INFO, logger="eacnet_core")
    seg = _dabnet()
    seg.tune(24, 40)
    # onnxruntime: the untimed first run and 3 timed; each torch layout: two runs (one may be
    # hit by another process), then dropped, not 1 + 3 each
    assert timed == ["onnxruntime"] * 4 + ["torch"] * 4
    assert seg.backend == "onnxruntime" and seg.autotune_dropped == ["torch:fp32:nhwc", "torch:fp32:nchw"]
    assert seg.autotune_ms == {"onnxruntime:fp32": 2.0, "torch:fp32:nhwc": 200.0, "torch:fp32:nchw": 200.0}
    assert "torch:fp32:nchw" in caplog.text and caplog.text.count("(dropped after its first runs)") == 2


# ---------------------------------------------------------------------------- several images in one pass

@pytest.mark.parametrize("channels_last", [True, False])
def test_segment_batch_equals_segment_with_one_pass_per_network_size(channels_last, monkeypatch):
    seg = _dabnet(backend="torch", channels_last=channels_last)
    images = [_image(24, 32), _image(40, 56), _image(24, 32) // 2, _image(40, 56)[::-1].copy()]
    one_by_one = [seg.segment(image) for image in images]
    forward, passes = seg._model.forward, []

    def counting_forward(x):
        passes.append(tuple(x.shape))
        return forward(x)

    monkeypatch.setattr(seg._model, "forward", counting_forward)
    masks = seg.segment_batch(images)
    assert sorted(passes) == [(2, 3, 24, 32), (2, 3, 40, 56)]  # two sizes: two passes of two
    for mask, single, image in zip(masks, one_by_one, images, strict=True):
        assert mask.shape == image.shape[:2] and mask.dtype == np.uint8
        assert (mask == single).mean() > 0.999


def test_segment_batch_at_an_inference_size_is_one_pass(monkeypatch):
    seg = _dabnet(backend="torch", inference_height=24, inference_width=32)
    images = [_image(48, 64), _image(36, 40), _image(24, 32)]
    passes = []
    forward = seg._model.forward
    monkeypatch.setattr(seg._model, "forward", lambda x: passes.append(tuple(x.shape)) or forward(x))
    masks = seg.segment_batch(images)
    assert passes == [(3, 3, 24, 32)]
    assert [m.shape for m in masks] == [(48, 64), (36, 40), (24, 32)]
    assert seg.segment_batch([]) == []


def test_segment_batch_on_onnxruntime_runs_one_image_at_a_time():
    pytest.importorskip("onnxruntime")
    seg, reference = _dabnet(backend="onnxruntime"), _dabnet(backend="torch", channels_last=False)
    images = [_image(24, 32), _image(24, 32) // 3]
    masks = seg.segment_batch(images)
    for mask, image in zip(masks, images, strict=True):
        assert (mask == reference.segment(image)).mean() > 0.99


# ---------------------------------------------------------------------------- precision auto on the CPU

@pytest.fixture
def camera_frames(tmp_path, synthetic):
    """A folder of camera frames: what precision auto checks reduced precisions on (and calibrates int8 on)."""
    rng = np.random.default_rng(3)
    for i in range(3):
        image, _ = synthetic.pair(rng, 24, 40)
        synthetic.write_png(tmp_path / "frames" / f"frame_{i}.png", image)
    return tmp_path / "frames"


def _fake_clock(monkeypatch, ms_by_precision: dict[str, float]) -> list[str]:
    """Every timed run still runs, but reports a fixed time per precision; returns what was timed."""
    timed = []

    def elapsed(run, *args):
        run(*args)
        seg = run.__self__
        timed.append(f"{seg.backend}:{seg.precision}")
        return ms_by_precision[seg.precision]

    monkeypatch.setattr(chooser, "elapsed_ms", elapsed)
    return timed


def _probe_agreement(monkeypatch, by_precision: dict[str, float]) -> None:
    monkeypatch.setattr(Chooser, "agreement_with", lambda self, probes, truth: by_precision[self.segmenter.precision])


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="this CPU has no native bf16")
def test_precision_auto_keeps_the_fastest_precision_that_agrees_with_fp32(camera_frames, monkeypatch, caplog):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")  # OpenVINO's int8 candidate is built with it
    _fake_clock(monkeypatch, {"fp32": 10.0, "bf16": 4.0, "int8": 2.0})
    _probe_agreement(monkeypatch, {"bf16": 0.995, "int8": 0.97})  # int8 fastest, but below the guard
    caplog.set_level(logging.INFO, logger="eacnet_core")
    seg = _dabnet(precision="auto", backend="openvino", calibration_data=str(camera_frames))
    seg.tune(24, 40)
    assert set(seg.autotune_ms) == {"openvino:fp32", "openvino:bf16", "openvino:int8"}
    assert seg.autotune_agreement == {"openvino:bf16": 0.995, "openvino:int8": 0.97}
    assert (seg.backend, seg.precision) == ("openvino", "bf16")
    assert "precision=bf16 backend=openvino (chosen by auto)" in seg.describe()
    line = next(m for m in caplog.messages if m.startswith("auto at 40x24"))
    assert "openvino:int8 2 ms agrees 97.00%" in line and line.endswith("-> openvino:bf16")


def test_precision_auto_measures_real_agreement_on_the_frames(camera_frames):
    """Without fakes: bf16/int8 candidates carry their measured agreement, and whatever is chosen
    either is fp32 or agreed >= 99%; its masks then equal fp32's on that share of a frame."""
    pytest.importorskip("onnxruntime")
    seg = _dabnet(precision="auto", calibration_data=str(camera_frames))
    seg.tune(24, 40)
    unchecked = {k for k in seg.autotune_ms if ":fp32" not in k and k not in seg.autotune_agreement}
    assert "onnxruntime:int8" in seg.autotune_ms
    assert unchecked <= set(seg.autotune_dropped)  # every reduced one timed in full was checked
    assert all(0.0 <= a <= 1.0 for a in seg.autotune_agreement.values())
    chosen = f"{seg.backend}:{seg.precision}"
    assert seg.precision == "fp32" or seg.autotune_agreement[chosen] >= chooser.AGREEMENT_MIN
    frame = _image(24, 40)
    assert (seg.segment(frame) == _dabnet().segment(frame)).mean() >= (0.99 if seg.precision == "fp32" else 0.95)


def test_precision_auto_without_frames_to_check_waits_for_the_first_frame(monkeypatch):
    pytest.importorskip("openvino")
    monkeypatch.setattr(quantize, "default_calibration_root", lambda: "")
    monkeypatch.setattr(chooser, "cpu_supports_bf16", lambda: True)  # a reduced precision to check
    _fake_clock(monkeypatch, {"fp32": 10.0, "bf16": 5.0})  # none dropped after its first run
    seg = _dabnet(precision="auto", inference_height=24, inference_width=40)
    seg.warmup(runs=0)
    assert seg.autotune_size is None and "chosen on the first frame" in seg.describe()
    probes = []
    monkeypatch.setattr(Chooser, "agreement_with", lambda self, p, truth: probes.append(len(p)) or 1.0)
    seg.segment(_image(48, 80))
    assert seg.autotune_size == (24, 40) and probes and set(probes) == {1}  # the camera frame was the probe


def test_the_choice_is_remembered_per_size_and_weights(camera_frames, monkeypatch, caplog):
    pytest.importorskip("onnxruntime")
    timed = _fake_clock(monkeypatch, {"fp32": 10.0, "bf16": 5.0, "int8": 5.0})
    first = _dabnet(backend="auto")
    first.tune(24, 40)
    assert timed and first.autotune_size == (24, 40)
    choice, ms = (first.backend, first.precision, first.channels_last), dict(first.autotune_ms)
    timed.clear()
    caplog.set_level(logging.INFO, logger="eacnet_core")
    again = _dabnet(backend="auto")
    again.tune(24, 40)
    assert timed == []  # nothing timed: the remembered choice
    assert (again.backend, again.precision, again.channels_last) == choice and again.autotune_ms == ms
    assert any(m.startswith("auto at 40x24 (remembered)") for m in caplog.messages)
    again.tune(32, 48)
    assert timed  # another size: measured
    timed.clear()
    torch.manual_seed(1)
    other = Segmenter(build_model("dabnet", CAMVID.num_classes), "dabnet", CAMVID,
                      SegmenterOptions(device="cpu", threads=1, precision="fp32"))
    other.tune(24, 40)
    assert timed  # other weights: measured
    timed.clear()
    _dabnet(backend="auto", choice_cache=False).tune(24, 40)
    assert timed  # the cache switched off


def test_a_broken_choice_record_is_measured_again(monkeypatch, tmp_path, caplog):
    pytest.importorskip("onnxruntime")
    timed = _fake_clock(monkeypatch, {"fp32": 10.0})
    _dabnet().tune(24, 40)
    records = list((tmp_path / "user-cache" / "eacnet" / "choices").glob("dabnet-*.json"))
    assert len(records) == 1
    records[0].write_text('{"choice": "nosuch:fp32"')
    timed.clear()
    caplog.set_level(logging.INFO, logger="eacnet_core")
    seg = _dabnet()
    seg.tune(24, 40)
    assert timed and seg.autotune_size == (24, 40)
    assert any(m.startswith(f"choice cache: ignoring {records[0]} (unreadable") for m in caplog.messages)


def test_bench_pipeline_reports_what_auto_chose_beside_explicit_configs(tmp_path, capsys, monkeypatch):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("rosbags")
    from eacnet_ros.bench import pipeline as pb

    assert pb.PipelineConfig.parse("auto").label == "auto"
    out = tmp_path / "bench.json"
    assert main(["bench-pipeline", "--model", "dabnet", "--sizes", "40x24", "--configs", "torch:fp32:nchw", "auto",
                 "--runs", "1", "--warmup", "0", "--threads", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    chosen = rows[1]["config"]
    assert rows[0]["config"] == "torch:fp32:nchw" and chosen.startswith("auto=")
    backend, precision = chosen[len("auto="):].split(":")[:2]
    assert backend in ("torch", "onnxruntime", "openvino") and precision in ("fp32", "bf16", "int8")
    assert f"| 40x24 | {chosen} |" in capsys.readouterr().out
