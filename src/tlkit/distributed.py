"""Distributed data parallel under ``torchrun``: process group, model wrapper, samplers.

The [tlkit.Trainer][] calls these; they are public so that a hand-written loop can use the same
set-up. Outside ``torchrun`` (no ``WORLD_SIZE`` in the environment) every function is a no-op or
returns its input.
"""

from __future__ import annotations

import atexit
import os
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

__all__ = [
    "agree",
    "barrier",
    "distributed_loader",
    "gather_rows",
    "init_process_group",
    "most",
    "shard",
    "world",
    "wrap_model",
]

T = TypeVar("T")


def world() -> tuple[int, int, int]:
    """``(rank, local_rank, world_size)`` from torchrun's environment (``(0, 0, 1)`` alone).

    Examples:
        >>> world()
        (0, 0, 1)
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0)), dist.get_world_size()
    return (
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("LOCAL_RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
    )


def _destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def init_process_group() -> bool:
    """Join ``torchrun``'s process group if there is one and nobody joined it yet.

    Uses NCCL when CUDA is available, else gloo. A group created here is destroyed at
    interpreter exit: left to shutdown, gloo's threads can abort the process ("terminate called
    without an active exception").

    Returns:
        Whether this call created the group.

    Examples:
        >>> init_process_group()  # not under torchrun: nothing to join
        False
    """
    if world()[2] <= 1 or dist.is_initialized():
        return False
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    atexit.register(_destroy_process_group)
    return True


def barrier() -> None:
    """Wait for every process (no-op without ``torch.distributed``).

    Examples:
        >>> barrier()
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def wrap_model(model: nn.Module, device: torch.device, *, compile: bool = False) -> nn.Module:
    """``model`` in ``DistributedDataParallel`` under torchrun, compiled if asked.

    Call it again when the set of trainable parameters changes: DDP registers its gradient
    hooks for the parameters that require gradients when it is built.

    Examples:
        >>> model = nn.Linear(2, 2)
        >>> wrap_model(model, torch.device("cpu")) is model  # one process, no compile
        True
    """
    module: nn.Module = model
    if world()[2] > 1:
        device_ids = [device.index] if device.type == "cuda" else None
        module = DistributedDataParallel(module, device_ids=device_ids)
    if compile:
        module = torch.compile(module)  # type: ignore[assignment]
    return module


def distributed_loader(loader: Any, *, train: bool) -> Any:
    """``loader`` with a ``DistributedSampler`` under torchrun; ``loader`` itself otherwise.

    A loader that already has a ``DistributedSampler``, or anything that is not a
    ``DataLoader``, comes back unchanged. Otherwise a new ``DataLoader`` over the same dataset is
    built with every other setting of the original (workers, collation, pinning, generator,
    timeout, multiprocessing context, ...); training shuffles when the original did.

    Raises:
        ValueError: For a loader with a custom ``batch_sampler`` (build its distributed
            sampling yourself).

    Examples:
        >>> from torch.utils.data import TensorDataset
        >>> loader = DataLoader(TensorDataset(torch.zeros(4, 1)), batch_size=2)
        >>> distributed_loader(loader, train=True) is loader  # one process: kept as given
        True
    """
    rank, _, world_size = world()
    if world_size == 1 or not isinstance(loader, DataLoader):
        return loader
    if isinstance(loader.sampler, DistributedSampler):
        return loader
    if loader.batch_size is None:
        raise ValueError(
            "under torchrun the loader needs a DistributedSampler; this one uses a custom "
            "batch_sampler, so build it with DistributedSampler yourself"
        )
    sampler: DistributedSampler[Any] = DistributedSampler(
        loader.dataset,
        num_replicas=world_size,
        rank=rank,
        shuffle=train and isinstance(loader.sampler, RandomSampler),
        seed=0,
    )
    kept: dict[str, Any] = {
        name: getattr(loader, name)
        for name in (
            "num_workers",
            "collate_fn",
            "pin_memory",
            "drop_last",
            "timeout",
            "worker_init_fn",
            "multiprocessing_context",
            "generator",
            "persistent_workers",
            "pin_memory_device",
            "in_order",
        )
        if hasattr(loader, name)
    }
    if loader.num_workers > 0:
        kept["prefetch_factor"] = loader.prefetch_factor
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler, **kept)


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _wire(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` where the process group's backend can send it (NCCL: this process's GPU)."""
    if dist.get_backend() == "nccl":
        return tensor.to(torch.device("cuda", torch.cuda.current_device()))
    return tensor


def agree(value: T) -> T:
    """Rank 0's ``value`` on every process (``value`` itself in one process).

    Every process must call it at the same point. Use it for decisions that depend on
    measurements (a clock, a speed check), which differ between processes, so that all of them
    take the same branch. ``value`` is pickled.

    Examples:
        >>> agree({"epochs": 3})
        {'epochs': 3}
    """
    if not _active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)  # NCCL: through this process's current GPU
    return box[0]


def most(value: int) -> int:
    """The largest ``value`` of any process (``value`` in one process).

    Examples:
        >>> most(3)
        3
    """
    if not _active():
        return value
    tensor = _wire(torch.tensor([value], dtype=torch.long))
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def shard(count: int) -> torch.Tensor:
    """The rows of ``count`` this process works on: ``rank, rank + world_size, ...`` (every row
    in one process). Strided, so that each process sees every part of an ordered list (a folder
    read class by class).

    Examples:
        >>> shard(3)
        tensor([0, 1, 2])
    """
    rank, _, world_size = world()
    return torch.arange(rank, count, world_size)


def gather_rows(values: torch.Tensor, rows: torch.Tensor, total: int) -> torch.Tensor:
    """Every process's ``values`` (one per index of ``rows``, along the first dimension) put
    together into one tensor of ``total`` rows, on every process, on the CPU. In one process,
    ``values`` scattered into place.

    Examples:
        >>> gather_rows(torch.tensor([[1.0], [2.0]]), torch.tensor([1, 0]), 2)
        tensor([[2.],
                [1.]])
    """
    values, rows = values.cpu(), rows.cpu().long()
    if _active():
        world_size = dist.get_world_size()
        count = _wire(torch.tensor([len(rows)], dtype=torch.long))
        counts = [torch.zeros_like(count) for _ in range(world_size)]
        dist.all_gather(counts, count)
        longest = int(max(c.item() for c in counts))
        padded = torch.zeros((longest, *values.shape[1:]), dtype=values.dtype)
        padded[: len(values)] = values
        where = torch.full((longest,), -1, dtype=torch.long)
        where[: len(rows)] = rows
        parts = [_wire(torch.empty_like(padded)) for _ in range(world_size)]
        places = [_wire(torch.empty_like(where)) for _ in range(world_size)]
        dist.all_gather(parts, _wire(padded))
        dist.all_gather(places, _wire(where))
        values = torch.cat([p.cpu() for p in parts])
        rows = torch.cat([p.cpu() for p in places])
        values, rows = values[rows >= 0], rows[rows >= 0]
    seen = torch.zeros(total, dtype=torch.long).index_add_(0, rows, torch.ones_like(rows))
    if len(rows) != total or not bool((seen == 1).all()):
        raise ValueError(f"the processes' rows do not cover each of the {total} rows once")
    out = torch.empty((total, *values.shape[1:]), dtype=values.dtype)
    out[rows] = values
    return out
