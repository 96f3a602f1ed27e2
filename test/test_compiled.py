"""The compiled torch forward (compiled.CompiledForward, backend torch_compiled) and the
Segmenter's on-device frame path, on the CPU. torch.compile runs with the aot_eager backend
here (the same tracing and guards; inductor's C++ build takes minutes on a small CPU), so
these tests check shapes, the LRU, logging and results; CUDA graphs are tested where CUDA is."""

import logging

import numpy as np
import pytest
import torch
from torch import nn

from eacnet_core.data.classes import CAMVID
from eacnet_core.infer import compiled
from eacnet_core.infer.compiled import CompiledForward, resolve_compile_mode
from eacnet_core.infer.segmenter import Segmenter, SegmenterOptions

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def _quick_compiler(monkeypatch):
    monkeypatch.setattr(compiled, "COMPILER", "aot_eager")


def pixel_model(classes: int = 11) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, classes, 1))
    for p in model.parameters():
        nn.init.normal_(p, std=1.0)
    return model.eval()


def frame(height: int = 16, width: int = 24, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def segmenter(**kw) -> Segmenter:
    return Segmenter(pixel_model(), "pixel", CAMVID, SegmenterOptions(device="cpu", **kw))


def test_modes_resolve_per_device_and_graphs_need_cuda():
    assert resolve_compile_mode("auto", torch.device("cpu")) == "inductor"
    assert resolve_compile_mode("auto", torch.device("cuda")) == "inductor+graphs"
    with pytest.raises(ValueError, match="needs a CUDA device"):
        resolve_compile_mode("graphs", torch.device("cpu"))
    with pytest.raises(ValueError, match="compile mode must be one of"):
        resolve_compile_mode("fast", torch.device("cpu"))


def test_each_shape_is_prepared_once_logged_and_kept_in_an_lru(caplog):
    model = pixel_model()
    engine = CompiledForward(model, torch.device("cpu"), torch.float32, channels_last=True, capacity=2)
    x = torch.randn(1, 3, 16, 24)
    with caplog.at_level(logging.INFO, logger="eacnet_core.infer.compiled"):
        assert engine.prepare(1, 16, 24) > 0
        assert engine.prepare(1, 16, 24) == 0.0  # ready: nothing to do
        with torch.inference_mode():
            assert torch.allclose(engine(x), model(x), atol=1e-5)
            engine(torch.randn(2, 3, 16, 24))  # a new batch size is a new shape: prepared on its first call
            assert engine.shapes == ((1, 16, 24), (2, 16, 24))
            engine(torch.randn(1, 3, 8, 8))
    assert engine.shapes == ((2, 16, 24), (1, 8, 8))  # the least recently used went
    assert engine.sizes == ((16, 24), (8, 8))
    ready = [r.getMessage() for r in caplog.records if "ready in" in r.getMessage()]
    assert len(ready) == 3 and "24x16 ready" in ready[0] and "24x16 batch 2 ready" in ready[1]
    assert any("dropped 24x16" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        engine(torch.randn(3, 16, 24))


def test_segmenter_torch_compiled_matches_eager_and_compiles_at_warmup(caplog):
    eager = segmenter(backend="torch", inference_height=16, inference_width=24)
    fast = segmenter(backend="torch_compiled", inference_height=16, inference_width=24)
    with caplog.at_level(logging.INFO, logger="eacnet_core.infer.compiled"):
        fast.warmup()
    compiled = fast.engine("torch_compiled", fast.precision)
    assert compiled.shapes == ((1, 16, 24),)  # compiled at start-up, not on a frame
    assert any("ready in" in r.getMessage() for r in caplog.records)
    images = [frame(16, 24, seed=s) for s in range(3)]
    for image in images:
        assert np.array_equal(fast.segment(image), eager.segment(image))
    assert [np.array_equal(a, b) for a, b in zip(fast.segment_batch(images), eager.segment_batch(images),
                                                 strict=True)] == [True] * 3
    assert (3, 16, 24) in compiled.shapes  # the batch of three: one pass


def test_frames_on_the_device_give_the_cpu_paths_results():
    cpu = segmenter(backend="torch")
    on = segmenter(backend="torch", frame_on_device="on")
    assert on.frame_on_device and not cpu.frame_on_device
    assert "frame=on-device" in on.describe()
    images = [frame(16, 24, seed=1), frame(20, 28, seed=2)]
    wanted = [(True, True), (False, True)]
    for a, b in zip(on.segment_frames(images, wanted, 0.3), cpu.segment_frames(images, wanted, 0.3), strict=True):
        assert np.array_equal(a.mask, b.mask) and np.array_equal(a.overlay, b.overlay)
        assert (a.color_mask is None) == (b.color_mask is None)
        if a.color_mask is not None:
            assert np.array_equal(a.color_mask, b.color_mask)
    assert np.array_equal(on.segment(images[0]), cpu.segment(images[0]))
    assert [m.shape for m in on.segment_batch(images)] == [(16, 24), (20, 28)]


def test_compiled_frames_on_the_device_and_bad_options():
    on = segmenter(backend="torch_compiled", frame_on_device="on", inference_height=16, inference_width=24)
    cpu = segmenter(backend="torch", inference_height=16, inference_width=24)
    on.warmup()
    image = frame(16, 24, seed=4)
    assert np.array_equal(on.segment(image), cpu.segment(image))
    with pytest.raises(ValueError, match="frame_on_device must be one of"):
        segmenter(frame_on_device="yes")
    with pytest.raises(ValueError, match="alpha"):
        on.segment_frames([image], [(False, True)], alpha=2.0)
    with pytest.raises(ValueError, match="BGR uint8"):
        on.segment_frames([image[..., 0]])


def test_cuda_auto_choice_keeps_the_faster_path_and_survives_a_failing_compiler(caplog, monkeypatch):
    """The choice backend=auto makes on CUDA, run on CPU tensors (the timing is device-agnostic)."""
    seg = segmenter(backend="torch", frame_on_device="on")
    with caplog.at_level(logging.INFO, logger="eacnet_core.infer.chooser"):
        seg.chooser.choose_cuda((16, 24), runs=3)
    assert set(seg.autotune_ms) == {"torch", "torch_compiled"}
    assert seg.backend == min(seg.autotune_ms, key=seg.autotune_ms.get)
    assert seg.autotune_size == (16, 24)
    assert any("backend auto at 24x16" in r.getMessage() for r in caplog.records)

    def broken(*args):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(seg._compiled, "_prepare_shape", broken)
    seg._compiled.clear()
    with caplog.at_level(logging.WARNING, logger="eacnet_core.infer.chooser"):
        seg.chooser.choose_cuda((16, 24), runs=3)
    assert seg.backend == "torch" and set(seg.autotune_ms) == {"torch"}
    assert any("torch_compiled failed" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("frame_on_device", ["on", "off"])
def test_the_first_frame_settles_the_cuda_choice_on_either_frame_path(frame_on_device, monkeypatch):
    """backend=auto on CUDA with the camera's size unknown at start-up: the first frame makes
    the eager/compiled choice at its network size, whether the frame goes through the device
    path (segment_frames) or the CPU one (segment), and never the CPU's candidate timing.
    (Run on CPU tensors: the CUDA flag is set by hand, the timing is device-agnostic.)"""
    seg = segmenter(backend="auto", precision="fp32", frame_on_device=frame_on_device)
    monkeypatch.setattr(seg.chooser, "on_cuda", True)
    monkeypatch.setattr(seg.chooser, "on_cpu", False)
    monkeypatch.setattr(seg.chooser, "choose_cpu", lambda *a, **k: pytest.fail("CPU choice on CUDA"))
    seg.warmup()
    assert "backend=auto (chosen on the first frame)" in seg.describe()
    image = frame(16, 24, seed=3)
    mask = seg.segment_frames([image])[0].mask if frame_on_device == "on" else seg.segment(image)
    assert seg.autotune_size == (16, 24) and set(seg.autotune_ms) == {"torch", "torch_compiled"}
    assert f"backend={seg.backend} (chosen by auto)" in seg.describe()
    assert np.array_equal(mask, segmenter(backend="torch").segment(image))


@CUDA
def test_cuda_graph_replays_match_eager_for_each_batch_size():
    model = pixel_model().cuda()
    engine = CompiledForward(model, torch.device("cuda"), torch.float32, channels_last=True, mode="graphs")
    for batch in (1, 3):
        x = torch.randn(batch, 3, 32, 48, device="cuda")
        with torch.inference_mode():
            expected = model(x)
            got = engine.runner(32, 48)(x)
            engine(torch.randn_like(x))  # a replay overwrites the graph's output, not the runner's copy
        assert torch.allclose(got, expected, atol=1e-4)


@CUDA
def test_cuda_segmenter_auto_uses_the_device_frame_path():
    seg = Segmenter(pixel_model(), "pixel", CAMVID, SegmenterOptions(device="cuda", precision="fp32",
                                                                     inference_height=32, inference_width=48))
    seg.warmup()
    assert seg.frame_on_device and seg.backend in ("torch", "torch_compiled")
    cpu = segmenter(backend="torch", inference_height=32, inference_width=48)
    image = frame(32, 48, seed=7)
    assert (seg.segment(image) == cpu.segment(image)).mean() > 0.999


def test_bench_times_eager_and_compiled_side_by_side():
    from eacnet_core.evaluate.bench import BenchConfig, format_table, run_bench

    cfg = BenchConfig(models=("eacnet_erf",), height=32, width=48, classes=11, backend="torch,torch_compiled",
                      warmup=1, runs=2, threads=1)
    results = run_bench(cfg, progress=False)
    assert [(r.model, r.backend) for r in results] == [("eacnet_erf", "torch"), ("eacnet_erf", "torch_compiled")]
    assert all(r.latency_ms_median > 0 for r in results)
    assert "eacnet_erf torch_compiled" in format_table(results)
    with pytest.raises(ValueError, match="backend must be one or more of"):
        run_bench(BenchConfig(models=("eacnet_erf",), height=32, width=48, backend="torch,tensorrt"), progress=False)
