"""The bag-eval report: one self-contained ``index.html`` (images embedded) plus the same
charts and sample strips as PNG files beside it, so a person can look rather than read.

matplotlib is driven through its object API with the Agg canvas (no pyplot, no global
backend switch), so writing a report never opens a window or changes the caller's state.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import cv2
import numpy as np

from eacnet_core.outputs import OutputError, write_bytes

if TYPE_CHECKING:
    from .eval import BagEvalResult, ReportSample

COLUMNS = ("input", "ground truth", "prediction", "overlay")


def _figure_png(draw, size: tuple[float, float]) -> bytes:
    """Render ``draw(axes)`` on a fresh Agg figure and return the PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    draw(fig.add_subplot(1, 1, 1))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def iou_chart(per_class: dict, miou: Optional[float], palette: Sequence[Sequence[int]] = ()) -> bytes:
    """Horizontal bars of per-class IoU (%), coloured with the class palette, mIoU as a line."""
    names = list(per_class)
    values = [100.0 * float(v) for v in per_class.values()]
    colours = [tuple(c / 255.0 for c in palette[i]) if i < len(palette) else "tab:blue" for i in range(len(names))]

    def draw(ax):
        bars = ax.barh(range(len(names)), values, color=colours, edgecolor="black", linewidth=0.5)
        ax.bar_label(bars, fmt="%.1f", padding=2, fontsize=8)
        ax.set_yticks(range(len(names)), names)
        ax.invert_yaxis()
        ax.set_xlim(0, 100)
        ax.set_xlabel("IoU %")
        if miou is not None:
            ax.axvline(100.0 * miou, color="red", linestyle="--", label=f"mIoU {100.0 * miou:.1f}%")
            ax.legend(loc="lower right")

    return _figure_png(draw, (6.0, 0.35 * len(names) + 1.2))


