"""backend/precision auto in the node: the engine is chosen before the node listens, and
chosen again in the background for a new size while frames keep flowing; ROS-free.

Why: on the CPU the Segmenter chooses its engine by timing its candidates
(``eacnet_core.infer.segmenter``). Done on the first camera frame, that took seconds after the
node had said "listening on", and frames that arrived meanwhile were dropped (frames 1-6 at
10 Hz; 34 of the first 300 at 5 Hz with a choice not cached yet). So:

* At start-up (``load_segmenter``, before any subscription exists) the choice is made at
  the size the node expects: the inference size, else the ``camera_height`` x
  ``camera_width`` parameters, on a stand-in frame of that size (reduced precisions are
  checked on calibration frames where some are at hand).
* ``EngineChoice.before`` runs on the worker thread before each forward pass. A frame whose
  network size has no complete choice (another camera size; or reduced precisions still
  unchecked because no calibration frame was at hand) starts the choice for that size on a
  thread of its own, on a copy of the model (``Segmenter.chosen_copy``), with that frame as
  what reduced precisions must reproduce. Frames go on through the current engine
  meanwhile; the worker adopts the new engine between two frames (``Segmenter.adopt``).
  One choice runs at a time; each size is chosen once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, Optional

import numpy as np


class EngineChoice:
    """The choices still to make for ``segmenter`` (a ``Segmenter``) and the one under way.

    ``measure``: frame -> a Segmenter that has chosen for it (``segmenter.chosen_copy``;
    tests slow it down); ``warn``: for a choice that failed (the current engine stays)."""

    def __init__(self, segmenter: Any, warn: Callable[[str], None],
                 measure: Optional[Callable[[np.ndarray], Any]] = None):
        self.segmenter = segmenter
        self._warn = warn
        self._measure = measure or segmenter.chosen_copy
        self._chosen: set[tuple[int, int]] = set()  # network sizes with a complete (or failed) choice
        if segmenter.autotune_size is not None and segmenter.autotune_complete:
            self._chosen.add(tuple(segmenter.autotune_size))
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self._result: Optional[Any] = None
        self._done = False
        self.adopted = 0  # choices made in the background and taken over

    @property
    def enabled(self) -> bool:
        return bool(self.segmenter.chooses_on_cpu)

    @property
    def measuring(self) -> bool:
        """A choice is under way (or finished and not adopted yet)."""
        return self._thread is not None

    def before(self, images: Sequence[np.ndarray]) -> None:
        """Worker thread, before ``images`` go through the model: adopt a finished choice;
        start one for the first image whose network size has none."""
        if not self.enabled:
            return
        self._adopt_finished()
        if self._thread is not None:
            return
        for bgr in images:
            size = tuple(self.segmenter.network_size(*bgr.shape[:2]))
            if size not in self._chosen:
                self._chosen.add(size)  # once, even if it fails
                self._done, self._result = False, None
                self._thread = threading.Thread(target=self._run, args=(np.array(bgr), size), daemon=True,
                                                name="eacnet-engine-choice")
                self._thread.start()
                return

    def _run(self, bgr: np.ndarray, size: tuple[int, int]) -> None:
        result = None
        try:
            result = self._measure(bgr)
        except Exception as exc:  # the current engine serves on; the node must not die of it
            self._warn(f"choosing the engine for {size[1]}x{size[0]} frames failed, the current one serves on: "
                       f"{type(exc).__name__}: {exc}")
        with self._lock:
            self._result, self._done = result, True

    def _adopt_finished(self) -> None:
        with self._lock:
            if self._thread is None or not self._done:
                return
            result, self._result, self._thread = self._result, None, None
        if result is not None:
            self.segmenter.adopt(result)
            self.adopted += 1

    def close(self, timeout: float = 10.0) -> None:
        """Wait (at most ``timeout`` s) for a choice under way; its result is dropped."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        with self._lock:
            self._thread = self._result = None
