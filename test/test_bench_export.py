"""eacnet bench (JSON fields, interleaving) and ONNX export equivalence for all six models."""

import json

import numpy as np
import pytest
import torch

from eacnet_core.evaluate import bench
from eacnet_core.infer.export import compare_with_torch, export_onnx, ort_session
from eacnet_core.models import MODELS, build_model
from eacnet_ros.cli import main

pytest.importorskip("onnxruntime")

BENCH_KEYS = {"model", "params", "gmacs", "gflops", "latency_ms_median", "latency_ms_p90", "fps", "height", "width",
              "batch", "device", "precision", "backend"}


def test_bench_json_fields_present_and_sane(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--models", "erfnet,eacnet_erf", "--size", "48x32", "--classes", "5",
                 "--warmup", "1", "--runs", "2", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["model"] for r in rows] == ["erfnet", "eacnet_erf"]
    for row in rows:
        assert set(row) == BENCH_KEYS
        assert row["params"] > 0 and row["gmacs"] > 0 and row["gflops"] > 0
        assert 0 < row["latency_ms_median"] <= row["latency_ms_p90"]
        assert (row["height"], row["width"], row["batch"]) == (32, 48, 1)
        assert (row["device"], row["precision"], row["backend"]) == ("cpu", "fp32", "torch")
    table = capsys.readouterr().out
    assert "x erfnet" in table and "eacnet_erf" in table


class DrivenClock:
    """A clock that only moves when a fake forward pass says it took time."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_bench_measures_a_known_workload_round_by_round(monkeypatch):
    """Runners whose passes take known times on a clock the test drives: the median and
    p90 are those times, FPS counts the batch, warm-up passes (1 s each here) are not
    timed, and the models take turns round by round."""
    clock, calls = DrivenClock(), []
    warmup_s = 1.0
    pass_ms = {"DABNet": [30.0, 31.0, 29.0, 90.0, 30.0], "ERFNetEncoderSeg": [10.0, 10.0, 12.0, 10.0, 10.0]}

    def runner(model, cfg, device, precision, compiled=False):
        name = type(model).__name__
        times = iter([warmup_s] + [ms / 1000 for ms in pass_ms[name]])

        def step():
            calls.append(name)
            clock.now += next(times)

        return step

    monkeypatch.setattr(bench, "clock", clock)
    monkeypatch.setattr(bench, "_torch_runner", runner)
    cfg = bench.BenchConfig(models=("dabnet", "erfnet_enc"), height=16, width=16, classes=3, batch=2, warmup=1,
                            runs=5)
    rows = {r.model: r for r in bench.run_bench(cfg, progress=False)}
    assert calls == ["DABNet", "ERFNetEncoderSeg"] * 6  # one warm-up round, then five timed ones
    for name, cls in (("dabnet", "DABNet"), ("erfnet_enc", "ERFNetEncoderSeg")):
        assert rows[name].latency_ms_median == pytest.approx(np.median(pass_ms[cls]))
        assert rows[name].latency_ms_p90 == pytest.approx(np.percentile(pass_ms[cls], 90))
        assert rows[name].fps == pytest.approx(2000 / np.median(pass_ms[cls]))  # two images per pass
    assert rows["dabnet"].latency_ms_median == pytest.approx(30.0)  # the one 90 ms pass does not move it
    assert rows["dabnet"].latency_ms_p90 > 30.0 and rows["erfnet_enc"].latency_ms_median == pytest.approx(10.0)


def test_bench_onnxruntime_backend(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "--models", "dabnet", "--size", "32x32", "--backend", "onnxruntime",
                 "--warmup", "1", "--runs", "2", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert row["backend"] == "onnxruntime" and row["latency_ms_median"] > 0


def test_bench_rejects_an_unknown_backend_when_parsing(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--models", "dabnet", "--size", "32x32", "--backend", "torch,tensorrt"])
    assert exit_.value.code == 2
    assert "one or more of torch, torch_compiled, onnxruntime" in capsys.readouterr().err


def test_bench_rejects_unknown_model(capsys):
    assert main(["bench", "--models", "resnet", "--size", "32x32"]) == 2
    assert "unknown model(s) resnet" in capsys.readouterr().err


@pytest.mark.parametrize("name", MODELS)
def test_onnx_export_matches_torch(name, tmp_path):
    torch.manual_seed(0)
    model = build_model(name, 7).eval()
    if hasattr(model, "attention"):
        model.attention.gamma.data.fill_(0.5)  # exercise the attention, not the identity
    path = export_onnx(model, tmp_path / f"{name}.onnx", 48, 64)
    check = compare_with_torch(model, path, 48, 64)
    assert check["max_abs_diff"] < 1e-3
    assert check["argmax_agreement"] > 0.999


def test_dynamic_batch_export(tmp_path):
    model = build_model("eacnet_dab", 3).eval()
    path = export_onnx(model, tmp_path / "m.onnx", 32, 32, dynamic_batch=True)
    out = ort_session(path).run(None, {"image": np.zeros((3, 3, 32, 32), np.float32)})[0]
    assert out.shape == (3, 3, 32, 32)


def test_export_cli_reports_agreement(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", "--model", "eacnet_erf", "--classes", "5", "--size", "48x32",
                 "--out", str(out)]) == 0
    assert out.stat().st_size > 1_000_000  # ~1.9M float32 parameters
    assert "argmax agreement 100.000%" in capsys.readouterr().out


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for command in ("bench", "export", "segment"):
        assert command in text
