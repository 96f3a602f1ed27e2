"""backend openvino: the same masks as torch in fp32, one compiled model per size (LRU), a
candidate of backend=auto, and clear errors for what it does not run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eacnet_core.classes import generic
from eacnet_core.inference import Segmenter, SegmenterOptions
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
