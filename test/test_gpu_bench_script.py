"""scripts/gpu_bench_cuda.py, the prepared CUDA measurement: its CPU-reachable parts at tiny
sizes (--dry-run), so a GPU window is not spent finding a broken script."""

import argparse
import importlib.util
import json
from pathlib import Path

import pytest
from conftest import make_camvid

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_bench_cuda.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("gpu_bench_cuda", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dry_args(tmp_path: Path, data: Path) -> argparse.Namespace:
    return argparse.Namespace(out=str(tmp_path / "out"), device="cpu", data=str(data), dry_run=True)


def test_runner_writes_a_summary_and_section_json_and_survives_a_failing_section(script, tmp_path):
    out = tmp_path / "out"
    code = script.main(["run", "--device", "cpu", "--dry-run", "--out", str(out), "--sections", "env,accuracy",
                        "--data", str(tmp_path / "missing"), "--budget-s", "300"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sections"]["env"]["status"] == "ok"
    assert "torch" in json.loads((out / "env.json").read_text())
    accuracy = json.loads((out / "accuracy.json").read_text())
    assert "no CamVid val split" in accuracy["skipped"]  # says it needs the data instead of failing
    with pytest.raises(SystemExit, match="unknown section"):
        script.main(["run", "--device", "cpu", "--out", str(out), "--sections", "forward,tensorrt"])


def test_sections_measure_at_tiny_sizes(script, tmp_path, monkeypatch):
    data = make_camvid(tmp_path / "CamVid", splits={"val": 2})
    args = dry_args(tmp_path, data)
    forward = script.section_forward(args)
    assert not forward["errors"]
    assert {r["backend"] for r in forward["rows"]} == {"torch", "torch_compiled"}
    pipeline = script.section_pipeline(args)
    assert not pipeline["errors"], pipeline["errors"]
    configs = {r["config"]: r for r in pipeline["rows"] if r["input"] == "96x72"}
    assert configs["device-frame eager"]["frame_on_device"] and not configs["cpu-frame eager"]["frame_on_device"]
    assert configs["device-frame compiled"]["backend"] == "torch_compiled"
    assert all(r["fps"] > 0 and r["frames"] == 4 for r in pipeline["rows"])
    accuracy = script.section_accuracy(args)
    assert not accuracy["errors"], accuracy["errors"]
    rows = {(r["precision"], r["backend"]): r for r in accuracy["rows"]}
    assert rows[("fp32", "torch")]["agreement_with_fp32"] == 1.0
    assert rows[("fp32", "torch_compiled")]["agreement_with_fp32"] == 1.0  # the same function, compiled
    assert 0.0 <= rows[("fp32", "torch")]["miou"] <= 1.0 and rows[("fp32", "torch")]["images"] == 2
    cameras = script.section_cameras(args)
    assert [r["cameras"] for r in cameras["rows"]] == [1, 2] and not cameras["errors"]
    assert json.loads((tmp_path / "out" / "cameras.json").read_text())["partial"]  # written as it went


def test_stage_copies_the_val_split(script, tmp_path):
    data = make_camvid(tmp_path / "CamVid", splits={"val": 2})
    assert script.main(["stage", "--data", str(data), "--to", str(tmp_path / "staged")]) == 0
    assert len(list((tmp_path / "staged" / "val").glob("*.png"))) == 2
    assert len(list((tmp_path / "staged" / "valannot").glob("*.png"))) == 2
