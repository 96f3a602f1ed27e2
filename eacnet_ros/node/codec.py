"""sensor_msgs/Image and CompressedImage <-> numpy, without cv_bridge.

Duck-typed: works on rclpy messages (``data`` is ``array.array('B')``) and on
``rosbags`` dataclasses (``data`` is a numpy array) alike, so the node and the bag
tools share exactly one conversion path. cv_bridge is avoided on purpose: its ROS 2
builds break under numpy 2 (vision_opencv #535), and this needs only numpy + OpenCV.

Decoding always yields a BGR uint8 (H, W, 3) array, the Segmenter's input.
"""

from __future__ import annotations

import array
import contextlib
import os
import re
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import Any, Optional

import cv2
import numpy as np


class ImageDecodeError(ValueError):
    """A frame that cannot be turned into an image; the message says why."""


def _bayer(code: int) -> Callable[[np.ndarray], np.ndarray]:
    return lambda a: cv2.cvtColor(a[..., 0], code)


# encoding -> (channels, numpy dtype, converter from the (H, W, channels) array to BGR8).
# Bayer codes follow cv_bridge: OpenCV names the pattern by the 2x2 block at (1, 1).
_DECODERS: dict[str, tuple[int, str, Callable[[np.ndarray], np.ndarray]]] = {
    "bgr8": (3, "u1", lambda a: a),
    "rgb8": (3, "u1", lambda a: cv2.cvtColor(a, cv2.COLOR_RGB2BGR)),
    "bgra8": (4, "u1", lambda a: cv2.cvtColor(a, cv2.COLOR_BGRA2BGR)),
    "rgba8": (4, "u1", lambda a: cv2.cvtColor(a, cv2.COLOR_RGBA2BGR)),
    "mono8": (1, "u1", lambda a: cv2.cvtColor(a[..., 0], cv2.COLOR_GRAY2BGR)),
    "8UC1": (1, "u1", lambda a: cv2.cvtColor(a[..., 0], cv2.COLOR_GRAY2BGR)),
    "8UC3": (3, "u1", lambda a: a),
    "mono16": (1, "u2", lambda a: cv2.cvtColor((a[..., 0] >> 8).astype(np.uint8), cv2.COLOR_GRAY2BGR)),
    "bgr16": (3, "u2", lambda a: (a >> 8).astype(np.uint8)),
    "rgb16": (3, "u2", lambda a: cv2.cvtColor((a >> 8).astype(np.uint8), cv2.COLOR_RGB2BGR)),
    "yuv422": (2, "u1", lambda a: cv2.cvtColor(a, cv2.COLOR_YUV2BGR_UYVY)),  # UYVY
    "uyvy": (2, "u1", lambda a: cv2.cvtColor(a, cv2.COLOR_YUV2BGR_UYVY)),
    "yuv422_yuy2": (2, "u1", lambda a: cv2.cvtColor(a, cv2.COLOR_YUV2BGR_YUY2)),  # YUYV
    "yuyv": (2, "u1", lambda a: cv2.cvtColor(a, cv2.COLOR_YUV2BGR_YUY2)),
    "bayer_rggb8": (1, "u1", _bayer(cv2.COLOR_BayerBG2BGR)),
    "bayer_bggr8": (1, "u1", _bayer(cv2.COLOR_BayerRG2BGR)),
    "bayer_gbrg8": (1, "u1", _bayer(cv2.COLOR_BayerGR2BGR)),
    "bayer_grbg8": (1, "u1", _bayer(cv2.COLOR_BayerGB2BGR)),
}

SUPPORTED_ENCODINGS = tuple(_DECODERS)
# Encodings whose pixel rows must have an even width (two pixels share one U/V pair).
_PAIRED = {"yuv422", "uyvy", "yuv422_yuy2", "yuyv"}


