"""One frame through the model: BGR in, mask (and, when subscribed, colour mask, overlay and
confidence; with the frame score on, the confidence and the frame score every frame) out,
encoded as Image messages with the input's header; ROS-free."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import cv2
import numpy as np

from eacnet_core.infer.confidence import frame_score
from eacnet_core.infer.segmenter import Segmenter

from . import codec
from .choice import EngineChoice

# ---------------------------------------------------------------------------- per-frame pipeline

@dataclass
class SegmentedFrame:
    """Outputs of one frame; colour mask, overlay and confidence are None when nobody wants
    them; ``score``, the frame score (0 trustworthy .. 1 not), whenever the confidence was made."""

    mask: np.ndarray
    color_mask: Optional[np.ndarray] = None
    overlay: Optional[np.ndarray] = None
    confidence: Optional[np.ndarray] = None
    score: Optional[float] = None


class FrameProcessor:
    """BGR frame -> mask (always), colour mask and overlay (only when subscribed)."""

    def __init__(self, segmenter: Segmenter, overlay_alpha: float = 0.5, choice: Optional[EngineChoice] = None):
        """``choice``: backend/precision auto's choices for sizes met while running (the node's)."""
        self.segmenter = segmenter
        self.overlay_alpha = overlay_alpha
        self.choice = choice

    @property
    def overlay_alpha(self) -> float:
        return self._alpha

    @overlay_alpha.setter
    def overlay_alpha(self, value: float) -> None:
        # Set from the parameter callback while the worker reads it: one float attribute
        # assignment is atomic, so no lock is needed.
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"overlay_alpha must be in [0, 1], got {value}")
        self._alpha = float(value)

    def process(self, bgr: np.ndarray, want_color: bool, want_overlay: bool,
                network_hw: Optional[tuple[int, int]] = None, want_confidence: bool = False) -> SegmentedFrame:
        """``network_hw``: run the network at this size instead of the frame's own (see
        ``FrameSizes``); the mask comes back at the frame's size either way."""
        return self.process_batch([bgr], [(want_color, want_overlay, want_confidence)], [network_hw])[0]

    def process_batch(self, images: Sequence[np.ndarray], wanted: Sequence[Sequence[bool]],
                      network_sizes: Optional[Sequence[Optional[tuple[int, int]]]] = None) -> list[SegmentedFrame]:
        """Several frames (one per camera) through one forward pass per network size;
        ``wanted``: (colour, overlay) or (colour, overlay, confidence) for each frame;
        ``network_sizes``: as ``process``'s. A frame whose confidence is made also gets its
        frame score (``eacnet_core.infer.confidence.frame_score``, about a millisecond).

        ``Segmenter.segment_frames`` makes only the wanted outputs (on the GPU, it also copies
        only those back). A frame run at another size than its own (an odd-sized frame, see
        ``FrameSizes``) gets its mask only from there: the mask is resized back to the frame
        and its colour mask and overlay are made from the frame itself."""
        sizes = list(network_sizes) if network_sizes is not None else [None] * len(images)
        wanted = [(bool(w[0]), bool(w[1]), bool(w[2]) if len(w) > 2 else False) for w in wanted]
        resize = [self._resize_to(bgr, hw) for bgr, hw in zip(images, sizes, strict=True)]
        inputs = [_resized(bgr, hw) if r else bgr for bgr, hw, r in zip(images, sizes, resize, strict=True)]
        asked = [(False, False, want[2]) if r else want for want, r in zip(wanted, resize, strict=True)]
        if self.choice is not None:  # a new size is measured in the background, this frame runs now
            self.choice.before(inputs)
        results = self.segmenter.segment_frames(inputs, asked, self._alpha)
        frames = []
        for bgr, r, want, odd in zip(images, results, wanted, resize, strict=True):
            if odd:
                frame = self._outputs(bgr, _resized(r.mask, bgr.shape[:2], nearest=True), *want[:2])
                if r.confidence is not None:
                    frame.confidence = _resized(r.confidence, bgr.shape[:2], nearest=True)
            else:
                frame = SegmentedFrame(r.mask, r.color_mask, r.overlay, r.confidence)
            if frame.confidence is not None:
                frame.score = frame_score(frame.confidence, bgr)
            frames.append(frame)
        return frames

    def _resize_to(self, bgr: np.ndarray, network_hw: Optional[tuple[int, int]]) -> bool:
        """Whether the frame must be resized to ``network_hw`` first: not when an inference
        size is set (the Segmenter resizes every frame to it) or the sizes agree."""
        return (network_hw is not None and not self.segmenter.options.inference_height
                and tuple(bgr.shape[:2]) != tuple(network_hw))

    def _outputs(self, bgr: np.ndarray, mask: np.ndarray, want_color: bool, want_overlay: bool) -> SegmentedFrame:
        colours = self.segmenter.colorize(mask) if (want_color or want_overlay) else None
        overlay = self.segmenter.overlay(bgr, mask, self._alpha, color_mask=colours) if want_overlay else None
        return SegmentedFrame(mask, colours if want_color else None, overlay)


OUTPUT_ENCODINGS = {"mask": "mono8", "color_mask": "bgr8", "overlay": "bgr8", "confidence": "mono8"}


def encode_frame(frame: SegmentedFrame, header: Any, image_type: type) -> dict[str, Any]:
    """Output topic -> Image message, each carrying the input's header unchanged so
    rviz and message_filters line them up with the camera frame."""
    arrays = {"mask": frame.mask, "color_mask": frame.color_mask, "overlay": frame.overlay,
              "confidence": frame.confidence}
    return {topic: codec.array_to_image(image_type, header, pixels, OUTPUT_ENCODINGS[topic])
            for topic, pixels in arrays.items() if pixels is not None}


def _resized(pixels: np.ndarray, size_hw: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """Bilinear for a frame (as ``Segmenter.preprocess`` resizes), nearest for a mask."""
    interpolation = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.resize(pixels, (size_hw[1], size_hw[0]), interpolation=interpolation)


#: Frame sizes remembered per camera (``FrameSizes``): enough to outvote a burst of odd frames,
#: few enough that a camera switched to another resolution takes over within seconds.
SIZE_HISTORY = 64


class FrameSizes:
    """One camera's own frame size, so frames of other sizes cannot cost it its engine.

    With no inference size set, the network runs at each frame's size, and the engines
    (onnxruntime sessions, OpenVINO compiled models) are built and cached per size. One
    publisher of odd-sized frames on the camera's topic made every frame a new engine, and
    the bounded cache evicted the camera's own: latency went from 6.6 ms to 182 ms and half
    the camera's frames got no mask. The size seen most often among the last
    ``SIZE_HISTORY`` frames is the camera's; a frame of another size runs at that size
    (resized, the mask resized back), so the engines stay the camera's."""

    def __init__(self, history: int = SIZE_HISTORY):
        self._recent: deque[tuple[int, int]] = deque(maxlen=history)
        self._counts: Counter[tuple[int, int]] = Counter()

    def network_size(self, size_hw: tuple[int, int]) -> Optional[tuple[int, int]]:
        """Record a frame of ``size_hw``; the size to run it at when that is not its own
        (None: its own)."""
        size_hw = (int(size_hw[0]), int(size_hw[1]))
        if len(self._recent) == self._recent.maxlen:
            old = self._recent[0]
            self._counts[old] -= 1
            if not self._counts[old]:
                del self._counts[old]
        self._recent.append(size_hw)
        self._counts[size_hw] += 1
        main = max(self._counts, key=self._counts.__getitem__)  # ties: the size seen first
        return None if main == size_hw else main