def latency_histogram(latencies_ms: Sequence[float], percentiles: dict) -> bytes:
    """Per-frame latency histogram with p50/p90/p99 marked."""
    values = np.asarray(latencies_ms, dtype=np.float64)

    def draw(ax):
        ax.hist(values, bins=min(50, max(5, len(values) // 4)), color="tab:gray", edgecolor="black", linewidth=0.3)
        for key, colour in (("p50", "tab:green"), ("p90", "tab:orange"), ("p99", "tab:red")):
            if percentiles.get(key) is not None:
                ax.axvline(percentiles[key], color=colour, linestyle="--", label=f"{key} {percentiles[key]:.1f} ms")
        ax.set_xlabel("latency per frame (ms)")
        ax.set_ylabel("frames")
        ax.legend(loc="upper right")

    return _figure_png(draw, (6.0, 3.2))


#: The panel titles above each tile of a sample strip: OpenCV's plain font, at most this
#: scale (smaller where a tile is too narrow for its title), on a white band.
TITLE_FONT, TITLE_SCALE, TITLE_PAD = cv2.FONT_HERSHEY_SIMPLEX, 0.5, 4


def title_scale(title: str, width: int) -> float:
    """The font scale that fits ``title`` in a tile ``width`` pixels wide (TITLE_SCALE at most)."""
    (text_w, _), _ = cv2.getTextSize(title, TITLE_FONT, TITLE_SCALE, 1)
    return min(TITLE_SCALE, TITLE_SCALE * max(1, width - 2 * TITLE_PAD) / text_w)


def title_band_height() -> int:
    """Height of the band the titles are written on, the same for every strip."""
    (_, text_h), baseline = cv2.getTextSize("Ag", TITLE_FONT, TITLE_SCALE, 1)
    return text_h + baseline + 2 * TITLE_PAD


def _titled(tile: np.ndarray, title: str) -> np.ndarray:
    """``tile`` with ``title`` written on a white band above it."""
    band = np.full((title_band_height(), tile.shape[1], 3), 255, np.uint8)
    scale = title_scale(title, tile.shape[1])
    (_, text_h), _ = cv2.getTextSize(title, TITLE_FONT, scale, 1)
    cv2.putText(band, title, (TITLE_PAD, TITLE_PAD + text_h), TITLE_FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([band, tile], axis=0)
def score_chart(result: BagEvalResult) -> bytes:
    """The frame score (0 trustworthy .. 1 not) over the bag, and beside it each scored frame's
    own mIoU: where the model struggles, and whether the score saw it."""
    stamps = np.array([stamp for stamp, _ in result.frame_scores], dtype=np.float64)
    t0 = stamps.min() if len(stamps) else 0.0

    def draw(ax):
        ax.plot((stamps - t0) / 1e9, [score for _, score in result.frame_scores], color="tab:red", lw=1.2,
                label="frame score (0 trustworthy, 1 not)")
        scored = sorted(result.frame_miou.items())
        if scored:
            ax.plot([(stamp - t0) / 1e9 for stamp, _ in scored], [miou for _, miou in scored], "o", ms=3,
                    color="tab:blue", label="frame mIoU (its labelled classes)")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("time in the bag (s, header stamps)")
        ax.set_title("Frame score and per-frame mIoU")
        ax.legend(fontsize=8, loc="lower left")
        ax.grid(alpha=0.3)

    return _figure_png(draw, (8.0, 3.2))


def sample_strip(sample: ReportSample) -> bytes:
    """input | ground truth | prediction | overlay side by side, each under its title (the PNG
    files beside the report are looked at on their own); a grey tile where no label."""
    h, w = sample.image.shape[:2]
    truth = sample.truth if sample.truth is not None else _placeholder(h, w, "no label")
    tiles = [sample.image, truth, sample.prediction, sample.overlay]
    tiles = [t if t.shape[:2] == (h, w) else cv2.resize(t, (w, h), interpolation=cv2.INTER_NEAREST) for t in tiles]
    tiles = [_titled(t, title) for t, title in zip(tiles, COLUMNS, strict=True)]
    gap = np.full((tiles[0].shape[0], 4, 3), 255, np.uint8)
    strip = np.concatenate([x for t in tiles for x in (t, gap)][:-1], axis=1)
    ok, png = cv2.imencode(".png", strip)
    if not ok:
        raise OSError("OpenCV could not encode a sample strip as PNG")
    return png.tobytes()


def _placeholder(h: int, w: int, text: str) -> np.ndarray:
    tile = np.full((h, w, 3), 200, np.uint8)
    cv2.putText(tile, text, (4, max(12, h // 2)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (60, 60, 60), 1, cv2.LINE_AA)
    return tile


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _pct(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{100.0 * value:.2f}%"


def _ms(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"


def _figures_table(result: BagEvalResult) -> str:
    lat = result.latency_ms or {}
    rows = [("model", result.model), ("trained", "yes" if result.trained else "NO (random weights)"),
            ("bag", result.bag), ("image topic", result.image_topic), ("label topic", result.label_topic or "none"),
            ("frames", result.frames), ("evaluated (with label)", result.evaluated),
            ("undecodable frames", result.undecodable), ("unpaired labels", result.unpaired),
            ("labels with shared stamps (not scored)", result.ambiguous_labels),
            ("unusable labels", result.mismatched_labels), ("mIoU", _pct(result.miou)),
            ("pixel accuracy", _pct(result.pixel_accuracy)), ("latency p50", _ms(lat.get("p50"))),
            ("latency p90", _ms(lat.get("p90"))), ("latency p99", _ms(lat.get("p99"))),
            ("FPS", "n/a" if result.fps is None else f"{result.fps:.2f}"),
            ("output bag", result.output_bag or "not written"), ("runtime", result.segmenter)]
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table class='figures'>{body}</table>"


def _legend(names: Sequence[str], palette: Sequence[Sequence[int]]) -> str:
    swatches = "".join(
        f"<span class='sw'><i style='background:rgb({c[0]},{c[1]},{c[2]})'></i>{html.escape(n)}</span>"
        for n, c in zip(names, palette, strict=False))
    return f"<p class='legend'>{swatches}</p>"


STYLE = """body{font-family:sans-serif;margin:1.5em;max-width:1400px}
table.figures th{text-align:left;padding-right:1em}table.figures td{font-family:monospace}
.warn{background:#fdd;border:2px solid #c00;padding:.6em;font-weight:bold}
.sw{margin-right:1em;white-space:nowrap}.sw i{display:inline-block;width:1em;height:1em;margin-right:.3em;
border:1px solid #000;vertical-align:middle}img{max-width:100%}"""


def build_html(result: BagEvalResult, charts: dict[str, bytes], strips: Sequence[bytes]) -> str:
    """The page; every image is inlined so the file alone is the whole report."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>bag-eval: {html.escape(result.bag)}"
             f"</title><style>{STYLE}</style></head><body><h1>bag-eval report</h1>"]
    if not result.trained:
        parts.append(f"<p class='warn'>Model {html.escape(result.model)} is UNTRAINED (random weights): its "
                     "predictions and mIoU are noise, not a measure of the method.</p>")
    parts.append(_figures_table(result))
    if "per_class_iou.png" in charts:
        parts.append("<h2>Per-class IoU</h2>" + _img(charts["per_class_iou.png"], "per-class IoU"))
        if result.absent_classes:
            parts.append(f"<p>Absent from the labels (IoU counted as 0): "
                         f"{html.escape(', '.join(result.absent_classes))}</p>")
    else:
        parts.append("<p>No label was paired with a frame: no IoU to show.</p>")
    if "frame_score.png" in charts:
        parts.append("<h2>Frame score</h2><p>The node's frame score per frame (unsmoothed; /diagnostics averages "
                     "it): 0 = trustworthy .. 1 = not, from the network's confidence and image cues (contrast, "
                     "sharpness, noise, blocks, exposure). Dots: each labelled frame's own mIoU.</p>"
                     + _img(charts["frame_score.png"], "frame score and per-frame mIoU"))
    if "latency_hist.png" in charts:
        parts.append("<h2>Latency</h2><p>Per frame: decode + segment + colour mask + overlay + encode, as the "
                     "node runs it.</p>" + _img(charts["latency_hist.png"], "latency histogram"))
    if strips:
        header = " | ".join(COLUMNS)
        parts.append(f"<h2>Samples</h2><p>{html.escape(header)}</p>")
        parts.append(_legend(result.class_names, result.palette))
        parts += [f"<p>{_img(png, f'sample {i}')}</p>" for i, png in enumerate(strips)]
    parts.append("</body></html>")
    return "\n".join(parts)


def check_report_folder(out_dir: Path, overwrite: bool = False) -> None:
    """A report goes into a new or empty folder, or replaces the files of one with ``overwrite``."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"report folder {out_dir} is a file; give a folder")
    if not overwrite and out_dir.is_dir() and any(out_dir.iterdir()):
        raise OutputError(f"report folder {out_dir} is not empty; pass --overwrite to replace its report")


def write_report(out_dir: Path, result: BagEvalResult) -> Path:
    """Write ``index.html`` and the PNGs into ``out_dir``, each atomically; returns the HTML path.
    Callers run ``check_report_folder`` first."""
    out_dir = Path(out_dir)
    charts: dict[str, bytes] = {}
    if result.per_class:
        charts["per_class_iou.png"] = iou_chart(result.per_class, result.miou, result.palette)
    if result.frame_scores:
        charts["frame_score.png"] = score_chart(result)
    if len(result.latencies):
        charts["latency_hist.png"] = latency_histogram(result.latencies, result.latency_ms)
    strips = [sample_strip(s) for s in result.samples]
    files = dict(charts, **{f"sample_{i:02d}.png": png for i, png in enumerate(strips)})
    for name, png in files.items():
        write_bytes(out_dir / name, png)
    return write_bytes(out_dir / "index.html", build_html(result, charts, strips).encode("utf-8"))
