"""Execution engines beside the Segmenter: the exported-graph backends (onnxruntime,
OpenVINO) and what they keep (graphs, per-size sessions and compiled models).

The Segmenter does the image work (preprocess, mask, colour) and runs the network itself
with torch; any other way of running it is an *engine* with one small interface
(``Engine``), so a new backend plugs in without touching the Segmenter's pipeline:

* ``prepare()`` -- size-independent set-up (e.g. the ONNX export), so no frame pays for it;
* ``runner(height, width)`` -- a callable for that network size, created on first use and
  kept (at most ``capacity`` sizes, least recently used dropped): it takes the
  preprocessed batch ``Segmenter.preprocess`` returns, a float32 (1, 3, h, w) numpy array
  (any strides), and returns the (1, C, h, w) logits (numpy, or a torch tensor);
* ``sizes`` -- the (height, width) of each live runner, least recently used first;
* ``clear()`` -- drop every runner (and what is not needed any more) and return the memory.

An engine may also offer ``ids_runner(height, width)``: the same batch in, the uint8 (h, w)
class ids out, the argmax computed inside the engine (the first maximum wins, as numpy's and
torch's argmax), so no logit planes leave it. The Segmenter uses it where it exists
(``Segmenter.class_ids``); OpenVINO's does. Likewise ``ids_confidence_runner(height, width)``:
the ids and the uint8 confidence (softmax maximum, ``confidence.ids_and_confidence``) as two
outputs of the engine (``Segmenter.class_ids_confidence``).

The Segmenter keeps its engines by backend name (``Segmenter.engines``) and calls
``engines[backend].runner(h, w)(batch)`` for every backend but torch.
"""

from __future__ import annotations

import copy
import ctypes
import functools
import importlib.util
import logging
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Optional, Protocol, Union

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

# The dynamic-size ONNX graph is traced at an odd size, which no output stride divides, so the
# input padding branch (pad_to_stride) stays in the graph with amounts computed from the input;
# it is then checked against torch at an aligned size and at another unaligned one.
_EXPORT_HW = (37, 53)
_CHECK_HW = ((32, 48), (45, 61))
_NO_DYNAMIC_INT8 = ("precision int8 needs the dynamic-size ONNX graph, which does not match torch for this model: "
                    "use fp32")

#: (1, 3, h, w) float32 preprocessed batch -> (1, C, h, w) logits.
Runner = Callable[[np.ndarray], Union[np.ndarray, torch.Tensor]]


class Engine(Protocol):
    """What the Segmenter needs of a way to run the network (see the module docstring)."""

    capacity: int

    @property
    def sizes(self) -> tuple[tuple[int, int], ...]: ...

    def prepare(self) -> None: ...

    def runner(self, height: int, width: int) -> Runner: ...

    def clear(self) -> None: ...