def _buffer(data: Any) -> np.ndarray:
    """The message's byte payload as a flat uint8 array, without copying where possible."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8) if data.dtype.itemsize == 1 else data.view(np.uint8).reshape(-1)
    if isinstance(data, (bytes, bytearray, memoryview, array.array)):
        return np.frombuffer(data, dtype=np.uint8)
    return np.asarray(data, dtype=np.uint8).reshape(-1)


def image_to_array(msg: Any) -> np.ndarray:
    """Raw pixel array of an Image, (H, W, channels) in the message's own encoding and
    dtype (native byte order), honouring ``step`` row padding and ``is_bigendian``."""
    encoding = str(msg.encoding)
    if encoding not in _DECODERS:
        raise ImageDecodeError(f"unsupported encoding {encoding!r}; supported: {', '.join(SUPPORTED_ENCODINGS)}")
    channels, kind, _ = _DECODERS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ImageDecodeError(f"zero-sized image ({width}x{height}, encoding {encoding})")
    if encoding in _PAIRED and width % 2:
        raise ImageDecodeError(f"{encoding} needs an even width, got {width}")
    dtype = np.dtype(kind).newbyteorder(">" if msg.is_bigendian else "<")
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise ImageDecodeError(f"step {step} is smaller than a {encoding} row of {width} pixels ({row_bytes} bytes)")
    buf = _buffer(msg.data)
    if buf.size != step * height:
        raise ImageDecodeError(f"data length {buf.size} does not match step x height = {step} x {height} "
                               f"= {step * height} ({encoding} {width}x{height})")
    rows = buf.reshape(height, step)[:, :row_bytes]
    pixels = np.ascontiguousarray(rows).view(dtype).reshape(height, width, channels)
    return pixels.astype(dtype.newbyteorder("="), copy=False)


def image_to_bgr(msg: Any) -> np.ndarray:
    """sensor_msgs/Image of any supported encoding -> BGR uint8 (H, W, 3)."""
    pixels = image_to_array(msg)
    bgr = _DECODERS[str(msg.encoding)][2](pixels)
    return np.ascontiguousarray(bgr)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: JPEG start-of-frame markers (baseline, progressive, lossless...; not DHT C4, JPG C8, DAC CC).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def compressed_dimensions(data: bytes) -> Optional[tuple[int, int]]:
    """(width, height) that a PNG or JPEG header claims, read without decoding, or None
    when the header is not one of those (or is cut short). A few hundred bytes claiming
    100000x100000 pixels must be refused before OpenCV tries to allocate them."""
    if data[:8] == _PNG_SIGNATURE and len(data) >= 24 and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 9 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker in _JPEG_SOF:
            return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
        elif 0xD0 <= marker <= 0xD9 or marker == 0x01:  # markers without a length
            i += 2
        else:
            i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def _check_pixels(width: int, height: int, max_pixels: Optional[int], what: str, min_side: int = 1) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise ImageDecodeError(f"{what} of {width}x{height} = {width * height} pixels is over the limit of "
                               f"{max_pixels} (parameter max_input_pixels); skipped without decoding")
    if 0 < min(width, height) < min_side:  # zero: image_to_array names it
        raise ImageDecodeError(f"{what} of {width}x{height} is smaller than {min_side} pixels on a side, too small "
                               "for the network; skipped without decoding")


#: A log line of the ROS logger (rcutils' default format) from another thread, written while
#: a decode had stderr: passed through unchanged, never taken for the image library's.
_ROS_LOG_LINE = re.compile(r"\[(DEBUG|INFO|WARN|ERROR|FATAL)\] \[")
_STDERR_LOCK = threading.Lock()
_stderr_sink: Optional[Any] = None


@contextlib.contextmanager
def _library_messages(report: Optional[Callable[[str], None]]) -> Iterator[None]:
    """While the block runs, what is written to the process's stderr (fd 2) is collected;
    afterwards each line from the image libraries (libpng, libjpeg, OpenCV, which print
    with C ``fprintf``) goes to ``report`` and anything else back to stderr. This keeps a
    hostile publisher's frames from writing to the console past the node's throttled log."""
    global _stderr_sink
    if report is None:
        yield
        return
    with _STDERR_LOCK:
        if _stderr_sink is None:
            _stderr_sink = tempfile.TemporaryFile()
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(_stderr_sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            _stderr_sink.seek(0)
            written = _stderr_sink.read()
            _stderr_sink.seek(0)
            _stderr_sink.truncate()
    passed = []
    for line in written.decode("utf-8", errors="replace").splitlines():
        if _ROS_LOG_LINE.match(line):
            passed.append(line)
        elif line.strip():
            report(line.strip())
    if passed:
        os.write(2, ("\n".join(passed) + "\n").encode())


def _header_problem(data: bytes) -> str:
    """Why compressed bytes whose size cannot be read are refused: only JPEG and PNG are
    decoded (the documented formats), and only once the size is known, so every frame is
    checked against the pixel limit before it is decoded (OpenCV also reads TIFF, WebP,
    ..., whose headers this module does not parse)."""
    if data[:8] == _PNG_SIGNATURE or data[:2] == b"\xff\xd8":
        return "its PNG/JPEG header ends before the image size (truncated or malformed)"
    return f"the data is neither JPEG nor PNG (starts with {data[:8].hex()}); jpeg and png are supported"


def compressed_to_bgr(msg: Any, max_pixels: Optional[int] = None, min_side: int = 1,
                      library_messages: Optional[Callable[[str], None]] = None) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg or png, colour or grey) -> BGR uint8 (H, W, 3).

    Only JPEG and PNG are decoded, and only when the size their header claims is within
    ``max_pixels`` and ``min_side``; OpenCV's own errors (corrupt or absurd headers) become
    ``ImageDecodeError``. ``library_messages``: receives what the image libraries print
    while decoding (otherwise it goes to stderr)."""
    buf = _buffer(msg.data)
    fmt = str(getattr(msg, "format", "")) or "unknown"
    what = f"CompressedImage (format {fmt!r})"
    if buf.size == 0:
        raise ImageDecodeError(f"empty CompressedImage (format {fmt!r})")
    data = buf.tobytes()
    claimed = compressed_dimensions(data)
    if claimed is None:
        raise ImageDecodeError(f"undecodable CompressedImage of {buf.size} bytes (format {fmt!r}): "
                               f"{_header_problem(data)}")
    _check_pixels(*claimed, max_pixels, what, min_side)
    try:
        with _library_messages(library_messages):
            image = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    except cv2.error as exc:
        reason = " ".join(str(exc).split())[-200:]
        raise ImageDecodeError(f"OpenCV refused a CompressedImage of {buf.size} bytes (format {fmt!r}): "
                               f"{reason}") from None
    if image is None:
        raise ImageDecodeError(f"undecodable CompressedImage of {buf.size} bytes (format {fmt!r}); "
                               "jpeg and png are supported")
    return image


