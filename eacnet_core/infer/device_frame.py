"""The frame's pre- and post-processing as tensor operations on the inference device.

Why: on a GPU the forward pass of an EACNet takes about a millisecond once compiled, while the
CPU path around it (resize, colour order, normalisation, argmax, nearest resize, colour mask,
overlay in OpenCV/numpy) takes several, and copies float logits back. Here the uint8 frame
goes up once and only the uint8 results the caller wants come back:

    uint8 (H, W, 3) BGR -> pinned host buffer -> one host-to-device copy (on a side stream)
    -> bilinear resize to the network size (uint8-rounded, as cv2.resize gives uint8)
    -> BGR->RGB + normalisation through the training lookup table (``normalisation_lut``)
    -> forward -> argmax -> nearest resize to (H, W) (OpenCV's INTER_NEAREST index rule)
    -> colour mask (palette lookup) and overlay (cv2.addWeighted's float32 arithmetic)
    -> where asked, the confidence (softmax maximum as uint8, nearest-resized as the mask)
    -> one device-to-host copy of the wanted outputs into pinned memory.

The results equal the CPU path's (``Segmenter.preprocess``/``mask_at_size``/``colorize``/
``overlay``): the network input bit for bit when no resize is needed (so the mask too, where
the forward pass agrees), the nearest resize, colour mask and overlay bit for bit from the
same mask. A resize to the network size can differ from cv2's 11-bit fixed-point bilinear
by one grey level in some pixels. Written against torch's device-agnostic API, so the tests
run it on CPU tensors; the streams and pinned memory are used on CUDA only.

Copies are asynchronous: ``submit`` queues a batch and returns at once, ``PendingFrames.result``
waits for it. A caller that submits the next frame before collecting the current one has that
frame's upload (on the side stream) overlap the current forward pass.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from eacnet_core.data.transforms import normalisation_lut
from eacnet_core.infer.confidence import confidence_tensor

Forward = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class FrameResult:
    """One frame's outputs at its own size: the uint8 class-id mask always; the BGR colour
    mask, overlay and uint8 confidence (255 = softmax maximum 1.0) only when they were asked
    for (else None)."""

    mask: np.ndarray
    color_mask: Optional[np.ndarray] = None
    overlay: Optional[np.ndarray] = None
    confidence: Optional[np.ndarray] = None


class PendingFrames:
    """A submitted batch whose results may still be on their way from the device."""

    def __init__(self, host: torch.Tensor, layout: list[list[tuple[str, tuple[int, ...]]]],
                 done: Optional[torch.cuda.Event]):
        self._host, self._layout, self._done = host, layout, done

    def result(self) -> list[FrameResult]:
        """Wait for the copy back, then split it into per-frame arrays (views of one pinned
        buffer, which lives as long as any of them)."""
        if self._done is not None:
            self._done.synchronize()
        flat, offset, results = self._host.numpy(), 0, []
        for parts in self._layout:
            arrays: dict[str, np.ndarray] = {}
            for name, shape in parts:
                size = int(np.prod(shape))
                arrays[name] = flat[offset:offset + size].reshape(shape)
                offset += size
            results.append(FrameResult(**arrays))
        return results


class ReadyFrames:
    """Results already at hand (the CPU path): ``result()`` as ``PendingFrames``'."""

    def __init__(self, results: list[FrameResult]):
        self._results = results

    def result(self) -> list[FrameResult]:
        return self._results


