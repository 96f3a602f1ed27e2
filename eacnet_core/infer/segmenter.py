"""The inference API: BGR image in, class-id mask (and colour mask, overlay) out.

Used unchanged by ``eacnet segment``, ``eacnet bag-eval`` and the ROS node, so what the
tools measure is what the robot runs.

Mask back to input size: the network already returns logits at the inference size
(bilinear from 1/8 inside the model); when the camera image is larger we take the
argmax at the inference size and resize the *mask* with nearest neighbour, instead of
upsampling C logit planes and taking the argmax there. See ``restore_size``.

Which engine, precision and compiled path run is backend/precision auto's choice, made by
the ``Chooser`` beside the Segmenter (chooser.py): the Segmenter preprocesses, runs the
network on the path chosen, and postprocesses.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np
import torch
from torch import nn

from eacnet_core.checkpoint import (
    checkpoint_dataset,
    load_checkpoint,
    missing_weights_error,
    model_from_checkpoint,
    weights_for,
)
from eacnet_core.data.classes import CAMVID, DatasetInfo, generic
from eacnet_core.data.transforms import normalisation_lut
from eacnet_core.infer.chooser import Candidate, Chooser
from eacnet_core.infer.compiled import CompiledForward
from eacnet_core.infer.confidence import ids_and_confidence
from eacnet_core.infer.device_frame import DeviceFrames, FrameResult, ReadyFrames
from eacnet_core.infer.engines import (
    Engine,
    OrtSessions,
    OvModels,
    _nncf_available,
    _ort_available,
    _ov_available,
    return_freed_memory,  # noqa: F401  (the node imports it from here)
)
from eacnet_core.infer.masks import (
    Palette,
    argmax_classes,
    check_alpha,
    check_image,
    mask_at_size,
    restore_size,
    stack_batches,
    wanted_outputs,
)
from eacnet_core.models import build_model
from eacnet_core.runtime import DTYPES, configure_torch, resolve_device, resolve_precision

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
    # folder of camera images); "" = $EACNET_DATA or ../shared/data/CamVid when present. precision auto
    # builds int8 models only from frames given here; without them it uses cached ones.
    calibration_data: str = ""
    choice_cache: bool = True  # remember auto's choice in the user cache (choice.ChoiceCache)
    compiled_shapes: int = 4  # backend torch_compiled: (batch, height, width) shapes kept compiled; LRU beyond
    compile_mode: str = "auto"  # backend torch_compiled: compiled.COMPILE_MODES (auto: inductor, + CUDA graphs on CUDA)
    # the frame's pre/post-processing as tensor ops on the model's device (device_frame.py):
    # auto = on CUDA with a torch backend; on = also on the CPU (tests); off = OpenCV/numpy on the CPU
    frame_on_device: str = "auto"


class Segmenter:
    """A loaded, ready-to-run segmentation model.

    ``segment(bgr)`` returns a uint8 (H, W) class-id mask at the input image's size.

    On the CPU, backend=auto and precision=auto time their candidates (``chooser.Candidate``:
    torch, onnxruntime, OpenVINO; fp32, bf16 where the CPU runs it natively, int8 where its
    model is cached or calibration frames are given) and keep the fastest, at the size the
    network will run at: in ``warmup()`` when that size is known (an inference size, or the
    size passed), else on the first frame after ``warmup()``; ``tune()`` forces it. A reduced
    precision is eligible only if its masks equal fp32's on >= 99% of the pixels of calibration
    frames and/or the first camera frame. The choice is remembered unless the machine was busy
    while it was measured. The ``Chooser`` beside it (``chooser``) makes it; ``autotune_*`` show it.

    The confidence (``segment_confidence``, ``segment_frames`` with a third ``wanted`` flag)
    plays no part in that choice: candidates are timed and checked on their logits (and
    OpenVINO's argmax graph); the chosen engine then compiles its ids + confidence graph on
    the first frame that asks for it, a separate model beside the ids-only one, so frames
    without confidence pay nothing for it. A remembered choice serves both alike.
    """

    def __init__(self, model: nn.Module, model_name: str, dataset: DatasetInfo,
                 options: SegmenterOptions = SegmenterOptions(), weights: Optional[Path] = None,
                 temperature: float = 1.0):
        _check_size(options.inference_height, options.inference_width)
        if not (isinstance(temperature, (int, float)) and 0.05 <= temperature <= 20.0):
            raise ValueError(f"temperature must be a number in [0.05, 20], got {temperature!r}")
        #: the confidence is the softmax maximum of logits / temperature (checkpoint key
        #: "temperature", fitted on val by `eacnet bench-confidence --fit-temperature`; 1.0 without)
        self.temperature = float(temperature)
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
        configure_torch(self.device, options.threads)
        self._norm_lut = normalisation_lut(dataset.mean, dataset.std)  # one cv2.LUT pass, as training
        self.palette = Palette(dataset.palette_array())
        self._model = model.eval()
        #: every backend but eager torch, by (backend, precision) (engines.Engine), made on first
        #: use: ``logits`` runs ``engines[(backend, precision)]`` (torch_compiled: compiled.py)
        self.engines: dict[tuple[str, str], Engine] = {}
        self._weights_digest: Optional[str] = None
        self._frames = self._device_frames(DTYPES.get(self.precision, torch.float32))
        #: backend/precision auto: which path runs (CPU candidates, CUDA eager or compiled, when)
        self.chooser = Chooser(self)
        self.use(Candidate(self.backend, self.precision, options.channels_last))

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, options: SegmenterOptions = SegmenterOptions(),
                        expect_model: Optional[str] = None) -> Segmenter:
        ckpt = load_checkpoint(path, expect_model=expect_model)
        model = model_from_checkpoint(ckpt, path)
        return cls(model, ckpt["model"], checkpoint_dataset(ckpt), options, weights=Path(path),
                   temperature=ckpt.get("temperature", 1.0))

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

    def _int8_builder(self, backend: str) -> Callable[[bytes], object]:
        """fp32 dynamic-size graph -> the int8 model of ``backend`` for these weights (cached;
        see quantize.py). precision auto builds only from frames given (``calibration_data``):
        building takes a while, so it is never started by default; cached models serve."""
        from eacnet_core.infer.quantize import (
            CalibrationSpec,
            default_calibration_root,
            int8_graph,
            openvino_int8_model,
        )

        root = self.options.calibration_data or ("" if self.chooser.auto_precision else default_calibration_root())
        height, width = self._network_size(None, None) or _WARMUP_HW
        spec = CalibrationSpec(root, height=height, width=width) if root else None
        build = int8_graph if backend == "onnxruntime" else openvino_int8_model
        return functools.partial(build, self.model_name, weights=self.weights, weights_digest=self.weights_digest,
                                 spec=spec, mean=self.dataset.mean, std=self.dataset.std)

    @property
    def weights_digest(self) -> str:
        """sha256 of the weights file (or of the in-memory weights); keys the caches."""
        if self._weights_digest is None:
            from eacnet_core.infer.quantize import file_digest, state_digest

            self._weights_digest = (file_digest(self.weights) if self.weights
                                    else state_digest(self._model.state_dict()))
        return self._weights_digest

    def engine(self, backend: str, precision: str) -> Engine:
        """The engine running ``backend`` at ``precision``, made on first use (OpenVINO and
        onnxruntime's int8 start from onnxruntime's checked fp32 graph: one export)."""
        key = (backend, precision)
        if key not in self.engines:
            threads, capacity = self.options.threads, self.options.ort_sessions
            if backend == "onnxruntime" and precision == "fp32":
                made: Engine = OrtSessions(self._model, self.device, threads, capacity)
            elif backend == "onnxruntime" and precision == "int8":
                made = OrtSessions(self._model, self.device, threads, capacity, self._int8_builder(backend),
                                   source=self.engine("onnxruntime", "fp32"))
            elif backend == "openvino":
                int8 = self._int8_builder(backend) if precision == "int8" else None
                made = OvModels(self.engine("onnxruntime", "fp32"), threads, capacity, precision, int8,
                                temperature=self.temperature)
            elif backend == "torch_compiled" and precision in DTYPES:  # the torch model itself, compiled
                made = CompiledForward(self._model, self.device, DTYPES[precision], self.options.channels_last,
                                       mode=self.options.compile_mode, capacity=self.options.compiled_shapes)
            else:
                raise ValueError(f"no engine runs {backend} at {precision}")
            self.engines[key] = made
        return self.engines[key]

    @property
    def _compiled(self) -> CompiledForward:
        """The compiled torch forward at the running precision (backend torch_compiled)."""
        return self.engine("torch_compiled", self.precision)

    def drop_compiled(self) -> None:
        """Free the compiled code and captured graphs (backend auto on CUDA kept eager torch)."""
        engine = self.engines.pop(("torch_compiled", self.precision), None)
        if engine is not None:
            engine.clear()

    def release_engines(self, chosen: Candidate) -> None:
        """Free every engine but the one running ``chosen`` (what backend auto built to time
        the others). OpenVINO keeps onnxruntime's fp32 graph: it compiles other sizes from it."""
        graph_source = ("onnxruntime", "fp32")
        for key in list(self.engines):
            if key == (chosen.backend, chosen.precision):
                continue
            if key == graph_source and chosen.backend == "openvino":
                self.engines[key].clear(keep_graph=True)
            else:  # (onnxruntime's int8 graph, once made, needs the fp32 one no more)
                self.engines.pop(key).clear()

    @property
    def loaded_from_file(self) -> bool:
        """The weights came from a checkpoint file rather than a random initialisation; it says
        nothing about how well they were trained (was ``trained``, which suggested it did)."""
        return self.weights is not None

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    def use(self, candidate: Candidate) -> None:
        """Switch execution path (the Chooser's, to time or keep a candidate); the model's
        memory format follows the torch layout (the compiled engine's for torch_compiled).
        Under precision auto the torch model stays fp32 (a round trip through bf16 would round it)."""
        self.backend, self.precision = candidate.backend, candidate.precision
        self.channels_last = candidate.channels_last and candidate.backend == "torch"
        if candidate.backend in TORCH_BACKENDS:
            layout = self._compiled.layout if candidate.backend == "torch_compiled" else (
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
        frames = DeviceFrames(self.device, dtype, self.dataset.mean, self.dataset.std, self.palette.bgr,
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
        """(height, width) of each live onnxruntime session at the running precision (fp32
        when another backend runs), least recently used first."""
        engine = self.engines.get(("onnxruntime", self.precision if self.backend == "onnxruntime" else "fp32"))
        return engine.sizes if engine is not None else ()

    def describe(self) -> str:
        size = (f"{self.options.inference_width}x{self.options.inference_height}"
                if self.options.inference_height else "input size")
        weights = str(self.weights) if self.weights else "UNTRAINED (random weights)"
        precision, backend = self.chooser.described()
        frames = " frame=on-device" if self.frame_on_device else ""
        return (f"model={self.model_name} classes={self.num_classes} device={self.device} "
                f"precision={precision} backend={backend} inference={size}{frames} weights={weights}")

    # ------------------------------------------------------------------ the pipeline
    def preprocess(self, bgr: np.ndarray) -> np.ndarray:
        """BGR uint8 (H, W, 3) -> normalised RGB float32 (1, 3, h, w) at the inference size."""
        check_image(bgr)
        h, w = self.options.inference_height, self.options.inference_width
        if h and (bgr.shape[0], bgr.shape[1]) != (h, w):
            bgr = cv2.resize(bgr, (w, h), interpolation=cv2.INTER_LINEAR)
        rgb = cv2.LUT(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), self._norm_lut)
        return rgb.transpose(2, 0, 1)[None]  # a view: channels-last memory, what the torch path wants

    def logits(self, batch: np.ndarray) -> np.ndarray | torch.Tensor:
        """Forward pass on a preprocessed (N, 3, h, w) batch; returns (N, C, h, w) logits.
        onnxruntime's graphs take N = 1 only (``segment_batch`` runs them one by one)."""
        if self.backend != "torch":
            return self.engine(self.backend, self.precision).runner(batch.shape[2], batch.shape[3])(batch)
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
        if self.chooser.pending:
            self.chooser.settle(batch)
        return restore_size(self.class_ids(batch), bgr.shape[:2])

    def class_ids(self, batch: np.ndarray) -> np.ndarray:
        """uint8 (h, w) class ids of a preprocessed (1, 3, h, w) batch at the network size: the
        engine's own argmax where it has one (``graph_ids``), else the argmax of ``logits``.
        Both keep the first maximum, so the ids are the same wherever the logits are."""
        ids = self.graph_ids(batch)
        return ids if ids is not None else argmax_classes(self.logits(batch))

    def class_ids_confidence(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (h, w) class ids and confidence (the softmax maximum, 255 = 1.0:
        ``confidence.ids_and_confidence``) of a preprocessed (1, 3, h, w) batch at the network
        size: computed inside the running engine where it can (OpenVINO: a second output of
        the graph beside its argmax), else from ``logits``."""
        in_graph = self.graph_ids_confidence(batch)
        return in_graph if in_graph is not None else ids_and_confidence(self.logits(batch), self.temperature)

    def segment_confidence(self, bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``segment``'s mask and the confidence of each of its pixels (uint8, 255 = 1.0), both
        at the input image's size (nearest neighbour, as the mask)."""
        result = self.segment_frames([bgr], [(False, False, True)])[0]
        return result.mask, result.confidence

    def graph_ids(self, batch: np.ndarray) -> Optional[np.ndarray]:
        """The class ids computed inside the running engine (its ``ids_runner``); None where
        the engine has no argmax of its own (torch, onnxruntime)."""
        return self._in_graph("ids_runner", batch)

    def graph_ids_confidence(self, batch: np.ndarray) -> Optional[tuple[np.ndarray, np.ndarray]]:
        """The class ids and the confidence computed inside the running engine (its
        ``ids_confidence_runner``); None where the engine has no such graph (torch, onnxruntime)."""
        return self._in_graph("ids_confidence_runner", batch)

    def _in_graph(self, runner_name: str, batch: np.ndarray) -> Any:
        """Run the engine's ``runner_name(height, width)`` on ``batch``; None where it has none."""
        if self.backend == "torch":
            return None
        runner = getattr(self.engine(self.backend, self.precision), runner_name, None)
        return None if runner is None else runner(batch.shape[2], batch.shape[3])(batch)

    def mask_from_ids(self, ids: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
        """Class ids at the network size -> the mask at ``size_hw`` (nearest neighbour, only
        when the sizes differ)."""
        return restore_size(ids, size_hw)

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
        return [mask for mask, _ in self._segment_many(images, [False] * len(images))]

    def _segment_many(self, images: Sequence[np.ndarray],
                      confidence: Sequence[bool]) -> list[tuple[np.ndarray, Optional[np.ndarray]]]:
        """``segment_batch``'s work on the CPU path: (mask, confidence where asked, else None)
        per image, at its own size."""
        batches = [self.preprocess(bgr) for bgr in images]
        if self.chooser.pending and batches:
            self.chooser.settle(batches[0])
        groups: dict[object, list[int]] = {}
        for i, batch in enumerate(batches):
            key = i if self.backend in GRAPH_BACKENDS else batch.shape[2:]
            groups.setdefault(key, []).append(i)
        out: list[tuple[np.ndarray, Optional[np.ndarray]]] = [None] * len(images)  # type: ignore[list-item]
        for members in groups.values():
            if self.backend in GRAPH_BACKENDS:  # one image per group: the engine's own argmax where it has one
                i = members[0]
                size = images[i].shape[:2]
                if confidence[i]:
                    ids, conf = self.class_ids_confidence(batches[i])
                    out[i] = (restore_size(ids, size), restore_size(conf, size))
                else:
                    out[i] = (restore_size(self.class_ids(batches[i]), size), None)
                continue
            logits = self.logits(stack_batches([batches[i] for i in members]))
            for row, i in enumerate(members):
                size = images[i].shape[:2]
                if confidence[i]:
                    ids, conf = ids_and_confidence(logits[row:row + 1], self.temperature)
                    out[i] = (restore_size(ids, size), restore_size(conf, size))
                else:
                    out[i] = (self.mask_from_logits(logits[row:row + 1], size), None)
        return out

    def segment_frames(self, images: Sequence[np.ndarray], wanted: Optional[Sequence[Sequence[bool]]] = None,
                       alpha: float = 0.5) -> list[FrameResult]:
        """Mask, and colour mask / overlay / confidence where ``wanted`` asks, of each image
        (one forward pass per network size); what the node publishes. ``wanted``: per image
        (colour, overlay) or (colour, overlay, confidence); the confidence (uint8, 255 = a
        softmax maximum of 1.0, at the image's size) is computed only where asked."""
        return self.submit_frames(images, wanted, alpha).result()

    def submit_frames(self, images: Sequence[np.ndarray], wanted: Optional[Sequence[Sequence[bool]]] = None,
                      alpha: float = 0.5) -> ReadyFrames:
        """``segment_frames`` without waiting for the device: ``.result()`` waits. A caller
        that submits the next frame before collecting this one overlaps its upload with this
        forward pass. Off the device, the work is done before this returns."""
        wanted = wanted_outputs(wanted, len(images))
        check_alpha(alpha)
        for bgr in images:
            check_image(bgr)
        if images:  # backend=auto settles on the first frame's network size
            self.chooser.first_frame(images[0])
        if not self.frame_on_device:
            if not any(w[2] for w in wanted):
                masks = self.segment_batch(images) if len(images) > 1 else [self.segment(bgr) for bgr in images]
                pairs = [(mask, None) for mask in masks]
            else:
                pairs = self._segment_many(images, [w[2] for w in wanted])
            return ReadyFrames([self._cpu_outputs(bgr, mask, conf, want, alpha)
                                for bgr, (mask, conf), want in zip(images, pairs, wanted, strict=True)])
        with torch.inference_mode():
            return self._frames.submit(images, self.device_forward, wanted, alpha, self.temperature)

    def _cpu_outputs(self, bgr: np.ndarray, mask: np.ndarray, confidence: Optional[np.ndarray],
                     want: tuple[bool, bool, bool], alpha: float) -> FrameResult:
        colours = self.colorize(mask) if want[0] or want[1] else None
        overlay = self.overlay(bgr, mask, alpha, color_mask=colours) if want[1] else None
        return FrameResult(mask, colours if want[0] else None, overlay, confidence)

    def device_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network on a device batch, for DeviceFrames (which consumes the logits at once,
        so a CUDA graph's output buffer needs no copy) and the Chooser's CUDA timing."""
        if self.backend == "torch_compiled":
            return self._compiled(x)
        return self._model(x)

    def mask_from_logits(self, logits: np.ndarray | torch.Tensor, size_hw: tuple[int, int]) -> np.ndarray:
        """(1, C, h, w) logits -> uint8 class ids at ``size_hw`` (``mask_at_size``)."""
        return mask_at_size(logits, size_hw)

    def colorize(self, mask: np.ndarray) -> np.ndarray:
        """BGR colour mask; ids outside the palette (e.g. ignore) are black."""
        return self.palette.colorize(mask)

    def overlay(self, bgr: np.ndarray, mask: np.ndarray, alpha: float = 0.5,
                color_mask: Optional[np.ndarray] = None) -> np.ndarray:
        """alpha * colour mask + (1 - alpha) * image, BGR uint8."""
        return self.palette.overlay(bgr, mask, alpha, color_mask)

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
        self.chooser.at_warmup(size)
        if self.backend == "torch_compiled" and size:
            self._compiled.prepare(1, *size)  # compile now, not on the first frame (logged)
        if self.backend in GRAPH_BACKENDS:
            self.engine(self.backend, self.precision).prepare()  # size-independent: pay it now
        elif self.chooser.pending and self.chooser.on_cpu and _ort_available():
            self.engine("onnxruntime", "fp32").prepare()  # the export does not depend on the size
        if size is None and (self.chooser.pending or self.backend in (*GRAPH_BACKENDS, "torch_compiled")):
            return  # timing, a session or compiled code at a guessed size would be for the wrong shapes
        if self.frame_on_device:  # the device's pre/post-processing warms up with the network
            for _ in range(runs):
                self.segment_frames([np.zeros((*(size or _WARMUP_HW), 3), np.uint8)], [(True, True)])
            return
        batch = self._blank_batch(size or _WARMUP_HW)
        for _ in range(runs):
            self.logits(batch)

    def tune(self, height: int, width: int) -> None:
        """On the CPU with backend or precision auto: time the candidates for ``height`` x
        ``width`` camera images (at the inference size when one is set) and keep the fastest,
        now. Reduced precisions are checked on calibration frames; without any at hand they
        wait (fp32 only now, ``autotune_complete`` False) for a camera frame: through
        ``segment``, or ``chosen_copy`` (the node).

        For a caller that knows the camera's size before its first frame; a no-op for an
        explicit backend and precision or a GPU. Logs the timings on the ``eacnet_core`` logger (INFO)."""
        if height < 1 or width < 1:
            raise ValueError(f"tune needs a positive image size; got height={height} width={width}")
        self.chooser.tune(self._network_size(height, width))

    @property
    def chooses_on_cpu(self) -> bool:
        """backend or precision auto on the CPU, with more than one candidate to time."""
        return self.chooser.on_cpu

    # what auto chose (the Chooser's record of it)
    @property
    def autotune_ms(self) -> dict[str, float]:
        """The last timing: candidate label -> least ms of its runs (CUDA: backend -> median ms)."""
        return self.chooser.ms

    @property
    def autotune_agreement(self) -> dict[str, float]:
        """Reduced precisions: the share of pixels whose class equals fp32's."""
        return self.chooser.agreement

    @property
    def autotune_dropped(self) -> list[str]:
        """Candidates dropped after their first runs (not eligible)."""
        return self.chooser.dropped

    @property
    def autotune_size(self) -> Optional[tuple[int, int]]:
        """(height, width) the choice was made at; None before it."""
        return self.chooser.size

    @property
    def autotune_complete(self) -> bool:
        """Reduced precisions were checked too (or none is a candidate)."""
        return self.chooser.complete

    def network_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) the network runs at for ``height`` x ``width`` images."""
        return self._network_size(height, width)

    def chosen_copy(self, bgr: np.ndarray) -> Segmenter:
        """A second Segmenter, with a copy of the model, that has made the CPU auto choice for
        ``bgr``'s network size (the frame, with calibration frames at hand, checks reduced
        precisions). Nothing of this one is touched, so it may keep serving frames on another
        thread meanwhile (the node measures a new camera size so); ``adopt`` takes the result."""
        twin = Segmenter(copy.deepcopy(self._model), self.model_name, self.dataset, self.options, self.weights,
                         temperature=self.temperature)
        twin._weights_digest = self._weights_digest
        twin.chooser = self.chooser.beside(twin)
        batch = twin.preprocess(bgr)
        size = (batch.shape[2], batch.shape[3])
        twin.chooser.choose_cpu(batch, probes=[batch, *twin.chooser.calibration_probes(size)])
        return twin

    def adopt(self, twin: Segmenter) -> None:
        """Run the path ``twin`` (``chosen_copy``) chose from now on, with the engine it built:
        called between frames by the thread that runs them."""
        key = (twin.backend, twin.precision)
        if key in twin.engines:
            self.engines[key] = twin.engines.pop(key)
        self.chooser.adopt(twin.chooser)

    def settle(self, batch: np.ndarray) -> None:
        """Make the auto choice now, if it is still open, on this preprocessed frame (1, 3, h, w)
        at the network size: what the first frame does in ``segment``. The frame, with any
        calibration frames at hand, is what reduced precisions are checked on. For callers
        that preprocess themselves (``eacnet eval``)."""
        self.chooser.settle(batch)

    def _network_size(self, height: Optional[int], width: Optional[int]) -> Optional[tuple[int, int]]:
        """(h, w) the network runs at for images of height x width; None when not known."""
        if self.options.inference_height:
            return self.options.inference_height, self.options.inference_width
        return (height, width) if height and width else None

    def _blank_batch(self, size_hw: tuple[int, int]) -> np.ndarray:
        """A preprocessed black frame at the network size (timing and warm-up input)."""
        return self.preprocess(np.zeros((*size_hw, 3), np.uint8))


def _resolve_backend(backend: str, precision: str) -> str:
    """'auto' starts as torch, which runs every float precision; on CPU, warmup(), tune() or
    the first frame then measures the alternatives (``Chooser.choose_cpu``). int8 starts
    as onnxruntime's (a statically quantised graph); OpenVINO's (NNCF) is the other."""
    if precision == "int8":
        if backend not in ("auto", "onnxruntime", "openvino"):
            raise ValueError(f"precision int8 runs on onnxruntime or openvino, not {backend}: use backend auto, "
                             "onnxruntime or openvino")
        if not _ort_available():
            raise ValueError("precision int8 needs onnx and onnxruntime (pip install onnx onnxruntime)")
        if backend == "openvino" and not (_ov_available() and _nncf_available()):
            raise ValueError("precision int8 on openvino needs openvino and nncf (the package's openvino extra)")
        return "onnxruntime" if backend == "auto" else backend
    if backend == "onnxruntime" and precision != "fp32":
        raise ValueError(f"the onnxruntime backend runs fp32 and int8; got precision {precision}")
    if backend == "openvino":
        if precision not in OvModels.HINTS:
            raise ValueError(f"the openvino backend runs fp32, bf16 and int8 (on the CPU); got precision {precision}")
        if not (_ov_available() and _ort_available()):
            raise ValueError("backend openvino needs openvino, onnx and onnxruntime (pip install openvino onnx "
                             "onnxruntime, or the package's openvino extra)")
    return "torch" if backend == "auto" else backend


def _check_size(height: int, width: int) -> None:
    if height < 0 or width < 0 or (height == 0) != (width == 0):
        raise ValueError(f"inference size must be two positive numbers or both 0 (the image's own size); "
                         f"got height={height} width={width}")
