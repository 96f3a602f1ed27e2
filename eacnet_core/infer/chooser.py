"""backend/precision auto: which engine, precision and compiled path a Segmenter runs,
chosen by measurement on this machine, and remembered.

Which path is fastest differs by model, size and CPU (docs/RESULTS.md), hence measuring, not
guessing. The ``Chooser`` beside each Segmenter (``Segmenter.chooser``) owns three choices:

* on the CPU, the candidates (``Candidate``: torch, onnxruntime, OpenVINO; fp32, bf16 where
  the CPU runs it natively, int8 where its model is cached or calibration frames are given)
  are timed at the network size, and the fastest whose masks agree with fp32's on
  calibration frames and/or the first camera frame (``AGREEMENT_MIN``) is kept
  (``Chooser.choose_cpu``);
* on CUDA, eager torch against the compiled forward (``Chooser.choose_cuda``);
* when the network size is not known at start-up, either waits for the first frame
  (``Chooser.pending``, ``Chooser.first_frame``, ``Chooser.settle``).

The Segmenter runs frames (preprocess, forward, postprocess) on the path its Chooser set; to
time one, the Chooser switches the Segmenter to it (``Segmenter.use``), runs its forward pass
and frees the engines the choice does not need (``Segmenter.release_engines``).

The CPU choice is remembered in the user cache (``choice.ChoiceCache``): a later start in the
same situation builds only the chosen engine. Never remembered: a choice measured on a busy
machine (``BUSY_LOAD_PER_CORE``). Other processes slow some candidates more than others
(onnxruntime fp32 at 64 ms was once kept over OpenVINO bf16 at 19 ms so), and a remembered
choice is never measured again. Such a choice still serves the process that made it; the
next start measures again.
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Protocol

import cv2
import numpy as np
import torch

from eacnet_core.infer.choice import ChoiceCache, choice_fields
from eacnet_core.infer.engines import OvModels, _nncf_available, _ort_available, _ov_available
from eacnet_core.runtime import DTYPES, cpu_supports_bf16, sync

log = logging.getLogger(__name__)

#: precision auto keeps a reduced precision only if its masks equal fp32's on this share of pixels
AGREEMENT_MIN = 0.99
#: calibration frames (beside any camera frame) on which precision auto compares masks with fp32
PROBE_FRAMES = 2
#: A CPU choice measured while the 1-minute load average per core exceeded this is not
#: remembered: more threads wanted to run than there were cores, so other processes took
#: part of the timed runs.
BUSY_LOAD_PER_CORE = 1.0
#: the ways to run the torch model that backend auto compares on CUDA
CUDA_PATHS = ("torch", "torch_compiled")


@dataclass(frozen=True)
class Candidate:
    """One way to run the network on the CPU: backend, precision and (torch) memory layout."""

    backend: str
    precision: str
    channels_last: bool = False

    @property
    def label(self) -> str:
        layout = (":nhwc" if self.channels_last else ":nchw") if self.backend == "torch" else ""
        return f"{self.backend}:{self.precision}{layout}"


class Driven(Protocol):
    """What the Chooser needs of the Segmenter it chooses for (``segmenter.Segmenter``)."""

    options: Any  # SegmenterOptions: backend, channels_last, threads, calibration_data, choice_cache
    device: torch.device
    backend: str  # the running path, which ``use`` sets
    precision: str
    channels_last: bool
    model_name: str
    weights: Optional[Path]
    weights_digest: str

    def use(self, candidate: Candidate) -> None: ...
    def engine(self, backend: str, precision: str) -> Any: ...
    def release_engines(self, chosen: Candidate) -> None: ...
    def drop_compiled(self) -> None: ...
    def logits(self, batch: np.ndarray) -> Any: ...
    def device_forward(self, x: torch.Tensor) -> torch.Tensor: ...
    def preprocess(self, bgr: np.ndarray) -> np.ndarray: ...
    def network_size(self, height: int, width: int) -> tuple[int, int]: ...
    def mask_from_logits(self, logits: Any, size_hw: tuple[int, int]) -> np.ndarray: ...


def elapsed_ms(run: Callable[..., object], *args: object) -> float:
    """Milliseconds of one ``run(*args)`` on the wall clock."""
    start = time.perf_counter()
    run(*args)
    return 1000 * (time.perf_counter() - start)


def machine_load() -> Optional[float]:
    """The 1-minute load average per core; None where the system keeps none. Per core of the
    machine (``os.cpu_count``), as the load average counts the runnable threads of every
    process, whichever cores they may use."""
    try:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    except (AttributeError, OSError):
        return None


class Chooser:
    """backend/precision auto's choices for one Segmenter (``segmenter``), which it drives
    while timing (see the module docstring).

    ``cache``: where CPU choices are remembered (None: the user cache, ``ChoiceCache.default``,
    looked up when a choice is made; nothing is remembered when the Segmenter's options say
    ``choice_cache=False``). ``elapsed``: (run, *args) -> milliseconds of one ``run(*args)``
    (None: ``elapsed_ms``). ``load``: () -> the machine's load per core, or None where
    unknown (None: ``machine_load``). ``busy_load``: above it a choice is not remembered."""

    def __init__(self, segmenter: Driven, cache: Optional[ChoiceCache] = None,
                 elapsed: Optional[Callable[..., float]] = None,
                 load: Optional[Callable[[], Optional[float]]] = None, busy_load: float = BUSY_LOAD_PER_CORE):
        # weakly: the Segmenter owns its Chooser, and a cycle between them would keep a dropped
        # Segmenter (and its model) alive until a garbage collection; in a node that froze its
        # long-lived objects (eacnet_ros.node.steady), for good
        self.segmenter: Driven = weakref.proxy(segmenter)
        self.cache, self.elapsed, self.load, self.busy_load = cache, elapsed, load, busy_load
        options, device = segmenter.options, segmenter.device
        # precision auto on the CPU chooses among fp32, bf16 and int8 by measurement, fp32 the reference
        self.auto_precision = (options.precision or "auto").lower() == "auto" and device.type == "cpu"
        #: backend auto on CUDA: eager and compiled torch are timed and the faster kept (``choose_cuda``)
        self.on_cuda = options.backend == "auto" and device.type == "cuda" and segmenter.precision in DTYPES
        #: on the CPU with more than one candidate: they are timed and the fastest kept (``choose_cpu``)
        self.on_cpu = device.type == "cpu" and len(self.candidates(int8=False)) > 1
        self.pending = False  # the choice waits for the first frame (set by ``at_warmup``)
        self.ms: dict[str, float] = {}  # the last timing: candidate label -> least ms of its runs
        self.agreement: dict[str, float] = {}  # reduced precisions: share of pixels equal to fp32
        self.dropped: list[str] = []  # candidates dropped after their first run (not eligible)
        self.size: Optional[tuple[int, int]] = None  # (height, width) it was timed at
        self.complete = False  # reduced precisions were checked too (or none is a candidate)
        self.chosen: Optional[Candidate] = None
        self.load_seen: Optional[float] = None  # load per core while the last CPU choice was measured

    def beside(self, segmenter: Driven) -> Chooser:
        """A Chooser for ``segmenter`` that measures and remembers as this one does."""
        return Chooser(segmenter, self.cache, self.elapsed, self.load, self.busy_load)

    # ------------------------------------------------------------------ when to choose
    def at_warmup(self, size: Optional[tuple[int, int]]) -> None:
        """``Segmenter.warmup``'s part: choose now when the network ``size`` is known (and, for
        reduced precisions, frames to check them on are at hand); else wait for the first frame."""
        if self.size is not None:
            return
        if self.on_cuda:
            if size:
                self.choose_cuda(size)
            else:
                self.pending = True
        if self.on_cpu:
            probes = self.calibration_probes(size) if size else []
            if size and (probes or not self.wants_probes()):
                self.choose_cpu(self._blank_batch(size), probes=probes)
            else:  # the size, or frames to check reduced precisions on, come with the first frame
                self.pending = True

    def tune(self, size: tuple[int, int]) -> None:
        """Choose for this network size now (``Segmenter.tune``)."""
        if self.on_cpu:
            self.choose_cpu(self._blank_batch(size), probes=self.calibration_probes(size))
        elif self.on_cuda:
            self.choose_cuda(size)

    def first_frame(self, bgr: np.ndarray) -> None:
        """Where the choice waits for the first frame, make it at this frame's network size (on
        CUDA it is timed on the device: no CPU preprocessing needed)."""
        if not self.pending:
            return
        if self.on_cuda:
            self.choose_cuda(self.segmenter.network_size(*bgr.shape[:2]))
        else:  # the CPU choice, the frame among what reduced precisions are checked on
            self.settle(self.segmenter.preprocess(bgr))

    def settle(self, batch: np.ndarray) -> None:
        """Make the choice now, if it is still open, on this preprocessed frame (1, 3, h, w) at
        the network size (``Segmenter.settle``)."""
        size = (batch.shape[2], batch.shape[3])
        if self.on_cpu and self.size is None:
            self.choose_cpu(batch, probes=[batch, *self.calibration_probes(size)])
        elif self.on_cuda and self.size is None:
            self.choose_cuda(size)
        self.pending = False

    def adopt(self, other: Chooser) -> None:
        """Take the choice ``other`` made (for a copy of the Segmenter, ``Segmenter.chosen_copy``)."""
        self.ms, self.agreement = dict(other.ms), dict(other.agreement)
        self.dropped, self.complete = list(other.dropped), other.complete
        self.keep(other.chosen, other.size, "adopted")

    def described(self) -> tuple[str, str]:
        """(precision, backend) as ``Segmenter.describe`` names them. Before the choice, that
        auto has not chosen yet rather than the starting path (a description taken early once
        recorded torch for onnxruntime); after it, the path and "(chosen by auto)"."""
        seg = self.segmenter
        precision = seg.precision  # "(chosen by auto)" after the backend covers both
        if self.on_cpu and self.size is None:
            backend = "auto (chosen on the first frame)" if self.pending else "auto (not chosen yet)"
            precision = "auto" if self.auto_precision else precision
        else:
            backend = (seg.backend + (" channels_last" if seg.channels_last else "")
                       + (" (chosen by auto)" if self.on_cpu else ""))
        if self.on_cuda:
            backend = (f"{seg.backend} (chosen by auto)" if self.size else
                       "auto (chosen on the first frame)" if self.pending else "auto (not chosen yet)")
        return precision, backend

    # ------------------------------------------------------------------ the CPU candidates
    def candidates(self, int8: bool = True) -> list[Candidate]:
        """What backend/precision auto may run here, in timing order. Under precision auto:
        fp32; bf16 where the CPU runs it natively; int8 (``int8``) where its model can be had."""
        options = self.segmenter.options
        backends = ["onnxruntime", "torch", "openvino"] if options.backend == "auto" else [options.backend]
        precisions = [self.segmenter.precision]
        if self.auto_precision:
            precisions = ["fp32"] + (["bf16"] if cpu_supports_bf16() else []) + (["int8"] if int8 else [])
        graphs = _ort_available()
        found = []
        for precision in precisions:
            for backend in backends:
                if backend == "torch" and (precision == "fp32" or not self.auto_precision) and precision != "int8":
                    layouts = [True, False] if options.backend == "auto" else [options.channels_last]
                    found += [Candidate("torch", precision, layout) for layout in layouts]
                elif backend == "onnxruntime" and graphs and precision in ("fp32", "int8"):
                    found.append(Candidate(backend, precision))
                elif (backend == "openvino" and graphs and _ov_available() and precision in OvModels.HINTS
                      and (precision != "int8" or _nncf_available())):
                    found.append(Candidate(backend, precision))
        return found

    def wants_probes(self) -> bool:
        """Some candidate has a reduced precision, to be checked against fp32 on real frames."""
        if not self.auto_precision:
            return False
        return any(c.precision != "fp32" for c in self.candidates(int8=False)) or self.int8_at_hand()

    def int8_at_hand(self) -> bool:
        """precision auto times int8 only where its model needs no long build now: calibration
        frames were given (the build is then the user's request), or a model is cached."""
        from eacnet_core.infer.quantize import Int8Cache

        if self.segmenter.options.calibration_data:
            return True
        cache = Int8Cache.beside(self.segmenter.weights)
        return cache.folder.is_dir() and any(cache.folder.glob(f"{self.segmenter.model_name}-*.int8.*"))

    def calibration_probes(self, size_hw: tuple[int, int]) -> list[np.ndarray]:
        """A few calibration frames (never val or test) at the network size, preprocessed: what
        reduced precisions are compared with fp32 on. [] when no frames are at hand."""
        from eacnet_core.infer.quantize import calibration_images, default_calibration_root

        root = self.segmenter.options.calibration_data or default_calibration_root()
        if not root or not self.auto_precision:
            return []
        probes = []
        for path in calibration_images(root, PROBE_FRAMES):
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is not None:
                probes.append(self.segmenter.preprocess(cv2.resize(bgr, (size_hw[1], size_hw[0]),
                                                              interpolation=cv2.INTER_LINEAR)))
        return probes

    def choose_cpu(self, batch: np.ndarray, runs: int = 3, probes: Sequence[np.ndarray] = ()) -> None:
        """On the CPU: time the candidates on this machine, model and size, and keep the
        fastest whose masks agree with fp32 (>= ``AGREEMENT_MIN`` of the pixels of ``probes``;
        fp32 paths compute the same function to float rounding).

        Each candidate's first timed run is not counted, except that a path whose first two
        runs both took over twice the best time so far is dropped there: at 720p on a loaded
        2-core CPU a torch run took 4 s, and 4 of each made a 48 s first frame. The time kept
        is the least of ``runs`` runs (load from other processes only adds). Graph engines
        get one untimed run before it (their first inference allocates: OpenVINO bf16 and
        the int8 models were dropped on it on a loaded CPU, though faster afterwards).
        Reduced precisions need ``probes``; without them only fp32 is timed. The result is
        remembered (``ChoiceCache``) unless the machine was busy: the same situation later
        reuses it."""
        seg = self.segmenter
        self.pending = False
        self.complete = bool(probes) or not self.wants_probes()
        size = (batch.shape[2], batch.shape[3])
        reference = "fp32" if self.auto_precision else seg.precision
        int8 = self.auto_precision and bool(probes) and self.int8_at_hand()
        candidates = [c for c in self.candidates(int8=int8) if c.precision == reference or probes]
        labels = [c.label for c in candidates]
        fields = choice_fields(seg.model_name, seg.weights_digest, size, self._threads(), labels, bool(probes))
        cache = self._cache()
        record = cache.load(fields, busy_load=self.busy_load) if cache else None
        if record is not None:
            self.ms, self.agreement, self.dropped = record["ms"], record["agreement"], record["dropped"]
            self.load_seen = record["load_per_core"]
            self.keep(next(c for c in candidates if c.label == record["choice"]), size, "remembered")
            return
        truth = [self.reference_ids(p) for p in probes] if self.auto_precision and len(candidates) > 1 else []
        self.ms, self.agreement, self.dropped = {}, {}, []
        load_before = self._load()
        for candidate in candidates:
            try:
                seg.use(candidate)
                if candidate.backend != "torch":  # compiling, building, a session and its first run
                    seg.engine(candidate.backend, candidate.precision).runner(*size)(batch)  # (allocations):
                first = self._elapsed(seg.logits, batch)  # set-up, untimed; torch's first run is the timed one
            except (RuntimeError, ValueError, OSError) as exc:  # e.g. an int8 model that cannot be had
                log.warning("auto at %dx%d: %s not timed: %s", size[1], size[0], candidate.label, exc)
                continue
            limit = 2 * min(self.ms.values(), default=float("inf"))
            if first > limit:  # once more: on a shared CPU one run can be hit by another process
                first = min(first, self._elapsed(seg.logits, batch))
                if first > limit:
                    self.ms[candidate.label] = first
                    self.dropped.append(candidate.label)
                    continue
            # the least of a few runs: other processes only ever add time to a run
            self.ms[candidate.label] = min(self._elapsed(seg.logits, batch) for _ in range(runs))
            if candidate.precision != reference and truth:
                self.agreement[candidate.label] = self.agreement_with(probes, truth)
        self.load_seen = _highest(load_before, self._load())
        eligible = [k for k in self.ms if k not in self.dropped
                    and self.agreement.get(k, 1.0) >= AGREEMENT_MIN] or list(self.ms)
        best = min(eligible, key=self.ms.get)
        busy = self.load_seen is not None and self.load_seen > self.busy_load
        note = (f"; not remembered: the machine was busy (load {self.load_seen:.2f} per core, over "
                f"{self.busy_load:.2f})" if cache and busy else "")
        self.keep(next(c for c in candidates if c.label == best), size, "measured", note)
        if cache and not busy:
            cache.store(fields, best, self.ms, self.agreement, self.dropped, self.load_seen)

    def keep(self, chosen: Candidate, size: tuple[int, int], how: str, note: str = "") -> None:
        """Run ``chosen`` from now on, free the engines it does not need, log the choice."""
        self.segmenter.use(chosen)
        self.segmenter.release_engines(chosen)
        self.chosen, self.size = chosen, size
        timings = ", ".join(f"{k} {v:.0f} ms" + (" (dropped after its first runs)" if k in self.dropped else "")
                            + (f" agrees {100 * self.agreement[k]:.2f}%" if k in self.agreement else "")
                            for k, v in self.ms.items())
        log.info("auto at %dx%d (%s): %s%s -> %s", size[1], size[0], how, timings, note, chosen.label)

    def reference_ids(self, probe: np.ndarray) -> np.ndarray:
        """fp32 class ids of a probe (torch, NCHW): what reduced precisions must reproduce."""
        self.segmenter.use(Candidate("torch", "fp32"))
        return self._ids(probe)

    def agreement_with(self, probes: Sequence[np.ndarray], truth: Sequence[np.ndarray]) -> float:
        """Share of the probes' pixels whose class id equals fp32's, on the running path."""
        equal = sum(int((self._ids(p) == t).sum()) for p, t in zip(probes, truth, strict=True))
        return equal / sum(t.size for t in truth)

    # ------------------------------------------------------------------ CUDA: eager or compiled
    def choose_cuda(self, size_hw: tuple[int, int], runs: int = 20) -> None:
        """backend=auto on CUDA: time eager torch and torch_compiled (compiled.py: torch.compile
        and a CUDA graph per shape) at the network size, batch 1, and keep the faster. Both run
        the same function at this precision (masks agree to float rounding). Compiling is set-up,
        not a run: it happens first, untimed and logged; a compiler that fails (no Triton, say)
        leaves eager torch, with a warning."""
        seg = self.segmenter
        self.pending = False
        x = torch.zeros((1, 3, *size_hw), device=seg.device, dtype=DTYPES[seg.precision])
        self.ms = {}
        for backend in CUDA_PATHS:
            seg.use(Candidate(backend, seg.precision, seg.options.channels_last))
            try:
                with torch.inference_mode():
                    for _ in range(3):  # compiles / captures, picks cuDNN algorithms
                        seg.device_forward(x)
                    self.ms[backend] = self._device_ms(seg.device_forward, x, runs)
            except Exception as exc:  # torch.compile raises many types (BackendCompilerFailed, OSError...)
                log.warning("backend auto: %s failed at %dx%d (%s: %s); not used", backend, size_hw[1], size_hw[0],
                            type(exc).__name__, exc)
                seg.drop_compiled()
        best = min(self.ms, key=self.ms.get)
        self.chosen = Candidate(best, seg.precision, seg.options.channels_last)
        seg.use(self.chosen)
        if best != "torch_compiled":
            seg.drop_compiled()
        self.size = tuple(size_hw)
        log.info("backend auto at %dx%d on %s: %s -> %s", size_hw[1], size_hw[0], seg.device,
                 ", ".join(f"{k} {v:.2f} ms" for k, v in self.ms.items()), best)

    # ------------------------------------------------------------------ helpers
    def _elapsed(self, run: Callable[..., object], *args: object) -> float:
        return (self.elapsed or elapsed_ms)(run, *args)

    def _load(self) -> Optional[float]:
        return (self.load or machine_load)()

    def _device_ms(self, forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, runs: int) -> float:
        """Median milliseconds of ``forward(x)``, the device synchronised around each run."""
        def run() -> None:
            forward(x)
            sync(x.device)

        sync(x.device)
        return float(np.median([self._elapsed(run) for _ in range(runs)]))

    def _cache(self) -> Optional[ChoiceCache]:
        if not self.segmenter.options.choice_cache:
            return None
        return self.cache or ChoiceCache.default()

    def _threads(self) -> int:
        threads = self.segmenter.options.threads
        return threads if threads > 0 else torch.get_num_threads()

    def _blank_batch(self, size_hw: tuple[int, int]) -> np.ndarray:
        """A preprocessed black frame at the network size (the timing input)."""
        return self.segmenter.preprocess(np.zeros((*size_hw, 3), np.uint8))

    def _ids(self, batch: np.ndarray) -> np.ndarray:
        """Class ids of the running path's logits (the argmax the Segmenter takes of them)."""
        return self.segmenter.mask_from_logits(self.segmenter.logits(batch), (batch.shape[2], batch.shape[3]))


def _highest(*loads: Optional[float]) -> Optional[float]:
    known = [x for x in loads if x is not None]
    return max(known) if known else None
