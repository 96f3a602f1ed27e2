"""The campaign folder: compact states, adoption of a recipe run, and a schedule carried
over many short windows ending where one uninterrupted run ends."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_camvid

from eacnet_core.checkpoint import load_checkpoint
from eacnet_core.train.campaign import (
    RECIPE,
    adopt,
    autocast_options,
    checkout,
    compact,
    expand,
    run_campaign,
    standing,
)
from eacnet_core.train.config import TrainConfig
from eacnet_core.train.together import train_together
from eacnet_ros.cli import main as cli_main

#: The recipe at toy scale: 6 trainval images of 48x32, batch 2 (3 steps per epoch), 2 epochs.
TINY = {**RECIPE, "crop": (32, 48), "batch_size": 2, "epochs": 2, "warmup_iters": 2}
PAIR = ("eacnet_dab", "dabnet")
MACHINE = dict(device="cpu", cache=True, workers=0, threads=1)


def _quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def camvid(tmp_path_factory):
    """The module's dataset (read only)."""
    return make_camvid(tmp_path_factory.mktemp("data") / "CamVid", {"train": 4, "val": 2, "test": 1}, height=32,
                       width=48)


def _uninterrupted(camvid, out):
    cfgs = [TrainConfig(model=m, out=str(out / m), data_root=str(camvid), progress=False, tensorboard=False,
                        **MACHINE, **TINY) for m in PAIR]
    return train_together(cfgs, log=_quiet)


@pytest.fixture(scope="module")
def full(camvid, tmp_path_factory):
    """The pair trained through TINY uninterrupted, once for the module; tests only read it
    (its folder holds <model>/last.pt and metrics.jsonl)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as every test runs (conftest): the windows must match it bit for bit
    try:
        out = tmp_path_factory.mktemp("full")
        _uninterrupted(camvid, out)
        return out
    finally:
        torch.set_num_threads(threads)


def test_windows_of_one_step_end_where_one_run_ends(tmp_path, camvid, full):
    """Six one-step windows (budget 0: stop after the first step), the moments stored in
    fp32: bit-identical to the uninterrupted pair, history included."""
    campaign = tmp_path / "campaign"
    for window in range(6):
        run_campaign(campaign, tmp_path / f"work{window}", 0.0, PAIR, "fp32", log=_quiet, recipe=TINY,
                     data_root=str(camvid), **MACHINE)
    for model in PAIR:
        state = torch.load(campaign / model / "state.pt", weights_only=True)
        last = load_checkpoint(full / model / "last.pt")
        assert (state["epoch"], state["iteration"]) == (2, 6)
        for key, value in last["state_dict"].items():
            assert torch.equal(value, state["state_dict"][key]), (model, key)
        history = [json.loads(line) for line in (campaign / model / "metrics.jsonl").read_text().splitlines()]
        full_history = [json.loads(line) for line in (full / model / "metrics.jsonl").read_text().splitlines()]
        assert [r["train_loss"] for r in history] == [r["train_loss"] for r in full_history]
    assert run_campaign(campaign, tmp_path / "more", 0.0, PAIR, log=_quiet, recipe=TINY, data_root=str(camvid),
                        **MACHINE) is not None


def test_compact_state_stores_moments_in_bf16_and_expands(full):
    ckpt = load_checkpoint(full / "dabnet" / "last.pt")
    small = compact(ckpt, "bf16")
    moments = [v for entry in small["optimizer"]["state"].values() for k, v in entry.items() if k.startswith("exp")]
    assert moments and all(v.dtype == torch.bfloat16 for v in moments)
    assert all(v.dtype == torch.float32 for v in small["state_dict"].values() if v.is_floating_point())
    back = expand(small)
    for index, entry in ckpt["optimizer"]["state"].items():
        restored = back["optimizer"]["state"][index]["exp_avg_sq"]
        assert restored.dtype == torch.float32
        assert torch.allclose(restored, entry["exp_avg_sq"], rtol=1e-2, atol=0)  # bf16: 8 bits of mantissa
        assert (restored > 0).sum() == (entry["exp_avg_sq"] > 0).sum()  # no tiny value flushed to zero
    assert "stored_moments" not in back and small["stored_moments"] == "bf16"


def test_adopt_takes_a_recipe_run_and_refuses_others(tmp_path, full):
    campaign = tmp_path / "campaign"
    path = adopt(full / "dabnet", campaign, recipe=TINY)
    assert path == campaign / "dabnet" / "state.pt"
    row = standing(campaign, "dabnet")
    assert (row["epoch"], row["iteration"], row["moments"]) == (2, 6, "bf16")
    assert (campaign / "dabnet" / "metrics.jsonl").read_text() == (full / "dabnet" / "metrics.jsonl").read_text()
    assert checkout(campaign, "dabnet", tmp_path / "work")
    resumed = load_checkpoint(tmp_path / "work" / "dabnet" / "last.pt")
    assert resumed["iteration"] == 6 and "stored_moments" not in resumed
    with pytest.raises(ValueError, match=r"not the campaign.s recipe: .*--batch-size 2 \(recipe 16\)"):
        adopt(full / "dabnet", tmp_path / "other")  # the real recipe: batch 16, 480x360


def test_cli_status_and_adopt(tmp_path, full, capsys):
    assert cli_main(["campaign", "adopt", str(full / "dabnet" / "last.pt"), "--campaign",
                     str(tmp_path / "c"), "--force"]) == 0
    assert cli_main(["campaign", "status", "--campaign", str(tmp_path / "c")]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert {r["model"]: r["epoch"] for r in rows} == {"eacnet_dab": 0, "dabnet": 2, "eacnet_erf": 0,
                                                      "erfnet_enc": 0}


def test_a_pair_adopted_at_different_points_catches_up(tmp_path, camvid):
    """The lagging model trains alone to the leader's iteration, then the pair goes on together."""
    base = dict(data_root=str(camvid), progress=False, tensorboard=False, **MACHINE, **TINY)
    stop_at = lambda n: (lambda t: t.stop.request(2) if t.iteration == n else None)  # noqa: E731
    train_together([TrainConfig(model="eacnet_dab", out=str(tmp_path / "a"), **base)], on_step=stop_at(4), log=_quiet)
    train_together([TrainConfig(model="dabnet", out=str(tmp_path / "b"), **base)], on_step=stop_at(2), log=_quiet)
    campaign = tmp_path / "campaign"
    adopt(tmp_path / "a", campaign, recipe=TINY)
    adopt(tmp_path / "b", campaign, recipe=TINY)
    for window, expected in enumerate(([4, 3], [5, 5])):  # the budget (0 s: one step) ends the first catching up
        run_campaign(campaign, tmp_path / f"work{window}", 0.0, PAIR, log=_quiet, recipe=TINY, data_root=str(camvid),
                     **MACHINE)
        assert [standing(campaign, m)["iteration"] for m in PAIR] == expected


