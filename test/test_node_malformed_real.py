"""A hostile publisher over real DDS: a few hundred malformed frames, raw and compressed,
interleaved with valid ones, into segment_node running as a process of its own.

Each round publishes a burst of malformed messages (inconsistent sizes and steps, odd
encodings, truncated and mislabelled JPEG/PNG/TIFF, headers claiming 60000x60000, 1x1 and
8000x2 frames, odd sizes that are decodable) and then one valid frame, whose mask must come
back at its size: every valid frame, none lost to the malformed ones. Afterwards the node is
still up, its diagnostics count the bad frames and do not report a stall once the input has
stopped, nothing the image libraries print reaches stderr outside the node's log, and SIGTERM
ends it with exit code 0 and no traceback.
"""

from __future__ import annotations

import array
import struct
import time
import zlib
from collections.abc import Iterator

import cv2
import numpy as np
import pytest
import ros_harness as h  # skips this module without rclpy

pytestmark = pytest.mark.filterwarnings("ignore:Deprecated in favor of:DeprecationWarning")

ROUNDS = 25
MALFORMED_PER_ROUND = 12  # 300 malformed messages per transport
VALID_HW = (36, 48)
SMALL = {**h.SMALL_MODEL}  # no inference size: odd sizes would each get a network size of their own
READY_TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def probe():
    with h.closed_without_leftovers(lambda: h.Probe("malformed_probe")) as created:
        yield created


def _raw(height: int, width: int, encoding: str = "bgr8", step: int | None = None,
         data: bytes | None = None) -> h.Image:
    channels = {"bgr8": 3, "mono8": 1, "mono16": 2, "yuv422": 2}.get(encoding, 3)
    step = width * channels if step is None else step
    if data is None:
        data = bytes(np.random.default_rng(height * width).integers(0, 256, step * height, dtype=np.uint8))
    return h.Image(header=h.header(), height=height, width=width, encoding=encoding, is_bigendian=0, step=step,
                   data=array.array("B", data))


def _compressed(data: bytes, fmt: str = "jpeg") -> h.CompressedImage:
    return h.CompressedImage(header=h.header(), format=fmt, data=array.array("B", data))


def _encoded(ext: str, height: int, width: int) -> bytes:
    ok, encoded = cv2.imencode(ext, h.noise_bgr(height, width, seed=height + width))
    assert ok
    return encoded.tobytes()


def _bad_crc_png() -> bytes:
    data = bytearray(_encoded(".png", 40, 40))
    idat = data.index(b"IDAT")
    data[idat + 4 + int.from_bytes(data[idat - 4:idat], "big")] ^= 0xFF
    return bytes(data)


def _png_claiming(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr
            + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) + b"\x00" * 64)


def malformed_raw(rng: np.random.Generator) -> Iterator[h.Image]:
    odd = int(rng.integers(17, 90)), int(rng.integers(17, 90))
    makers = [
        lambda: _raw(36, 48, data=b"\x00" * 100),  # data shorter than step x height
        lambda: _raw(36, 48, step=10),  # step smaller than a row
        lambda: _raw(36, 48, encoding="bayer_xyz8"),  # unknown encoding
        lambda: _raw(60000, 60000, data=b"\x00" * 64),  # claims 3.6 gigapixels
        lambda: _raw(1, 1),  # too small for the network
        lambda: _raw(2, 8000),
        lambda: _raw(36, 47, encoding="yuv422"),  # odd width for a paired encoding
        lambda: _raw(0, 0, data=b""),
        lambda: _raw(36, 48, encoding="mono16", data=b"\x01" * 37),
        lambda: _raw(*odd),  # decodable, of a size the camera never sends
    ]
    while True:
        yield makers[int(rng.integers(len(makers)))]()


