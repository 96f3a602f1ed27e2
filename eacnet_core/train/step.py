"""One training step and what it keeps on the device.

The step is written so the host never waits for the device inside an epoch: the loss is
summed on the device (``LossMeter``) and read once per epoch; a non-finite loss is
noted on the device (its first iteration and value) and reported when read; the
optimiser is Adam's fused kernel; the exponential moving average of the weights (``WeightEma``) is one multi-tensor
lerp. Forward, loss and (through AOTAutograd) backward can run as one ``torch.compile``d
graph (``compiled_loss``); on CUDA the ``reduce-overhead`` / ``max-autotune`` modes
replay it as CUDA graphs, which removes the launch overhead that bounds a small network
at batch 16.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Optional

import torch
from torch import Tensor, nn

from eacnet_core.runtime import autocast
from eacnet_core.train.config import COMPILE_MODES

#: Modes whose graphs are replayed as CUDA graphs (each step must be marked, outputs are reused).
CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")


def compile_mode_for(mode: str, device: torch.device) -> str:
    """The concrete ``torch.compile`` mode of a ``--compile`` choice on ``device`` ("" = eager).
    CUDA graphs exist only on CUDA: elsewhere every mode compiles without them."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"--compile must be one of {', '.join(m or repr(m) for m in COMPILE_MODES)}, got {mode!r}")
    if not mode:
        return ""
    if device.type != "cuda":
        return "default" if mode in ("auto", "reduce-overhead") else (
            "max-autotune-no-cudagraphs" if mode == "max-autotune" else mode)
    return "reduce-overhead" if mode == "auto" else mode


def loss_function(forward: nn.Module, criterion: nn.Module, device: torch.device,
                  amp_dtype: Optional[torch.dtype]) -> Callable[[Tensor, Tensor], Tensor]:
    """``(image, label) -> loss``: the network under autocast, the criterion in fp32."""

    def loss_of(image: Tensor, label: Tensor) -> Tensor:
        with autocast(device, amp_dtype):
            logits = forward(image)
        return criterion(logits.float(), label)

    return loss_of


def compiled_loss(forward: nn.Module, criterion: nn.Module, device: torch.device, amp_dtype: Optional[torch.dtype],
                  mode: str) -> Callable[[Tensor, Tensor], Tensor]:
    """``loss_function``, through ``torch.compile`` when ``mode`` (a concrete mode) is set.
    Shapes are static (every batch has the same size: the sampler trims to whole batches),
    so one graph serves the whole run."""
    loss_of = loss_function(forward, criterion, device, amp_dtype)
    if not mode:
        return loss_of
    compiled = torch.compile(loss_of, mode=mode, dynamic=False)
    if mode not in CUDAGRAPH_MODES or device.type != "cuda":
        return compiled

    def replayed(image: Tensor, label: Tensor) -> Tensor:
        torch.compiler.cudagraph_mark_step_begin()  # a new step: the previous outputs may be overwritten
        return compiled(image, label)

    return replayed


def adam_implementation(device: torch.device) -> dict:
    """Adam's fastest kernel on ``device``: fused (one kernel for all parameters, the step
    counters kept beside them, never read by the host) where torch has it (CUDA; CPU since
    torch 2.4, about 3x the multi-tensor form's speed there), else the multi-tensor form."""
    return {"fused": True} if _fused_adam_available(device.type) else {"foreach": True}


@functools.cache
def _fused_adam_available(device_type: str) -> bool:
    try:
        torch.optim.Adam([torch.zeros(1, device=device_type, requires_grad=True)], fused=True)
    except (RuntimeError, ValueError, TypeError):
        return False
    return True


class LossMeter:
    """A run's loss summed on the device, and the first non-finite loss seen (iteration
    and value), so the loop never reads the device inside an epoch."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        self.bad_value = torch.zeros((), dtype=torch.float32, device=device)

    def reset(self, total: float = 0.0) -> None:
        self.total = torch.full((), float(total), dtype=torch.float64 if self.device.type != "mps" else torch.float32,
                                device=self.device)

    def add(self, loss: Tensor, images: int, iteration: int) -> None:
        """Add ``loss`` (the batch mean) for ``images`` images at (0-based) ``iteration``."""
        loss = loss.detach().float()
        newly_bad = ~torch.isfinite(loss) & (self.first_bad < 0)
        self.first_bad = torch.where(newly_bad, iteration, self.first_bad)
        self.bad_value = torch.where(newly_bad, loss, self.bad_value)
        self.total = self.total + loss.to(self.total.dtype) * images

    def read(self) -> tuple[float, Optional[tuple[int, float]]]:
        """(loss sum, (iteration, value) of the first non-finite loss or None): one device read."""
        values = torch.stack([self.total.double(), self.first_bad.double(), self.bad_value.double()]).tolist()
        total, first_bad, bad_value = values
        return total, (None if first_bad < 0 else (int(first_bad), bad_value))


class WeightEma:
    """Exponential moving average of a model's floating-point state (parameters and
    BatchNorm statistics), updated after every optimiser step with a multi-tensor lerp.
    The decay ramps up as ``min(decay, (1 + n) / (10 + n))`` after n updates, so early
    averages are not dominated by the random initialisation."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"--ema must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.updates = 0
        self.keys = [k for k, v in model.state_dict().items() if v.is_floating_point()]
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def _pairs(self, model: nn.Module) -> tuple[list[Tensor], list[Tensor]]:
        state = model.state_dict()
        return [self.shadow[k] for k in self.keys], [state[k].detach() for k in self.keys]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        shadow, current = self._pairs(model)
        torch._foreach_lerp_(shadow, current, 1.0 - decay)
        for key, value in model.state_dict().items():
            if not value.is_floating_point():  # BatchNorm's num_batches_tracked
                self.shadow[key].copy_(value)

    def state_dict(self) -> dict[str, Tensor]:
        """A copy on the CPU (``.cpu()`` alone would alias the live tensors on a CPU run)."""
        return {k: v.detach().clone().cpu() for k, v in self.shadow.items()}

    def load(self, state: dict[str, Tensor], updates: int) -> None:
        for key, value in state.items():
            self.shadow[key].copy_(value)
        self.updates = int(updates)

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """``model`` holding the averaged weights inside the block, its own weights after."""
        backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.shadow)
        try:
            yield model
        finally:
            model.load_state_dict(backup)
