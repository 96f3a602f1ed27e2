"""Nothing ever loses data: the one atomic-write helper, and every writing command refusing
to write over its inputs, over existing outputs without --overwrite, and onto one name twice."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from eacnet_core.checkpoint import save_atomic
from eacnet_core.outputs import OutputError, atomic_write, check_output_folder, check_outputs, write_json
from eacnet_ros.cli import main


def digest(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "warning" not in line]
    assert len(err) == 1, err
    return err[0]


@pytest.fixture
def weights(shared_checkpoint) -> Path:
    return shared_checkpoint


# ---------------------------------------------------------------- the helper
def test_atomic_write_replaces_whole_files_and_leaves_nothing_behind(tmp_path):
    target = tmp_path / "sub" / "r.json"
    write_json(target, {"a": 1})
    write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2} and os.listdir(target.parent) == ["r.json"]

    def failing(f):
        f.write(b"half a file")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, failing)
    assert json.loads(target.read_text()) == {"a": 2} and os.listdir(target.parent) == ["r.json"]


def test_atomic_write_never_follows_a_planted_temporary_name(tmp_path):
    """The old helpers wrote to a fixed '.name.tmp': a symlink there redirected the write."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (tmp_path / ".r.json.tmp").symlink_to(victim)
    write_json(tmp_path / "r.json", {"ok": True})
    assert victim.read_text() == "keep me" and json.loads((tmp_path / "r.json").read_text()) == {"ok": True}


def test_atomic_write_gives_an_ordinary_files_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_json(tmp_path / "r.json", {})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_concurrent_writers_never_mix_or_collide(tmp_path):
    """Two writers of one file (a fixed temporary name raced): each write is whole."""
    target, errors = tmp_path / "r.json", []

    def writer(value: int) -> None:
        try:
            for _ in range(30):
                write_json(target, {"value": value, "pad": "x" * 20000})
        except Exception as exc:  # pragma: no cover - the failure being tested for
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(v,)) for v in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and json.loads(target.read_text())["value"] in (1, 2)
    assert os.listdir(tmp_path) == ["r.json"]


def test_checks_follow_symlinks_and_find_collisions(tmp_path):
    source = tmp_path / "in.png"
    source.write_bytes(b"input")
    (tmp_path / "alias.png").symlink_to(source)
    with pytest.raises(OutputError, match="is the input"):
        check_outputs([tmp_path / "alias.png"], inputs=[source], overwrite=True)
    with pytest.raises(OutputError, match="both be written"):
        check_outputs([tmp_path / "a" / ".." / "x.png", tmp_path / "x.png"])
    with pytest.raises(OutputError, match="exists; pass --overwrite"):
        check_outputs([source])
    check_outputs([source], overwrite=True)
    with pytest.raises(OutputError, match="is a folder"):
        check_outputs([tmp_path], overwrite=True)
    (tmp_path / "link").symlink_to(tmp_path)
    with pytest.raises(OutputError, match="input folder"):
        check_output_folder(tmp_path / "link", [tmp_path])


# ---------------------------------------------------------------- eval
def test_eval_predictions_never_replace_the_labels(tmp_path, synthetic, weights, capsys):
    """The reported case: --save-predictions DIR with DIR the labels folder overwrote the ground truth."""
    root = synthetic.camvid(tmp_path / "CamVid", {"val": 2})
    before = digest(root)
    for folder in (root / "valannot", root / "val"):
        for flag in ("--out", "--save-predictions"):
            assert main(["eval", "--weights", str(weights), "--data-root", str(root), "--workers", "0",
                         flag, str(folder), "--overwrite"]) == 2
            assert "input folder" in one_error_line(capsys)
    assert digest(root) == before


def test_eval_refuses_existing_outputs_before_running(tmp_path, synthetic, weights, capsys):
    root = synthetic.camvid(tmp_path / "CamVid", {"val": 2})
    (tmp_path / "r.json").write_text("an earlier result")
    argv = ["eval", "--weights", str(weights), "--data-root", str(root), "--workers", "0", "--no-progress",
            "--json", str(tmp_path / "r.json")]
    assert main(argv) == 2
    assert "r.json exists; pass --overwrite" in one_error_line(capsys)
    assert (tmp_path / "r.json").read_text() == "an earlier result"
    assert main(argv + ["--overwrite"]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["images"] == 2
    assert main(argv[:-2] + ["--json", str(weights), "--overwrite"]) == 2  # the checkpoint is an input
    assert "is the input" in one_error_line(capsys)


# ---------------------------------------------------------------- segment
def test_segment_refuses_two_inputs_with_one_output_name(tmp_path, weights, capsys):
    """a.png and a.jpg once printed 'wrote 2 frame(s)' and kept one set."""
    frames = tmp_path / "frames"
    frames.mkdir()
    image = np.full((24, 32, 3), 90, np.uint8)
    cv2.imwrite(str(frames / "a.png"), image)
    cv2.imwrite(str(frames / "a.jpg"), image)
    assert main(["segment", "--weights", str(weights), "--input", str(frames), "--out", str(tmp_path / "o"),
                 "--device", "cpu"]) == 2
    assert "a.jpg and a.png would both be written as a_mask.png" in one_error_line(capsys)
    assert not (tmp_path / "o").exists()


def test_segment_never_writes_into_its_input_folder(tmp_path, weights, capsys):
    frames = tmp_path / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "a.png"), np.zeros((24, 32, 3), np.uint8))
    for out in (frames, tmp_path / "frames" / ".." / "frames"):
        assert main(["segment", "--weights", str(weights), "--input", str(frames / "a.png"), "--out", str(out),
                     "--device", "cpu", "--overwrite"]) == 2
        assert "input folder" in one_error_line(capsys)
    assert os.listdir(frames) == ["a.png"]


