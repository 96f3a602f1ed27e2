"""eacnet_ros.bench.pipeline on tiny inputs: every stage is timed, masks are compared with
the baseline, the targets are checked and the CLI arguments are validated."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from eacnet_ros.bench import pipeline as pb


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="eacnet")
    pb.add_parser(parser.add_subparsers())
    return parser.parse_args(["bench-pipeline", *argv])


def test_run_times_every_stage_and_compares_masks(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = parse(["--sizes", "64x48", "--configs", "torch:fp32", "torch:fp32:nchw", "--runs", "2", "--warmup", "1",
                  "--json", str(out)])
    assert args.func(args) == 0
    rows = json.loads(out.read_text())
    assert [(r["size"], r["config"]) for r in rows] == [("64x48", "torch:fp32:nhwc"), ("64x48", "torch:fp32:nchw")]
    for row in rows:
        assert set(row["ms"]) == set(pb.STAGES) and all(v >= 0 for v in row["ms"].values())
        assert row["agreement"] == 1.0  # same weights, same answer in either memory layout
    printed = capsys.readouterr().out
    assert "| 64x48 | torch:fp32:nchw |" in printed and "non-forward stages <= 15%" in printed


class DrivenClock:
    """A clock that only moves when the test's stand-in work says it took time."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def taking(self, ms: float, work):
        """``work`` that takes ``ms`` milliseconds on this clock."""
        def run(*args, **kwargs):
            self.now += ms / 1000
            return work(*args, **kwargs)

        return run


def test_each_stage_measures_its_own_work(monkeypatch):
    """Stages replaced by work of known times on a clock the test drives (the forward pass
    25 ms, or none): each stage holds its own time and no other's, configurations are run in
    blocks after their warm-up, and the medians are the stages' times."""
    clock = DrivenClock()
    monkeypatch.setattr(pb, "clock", clock)
    configs = [pb.PipelineConfig.parse("torch:fp32:nchw")] * 2
    instant, slowed = pb.build_segmenters("dabnet", None, configs, "cpu", (0, 0), 1)
    logits = instant.logits(instant.preprocess(pb.synthetic_frame(48, 64)))
    passes = []
    for segmenter, forward_ms in ((instant, 0.0), (slowed, 25.0)):
        segmenter.preprocess = clock.taking(1.0, segmenter.preprocess)
        segmenter.logits = clock.taking(forward_ms, lambda batch, s=segmenter: passes.append(s) or logits)
        segmenter.mask_from_logits = clock.taking(2.0, segmenter.mask_from_logits)
        segmenter.colorize = clock.taking(3.0, segmenter.colorize)
    fast, slow = pb.bench_size([instant, slowed], configs, (48, 64), runs=4, warmup=1, block=2)
    expected = {"decode": 0.0, "preprocess": 1.0, "forward": 0.0, "postprocess": 2.0, "colour": 3.0, "score": 0.0,
                "encode": 0.0}
    assert fast.ms == pytest.approx(expected)
    assert slow.ms == pytest.approx({**expected, "forward": 25.0})
    assert passes == [instant] * 3 + [slowed] * 3 + [instant] * 3 + [slowed] * 3  # blocks of 1 warm-up + 2 runs
    assert fast.agreement == slow.agreement == 1.0


def test_run_frame_mask_equals_segment(tmp_path):
    (segmenter,) = pb.build_segmenters("eacnet_erf", None, [pb.PipelineConfig.parse("torch:fp32")], "cpu", (0, 0), 0)
    store, image_type = pb.message_types()
    frame = pb.synthetic_frame(40, 56)
    times, mask = pb.run_frame(segmenter, pb.input_message(store, image_type, frame), store, image_type)
    assert list(times) == list(pb.STAGES)
    assert np.array_equal(mask, segmenter.segment(frame))


def test_check_targets_reports_pass_and_fail():
    base = pb.StageTimes("480x360", "torch:fp32:nhwc", "cpu", {s: 1.0 for s in pb.STAGES} | {"forward": 100.0})
    fast = pb.StageTimes("480x360", "onnxruntime:fp32", "cpu", {s: 1.0 for s in pb.STAGES} | {"forward": 50.0},
                         agreement=0.995)
    lines = pb.check_targets([base, fast])
    assert lines[0].startswith("PASS") and "worst 12.0%" in lines[0]  # 6 non-forward stages of 1 ms, forward 50
    assert lines[1].startswith("PASS") and "2.00x" in lines[1]
    fast.agreement = 0.9
    assert pb.check_targets([base, fast])[1].startswith("FAIL")


