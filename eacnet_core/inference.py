"""The inference API: BGR image in, class-id mask (and colour mask, overlay) out.

Used unchanged by ``eacnet segment``, ``eacnet bag-eval`` and the ROS node, so what the
tools measure is what the robot runs.

Mask back to input size: the network already returns logits at the inference size
(bilinear from 1/8 inside the model); when the camera image is larger we take the
argmax at the inference size and resize the *mask* with nearest neighbour, instead of
upsampling C logit planes and taking the argmax there. See ``_restore_size``.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import torch
from torch import nn

from .checkpoint import CheckpointError, dataset_info, load_checkpoint, model_from_checkpoint, packaged_weights
from .classes import CAMVID, DatasetInfo, generic
from .models import build_model
from .runtime import DTYPES, resolve_device, resolve_precision
from .transforms import normalisation_lut

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnxruntime")


@dataclass(frozen=True)
class SegmenterOptions:
    """Runtime choices; defaults are what the ROS node and CLI use."""

    device: str = "auto"
    precision: str = "auto"
    backend: str = "auto"
    inference_height: int = 0  # 0: the image's own size
    inference_width: int = 0
    channels_last: bool = True  # faster on CPU for ERFNet (measured 1.3x at 360x480)
    threads: int = 0  # CPU threads for torch / onnxruntime; 0 = library default


class Segmenter:
    """A loaded, ready-to-run segmentation model.

    ``segment(bgr)`` returns a uint8 (H, W) class-id mask at the input image's size.
    """

    def __init__(self, model: nn.Module, model_name: str, dataset: DatasetInfo,
                 options: SegmenterOptions = SegmenterOptions(), weights: Optional[Path] = None):
        _check_size(options.inference_height, options.inference_width)
        if options.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {options.backend!r}")
        self.model_name = model_name
        self.dataset = dataset
        self.weights = weights
        self.options = options
        self.device = resolve_device(options.device)
        self.precision = resolve_precision(options.precision, self.device)
        self.backend = _resolve_backend(options.backend, self.precision)
        if options.threads > 0 and self.device.type == "cpu":
            torch.set_num_threads(options.threads)
        self._norm_lut = normalisation_lut(dataset.mean, dataset.std)  # one cv2.LUT pass, as training
        self._palette_bgr = np.ascontiguousarray(dataset.palette_array()[:, ::-1])
        self._colour_lut = np.zeros((256, 1, 3), np.uint8)  # ids without a colour stay black
        self._colour_lut[:min(len(self._palette_bgr), 256), 0] = self._palette_bgr[:256]
        self._model = model.eval()
        self._ort: dict[tuple[int, int], object] = {}  # onnxruntime session per input size
        # backend=auto on CPU in fp32: warmup() times the exact CPU paths and keeps the fastest.
        self._autotune = options.backend == "auto" and self.device.type == "cpu" and self.precision == "fp32"
        self.autotune_ms: dict[str, float] = {}
        self._use(self.backend, options.channels_last)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, options: SegmenterOptions = SegmenterOptions(),
                        expect_model: Optional[str] = None) -> Segmenter:
        ckpt = load_checkpoint(path, expect_model=expect_model)
        model = model_from_checkpoint(ckpt, path)
        return cls(model, ckpt["model"], dataset_info(ckpt), options, weights=Path(path))

    @classmethod
    def from_name(cls, model_name: str, weights: str | os.PathLike | None = None,
                  options: SegmenterOptions = SegmenterOptions(), allow_untrained: bool = False,
                  num_classes: int = CAMVID.num_classes) -> Segmenter:
        """A registry model with explicit weights, else the packaged default for it.

        Without either, raise a CheckpointError saying which file to pass, unless
        ``allow_untrained`` (demos, benchmarks), which builds a randomly initialised model."""
        path = Path(weights) if weights else packaged_weights(model_name)
        if path is not None:
            return cls.from_checkpoint(path, options, expect_model=model_name)
        if not allow_untrained:
            raise CheckpointError(f"no packaged weights for model {model_name!r}: pass a checkpoint written "
                                  f"by `eacnet train` (its out dir holds best.pt) as weights")
        info = CAMVID if num_classes == CAMVID.num_classes else generic(num_classes)
        log.warning("model %s has no trained weights: its output is noise", model_name)
        return cls(build_model(model_name, num_classes), model_name, info, options)

    @property
    def trained(self) -> bool:
        return self.weights is not None

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    def _use(self, backend: str, channels_last: bool) -> None:
        """Switch execution path; the model's memory format follows the torch layout."""
        self.backend, self.channels_last = backend, channels_last and backend == "torch"
        if backend == "torch":
            layout = torch.channels_last if self.channels_last else torch.contiguous_format
            self._model.to(self.device, dtype=DTYPES[self.precision], memory_format=layout)

    def describe(self) -> str:
        size = (f"{self.options.inference_width}x{self.options.inference_height}"
                if self.options.inference_height else "input size")
        weights = str(self.weights) if self.weights else "UNTRAINED (random weights)"
        backend = self.backend + (" channels_last" if self.channels_last else "")
        return (f"model={self.model_name} classes={self.num_classes} device={self.device} "
                f"precision={self.precision} backend={backend} inference={size} weights={weights}")

    # ------------------------------------------------------------------ the pipeline
    def preprocess(self, bgr: np.ndarray) -> np.ndarray:
        """BGR uint8 (H, W, 3) -> normalised RGB float32 (1, 3, h, w) at the inference size."""
        _check_image(bgr)
        h, w = self.options.inference_height, self.options.inference_width
        if h and (bgr.shape[0], bgr.shape[1]) != (h, w):
            bgr = cv2.resize(bgr, (w, h), interpolation=cv2.INTER_LINEAR)
        rgb = cv2.LUT(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), self._norm_lut)
        return rgb.transpose(2, 0, 1)[None]  # a view: channels-last memory, what the torch path wants

    def logits(self, batch: np.ndarray) -> np.ndarray | torch.Tensor:
        """Forward pass on a preprocessed (1, 3, h, w) batch; returns (1, C, h, w) logits."""
        if self.backend == "onnxruntime":
            batch = np.ascontiguousarray(batch)
            return self._ort_session(batch.shape[2], batch.shape[3]).run(None, {"image": batch})[0]
        # from_numpy keeps preprocess's strides: for channels_last that layout is already
        # right and no copy is made; otherwise the one copy happens here.
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        x = torch.from_numpy(batch).to(self.device, dtype=DTYPES[self.precision], memory_format=layout)
        with torch.inference_mode():
            return self._model(x)

    def segment(self, bgr: np.ndarray) -> np.ndarray:
        """Class-id mask (uint8, the input image's H x W)."""
        return self.mask_from_logits(self.logits(self.preprocess(bgr)), bgr.shape[:2])

    def mask_from_logits(self, logits: np.ndarray | torch.Tensor, size_hw: tuple[int, int]) -> np.ndarray:
        """(1, C, h, w) logits -> uint8 class ids at ``size_hw`` (argmax, then nearest resize)."""
        return _restore_size(_argmax_classes(logits), size_hw)

    def colorize(self, mask: np.ndarray) -> np.ndarray:
        """BGR colour mask; ids outside the palette (e.g. ignore) are black."""
        if mask.dtype == np.uint8 and mask.ndim == 2:  # the node's case: one LUT pass, ~6x faster at 720p
            return cv2.LUT(cv2.merge((mask, mask, mask)), self._colour_lut)
        palette = self._palette_bgr
        if mask.max(initial=0) >= len(palette):
            palette = np.concatenate([palette, np.zeros((256 - len(palette), 3), np.uint8)])
        return palette[mask]

    def overlay(self, bgr: np.ndarray, mask: np.ndarray, alpha: float = 0.5,
                color_mask: Optional[np.ndarray] = None) -> np.ndarray:
        """alpha * colour mask + (1 - alpha) * image, BGR uint8."""
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"overlay alpha must be in [0, 1], got {alpha}")
        colours = self.colorize(mask) if color_mask is None else color_mask
        return cv2.addWeighted(colours, alpha, _as_bgr(bgr), 1.0 - alpha, 0.0)

    def warmup(self, height: int = 360, width: int = 480, runs: int = 2) -> None:
        """Run a few frames so first-frame costs (allocations, kernel choice, ORT graph
        optimisation) happen at start-up, not on the robot's first image."""
        h = self.options.inference_height or height
        w = self.options.inference_width or width
        dummy = np.zeros((h, w, 3), np.uint8)
        if self._autotune:
            self._pick_fastest_cpu_path(self.preprocess(dummy))
        for _ in range(runs):
            self.segment(dummy)

    def _pick_fastest_cpu_path(self, batch: np.ndarray, runs: int = 3) -> None:
        """backend=auto on CPU: time torch (channels-last and NCHW) and onnxruntime on this
        machine, model and size, and keep the fastest. All three compute the same fp32
        function (masks agree to float rounding), so the choice is safe; which one wins
        differs by model and CPU (on our 2-core EPYC onnxruntime for eacnet_erf, eager
        NCHW torch for eacnet_dab; see docs/RESULTS.md), hence measuring, not guessing."""
        candidates = [("torch", True), ("torch", False)]
        if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx"):
            candidates.append(("onnxruntime", False))
        for backend, channels_last in candidates:
            self._use(backend, channels_last)
            self.logits(batch)  # first run: export / allocation, untimed
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                self.logits(batch)
                times.append(time.perf_counter() - start)
            self.autotune_ms[backend + (":nhwc" if channels_last else ":nchw")] = 1000 * float(np.median(times))
        best = min(self.autotune_ms, key=self.autotune_ms.get)
        self._use(best.split(":")[0], best.endswith(":nhwc"))
        self._autotune = False
        log.info("backend auto: %s -> %s", ", ".join(f"{k} {v:.0f} ms" for k, v in self.autotune_ms.items()), best)

    # ------------------------------------------------------------------ onnxruntime
    def _ort_session(self, height: int, width: int):
        """Export the model at this input size once and keep the session (one per size:
        a camera stream has one size, so this happens once)."""
        key = (height, width)
        if key not in self._ort:
            from .export import export_onnx, ort_session  # onnx is an optional extra

            folder = Path(tempfile.mkdtemp(prefix="eacnet-onnx-"))
            model = copy.deepcopy(self._model).float().to("cpu", memory_format=torch.contiguous_format)
            onnx_path = export_onnx(model, folder / f"{self.model_name}_{height}x{width}.onnx", height, width)
            self._ort[key] = ort_session(onnx_path, self.device, threads=self.options.threads)
            shutil.rmtree(folder, ignore_errors=True)  # the session holds the graph in memory
        return self._ort[key]


