"""The compiled torch forward pass: ``torch.compile`` and, on CUDA, one CUDA graph per input shape.

Why: at batch 1 a small network on a large GPU is bound by kernel launches, not by the card
(eager EACNets: thousands of small kernels per frame). ``torch.compile`` (inductor) fuses the
element-wise work into fewer kernels; a CUDA graph replays the whole forward pass with one
launch. The graph is captured here with ``torch.cuda.CUDAGraph`` around static input and
output buffers rather than through ``torch.compile(mode="reduce-overhead")``'s graph trees:
the buffers are ours, so their lifetime is explicit (a replay overwrites the last output,
which callers copy or consume before the next call) and eviction frees a graph at once.

Shapes are static: each (batch, height, width) gets its own compiled code and graph, made by
``prepare`` at start-up or on the first frame of that shape, its time logged at INFO, and
kept in a small LRU (``capacity``) like onnxruntime's per-size sessions, so a stream whose
size keeps changing cannot grow the process without bound.

Modes: ``inductor`` (torch.compile only: the CPU's choice), ``graphs`` (eager kernels in a
CUDA graph: no compiler needed, seconds to set up), ``inductor+graphs`` (both: CUDA's
default). ``auto`` picks ``inductor+graphs`` on CUDA and ``inductor`` elsewhere.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Optional

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

COMPILE_MODES = ("auto", "inductor", "graphs", "inductor+graphs")
#: torch.compile's backend. Tests set "aot_eager" (the same tracing, no C++/Triton build: seconds
#: instead of minutes on a small CPU) to check the bookkeeping around it.
COMPILER = "inductor"
#: Untimed runs before a CUDA graph is captured: the first runs choose cuDNN algorithms and
#: allocate workspaces, neither of which may happen during capture.
_CAPTURE_WARMUP = 3

Shape = tuple[int, int, int]  # (batch, height, width)


def resolve_compile_mode(mode: str, device: torch.device) -> str:
    """'auto' -> inductor+graphs on CUDA, inductor elsewhere; CUDA graphs need CUDA."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {', '.join(COMPILE_MODES)}; got {mode!r}")
    if mode == "auto":
        return "inductor+graphs" if device.type == "cuda" else "inductor"
    if "graphs" in mode and device.type != "cuda":
        raise ValueError(f"compile mode {mode} captures CUDA graphs and needs a CUDA device; got {device}")
    return mode


class CompiledForward:
    """``model`` compiled for static input shapes; call it with an (N, 3, h, w) tensor on
    ``device`` in the model's dtype. Each new shape is prepared on its first call (logged);
    ``prepare`` does it ahead of the frames.

    With CUDA graphs the returned logits are the graph's output buffer: the next call
    overwrites them, so a caller that keeps logits clones them (``Segmenter.logits`` does).

    ``backend``: torch.compile's backend, ``COMPILER`` by default."""

    def __init__(self, model: nn.Module, device: torch.device, dtype: torch.dtype, channels_last: bool,
                 mode: str = "auto", capacity: int = 4, backend: Optional[str] = None):
        if capacity < 1:
            raise ValueError(f"compiled shapes kept must be >= 1, got {capacity}")
        self.mode = resolve_compile_mode(mode, device)
        self.device, self.dtype, self.capacity = device, dtype, capacity
        self.layout = torch.channels_last if channels_last else torch.contiguous_format
        self._model = model
        self._forward: Callable[[torch.Tensor], torch.Tensor] = (
            torch.compile(model, backend=backend or COMPILER, dynamic=False) if "inductor" in self.mode else model)
        self._runners: OrderedDict[Shape, Callable[[torch.Tensor], torch.Tensor]] = OrderedDict()
        self.prepare_seconds: dict[Shape, float] = {}  # the set-up time of each live shape

    @property
    def shapes(self) -> tuple[Shape, ...]:
        """(batch, height, width) of each live compiled shape, least recently used first."""
        return tuple(self._runners)

    def _prepare_shape(self, key: Shape) -> float:
        if key in self._runners:
            self._runners.move_to_end(key)
            return 0.0
        if len(self._runners) >= self.capacity:
            dropped = self._runners.popitem(last=False)[0]
            self.prepare_seconds.pop(dropped, None)
            log.info("compiled forward: dropped %s (keeping %d shapes)", _describe(dropped), self.capacity)
        start = time.perf_counter()
        example = torch.zeros((key[0], 3, key[1], key[2]), device=self.device, dtype=self.dtype)
        example = example.contiguous(memory_format=self.layout)
        with torch.inference_mode():
            runner = _GraphRunner(self._forward, example) if "graphs" in self.mode else self._warm(example)
        seconds = time.perf_counter() - start
        self._runners[key] = runner
        self.prepare_seconds[key] = seconds
        log.info("compiled forward (%s, %s, %s): %s ready in %.1f s", self.mode, self.device,
                 str(self.dtype).replace("torch.", ""), _describe(key), seconds)
        return seconds

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected an (N, 3, H, W) batch, got shape {tuple(x.shape)}")
        key = (x.shape[0], x.shape[2], x.shape[3])
        self._prepare_shape(key)
        with torch.inference_mode():
            return self._runners[key](x.to(self.device, self.dtype).contiguous(memory_format=self.layout))

    # ------------------------------------------------------------------ engines.Engine
    @property
    def sizes(self) -> tuple[tuple[int, int], ...]:
        """(height, width) of the live shapes (any batch), least recently used first."""
        return tuple(dict.fromkeys((h, w) for _, h, w in self._runners))

    def prepare(self, batch: int = 0, height: int = 0, width: int = 0) -> float:
        """Compile (and capture) for this input shape now; seconds it took (0 when ready).
        Without a shape (the engine interface's size-independent set-up) there is nothing to do."""
        return self._prepare_shape((batch, height, width)) if batch else 0.0

    def runner(self, height: int, width: int) -> Callable[[np.ndarray | torch.Tensor], torch.Tensor]:
        """For the Segmenter's numpy batches: logits it may keep (a CUDA graph's output buffer
        is cloned, since the next replay overwrites it)."""
        del height, width  # the shape is read from each batch (its batch size too)

        def run(batch: np.ndarray | torch.Tensor) -> torch.Tensor:
            x = torch.from_numpy(batch) if isinstance(batch, np.ndarray) else batch
            logits = self(x)
            return logits.clone() if "graphs" in self.mode else logits

        return run

    def clear(self) -> None:
        self._runners.clear()
        self.prepare_seconds.clear()

    def _warm(self, example: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """torch.compile compiles on its first call: make that call here, not on a frame."""
        self._forward(example)
        return self._forward


class _GraphRunner:
    """One CUDA graph of ``forward`` at one input shape, with its static input and output."""

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], example: torch.Tensor):
        self.input = example.clone()
        stream = torch.cuda.Stream(example.device)
        stream.wait_stream(torch.cuda.current_stream(example.device))
        with torch.cuda.stream(stream):  # warm-up off the default stream, as capture requires
            for _ in range(_CAPTURE_WARMUP):
                forward(self.input)
        torch.cuda.current_stream(example.device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = forward(self.input)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.data_ptr() != self.input.data_ptr():
            self.input.copy_(x)
        self.graph.replay()
        return self.output


def _describe(key: Shape) -> str:
    batch, height, width = key
    return f"{width}x{height}" + (f" batch {batch}" if batch != 1 else "")

