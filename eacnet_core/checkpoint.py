"""Self-describing checkpoints, safe loading and the packaged default weights.

A checkpoint is a plain dict that ``torch.load(path, weights_only=True)`` can read:

    {"format": "eacnet-checkpoint", "version": 1, "model": registry name,
     "num_classes": int, "dataset": DatasetInfo.to_dict(), "state_dict": {...},
     "config": {...} (the training run's config), "epoch": int, "metrics": {...},
     "model_kwargs": {...} (e.g. {"pool": 4}), ...training state for --resume}

Everything a consumer needs to run the model (classes, palette, mean/std) is in it,
so the Segmenter, the node and the bag tools carry no dataset knowledge.

This module only reads, writes and finds checkpoints (it imports nothing above the model
registry); making the packaged weights (``slim``, ``record_check``) lives in ``packaging``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from eacnet_core.data.classes import DatasetInfo
from eacnet_core.models import MODELS, build_model
from eacnet_core.outputs import atomic_write

FORMAT = "eacnet-checkpoint"
VERSION = 1
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or not what the caller expected."""


def make_checkpoint(model_name: str, model: nn.Module, dataset: DatasetInfo, **extra: Any) -> dict:
    state = {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}
    ckpt = {"format": FORMAT, "version": VERSION, "model": model_name, "num_classes": dataset.num_classes,
            "dataset": dataset.to_dict(), "state_dict": state}
    ckpt.update(extra)
    return ckpt


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save through the one atomic-write helper: a crash or SIGKILL mid-write never
    leaves a truncated checkpoint under the real name."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: str | os.PathLike, expect_model: Optional[str] = None,
                    expect_classes: Optional[int] = None) -> dict:
    """Read and validate a checkpoint with ``weights_only=True`` (no code execution).

    Raises CheckpointError naming the file and what was expected and found."""
    return checked_checkpoint(read_torch_file(path), path, expect_model, expect_classes)


def read_torch_file(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with a CheckpointError naming the
    file when it is missing or unreadable (truncated zip, not a torch file, unsafe pickle)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} file not found")
    if not _torch_save_file(path):
        raise CheckpointError(f"{path}: not a readable checkpoint (not a file torch.save writes: it starts with "
                              "neither a zip nor a pickle header); pass a .pt file written by `eacnet train`")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None


def checked_checkpoint(ckpt: Any, path: str | os.PathLike, expect_model: Optional[str] = None,
                       expect_classes: Optional[int] = None) -> dict:
    """``ckpt`` (already read from ``path``) when it is one of our checkpoints, else a
    CheckpointError naming the file and what was expected and found."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: expected an {FORMAT} dict, found {found!r} "
                              "(was it written by `eacnet train` or eacnet_core.checkpoint?)")
    for key in ("model", "num_classes", "dataset", "state_dict"):
        if key not in ckpt:
            raise CheckpointError(f"{path}: checkpoint lacks the {key!r} field")
    if ckpt["model"] not in MODELS:
        raise CheckpointError(f"{path}: unknown model {ckpt['model']!r}; known: {', '.join(MODELS)}")
    if expect_model is not None and ckpt["model"] != expect_model:
        raise CheckpointError(f"{path}: expected weights for model {expect_model!r}, found {ckpt['model']!r} "
                              f"({ckpt['num_classes']} classes){_model_hint(ckpt['model'], expect_model)}")
    if expect_classes is not None and ckpt["num_classes"] != expect_classes:
        raise CheckpointError(f"{path}: expected {expect_classes} classes, found {ckpt['num_classes']}")
    return ckpt


def _model_hint(found: str, expected: str) -> str:
    """How to ask for the checkpoint's own network: the node's backbone/attention pair when
    the two models are both node pairs, else the registry name."""
    from eacnet_core.models.registry import BY_BACKBONE

    pairs = {name: pair for pair, name in BY_BACKBONE.items()}
    if found in pairs and expected in pairs:
        backbone, attention = pairs[found]
        return (f"; this file runs as backbone:={backbone} attention:={attention} (asked: "
                f"backbone:={pairs[expected][0]} attention:={pairs[expected][1]})")
    return f"; run it as model {found!r}"


def _torch_save_file(path: Path) -> bool:
    """Whether ``path`` starts as torch.save's files do: a zip archive, or the legacy pickle
    stream (protocol 2+ starts with 0x80). Anything else (a text file, an image) would reach
    the unpickler and fail with a bare ``KeyError`` of its first bytes."""
    with open(path, "rb") as stream:
        head = stream.read(4)
    return head == b"PK\x03\x04" or head[:1] == b"\x80"


def checkpoint_dataset(ckpt: dict) -> DatasetInfo:
    """The classes, palette and mean/std a checkpoint carries (``datasets.dataset_info``
    gives a dataset kind's own)."""
    return DatasetInfo.from_dict(ckpt["dataset"])


def model_from_checkpoint(ckpt: dict, path: str | os.PathLike = "<checkpoint>") -> nn.Module:
    """Build the registry model a checkpoint names and load its weights strictly."""
    model = build_model(ckpt["model"], ckpt["num_classes"], **ckpt.get("model_kwargs", {}))
    state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(f"{path}: weights do not fit model {ckpt['model']!r} with "
                              f"{ckpt['num_classes']} classes: {' '.join(first[:3])}") from None
    return model


def packaged_weights(model_name: str) -> Optional[Path]:
    """The default weights shipped inside the package for ``model_name``, if any."""
    candidate = WEIGHTS_DIR / f"{model_name}_camvid.pt"
    return candidate if candidate.is_file() else None


def weights_for(model_name: Optional[str], weights: str | os.PathLike | None = None) -> Optional[Path]:
    """Explicit ``weights``, else the packaged default for ``model_name``, else None: the one
    rule by which the Segmenter (and so the node and the bag tools), ``eval`` and ``export``
    pick a model's weights."""
    if weights:
        return Path(weights)
    return packaged_weights(model_name) if model_name else None


def missing_weights_error(model_name: str, option: str = "weights") -> CheckpointError:
    """What to say when a model has neither explicit nor packaged weights: which file to pass,
    and as what; or, for a name the registry does not know, the names it does."""
    if model_name not in MODELS:
        return CheckpointError(f"unknown model {model_name!r}; known: {', '.join(MODELS)}")
    return CheckpointError(f"no packaged weights for model {model_name!r}: pass a checkpoint written by "
                           f"`eacnet train` (its out dir holds best.pt) as {option}")


def _unwrap(model: nn.Module) -> nn.Module:
    """The bare module under DistributedDataParallel / torch.compile wrappers."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return getattr(model, "_orig_mod", model)
