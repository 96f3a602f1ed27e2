"""Progress bars draw on a terminal only: into a log file they once wrote thousands of updates."""

from __future__ import annotations

import io

import numpy as np

from eacnet_core.progress import progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_no_bar_into_a_file_or_pipe_and_a_bar_on_a_terminal():
    log, terminal = io.StringIO(), Terminal()
    assert list(progress_bar(range(50), file=log, desc="eval")) == list(range(50))
    assert log.getvalue() == ""
    list(progress_bar(range(50), file=terminal, desc="eval"))
    assert "eval" in terminal.getvalue() and "50/50" in terminal.getvalue()
    quiet = Terminal()
    list(progress_bar(range(5), file=quiet, enabled=False))
    assert quiet.getvalue() == ""


def test_commands_write_no_progress_into_a_captured_stderr(tmp_path, capsys):
    """segment with its progress bar on (the default), stderr not a terminal."""
    import cv2

    from eacnet_ros.cli import main

    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(3):
        cv2.imwrite(str(frames / f"{i}.png"), np.zeros((16, 24, 3), np.uint8))
    assert main(["segment", "--model", "dabnet", "--input", str(frames), "--out", str(tmp_path / "o"),
                 "--device", "cpu", "--backend", "torch"]) == 0
    assert capsys.readouterr().err == ""