class OrtSessions:
    """onnxruntime sessions by input size, at most ``capacity``: the least recently used is
    dropped (with it its 25-50 MB at 480x360: weights copy, memory arena), so a stream whose size
    changes cannot grow the process without bound.

    The model is exported once, with dynamic height and width (~0.5 s); each size then gets a
    session from those bytes with H and W fixed (free-dimension overrides), ~0.02 s instead of
    a 0.3-2 s re-export per size (4 s under load). Fixed per-session sizes let onnxruntime
    optimise for a static shape as a per-size export did (measured: same speed within noise;
    one fully dynamic session was 6% slower for eacnet_erf at 720p in one run). If the graph
    fails its check against torch (a size-dependent Python branch frozen by tracing), each
    size is exported on its own, as before."""

    def __init__(self, model: nn.Module, device: torch.device, threads: int, capacity: int,
                 int8: Optional[Callable[[bytes], bytes]] = None, source: Optional[OrtSessions] = None):
        self.capacity = capacity
        self._model, self._device, self._threads = model, device, threads
        self._int8 = int8  # turns the checked fp32 dynamic-size graph into the int8 one
        self._source = source  # int8: the fp32 sessions whose checked graph it quantises (one export)
        self._sessions: OrderedDict[tuple[int, int], object] = OrderedDict()
        self._graph: Optional[bytes] = None  # the dynamic-size ONNX, once exported
        self._per_size = False  # the dynamic graph failed its check: export per size

    @property
    def sizes(self) -> tuple[tuple[int, int], ...]:
        return tuple(self._sessions)

    def prepare(self) -> None:
        """Export the dynamic-size graph now, so that no frame pays for it."""
        if self._graph is None and not self._per_size:
            self._graph = self._export_dynamic()

    def get(self, height: int, width: int):
        """The session for this input size, created (and the oldest dropped) if needed."""
        key = (height, width)
        if key in self._sessions:
            self._sessions.move_to_end(key)
            return self._sessions[key]
        if len(self._sessions) >= self.capacity:  # drop first: never more than capacity alive
            dropped = self._sessions.popitem(last=False)[0]  # keep no reference: its memory goes now
            return_freed_memory()
            log.debug("onnxruntime: dropped the %dx%d session (keeping %d)", dropped[1], dropped[0], self.capacity)
        self._sessions[key] = self._create(height, width)
        return self._sessions[key]

    def runner(self, height: int, width: int) -> Runner:
        session = self.get(height, width)
        return lambda batch: session.run(None, {"image": np.ascontiguousarray(batch)})[0]

    def dynamic_graph(self) -> Optional[bytes]:
        """The checked fp32 dynamic-size graph (exported now if needed); None where the model
        needs one graph per size. What the int8 builders quantise."""
        if self._int8 is not None:
            raise RuntimeError("dynamic_graph is the fp32 sessions' graph")
        self.prepare()
        return self._graph

    def clear(self, keep_graph: bool = False) -> None:
        self._sessions.clear()
        if not keep_graph:
            self._graph = None
        return_freed_memory()

    def graph(self, height: int, width: int) -> bytes:
        """The fp32 ONNX graph that runs at ``height`` x ``width`` (the dynamic one, else a
        per-size export); what OpenVINO compiles."""
        self.prepare()
        if self._graph is not None and self._int8 is None:
            return self._graph
        return _export_bytes(_cpu_copy(self._model), height, width)

    def _create(self, height: int, width: int):
        from eacnet_core.infer.export import ort_session  # onnx is an optional extra

        self.prepare()
        if self._graph is not None:
            return ort_session(self._graph, self._device, self._threads, size=(height, width))
        return ort_session(_export_bytes(_cpu_copy(self._model), height, width), self._device, self._threads)

    def _export_dynamic(self) -> Optional[bytes]:
        if self._int8 is not None and self._source is not None:
            fp32 = self._source.dynamic_graph()
            if fp32 is None:
                raise RuntimeError(_NO_DYNAMIC_INT8)
            return self._int8(fp32)
        model = _cpu_copy(self._model)
        graph = _export_bytes(model, *_EXPORT_HW, dynamic_size=True)
        if _graph_matches(graph, model, self._threads):
            return graph if self._int8 is None else self._int8(graph)
        if self._int8 is not None:
            raise RuntimeError(_NO_DYNAMIC_INT8)
        log.warning("onnxruntime: the dynamic-size ONNX graph does not match torch at %s; exporting one graph "
                    "per input size instead", ", ".join(f"{w}x{h}" for h, w in _CHECK_HW))
        self._per_size = True
        return None