def test_each_machine_trains_at_its_own_precision(tmp_path, camvid):
    """Autocast is a machine setting: a state saved under bf16 resumes in fp32 on the CPU
    (a resumed run keeps its saved config, so checkout must write this machine's into it)."""
    bf16 = {**MACHINE, "amp": True, "amp_dtype": "bf16"}
    cfgs = [TrainConfig(model="dabnet", out=str(tmp_path / "run" / "dabnet"), data_root=str(camvid), progress=False,
                        tensorboard=False, **bf16, **TINY)]
    train_together(cfgs, log=_quiet)
    campaign = tmp_path / "campaign"
    adopt(tmp_path / "run" / "dabnet", campaign, recipe=TINY)
    assert autocast_options("auto", "cpu") == {"amp": False, "amp_dtype": "auto"}
    assert autocast_options("bf16", "cpu") == {"amp": True, "amp_dtype": "bf16"}
    with pytest.raises(ValueError, match="precision must be one of"):
        autocast_options("int8", "cpu")
    assert checkout(campaign, "dabnet", tmp_path / "work", autocast_options("auto", "cpu"))
    resumed = load_checkpoint(tmp_path / "work" / "dabnet" / "last.pt")["config"]
    assert (resumed["amp"], resumed["amp_dtype"]) == (False, "auto")
    assert checkout(campaign, "dabnet", tmp_path / "work2")
    assert load_checkpoint(tmp_path / "work2" / "dabnet" / "last.pt")["config"]["amp"] is True
