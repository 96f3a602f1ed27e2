"""One frame through the model: BGR in, mask (and, when subscribed, colour mask and
overlay) out, encoded as Image messages with the input's header; ROS-free."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from eacnet_core.inference import Segmenter

from . import codec

# ---------------------------------------------------------------------------- per-frame pipeline

@dataclass
class SegmentedFrame:
    """Outputs of one frame; colour mask and overlay are None when nobody wants them."""

    mask: np.ndarray
    color_mask: Optional[np.ndarray] = None
    overlay: Optional[np.ndarray] = None


class FrameProcessor:
    """BGR frame -> mask (always), colour mask and overlay (only when subscribed)."""

    def __init__(self, segmenter: Segmenter, overlay_alpha: float = 0.5):
        self.segmenter = segmenter
        self.overlay_alpha = overlay_alpha

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

    def process(self, bgr: np.ndarray, want_color: bool, want_overlay: bool) -> SegmentedFrame:
        return self._outputs(bgr, self.segmenter.segment(bgr), want_color, want_overlay)

    def process_batch(self, images: Sequence[np.ndarray], wanted: Sequence[tuple[bool, bool]]) -> list[SegmentedFrame]:
        """Several frames (one per camera) through one forward pass per network size;
        ``wanted``: (colour, overlay) for each frame."""
        masks = self.segmenter.segment_batch(images)
        return [self._outputs(bgr, mask, *want) for bgr, mask, want in zip(images, masks, wanted, strict=True)]

    def _outputs(self, bgr: np.ndarray, mask: np.ndarray, want_color: bool, want_overlay: bool) -> SegmentedFrame:
        colours = self.segmenter.colorize(mask) if (want_color or want_overlay) else None
        overlay = self.segmenter.overlay(bgr, mask, self._alpha, color_mask=colours) if want_overlay else None
        return SegmentedFrame(mask, colours if want_color else None, overlay)


OUTPUT_ENCODINGS = {"mask": "mono8", "color_mask": "bgr8", "overlay": "bgr8"}


def encode_frame(frame: SegmentedFrame, header: Any, image_type: type) -> dict[str, Any]:
    """Output topic -> Image message, each carrying the input's header unchanged so
    rviz and message_filters line them up with the camera frame."""
    arrays = {"mask": frame.mask, "color_mask": frame.color_mask, "overlay": frame.overlay}
    return {topic: codec.array_to_image(image_type, header, pixels, OUTPUT_ENCODINGS[topic])
            for topic, pixels in arrays.items() if pixels is not None}
