"""The trained weights shipped inside the package: metadata, defaults, and their recorded
accuracy on the first CamVid val images (when the shared CamVid copy is present)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from real_data import REAL_CAMVID, needs_real_camvid

from eacnet_core.checkpoint import WEIGHTS_DIR, load_checkpoint, packaged_weights
from eacnet_core.classes import CAMVID
from eacnet_core.datasets import camvid
from eacnet_core.inference import Segmenter, SegmenterOptions
from eacnet_core.metrics import ConfusionMatrix
from eacnet_core.models.registry import BY_BACKBONE

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
def test_packaged_weights_reproduce_their_recorded_val_miou(path: Path):
    """The mIoU on the first N val images, recorded at packaging time, within 0.5 points."""
    ckpt = load_checkpoint(path)
    check = ckpt["metrics"]["check"]
    seg = Segmenter.from_checkpoint(path, SegmenterOptions(device="cpu", backend="torch"))
    data = camvid(REAL_CAMVID, "val", limit=check["images"])
    matrix = ConfusionMatrix(CAMVID.num_classes, CAMVID.ignore_index)
    for i in range(len(data)):
        matrix.update(seg.segment(data.read_image(i)), data.read_label(i))
    assert matrix.miou == pytest.approx(check["miou"], abs=0.005)
    assert np.isfinite(matrix.pixel_accuracy) and matrix.pixel_accuracy > 0.7
