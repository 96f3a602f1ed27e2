"""Several cameras, one model: scheduling, per-camera statistics and the worker, without rclpy.

With ``cameras: [front, left, ...]`` the node subscribes once per camera and loads one model.
Each camera keeps only its newest frame (a ``worker.LatestFrame``, as the single-camera
node does), and one worker thread serves them:

* **Fairly.** ``FrameScheduler.take`` walks the cameras round-robin, starting after the one
  served last, so a camera at 30 Hz cannot starve one at 1 Hz: a waiting frame is served
  within one turn of every other camera, however often they publish.
* **Newest first.** A frame that waits while others are processed is replaced by its
  camera's next one and counted as dropped for that camera, never queued.
* **Batched on request.** With batching on, one take returns the frames waiting at all
  cameras (each at most one), and they go through the model in one forward pass
  (``Segmenter.segment_batch``): on this project's 2-core CPU 12-21% more frames, at
  30-130% more latency (docs/RESULTS.md); ``batch_cameras: auto`` batches on CUDA only
  (``params.batch_frames``).
* **Accounted per camera.** Each camera's ``FrameWorker`` (not started as a thread: it is
  the per-camera decode and publish steps with their own counters and throttled warnings)
  counts into its camera's ``FrameStats`` and into the total (``stats.CameraStats``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from .pipeline import FrameProcessor
from .worker import FrameWorker, LatestFrame, Throttle

#: One frame to process: (camera, message, monotonic receive time).
Frame = tuple[str, Any, float]


class FrameScheduler:
    """The newest frame of each camera, handed out round-robin.

    ``put`` is called by the subscription callbacks (executor thread), ``take`` by the
    worker; one condition variable is shared by all cameras' slots, so the worker sleeps
    until any camera has a frame."""

    def __init__(self, cameras: Sequence[str]):
        if not cameras:
            raise ValueError("a FrameScheduler needs at least one camera")
        self._cond = threading.Condition()
        self._order = list(cameras)
        self._slots = {camera: LatestFrame(self._cond) for camera in self._order}
        self._next = 0  # index of the camera served first by the next take
        self._closed = False

    @property
    def cameras(self) -> tuple[str, ...]:
        return tuple(self._order)

    def slot(self, camera: str) -> LatestFrame:
        return self._slots[camera]

    def put(self, camera: str, msg: Any, received_at: float) -> bool:
        """Store ``camera``'s newest frame; True when it replaced an untaken one (a drop)."""
        return self._slots[camera].put(msg, received_at)

    def take(self, max_frames: int = 1, timeout: Optional[float] = None) -> list[Frame]:
        """Up to ``max_frames`` waiting frames, at most one per camera, in round-robin order
        from the camera after the last one served; waits up to ``timeout`` for the first.
        Empty on timeout or once closed."""
        with self._cond:
            self._cond.wait_for(lambda: self._closed or any(s.waiting for s in self._slots.values()), timeout)
            if self._closed:
                return []
            taken: list[Frame] = []
            count = len(self._order)
            for step in range(count):
                index = (self._next + step) % count
                item = self._slots[self._order[index]].pop()
                if item is not None:
                    taken.append((self._order[index], *item))
                    last = index
                    if len(taken) >= max_frames:
                        break
            if taken:
                self._next = (last + 1) % count
            return taken

    def close(self) -> None:
        """Wake the worker and refuse further takes (frames still waiting are abandoned)."""
        with self._cond:
            self._closed = True
            for slot in self._slots.values():
                slot.close()
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


@dataclass
class MultiCameraWorker:
    """One thread that serves every camera's newest frame with one model (see the module
    docstring); ``pipelines`` maps each camera of ``scheduler`` to its FrameWorker."""

    scheduler: FrameScheduler
    pipelines: Mapping[str, FrameWorker]
    processor: FrameProcessor
    batch: bool
    warn: Callable[[str], None]
    throttle: Throttle = field(default_factory=Throttle)
    _thread: Optional[threading.Thread] = field(default=None, init=False)

    def __post_init__(self):
        if set(self.pipelines) != set(self.scheduler.cameras):
            raise ValueError(f"pipelines for {sorted(self.pipelines)} but cameras {sorted(self.scheduler.cameras)}")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="eacnet-segment-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Close the scheduler and wait for the frames in progress to finish."""
        self.scheduler.close()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        per_take = len(self.pipelines) if self.batch else 1
        while not self.scheduler.closed:
            frames = self.scheduler.take(per_take, timeout=0.5)
            if not frames:
                continue
            try:
                self.process(frames)
            except Exception as exc:  # process catches everything; this is the last guard
                for camera, _, _ in frames:
                    self.pipelines[camera].stats.on_failed_frame()
                line = self.throttle("worker_error", f"unexpected error in the frame worker, {len(frames)} frame(s) "
                                                     f"skipped: {type(exc).__name__}: {exc}")
                if line is not None:
                    self.warn(line)

    def process(self, frames: Sequence[Frame]) -> int:
        """Decode, segment (together when there are several), encode and publish each frame
        on its camera's topics; how many were published. A bad frame costs only itself; an
        error in a batched forward pass is counted as a failed frame for each camera in it."""
        if len(frames) == 1:
            camera, msg, received_at = frames[0]
            return int(self.pipelines[camera].process_one(msg, received_at))
        decoded = [(camera, msg, received_at, bgr) for camera, msg, received_at in frames
                   if (bgr := self.pipelines[camera].decode(msg)) is not None]
        if not decoded:
            return 0
        try:
            wanted = [self.pipelines[camera].wanted() for camera, *_ in decoded]
            sizes = [self.pipelines[camera].sizes.network_size(bgr.shape[:2]) for camera, *_, bgr in decoded]
            results = self.processor.process_batch([bgr for *_, bgr in decoded], wanted, sizes)
        except Exception as exc:  # one batch must never kill the node
            for camera, *_ in decoded:
                self.pipelines[camera].failed(exc)
            return 0
        return sum(self.pipelines[camera].publish(msg, result, received_at)
                   for (camera, msg, received_at, _), result in zip(decoded, results, strict=True))
