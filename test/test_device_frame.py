"""The frame's pre/post-processing as tensor ops (device_frame.DeviceFrames) against the CPU
path of the Segmenter (preprocess / mask_at_size / colorize / overlay), on CPU tensors; the
pinned-memory and side-stream parts run only where CUDA is."""

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from eacnet_core.data.classes import CAMVID
from eacnet_core.infer.device_frame import DeviceFrames, FrameResult
from eacnet_core.infer.masks import mask_at_size
from eacnet_core.infer.segmenter import Segmenter, SegmenterOptions

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def pixel_model(classes: int = 11, seed: int = 0) -> nn.Module:
    """A random per-pixel classifier (3x3 conv): masks with many classes and edges, in
    milliseconds, so that a wrong pixel anywhere shows."""
    torch.manual_seed(seed)
    model = nn.Conv2d(3, classes, 3, padding=1)
    nn.init.normal_(model.weight, std=1.0)
    return model.eval()


def frames_for(segmenter: Segmenter, device: str = "cpu") -> DeviceFrames:
    opts = segmenter.options
    return DeviceFrames(torch.device(device), torch.float32, segmenter.dataset.mean, segmenter.dataset.std,
                        segmenter.palette.bgr, (opts.inference_height, opts.inference_width),
                        channels_last=True)


def forward_of(segmenter: Segmenter):
    def forward(x):
        with torch.inference_mode():
            return segmenter._model(x)
    return forward


