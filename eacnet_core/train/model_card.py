"""The model card a training run writes next to its checkpoints (``model_card.md``), as
the packaged weights have one: data, classes, where the weights started, the recipe,
epochs, validation per class and how to run the result in the node.

Built from the run folder's own record (``metrics.jsonl``) and resolved config, so a
resumed run's card covers the whole run, and rewritten after every epoch: the card
always says what ``last.pt`` and ``best.pt`` are.
"""

from __future__ import annotations

import datetime
import json
import platform
from pathlib import Path
from typing import Optional

import torch

from eacnet_core.data.classes import DatasetInfo
from eacnet_core.models.registry import BY_BACKBONE
from eacnet_core.outputs import write_text
from eacnet_core.train.config import TrainConfig

CARD = "model_card.md"
#: Config fields the card's recipe section lists (the rest are in the checkpoints' config).
RECIPE_FIELDS = ("recipe", "epochs", "batch_size", "crop", "scales", "flip", "optimizer", "lr", "head_lr_mult",
                 "attention_lr_mult", "weight_decay", "warmup_iters", "warmup_ratio", "poly_power", "loss",
                 "amp", "ema", "seed")


def _records(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _per_class_table(info: DatasetInfo, record: dict) -> list[str]:
    per_class = record.get("val_per_class", {})
    rows = ["| id | class | colour (RGB) | val IoU % |", "|---|---|---|---|"]
    for i, (name, colour) in enumerate(zip(info.class_names, info.palette, strict=True)):
        iou = per_class.get(name)
        rows.append(f"| {i} | {name} | {list(colour)} | {'-' if iou is None else f'{100 * iou:.1f}'} |")
    return rows


def node_command(model: str, weights: Path) -> str:
    pair = next(((b, a) for (b, a), name in BY_BACKBONE.items() if name == model), None)
    if pair is None:
        return f"(the node runs {', '.join(BY_BACKBONE.values())}; `{model}` runs with `eacnet segment`)"
    return (f"`ros2 launch eacnet_ros segment.launch.py backbone:={pair[0]} attention:={pair[1]} "
            f"weights:={weights.resolve()}`")


def _value(cfg: TrainConfig, key: str) -> str:
    """A config value as the command line spells it (the crop is stored HxW, given WxH)."""
    value = getattr(cfg, key)
    if key == "crop":
        return f"{value[1]}x{value[0]} (WxH)"
    if key == "scales":
        return ",".join(f"{v:g}" for v in value)
    return str(value)


def card_text(cfg: TrainConfig, info: DatasetInfo, records: list[dict], train_images: int,
              val_images: Optional[int], device: str) -> str:
    """The card's Markdown for a run of ``cfg`` whose epochs so far are ``records``."""
    out = Path(cfg.out)
    last = records[-1] if records else {}
    validated = [r for r in records if "val_miou" in r]
    best = max(validated, key=lambda r: r["val_miou"]) if validated else None
    start = "random initialisation (from scratch)"
    if cfg.init_from:
        start = f"`{cfg.init_from}` (`--init-from`)"
        start += f", class-sized rows from the class map `{cfg.class_map}`" if cfg.class_map else ""
    lines = [f"# Model card: `{out / 'best.pt'}`", "",
             f"`{cfg.model}` with {info.num_classes} classes ({info.name}), written by `eacnet train` on "
             f"{datetime.date.today().isoformat()}.", "",
             "## Data",
             f"- dataset `{cfg.dataset}` at `{cfg.data_root}`: {train_images} training images "
             f"(split `{cfg.train_split}`)" + (f", {val_images} validation images (split `{cfg.val_split}`)"
                                               if val_images is not None else ", no validation"),
             f"- ignore index {info.ignore_index}; input mean {list(info.mean)}, std {list(info.std)} (RGB)",
             "", "## Start", f"- {start}", "", "## Recipe"]
    lines += [f"- {k.replace('_', '-')}: {_value(cfg, k)}" for k in RECIPE_FIELDS if getattr(cfg, k) not in ("", None)]
    lines += ["", "## Training",
              f"- {last.get('epoch', 0)} of {cfg.epochs} epochs done, {last.get('iteration', 0)} iterations; device "
              f"{device} ({_cpu_name() if device == 'cpu' else device}), torch {torch.__version__}",
              f"- training seconds: {sum(r.get('seconds', 0.0) for r in records):.0f}", "",
              "## Validation"]
    if best is None:
        lines.append("- not validated (`--val-every 0`)")
    else:
        lines.append(f"- best.pt: epoch {best['epoch']}, val mIoU {100 * best['val_miou']:.2f}% on "
                     f"{best.get('val_images', '?')} images; per class:")
        lines += ["", *_per_class_table(info, best)]
        if validated[-1] is not best:
            lines.append(f"\n- last validation: epoch {validated[-1]['epoch']}, "
                         f"val mIoU {100 * validated[-1]['val_miou']:.2f}%")
    lines += ["", "## Run it", f"- the node: {node_command(cfg.model, out / 'best.pt')}",
              f"- images: `eacnet segment --weights {out / 'best.pt'} ...`; a bag: "
              f"`eacnet bag-eval --weights {out / 'best.pt'} --bag BAG`", ""]
    return "\n".join(lines)


def write_model_card(cfg: TrainConfig, info: DatasetInfo, train_images: int, val_images: Optional[int],
                     device: str) -> Path:
    out = Path(cfg.out)
    return write_text(out / CARD, card_text(cfg, info, _records(out), train_images, val_images, device))
