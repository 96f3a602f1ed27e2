"""Device and precision choice (and autocast to a chosen dtype), shared by inference,
evaluation, benchmarks and training.

Rules: ``auto`` means CUDA when present else CPU; an explicitly requested but unavailable
CUDA device falls back to CPU with one warning (a robot must still start); fp16 only on
CUDA; bf16 only where the hardware runs it natively.
"""

from __future__ import annotations

import contextlib
import logging
import re
from typing import Optional

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")
PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def device_or_reason(spec: str = "auto", cuda_available: Optional[bool] = None,
                     cuda_count: Optional[int] = None) -> tuple[torch.device, Optional[str]]:
    """The device ``spec`` names when it is there, else the CPU and why CUDA is not (also
    for ``auto`` on a machine without CUDA). The one home of the fallback rule:
    ``resolve_device`` logs or raises the reason, the ROS node hands it to ROS's logger.
    ``cuda_available`` / ``cuda_count`` default to torch's answer (tests pass them)."""
    spec = (spec or "auto").strip().lower()
    if spec == "cpu":
        return torch.device("cpu"), None
    match = re.fullmatch(r"auto|cuda(?::(\d+))?", spec)
    if not match:
        raise ValueError(f"device must be one of auto, cpu, cuda, cuda:N; got {spec!r}")
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if cuda_count is None:
        cuda_count = torch.cuda.device_count() if cuda_available else 0
    index = int(match.group(1) or 0)
    if cuda_available and index < cuda_count:
        return (torch.device("cuda") if spec == "auto" else torch.device("cuda", index)), None
    return torch.device("cpu"), ("CUDA is not available" if not cuda_available else
                                 f"only {cuda_count} CUDA device(s)")


def resolve_device(spec: str = "auto", fallback: bool = True) -> torch.device:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' -> a usable torch.device."""
    spec = (spec or "auto").strip().lower()
    device, reason = device_or_reason(spec)
    if reason is None or spec == "auto":  # auto on a CPU-only machine is no fallback
        return device
    if not fallback:
        raise ValueError(f"device {spec!r} requested but {reason}")
    log.warning("device %r requested but %s: falling back to CPU", spec, reason)
    return device


def cpu_supports_bf16() -> bool:
    """True on CPUs with native bf16 (AVX512-BF16 / AMX), where bf16 is actually faster."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """Validate a precision for a device; 'auto' -> fp16 on CUDA, fp32 on CPU. On the CPU
    that is where a Segmenter starts: its precision auto then times bf16 and int8 against
    fp32 and keeps one only if its masks agree with fp32's (infer/chooser.py, AGREEMENT_MIN)."""
    precision = (precision or "auto").lower()
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision fp16 needs a CUDA device (CPU fp16 convolutions are slow "
                         "and unsupported in places); use fp32 or bf16 on CPU")
    if precision == "int8" and device.type != "cpu":
        raise ValueError("precision int8 runs on the CPU (onnxruntime, statically quantised); on CUDA use fp16")
    if precision == "bf16" and device.type == "cpu" and not cpu_supports_bf16():
        raise ValueError("precision bf16 requested but this CPU has no native bf16 support; use fp32")
    return precision


def autocast(device: torch.device, dtype: Optional[torch.dtype]) -> contextlib.AbstractContextManager:
    """torch.autocast for fp16/bf16, a no-op context for fp32 (None)."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def configure_torch(device: torch.device, threads: int = 0) -> None:
    """The process-wide torch set-up of every command that runs a model: ``threads`` CPU
    threads (0: torch's default, all cores), and cuDNN's autotuner on CUDA, which picks the
    fastest convolution for each input shape once (our shapes are fixed per run)."""
    if threads < 0:
        raise ValueError(f"threads must be >= 0 (0: the library default), got {threads}")
    if threads > 0:
        torch.set_num_threads(threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def collective_device(device: torch.device) -> torch.device:
    """Where tensors for a torch.distributed collective must live: nccl reduces CUDA
    tensors, gloo CPU ones (the CPU too when no process group is up)."""
    return device if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl" \
        else torch.device("cpu")