def test_segment_rerun_needs_overwrite(tmp_path, weights, capsys):
    frames, out = tmp_path / "frames", tmp_path / "out"
    frames.mkdir()
    cv2.imwrite(str(frames / "a.png"), np.zeros((24, 32, 3), np.uint8))
    argv = ["segment", "--weights", str(weights), "--input", str(frames), "--out", str(out), "--device", "cpu",
            "--backend", "torch"]
    assert main(argv) == 0
    written = digest(out)
    assert sorted(written) == ["a_color.png", "a_mask.png", "a_overlay.png"]
    capsys.readouterr()
    assert main(argv) == 2
    assert "a_mask.png exists; pass --overwrite" in one_error_line(capsys)
    assert main(argv + ["--overwrite"]) == 0 and digest(out) == written


def test_segment_video_rerun_needs_overwrite(tmp_path, weights, capsys):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (32, 24))
    for _ in range(2):
        writer.write(np.zeros((24, 32, 3), np.uint8))
    writer.release()
    argv = ["segment", "--weights", str(weights), "--input", str(video), "--out", str(tmp_path / "o"),
            "--device", "cpu", "--backend", "torch"]
    assert main(argv) == 0 and len(os.listdir(tmp_path / "o")) == 6
    assert main(argv) == 2
    assert "clip_000000_color.png exists (6 output file(s) of clip.avi" in one_error_line(capsys)


# ---------------------------------------------------------------- slim, export, bench, curves
def test_slim_never_slims_in_place(tmp_path, weights, capsys):
    """`eacnet slim SRC SRC` dropped the optimiser state without asking."""
    src = tmp_path / "train.pt"
    save_atomic(dict(torch.load(weights, weights_only=True), optimizer={"state": {}}), src)
    (tmp_path / "link.pt").symlink_to(src)
    for argv in (["slim", str(src), str(src)], ["slim", str(src), "--out", str(tmp_path / "link.pt"), "--overwrite"]):
        assert main(argv) == 2
        assert "is the input" in one_error_line(capsys)
    assert "optimizer" in torch.load(src, weights_only=True)
    (tmp_path / "slim.pt").write_bytes(b"older")
    assert main(["slim", str(src), "--out", str(tmp_path / "slim.pt")]) == 2
    assert "exists; pass --overwrite" in one_error_line(capsys)
    assert main(["slim", str(src), "--out", str(tmp_path / "slim.pt"), "--overwrite"]) == 0
    assert "optimizer" not in torch.load(tmp_path / "slim.pt", weights_only=True)


@pytest.mark.parametrize("argv", [
    ["export", "--model", "dabnet", "--classes", "3", "--size", "32x32", "--out", "{out}"],
    ["bench", "--models", "dabnet", "--size", "32x32", "--runs", "1", "--warmup", "0", "--json", "{out}"],
    ["bench-pipeline", "--sizes", "32x24", "--configs", "torch:fp32", "--runs", "1", "--warmup", "0", "--json",
     "{out}"],
])
def test_reports_and_graphs_need_overwrite(argv, tmp_path, capsys):
    out = tmp_path / "existing"
    out.write_text("keep")
    assert main([a.format(out=out) for a in argv]) == 2
    assert "existing exists; pass --overwrite" in one_error_line(capsys)
    assert out.read_text() == "keep"
    assert main([a.format(out=out) for a in argv] + ["--overwrite"]) == 0
    assert out.read_bytes() != b"keep" and os.listdir(tmp_path) == ["existing"]


def test_curves_refuse_to_replace_the_log_they_read(tmp_path, capsys):
    log = tmp_path / "metrics.jsonl"
    log.write_text(json.dumps({"epoch": 1, "val_miou": 0.5}) + "\n")
    assert main(["curves", str(log), "--out", str(log), "--overwrite"]) == 2
    assert "is the input" in one_error_line(capsys)
    assert main(["curves", str(tmp_path), "--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"

