"""The processes of a training run: torchrun's process group, how the training set is
dealt out over the processes, and every process's random state.

``train`` runs alone or under ``torchrun --nproc_per_node=N`` (DistributedDataParallel,
nccl on GPU, gloo on CPU). The data order is a function of (seed, epoch), and the RNG
states are saved per process, so a resumed run continues bit-exactly.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from eacnet_core.runtime import collective_device, resolve_device


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_spec: str) -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun describes (WORLD_SIZE/RANK/LOCAL_RANK/MASTER_*), or
    run alone. nccl on CUDA, gloo on CPU; each process drives cuda:LOCAL_RANK."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    # No silent CPU fallback when CUDA was asked for: days of training on the wrong device is worse than an error.
    if world <= 1:
        return DistInfo(), resolve_device(device_spec, fallback=False)
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    device = resolve_device(device_spec, fallback=False)
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return info, device


def teardown_distributed(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_values(values: Sequence[float], device: torch.device, info: DistInfo) -> list[float]:
    """Sum a few scalars over processes (identity when alone)."""
    if not info.enabled:
        return [float(v) for v in values]
    t = torch.tensor(list(values), dtype=torch.float64, device=collective_device(device))
    dist.all_reduce(t)
    return t.cpu().tolist()


class ShardSampler(Sampler[int]):
    """Per-epoch shuffle seeded by (seed, epoch), sharded over processes like
    DistributedSampler (padded by repetition so every process gets the same number of
    batches), trimmed to whole batches, and able to skip the batches a resumed run has
    already done. Works without a process group (one process)."""

    def __init__(self, size: int, batch_size: int, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True):
        self.size, self.batch_size = size, batch_size
        self.num_replicas, self.rank, self.seed, self.shuffle = num_replicas, rank, seed, shuffle
        self.epoch = 0
        self.skip_batches = 0

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.size / self.num_replicas) // self.batch_size

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip_batches = int(epoch), int(skip_batches)

    def _shard(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        total = math.ceil(self.size / self.num_replicas) * self.num_replicas
        order = (order * math.ceil(total / self.size))[:total]
        return order[self.rank::self.num_replicas][: self.batches_per_epoch * self.batch_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self._shard()[self.skip_batches * self.batch_size:])

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.skip_batches) * self.batch_size





def rng_state() -> dict:
    """torch (CPU + CUDA), numpy and python ``random`` states as tensors/primitives only."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": int(py_version), "internal": torch.tensor(py_internal, dtype=torch.int64),
                   "gauss_next": py_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_rng_states(dist_info: DistInfo) -> list[dict]:
    """Every process's RNG state, by rank (collective: all processes must call it)."""
    state = rng_state()
    if not dist_info.enabled:
        return [state]
    states: list = [None] * dist_info.world_size
    dist.all_gather_object(states, state)
    return states


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)

