"""``eacnet curves``: learning curves of training runs, from their ``metrics.jsonl``.

One figure, one line per run: val mIoU per epoch, and for attention models the residual
scale ``gamma`` (and the attention's entropy when it was logged). It is how the ablation
in docs/RESULTS.md is read: whether the attention's own learning rate moves gamma, and
whether a moving gamma buys mIoU against the equal-budget control.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

from eacnet_core.options import add_out, add_overwrite
from eacnet_core.outputs import check_outputs, write_bytes

LOG = "metrics.jsonl"


def read_log(run: str | Path) -> list[dict]:
    """The epoch records of a run folder (or of a metrics.jsonl path)."""
    path = Path(run)
    path = path / LOG if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no training log (a run folder written by `eacnet train` holds {LOG})")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise ValueError(f"{path}:{number}: not a JSON line") from None
    if not records:
        raise ValueError(f"{path}: empty training log")
    return records


def series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(epochs, values) of the records that hold ``key``."""
    points = [(r["epoch"], r[key]) for r in records if r.get(key) is not None]
    return [e for e, _ in points], [v for _, v in points]


def plot(runs: dict[str, list[dict]], out: str | Path) -> Path:
    """Write the figure: val mIoU (%), gamma, and entropy / uniform entropy when logged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = [("val_miou", "val mIoU (%)", 100.0), ("attention_gamma", "attention gamma", 1.0)]
    if any(series(records, "attention_entropy")[0] for records in runs.values()):
        panels.append(("attention_entropy", "attention entropy (nats)", 1.0))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False)
    colours = {label: f"C{i % 10}" for i, label in enumerate(runs)}  # one colour per run in every panel
    for ax, (key, title, scale) in zip(axes[0], panels, strict=True):
        for label, records in runs.items():
            epochs, values = series(records, key)
            if epochs:
                ax.plot(epochs, [scale * v for v in values], marker="o", markersize=3, label=label,
                        color=colours[label])
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=out.suffix.lstrip(".").lower() or "png", dpi=110)
    plt.close(fig)
    return write_bytes(out, buffer.getvalue())


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("curves", help="plot val mIoU and the attention's gamma per epoch of training runs",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run folders (or metrics.jsonl files); LABEL=PATH names a line")
    add_out(p, "image file to write (.png, .svg, ...)", required=True, type=Path)
    add_overwrite(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_outputs([args.out], inputs=[Path(spec.rpartition("=")[2]) for spec in args.runs], overwrite=args.overwrite)
    runs = {}
    for spec in args.runs:
        label, _, path = spec.rpartition("=") if "=" in spec else (Path(spec).name, "", spec)
        runs[label] = read_log(path)
    print(f"wrote {plot(runs, args.out)}")
    return 0
