"""Operation counts in two conventions.

* ``module_macs``: the paper's convention, the multiply-accumulates of ``thop`` (0.0.31),
  counted per module with forward hooks: a conv (and, as thop does, a transposed conv)
  costs ``out.numel() * (in_channels/groups * kernel + bias)``, BatchNorm ``2 * numel``
  in eval mode, activations, pooling and ``F.interpolate`` nothing, and the attention's
  matrix products nothing (they are functional ops, not modules). This reproduces the
  paper's Tables 1 and 3 to 0.1%.
* ``total_flops``: every matrix-product-like op (conv, mm/bmm, attention) as counted by
  ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per MAC), so the attention's cost
  is visible.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def _conv_macs(module: nn.Module, _inputs, output: torch.Tensor) -> int:
    kernel = module.weight.shape[2:].numel()
    bias = 1 if module.bias is not None else 0
    return output.numel() * (module.in_channels // module.groups * kernel + bias)


def _bn_macs(_module: nn.Module, _inputs, output: torch.Tensor) -> int:
    return 2 * output.numel()


_COUNTERS = {nn.Conv2d: _conv_macs, nn.ConvTranspose2d: _conv_macs, nn.BatchNorm2d: _bn_macs}


@torch.inference_mode()
def module_macs(model: nn.Module, height: int, width: int) -> int:
    """thop-convention MACs of one forward pass at batch 1."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        total += _COUNTERS[type(module)](module, inputs, output)

    handles = [m.register_forward_hook(hook) for m in model.modules() if type(m) in _COUNTERS]
    was_training = model.training
    try:
        model.eval()
        model(torch.zeros(1, 3, height, width, device=next(model.parameters()).device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total


@torch.inference_mode()
def total_flops(model: nn.Module, height: int, width: int) -> int:
    """FLOPs of one forward pass at batch 1, matrix products (attention) included."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            model(torch.zeros(1, 3, height, width, device=next(model.parameters()).device))
    finally:
        model.train(was_training)
    return counter.get_total_flops()
