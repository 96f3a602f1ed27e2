"""backend openvino: the same masks as torch in fp32, one compiled model per size (LRU), a
candidate of backend=auto, and clear errors for what it does not run."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from eacnet_core.data.classes import generic
from eacnet_core.infer.segmenter import Segmenter, SegmenterOptions
from eacnet_core.models import build_model
from eacnet_core.runtime import cpu_supports_bf16

pytest.importorskip("openvino")
pytest.importorskip("onnxruntime")


def _segmenter(backend: str, precision: str = "fp32", **kw) -> Segmenter:
    torch.manual_seed(0)
    return Segmenter(build_model("dabnet", 3), "dabnet", generic(3),
                     SegmenterOptions(device="cpu", backend=backend, precision=precision, threads=1, **kw))


def _frame(h: int = 40, w: int = 56) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_openvino_fp32_masks_equal_torch():
    frame = _frame()
    ov, ref = _segmenter("openvino"), _segmenter("torch", channels_last=False)
    assert (ov.segment(frame) == ref.segment(frame)).mean() >= 0.999
    a = np.asarray(ov.logits(ov.preprocess(frame)))
    b = ref.logits(ref.preprocess(frame)).numpy()
    assert np.allclose(a, b, atol=1e-3, rtol=1e-3)


@pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no native bf16")
def test_openvino_bf16_is_close():
    frame = _frame()
    ov, ref = _segmenter("openvino", "bf16"), _segmenter("torch", channels_last=False)
    assert (ov.segment(frame) == ref.segment(frame)).mean() >= 0.9


def test_one_compiled_model_per_size_least_recently_used_dropped():
    ov = _segmenter("openvino", ort_sessions=2)
    for h, w in ((32, 48), (40, 56), (32, 48), (24, 40)):
        assert ov.segment(_frame(h, w)).shape == (h, w)
    assert ov.engines[("openvino", "fp32")].sizes == ((32, 48), (24, 40))


def test_backend_auto_times_openvino_beside_the_others():
    seg = _segmenter("auto")
    seg.tune(40, 56)
    assert "openvino:fp32" in seg.autotune_ms and seg.backend in ("torch", "onnxruntime", "openvino")
    assert seg.segment(_frame()).shape == (40, 56)


def test_openvino_refuses_what_it_does_not_run():
    with pytest.raises(ValueError, match="needs a CUDA device"):
        _segmenter("openvino", "fp16")


@pytest.fixture
def camera_frames(tmp_path, synthetic):
    rng = np.random.default_rng(0)
    for i in range(3):
        image, _ = synthetic.pair(rng, 32, 48)
        synthetic.write_png(tmp_path / "frames" / f"frame_{i}.png", image)
    return tmp_path / "frames"


def test_openvino_int8_is_nncfs_model_close_to_fp32_and_cached(camera_frames, tmp_path, monkeypatch, caplog):
    pytest.importorskip("nncf")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    frame = _frame(32, 48)
    caplog.set_level(logging.INFO, logger="eacnet_core")
    int8 = _segmenter("openvino", "int8", calibration_data=str(camera_frames), inference_height=32,
                      inference_width=48)
    fp32 = _segmenter("torch", channels_last=False, inference_height=32, inference_width=48)
    a = fp32.logits(fp32.preprocess(frame)).numpy()
    b = np.asarray(int8.logits(int8.preprocess(frame)))
    assert a.shape == b.shape and np.abs(a - b).mean() < 0.1 * (a.max() - a.min())
    assert (a.argmax(1) == b.argmax(1)).mean() > 0.8
    built = list((tmp_path / "user-cache" / "eacnet" / "int8").glob("dabnet-*.int8.xml"))
    assert len(built) == 1 and built[0].with_suffix(".bin").is_file()
    assert any("quantising dabnet with NNCF" in m for m in caplog.messages)
    caplog.clear()
    again = _segmenter("openvino", "int8", calibration_data=str(camera_frames), inference_height=32,
                       inference_width=48)
    assert np.array_equal(np.asarray(again.logits(again.preprocess(frame))), b)
    assert any("using" in m for m in caplog.messages) and not any("quantising" in m for m in caplog.messages)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_argmax_in_the_graph_gives_the_ids_of_the_logits(precision):
    """segment() on OpenVINO takes the class ids from the compiled model (no logit planes leave
    it): bit for bit the argmax of the same engine's logits wherever the top two logits differ,
    the lower id where they tie."""
    if precision == "bf16" and not cpu_supports_bf16():
        pytest.skip("this CPU has no native bf16")
    seg = _segmenter("openvino", precision)
    frame = _frame(40, 56)
    batch = seg.preprocess(frame)
    ids = seg.graph_ids(batch)
    logits = np.asarray(seg.logits(batch))[0]
    assert ids.dtype == np.uint8 and ids.shape == (40, 56)
    top2 = np.sort(logits, axis=0)[-2:]
    clear = top2[1] - top2[0] > 1e-5
    assert clear.mean() > 0.9 and np.array_equal(ids[clear], logits.argmax(0)[clear])
    assert np.array_equal(seg.segment(frame), ids)
    assert ("openvino", precision) in seg.engines and seg.graph_ids(batch) is not None
    torch_seg = _segmenter("torch", channels_last=False)
    assert torch_seg.graph_ids(batch) is None  # torch keeps the argmax of its logits
