"""Transforms: normalisation identical to the inference path, augmentation keeps image
and label aligned, crops pad labels with ignore."""

from __future__ import annotations

import numpy as np
import pytest

from eacnet_core.data.classes import CAMVID
from eacnet_core.data.transforms import (
    EvalTransform,
    TrainTransform,
    crop_with_fill,
    normalize_bgr,
    random_crop_box,
)
from eacnet_core.infer.segmenter import Segmenter, SegmenterOptions
from eacnet_core.models import build_model
from eacnet_core.options import parse_hw

IGNORE = 11


def _stripes(height: int = 32, width: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """Label = column band id (0..5, width/6 px wide); image encodes it exactly: every channel
    of a pixel equals 40 * label + 10. Recovering the label from the image after a
    transform tells whether they moved together."""
    label = np.repeat((np.arange(width) // (width // 6)).astype(np.uint8)[None], height, axis=0)
    label[: height // 4] = np.minimum(label[: height // 4] + 1, 5)  # break left-right symmetry more
    image = np.repeat((40 * label + 10)[..., None], 3, axis=2).astype(np.uint8)
    return image, label


def _recover(chw: np.ndarray) -> np.ndarray:
    """Invert normalisation (mean 0, std 1) and the colour code: pixel value -> band id."""
    return np.rint((chw[0] - 10) / 40).astype(np.int64)


def test_normalisation_matches_segmenter_bit_for_bit():
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, size=(24, 40, 3), dtype=np.uint8)
    segmenter = Segmenter(build_model("erfnet_enc", CAMVID.num_classes), "erfnet_enc", CAMVID,
                          SegmenterOptions(device="cpu", channels_last=False))
    expected = segmenter.preprocess(bgr)[0]
    ours = normalize_bgr(bgr, CAMVID.mean, CAMVID.std)
    assert ours.dtype == np.float32 and ours.shape == (3, 24, 40) and ours.flags.c_contiguous
    assert np.array_equal(ours, expected)
    # RGB order: the first channel is the red channel (BGR index 2).
    assert np.allclose(ours[0], (bgr[..., 2] - CAMVID.mean[0]) / CAMVID.std[0], atol=1e-5)


def test_eval_transform_resizes_image_only():
    image, label = _stripes()
    out, out_label = EvalTransform((0.0,) * 3, (1.0,) * 3, size_hw=(16, 24))(image, label, np.random.default_rng(0))
    assert out.shape == (3, 16, 24) and out_label.shape == label.shape
    out, _ = EvalTransform((0.0,) * 3, (1.0,) * 3)(image, label, np.random.default_rng(0))
    assert out.shape == (3, 32, 48)


@pytest.mark.parametrize("seed", range(6))
def test_flip_and_crop_keep_alignment_exactly(seed):
    image, label = _stripes()
    tf = TrainTransform((24, 32), (0.0,) * 3, (1.0,) * 3, IGNORE, scales=(1.0,), flip=True)
    out, out_label = tf(image, label, np.random.default_rng(seed))
    assert out.shape == (3, 24, 32) and out_label.shape == (24, 32)
    assert np.array_equal(_recover(out), out_label)


def test_flip_happens_for_some_draws_and_not_others():
    image, label = _stripes()
    tf = TrainTransform((32, 48), (0.0,) * 3, (1.0,) * 3, IGNORE, scales=(1.0,), flip=True)
    outcomes = {bool(tf(image, label, np.random.default_rng(s))[1][-1, 0] == label[-1, -1]) for s in range(20)}
    assert outcomes == {True, False}


@pytest.mark.parametrize("seed", range(4))
def test_scaling_keeps_alignment(seed):
    """Bilinear image vs nearest label differ only along band borders after rescaling."""
    image, label = _stripes(64, 96)
    tf = TrainTransform((40, 56), (0.0,) * 3, (1.0,) * 3, IGNORE, scales=(0.75, 1.25, 1.5, 2.0), flip=True)
    out, out_label = tf(image, label, np.random.default_rng(seed))
    valid = out_label != IGNORE
    assert valid.any()
    assert (_recover(out)[valid] == out_label[valid]).mean() > 0.9


def test_crop_larger_than_image_pads_label_with_ignore_and_image_with_mean():
    image, label = _stripes()
    tf = TrainTransform((40, 64), (10.0, 10.0, 10.0), (2.0, 2.0, 2.0), IGNORE, scales=(1.0,), flip=False)
    out, out_label = tf(image, label, np.random.default_rng(0))
    assert out.shape == (3, 40, 64)
    assert (out_label == IGNORE).sum() == 40 * 64 - 32 * 48
    assert np.array_equal(out_label[:32, :48], label)  # padding goes bottom/right, offset 0 is the only crop
    assert np.all(out[:, 32:, :] == 0) and np.all(out[:, :, 48:] == 0)  # 0 = mean colour after normalising


def test_scaled_down_image_smaller_than_crop_is_padded():
    image, label = _stripes()
    tf = TrainTransform((32, 48), (0.0,) * 3, (1.0,) * 3, IGNORE, scales=(0.5,), flip=False)
    out, out_label = tf(image, label, np.random.default_rng(0))
    assert out.shape == (3, 32, 48)
    assert (out_label == IGNORE).sum() == 32 * 48 - 16 * 24


def test_random_crop_box_and_fill():
    label = np.arange(100, dtype=np.int32).reshape(10, 10)
    boxes = {random_crop_box(10, 10, (4, 4), np.random.default_rng(s)) for s in range(30)}
    assert len(boxes) > 5 and all(0 <= t <= 6 and 0 <= left <= 6 for t, left in boxes)
    top, left = random_crop_box(10, 10, (4, 4), np.random.default_rng(3))
    assert np.array_equal(crop_with_fill(label, top, left, (4, 4), 255), label[top:top + 4, left:left + 4])
    assert random_crop_box(3, 5, (4, 8), np.random.default_rng(0)) == (0, 0)  # smaller than the crop: pad only
    padded = crop_with_fill(label[:3, :5], 0, 0, (4, 8), 255)
    assert padded.shape == (4, 8) and (padded == 255).sum() == 32 - 15
    rgb = crop_with_fill(np.ones((3, 5, 3), np.uint8), 0, 0, (4, 8), 0)
    assert rgb.shape == (4, 8, 3) and rgb.sum() == 45


def test_parse_hw():
    assert parse_hw("360x480") == (360, 480)
    assert parse_hw("") == (0, 0) and parse_hw("0") == (0, 0)
    for bad in ("360", "axb", "0x480", "1x2x3"):
        with pytest.raises(ValueError):
            parse_hw(bad)


def test_invalid_transform_settings():
    with pytest.raises(ValueError, match="crop"):
        TrainTransform((0, 10), (0.0,) * 3, (1.0,) * 3, IGNORE)
    with pytest.raises(ValueError, match="scales"):
        TrainTransform((10, 10), (0.0,) * 3, (1.0,) * 3, IGNORE, scales=(0.0,))
