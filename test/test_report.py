"""The bag-eval HTML report: charts, sample strips, the untrained warning, escaping."""

from __future__ import annotations

import array
import base64
import re

import cv2
import numpy as np
import pytest

from eacnet_core.data.classes import CAMVID
from eacnet_ros.bags.eval import BagEvalResult, ReportSample
from eacnet_ros.bags.report import (
    COLUMNS,
    TITLE_FONT,
    iou_chart,
    latency_histogram,
    sample_strip,
    title_band_height,
    title_scale,
    write_report,
)

H, W = 24, 40


def make_sample(stamp: int, with_truth: bool) -> ReportSample:
    rng = np.random.default_rng(stamp)
    tile = lambda: rng.integers(0, 256, (H, W, 3), dtype=np.uint8)  # noqa: E731
    return ReportSample(stamp, tile(), tile(), tile(), tile() if with_truth else None)


def make_result(trained: bool = False, labelled: bool = True) -> BagEvalResult:
    result = BagEvalResult(bag="/bags/<odd & name>", image_topic="/camera/image_raw", label_topic="/camera/labels",
                           model="eacnet_erf", trained=trained, segmenter="model=eacnet_erf device=cpu",
                           frames=4, evaluated=3 if labelled else 0, unpaired=1)
    result.class_names, result.palette = CAMVID.class_names, CAMVID.palette
    if labelled:
        result.per_class = {n: i / 20 for i, n in enumerate(CAMVID.class_names)}
        result.miou, result.pixel_accuracy = 0.25, 0.5
        result.absent_classes = ["Bicyclist"]
    result.latencies = array.array("d", [10.0, 12.0, 11.0, 30.0])
    result.latency_ms = {"p50": 11.5, "p90": 24.6, "p99": 29.5}
    result.fps = 63.5
    result.samples = [make_sample(1, True), make_sample(2, False)]
    return result


def decode(png: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


def test_report_writes_html_with_embedded_images_and_pngs(tmp_path):
    index = write_report(tmp_path / "rep", make_result())
    html = index.read_text()
    names = sorted(p.name for p in (tmp_path / "rep").iterdir())
    assert names == ["index.html", "latency_hist.png", "per_class_iou.png", "sample_00.png", "sample_01.png"]
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(embedded) == 4  # chart, histogram, two strips: the HTML alone is the whole report
    assert base64.b64decode(embedded[0]) == (tmp_path / "rep" / "per_class_iou.png").read_bytes()
    assert "25.00%" in html and "63.50" in html and "Bicyclist" in html
    assert "UNTRAINED" in html
    assert "&lt;odd &amp; name&gt;" in html and "<odd" not in html


def test_strip_is_four_tiles_with_a_placeholder_for_missing_truth():
    with_truth, without = make_sample(1, True), make_sample(2, False)
    strip = decode(sample_strip(with_truth))
    top = title_band_height()
    assert strip.shape == (top + H, 4 * W + 3 * 4, 3)
    assert np.array_equal(strip[top:, :W], with_truth.image)
    assert np.array_equal(strip[top:, W + 4: 2 * W + 4], with_truth.truth)
    assert np.array_equal(strip[top:, -W:], with_truth.overlay)
    grey = decode(sample_strip(without))[top:, W + 4: 2 * W + 4]
    assert np.median(grey) == 200  # the "no label" tile, not someone else's ground truth


def _ink_columns(band: np.ndarray) -> int:
    """The width of the text on a white title band: first to last column with ink."""
    (inked,) = np.nonzero(band.min(axis=(0, 2)) < 160)
    return int(inked[-1] - inked[0] + 1) if inked.size else 0


@pytest.mark.parametrize("width", [96, 240])
def test_each_tile_of_a_strip_has_its_title_above_it(width):
    """A band above the tiles names them: input, ground truth, prediction, overlay, in that
    order, each as wide as its title written at the scale that fits the tile."""
    rng = np.random.default_rng(0)
    tile = lambda: rng.integers(0, 256, (H, width, 3), dtype=np.uint8)  # noqa: E731
    strip = decode(sample_strip(ReportSample(1, tile(), tile(), tile(), tile())))
    bands = [strip[:title_band_height(), i * (width + 4): i * (width + 4) + width] for i in range(4)]
    assert COLUMNS == ("input", "ground truth", "prediction", "overlay")
    for band, title in zip(bands, COLUMNS, strict=True):
        assert band.max() == 255 and band.min() < 64, title  # dark text on white
        (text_w, _), _ = cv2.getTextSize(title, TITLE_FONT, title_scale(title, width), 1)
        assert abs(_ink_columns(band) - text_w) <= 0.2 * text_w + 3, (title, _ink_columns(band), text_w)
        assert text_w <= width  # the title fits its tile
    if width == 240:  # full-size titles: their widths tell them apart
        assert _ink_columns(bands[0]) < _ink_columns(bands[3]) < _ink_columns(bands[2]) < _ink_columns(bands[1])


def test_trained_report_has_no_warning_and_unlabelled_report_says_so(tmp_path):
    html = write_report(tmp_path / "a", make_result(trained=True)).read_text()
    assert "UNTRAINED" not in html
    html = write_report(tmp_path / "b", make_result(labelled=False)).read_text()
    assert "No label was paired" in html and not (tmp_path / "b" / "per_class_iou.png").exists()


@pytest.mark.parametrize("chart", [
    lambda: iou_chart({"a": 0.5, "b": 1.0}, 0.75, [(255, 0, 0), (0, 255, 0)]),
    lambda: latency_histogram([1.0, 2.0, 2.5, 9.0], {"p50": 2.2, "p90": 7.0, "p99": 8.8}),
])
def test_charts_are_png_images(chart):
    image = decode(chart())
    assert image.shape[0] > 100 and image.shape[1] > 300
