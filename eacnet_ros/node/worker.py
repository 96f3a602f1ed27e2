"""The frame worker: the newest-frame mailbox between the subscription callback and a
worker thread that decodes, segments and publishes, with throttled warnings; ROS-free.

Threading model (the reason for ``LatestFrame`` and ``FrameWorker``):

Threading model (the reason for ``LatestFrame`` and ``FrameWorker``):

* The subscription callback runs on the executor thread and only calls
  ``LatestFrame.put``: it stores the newest message and, if the previous one was never
  taken, counts it as dropped. It never waits for the model.
* ``FrameWorker`` is a plain daemon thread that takes the newest message, decodes,
  segments, encodes and publishes. Inference (torch, onnxruntime, OpenCV) releases the
  GIL, so the executor keeps receiving and counting while a frame is being processed.

Why a dedicated thread rather than a timer or the subscription callback itself:

* Doing the work in the subscription callback would leave the backlog to the middleware's
  KEEP_LAST(1) queue: frames would still be dropped, but silently, and nobody could count
  them. Drops must be visible in diagnostics.
* A polling timer adds up to one period of latency per frame and burns wake-ups when no
  images come; the worker waits on a condition variable and starts the moment a frame
  arrives.
* A thread is independent of the executor: it works under ``rclpy.spin`` (single
  threaded) without callback groups, and the diagnostics timer and parameter services
  stay responsive while a slow model runs. rclpy publishers may be used from any thread.

What cannot be counted: a message replaced inside the middleware's depth-1 queue before
the executor ran the callback at all. The callback is a few microseconds, so that needs an
executor starved for a whole frame interval.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Optional, Protocol

import numpy as np

from . import codec
from .params import DEFAULT_MAX_INPUT_PIXELS, MIN_INPUT_SIDE
from .pipeline import FrameProcessor, FrameSizes, SegmentedFrame, encode_frame
from .stats import FrameStats

# ---------------------------------------------------------------------------- newest-frame mailbox

class LatestFrame:
    """A one-slot mailbox between the subscription callback and the worker.

    ``put`` replaces whatever is waiting (returning True when it overwrote an untaken
    message: a dropped frame); ``take`` waits for a message. No backlog can build up.
    ``condition``: shared by the slots of several cameras, so one worker can wait for any
    of them (``scheduler.FrameScheduler``)."""

    def __init__(self, condition: Optional[threading.Condition] = None):
        self._cond = condition or threading.Condition()
        self._item: Optional[tuple[Any, float]] = None
        self._closed = False

    def put(self, msg: Any, received_at: float) -> bool:
        with self._cond:
            replaced = self._item is not None
            self._item = (msg, received_at)
            self._cond.notify()
        return replaced

    def take(self, timeout: Optional[float] = None) -> Optional[tuple[Any, float]]:
        """The newest (message, receive time), or None on timeout or after ``close``."""
        with self._cond:
            self._cond.wait_for(lambda: self._item is not None or self._closed, timeout)
            item, self._item = self._item, None
        return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def waiting(self) -> bool:
        """A message is waiting; read under the (shared) condition's lock."""
        return self._item is not None

    def pop(self) -> Optional[tuple[Any, float]]:
        """The waiting (message, receive time) or None, without waiting; the caller holds
        the condition's lock (``FrameScheduler.take``)."""
        item, self._item = self._item, None
        return item


# ---------------------------------------------------------------------------- throttled warnings

class Throttle:
    """At most one message per key and period, with a count of what was held back:
    a camera sending only bad frames at 30 Hz must not flood the log."""

    def __init__(self, period_s: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self.period_s = period_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, key: str, text: str) -> Optional[str]:
        """The text to log now (with a suppressed count), or None to stay quiet."""
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.period_s:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return None
            self._last[key] = now
            held = self._suppressed.pop(key, 0)
        return f"{text} ({held} similar message(s) suppressed)" if held else text


# ---------------------------------------------------------------------------- the worker

class PublisherLike(Protocol):
    def publish(self, msg: Any) -> None: ...

    def get_subscription_count(self) -> int: ...


