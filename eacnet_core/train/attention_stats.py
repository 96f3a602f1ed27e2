"""The attention's numbers in training: its residual scale gamma (set at the start with
--attention-gamma-init, logged every epoch) and the entropy of its rows on validation
images (logged when a run validates). Models without the attention have neither."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from eacnet_core.data.datasets import SegmentationDataset
from eacnet_core.models.attention import SelfCalibrationAttention


def set_attention_gamma(model: nn.Module, value: float) -> None:
    """Start the attention's residual scale at ``value`` instead of 0: at 0 the attention's
    own weights get no gradient until gamma has moved, so a small positive start lets both
    learn from the first step."""
    modules = [m for m in model.modules() if isinstance(m, SelfCalibrationAttention)]
    if not modules:
        raise ValueError("--attention-gamma-init applies to models with the attention (eacnet_erf, eacnet_erf_nl, "
                         "eacnet_dab)")
    with torch.no_grad():
        for module in modules:
            module.gamma.fill_(value)


def attention_gamma(model: nn.Module) -> Optional[float]:
    """The attention's residual scale, or None for a model without one. It starts at 0, so
    it is the quickest sign of whether fine-tuning is using the attention at all."""
    for module in model.modules():
        if isinstance(module, SelfCalibrationAttention):
            return float(module.gamma.detach().float().cpu())
    return None


@torch.no_grad()
def attention_entropy(model: nn.Module, dataset: SegmentationDataset, device: torch.device,
                      images: int = 2) -> Optional[tuple[float, float]]:
    """Mean entropy (nats) of the attention's rows on the first ``images`` of ``dataset``,
    and the entropy a uniform row would have (log N'). Near the uniform value the module
    only averages; far below it, each pixel attends to a few regions. None without attention."""
    modules = [m for m in model.modules() if isinstance(m, SelfCalibrationAttention)]
    if not modules or len(dataset) == 0:
        return None
    inputs: list[torch.Tensor] = []
    hook = modules[0].register_forward_pre_hook(lambda _module, args: inputs.append(args[0]))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for index in range(min(images, len(dataset))):
                model(dataset[index][0].unsqueeze(0).to(device))
    finally:
        hook.remove()
        model.train(was_training)
    rows = [modules[0].attention_map(x.float()) for x in inputs]
    entropy = torch.stack([-(p * p.clamp_min(1e-12).log()).sum(-1).mean() for p in rows]).mean()
    return float(entropy), float(math.log(rows[0].shape[-1]))