class OvModels:
    """OpenVINO's CPU plugin: one compiled model per input size from the ONNX graph that
    onnxruntime runs (``OrtSessions.graph``), at most ``capacity`` kept, least recently used
    dropped. Offered because it measured clearly faster for the DABNet models on our CPU
    (docs/RESULTS.md); backend=auto times it beside the others. The precision is asked for
    explicitly: on CPUs with bf16 units the plugin otherwise computes "fp32" models in bf16."""

    #: precision -> the plugin's inference precision hint; int8 runs NNCF's quantised model,
    #: its float remainder in f32 (what the accuracy check of precision auto measured).
    HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}

    #: What a compiled model returns: the logits (``runner``), the class ids (``ids_runner``),
    #: or the ids and the confidence (``ids_confidence_runner``).
    OUTPUTS = ("logits", "ids", "ids+confidence")

    def __init__(self, graphs: OrtSessions, threads: int, capacity: int, precision: str,
                 int8: Optional[Callable[[bytes], object]] = None, temperature: float = 1.0):
        # compiled models by (height, width, outputs): at most ``capacity`` sizes, each with up to
        # one model per entry of OUTPUTS (a node whose confidence subscriber comes and goes uses two)
        if precision == "int8" and int8 is None:
            raise ValueError("OpenVINO int8 needs a builder of the quantised model")
        self._graphs, self._threads, self.capacity, self._precision = graphs, threads, capacity, precision
        self._int8 = int8  # the checked fp32 dynamic-size graph -> NNCF's int8 openvino.Model
        self._int8_model = None  # built (or read from its cache) once, reshaped per size
        self._temperature = temperature
        self._compiled: OrderedDict[tuple[int, int, str], Callable[[np.ndarray], list]] = OrderedDict()

    @property
    def sizes(self) -> tuple[tuple[int, int], ...]:
        return tuple(dict.fromkeys(key[:2] for key in self._compiled))

    def prepare(self) -> None:
        self._graphs.prepare()
        if self._int8 is not None:
            self._quantised()

    def runner(self, height: int, width: int) -> Runner:
        run = self._get(height, width, "logits")
        return lambda batch: run(batch)[0]

    def ids_runner(self, height: int, width: int) -> Callable[[np.ndarray], np.ndarray]:
        """(1, 3, h, w) float32 batch -> uint8 (h, w) class ids, the argmax in the compiled model:
        at 480x360 it replaces copying 11 logit planes out and a 1.2-1.6 ms argmax over them."""
        run = self._get(height, width, "ids")
        return lambda batch: run(batch)[0][0]

    def ids_confidence_runner(self, height: int, width: int) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """(1, 3, h, w) float32 batch -> uint8 (h, w) class ids and uint8 (h, w) confidence, both
        computed in the compiled model (``_with_argmax``); its own compiled model, so frames
        without a confidence subscriber pay nothing for it."""
        run = self._get(height, width, "ids+confidence")

        def ids_confidence(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            ids, confidence = run(batch)  # the confidence at every second row and column (_with_argmax)
            full = np.repeat(np.repeat(confidence[0], 2, axis=0), 2, axis=1)[:height, :width]
            return ids[0], np.ascontiguousarray(full)
        return ids_confidence

    def _get(self, height: int, width: int, outputs: str) -> Callable[[np.ndarray], list]:
        key = (height, width, outputs)
        if key not in self._compiled:
            sizes = self.sizes
            if (height, width) not in sizes and len(sizes) >= self.capacity:  # drop the oldest size's models
                for old in [k for k in self._compiled if k[:2] == sizes[0]]:
                    del self._compiled[old]
            self._compiled[key] = self._compile(height, width, outputs)
        self._compiled.move_to_end(key)
        return self._compiled[key]

    def clear(self) -> None:
        if self._compiled:
            self._compiled.clear()
            return_freed_memory()

    def _compile(self, height: int, width: int, outputs: str = "logits") -> Callable[[np.ndarray], list]:
        core = _ov_core()
        if self._int8 is not None:
            model = self._quantised().clone()
        else:
            folder = Path(tempfile.mkdtemp(prefix="eacnet-openvino-"))
            try:  # OpenVINO reads ONNX from a file
                (folder / "model.onnx").write_bytes(self._graphs.graph(height, width))
                model = core.read_model(str(folder / "model.onnx"))
            finally:
                shutil.rmtree(folder, ignore_errors=True)
        model.reshape([1, 3, height, width])
        if outputs != "logits":
            model = _with_argmax(model, self._temperature if outputs == "ids+confidence" else None)
        config = {"INFERENCE_PRECISION_HINT": self.HINTS[self._precision], "PERFORMANCE_HINT": "LATENCY"}
        if self._threads > 0:
            config["INFERENCE_NUM_THREADS"] = self._threads
        return _OvRunner(core.compile_model(model, "CPU", config))

    def _quantised(self):
        if self._int8_model is None:
            graph = self._graphs.dynamic_graph()
            if graph is None:
                raise RuntimeError(_NO_DYNAMIC_INT8)
            self._int8_model = self._int8(graph)
        return self._int8_model


def _with_argmax(model, temperature: Optional[float] = None):
    """``model`` with its logits replaced by their argmax over classes, as uint8 (1, h, w).
    TopK with k=1 and a stable sort keeps the lowest class id among equal maxima (argmax's rule);
    ids fit uint8 (at most 256 classes, as the Segmenter's masks).

    With a ``temperature``, a second output beside the ids: the confidence, uint8
    (1, ceil(h/2), ceil(w/2)), floor(255 * max softmax(logits / T) + 0.5) at every second row
    and column (the caller repeats each value over its 2x2 block). Why half resolution: the
    exp over all C planes at full size added 13-15% to eacnet_dab's 480x360 forward pass in
    OpenVINO (measured: +15 ms on ~100 ms, more than doing it in numpy from the logits), at
    every second pixel 3%; the logits are bilinear upsamples of the 1/8-resolution ones, so
    neighbouring pixels differ little. The maximum of a softmax is 1 / sum exp((l - max) / T):
    no normalised planes are made."""
    from openvino import opset13 as ops

    logits = model.get_results()[0]
    top = ops.topk(logits.input_value(0), 1, 1, "max", "value", "i32", stable=True)
    axis = ops.constant(np.array([1], np.int64))
    ids = ops.convert(ops.squeeze(top.output(1), axis), "u8")
    model.remove_result(logits)  # the logits stay inside: the ids (and confidence) are the outputs
    results = [ops.result(ids)]
    if temperature is not None:
        every_second = ops.strided_slice(logits.input_value(0), ops.constant(np.zeros(4, np.int64)),
                                         ops.constant(np.zeros(4, np.int64)),
                                         ops.constant(np.array([1, 1, 2, 2], np.int64)), [1, 1, 1, 1], [1, 1, 1, 1])
        shifted = ops.subtract(every_second, ops.reduce_max(every_second, axis, keep_dims=True))
        if temperature != 1.0:
            shifted = ops.multiply(shifted, ops.constant(np.float32(1.0 / temperature)))
        total = ops.reduce_sum(ops.exp(shifted), axis, keep_dims=False)
        scaled = ops.divide(ops.constant(np.float32(255.0)), total)
        results.append(ops.result(ops.convert(ops.floor(ops.add(scaled, ops.constant(np.float32(0.5)))), "u8")))
    model.add_results(results)
    return model


class _OvRunner:
    """A compiled model and its infer request, kept together: a request that outlived its
    compiled model crashed the process (SIGSEGV) when the garbage collector freed them out
    of order, tests later."""

    def __init__(self, compiled):
        self._compiled = compiled
        self._request = compiled.create_infer_request()

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        # The request reuses its output buffers: copy, so outputs outlive the next call.
        results = self._request.infer({0: np.ascontiguousarray(batch)})
        return [np.array(results[i], copy=True) for i in range(len(self._compiled.outputs))]


@functools.cache
def _ov_core():
    """One OpenVINO Core per process, never freed before the models compiled with it."""
    import openvino as ov

    return ov.Core()


def return_freed_memory() -> None:
    """Have glibc hand freed heap pages back to the OS. A dropped session's arena is freed, but
    the allocator kept it: cycling 10 sizes through 4 sessions (eacnet_erf, ~480x360) the RSS
    settled at ~610 MB without this and ~490 MB with it. A no-op without glibc."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    try:
        return getattr(ctypes.CDLL(None), "malloc_trim", None)
    except (OSError, TypeError):  # no C library to open this way (Windows)
        return None


def _ov_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def _nncf_available() -> bool:
    return importlib.util.find_spec("nncf") is not None


def _ort_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None


def _cpu_copy(model: nn.Module) -> nn.Module:
    """fp32 NCHW copy on the CPU to export, leaving the running model (layout, device) alone."""
    return copy.deepcopy(model).float().to("cpu", memory_format=torch.contiguous_format).eval()


def _export_bytes(model: nn.Module, height: int, width: int, dynamic_size: bool = False) -> bytes:
    """The model's ONNX graph as bytes; the temporary file is removed at once."""
    from eacnet_core.infer.export import export_onnx

    folder = Path(tempfile.mkdtemp(prefix="eacnet-onnx-"))
    try:
        return export_onnx(model, folder / "model.onnx", height, width, dynamic_size=dynamic_size).read_bytes()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _graph_matches(graph: bytes, model: nn.Module, threads: int) -> bool:
    """Does the dynamic-size graph compute ``model`` at sizes it was not traced at? Checked on
    the CPU provider at tiny sizes (milliseconds); the graph, not the provider, is in question."""
    from eacnet_core.infer.export import ort_session

    for height, width in _CHECK_HW:
        x = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            expected = model(x).numpy()
        try:
            got = ort_session(graph, "cpu", threads, size=(height, width)).run(None, {"image": x.numpy()})[0]
        except Exception as exc:  # onnxruntime's errors derive from Exception only
            log.debug("onnxruntime: dynamic-size graph failed at %dx%d: %s", width, height, exc)
            return False
        if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-3, atol=1e-3):
            return False
    return True

