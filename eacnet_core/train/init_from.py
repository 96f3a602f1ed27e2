"""Where a run's weights start: ``--init-from``.

Two uses. Hierarchical training loads a trained backbone (``erfnet_enc``, ``dabnet``) into
the larger model (``eacnet_erf``, ``eacnet_erf_nl``, ``erfnet``, ``eacnet_dab``); parameter
names are matched directly or through the ``backbone.`` prefix, whichever matches more.
Transfer to other classes (fine-tuning on a team's own data) loads a trained model whose
class count differs: the class-sized tensors (the classifier, the attention's C x C convs)
start fresh, or, with a class map (``--class-map``: new class -> old classes), from the
mean of the old classes' rows; everything else loads. A source is a file or a packaged
model name (``eacnet_dab``: the CamVid weights shipped in the package).

And the parameters a model's forward never uses, frozen.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from eacnet_core.checkpoint import (
    FORMAT,
    WEIGHTS_DIR,
    CheckpointError,
    checked_checkpoint,
    packaged_weights,
    read_torch_file,
)


@dataclass
class InitReport:
    """What ``--init-from`` did, by group: target keys loaded as they were, class-sized keys
    started from the class map or fresh, target keys the source lacks, source keys unused."""

    source: str
    mapping: str
    loaded: list[str] = field(default_factory=list)
    mapped: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    classes: str = ""  # "11 -> 5" when the class count changed
    class_map: list[str] = field(default_factory=list)  # "vehicle <- Car", one per new class
    notes: list[str] = field(default_factory=list)

    @property
    def head(self) -> list[str]:
        """Keys that did not load as trained: what a fine-tuning recipe trains at the higher rate."""
        return sorted(self.mapped + self.fresh + self.new)

    def format(self) -> str:
        lines = [f"init-from {self.source} (names matched {self.mapping}"
                 + (f"; classes {self.classes}" if self.classes else "") + "):",
                 f"  loaded     {len(self.loaded):4d}: {summarise_keys(self.loaded)}"]
        if self.mapped:
            lines.append(f"  class map  {len(self.mapped):4d}: {summarise_keys(self.mapped)}")
            lines += [f"      {entry}" for entry in self.class_map]
        if self.fresh:
            lines.append(f"  fresh      {len(self.fresh):4d}: {summarise_keys(self.fresh)} (class-sized)")
        lines += [f"  new        {len(self.new):4d}: {summarise_keys(self.new)}",
                  f"  unexpected {len(self.unexpected):4d}: {summarise_keys(self.unexpected)}"]
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])


_KEY_MAPPINGS: dict[str, Callable[[str], str]] = {
    "directly": lambda k: k,
    "with a 'backbone.' prefix added": lambda k: "backbone." + k,
    "with the 'backbone.' prefix removed": lambda k: k[len("backbone."):] if k.startswith("backbone.") else k,
}


def packaged_sources() -> list[str]:
    """Model names ``--init-from`` accepts as packaged weights."""
    return sorted(p.name[: -len("_camvid.pt")] for p in WEIGHTS_DIR.glob("*_camvid.pt"))


def init_source(spec: str | os.PathLike) -> Path:
    """A packaged model name (``eacnet_dab``) -> its shipped weights; anything else is a file,
    and a missing one names the packaged models too."""
    text = str(spec)
    if os.sep not in text and not Path(text).exists():
        packaged = packaged_weights(text)
        if packaged is not None:
            return packaged
    path = Path(spec)
    if not path.is_file():
        raise CheckpointError(f"{path}: --init-from checkpoint file not found (give a file written by "
                              f"`eacnet train`, or a packaged model: {', '.join(packaged_sources())})")
    return path


@dataclass
class _Source:
    state: dict[str, torch.Tensor]
    class_names: Optional[tuple[str, ...]]  # None: a bare state_dict, classes unknown


def _read_source(path: Path) -> _Source:
    """A state_dict (and its class names) from one of our checkpoints, or a bare (possibly
    DDP ``module.``) state_dict."""
    obj = read_torch_file(path, "--init-from checkpoint")
    names = None
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        ckpt = checked_checkpoint(obj, path)
        obj = ckpt["state_dict"]
        names = tuple(ckpt["dataset"].get("class_names", ())) or None
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: holds no state_dict of tensors")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}
    return _Source(state, names)


def read_class_map(path: str | os.PathLike, old: Sequence[str], new: Sequence[str]) -> dict[str, list[str]]:
    """``--class-map``: YAML ``new class: [old classes]`` (a single name may stand alone),
    checked against both class lists. New classes it leaves out start fresh."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: --class-map file not found")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(spec, dict) or not spec:
        raise ValueError(f"{path}: a class map is a mapping 'new class: [old classes]', e.g. 'vehicle: [Car]'")
    out: dict[str, list[str]] = {}
    for key, value in spec.items():
        olds = [value] if isinstance(value, str) else value
        if str(key) not in new:
            raise ValueError(f"{path}: {key!r} is not one of the new classes ({', '.join(new)})")
        if not isinstance(olds, list) or not olds:
            raise ValueError(f"{path}: {key!r} needs a non-empty list of old classes, got {value!r}")
        unknown = [str(o) for o in olds if str(o) not in old]
        if unknown:
            raise ValueError(f"{path}: {key!r} maps from {', '.join(map(repr, unknown))}, not among the old "
                             f"classes ({', '.join(old)})")
        out[str(key)] = [str(o) for o in olds]
    return out


