"""``eacnet train``: learning, exact resume, checkpoints, signals, non-finite loss,
hierarchical init, DDP on two CPU processes, and a smoke run on the real CamVid."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from real_data import REAL_CAMVID, needs_real_camvid

from eacnet_core.checkpoint import CheckpointError, load_checkpoint, make_checkpoint, model_from_checkpoint
from eacnet_core.data.classes import generic
from eacnet_core.infer.segmenter import Segmenter, SegmenterOptions
from eacnet_core.models import build_model
from eacnet_core.train.config import TrainConfig
from eacnet_core.train.distributed import ShardSampler
from eacnet_core.train.init_from import freeze_unused, init_from
from eacnet_core.train.loop import Trainer, train
from eacnet_core.train.parts import PolyWarmup
from eacnet_ros.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]




def _cfg(root: Path, out: Path, **overrides) -> TrainConfig:
    """A tiny CPU run on a synthetic folder dataset (32x48 images)."""
    base = dict(model="dabnet", dataset="folder", data_root=str(root), out=str(out), epochs=2, batch_size=2,
                crop=(32, 48), scales=(1.0, 1.25), workers=0, threads=1, progress=False, tensorboard=False,
                loss="ce", val_every=1)
    base.update(overrides)
    return TrainConfig(**base)


def _quiet(_: str) -> None:
    pass


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


# ---------------------------------------------------------------------------- learning


def test_training_learns_tiny_dataset(tmp_path, synthetic):
    """Loss falls and training-image mIoU rises well above chance (1/3 classes -> ~0.2)."""
    root = synthetic.folder(tmp_path / "data", count=8, block=16)
    cfg = _cfg(root, tmp_path / "run", epochs=6, batch_size=4, lr=5e-3, loss="ohem", scales=(1.0,), val_every=3)
    result = train(cfg, log=_quiet)
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < 0.5 * losses[0], losses
    assert result.history[-1]["val_miou"] > 0.6, result.history[-1]
    assert result.best_miou == max(h["val_miou"] for h in result.history if "val_miou" in h)
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == list(range(1, 7))
    assert {"train_loss", "lr", "images_per_s", "seconds_per_iter"} <= set(log[0])
    assert set(log[2]["val_per_class"]) == {"c0", "c1", "c2"}
    assert "attention_gamma" not in log[0]  # dabnet has no attention


def test_attention_models_log_their_gamma(tmp_path, synthetic):
    """EACNet runs record the attention's residual scale per epoch; it starts at 0 and moves."""
    root = synthetic.folder(tmp_path / "data", count=4, block=16)
    lines = []
    train(_cfg(root, tmp_path / "run", model="eacnet_dab", epochs=2, lr=5e-3, scales=(1.0,)), log=lines.append)
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    gammas = [r["attention_gamma"] for r in log]
    assert len(gammas) == 2 and gammas[-1] != 0.0
    state = load_checkpoint(tmp_path / "run" / "last.pt")["state_dict"]
    assert gammas[-1] == pytest.approx(float(state["attention.gamma"]))
    assert any(f"gamma {gammas[0]:+.4f}" in line for line in lines)


# ---------------------------------------------------------------------------- checkpoints


def test_checkpoints_are_self_describing_and_weights_only(tmp_path, synthetic):
    root = synthetic.folder(tmp_path / "data", count=4)
    train(_cfg(root, tmp_path / "run", epochs=1), log=_quiet)
    for name in ("last.pt", "best.pt"):
        ckpt = torch.load(tmp_path / "run" / name, map_location="cpu", weights_only=True)
        assert ckpt["model"] == "dabnet" and ckpt["num_classes"] == 3 and ckpt["epoch"] == 1
        assert ckpt["dataset"]["class_names"] == ["c0", "c1", "c2"]
        assert ckpt["config"]["crop"] == [32, 48] and ckpt["config"]["lr"] == 5e-4  # resolved defaults saved
        assert 0.0 <= ckpt["metrics"]["val_miou"] <= 1.0
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert {"optimizer", "scheduler", "rng", "epoch_iteration"} <= set(last)
    assert "optimizer" not in load_checkpoint(tmp_path / "run" / "best.pt")
    model_from_checkpoint(last)
    segmenter = Segmenter.from_checkpoint(tmp_path / "run" / "best.pt", SegmenterOptions(device="cpu"))
    mask = segmenter.segment(np.zeros((32, 48, 3), np.uint8))
    assert mask.shape == (32, 48) and mask.max() < 3