def to_bgr(msg: Any, max_pixels: Optional[int] = None, min_side: int = 1,
           library_messages: Optional[Callable[[str], None]] = None) -> np.ndarray:
    """Either message type -> BGR uint8: CompressedImage has ``format``, Image has ``encoding``.
    Frames over ``max_pixels`` (width x height) or with a side under ``min_side`` raise
    ``ImageDecodeError`` before decoding."""
    if hasattr(msg, "format") and not hasattr(msg, "encoding"):
        return compressed_to_bgr(msg, max_pixels, min_side, library_messages)
    _check_pixels(int(msg.width), int(msg.height), max_pixels, f"Image ({msg.encoding})", min_side)
    try:
        return image_to_bgr(msg)
    except cv2.error as exc:
        raise ImageDecodeError(f"OpenCV could not convert a {msg.width}x{msg.height} {msg.encoding} Image: "
                               f"{' '.join(str(exc).split())[-200:]}") from None


_ENCODE_CHANNELS = {"bgr8": 3, "rgb8": 3, "mono8": 1, "8UC1": 1, "bgra8": 4, "rgba8": 4}


def _payload(msg_type: type, flat: bytes) -> Any:
    """rclpy's uint8[] setter takes array.array('B') without a per-byte Python check;
    rosbags dataclasses want a numpy array."""
    if hasattr(msg_type, "get_fields_and_field_types"):  # rclpy-generated message class
        return array.array("B", flat)
    return np.frombuffer(flat, dtype=np.uint8).copy()


def array_to_image(msg_type: type, header: Any, pixels: np.ndarray, encoding: str) -> Any:
    """uint8 (H, W) or (H, W, C) array -> a ``msg_type`` Image (rclpy or rosbags class),
    carrying ``header`` unchanged so it lines up with its source frame."""
    if encoding not in _ENCODE_CHANNELS:
        raise ValueError(f"cannot encode {encoding!r}; encodable: {', '.join(_ENCODE_CHANNELS)}")
    channels = _ENCODE_CHANNELS[encoding]
    pixels = np.ascontiguousarray(pixels)
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3) or (pixels.shape + (1,))[2] != channels:
        raise ValueError(f"{encoding} needs a uint8 array with {channels} channel(s), "
                         f"got {pixels.dtype} of shape {pixels.shape}")
    height, width = pixels.shape[:2]
    return msg_type(header=header, height=height, width=width, encoding=encoding, is_bigendian=0,
                    step=width * channels, data=_payload(msg_type, pixels.tobytes()))


def bgr_to_compressed(msg_type: type, header: Any, bgr: np.ndarray, fmt: str = "jpeg", quality: int = 90) -> Any:
    """BGR uint8 -> a ``msg_type`` CompressedImage in jpeg or png."""
    fmt = fmt.lower()
    if fmt not in ("jpeg", "png"):
        raise ValueError(f"compressed format must be jpeg or png, got {fmt!r}")
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if fmt == "jpeg" else []
    ok, encoded = cv2.imencode(".jpg" if fmt == "jpeg" else ".png", bgr, params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {bgr.shape} image as {fmt}")
    return msg_type(header=header, format=fmt, data=_payload(msg_type, encoded.tobytes()))