def malformed_compressed(rng: np.random.Generator) -> Iterator[h.CompressedImage]:
    jpeg, png = _encoded(".jpg", 36, 48), _encoded(".png", 36, 48)
    makers = [
        lambda: _compressed(jpeg[: int(rng.integers(2, len(jpeg) - 1))]),  # truncated JPEG
        lambda: _compressed(png[: int(rng.integers(8, len(png) - 1))], "png"),  # truncated PNG
        lambda: _compressed(_encoded(".tiff", 36, 48), "png"),  # TIFF mislabelled as PNG
        lambda: _compressed(_encoded(".tiff", 36, 48), "tiff"),
        lambda: _compressed(png, "jpeg"),  # a PNG labelled jpeg: decodable, fine
        lambda: _compressed(_png_claiming(60000, 60000), "png"),
        lambda: _compressed(_bad_crc_png(), "png"),
        lambda: _compressed(_encoded(".png", 1, 1), "png"),
        lambda: _compressed(_encoded(".png", 2, 8000), "png"),
        lambda: _compressed(bytes(rng.integers(0, 256, 300, dtype=np.uint8))),
        lambda: _compressed(b""),
        lambda: _compressed(_encoded(".jpg", int(rng.integers(17, 90)), int(rng.integers(17, 90)))),  # odd size
    ]
    while True:
        yield makers[int(rng.integers(len(makers)))]()


def valid(compressed: bool) -> h.Image | h.CompressedImage:
    return h.compressed_image(h.noise_bgr(*VALID_HW, seed=1)) if compressed else h.raw_image(*VALID_HW)


@pytest.mark.parametrize("transport", ["raw", "compressed"])
def test_every_valid_frame_comes_back_among_hundreds_of_malformed_ones(probe, transport):
    compressed = transport == "compressed"
    namespace = h.unique_namespace(f"malformed_{transport}")
    process = h.NodeProcess(h.ros_args_for(namespace, {**SMALL, "transport": transport}))
    with process:
        assert process.wait_for_stderr("listening on ", READY_TIMEOUT_S), process.finish(5).explain()
        mask_sub, masks = probe.subscribe(h.Image, f"{namespace}/mask")
        pub = probe.publisher(h.CompressedImage if compressed else h.Image,
                              f"{namespace}/image/compressed" if compressed else f"{namespace}/image")
        try:
            probe.wait_matched(pub, [mask_sub])
            probe.send_until_output(pub, lambda: valid(compressed), masks)  # the node is up and matched
            rng = np.random.default_rng(7)
            hostile = malformed_compressed(rng) if compressed else malformed_raw(rng)
            sent_bad = 0
            for _ in range(ROUNDS):
                for _ in range(MALFORMED_PER_ROUND):
                    pub.publish(next(hostile))
                    sent_bad += 1
                frame = valid(compressed)
                pub.publish(frame)
                mask = masks.wait_for(lambda m, f=frame: h.same_stamp(m.header, f.header), h.OUTPUT_TIMEOUT_S)
                assert mask is not None, f"a valid frame got no mask after {sent_bad} malformed messages\n" \
                                         + process.finish(5).explain()
                assert (mask.height, mask.width, mask.encoding) == (*VALID_HW, "mono8")
            assert process.running(), process.finish(5).explain()
            for _ in range(3):  # the input stops on frames that cannot be decoded
                pub.publish(_compressed(b"\x00" * 10) if compressed else _raw(36, 48, data=b"\x00" * 10))
                sent_bad += 1
            since = time.monotonic()
            stopped = probe.wait_diagnostics(f"{namespace}/segment_node", timeout=h.DIAGNOSTICS_TIMEOUT_S,
                                             since=since + 4.0)  # input stopped for over 3 s
            values = h.diag_values(stopped)
            assert 0 < int(values["frames_bad"]) <= sent_bad, values
            assert h.level(stopped) < 2, stopped.message  # no "none was published" once nothing arrives
        finally:
            probe.destroy(mask_sub, pub)
        process.send(15)
        result = process.finish(timeout=60)
    assert result.code == 0 and not result.timed_out, result.explain()
    assert "Traceback" not in result.stderr, result.explain()
    stray = [line for line in result.stderr.splitlines()
             if line.strip() and not line.startswith(("[INFO]", "[WARN]", "[ERROR]", "[DEBUG]"))]
    assert not stray, stray  # libpng and friends speak through the node's log only
