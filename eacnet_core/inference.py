"""The inference API: BGR image in, class-id mask (and colour mask, overlay) out.

Used unchanged by ``eacnet segment``, ``eacnet bag-eval`` and the ROS node, so what the
tools measure is what the robot runs.

Mask back to input size: the network already returns logits at the inference size
(bilinear from 1/8 inside the model); when the camera image is larger we take the
argmax at the inference size and resize the *mask* with nearest neighbour, instead of
upsampling C logit planes and taking the argmax there. See ``_restore_size``.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import torch
from torch import nn

from .checkpoint import checkpoint_dataset, load_checkpoint, missing_weights_error, model_from_checkpoint, weights_for
from .classes import CAMVID, DatasetInfo, generic
from .compiled import CompiledForward
from .device_frame import DeviceFrames, FrameResult, ReadyFrames
from .engines import (
    Engine,
    OrtSessions,
    OvModels,
    _ort_available,
    _ov_available,
    return_freed_memory,  # noqa: F401  (the node imports it from here)
)
from .models import build_model
from .runtime import DTYPES, resolve_device, resolve_precision, sync
from .transforms import normalisation_lut

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "torch_compiled", "onnxruntime", "openvino")
#: Backends that run the torch model on its device (eager, or compiled: compiled.py); they can
#: run the frame's pre/post-processing on the device too (device_frame.py).
TORCH_BACKENDS = ("torch", "torch_compiled")
FRAME_ON_DEVICE = ("auto", "on", "off")
#: Backends that run the exported ONNX graph, one image per call.
GRAPH_BACKENDS = ("onnxruntime", "openvino")

_WARMUP_HW = (360, 480)  # start-up warm-up frames when the camera's size is not known yet


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
    ort_sessions: int = 4  # onnxruntime sessions kept, one per input size (25-50 MB each); LRU beyond
    # precision int8: frames that calibrate the quantisation (a CamVid folder: its train/ split, or a
    # folder of camera images); "" = $EACNET_DATA or ../shared/data/CamVid when present
    calibration_data: str = ""
    compiled_shapes: int = 4  # backend torch_compiled: (batch, height, width) shapes kept compiled; LRU beyond
    compile_mode: str = "auto"  # backend torch_compiled: compiled.COMPILE_MODES (auto: inductor, + CUDA graphs on CUDA)
    # the frame's pre/post-processing as tensor ops on the model's device (device_frame.py):
    # auto = on CUDA with a torch backend; on = also on the CPU (tests); off = OpenCV/numpy on the CPU
    frame_on_device: str = "auto"


class Segmenter:
    """A loaded, ready-to-run segmentation model.

    ``segment(bgr)`` returns a uint8 (H, W) class-id mask at the input image's size.

    backend=auto on CPU (fp32) times its execution paths and keeps the fastest, at the size
    the network will run at: in ``warmup()`` when that size is known (an inference size, or
    the size passed), else on the first frame after ``warmup()``; ``tune()`` forces it.
    """

    def __init__(self, model: nn.Module, model_name: str, dataset: DatasetInfo,
                 options: SegmenterOptions = SegmenterOptions(), weights: Optional[Path] = None):
        _check_size(options.inference_height, options.inference_width)
        if options.ort_sessions < 1:
            raise ValueError(f"ort_sessions must be >= 1, got {options.ort_sessions}")
        if options.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {options.backend!r}")
        if options.frame_on_device not in FRAME_ON_DEVICE:
            raise ValueError(f"frame_on_device must be one of {', '.join(FRAME_ON_DEVICE)}; "
                             f"got {options.frame_on_device!r}")
        self.model_name = model_name
        self.dataset = dataset
        self.weights = weights
        self.options = options
        self.device = resolve_device(options.device)
        self.precision = resolve_precision(options.precision, self.device)
        self.backend = _resolve_backend(options.backend, self.precision)
        if self.backend == "openvino" and self.device.type != "cpu":
            raise ValueError(f"backend openvino runs on the CPU; got device {self.device}")
        if options.threads > 0 and self.device.type == "cpu":
            torch.set_num_threads(options.threads)
        self._norm_lut = normalisation_lut(dataset.mean, dataset.std)  # one cv2.LUT pass, as training
        self._palette_bgr = np.ascontiguousarray(dataset.palette_array()[:, ::-1])
        self._colour_lut = np.zeros((256, 1, 3), np.uint8)  # ids without a colour stay black
        self._colour_lut[:min(len(self._palette_bgr), 256), 0] = self._palette_bgr[:256]
        self._model = model.eval()
        int8 = self._int8_builder() if self.precision == "int8" else None
        self._ort = OrtSessions(self._model, self.device, options.threads, options.ort_sessions, int8)
        self._ov = OvModels(self._ort, options.threads, options.ort_sessions, self.precision)
        dtype = DTYPES.get(self.precision, torch.float32)
        self._compiled = CompiledForward(self._model, self.device, dtype, options.channels_last,
                                         mode=options.compile_mode, capacity=options.compiled_shapes)
        #: every backend but torch, by name (engines.Engine): ``logits`` runs ``engines[backend]``
        self.engines: dict[str, Engine] = {"onnxruntime": self._ort, "openvino": self._ov,
                                           "torch_compiled": self._compiled}
        self._frames = self._device_frames(dtype)
        # backend=auto on CUDA: time eager and compiled torch and keep the faster (_pick_fastest_cuda_path).
        self._can_autotune_cuda = (options.backend == "auto" and self.device.type == "cuda"
                                   and self.precision in DTYPES)
        # backend=auto on CPU in fp32: time the exact CPU paths and keep the fastest (_pick_fastest_cpu_path).
        self._can_autotune = options.backend == "auto" and self.device.type == "cpu" and self.precision == "fp32"
        self._tune_on_first_frame = False  # set by warmup() when it does not know the network size
        self.autotune_ms: dict[str, float] = {}  # the last timing: path -> median ms
        self.autotune_size: Optional[tuple[int, int]] = None  # (height, width) it was timed at
        self._use(self.backend, options.channels_last)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, options: SegmenterOptions = SegmenterOptions(),
                        expect_model: Optional[str] = None) -> Segmenter:
        ckpt = load_checkpoint(path, expect_model=expect_model)
        model = model_from_checkpoint(ckpt, path)
        return cls(model, ckpt["model"], checkpoint_dataset(ckpt), options, weights=Path(path))

    @classmethod
    def from_name(cls, model_name: str, weights: str | os.PathLike | None = None,
                  options: SegmenterOptions = SegmenterOptions(), allow_untrained: bool = False,
                  num_classes: int = CAMVID.num_classes) -> Segmenter:
        """A registry model with explicit weights, else the packaged default for it.

        Without either, raise a CheckpointError saying which file to pass, unless
        ``allow_untrained`` (demos, benchmarks), which builds a randomly initialised model."""
        path = weights_for(model_name, weights)
        if path is not None:
            return cls.from_checkpoint(path, options, expect_model=model_name)
        if not allow_untrained:
            raise missing_weights_error(model_name)
        info = CAMVID if num_classes == CAMVID.num_classes else generic(num_classes)
        log.warning("model %s has no trained weights: its output is noise", model_name)
        return cls(build_model(model_name, num_classes), model_name, info, options)

    def _int8_builder(self) -> Callable[[bytes], bytes]:
        """fp32 dynamic-size graph -> the int8 graph for these weights (cached; see quantize.py)."""
        from .quantize import CalibrationSpec, file_digest, int8_graph, state_digest

        digest = file_digest(self.weights) if self.weights else state_digest(self._model.state_dict())
        root = self.options.calibration_data or _default_calibration_root()
        height, width = self._network_size(None, None) or _WARMUP_HW
        spec = CalibrationSpec(root, height=height, width=width) if root else None
        return functools.partial(int8_graph, self.model_name, weights=self.weights, weights_digest=digest,
                                 spec=spec, mean=self.dataset.mean, std=self.dataset.std)

    @property
    def loaded_from_file(self) -> bool:
        """The weights came from a checkpoint file rather than a random initialisation; it says
        nothing about how well they were trained (was ``trained``, which suggested it did)."""
        return self.weights is not None

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    def _use(self, backend: str, channels_last: bool) -> None:
        """Switch execution path; the model's memory format follows the torch layout."""
        self.backend, self.channels_last = backend, channels_last and backend == "torch"
        if backend in TORCH_BACKENDS:
            layout = self._compiled.layout if backend == "torch_compiled" else (
                torch.channels_last if self.channels_last else torch.contiguous_format)
            self._model.to(self.device, dtype=DTYPES[self.precision], memory_format=layout)
            if getattr(self, "_frames", None) is not None:
                self._frames.layout = layout

    def _device_frames(self, dtype: torch.dtype) -> Optional[DeviceFrames]:
        """The on-device pre/post-processing, when ``frame_on_device`` asks for it."""
        mode = self.options.frame_on_device
        if mode == "off" or (mode == "auto" and self.device.type != "cuda") or self.precision not in DTYPES:
            return None
        layout = torch.channels_last if self.options.channels_last else torch.contiguous_format
        frames = DeviceFrames(self.device, dtype, self.dataset.mean, self.dataset.std, self._palette_bgr,
                              (self.options.inference_height, self.options.inference_width))
        frames.layout = layout
        return frames

    @property
    def frame_on_device(self) -> bool:
        """Whether frames are pre/post-processed on the model's device now (a torch backend
        with ``frame_on_device`` on, or auto on CUDA)."""
        return self._frames is not None and self.backend in TORCH_BACKENDS

    @property
    def onnx_sessions(self) -> tuple[tuple[int, int], ...]:
        """(height, width) of each live onnxruntime session, least recently used first."""
        return self._ort.sizes

    def describe(self) -> str:
        size = (f"{self.options.inference_width}x{self.options.inference_height}"
                if self.options.inference_height else "input size")
        weights = str(self.weights) if self.weights else "UNTRAINED (random weights)"
        # backend=auto on CPU chooses in warmup() or on the first frame: before that, say so
        # rather than name the starting path (a description taken early once recorded torch for onnxruntime).
        if self._can_autotune and self.autotune_size is None:
            backend = "auto (chosen on the first frame)" if self._tune_on_first_frame else "auto (not chosen yet)"
        else:
            backend = (self.backend + (" channels_last" if self.channels_last else "")
                       + (" (chosen by auto)" if self._can_autotune else ""))
        if self._can_autotune_cuda:
            backend = (f"{self.backend} (chosen by auto)" if self.autotune_size else
                       "auto (chosen on the first frame)" if self._tune_on_first_frame else "auto (not chosen yet)")
        frames = " frame=on-device" if self.frame_on_device else ""
        return (f"model={self.model_name} classes={self.num_classes} device={self.device} "
                f"precision={self.precision} backend={backend} inference={size}{frames} weights={weights}")

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
        """Forward pass on a preprocessed (N, 3, h, w) batch; returns (N, C, h, w) logits.
        onnxruntime's graphs take N = 1 only (``segment_batch`` runs them one by one)."""
        engine = self.engines.get(self.backend)
        if engine is not None:
            return engine.runner(batch.shape[2], batch.shape[3])(batch)
        # from_numpy keeps preprocess's strides: for channels_last that layout is already
        # right and no copy is made; otherwise the one copy happens here.
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        x = torch.from_numpy(batch).to(self.device, dtype=DTYPES[self.precision], memory_format=layout)
        with torch.inference_mode():
            return self._model(x)

    def segment(self, bgr: np.ndarray) -> np.ndarray:
        """Class-id mask (uint8, the input image's H x W). The first frame after a warm-up that
        did not know the size also settles backend=auto, at this frame's network size."""
        if self.frame_on_device:
            return self.segment_frames([bgr])[0].mask
        batch = self.preprocess(bgr)
        if self._tune_on_first_frame:
            self._pick_fastest_cpu_path(batch)
        return self.mask_from_logits(self.logits(batch), bgr.shape[:2])

    def segment_batch(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Class-id masks of several images (one per camera of a node), in their order, with
        one forward pass per network size instead of one per image.

        Why: a node serving several cameras gains throughput when one pass runs their frames
        together (12-21% on the 2-core CPU, with each frame waiting for the whole batch:
        docs/RESULTS.md, "Several cameras, one model"). Images whose network sizes differ (no
        inference size set and cameras of different resolutions) go in separate passes.
        onnxruntime's graphs take one image, so that backend runs them one by one. The masks
        equal ``segment``'s up to float rounding (batch norm uses its running statistics: no
        image affects another)."""
        if self.frame_on_device:
            return [r.mask for r in self.segment_frames(images)]
        batches = [self.preprocess(bgr) for bgr in images]
        if self._tune_on_first_frame and batches:
            self._pick_fastest_cpu_path(batches[0])
        groups: dict[object, list[int]] = {}
        for i, batch in enumerate(batches):
            key = i if self.backend in GRAPH_BACKENDS else batch.shape[2:]
            groups.setdefault(key, []).append(i)
        masks: list[Optional[np.ndarray]] = [None] * len(images)
        for members in groups.values():
            logits = self.logits(_stack([batches[i] for i in members]))
            for row, i in enumerate(members):
                masks[i] = self.mask_from_logits(logits[row:row + 1], images[i].shape[:2])
        return masks

    def segment_frames(self, images: Sequence[np.ndarray], wanted: Optional[Sequence[tuple[bool, bool]]] = None,
                       alpha: float = 0.5) -> list[FrameResult]:
        """Mask, and colour mask / overlay where ``wanted`` (colour, overlay) asks, of each
        image (one forward pass per network size); what the node publishes."""
        return self.submit_frames(images, wanted, alpha).result()

    def submit_frames(self, images: Sequence[np.ndarray], wanted: Optional[Sequence[tuple[bool, bool]]] = None,
                      alpha: float = 0.5) -> ReadyFrames:
        """``segment_frames`` without waiting for the device: ``.result()`` waits. A caller
        that submits the next frame before collecting this one overlaps its upload with this
        forward pass. Off the device, the work is done before this returns."""
        wanted = list(wanted) if wanted is not None else [(False, False)] * len(images)
        if len(wanted) != len(images):
            raise ValueError(f"{len(wanted)} output choices for {len(images)} images")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"overlay alpha must be in [0, 1], got {alpha}")
        for bgr in images:
            _check_image(bgr)
        if self._tune_on_first_frame and images:  # backend=auto settles on the first frame's network size
            if self._can_autotune_cuda:
                self._pick_fastest_cuda_path(self._network_size(*images[0].shape[:2]))
            else:
                self._pick_fastest_cpu_path(self.preprocess(images[0]))
        if not self.frame_on_device:
            masks = self.segment_batch(images) if len(images) > 1 else [self.segment(bgr) for bgr in images]
            return ReadyFrames([self._cpu_outputs(*args, alpha) for args in zip(images, masks, wanted, strict=True)])
        with torch.inference_mode():
            return self._frames.submit(images, self._device_forward, wanted, alpha)

    def _cpu_outputs(self, bgr: np.ndarray, mask: np.ndarray, want: tuple[bool, bool], alpha: float) -> FrameResult:
        colours = self.colorize(mask) if any(want) else None
        overlay = self.overlay(bgr, mask, alpha, color_mask=colours) if want[1] else None
        return FrameResult(mask, colours if want[0] else None, overlay)

    def _device_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network on a device batch, for DeviceFrames (which consumes the logits at once,
        so a CUDA graph's output buffer needs no copy)."""
        if self.backend == "torch_compiled":
            return self._compiled(x)
        return self._model(x)

    def mask_from_logits(self, logits: np.ndarray | torch.Tensor, size_hw: tuple[int, int]) -> np.ndarray:
        """(1, C, h, w) logits -> uint8 class ids at ``size_hw`` (``mask_at_size``)."""
        return mask_at_size(logits, size_hw)

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

    def warmup(self, height: Optional[int] = None, width: Optional[int] = None, runs: int = 2) -> None:
        """Run a few frames so first-frame costs (allocations, kernel choice, the ONNX export)
        happen at start-up, not on the robot's first image.

        backend=auto on CPU chooses its path here when the network size is known: the
        inference size, else ``height`` x ``width`` (the camera's). Otherwise the choice waits
        for the first frame, at that frame's size: which path wins depends on the size, and
        timing at 480x360 could pick the slower one for 720p (one size, hence once). Start-up
        then only exports the ONNX graph (size-independent); the first frame's timing runs
        are its warm-up."""
        size = self._network_size(height, width)
        if self._can_autotune_cuda and self.autotune_size is None:
            if size:
                self._pick_fastest_cuda_path(size)
            else:
                self._tune_on_first_frame = True
        if self.backend == "torch_compiled" and size:
            self._compiled.prepare(1, *size)  # compile now, not on the first frame (logged)
        if self._can_autotune and self.autotune_size is None:
            if size:
                self._pick_fastest_cpu_path(self._blank_batch(size))
            else:
                self._tune_on_first_frame = True
        if self.backend in GRAPH_BACKENDS or (self._tune_on_first_frame and self._can_autotune and _ort_available()):
            self._ort.prepare()  # the export does not depend on the size: pay it now
        if size is None and (self._tune_on_first_frame or self.backend in (*GRAPH_BACKENDS, "torch_compiled")):
            return  # timing, a session or compiled code at a guessed size would be for the wrong shapes
        if self.frame_on_device:  # the device's pre/post-processing warms up with the network
            for _ in range(runs):
                self.segment_frames([np.zeros((*(size or _WARMUP_HW), 3), np.uint8)], [(True, True)])
            return
        batch = self._blank_batch(size or _WARMUP_HW)
        for _ in range(runs):
            self.logits(batch)

    def tune(self, height: int, width: int) -> None:
        """backend=auto on CPU: time the execution paths for ``height`` x ``width`` camera
        images (at the inference size when one is set) and keep the fastest, now.

        For a caller that knows the camera's size before its first frame; a no-op for an
        explicit backend or a GPU. Logs the timings on the ``eacnet_core`` logger (INFO)."""
        if height < 1 or width < 1:
            raise ValueError(f"tune needs a positive image size; got height={height} width={width}")
        if self._can_autotune:
            self._pick_fastest_cpu_path(self._blank_batch(self._network_size(height, width)))
        elif self._can_autotune_cuda:
            self._pick_fastest_cuda_path(self._network_size(height, width))

    def _network_size(self, height: Optional[int], width: Optional[int]) -> Optional[tuple[int, int]]:
        """(h, w) the network runs at for images of height x width; None when not known."""
        if self.options.inference_height:
            return self.options.inference_height, self.options.inference_width
        return (height, width) if height and width else None

    def _blank_batch(self, size_hw: tuple[int, int]) -> np.ndarray:
        """A preprocessed black frame at the network size (timing and warm-up input)."""
        return self.preprocess(np.zeros((*size_hw, 3), np.uint8))

    def _pick_fastest_cpu_path(self, batch: np.ndarray, runs: int = 3) -> None:
        """backend=auto on CPU: time torch (channels-last and NCHW) and onnxruntime on this
        machine, model and size, and keep the fastest. All three compute the same fp32
        function (masks agree to float rounding), so the choice is safe; which one wins
        differs by model, size and CPU (on our 2-core EPYC onnxruntime for eacnet_erf, eager
        NCHW torch for eacnet_dab; see docs/RESULTS.md), hence measuring, not guessing.

        Each path's first run (allocation, session) is not counted, except that a path whose
        first run already took over twice the best median so far is dropped there: at 720p
        on a loaded 2-core CPU a torch run took 4 s, and 4 of each made a 48 s first frame."""
        self._tune_on_first_frame = False
        candidates = ([("onnxruntime", False)] if _ort_available() else []) + [("torch", True), ("torch", False)]
        if _ov_available() and _ort_available():  # OpenVINO compiles the graph onnx exports
            candidates.append(("openvino", False))
        self.autotune_ms, dropped = {}, []
        for backend, channels_last in candidates:
            self._use(backend, channels_last)
            path = backend + (":nhwc" if channels_last else ":nchw")
            if backend == "openvino":  # compiling (~0.2 s) is set-up, not a run: do it untimed
                self._ov.runner(batch.shape[2], batch.shape[3])
            first = _elapsed_ms(self.logits, batch)
            if first > 2 * min(self.autotune_ms.values(), default=float("inf")):
                self.autotune_ms[path] = first
                dropped.append(path)
                continue
            self.autotune_ms[path] = float(np.median([_elapsed_ms(self.logits, batch) for _ in range(runs)]))
        best = min(self.autotune_ms, key=self.autotune_ms.get)
        self._use(best.split(":")[0], best.endswith(":nhwc"))
        if self.backend != "openvino":
            self._ov.clear()
        if self.backend not in GRAPH_BACKENDS:
            self._ort.clear()  # not used: free its sessions and graph
        elif self.backend == "openvino":
            self._ort.clear(keep_graph=True)  # OpenVINO compiles other sizes from the graph
        self.autotune_size = (batch.shape[2], batch.shape[3])
        timings = ", ".join(f"{k} {v:.0f} ms" + (" (first run only)" if k in dropped else "")
                            for k, v in self.autotune_ms.items())
        log.info("backend auto at %dx%d: %s -> %s", batch.shape[3], batch.shape[2], timings, best)


    def _pick_fastest_cuda_path(self, size_hw: tuple[int, int], runs: int = 20) -> None:
        """backend=auto on CUDA: time eager torch and torch_compiled (compiled.py: torch.compile
        and a CUDA graph per shape) at the network size, batch 1, and keep the faster. Both run
        the same function at this precision (masks agree to float rounding). Compiling is set-up,
        not a run: it happens first, untimed and logged; a compiler that fails (no Triton, say)
        leaves eager torch, with a warning."""
        self._tune_on_first_frame = False
        x = torch.zeros((1, 3, *size_hw), device=self.device, dtype=DTYPES[self.precision])
        self.autotune_ms = {}
        for backend in TORCH_BACKENDS:
            self._use(backend, self.options.channels_last)
            try:
                with torch.inference_mode():
                    for _ in range(3):  # compiles / captures, picks cuDNN algorithms
                        self._device_forward(x)
                    self.autotune_ms[backend] = _device_ms(self._device_forward, x, self.device, runs)
            except Exception as exc:  # torch.compile raises many types (BackendCompilerFailed, OSError...)
                log.warning("backend auto: %s failed at %dx%d (%s: %s); not used", backend, size_hw[1], size_hw[0],
                            type(exc).__name__, exc)
                self._compiled.clear()
        best = min(self.autotune_ms, key=self.autotune_ms.get)
        self._use(best, self.options.channels_last)
        if best != "torch_compiled":
            self._compiled.clear()
        self.autotune_size = tuple(size_hw)
        log.info("backend auto at %dx%d on %s: %s -> %s", size_hw[1], size_hw[0], self.device,
                 ", ".join(f"{k} {v:.2f} ms" for k, v in self.autotune_ms.items()), best)


