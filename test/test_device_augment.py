"""``--data-on-device``: the training set held on the device and augmented there gives the
CPU pipeline's batches (same draws, same geometry), and a run with it learns and resumes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eacnet_core.data.datasets import build_dataset, dataset_info
from eacnet_core.data.transforms import TrainTransform
from eacnet_core.train.config import TrainConfig
from eacnet_core.train.device_data import DeviceTrainData
from eacnet_core.train.loop import train


def _camvid(tmp_path, synthetic, height=36, width=48, count=6):
    root = synthetic.camvid(tmp_path / "camvid", {"train": count, "val": 2}, height=height, width=width)
    info = dataset_info("camvid", root)
    return root, info


@pytest.mark.parametrize("crop", [(24, 32), (36, 48), (40, 56)])
def test_device_batches_match_the_cpu_transform(tmp_path, synthetic, crop):
    """Every scale of the paper's set, flips, crops inside and past the edge: labels agree
    pixel for pixel (cv2's nearest rule), images to within uint8 rounding."""
    root, info = _camvid(tmp_path, synthetic)
    tf = TrainTransform(crop, info.mean, info.std, info.ignore_index)
    dataset = build_dataset("camvid", root, "train", transform=tf, seed=3)
    data = DeviceTrainData(dataset, tf, torch.device("cpu"))
    seen_scales, seen_flips = set(), set()
    for epoch in range(4):
        dataset.set_epoch(epoch)
        indices = list(range(len(dataset)))
        images, labels = data.batch(indices, epoch)
        assert images.shape == (len(indices), 3) + crop and labels.shape == (len(indices),) + crop
        assert images.dtype == torch.float32 and labels.dtype == torch.int64
        for row, index in enumerate(indices):
            cpu_image, cpu_label, _ = dataset[index]
            assert (labels[row] == cpu_label).float().mean() >= 0.995, (epoch, index)
            diff = (images[row] - cpu_image).abs()
            assert diff.mean() < 0.02 and diff.max() < 0.15, (epoch, index, float(diff.mean()), float(diff.max()))
        for scale, flip, _, _ in data.draws(indices, epoch):
            seen_scales.add(scale)
            seen_flips.add(flip)
    assert len(seen_scales) >= 4 and seen_flips == {True, False}


def test_device_batches_pad_past_the_edge_with_ignore_and_mean(tmp_path, synthetic):
    """A 0.75x image (27x36) in a 36x48 crop: the rows and columns past it are the ignore
    label and 0 (the mean colour after normalising)."""
    root, info = _camvid(tmp_path, synthetic)
    tf = TrainTransform((36, 48), info.mean, info.std, info.ignore_index, scales=(0.75,), flip=False)
    dataset = build_dataset("camvid", root, "train", transform=tf)
    images, labels = DeviceTrainData(dataset, tf, torch.device("cpu")).batch([0, 1], epoch=0)
    assert (labels[:, 27:, :] == info.ignore_index).all() and (labels[:, :, 36:] == info.ignore_index).all()
    assert (images[:, :, 27:, :] == 0).all() and (images[:, :, :, 36:] == 0).all()
    assert (labels[:, :27, :36] != info.ignore_index).float().mean() > 0.5


def test_device_data_refuses_mixed_sizes(tmp_path, synthetic):
    root = synthetic.camvid(tmp_path / "a", {"train": 2}, height=32, width=48)
    synthetic.write_png(root / "train" / "train_001.png", np.zeros((40, 48, 3), np.uint8))
    synthetic.write_png(root / "trainannot" / "train_001.png", np.zeros((40, 48), np.uint8))
    info = dataset_info("camvid", root)
    tf = TrainTransform((32, 48), info.mean, info.std, info.ignore_index)
    dataset = build_dataset("camvid", root, "train", transform=tf)
    with pytest.raises(ValueError, match=r"needs images of one size, found 48x32, 48x40"):
        DeviceTrainData(dataset, tf, torch.device("cpu"))


def test_training_on_device_data_learns_and_logs_it(tmp_path, synthetic):
    """A run with --data-on-device (CPU stands in for the GPU) learns like the DataLoader run
    and says where its data lives."""
    root, _ = _camvid(tmp_path, synthetic, height=32, width=48, count=8)
    cfg = TrainConfig(model="dabnet", dataset="camvid", data_root=str(root), out=str(tmp_path / "run"), epochs=6,
                      batch_size=4, crop=(32, 48), scales=(1.0,), workers=0, threads=1, progress=False,
                      tensorboard=False, loss="ce", lr=5e-3, val_every=3, data_on_device=True)
    messages: list[str] = []
    result = train(cfg, log=messages.append)
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < 0.6 * losses[0], losses
    assert any("training set on cpu" in m and "augmented there" in m for m in messages), messages
    assert result.iterations == 6 * 2