def test_refuses_to_overwrite_a_run_and_resume_needs_one(tmp_path, synthetic):
    root = synthetic.folder(tmp_path / "data", count=2)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train(_cfg(root, tmp_path / "run", epochs=1), resume=True, log=_quiet)
    train(_cfg(root, tmp_path / "run", epochs=1, val_every=0), log=_quiet)
    assert not (tmp_path / "run" / "best.pt").exists()  # no validation, no best
    with pytest.raises(ValueError, match="--resume"):
        train(_cfg(root, tmp_path / "run", epochs=1), log=_quiet)


# ---------------------------------------------------------------------------- resume


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_resume_mid_epoch_equals_uninterrupted_run(tmp_path, synthetic):
    """Stop after 4 of 6 iterations (mid-epoch 2, as SIGINT would), resume, and compare the
    final weights, optimiser state and counters with an uninterrupted run: bit-identical.
    erfnet_enc has dropout, so this also checks that the RNG states were restored."""
    root = synthetic.folder(tmp_path / "data", count=6)
    overrides = dict(model="erfnet_enc", epochs=2, batch_size=2, loss="ohem", ohem_min_kept=200)
    full = train(_cfg(root, tmp_path / "full", **overrides), log=_quiet)

    def stop_after_four(trainer: Trainer) -> None:
        if trainer.iteration == 4:
            trainer.stop.request(signal.SIGINT)

    partial = train(_cfg(root, tmp_path / "resumed", **overrides), on_step=stop_after_four, log=_quiet)
    assert partial.stopped_by_signal == signal.SIGINT and partial.iterations == 4
    interrupted = _state(tmp_path / "resumed" / "last.pt")
    assert (interrupted["epoch"], interrupted["epoch_iteration"]) == (1, 1)
    messages: list[str] = []
    resumed = train(_cfg(root, tmp_path / "resumed", **overrides), resume=True, log=messages.append)
    assert any("resumed" in m and "epoch 1 + 1 iterations" in m for m in messages)
    assert resumed.iterations == full.iterations == 6

    a, b = _state(tmp_path / "full" / "last.pt"), _state(tmp_path / "resumed" / "last.pt")
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        for key in pa:
            assert torch.equal(torch.as_tensor(pa[key]), torch.as_tensor(pb[key])), key
    assert a["scheduler"] == b["scheduler"]
    assert a["metrics"]["val_miou"] == b["metrics"]["val_miou"]
    assert a["metrics"]["train_loss"] == pytest.approx(b["metrics"]["train_loss"], rel=1e-6)
    full_log = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    resumed_log = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert len(full_log) == len(resumed_log) == 2


def test_resume_keeps_config_and_extends_epochs(tmp_path, synthetic):
    root = synthetic.folder(tmp_path / "data", count=2)
    train(_cfg(root, tmp_path / "run", epochs=1, val_every=0), log=_quiet)
    messages: list[str] = []
    result = train(_cfg(root, tmp_path / "run", epochs=2, val_every=0, lr=0.1), resume=True, log=messages.append)
    assert result.epochs_done == 2
    assert any("ignored: --lr" in m for m in messages)
    assert any("schedule: 1 -> 2 iterations" in m for m in messages)
    assert _state(tmp_path / "run" / "last.pt")["config"]["lr"] == 5e-4


# ---------------------------------------------------------------------------- failures