def _device_ms(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, device: torch.device,
               runs: int) -> float:
    """Median milliseconds of ``forward(x)``, the device synchronised around each run."""
    def run() -> None:
        forward(x)
        sync(device)

    sync(device)
    return float(np.median([_elapsed_ms(run) for _ in range(runs)]))


def _elapsed_ms(run: Callable[..., object], *args: object) -> float:
    start = time.perf_counter()
    run(*args)
    return 1000 * (time.perf_counter() - start)


def mask_at_size(logits: np.ndarray | torch.Tensor, size_hw: tuple[int, int]) -> np.ndarray:
    """(1, C, h, w) logits -> uint8 (H, W) class ids at ``size_hw``: the argmax at the network's
    size, then a nearest-neighbour resize. The one home of this rule: ``eacnet eval`` scores
    masks made by it, so its mIoU is the mIoU of what the Segmenter and the node publish."""
    return _restore_size(_argmax_classes(logits), size_hw)


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


def _stack(batches: Sequence[np.ndarray]) -> np.ndarray:
    """Preprocessed (1, 3, h, w) frames -> one (N, 3, h, w) batch with the channels-last
    memory ``preprocess`` gives, so the torch path makes no layout copy for it either."""
    if len(batches) == 1:
        return batches[0]
    return np.stack([b[0].transpose(1, 2, 0) for b in batches]).transpose(0, 3, 1, 2)


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
    """'auto' starts as torch, which runs every float precision; on CPU in fp32, warmup(),
    tune() or the first frame then measures the alternatives (``_pick_fastest_cpu_path``).
    int8 is onnxruntime's (a statically quantised graph)."""
    if precision == "int8":
        if backend not in ("auto", "onnxruntime"):
            raise ValueError(f"precision int8 runs on onnxruntime, not {backend}: use backend auto or onnxruntime")
        if not _ort_available():
            raise ValueError("precision int8 needs onnx and onnxruntime (pip install onnx onnxruntime)")
        return "onnxruntime"
    if backend == "onnxruntime" and precision != "fp32":
        raise ValueError(f"the onnxruntime backend runs fp32 and int8; got precision {precision}")
    if backend == "openvino":
        if precision not in OvModels.HINTS:
            raise ValueError(f"the openvino backend runs fp32 and bf16 (on the CPU); got precision {precision}")
        if not (_ov_available() and _ort_available()):
            raise ValueError("backend openvino needs openvino, onnx and onnxruntime (pip install openvino onnx "
                             "onnxruntime, or the package's openvino extra)")
    return "torch" if backend == "auto" else backend


def _default_calibration_root() -> str:
    """$EACNET_DATA or ../shared/data/CamVid when it holds CamVid's train split; else ''."""
    from .datasets import DatasetError, default_data_root

    try:
        root = default_data_root("camvid")
    except DatasetError:
        return ""
    return str(root) if (root / "train").is_dir() else ""


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