@dataclass
class FrameWorker:
    """Takes the newest frame from ``slot``, runs the pipeline and publishes.

    ``publishers`` maps 'mask', 'color_mask', 'overlay' and (optional) 'confidence' (Image)
    and 'low_confidence' (a ``float_type`` message) to rclpy publishers (or anything with
    ``publish`` and ``get_subscription_count``). A bad frame or an exception is logged
    (throttled), counted, and the loop goes on: one frame never kills the node.

    ``score``: make the confidence and the frame score of every frame (``stats.on_score``
    smooths it for the diagnostics); otherwise the confidence is made only while someone
    subscribes to it."""

    slot: LatestFrame
    processor: FrameProcessor
    stats: FrameStats
    publishers: Mapping[str, PublisherLike]
    image_type: type
    warn: Callable[[str], None]
    active: Callable[[], bool] = lambda: True  # False once ROS is shut down: stop publishing
    max_pixels: Optional[int] = DEFAULT_MAX_INPUT_PIXELS
    throttle: Throttle = field(default_factory=Throttle)
    sizes: FrameSizes = field(default_factory=FrameSizes)  # the camera's own frame size
    score: bool = False
    float_type: Optional[type] = None  # std_msgs/Float32 for 'low_confidence'
    _thread: Optional[threading.Thread] = field(default=None, init=False)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="eacnet-segment-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Close the mailbox and wait for the frame in progress to finish."""
        self.slot.close()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self.slot.closed:
            item = self.slot.take(timeout=0.5)
            if item is None:
                continue
            try:
                self.process_one(*item)
            except Exception as exc:  # process_one catches everything; this is the last guard
                self.stats.on_failed_frame()
                self._warn("worker_error", f"unexpected error in the frame worker, frame skipped: "
                                           f"{type(exc).__name__}: {exc}")

    def process_one(self, msg: Any, received_at: float) -> bool:
        """Run one message through decode -> segment -> encode -> publish; True if published."""
        bgr = self.decode(msg)
        if bgr is None:
            return False
        try:
            color, overlay, confidence = self.wanted()
            frame = self.processor.process(bgr, color, overlay, self.sizes.network_size(bgr.shape[:2]), confidence)
        except Exception as exc:  # one frame must never kill the node
            return self.failed(exc)
        return self.publish(msg, frame, received_at)

    # The steps of process_one, also used by scheduler.MultiCameraWorker, which segments
    # the frames of several cameras together between decode and publish.
    def decode(self, msg: Any) -> Optional[np.ndarray]:
        """The message as a BGR array; None for a bad frame (counted and warned)."""
        try:
            return codec.to_bgr(msg, self.max_pixels, MIN_INPUT_SIDE, self._library_message)
        except Exception as exc:  # ImageDecodeError, or a message too malformed to read at all
            self.stats.on_bad_frame()
            reason = str(exc) if isinstance(exc, codec.ImageDecodeError) else f"{type(exc).__name__}: {exc}"
            self._warn("bad_frame", f"skipping an image that cannot be decoded: {reason}")
            return None

    def _library_message(self, text: str) -> None:
        """What libpng, libjpeg or OpenCV printed while decoding: into the throttled log."""
        self._warn("image_library", f"image library, while decoding a frame: {text}")

    def wanted(self) -> tuple[bool, bool, bool]:
        """(colour mask, overlay, confidence): each is computed only while someone subscribes
        to it; the confidence also for every frame while the frame score is on."""
        return (self._subscribed("color_mask"), self._subscribed("overlay"),
                self.score or self._subscribed("confidence"))

    def _subscribed(self, name: str) -> bool:
        publisher = self.publishers.get(name)
        return publisher is not None and publisher.get_subscription_count() > 0

    def publish(self, msg: Any, frame: SegmentedFrame, received_at: float) -> bool:
        """Encode and publish ``frame`` with ``msg``'s header; True if published."""
        try:
            if frame.confidence is not None and not self._subscribed("confidence"):
                frame = replace(frame, confidence=None)  # made for the score only
            messages = encode_frame(frame, msg.header, self.image_type)
            if not self.active():
                return False
            for topic, out in messages.items():
                self.publishers[topic].publish(out)
            if frame.score is not None:
                smoothed = self.stats.on_score(frame.score)
                if self.float_type is not None and self._subscribed("low_confidence"):
                    self.publishers["low_confidence"].publish(self.float_type(data=float(smoothed)))
        except Exception as exc:  # one frame must never kill the node
            return self.failed(exc)
        self.stats.on_published(received_at)
        return True

    def failed(self, exc: BaseException) -> bool:
        """Count and warn (throttled) about a frame that could not be processed; False."""
        self.stats.on_failed_frame()
        self._warn("frame_error", f"processing a frame failed and it was skipped: {type(exc).__name__}: {exc}")
        return False

    def _warn(self, key: str, text: str) -> None:
        line = self.throttle(key, text)
        if line is not None:
            self.warn(line)
