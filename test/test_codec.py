"""eacnet_ros.node.codec against real sensor_msgs layouts.

Every message is built with rosbags' Humble and Jazzy message classes and sent through a
CDR serialize/deserialize round trip first, so what is decoded has exactly the layout a
rosbag2 file or a DDS sample has. Colours are checked, not just shapes: a known image is
encoded into each encoding by the helpers below (bayer mosaics from flat colour patches,
YUV 4:2:2 with OpenCV's inverse conversion) and must decode back close to the original.
"""

from __future__ import annotations

import array
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from rosbags.typesys import Stores, get_typestore

from eacnet_ros.node import codec
from eacnet_ros.node.codec import ImageDecodeError

H, W = 24, 32
# Four flat patches with distinct B, G and R values, so a swapped channel or a wrong bayer
# pattern is a large error. Patch borders fall on even rows/columns (2x2 bayer cells, YUV pairs).
COLOURS_BGR = ((30, 120, 220), (200, 60, 10), (90, 230, 140), (15, 15, 180))


def reference_image() -> np.ndarray:
    img = np.zeros((H, W, 3), np.uint8)
    for i, colour in enumerate(COLOURS_BGR):
        r, c = divmod(i, 2)
        img[r * H // 2:(r + 1) * H // 2, c * W // 2:(c + 1) * W // 2] = colour
    return img


def interior(margin: int = 2) -> np.ndarray:
    """Pixels at least ``margin`` away from the image border and from patch borders, where
    demosaicing and chroma subsampling see only one colour."""
    keep = np.zeros((H, W), bool)
    for r0, r1 in ((0, H // 2), (H // 2, H)):
        for c0, c1 in ((0, W // 2), (W // 2, W)):
            keep[r0 + margin:r1 - margin, c0 + margin:c1 - margin] = True
    return keep


# ---------------------------------------------------------------------------- encoders (test side)

def _bayer(bgr: np.ndarray, pattern: str) -> np.ndarray:
    """A 2x2 colour filter mosaic; ``pattern`` names the cell row by row, e.g. 'rggb'."""
    channel = {"b": 0, "g": 1, "r": 2}
    out = np.empty(bgr.shape[:2], np.uint8)
    for k, letter in enumerate(pattern):
        dy, dx = divmod(k, 2)
        out[dy::2, dx::2] = bgr[dy::2, dx::2, channel[letter]]
    return out


def _yuv422_from_i420(bgr: np.ndarray, order: str) -> np.ndarray:
    """YUV 4:2:2 via OpenCV's BGR->I420 (same BT.601 coefficients as its YUV->BGR), each
    chroma row used for two image rows; fallback for OpenCV without BGR2YUV_UYVY."""
    h, w = bgr.shape[:2]
    yuv = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420)
    y = yuv[:h]
    u = np.repeat(yuv[h:h + h // 4].reshape(h // 2, w // 2), 2, axis=0)
    v = np.repeat(yuv[h + h // 4:].reshape(h // 2, w // 2), 2, axis=0)
    out = np.empty((h, w // 2, 4), np.uint8)
    if order == "uyvy":
        out[..., 0], out[..., 1], out[..., 2], out[..., 3] = u, y[:, 0::2], v, y[:, 1::2]
    else:  # yuyv
        out[..., 0], out[..., 1], out[..., 2], out[..., 3] = y[:, 0::2], u, y[:, 1::2], v
    return out.reshape(h, w, 2)


def _yuv422(bgr: np.ndarray, order: str) -> np.ndarray:
    code = getattr(cv2, "COLOR_BGR2YUV_UYVY" if order == "uyvy" else "COLOR_BGR2YUV_YUY2", None)
    if code is None:
        return _yuv422_from_i420(bgr, order)
    return cv2.cvtColor(bgr, code).reshape(bgr.shape[0], bgr.shape[1], 2)


def _gray(bgr: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)


# encoding -> (pixels of the reference image in that encoding, expected decoded BGR, tolerance,
#              compare only the interior?)
def encoded_cases() -> dict[str, tuple[np.ndarray, np.ndarray, int, bool]]:
    ref = reference_image()
    gray3 = cv2.cvtColor(_gray(ref), cv2.COLOR_GRAY2BGR)
    cases = {
        "bgr8": (ref, ref, 0, False),
        "rgb8": (ref[..., ::-1], ref, 0, False),
        "bgra8": (np.dstack([ref, np.full((H, W), 255, np.uint8)]), ref, 0, False),
        "rgba8": (np.dstack([ref[..., ::-1], np.full((H, W), 7, np.uint8)]), ref, 0, False),
        "mono8": (_gray(ref), gray3, 0, False),
        "mono16": (_gray(ref).astype(np.uint16) * 257, gray3, 0, False),
        "yuv422": (_yuv422(ref, "uyvy"), ref, 2, True),
        "yuv422_yuy2": (_yuv422(ref, "yuyv"), ref, 2, True),
    }
    for pattern in ("rggb", "bggr", "gbrg", "grbg"):
        cases[f"bayer_{pattern}8"] = (_bayer(ref, pattern), ref, 2, True)
    return cases


STORES = (Stores.ROS2_HUMBLE, Stores.ROS2_JAZZY)


@pytest.fixture(params=STORES, ids=lambda s: s.name)
def store(request):
    return get_typestore(request.param)


def make_image(store, pixels: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False,
               frame_id: str = "cam", height: int | None = None, width: int | None = None,
               step: int | None = None, data: np.ndarray | None = None):
    """A rosbags sensor_msgs/Image holding ``pixels`` (H, W[, C]) with ``pad`` junk bytes
    after every row; any field can be forced to build malformed messages."""
    pixels = pixels.astype(pixels.dtype.newbyteorder(">" if bigendian else "<"))
    rows = pixels.reshape(pixels.shape[0], -1).view(np.uint8)
    if pad:
        junk = np.full((rows.shape[0], pad), 0xAB, np.uint8)
        rows = np.hstack([rows, junk])
    types = store.types
    header = types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=12, nanosec=345),
                                          frame_id=frame_id)
    return types["sensor_msgs/msg/Image"](
        header=header, height=pixels.shape[0] if height is None else height,
        width=pixels.shape[1] if width is None else width, encoding=encoding, is_bigendian=int(bigendian),
        step=rows.shape[1] if step is None else step,
        data=np.ascontiguousarray(rows).reshape(-1) if data is None else data)


def roundtrip(store, msg):
    """CDR serialize and deserialize: the bytes a bag or DDS would carry."""
    return store.deserialize_cdr(store.serialize_cdr(msg, msg.__msgtype__), msg.__msgtype__)


def assert_close(decoded: np.ndarray, expected: np.ndarray, tolerance: int, only_interior: bool) -> None:
    assert decoded.dtype == np.uint8 and decoded.shape == (H, W, 3)
    diff = np.abs(decoded.astype(int) - expected.astype(int))
    if only_interior:
        diff = diff[interior()]
    assert diff.max() <= tolerance, f"max colour error {diff.max()} > {tolerance}"


# ---------------------------------------------------------------------------- decoding

@pytest.mark.parametrize("encoding", list(encoded_cases()))
def test_every_encoding_decodes_to_the_right_colours(store, encoding):
    pixels, expected, tolerance, only_interior = encoded_cases()[encoding]
    msg = roundtrip(store, make_image(store, pixels, encoding))
    assert_close(codec.image_to_bgr(msg), expected, tolerance, only_interior)


def test_supported_encodings_cover_the_issue_list():
    required = {"bgr8", "rgb8", "bgra8", "rgba8", "mono8", "mono16", "yuv422", "yuv422_yuy2", "bayer_rggb8",
                "bayer_bggr8", "bayer_gbrg8", "bayer_grbg8"}
    assert required <= set(codec.SUPPORTED_ENCODINGS)
    assert required <= set(encoded_cases())  # and each one is exercised above


def test_wrong_bayer_pattern_would_be_caught():
    """Guards the test itself: decoding an RGGB mosaic as BGGR swaps red and blue."""
    store = get_typestore(Stores.ROS2_HUMBLE)
    ref = reference_image()
    msg = make_image(store, _bayer(ref, "rggb"), "bayer_bggr8")
    diff = np.abs(codec.image_to_bgr(msg).astype(int) - ref.astype(int))[interior()]
    assert diff.max() > 100


@pytest.mark.skipif(not hasattr(cv2, "COLOR_BGR2YUV_UYVY"), reason="OpenCV without BGR2YUV_UYVY")
@pytest.mark.parametrize("order", ["uyvy", "yuyv"])
def test_yuv_fallback_packing_matches_opencv(order):
    ref = reference_image()
    diff = np.abs(_yuv422_from_i420(ref, order).astype(int) - _yuv422(ref, order).astype(int))
    assert diff[interior()].max() <= 2


@pytest.mark.parametrize("encoding", ["bgr8", "mono8", "mono16", "yuv422", "bayer_grbg8", "rgba8"])
@pytest.mark.parametrize("pad", [1, 5, 64])
def test_row_padding_beyond_width_is_ignored(store, encoding, pad):
    pixels, expected, tolerance, only_interior = encoded_cases()[encoding]
    msg = roundtrip(store, make_image(store, pixels, encoding, pad=pad))
    assert msg.step > msg.width * (pixels.size // (H * W)) * pixels.itemsize
    assert_close(codec.image_to_bgr(msg), expected, tolerance, only_interior)


@pytest.mark.parametrize("bigendian", [False, True])
def test_mono16_honours_is_bigendian(store, bigendian):
    values = np.arange(H * W, dtype=np.uint16).reshape(H, W) * 80  # uses both bytes
    msg = roundtrip(store, make_image(store, values, "mono16", bigendian=bigendian, pad=3))
    raw = codec.image_to_array(msg)
    assert raw.dtype == np.uint16 and np.array_equal(raw[..., 0], values)
    assert np.array_equal(codec.image_to_bgr(msg)[..., 1], (values >> 8).astype(np.uint8))


def test_big_and_little_endian_give_the_same_image(store):
    pixels = encoded_cases()["mono16"][0]
    little = codec.image_to_bgr(make_image(store, pixels, "mono16", bigendian=False))
    big = codec.image_to_bgr(make_image(store, pixels, "mono16", bigendian=True))
    assert np.array_equal(little, big)


def test_rclpy_style_array_payload_decodes_without_copying_rules():
    """rclpy messages carry uint8[] as array.array('B'); decoding is duck-typed on fields."""
    ref = reference_image()
    msg = SimpleNamespace(height=H, width=W, encoding="rgb8", is_bigendian=0, step=W * 3,
                          data=array.array("B", ref[..., ::-1].tobytes()))
    assert np.array_equal(codec.to_bgr(msg), ref)


# ---------------------------------------------------------------------------- malformed images

def _malformed(store, case: str):
    ref = reference_image()
    if case == "unsupported encoding":
        return make_image(store, ref, "32FC3")
    if case == "short data":
        msg = make_image(store, ref, "bgr8")
        return make_image(store, ref, "bgr8", data=msg.data[:-1])
    if case == "long data":
        msg = make_image(store, ref, "bgr8")
        return make_image(store, ref, "bgr8", data=np.concatenate([msg.data, np.zeros(7, np.uint8)]))
    if case == "zero sized":
        return make_image(store, ref, "bgr8", height=0, width=0, step=0, data=np.zeros(0, np.uint8))
    if case == "step below row":
        return make_image(store, ref, "bgr8", step=W * 3 - 1)
    if case == "odd yuv width":
        return make_image(store, np.zeros((H, W - 1, 2), np.uint8), "yuv422")
    raise AssertionError(case)


@pytest.mark.parametrize("case, words", [
    ("unsupported encoding", "unsupported encoding '32FC3'"),
    ("short data", "does not match step x height"),
    ("long data", "does not match step x height"),
    ("zero sized", "zero-sized"),
    ("step below row", "smaller than a bgr8 row"),
    ("odd yuv width", "even width"),
])
def test_malformed_images_raise_a_decode_error_naming_the_problem(store, case, words):
    msg = roundtrip(store, _malformed(store, case))
    with pytest.raises(ImageDecodeError, match=words):
        codec.to_bgr(msg)


def test_decode_error_is_a_value_error():
    assert issubclass(ImageDecodeError, ValueError)


# ---------------------------------------------------------------------------- compressed images

def _compressed(store, fmt: str, data: np.ndarray | None = None):
    types = store.types
    header = types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=1, nanosec=2),
                                          frame_id="cam")
    if data is None:
        return codec.bgr_to_compressed(types["sensor_msgs/msg/CompressedImage"], header, reference_image(), fmt)
    return types["sensor_msgs/msg/CompressedImage"](header=header, format=fmt, data=data)


@pytest.mark.parametrize("fmt, tolerance", [("png", 0), ("jpeg", 12)])
def test_compressed_png_and_jpeg_round_trip(store, fmt, tolerance):
    msg = roundtrip(store, _compressed(store, fmt))
    assert msg.format == fmt and msg.header.frame_id == "cam"
    decoded = codec.to_bgr(msg)
    assert decoded.shape == (H, W, 3)
    diff = np.abs(decoded.astype(int) - reference_image().astype(int))[interior()]
    assert diff.max() <= tolerance


def test_grey_png_decodes_to_three_channels(store):
    ok, png = cv2.imencode(".png", _gray(reference_image()))
    assert ok
    decoded = codec.to_bgr(roundtrip(store, _compressed(store, "mono8; png compressed", png.reshape(-1))))
    assert decoded.shape == (H, W, 3) and np.array_equal(decoded[..., 0], _gray(reference_image()))


@pytest.mark.parametrize("data, words", [
    (np.zeros(0, np.uint8), "empty CompressedImage"),
    (np.frombuffer(b"definitely not a jpeg", np.uint8), "undecodable CompressedImage"),
])
def test_bad_compressed_images_raise_a_decode_error(store, data, words):
    with pytest.raises(ImageDecodeError, match=words):
        codec.to_bgr(roundtrip(store, _compressed(store, "jpeg", data)))


def test_bgr_to_compressed_rejects_unknown_formats(store):
    with pytest.raises(ValueError, match="jpeg or png"):
        codec.bgr_to_compressed(store.types["sensor_msgs/msg/CompressedImage"], None, reference_image(), "webp")


# ---------------------------------------------------------------------------- encoding outputs

@pytest.mark.parametrize("encoding, pixels", [
    ("mono8", np.arange(H * W, dtype=np.uint8).reshape(H, W) % 11),
    ("bgr8", reference_image()),
])
def test_array_to_image_round_trips_with_header(store, encoding, pixels):
    header = make_image(store, pixels, "bgr8" if pixels.ndim == 3 else "mono8", frame_id="front").header
    msg = roundtrip(store, codec.array_to_image(store.types["sensor_msgs/msg/Image"], header, pixels, encoding))
    assert (msg.encoding, msg.height, msg.width, msg.step) == (encoding, H, W, W * (3 if pixels.ndim == 3 else 1))
    assert msg.header.frame_id == "front" and (msg.header.stamp.sec, msg.header.stamp.nanosec) == (12, 345)
    decoded = codec.image_to_array(msg)
    assert np.array_equal(decoded.reshape(pixels.shape), pixels)


def test_array_to_image_uses_array_payload_for_rclpy_classes():
    """rclpy's generated classes have get_fields_and_field_types; their uint8[] setter takes
    array.array('B') on its fast path."""
    class RclpyLikeImage(SimpleNamespace):
        @classmethod
        def get_fields_and_field_types(cls):
            return {}

    msg = codec.array_to_image(RclpyLikeImage, None, np.zeros((2, 3), np.uint8), "mono8")
    assert isinstance(msg.data, array.array) and msg.data.typecode == "B" and len(msg.data) == 6


@pytest.mark.parametrize("pixels, encoding", [
    (np.zeros((4, 4), np.uint8), "bgr8"),
    (np.zeros((4, 4, 3), np.float32), "bgr8"),
    (np.zeros((4, 4), np.uint8), "yuv422"),
])
def test_array_to_image_rejects_mismatched_arrays(store, pixels, encoding):
    with pytest.raises(ValueError):
        codec.array_to_image(store.types["sensor_msgs/msg/Image"], None, pixels, encoding)


# ---------------------------------------------------------------------------- size limits

def _png_header_claiming(width: int, height: int) -> np.ndarray:
    """A PNG signature and a valid IHDR chunk claiming ``width`` x ``height``, then junk:
    what made cv2.imdecode raise cv2.error (not return None) before the size check."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return np.frombuffer(b"\x89PNG\r\n\x1a\n" + chunk + b"\x00" * 64, np.uint8)


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_compressed_dimensions_read_from_the_header(fmt):
    ok, encoded = cv2.imencode(".png" if fmt == "png" else ".jpg", np.zeros((37, 53, 3), np.uint8))
    assert ok and codec.compressed_dimensions(encoded.tobytes()) == (53, 37)
    assert codec.compressed_dimensions(b"not an image at all") is None
    assert codec.compressed_dimensions(encoded.tobytes()[:12]) is None  # cut short


def test_a_png_claiming_100000_squared_is_refused_before_decoding(store):
    msg = roundtrip(store, _compressed(store, "png", _png_header_claiming(100000, 100000)))
    with pytest.raises(ImageDecodeError, match=r"100000x100000 = 10000000000 pixels is over the limit"):
        codec.to_bgr(msg, max_pixels=3840 * 2160)


def test_opencv_errors_become_decode_errors(store, monkeypatch):
    def refuse(*_):
        raise cv2.error("imdecode refused: image too large")

    monkeypatch.setattr(codec.cv2, "imdecode", refuse)
    with pytest.raises(ImageDecodeError, match="OpenCV refused a CompressedImage.*too large"):
        codec.to_bgr(roundtrip(store, _compressed(store, "png")))


def test_frames_over_the_pixel_limit_are_refused_raw_and_compressed(store):
    raw = make_image(store, reference_image(), "bgr8")
    limit = H * W - 1
    with pytest.raises(ImageDecodeError, match=f"{W}x{H} = {W * H} pixels is over the limit of {limit}"):
        codec.to_bgr(raw, max_pixels=limit)
    with pytest.raises(ImageDecodeError, match="max_input_pixels"):
        codec.to_bgr(roundtrip(store, _compressed(store, "jpeg")), max_pixels=limit)
    assert codec.to_bgr(raw, max_pixels=H * W).shape == (H, W, 3)  # at the limit: accepted


# ---------------------------------------------------------------------------- hostile compressed frames

def _never_decode(monkeypatch):
    def refuse(*_):
        raise AssertionError("decoded although it should have been refused from its header")

    monkeypatch.setattr(codec.cv2, "imdecode", refuse)


def test_only_jpeg_and_png_are_decoded_tiff_is_refused_before_decoding(store, monkeypatch):
    ok, tiff = cv2.imencode(".tiff", reference_image())
    assert ok and cv2.imdecode(tiff, cv2.IMREAD_COLOR) is not None  # OpenCV itself would decode it
    _never_decode(monkeypatch)
    with pytest.raises(ImageDecodeError, match="neither JPEG nor PNG"):
        codec.to_bgr(roundtrip(store, _compressed(store, "png", tiff.reshape(-1))), max_pixels=10**6)


def test_a_jpeg_cut_before_its_size_is_refused_before_decoding(store, monkeypatch):
    ok, jpeg = cv2.imencode(".jpg", reference_image())
    _never_decode(monkeypatch)
    with pytest.raises(ImageDecodeError, match="truncated or malformed"):
        codec.to_bgr(roundtrip(store, _compressed(store, "jpeg", jpeg.reshape(-1)[:20])))


@pytest.mark.parametrize("height, width", [(1, 1), (2, 8000), (40, 8)])
def test_frames_with_a_side_under_the_minimum_are_refused_raw_and_compressed(store, monkeypatch, height, width):
    pixels = np.zeros((height, width, 3), np.uint8)
    ok, png = cv2.imencode(".png", pixels)
    _never_decode(monkeypatch)
    for msg in (make_image(store, pixels, "bgr8"), _compressed(store, "png", png.reshape(-1))):
        with pytest.raises(ImageDecodeError, match=f"{width}x{height} is smaller than 16 pixels on a side"):
            codec.to_bgr(roundtrip(store, msg), min_side=16)


def _png_with_a_bad_crc() -> np.ndarray:
    ok, png = cv2.imencode(".png", reference_image())
    data = bytearray(png.tobytes())
    idat = data.index(b"IDAT")
    length = int.from_bytes(data[idat - 4:idat], "big")
    data[idat + 4 + length] ^= 0xFF  # the IDAT chunk's CRC
    return np.frombuffer(bytes(data), np.uint8)


def test_what_the_image_libraries_print_goes_to_the_callback_not_stderr(store, capfd):
    messages: list[str] = []
    msg = roundtrip(store, _compressed(store, "png", _png_with_a_bad_crc()))
    with pytest.raises(ImageDecodeError):
        codec.to_bgr(msg, library_messages=messages.append)
    assert any("libpng" in m and "CRC" in m for m in messages), messages
    assert "libpng" not in capfd.readouterr().err


def test_ros_log_lines_written_meanwhile_pass_through_to_stderr(capfd):
    import os

    seen: list[str] = []
    with codec._library_messages(seen.append):
        os.write(2, b"[WARN] [1700000000.1] [eacnet.segment_node]: from another thread\nlibjpeg: odd\n")
    assert seen == ["libjpeg: odd"]
    assert "[WARN] [1700000000.1] [eacnet.segment_node]: from another thread" in capfd.readouterr().err
