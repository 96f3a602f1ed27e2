"""Frame counters, latencies and the diagnostics built from them; ROS-free."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from eacnet_core.infer.confidence import ScoreSmoother
from eacnet_core.infer.segmenter import Segmenter

from .params import NodeConfig, batch_frames

# ---------------------------------------------------------------------------- statistics and diagnostics

OK, WARN, ERROR = 0, 1, 2  # diagnostic_msgs/DiagnosticStatus levels


@dataclass(frozen=True)
class DiagnosticReport:
    level: int
    message: str
    values: tuple[tuple[str, str], ...]

    def value(self, key: str) -> str:
        return dict(self.values)[key]


@dataclass
class _Counters:
    received: int = 0
    processed: int = 0
    dropped: int = 0
    bad: int = 0
    failed: int = 0


#: The recent past that fps and the latency percentiles describe. A time window, not a
#: count of frames or the last diagnostics period: at 0.5 frames/s a 1 s period alternated
#: 0 and 1 fps, and the last 200 frames kept a latency from minutes (and another input
#: size) ago. 10 s holds several frames down to ~0.2 frames/s.
WINDOW_S = 10.0
#: Latencies kept at most (memory bound at very high rates: then the window is shorter).
MAX_SAMPLES = 4096


class FrameStats:
    """Thread-safe counters and latencies, updated by the callback and the worker and
    read once a second for diagnostics.

    Latency is measured from the subscription callback to the outputs being published
    (queue wait + decode + inference + encode + publish) with a monotonic clock: the part
    of the delay this node adds, independent of clock skew and of sim time. fps and the
    latency percentiles are over the last ``window_s`` seconds (``WINDOW_S``), or since the
    input started when that is more recent, so a slow node shows its real figures."""

    def __init__(self, window_s: float = WINDOW_S, clock: Callable[[], float] = time.monotonic):
        self._lock = threading.Lock()
        self._clock = clock
        self._window_s = window_s
        self._total = _Counters()
        self._period = _Counters()
        self._published: deque[tuple[float, float]] = deque(maxlen=MAX_SAMPLES)  # (when, latency ms)
        self._period_start = clock()
        self._input_since = self._period_start  # start of the current stretch of input
        self._last_received: Optional[float] = None
        self._waiting_since: Optional[float] = None  # oldest frame received since the last publish
        self._score = ScoreSmoother()  # the frame score, smoothed, and its alarm (configure_score)

    def on_received(self, dropped_previous: bool) -> None:
        now = self._clock()
        with self._lock:
            gap = now - self._last_received if self._last_received is not None else math.inf
            if gap >= self._window_s:
                self._input_since = now  # input (re)starts: rates count from here
            if self._waiting_since is None or gap >= STALL_ERROR_S:
                self._waiting_since = now  # a stall counts only while frames keep arriving
            self._last_received = now
            for c in (self._total, self._period):
                c.received += 1
                c.dropped += int(dropped_previous)

    def on_published(self, received_at: float) -> None:
        now = self._clock()
        with self._lock:
            self._total.processed += 1
            self._period.processed += 1
            self._published.append((now, (now - received_at) * 1000.0))
            self._waiting_since = None

    def on_bad_frame(self) -> None:
        with self._lock:
            self._total.bad += 1
            self._period.bad += 1

    def configure_score(self, window: int, warn_above: float, clear_below: float) -> None:
        """Smooth frame scores over ``window`` frames; alarm above ``warn_above``, cleared
        under ``clear_below`` (checked by ScoreSmoother). Keeps the scores seen so far."""
        with self._lock:
            self._score = self._score.reconfigured(window, warn_above, clear_below)

    def on_score(self, score: float) -> float:
        """One frame's score (0 trustworthy .. 1 not); returns the smoothed score."""
        with self._lock:
            return self._score.update(score)

    def on_failed_frame(self) -> None:
        with self._lock:
            self._total.failed += 1
            self._period.failed += 1

    def totals(self) -> dict[str, int]:
        with self._lock:
            return dict(vars(self._total))

    def report(self, static: Sequence[tuple[str, str]] = ()) -> DiagnosticReport:
        """Diagnostics: counters of the period since the previous report (then a new one
        starts), fps and latency over the recent window, totals since the start."""
        now = self._clock()
        with self._lock:
            period, total = self._period, _Counters(**vars(self._total))
            self._period, self._period_start = _Counters(), now
            start = max(now - self._window_s, self._input_since)
            latencies = [ms for when, ms in self._published if when > now - self._window_s]
            arriving = self._last_received is not None and now - self._last_received < STALL_ERROR_S
            stalled_s = now - self._waiting_since if self._waiting_since is not None and arriving else 0.0
        fps = len(latencies) / max(now - start, 1e-9)
        p50, p90, p99 = (np.percentile(latencies, [50, 90, 99]) if latencies else (math.nan,) * 3)
        values = (("fps", f"{fps:.2f}"), ("latency_ms_p50", f"{p50:.1f}"), ("latency_ms_p90", f"{p90:.1f}"),
                  ("latency_ms_p99", f"{p99:.1f}"), ("frames_received", str(total.received)),
                  ("frames_processed", str(total.processed)), ("frames_dropped", str(total.dropped)),
                  ("frames_bad", str(total.bad)), ("frames_failed", str(total.failed)),
                  ("dropped_last_period", str(period.dropped)), ("window_s", f"{self._window_s:g}")) + tuple(static)
        level, message = _summary(period, fps, p50, stalled_s, arriving)
        values += (("seconds_since_output", f"{stalled_s:.1f}"),)
        with self._lock:
            smoothed, alarm, warn_above = self._score.value, self._score.alarm, self._score.warn_above
        if smoothed is not None:
            values += (("frame_score", f"{smoothed:.3f}"), ("frame_score_alarm", str(alarm).lower()),
                       ("frame_score_warn_above", f"{warn_above:g}"))
            if alarm and level == OK:
                level, message = WARN, (f"low confidence: frame score {smoothed:.2f} > {warn_above:g}, the mask may "
                                        f"not be trustworthy (fog, blur, darkness, a covered lens, an unfamiliar "
                                        f"scene); {message}")
        return DiagnosticReport(level, message, values)