class DeviceFrames:
    """Pre/post-processing of camera frames on ``device`` around a forward pass.

    ``network_hw``: the size the network runs at, (0, 0) for each frame's own size.
    ``palette_bgr``: (K, 3) uint8 colours of the class ids (ids beyond K are black, as
    ``Segmenter.colorize``). ``dtype`` and ``channels_last``: what the forward pass takes."""

    def __init__(self, device: torch.device, dtype: torch.dtype, mean: Sequence[float], std: Sequence[float],
                 palette_bgr: np.ndarray, network_hw: tuple[int, int] = (0, 0), channels_last: bool = True):
        self.device, self.dtype, self.network_hw = torch.device(device), dtype, tuple(network_hw)
        self.layout = torch.channels_last if channels_last else torch.contiguous_format
        # The (256, 1, 3) RGB table the CPU path applies with cv2.LUT, as one flat (3 * 256) table:
        # entry c * 256 + v is channel c's value for v.
        table = normalisation_lut(mean, std).reshape(256, 3).T.reshape(-1)
        self._norm = torch.from_numpy(np.ascontiguousarray(table)).to(self.device)
        self._rgb_offsets = torch.arange(3, device=self.device) * 256
        colours = np.zeros((256, 3), np.uint8)
        count = min(len(palette_bgr), 256)
        colours[:count] = np.asarray(palette_bgr, np.uint8)[:count]
        self._palette = torch.from_numpy(colours).to(self.device)
        self._cuda = self.device.type == "cuda"
        self._copy_stream = torch.cuda.Stream(self.device) if self._cuda else None

    # ------------------------------------------------------------------ the whole frame
    def submit(self, images: Sequence[np.ndarray], forward: Forward,
               wanted: Optional[Sequence[Sequence[bool]]] = None, alpha: float = 0.5,
               temperature: float = 1.0) -> PendingFrames:
        """Queue ``images`` (BGR uint8, checked by the caller) through pre-processing,
        ``forward`` (one pass per network size) and post-processing; ``wanted`` gives
        (colour mask, overlay) or (colour mask, overlay, confidence) per image, default none;
        the confidence is the softmax maximum of ``logits / temperature``."""
        wanted = [(*w, False)[:3] for w in wanted] if wanted is not None else [(False, False, False)] * len(images)
        if len(wanted) != len(images):
            raise ValueError(f"{len(wanted)} output choices for {len(images)} images")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"overlay alpha must be in [0, 1], got {alpha}")
        uploads = [self.upload(bgr) for bgr in images]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, bgr in enumerate(images):
            groups.setdefault(self.network_size(bgr.shape[:2]), []).append(i)
        ids: list[Optional[torch.Tensor]] = [None] * len(images)
        sure: list[Optional[torch.Tensor]] = [None] * len(images)
        for size, members in groups.items():
            batch = self.network_input([uploads[i] for i in members], size)
            logits = forward(batch)
            classes = self.argmax(logits)  # the mask is the same whether confidence is asked or not
            confidence = (confidence_tensor(torch.softmax(logits.float() / temperature, 1).amax(1))
                          if any(wanted[i][2] for i in members) else None)
            for row, i in enumerate(members):
                ids[i] = classes[row]
                sure[i] = confidence[row] if confidence is not None and wanted[i][2] else None
        parts, layout = [], []
        for frame, classes, conf, (want_color, want_overlay, _) in zip(uploads, ids, sure, wanted, strict=True):
            mask = self.nearest(classes, frame.shape[:2])
            outputs = {"mask": mask}
            if conf is not None:
                outputs["confidence"] = self.nearest(conf, frame.shape[:2])
            if want_color or want_overlay:
                colours = self.colorize(mask)
                if want_color:
                    outputs["color_mask"] = colours
                if want_overlay:
                    outputs["overlay"] = self.overlay(frame, colours, alpha)
            parts += [t.reshape(-1) for t in outputs.values()]
            layout.append([(name, tuple(t.shape)) for name, t in outputs.items()])
        return self._download(torch.cat(parts) if len(parts) > 1 else parts[0], layout)

    def network_size(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        return self.network_hw if self.network_hw[0] else (int(image_hw[0]), int(image_hw[1]))

    # ------------------------------------------------------------------ the steps
    def upload(self, bgr: np.ndarray) -> torch.Tensor:
        """The uint8 frame on the device. On CUDA: copied into pinned memory, then one
        non-blocking copy on the side stream, which the current stream waits for (so the
        copy can overlap work queued before it). Elsewhere: the array itself, not copied."""
        host = torch.from_numpy(np.ascontiguousarray(bgr))  # no copy unless it is a strided view
        if not self._cuda:
            return host.to(self.device)
        pinned = torch.empty(host.shape, dtype=torch.uint8, pin_memory=True)
        pinned.copy_(host)
        current = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self._copy_stream):
            frame = pinned.to(self.device, non_blocking=True)
        current.wait_stream(self._copy_stream)
        frame.record_stream(current)  # allocated on the side stream, used on this one
        return frame

    def network_input(self, frames: Sequence[torch.Tensor], size_hw: tuple[int, int]) -> torch.Tensor:
        """uint8 (H, W, 3) BGR frames -> normalised RGB (N, 3, h, w) in the model's dtype and
        memory format: resized to ``size_hw`` where needed, then the normalisation table."""
        rgb = torch.stack([self.resize_bilinear(f, size_hw) for f in frames]).flip(-1)
        normalised = self._norm[rgb.long() + self._rgb_offsets]  # (N, h, w, 3) float32
        return normalised.permute(0, 3, 1, 2).to(self.dtype).contiguous(memory_format=self.layout)

    @staticmethod
    def resize_bilinear(frame: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
        """uint8 (H, W, 3) -> uint8 (h, w, 3), bilinear with pixel-centre alignment (cv2's
        INTER_LINEAR geometry), rounded half up as cv2 rounds."""
        if tuple(frame.shape[:2]) == tuple(size_hw):
            return frame
        planes = frame.permute(2, 0, 1)[None].float()
        resized = F.interpolate(planes, size=tuple(size_hw), mode="bilinear", align_corners=False, antialias=False)
        return torch.floor(resized + 0.5).clamp_(0, 255).to(torch.uint8)[0].permute(1, 2, 0)

    @staticmethod
    def argmax(logits: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) logits -> uint8 (N, h, w) class ids; the first maximum wins, as in
        ``mask_at_size``."""
        return logits.argmax(1).to(torch.uint8)

    def nearest(self, mask: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
        """uint8 (h, w) -> (H, W) with OpenCV's INTER_NEAREST source indices (what
        ``mask_at_size`` uses), so the CPU and device masks agree pixel for pixel."""
        if tuple(mask.shape) == tuple(size_hw):
            return mask
        rows, cols = _nearest_indices(tuple(mask.shape), tuple(size_hw), str(self.device))
        return mask.index_select(0, rows).index_select(1, cols)

    def colorize(self, mask: torch.Tensor) -> torch.Tensor:
        """uint8 (H, W) ids -> BGR uint8 (H, W, 3) through the 256-entry palette."""
        return self._palette[mask.long()]

    @staticmethod
    def overlay(frame: torch.Tensor, colours: torch.Tensor, alpha: float) -> torch.Tensor:
        """alpha * colours + (1 - alpha) * frame with cv2.addWeighted's arithmetic for uint8:
        float32 weights, frame * beta rounded to float32, then colours * alpha added in one
        fused multiply-add, rounded half to even. The fused step is done exactly in float64
        (an 8-bit by 24-bit product and a float32 sum fit its 53 bits), then rounded to
        float32 once, as the fused instruction does: the same bytes on every device."""
        alpha32 = torch.tensor(alpha, dtype=torch.float32)
        beta32 = torch.tensor(1.0 - alpha, dtype=torch.float32)
        base = frame.float() * beta32.to(frame.device)
        fused = (colours.double() * alpha32.double().to(frame.device) + base.double()).float()
        return torch.round(fused).clamp_(0, 255).to(torch.uint8)

    def _download(self, packed: torch.Tensor, layout: list[list[tuple[str, tuple[int, ...]]]]) -> PendingFrames:
        if not self._cuda:
            return PendingFrames(packed.cpu(), layout, None)
        host = torch.empty(packed.shape, dtype=torch.uint8, pin_memory=True)
        host.copy_(packed, non_blocking=True)
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(self.device))
        return PendingFrames(host, layout, done)


@functools.lru_cache(maxsize=16)
def _nearest_indices(src_hw: tuple[int, int], dst_hw: tuple[int, int], device: str) -> tuple[torch.Tensor, ...]:
    """Source row and column of every destination pixel, by OpenCV's resizeNN rule:
    floor(d * (1 / (dst / src))) in double precision, capped at src - 1."""
    indices = []
    for src, dst in zip(src_hw, dst_hw, strict=True):
        index = np.minimum(np.floor(np.arange(dst) * (1.0 / (dst / src))), src - 1).astype(np.int64)
        indices.append(torch.from_numpy(index).to(device))
    return tuple(indices)
