"""The training step's throughput options on the CPU: torch.compile'd step equal to the
eager one, no device read inside an epoch, several models on one batch stream equal to
each trained alone, the weight average, the attention's start value, OHEM in fixed shapes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from eacnet_core.checkpoint import load_checkpoint
from eacnet_core.train.config import TrainConfig
from eacnet_core.train.loop import Trainer, train
from eacnet_core.train.step import LossMeter, WeightEma, compile_mode_for
from eacnet_core.train.together import train_together


def _cfg(root, out, **overrides) -> TrainConfig:
    base = dict(model="dabnet", dataset="folder", data_root=str(root), out=str(out), epochs=1, batch_size=2,
                crop=(32, 48), scales=(1.0, 1.25), workers=0, threads=1, progress=False, tensorboard=False,
                loss="ce", val_every=0, cache=True)
    base.update(overrides)
    return TrainConfig(**base)


def _quiet(_: str) -> None:
    pass


def _weights(path) -> dict:
    return load_checkpoint(path)["state_dict"]


def test_compile_mode_per_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert compile_mode_for("", cuda) == ""
    assert compile_mode_for("auto", cuda) == "reduce-overhead" and compile_mode_for("auto", cpu) == "default"
    assert compile_mode_for("max-autotune", cpu) == "max-autotune-no-cudagraphs"  # no CUDA graphs on a CPU
    assert compile_mode_for("max-autotune", cuda) == "max-autotune"
    with pytest.raises(ValueError, match="--compile must be one of"):
        compile_mode_for("fast", cpu)


def _tiny_net(_name: str, num_classes: int, **_kwargs) -> nn.Module:
    """A two-layer network: inductor compiles a registry model in minutes on a shared CPU,
    this in seconds, through the same step (autocast, weighted loss, backward, Adam)."""
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, num_classes, 1))


def test_compiled_step_trains_like_the_eager_step(tmp_path, synthetic, monkeypatch):
    root = synthetic.folder(tmp_path / "data", count=4)
    monkeypatch.setattr("eacnet_core.train.parts.build_model", _tiny_net)
    runs = {}
    for mode in ("", "auto"):
        runs[mode] = train(_cfg(root, tmp_path / f"run{mode}", epochs=2, loss="weighted-ce", compile=mode,
                                amp=True, amp_dtype="bf16", lr=1e-2), log=_quiet)
    eager, compiled = ([h["train_loss"] for h in runs[m].history] for m in ("", "auto"))
    assert eager[1] != eager[0]  # it trains
    assert compiled == pytest.approx(eager, rel=2e-2)
    a, b = _weights(tmp_path / "run" / "last.pt"), _weights(tmp_path / "runauto" / "last.pt")
    for key in a:
        if a[key].is_floating_point():
            assert torch.allclose(a[key], b[key], atol=2e-2, rtol=2e-2), key


_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__")


def _count_device_reads(monkeypatch) -> dict:
    counts = {"n": 0}
    for name in _READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            counts["n"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return counts


@pytest.mark.parametrize("loss", ["ohem", "weighted-ce"])
def test_no_device_read_per_step(tmp_path, synthetic, monkeypatch, loss):
    """The device is read a fixed number of times per epoch, whatever the number of steps:
    4 images or 8 (2 or 4 steps of 2) cost the same number of reads."""
    reads = {}
    for count in (4, 8):
        root = synthetic.folder(tmp_path / f"data{count}", count=count)
        trainer = Trainer(_cfg(root, tmp_path / f"run{count}", loss=loss, ohem_min_kept=100), log=_quiet)
        counts = _count_device_reads(monkeypatch)
        trainer.run()
        monkeypatch.undo()
        reads[count] = counts["n"]
    assert reads[4] == reads[8], reads


def test_pair_trains_each_model_as_alone(tmp_path, synthetic):
    """dabnet and erfnet_enc (dropout: its own random stream) on one batch stream end
    bit-identical to each trained alone with the same seed and draws."""
    root = synthetic.folder(tmp_path / "data", count=4)
    pair = ("dabnet", "erfnet_enc")
    for model in pair:
        train(_cfg(root, tmp_path / "alone" / model, model=model, epochs=2), log=_quiet)
    results = train_together([_cfg(root, tmp_path / "pair" / m, model=m, epochs=2) for m in pair], log=_quiet)
    assert [r.iterations for r in results] == [4, 4]
    for model in pair:
        alone, together = (load_checkpoint(tmp_path / kind / model / "last.pt") for kind in ("alone", "pair"))
        for key, value in alone["state_dict"].items():
            assert torch.equal(value, together["state_dict"][key]), (model, key)
        assert alone["metrics"]["train_loss"] == together["metrics"]["train_loss"]


def test_pair_resumes_together_and_refuses_mismatched_data(tmp_path, synthetic):
    root = synthetic.folder(tmp_path / "data", count=4)
    cfgs = [_cfg(root, tmp_path / m, model=m, epochs=1) for m in ("dabnet", "eacnet_dab")]
    stopper = lambda t: t.stop.request(2) if t.iteration == 1 else None  # noqa: E731 - SIGINT after one step
    first = train_together(cfgs, log=_quiet, on_step=stopper)
    assert [r.stopped_by_signal for r in first] == [2, 2] and [r.iterations for r in first] == [1, 1]
    done = train_together(cfgs, resume=True, log=_quiet)
    assert [r.iterations for r in done] == [2, 2]
    with pytest.raises(ValueError, match="--batch-size differs"):
        train_together([cfgs[0], _cfg(root, tmp_path / "x", model="erfnet_enc", batch_size=1)], log=_quiet)


def test_ema_is_what_checkpoints_hold_and_resumes_exactly(tmp_path, synthetic):
    root = synthetic.folder(tmp_path / "data", count=4)
    seen: list[dict] = []
    record = lambda t: seen.append({k: v.detach().clone() for k, v in t.model.state_dict().items()})  # noqa: E731
    trainer = Trainer(_cfg(root, tmp_path / "run", epochs=2, ema=0.9, lr=1e-2), log=_quiet)
    initial = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    trainer.on_step = record
    trainer.run()
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    key = "final_conv.weight" if "final_conv.weight" in initial else next(k for k in initial if k.endswith("weight"))
    expected = initial[key].clone()
    for n, state in enumerate(seen, start=1):
        decay = min(0.9, (1 + n) / (10 + n))
        expected = decay * expected + (1 - decay) * state[key]
    assert torch.allclose(ckpt["state_dict"][key], expected, atol=1e-6)
    assert torch.equal(ckpt["train_state_dict"][key], seen[-1][key])
    assert ckpt["ema_updates"] == len(seen) == 4

    # Stopped after 3 steps and resumed: the same average as the uninterrupted run.
    stop_at_3 = lambda t: t.stop.request(2) if t.iteration == 3 else None  # noqa: E731
    train(_cfg(root, tmp_path / "resumed", epochs=2, ema=0.9, lr=1e-2), on_step=stop_at_3, log=_quiet)
    train(_cfg(root, tmp_path / "resumed", epochs=2, ema=0.9, lr=1e-2), resume=True, log=_quiet)
    resumed = load_checkpoint(tmp_path / "resumed" / "last.pt")
    for name, value in ckpt["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][name]), name


def test_weight_ema_rejects_bad_decay():
    with pytest.raises(ValueError, match="--ema must be in"):
        WeightEma(nn.Linear(2, 2), 1.0)


def test_attention_gamma_starts_where_asked(tmp_path, synthetic):
    root = synthetic.folder(tmp_path / "data", count=2)
    trainer = Trainer(_cfg(root, tmp_path / "run", model="eacnet_dab", attention_gamma_init=0.05), log=_quiet)
    assert float(trainer.model.attention.gamma.detach()) == pytest.approx(0.05)
    trainer.close()
    with pytest.raises(ValueError, match="--attention-gamma-init applies to models with the attention"):
        Trainer(_cfg(root, tmp_path / "run2", attention_gamma_init=0.05), log=_quiet)


def test_loss_meter_keeps_the_first_non_finite_loss():
    meter = LossMeter(torch.device("cpu"))
    for iteration, value in enumerate([1.0, 2.0, float("nan"), float("inf")]):
        meter.add(torch.tensor(value), images=2, iteration=10 + iteration)
    total, bad = meter.read()
    assert bad[0] == 12 and bad[1] != bad[1]  # the NaN at iteration 12, not the later inf
    meter = LossMeter(torch.device("cpu"))
    meter.add(torch.tensor(1.5), images=4, iteration=0)
    assert meter.read() == (6.0, None)


def test_train_profile_prints_stages_and_rates(capsys):
    from eacnet_ros.cli import main as cli_main

    assert cli_main(["train-profile", "--models", "dabnet", "dabnet,eacnet_dab", "--compile", "", "--device", "cpu",
                     "--batch-size", "1", "--crop-size", "48x32", "--steps", "4", "--warmup", "1",
                     "--threads", "1"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "img/s" in line]
    assert [line.split()[0] for line in lines] == ["dabnet", "dabnet,eacnet_dab"]
    for line in lines:
        assert float(line.split()[2]) > 0
        assert all(f"{stage} " in line for stage in ("data", "forward", "loss", "backward", "optimizer"))