def test_int8_rows_are_held_to_their_end_to_end_target():
    stages = {s: 1.0 for s in pb.STAGES}
    other = len(pb.STAGES) - 1  # 1 ms each besides the forward pass
    base = pb.StageTimes("480x360", "torch:fp32:nchw", "cpu", stages | {"forward": 100.0 - other})  # 100 ms total
    int8 = pb.StageTimes("480x360", "onnxruntime:int8", "cpu", stages | {"forward": 50.0 - other}, agreement=0.97)
    (line,) = [x for x in pb.check_targets([base, int8]) if "int8" in x and "end to end" in x]
    assert line.startswith("PASS") and "2.00x" in line and "97.00%" in line
    int8.ms["forward"] = 60.0  # well under 1.8x
    assert [x for x in pb.check_targets([base, int8]) if "end to end" in x][0].startswith("FAIL")


def test_int8_configuration_runs_and_reports_agreement(tmp_path, synthetic, monkeypatch, tiny_checkpoint):
    """onnxruntime:int8 as a bench-pipeline configuration, calibrated on a frames folder."""
    pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(0)
    for i in range(2):  # CamVid's layout: the default calibration data is its train split
        synthetic.write_png(tmp_path / "camvid" / "train" / f"f{i}.png", synthetic.pair(rng, 40, 56)[0])
    monkeypatch.setenv("EACNET_DATA", str(tmp_path / "camvid"))
    configs = [pb.PipelineConfig.parse(c) for c in ("onnxruntime:fp32", "onnxruntime:int8")]
    weights = tiny_checkpoint("erfnet_enc", name="w.pt")
    segmenters = pb.build_segmenters("erfnet_enc", str(weights), configs, "cpu", (40, 56), 1)
    rows = pb.bench_size(segmenters, configs, (40, 56), runs=1, warmup=0)
    assert [r.config for r in rows] == ["onnxruntime:fp32", "onnxruntime:int8"]
    assert 0.5 < rows[1].agreement <= 1.0 and rows[1].ms["forward"] > 0
    assert list((tmp_path / "int8-cache").glob("erfnet_enc-*.int8.onnx"))  # beside its weights


@pytest.mark.parametrize("text", ["torch", "torch:fp32:nchw:x", "torch:fp32:planar"])
def test_bad_configurations_are_rejected(text):
    with pytest.raises(ValueError, match="backend:precision"):
        pb.PipelineConfig.parse(text)


@pytest.mark.parametrize("text", ["1280", "0x720", "axb", "0", ""])
def test_bad_sizes_are_rejected(text):
    with pytest.raises(ValueError, match="size"):
        pb.parse_size(text)


def test_synthetic_frame_is_deterministic_and_structured():
    a, b = pb.synthetic_frame(36, 48), pb.synthetic_frame(36, 48)
    assert a.shape == (36, 48, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert a.std() > 20  # not flat: regions and edges


# ---------------------------------------------------------------------------- the Segmenter's fast paths

@pytest.fixture(scope="module", params=[True, False], ids=["nhwc", "nchw"])
def segmenter(request):
    from eacnet_core.infer.segmenter import Segmenter, SegmenterOptions

    torch.manual_seed(3)
    return Segmenter.from_name("eacnet_erf", options=SegmenterOptions(device="cpu", channels_last=request.param),
                               allow_untrained=True)


def test_preprocess_is_the_plain_normalisation(segmenter):
    bgr = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    mean, std = np.asarray(segmenter.dataset.mean, np.float32), np.asarray(segmenter.dataset.std, np.float32)
    expected = (bgr[..., ::-1].astype(np.float32) - mean) * (np.float32(1) / std)
    assert np.array_equal(segmenter.preprocess(bgr)[0].transpose(1, 2, 0), expected)


def test_mask_is_the_argmax_of_the_logits(segmenter):
    bgr = pb.synthetic_frame(40, 48)
    logits = segmenter.logits(segmenter.preprocess(bgr))
    assert np.array_equal(segmenter.segment(bgr), logits[0].argmax(0).numpy())


def test_argmax_keeps_the_first_maximum_for_every_input_kind():
    from eacnet_core.infer.masks import argmax_classes

    logits = np.random.default_rng(1).standard_normal((1, 11, 7, 9)).astype(np.float32)
    logits[0, 4, :2] = logits[0, 7, :2] = 99.0  # ties: the lower id wins, as in argmax
    tensor = torch.from_numpy(logits)
    for variant in (logits, tensor, tensor.contiguous(memory_format=torch.channels_last)):
        ids = argmax_classes(variant)
        assert ids.dtype == np.uint8 and np.array_equal(ids, logits[0].argmax(0))
    assert (argmax_classes(logits)[:2] == 4).all()


def test_colorize_lut_matches_palette_indexing(segmenter):
    mask = np.arange(256, dtype=np.uint8).reshape(16, 16)
    palette = np.zeros((256, 3), np.uint8)
    palette[:segmenter.num_classes] = segmenter.palette.bgr
    assert np.array_equal(segmenter.colorize(mask), palette[mask])  # ids without a colour are black
    assert np.array_equal(segmenter.colorize(mask.astype(np.int64) % 11), palette[mask % 11])
