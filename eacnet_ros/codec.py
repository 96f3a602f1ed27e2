"""sensor_msgs/Image and CompressedImage <-> numpy, without cv_bridge.

Duck-typed: works on rclpy messages (``data`` is ``array.array('B')``) and on
``rosbags`` dataclasses (``data`` is a numpy array) alike, so the node and the bag
tools share exactly one conversion path. cv_bridge is avoided on purpose: its ROS 2
builds break under numpy 2 (vision_opencv #535), and this needs only numpy + OpenCV.

Decoding always yields a BGR uint8 (H, W, 3) array, the Segmenter's input.
"""

from __future__ import annotations

import array
from collections.abc import Callable
from typing import Any

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


def compressed_to_bgr(msg: Any) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg or png, colour or grey) -> BGR uint8 (H, W, 3)."""
    buf = _buffer(msg.data)
    fmt = str(getattr(msg, "format", "")) or "unknown"
    if buf.size == 0:
        raise ImageDecodeError(f"empty CompressedImage (format {fmt!r})")
    image = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if image is None:
        raise ImageDecodeError(f"undecodable CompressedImage of {buf.size} bytes (format {fmt!r}); "
                               "jpeg and png are supported")
    return image


def to_bgr(msg: Any) -> np.ndarray:
    """Either message type -> BGR uint8: CompressedImage has ``format``, Image has ``encoding``."""
    return compressed_to_bgr(msg) if hasattr(msg, "format") and not hasattr(msg, "encoding") else image_to_bgr(msg)


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
