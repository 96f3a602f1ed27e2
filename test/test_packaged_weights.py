"""The trained weights shipped inside the package: metadata, defaults, and their recorded
accuracy on the first CamVid val images (when the shared CamVid copy is present)."""

import json
from pathlib import Path

import pytest
import torch
from real_data import REAL_CAMVID, needs_real_camvid

from eacnet_core.checkpoint import WEIGHTS_DIR, load_checkpoint, packaged_weights
from eacnet_core.data.classes import CAMVID
from eacnet_core.infer.segmenter import Segmenter, SegmenterOptions
from eacnet_core.models.registry import BY_BACKBONE
from eacnet_ros.cli import main

PACKAGED = sorted(WEIGHTS_DIR.glob("*_camvid.pt"))
#: Every model the ROS node can be launched with (backbone x attention) ships weights.
REQUIRED = set(BY_BACKBONE.values())


def test_required_models_ship_weights():
    shipped = {p.name.removesuffix("_camvid.pt") for p in PACKAGED}
    assert REQUIRED <= shipped, f"no packaged weights for {sorted(REQUIRED - shipped)}"


@pytest.mark.parametrize("path", PACKAGED, ids=lambda p: p.name)
def test_packaged_file_metadata(path: Path):
    ckpt = load_checkpoint(path)
    assert path.name == f"{ckpt['model']}_camvid.pt"
    assert ckpt["num_classes"] == CAMVID.num_classes
    assert tuple(ckpt["dataset"]["class_names"]) == CAMVID.class_names
    assert [tuple(c) for c in ckpt["dataset"]["palette"]] == list(CAMVID.palette)
    assert ckpt["dataset"]["ignore_index"] == CAMVID.ignore_index
    assert 0.0 < ckpt["metrics"]["val_miou"] <= 1.0
    assert all(v.dtype == torch.float16 for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert "optimizer" not in ckpt  # deployable: no training state
    assert path.stat().st_size < 5_000_000
    assert packaged_weights(ckpt["model"]) == path


@pytest.mark.parametrize("path", PACKAGED, ids=lambda p: p.name)
def test_packaged_weights_are_the_default(path: Path):
    name = path.name.removesuffix("_camvid.pt")
    seg = Segmenter.from_name(name, options=SegmenterOptions(device="cpu", backend="torch"))
    assert seg.loaded_from_file and seg.weights == path


@needs_real_camvid
@pytest.mark.parametrize("path", PACKAGED, ids=lambda p: p.name)
def test_packaged_weights_reproduce_their_recorded_val_miou(path: Path, tmp_path):
    """The mIoU on the first N val images, recorded through the Segmenter when the file was
    packaged, reproduced within 0.5 points by ``eacnet eval`` (its own loader, transform and
    batched forward pass: a different path to the same number)."""
    check = load_checkpoint(path)["metrics"]["check"]
    out = tmp_path / "eval.json"
    assert main(["eval", "--weights", str(path), "--data-root", str(REAL_CAMVID), "--split", check["split"],
                 "--limit", str(check["images"]), "--device", "cpu", "--workers", "0", "--no-progress",
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["images"] == check["images"]
    assert result["miou"] == pytest.approx(check["miou"], abs=0.005)
    assert result["pixel_acc"] > 0.7