def random_frame(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def cpu_segmenter(**kw) -> Segmenter:
    return Segmenter(pixel_model(), "pixel", CAMVID, SegmenterOptions(device="cpu", backend="torch", **kw))


def test_network_input_is_preprocess_bit_for_bit_without_a_resize():
    seg = cpu_segmenter()
    dev = frames_for(seg)
    bgr = random_frame(24, 40)
    got = dev.network_input([dev.upload(bgr)], (24, 40))
    expected = torch.from_numpy(seg.preprocess(bgr))
    assert got.shape == expected.shape and got.dtype == torch.float32
    assert torch.equal(got, expected)
    assert got.is_contiguous(memory_format=torch.channels_last)


def test_resize_to_the_network_size_is_within_one_grey_level_of_cv2():
    bgr = random_frame(72, 96, seed=3)
    for size in ((36, 48), (24, 40), (90, 120), (60, 80)):
        got = DeviceFrames.resize_bilinear(torch.from_numpy(bgr), size).numpy()
        expected = cv2.resize(bgr, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        diff = np.abs(got.astype(int) - expected)
        assert diff.max() <= 1, size
        assert diff.mean() < 0.2, size  # on noise, the worst case: cv2's 11-bit weights round differently


@pytest.mark.parametrize("src,dst", [((4, 6), (9, 13)), ((45, 61), (360, 480)), ((7, 5), (3, 2)),
                                     ((36, 48), (72, 96)), ((30, 40), (37, 53)), ((5, 7), (6, 8))])
def test_nearest_resize_is_opencvs(src, dst):
    mask = np.random.default_rng(1).integers(0, 11, src, dtype=np.uint8)
    got = frames_for(cpu_segmenter()).nearest(torch.from_numpy(mask), dst).numpy()
    assert np.array_equal(got, cv2.resize(mask, (dst[1], dst[0]), interpolation=cv2.INTER_NEAREST))


@pytest.mark.parametrize("alpha", [0.5, 0.3, 0.7, 0.123, 0.0, 1.0])
def test_overlay_is_cv2_add_weighted_bit_for_bit(alpha):
    rng = np.random.default_rng(2)
    image, colours = (rng.integers(0, 256, (60, 80, 3), dtype=np.uint8) for _ in range(2))
    got = DeviceFrames.overlay(torch.from_numpy(image), torch.from_numpy(colours), alpha).numpy()
    assert np.array_equal(got, cv2.addWeighted(colours, alpha, image, 1 - alpha, 0.0))


def test_colour_mask_is_colorize_including_ids_without_a_colour():
    seg = cpu_segmenter()
    mask = np.random.default_rng(4).integers(0, 256, (20, 30), dtype=np.uint8)
    mask[0, :4] = (11, 12, 255, 0)  # beyond CamVid's palette: black
    got = frames_for(seg).colorize(torch.from_numpy(mask)).numpy()
    assert np.array_equal(got, seg.colorize(mask))
    assert not got[0, :3].any()


@pytest.mark.parametrize("inference_hw,image_hw", [((0, 0), (32, 48)), ((16, 24), (16, 24)), ((16, 24), (45, 61))])
def test_whole_frame_matches_the_cpu_path(inference_hw, image_hw):
    """Same mask, colour mask and overlay as Segmenter's numpy path. With a resize to the
    network size the inputs may differ by a grey level, so there the device's logits are
    compared through the CPU's post-processing instead."""
    seg = cpu_segmenter(inference_height=inference_hw[0], inference_width=inference_hw[1])
    dev = frames_for(seg)
    bgr = random_frame(*image_hw, seed=5)
    result = dev.submit([bgr], forward_of(seg), [(True, True)], alpha=0.4).result()[0]
    if tuple(inference_hw) in ((0, 0), tuple(image_hw)):
        expected_mask = seg.segment(bgr)
    else:
        logits = forward_of(seg)(dev.network_input([dev.upload(bgr)], inference_hw))
        expected_mask = mask_at_size(logits, image_hw)
    assert result.mask.dtype == np.uint8 and result.mask.shape == image_hw
    assert len(np.unique(result.mask)) > 3  # a varied mask, or the comparison means little
    assert np.array_equal(result.mask, expected_mask)
    assert np.array_equal(result.color_mask, seg.colorize(expected_mask))
    assert np.array_equal(result.overlay, seg.overlay(bgr, expected_mask, 0.4))


def test_only_the_wanted_outputs_come_back_for_each_frame_of_a_batch():
    seg = cpu_segmenter()
    images = [random_frame(16, 24, seed=s) for s in range(3)] + [random_frame(20, 28, seed=9)]
    wanted = [(False, False), (True, False), (False, True), (True, True)]
    results = frames_for(seg).submit(images, forward_of(seg), wanted).result()
    assert [(r.color_mask is not None, r.overlay is not None) for r in results] == wanted
    for bgr, r in zip(images, results, strict=True):
        assert isinstance(r, FrameResult)
        assert np.array_equal(r.mask, seg.segment(bgr))  # sizes differ: two passes, same masks


def test_bad_arguments_are_named():
    seg = cpu_segmenter()
    dev = frames_for(seg)
    with pytest.raises(ValueError, match="2 output choices for 1 images"):
        dev.submit([random_frame(8, 8)], forward_of(seg), [(True, True)] * 2)
    with pytest.raises(ValueError, match="alpha"):
        dev.submit([random_frame(8, 8)], forward_of(seg), alpha=1.5)


@CUDA
def test_cuda_frames_match_the_cpu_path_and_overlap_uploads():
    seg = cpu_segmenter()
    model = seg._model.to("cuda")
    dev = DeviceFrames(torch.device("cuda"), torch.float32, CAMVID.mean, CAMVID.std, seg.palette.bgr)
    images = [random_frame(32, 48, seed=s) for s in range(4)]
    pending = []
    with torch.inference_mode():
        for bgr in images:  # the next frame is submitted before the previous one is collected
            pending.append(dev.submit([bgr], model, [(True, True)]))
    seg._model.to("cpu")
    for bgr, p in zip(images, pending, strict=True):
        r = p.result()[0]
        mask = seg.segment(bgr)
        assert (r.mask == mask).mean() > 0.999  # cuDNN and CPU convolutions round differently
        assert np.array_equal(r.color_mask, seg.colorize(r.mask))
        assert np.array_equal(r.overlay, seg.overlay(bgr, r.mask, 0.5))