#: Frames arriving for this long with none published is an ERROR: the node looks alive
#: (it subscribes, it reports) but a consumer downstream gets nothing. Once no frame has
#: arrived for as long, the input has stopped: no stall (the "no input images" warning).
STALL_ERROR_S = 3.0


def _summary(period: _Counters, fps: float, p50: float, stalled_s: float = 0.0,
             arriving: bool = True) -> tuple[int, str]:
    """Level and one-line message: ERROR when frames have been arriving for STALL_ERROR_S
    without one being published, or when every frame of the period failed; WARN for bad
    or failed frames or no input (``arriving``: a frame came within STALL_ERROR_S, so a
    camera slower than the diagnostics period is not "no input" between its frames)."""
    if stalled_s >= STALL_ERROR_S:
        return ERROR, (f"frames arrive but none was published for {stalled_s:.0f} s "
                       f"({period.bad} undecodable, {period.failed} failed in the last period; see the node's log)")
    if period.failed and not period.processed:
        return ERROR, f"all {period.failed} frame(s) of the last period failed"
    if period.bad or period.failed:
        return WARN, f"{period.bad} undecodable and {period.failed} failed frame(s) skipped; {fps:.1f} fps"
    if not arriving:
        return WARN, "no input images"
    return OK, f"{fps:.1f} fps, latency p50 {p50:.0f} ms, {period.dropped} dropped"


def static_diagnostics(segmenter: Segmenter, config: NodeConfig) -> tuple[tuple[str, str], ...]:
    """Key/values that do not change while the node runs."""
    size = (f"{config.inference_width}x{config.inference_height}" if config.inference_height else "input size")
    values = (("model", segmenter.model_name), ("device", str(segmenter.device)), ("precision", segmenter.precision),
              ("backend", segmenter.backend), ("inference_size", size),
              ("weights", str(segmenter.weights) if segmenter.weights else "untrained"),
              ("transport", config.transport))
    if config.cameras:
        batched = batch_frames(config.batch_cameras, segmenter.device.type)
        values += (("batch_cameras", f"{config.batch_cameras} ({'batched' if batched else 'one by one'})"),)
    return values


class _CountInto:
    """What one camera's pipeline counts into: its own FrameStats and the total."""

    def __init__(self, *targets: FrameStats):
        self._targets = targets

    def on_received(self, dropped_previous: bool) -> None:
        for stats in self._targets:
            stats.on_received(dropped_previous)

    def on_published(self, received_at: float) -> None:
        for stats in self._targets:
            stats.on_published(received_at)

    def on_bad_frame(self) -> None:
        for stats in self._targets:
            stats.on_bad_frame()

    def on_failed_frame(self) -> None:
        for stats in self._targets:
            stats.on_failed_frame()

    def on_score(self, score: float) -> float:
        """Into the camera's own statistics only: a total of several cameras' scores would
        hide one bad camera (the total's level is the worst camera's)."""
        return self._targets[0].on_score(score)


class CameraStats:
    """Per-camera counters and their total. For the single camera (name ``""``) there is
    only the total, so its diagnostics are exactly the single-camera node's."""

    def __init__(self, cameras: Sequence[str], clock: Callable[[], float] = time.monotonic):
        self.total = FrameStats(clock=clock)
        self.per_camera = {camera: FrameStats(clock=clock) for camera in cameras if camera}

    def configure_score(self, window: int, warn_above: float, clear_below: float) -> None:
        for stats in (self.total, *self.per_camera.values()):
            stats.configure_score(window, warn_above, clear_below)

    def camera(self, name: str) -> Any:
        """The FrameStats-like sink for ``name``'s callbacks and pipeline."""
        own = self.per_camera.get(name)
        return self.total if own is None else _CountInto(own, self.total)

    def report(self, static: Sequence[tuple[str, str]] = ()) -> list[tuple[str, DiagnosticReport]]:
        """(camera, report) for the period since the last call: the total first (camera
        ``""``, with ``static``), then one per camera. The total's level is the worst of all,
        and its message names the worst camera when one is not OK."""
        cameras = [(name, stats.report((("camera", name),))) for name, stats in self.per_camera.items()]
        total = self.total.report(static)
        if cameras:
            total = _with_cameras(total, cameras)
        return [("", total), *cameras]


def _with_cameras(total: DiagnosticReport, cameras: Sequence[tuple[str, DiagnosticReport]]) -> DiagnosticReport:
    name, worst = max(cameras, key=lambda item: item[1].level)
    level = max(total.level, worst.level)
    message = f"{len(cameras)} cameras: {total.message}"
    if worst.level > OK:
        message = f"{name}: {worst.message}; {message}"
    values = total.values + (("cameras", ", ".join(camera for camera, _ in cameras)),)
    return DiagnosticReport(level, message, values)
