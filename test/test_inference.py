"""Segmenter: preprocessing, backends, output shapes, weights errors; checkpoints."""

import cv2
import numpy as np
import pytest
import torch

from eacnet_core.checkpoint import CheckpointError, load_checkpoint, make_checkpoint, save_atomic
from eacnet_core.classes import CAMVID
from eacnet_core.inference import Segmenter, SegmenterOptions
from eacnet_core.models import build_model
from eacnet_ros.cli import main

CPU = SegmenterOptions(device="cpu")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("eacnet_dab", CAMVID.num_classes)
    model.attention.gamma.data.fill_(0.3)
    path = tmp_path_factory.mktemp("ckpt") / "dab.pt"
    save_atomic(make_checkpoint("eacnet_dab", model, CAMVID, epoch=3, metrics={"miou": 0.1}), path)
    return path


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
    assert not seg.trained and "UNTRAINED" in seg.describe()


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
    assert main(["segment", "--weights", str(checkpoint), "--input", str(images), "--output", str(out),
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
    assert main(["segment", "--weights", str(checkpoint), "--input", str(video), "--output", str(out),
                 "--device", "cpu"]) == 0
    assert len(list(out.glob("clip_*_overlay.png"))) == 3


def test_segment_cli_missing_input_is_one_line(checkpoint, tmp_path, capsys):
    assert main(["segment", "--weights", str(checkpoint), "--input", str(tmp_path / "nope"),
                 "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err


def test_auto_backend_on_cpu_measures_and_keeps_the_fastest_exact_path(checkpoint, frame):
    pytest.importorskip("onnxruntime")
    reference = Segmenter.from_checkpoint(checkpoint, SegmenterOptions(device="cpu", backend="torch")).segment(frame)
    seg = Segmenter.from_checkpoint(checkpoint, SegmenterOptions(device="cpu", inference_height=32,
                                                                 inference_width=48))
    seg.warmup()
    assert set(seg.autotune_ms) == {"torch:nhwc", "torch:nchw", "onnxruntime:nchw"}
    best = min(seg.autotune_ms, key=seg.autotune_ms.get)
    assert (seg.backend, seg.channels_last) == (best.split(":")[0], best.endswith("nhwc"))
    assert seg.backend in seg.describe()
    full = Segmenter.from_checkpoint(checkpoint, SegmenterOptions(device="cpu"))
    full.warmup(45, 61)
    assert (full.segment(frame) == reference).mean() > 0.99


def test_explicit_backend_is_never_autotuned(checkpoint):
    seg = Segmenter.from_checkpoint(checkpoint, SegmenterOptions(device="cpu", backend="torch"))
    seg.warmup(16, 16)
    assert seg.autotune_ms == {} and seg.backend == "torch"


def test_slim_checkpoint_halves_size_and_keeps_predictions(checkpoint, frame, tmp_path):
    full = torch.load(checkpoint, weights_only=True)
    full["optimizer"] = {"state": {}, "param_groups": []}
    save_atomic(full, tmp_path / "train.pt")
    assert main(["slim", str(tmp_path / "train.pt"), str(tmp_path / "slim.pt")]) == 0
    slim = torch.load(tmp_path / "slim.pt", weights_only=True)
    assert "optimizer" not in slim and slim["epoch"] == 3
    assert all(v.dtype == torch.float16 for v in slim["state_dict"].values() if v.is_floating_point())
    assert (tmp_path / "slim.pt").stat().st_size < 0.6 * checkpoint.stat().st_size
    a = Segmenter.from_checkpoint(checkpoint, CPU).segment(frame)
    b = Segmenter.from_checkpoint(tmp_path / "slim.pt", CPU).segment(frame)
    assert (a == b).mean() > 0.99