def _argmax_classes(logits: np.ndarray | torch.Tensor) -> np.ndarray:
    """uint8 class id per pixel of (1, C, h, w) logits; the first maximum wins, as in argmax.

    On CPU, argmax over the channel axis of NCHW memory walks it with a stride of h*w and
    was the slowest step after the forward pass (50 ms at 480x360 and 236 ms at 1280x720,
    11 classes, one thread, `eacnet bench-pipeline`). A running maximum over the C contiguous
    planes gives the same ids in 1.5 ms / 11 ms, in single-threaded numpy on purpose: a loop
    of small multi-threaded torch ops slowed down 7x when other processes loaded the CPU.
    Channels-last memory and GPUs keep torch's argmax, fast there."""
    if isinstance(logits, torch.Tensor):
        x = logits[0]
        if x.device.type != "cpu" or x.stride(0) == 1:
            return x.argmax(0).to(torch.uint8).cpu().numpy()
        planes = x.float().numpy()
    else:
        planes = logits[0]
    best = planes[0].copy()
    ids = np.zeros(best.shape, np.uint8)
    greater = np.empty(best.shape, bool)
    for c in range(1, planes.shape[0]):
        np.greater(planes[c], best, out=greater)
        np.copyto(ids, np.uint8(c), where=greater)
        np.maximum(best, planes[c], out=best)
    return ids