def _class_dims(src: torch.Tensor, dst: torch.Tensor, old_c: int, new_c: int) -> Optional[list[int]]:
    """The dimensions that differ only as old -> new class count; None when any other does."""
    if src.dim() != dst.dim() or old_c == new_c:
        return None
    dims = []
    for d, (a, b) in enumerate(zip(src.shape, dst.shape, strict=True)):
        if a == b:
            continue
        if (a, b) != (old_c, new_c):
            return None
        dims.append(d)
    return dims or None


def _output_dims(model: nn.Module, key: str, dims: list[int]) -> set[int]:
    """Which class dimensions index outputs (rows): dim 0 of a conv/linear weight and of
    any 1-d tensor, dim 1 of a transposed conv's weight; the others index inputs."""
    owner = model.get_submodule(key.rsplit(".", 1)[0]) if "." in key else model
    out_dim = 1 if isinstance(owner, nn.modules.conv._ConvTransposeNd) and key.endswith("weight") else 0
    return {d for d in dims if d == out_dim}


def _mapped_tensor(src: torch.Tensor, fresh: torch.Tensor, dims: list[int], outputs: set[int],
                   membership: torch.Tensor) -> torch.Tensor:
    """``src`` with each class dim taken to the new classes: an output dim as the mean of the
    mapped old rows, an input dim as their sum (a new logit is the mean of its old ones, so a
    layer reading it stands in for all of them); entries of unmapped new classes stay ``fresh``."""
    counts = membership.sum(dim=1, keepdim=True)
    mapped_rows = counts.squeeze(1) > 0
    out = src.float()
    keep = torch.ones_like(fresh, dtype=torch.bool)
    for d in dims:
        matrix = membership / counts.clamp(min=1) if d in outputs else membership
        out = torch.movedim(torch.tensordot(matrix, torch.movedim(out, d, 0), dims=1), 0, d)
        shape = [1] * fresh.dim()
        shape[d] = -1
        keep = keep & mapped_rows.view(shape)
    return torch.where(keep, out.to(fresh.dtype), fresh)


