"""eacnet curves: learning curves from training logs."""

from __future__ import annotations

import json

import pytest

from eacnet_ros.cli import main


def _log(path, rows):
    path.mkdir(parents=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_curves_plots_runs_with_and_without_attention(tmp_path):
    control = _log(tmp_path / "dabnet", [{"epoch": 1, "val_miou": 0.60}, {"epoch": 2, "val_miou": 0.62}])
    eac = _log(tmp_path / "eac", [{"epoch": 1, "val_miou": 0.61, "attention_gamma": 0.01, "attention_entropy": 3.0},
                                  {"epoch": 2, "val_miou": 0.63, "attention_gamma": 0.05, "attention_entropy": 2.5}])
    out = tmp_path / "curves.png"
    assert main(["curves", str(control), f"EACNet={eac}", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_series_skips_epochs_without_the_value():
    from eacnet_core.train.curves import series

    records = [{"epoch": 1, "train_loss": 1.0}, {"epoch": 2, "val_miou": 0.5}]
    assert series(records, "val_miou") == ([2], [0.5])


@pytest.mark.parametrize("content, words", [(None, "no training log"), ("", "empty training log"),
                                            ("{oops\n", "metrics.jsonl:1: not a JSON line")])
def test_bad_logs_are_clear_errors(tmp_path, capsys, content, words):
    run = tmp_path / "run"
    run.mkdir()
    if content is not None:
        (run / "metrics.jsonl").write_text(content)
    assert main(["curves", str(run), "--out", str(tmp_path / "x.png")]) == 2
    assert words in capsys.readouterr().err
