"""The command line's edges: a run that did nothing fails, bad values are refused before
any model loads with a message naming the option and the value, unknown models list the
known ones, a file that is no checkpoint says so, and long runs show progress on a terminal."""

from __future__ import annotations

import argparse
import io

import pytest

from eacnet_core.checkpoint import missing_weights_error
from eacnet_core.evaluate.bench import BenchConfig, run_bench
from eacnet_core.models import MODELS
from eacnet_ros.cli import build_parser, main

SEGMENT = ["segment", "--weights", "{weights}", "--input", "{tmp}/in.png", "--out", "{tmp}/out"]


def run(argv: list[str], tmp_path, weights="missing.pt") -> int:
    """main() on ``argv`` with {tmp} / {weights} filled in; argparse's exit becomes its code."""
    try:
        return main([a.format(tmp=tmp_path, weights=weights) for a in argv])
    except SystemExit as exc:
        return int(exc.code)


def test_segment_that_decodes_nothing_fails_and_leaves_no_folder(tmp_path, shared_checkpoint, capsys):
    (tmp_path / "x.png").write_text("not an image\n")
    out = tmp_path / "out"
    assert main(["segment", "--weights", str(shared_checkpoint), "--input", str(tmp_path / "x.png"),
                 "--out", str(out), "--device", "cpu"]) == 2
    assert "nothing segmented" in capsys.readouterr().err
    assert not out.exists()


def test_segment_says_which_backend_and_precision_ran(tmp_path, shared_checkpoint, capsys):
    import cv2
    import numpy as np

    cv2.imwrite(str(tmp_path / "f.png"), np.zeros((16, 24, 3), np.uint8))
    assert main(["segment", "--weights", str(shared_checkpoint), "--input", str(tmp_path / "f.png"),
                 "--out", str(tmp_path / "out"), "--device", "cpu", "--backend", "torch", "--no-progress"]) == 0
    (ran,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("ran: ")]
    assert "device=cpu" in ran and "precision=fp32" in ran and "backend=torch" in ran


def test_segment_with_backend_auto_names_the_path_it_chose(tmp_path, shared_checkpoint, capsys, monkeypatch):
    """After the frames, backend auto has chosen (on the first frame): the last line names
    that path, not "auto (not chosen yet)"."""
    import cv2
    import numpy as np

    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    for i in range(2):
        cv2.imwrite(str(tmp_path / f"f{i}.png"), np.full((16, 24, 3), 40 * i, np.uint8))
    assert main(["segment", "--weights", str(shared_checkpoint), "--input", str(tmp_path), "--out",
                 str(tmp_path / "out"), "--device", "cpu", "--backend", "auto", "--precision", "fp32",
                 "--no-progress"]) == 0
    (ran,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("ran: ")]
    assert "(chosen by auto)" in ran and "not chosen" not in ran, ran
    chosen = ran.split("backend=")[1].split(" ")[0]
    assert chosen in ("torch", "onnxruntime", "openvino"), ran


@pytest.mark.parametrize(("argv", "flag", "value"), [
    (SEGMENT + ["--threads", "-2"], "--threads", "-2"),
    (SEGMENT + ["--resize", "-480x360"], "--resize", "-480x360"),
    (SEGMENT + ["--alpha", "3"], "--alpha", "3"),
    (["bench", "--runs", "0"], "--runs", "0"),
    (["bench", "--batch-size", "-1"], "--batch-size", "-1"),
    (["bench", "--warmup", "-1"], "--warmup", "-1"),
    (["bench", "--size", "-480x360"], "--size", "-480x360"),
    (["eval", "--model", "dabnet", "--workers", "-1"], "--workers", "-1"),
    (["eval", "--model", "dabnet", "--batch-size", "0"], "--batch-size", "0"),
    (["export", "--model", "dabnet", "--out", "x.onnx", "--opset", "2"], "--opset", "2"),
    (["demo", "--limit", "-1"], "--limit", "-1"),
    (["bag-eval", "--bag", "b", "--model", "dabnet", "--alpha", "1.5"], "--alpha", "1.5"),
    (["make-bag", "--images", "i", "--out", "o", "--rate", "0"], "--rate", "0"),
    (["bench-pipeline", "--runs", "0"], "--runs", "0"),
    (["bench-dds", "--frames", "0"], "--frames", "0"),
])
def test_bad_numbers_are_refused_naming_option_and_value(argv, flag, value, tmp_path, capsys):
    """Refused by the parser, so before any model loads (the weights named here do not exist)."""
    assert run(argv, tmp_path) == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and repr(value) in err, err


def test_every_numeric_option_is_range_checked():
    """No option of the ROS-free and bag commands takes a bare int or float (train's config
    checks its own numbers and names them)."""
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    bare = [(name, action.option_strings[0]) for name, parser in sub.choices.items() if name != "train"
            for action in parser._actions if action.type in (int, float)]
    assert bare == []


@pytest.mark.parametrize("command", [["segment", "--input", "i", "--out", "o"], ["eval"], ["export", "--out", "x"],
                                     ["demo"], ["bag-eval", "--bag", "b"], ["bench-pipeline"]])
def test_an_unknown_model_lists_the_known_ones(command, tmp_path, capsys):
    assert run(command + ["--model", "nosuchnet"], tmp_path) == 2
    err = capsys.readouterr().err
    assert "nosuchnet" in err and all(name in err for name in MODELS), err
    assert all(name in str(missing_weights_error("nosuchnet")) for name in MODELS)


def test_a_file_that_is_no_checkpoint_says_so(tmp_path, capsys):
    (tmp_path / "weights.pt").write_text("hello world\n")
    (tmp_path / "in.png").write_bytes(b"")
    assert run(SEGMENT, tmp_path, weights=tmp_path / "weights.pt") == 2
    err = capsys.readouterr().err
    assert "weights.pt: not a readable checkpoint" in err and "torch.save" in err and "KeyError" not in err


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bench_shows_progress_through_set_up_warm_up_and_timing_on_a_terminal(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    cfg = BenchConfig(models=("dabnet", "erfnet_enc"), height=16, width=16, classes=3, warmup=1, runs=2)
    run_bench(cfg)
    shown = terminal.getvalue()
    assert "bench set-up" in shown and "bench warm-up" in shown and "bench timing" in shown
    assert "/8" in shown  # 2 models x (set-up + 1 warm-up + 2 timed runs)
    quiet = Terminal()
    monkeypatch.setattr("sys.stderr", quiet)
    run_bench(cfg, progress=False)
    assert quiet.getvalue() == ""