def init_from(model: nn.Module, source: str | os.PathLike, class_names: Optional[Sequence[str]] = None,
              class_map: str | os.PathLike | Mapping[str, Sequence[str]] | None = None) -> InitReport:
    """Load matching weights from ``source`` (a file or a packaged model name) into ``model``.

    Of the key mappings (direct, add ``backbone.``, strip ``backbone.``) the one matching
    most target names wins. When ``class_names`` (the run's classes) differ in number from
    the source's, tensors whose shapes differ only in class-sized dimensions start fresh,
    or from ``class_map`` (YAML file or dict, new class -> old classes). Any other shape
    difference is an error: silently skipping it would train a different model than asked."""
    path = init_source(source)
    src = _read_source(path)
    target = model.state_dict()
    name, mapper = max(_KEY_MAPPINGS.items(), key=lambda item: sum(item[1](k) in target for k in src.state))
    mapped = {mapper(k): (k, v) for k, v in src.state.items()}
    matched = {t: kv for t, kv in mapped.items() if t in target}
    if not matched:
        raise CheckpointError(f"{path}: no parameter name in common with the model "
                              f"(source keys look like {next(iter(src.state), '-')!r}, model keys like "
                              f"{next(iter(target), '-')!r})")
    old_c = len(src.class_names) if src.class_names else 0
    new_c = len(class_names) if class_names else 0
    class_sized: dict[str, list[int]] = {}
    mismatched = []
    for t, (k, v) in matched.items():
        if v.shape == target[t].shape:
            continue
        dims = _class_dims(v, target[t], old_c, new_c) if old_c and new_c else None
        if dims is None:
            mismatched.append(f"{k} {tuple(v.shape)} -> {t} {tuple(target[t].shape)}")
        else:
            class_sized[t] = dims
    if mismatched:
        hint = (" (different number of classes? pass the run's classes to transfer the class-sized tensors)"
                if not (old_c and new_c) else " (not explained by the class count "
                f"{old_c} -> {new_c}: a different network?)")
        raise CheckpointError(f"{path}: shape mismatch for {len(mismatched)} tensor(s): "
                              + "; ".join(mismatched[:5]) + (" ..." if len(mismatched) > 5 else "") + hint)
    if class_map is not None and not class_sized:
        raise ValueError(f"--class-map given, but {path} has the run's class count ({new_c}): nothing to map")
    report = InitReport(str(path), name, classes=f"{old_c} -> {new_c}" if class_sized else "")
    if old_c and old_c == new_c and tuple(src.class_names or ()) != tuple(class_names or ()):
        report.notes.append(f"same class count, other names: the classifier loads as trained for "
                            f"{', '.join(src.class_names or ())} and is fine-tuned to {', '.join(class_names or ())}")
    state = {t: v for t, (_, v) in matched.items() if t not in class_sized}
    if class_sized and class_map is not None:
        assert src.class_names is not None and class_names is not None
        groups = (read_class_map(class_map, src.class_names, class_names)
                  if not isinstance(class_map, Mapping) else {str(k): list(v) for k, v in class_map.items()})
        membership = torch.zeros(new_c, old_c)
        for new_name, olds in groups.items():
            for old_name in olds:
                membership[list(class_names).index(new_name), list(src.class_names).index(old_name)] = 1.0
        for t, dims in class_sized.items():
            state[t] = _mapped_tensor(matched[t][1], target[t], dims, _output_dims(model, t, dims), membership)
        report.mapped = sorted(class_sized)
        report.class_map = [f"{n} <- {', '.join(groups[n]) if n in groups else '(fresh)'}" for n in class_names]
    else:
        report.fresh = sorted(class_sized)
    model.load_state_dict(state, strict=False)
    report.loaded = sorted(t for t in matched if t not in class_sized)
    report.new = sorted(set(target) - set(matched))
    report.unexpected = sorted(src_key for t, (src_key, _) in mapped.items() if t not in target)
    return report


def summarise_keys(keys: Sequence[str], limit: int = 8) -> str:
    """Short lists in full; long ones grouped by their first two name components."""
    if not keys:
        return "-"
    if len(keys) <= limit:
        return ", ".join(keys)
    groups: dict[str, int] = {}
    for key in keys:
        prefix = ".".join(key.split(".")[:2])
        groups[prefix] = groups.get(prefix, 0) + 1
    return ", ".join(f"{g}.* ({n})" for g, n in groups.items())
def freeze_unused(model: nn.Module) -> list[str]:
    """Freeze parameters the forward pass never uses (ERFNet keeps its encoder's 1x1
    classifier, as the reference does). They would get no gradient anyway; frozen, DDP
    needs no ``find_unused_parameters`` and the optimiser skips them."""
    was_training = model.training
    model.eval()
    x = torch.zeros(1, 3, 64, 64, device=next(model.parameters()).device)
    model(x).float().sum().backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    for n, p in model.named_parameters():
        p.grad = None
        if n in unused:
            p.requires_grad_(False)
    model.train(was_training)
    return unused