class _NanAfter(torch.nn.Module):
    """Cross-entropy that turns NaN from its ``n``-th call on."""

    def __init__(self, n: int):
        super().__init__()
        self.calls, self.n = 0, n

    def forward(self, logits, target):
        self.calls += 1
        loss = torch.nn.functional.cross_entropy(logits, target, ignore_index=255)
        return loss * float("nan") if self.calls >= self.n else loss


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, synthetic, monkeypatch, capsys):
    root = synthetic.folder(tmp_path / "data", count=4)
    monkeypatch.setattr("eacnet_core.train.parts.build_criterion", lambda *a, **k: _NanAfter(3))
    rc = cli_main(["train", "--model", "dabnet", "--dataset", "folder", "--data-root", str(root), "--out",
                   str(tmp_path / "run"), "--epochs", "3", "--batch-size", "2", "--crop-size", "48x32",
                   "--workers", "0", "--val-every", "0", "--no-progress", "--no-tensorboard"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "loss is nan at epoch 2, iteration 3" in err and "last.pt" in err
    assert _state(tmp_path / "run" / "last.pt")["epoch"] == 1


def test_bad_label_during_training_names_the_file(tmp_path, synthetic, capsys):
    root = synthetic.folder(tmp_path / "data", count=2)
    synthetic.write_png(root / "labels" / "img001.png", np.full((32, 48), 7, np.uint8))
    rc = cli_main(["train", "--model", "dabnet", "--dataset", "folder", "--data-root", str(root), "--out",
                   str(tmp_path / "run"), "--epochs", "1", "--batch-size", "2", "--crop-size", "48x32",
                   "--workers", "1", "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "img001.png: label values 7 are outside the class range" in err
    assert "Traceback" not in err
    # the DataLoader's worker is shut down with the error, not left to a later garbage collection
    assert not multiprocessing.active_children()


def test_cli_errors_are_one_line(tmp_path, synthetic, capsys):
    root = synthetic.folder(tmp_path / "data", count=1)
    assert cli_main(["train", "--out", str(tmp_path / "r")]) == 2
    assert "--model is required" in capsys.readouterr().err
    assert cli_main(["train", "--model", "dabnet", "--dataset", "folder", "--data-root", str(root), "--out",
                     str(tmp_path / "r"), "--batch-size", "4", "--no-progress"]) == 2
    assert "1 training images are fewer than --batch-size 4" in capsys.readouterr().err
    assert cli_main(["train", "--model", "dabnet", "--dataset", "folder", "--data-root", str(root), "--out",
                     str(tmp_path / "r"), "--pool", "4", "--batch-size", "1"]) == 2
    assert "--pool applies to eacnet_erf and eacnet_dab" in capsys.readouterr().err
    assert cli_main(["train", "--model", "dabnet", "--dataset", "folder", "--data-root", str(root), "--out",
                     str(tmp_path / "r"), "--batch-size", "1", "--amp", "--amp-dtype", "fp16", "--device", "cpu"]) == 2
    assert "fp16 needs a CUDA device" in capsys.readouterr().err
    if not torch.cuda.is_available():  # training never falls back to CPU silently
        assert cli_main(["train", "--model", "dabnet", "--dataset", "folder", "--data-root", str(root), "--out",
                         str(tmp_path / "r"), "--batch-size", "1", "--device", "cuda"]) == 2
        assert "device 'cuda' requested but CUDA is not available" in capsys.readouterr().err


def test_sigint_saves_and_exits_cleanly(tmp_path, synthetic):
    """A real `eacnet train` process (one DataLoader worker) receives SIGINT mid-run."""
    root = synthetic.folder(tmp_path / "data", count=2)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "eacnet_ros.cli", "train", "--model", "dabnet", "--dataset", "folder",
           "--data-root", str(root), "--out", str(out), "--epochs", "10000", "--batch-size", "2",
           "--crop-size", "48x32", "--workers", "1", "--val-every", "0", "--no-progress", "--no-tensorboard",
           "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        deadline = time.monotonic() + 90  # ends as soon as the first epoch is logged
        while not (out / "metrics.jsonl").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGINT, stderr
    assert "SIGINT: stopping after this step" in stderr and "Traceback" not in stderr
    assert "stopped by SIGINT" in stdout and "--resume" in stdout
    ckpt = _state(out / "last.pt")
    assert ckpt["iteration"] >= 1 and ckpt["epoch"] >= 1


# ---------------------------------------------------------------------------- hierarchical init


def _saved(tmp_path: Path, name: str, classes: int = 3) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(1)
    model = build_model(name, classes)
    path = tmp_path / f"{name}_{classes}.pt"
    torch.save(make_checkpoint(name, model, generic(classes)), path)
    return path, model


@pytest.mark.parametrize("source, target, mapping, new_prefix, unexpected_prefix", [
    ("erfnet_enc", "eacnet_erf", "prefix added", "attention.", None),
    ("erfnet_enc", "eacnet_erf_nl", "prefix added", "attention.", None),
    ("erfnet_enc", "erfnet", "directly", "decoder.", None),
    ("dabnet", "eacnet_dab", "prefix added", "attention.", None),
    ("erfnet", "erfnet_enc", "directly", None, "decoder."),
    ("eacnet_dab", "dabnet", "prefix removed", None, "attention."),
])
def test_init_from_maps_backbone_keys(tmp_path, source, target, mapping, new_prefix, unexpected_prefix):
    path, src_model = _saved(tmp_path, source)
    model = build_model(target, 3)
    report = init_from(model, path)
    assert mapping in report.mapping
    assert all(k.startswith(new_prefix) for k in report.new) if new_prefix else report.new == []
    assert report.new or not new_prefix
    if unexpected_prefix:
        assert report.unexpected and all(k.startswith(unexpected_prefix) for k in report.unexpected)
    else:
        assert report.unexpected == []
    src_state, state = src_model.state_dict(), model.state_dict()
    for key in report.loaded:
        src_key = key[len("backbone."):] if "added" in mapping else ("backbone." + key if "removed" in mapping else key)
        assert torch.equal(state[key], src_state[src_key]), key
    text = report.format()
    assert "loaded" in text and "new" in text and "unexpected" in text


def test_init_from_shape_mismatch_is_a_clear_error(tmp_path):
    path, _ = _saved(tmp_path, "erfnet_enc", classes=19)
    with pytest.raises(CheckpointError, match=r"shape mismatch.*encoder\.output_conv\.weight \(19, 128, 1, 1\) -> "
                                              r"backbone\.encoder\.output_conv\.weight \(3, 128, 1, 1\)"):
        init_from(build_model("eacnet_erf", 3), path)


def test_init_from_rejects_unrelated_or_missing_files(tmp_path):
    path, _ = _saved(tmp_path, "dabnet")
    with pytest.raises(CheckpointError, match="no parameter name in common"):
        init_from(build_model("erfnet_enc", 3), path)
    with pytest.raises(CheckpointError, match="not found"):
        init_from(build_model("erfnet_enc", 3), tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        init_from(build_model("erfnet_enc", 3), tmp_path / "junk.pt")


def test_init_from_accepts_bare_ddp_state_dicts(tmp_path):
    model = build_model("dabnet", 3)
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, tmp_path / "bare.pt")
    report = init_from(build_model("eacnet_dab", 3), tmp_path / "bare.pt")
    assert len(report.loaded) == len(model.state_dict()) and report.unexpected == []


def test_cli_init_from_prints_loaded_new_unexpected(tmp_path, synthetic, capsys):
    root = synthetic.folder(tmp_path / "data", count=2)
    path, _ = _saved(tmp_path, "dabnet")
    rc = cli_main(["train", "--model", "eacnet_dab", "--dataset", "folder", "--data-root", str(root), "--out",
                   str(tmp_path / "run"), "--init-from", str(path), "--epochs", "1", "--batch-size", "2",
                   "--crop-size", "48x32", "--workers", "0", "--val-every", "0", "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "names matched with a 'backbone.' prefix added" in out
    assert "new           7: attention.gamma, attention.key.bias" in out
    assert "unexpected    0: -" in out
    assert "loaded" in out and "backbone." in out


def test_freeze_unused_finds_erfnet_encoder_classifier():
    model = build_model("erfnet", 3)
    assert freeze_unused(model) == ["encoder.output_conv.weight", "encoder.output_conv.bias"]
    assert freeze_unused(build_model("eacnet_erf", 3)) == []


# ---------------------------------------------------------------------------- schedule and sampling


def test_poly_warmup_schedule():
    poly = PolyWarmup(100, power=0.9)
    assert poly(0) == 1.0 and poly(50) == pytest.approx(0.5 ** 0.9) and poly(100) == 0.0
    warm = PolyWarmup(100, power=0.9, warmup_iters=10, warmup_ratio=0.25)
    assert warm(0) == pytest.approx(0.25)
    assert warm(5) == pytest.approx((0.25 * 0.5 + 0.5) * 0.95 ** 0.9)
    assert warm(10) == pytest.approx(0.9 ** 0.9)


def test_shard_sampler_covers_disjointly_and_skips():
    shards = [ShardSampler(10, batch_size=2, num_replicas=3, rank=r, seed=4) for r in range(3)]
    for s in shards:
        s.set_epoch(1)
    lists = [list(s) for s in shards]
    assert all(len(x) == 4 for x in lists) and shards[0].batches_per_epoch == 2
    assert len(set().union(*map(set, lists))) >= 9  # padded by repetition, trimmed to whole batches
    shards[0].set_epoch(1, skip_batches=1)
    assert list(shards[0]) == lists[0][2:] and len(shards[0]) == 2
    shards[0].set_epoch(2)
    assert list(shards[0]) != lists[0]
    single = list(ShardSampler(5, batch_size=2, seed=0))
    assert len(single) == 4 and len(set(single)) == 4 and set(single) <= set(range(5))


def test_shards_are_disjoint_and_cover_the_dataset():
    """Every image once per epoch over all processes; with padding, the repeated images go
    to other processes, never twice to one."""
    even = [list(ShardSampler(12, batch_size=2, num_replicas=3, rank=r, seed=7)) for r in range(3)]
    assert all(len(x) == 4 for x in even)
    assert all(not set(a) & set(b) for i, a in enumerate(even) for b in even[i + 1:])
    assert sorted(i for x in even for i in x) == list(range(12))
    padded = [list(ShardSampler(10, batch_size=2, num_replicas=3, rank=r, seed=7)) for r in range(3)]
    assert all(len(set(x)) == len(x) == 4 for x in padded)
    assert set().union(*map(set, padded)) == set(range(10))


# ---------------------------------------------------------------------------- distributed


def test_ddp_two_cpu_processes_gloo(tmp_path, synthetic):
    root = synthetic.folder(tmp_path / "data", count=4)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "eacnet_ros.cli", "train", "--model", "dabnet", "--dataset", "folder", "--data-root", str(root),
           "--out", str(out), "--epochs", "2", "--batch-size", "1", "--crop-size", "48x32", "--workers", "0",
           "--threads", "1", "--no-progress", "--no-tensorboard", "--device", "cpu", "--sync-bn"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("epoch 1/2") == 1  # only rank 0 logs
    assert "2 processes" in proc.stdout and "--sync-bn needs CUDA" in proc.stdout
    ckpt = _state(out / "last.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2 and ckpt["epoch"] == 2
    assert ckpt["iteration"] == 4  # 4 images / (2 processes x batch 1) = 2 iterations per epoch
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(log) == 2 and log[0]["images"] == 4 and log[0]["val_images"] == 4
    assert not any(p.name.startswith(".") for p in out.iterdir())  # no stray temporary files


# ---------------------------------------------------------------------------- real data


@needs_real_camvid
def test_real_camvid_smoke_with_limit(tmp_path, capsys):
    rc = cli_main(["train", "--model", "dabnet", "--data-root", str(REAL_CAMVID), "--out", str(tmp_path / "run"),
                   "--limit", "2", "--epochs", "1", "--batch-size", "2", "--crop-size", "128x96", "--workers", "0",
                   "--loss", "weighted-ce", "--class-weight-c", "1.10", "--no-progress", "--threads", "1"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "camvid/train', 2 images" in out and "class weights (enet): Sky" in out
    ckpt = load_checkpoint(tmp_path / "run" / "best.pt")
    assert ckpt["dataset"]["name"] == "camvid" and ckpt["num_classes"] == 11
    assert ckpt["config"]["loss"] == "weighted-ce" and ckpt["metrics"]["val_images"] == 2


def test_attention_parameter_group_has_its_own_lr_and_weight_decay():
    from eacnet_core.models import build_model
    from eacnet_core.train.parts import build_optimizer

    model = build_model("eacnet_dab", 3)
    cfg = TrainConfig(model="eacnet_dab", out="x", lr=1e-3, weight_decay=2e-4, attention_lr_mult=10.0,
                      attention_weight_decay=0.0)
    backbone, attention = build_optimizer(cfg, model).param_groups
    assert (backbone["lr"], backbone["weight_decay"]) == (1e-3, 2e-4)
    assert (attention["lr"], attention["weight_decay"]) == (pytest.approx(1e-2), 0.0)
    assert any(p is model.attention.gamma for p in attention["params"])
    assert not any(p is model.attention.gamma for p in backbone["params"])
    one = build_optimizer(TrainConfig(model="eacnet_dab", out="x", lr=1e-3), model).param_groups
    assert len(one) == 1  # defaults: one group, as before (old checkpoints resume)


def test_attention_lr_multiplier_moves_gamma_further(tmp_path, synthetic):
    """Same data, seed and steps: gamma travels further with a 10x rate for the attention."""
    root = synthetic.folder(tmp_path / "data", count=4, block=16)
    moved = {}
    for mult in (1.0, 10.0):
        out = tmp_path / f"run{mult}"
        train(_cfg(root, out, model="eacnet_dab", epochs=1, lr=1e-3, scales=(1.0,), val_every=0,
                   attention_lr_mult=mult, attention_weight_decay=0.0), log=_quiet)
        moved[mult] = abs(float(load_checkpoint(out / "last.pt")["state_dict"]["attention.gamma"]))
    assert moved[10.0] > 3 * moved[1.0] > 0


def test_attention_entropy_is_logged_below_the_uniform_bound(tmp_path, synthetic):
    root = synthetic.folder(tmp_path / "data", count=4, block=16)
    train(_cfg(root, tmp_path / "run", model="eacnet_dab", epochs=1, scales=(1.0,), cache=True), log=_quiet)
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0 < record["attention_entropy"] <= record["attention_entropy_uniform"] + 1e-6
