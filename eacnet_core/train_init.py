"""Hierarchical training's start: ``--init-from`` loads a trained backbone (``erfnet_enc``,
``dabnet``) into the larger model (``eacnet_erf``, ``eacnet_erf_nl``, ``erfnet``,
``eacnet_dab``); parameter names are matched directly or through the ``backbone.``
prefix, whichever matches more. And the parameters a model's forward never uses, frozen.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .checkpoint import FORMAT, CheckpointError, checked_checkpoint, read_torch_file


@dataclass
class InitReport:
    """What ``--init-from`` did: target keys loaded, target keys left new, source keys unused."""

    source: str
    mapping: str
    loaded: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def format(self) -> str:
        return "\n".join([
            f"init-from {self.source} (names matched {self.mapping}):",
            f"  loaded     {len(self.loaded):4d}: {summarise_keys(self.loaded)}",
            f"  new        {len(self.new):4d}: {summarise_keys(self.new)}",
            f"  unexpected {len(self.unexpected):4d}: {summarise_keys(self.unexpected)}",
        ])


_KEY_MAPPINGS: dict[str, Callable[[str], str]] = {
    "directly": lambda k: k,
    "with a 'backbone.' prefix added": lambda k: "backbone." + k,
    "with the 'backbone.' prefix removed": lambda k: k[len("backbone."):] if k.startswith("backbone.") else k,
}


def _source_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state_dict from one of our checkpoints, or a bare (possibly DDP ``module.``) state_dict."""
    obj = read_torch_file(path, "--init-from checkpoint")
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        obj = checked_checkpoint(obj, path)["state_dict"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: holds no state_dict of tensors")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}


def init_from(model: nn.Module, path: str | os.PathLike) -> InitReport:
    """Load matching weights from ``path`` into ``model`` (hierarchical training).

    Of the key mappings (direct, add ``backbone.``, strip ``backbone.``) the one matching
    most target names wins. A matched name with a different shape is an error: silently
    skipping it would train a different model than the user asked for."""
    source = _source_state(path)
    target = model.state_dict()
    name, mapper = max(_KEY_MAPPINGS.items(), key=lambda item: sum(item[1](k) in target for k in source))
    mapped = {mapper(k): (k, v) for k, v in source.items()}
    matched = {t: kv for t, kv in mapped.items() if t in target}
    if not matched:
        raise CheckpointError(f"{path}: no parameter name in common with the model "
                              f"(source keys look like {next(iter(source), '-')!r}, model keys like "
                              f"{next(iter(target), '-')!r})")
    mismatched = [f"{src} {tuple(v.shape)} -> {t} {tuple(target[t].shape)}"
                  for t, (src, v) in matched.items() if v.shape != target[t].shape]
    if mismatched:
        raise CheckpointError(f"{path}: shape mismatch for {len(mismatched)} tensor(s): "
                              + "; ".join(mismatched[:5]) + (" ..." if len(mismatched) > 5 else "")
                              + " (different number of classes?)")
    model.load_state_dict({t: v for t, (_, v) in matched.items()}, strict=False)
    return InitReport(str(path), name, loaded=sorted(matched), new=sorted(set(target) - set(matched)),
                      unexpected=sorted(src for t, (src, _) in mapped.items() if t not in target))


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