def _restore_size(mask: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of the class mask to the input image's size.

    Chosen over "bilinear-upsample the logits, then argmax" by measurement (erfnet_enc on
    30 CamVid val images, inference at 320x240 and 240x180, masks at 480x360): the same
    mIoU to 0.02 points, 99.4% identical pixels, at 1-2 ms instead of 28 ms per frame
    (one uint8 resize instead of C float planes). Details in docs/RESULTS.md."""
    if mask.shape == tuple(size_hw):
        return mask
    return cv2.resize(mask, (size_hw[1], size_hw[0]), interpolation=cv2.INTER_NEAREST)


def _resolve_backend(backend: str, precision: str) -> str:
    """'auto' starts as torch, which runs every precision; on CPU in fp32, warmup() then
    measures the alternatives (``_pick_fastest_cpu_path``)."""
    if backend == "onnxruntime" and precision != "fp32":
        raise ValueError(f"the onnxruntime backend runs fp32 only; got precision {precision}")
    return "torch" if backend == "auto" else backend


def _check_size(height: int, width: int) -> None:
    if height < 0 or width < 0 or (height == 0) != (width == 0):
        raise ValueError(f"inference size must be two positive numbers or both 0 (the image's own size); "
                         f"got height={height} width={width}")


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"expected a BGR uint8 image of shape (H, W, 3), got a {desc}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"empty image of shape {image.shape}")


def _as_bgr(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image
