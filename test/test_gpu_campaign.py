"""scripts/gpu_train_camvid.py: staging JPEG copies, equal epochs per pair from the slowest
probe epoch, and a whole (CPU, tiny) campaign that collects fp16 weights and logs."""

from __future__ import annotations

import importlib.util
import json
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from eacnet_core.checkpoint import load_checkpoint

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_train_camvid.py"


@pytest.fixture(scope="module")
def campaign():
    spec = importlib.util.spec_from_file_location("gpu_train_camvid", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _jpeg_camvid(root: Path, synthetic, counts: dict[str, int]) -> Path:
    """A CamVid copy whose images are JPEG, as it travels to a GPU machine."""
    png = synthetic.camvid(root / "png", counts, height=32, width=48, list_files=False)
    for split in counts:
        (root / "jpg" / split).mkdir(parents=True)
        (root / "jpg" / f"{split}annot").symlink_to(png / f"{split}annot")
        for path in (png / split).glob("*.png"):
            cv2.imwrite(str(root / "jpg" / split / f"{path.stem}.jpg"), cv2.imread(str(path)),
                        [cv2.IMWRITE_JPEG_QUALITY, 95])
    return root / "jpg"


def test_plan_gives_each_pair_the_epochs_of_its_slower_model(campaign):
    plan = campaign.plan_epochs({"a": 100.0, "b": 50.0, "c": 400.0, "d": 1000.0}, [("a", "b"), ("c", "d")],
                                images=500, seconds=100, max_epochs=60)
    assert plan["a"] == plan["b"] == int(50 * 100 * campaign.SAFETY / 500)
    assert plan["c"] == plan["d"] == 60  # capped


def test_stage_decodes_jpeg_copies_to_the_png_layout(tmp_path, synthetic, campaign):
    src = _jpeg_camvid(tmp_path, synthetic, {"train": 3, "val": 2})
    staged = campaign.stage_camvid(src, tmp_path / "staged")
    assert sorted(p.name for p in (staged / "train").iterdir()) == [f"train_{i:03d}.png" for i in range(3)]
    jpeg = cv2.imread(str(src / "val" / "val_001.jpg"))
    staged_png = cv2.imread(str(staged / "val" / "val_001.png"))
    assert np.array_equal(staged_png, jpeg)  # the JPEG's pixels, stored losslessly
    assert (staged / "valannot" / "val_001.png").is_file()
    assert campaign.stage_camvid(tmp_path / "png", tmp_path / "unused") == tmp_path / "png"  # PNG: as is


def test_tiny_campaign_trains_pairs_equally_and_collects(tmp_path, synthetic, campaign, capsys):
    src = _jpeg_camvid(tmp_path, synthetic, {"train": 6, "val": 2})
    out = tmp_path / "collect"
    code = campaign.main(["campaign", "--data", str(src), "--runs", str(tmp_path / "runs"), "--collect", str(out),
                          "--budget-s", "3600", "--pairs", "eacnet_dab:dabnet", "--max-epochs", "2", "--validations",
                          "1", "--", "--train-split", "trainval", "--batch-size", "4", "--crop", "32x48", "--device",
                          "cpu", "--threads", "1", "--workers", "0", "--loss", "ce", "--data-on-device"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "eacnet_dab" in printed and "-> 2 epochs" in printed
    for model in ("eacnet_dab", "dabnet"):
        ckpt = load_checkpoint(out / f"{model}.pt")
        assert ckpt["model"] == model and ckpt["epoch"] == 2 and "optimizer" not in ckpt
        assert all(str(v.dtype) == "torch.float16" for v in ckpt["state_dict"].values() if v.is_floating_point())
    with tarfile.open(out / "logs.tar.gz") as tar:
        names = set(tar.getnames())
        log = [json.loads(line) for line in tar.extractfile("dabnet/metrics.jsonl").read().decode().splitlines()]
    assert {"dabnet/train.log", "probe/eacnet_dab/metrics.jsonl"} <= names
    assert [r["epoch"] for r in log] == [1, 2] and "val_miou" in log[-1]


def test_continue_carries_the_campaign_folder_into_out(tmp_path, synthetic, campaign, monkeypatch):
    """`continue` on a toy recipe (the CPU, two windows): the states land in OUT/campaign and
    the second window starts where the first stopped."""
    import eacnet_core.train.campaign as schedule

    monkeypatch.setattr(schedule, "RECIPE", {**schedule.RECIPE, "crop": (32, 48), "batch_size": 2, "epochs": 2,
                                             "warmup_iters": 0})
    src = _jpeg_camvid(tmp_path, synthetic, {"train": 4, "val": 2})
    common = ["--data", str(src), "--runs", str(tmp_path / "runs"), "--budget-s", "0", "--compile", "",
              "--device", "cpu", "--models", "eacnet_dab,dabnet", "--campaign", str(tmp_path / "none")]
    assert campaign.main(["continue", *common, "--out", str(tmp_path / "w1")]) == 0
    first = load_checkpoint(tmp_path / "w1" / "campaign" / "dabnet" / "state.pt")
    assert first["iteration"] == 1 and first["optimizer"]["state"]
    common[common.index("--campaign") + 1] = str(tmp_path / "w1" / "campaign")
    assert campaign.main(["continue", *common, "--out", str(tmp_path / "w2")]) == 0
    second = load_checkpoint(tmp_path / "w2" / "campaign" / "eacnet_dab" / "state.pt")
    assert second["iteration"] == 2
