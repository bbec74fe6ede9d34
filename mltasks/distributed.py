"""Data-parallel training (DDP) from inside a training process started by torchrun.

Each process (rank) trains the same fold on its share of every global batch
(`pipeline.RankBatches`); DDP averages the gradients, so `world` processes take the steps one
process would take on the same global batch, each pass of a process as large as one pass of a
single process with `micro_batch_size` = batch / world (batch norm sees the same groups of
images). The leader (rank 0) validates, reports progress, stores and publishes; the others
follow its decisions, which it sends them: whether to stop (cancel, a lost lease) at the end of
each step, and each epoch's validation figures for early stopping. NCCL on GPUs, gloo on CPUs.
Launching and supervising the processes is `mltasks.launch`'s.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from .launch import ERRORS_ENV

# How long a rank waits for the others at a collective step: the leader alone predicts a fold's
# test part and builds the report, which takes minutes on a large data set.
COLLECTIVE_TIMEOUT = timedelta(minutes=60)


@dataclass(frozen=True)
class Ranks:
    """Where this process stands in its process group (torchrun's RANK, WORLD_SIZE, LOCAL_RANK)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Ranks:
        return cls(
            int(os.environ.get("RANK", 0)),
            int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)),
        )

    @property
    def leader(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


SINGLE = Ranks()


def device_for(config: dict, ranks: Ranks) -> torch.device:
    """This rank's device: its own GPU (LOCAL_RANK) where the run may use CUDA, else the CPU."""
    if config["device"] != "cpu" and torch.cuda.is_available():
        device = torch.device("cuda", ranks.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def start_group(ranks: Ranks, device: torch.device) -> None:
    """Join the process group torchrun set up (its environment names the rendezvous)."""
    if ranks.distributed:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)


def end_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, ranks: Ranks, device: torch.device) -> torch.nn.Module:
    """The model as DDP where the run has several processes (its weights are rank 0's)."""
    if not ranks.distributed:
        return model
    ids = [device.index] if device.type == "cuda" else None
    # Gradients live in DDP's communication buckets: no copy of 92 MB per step into them.
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=ids, gradient_as_bucket_view=True
    )


def syncing(model: torch.nn.Module, last_pass: bool):
    """Gradients are averaged across the processes once per step, on its last pass."""
    if last_pass or not isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return model.no_sync()


def end_of_step(ranks: Ranks, stop: bool, loss: float, device) -> tuple[bool, float]:
    """After each step: whether any process must stop (the leader's cancel), and the step's
    loss over the whole global batch (each process's `loss` is its share, scaled as in
    `training._accumulate`: their mean is the batch's loss)."""
    if not ranks.distributed:
        return stop, loss
    values = torch.tensor([float(stop), loss], dtype=torch.float64, device=device)
    dist.all_reduce(values)
    return bool(values[0].item() > 0), values[1].item() / ranks.world


def from_leader(ranks: Ranks, values: list[float], device) -> list[float]:
    """The leader's `values` on every process (what the others' values were does not count)."""
    if not ranks.distributed:
        return values
    sent = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(sent, src=0)
    return sent.tolist()


def smallest(ranks: Ranks, value: int, device) -> int:
    """The smallest of the processes' `value`s (a batch every device can hold)."""
    if not ranks.distributed:
        return value
    found = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(found, op=dist.ReduceOp.MIN)
    return int(found.item())


def record_error(ranks: Ranks, sentence: str) -> None:
    """Leave a failing rank's sentence where the supervising worker reads it."""
    folder = os.environ.get(ERRORS_ENV)
    if folder:
        (Path(folder) / f"rank-{ranks.rank}.error").write_text(sentence)
