"""Data-parallel training over processes with ``torch.distributed`` (``torchrun -m agent train``).

Each process (rank) steps its own envs into its own replay and samples its own (B, T) batch; after every
backward pass the gradients are averaged over ranks (one all-reduce per optimizer) before they are clipped
and stepped, so every rank takes the same optimizer step and the parameters stay identical. Rank 0 alone
logs, evaluates and writes the checkpoint, which carries every rank's replay state, counters and random
states.

Every helper here is a no-op in a single process (no process group): a run without ``torchrun`` does exactly
what it did before this module existed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

RANK_SEED_STRIDE = 1_000_003  # rank r's envs, replay and sampling use seed + r * this; rank 0 keeps the seed


def active() -> bool:
    """True inside a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if active() else 0


def world_size() -> int:
    """Number of processes training together (1 without a process group)."""
    return dist.get_world_size() if active() else 1


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s envs, replay and sampling: ``seed`` itself for rank 0."""
    return seed + rank * RANK_SEED_STRIDE


def init_from_env(device: str) -> bool:
    """Join the process group that ``torchrun`` describes in the environment (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``); NCCL for CUDA, gloo on the CPU. Returns False (and
    does nothing) when the environment names no group of more than one process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return active()
    if not dist.is_available():
        raise ValueError("WORLD_SIZE > 1, but this torch build has no torch.distributed.")
    cuda = device.startswith("cuda")
    if cuda:
        # Each rank on its own GPU: "cuda" (the config's device) then means this one.
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    return True


def shutdown() -> None:
    """Leave the process group (if any)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def average_gradients(parameters: Iterable[nn.Parameter], loss: Tensor) -> Tensor:
    """Average the gradients of ``parameters`` over ranks in place, after ``backward`` and before clipping.

    Returns a bool tensor: whether ``loss`` is finite on every rank (in one process, on this one), so that
    all ranks skip a step together. One all-reduce carries the gradients, a mask of which parameters have a
    gradient (one that has none on a rank counts as zero there; one that has none anywhere stays None) and
    the count of ranks with a non-finite loss. All ranks receive the same sums, so they step identically.
    """
    finite = torch.isfinite(loss.detach())
    if not active():
        return finite
    params = [p for p in parameters if p.requires_grad]
    if not params:
        return finite
    device = params[0].device
    grads = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in params]
    has_grad = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
    flat = torch.cat([*grads, has_grad, (~finite).float().reshape(1).to(device)])
    dist.all_reduce(flat)
    sizes = [p.numel() for p in params]
    total = sum(sizes)
    mean = flat[:total] / dist.get_world_size()
    somewhere = flat[total:total + len(params)] > 0
    for p, g, has in zip(params, mean.split(sizes), somewhere.tolist()):
        p.grad = g.view_as(p).to(p.dtype) if has else None
    return flat[-1] == 0


def all_gather_flat(values: Tensor) -> Tensor:
    """All ranks' ``values`` concatenated (flattened), identical on every rank; ``values`` flattened in one
    process. For statistics that every rank must agree on, such as the return normaliser's percentiles."""
    flat = values.detach().reshape(-1)
    if not active():
        return flat
    parts = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, flat.contiguous())
    return torch.cat(parts)


def all_true(flag: bool) -> bool:
    """True when ``flag`` is True on every rank (``flag`` itself in one process)."""
    if not active():
        return flag
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    value = torch.tensor([0.0 if flag else 1.0], device=device)
    dist.all_reduce(value)
    return bool(value.item() == 0)


def broadcast_module(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (a guard: they are built from one seed anyway)."""
    if not active():
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, 0)


def gather_to_rank0(obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` as a list in rank order on rank 0, None on the others; ``[obj]`` in one process."""
    if not active():
        return [obj]
    out = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def barrier() -> None:
    """Wait until every rank gets here (nothing in one process)."""
    if active():
        dist.barrier()
