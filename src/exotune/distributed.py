"""Data-parallel training across processes (``torchrun``), used by the Trainer.

Every rank walks the same global batches (same seed, same order) and takes its contiguous
slice of each. Its loss, a mean over its ``n_r`` examples, is scaled by ``n_r / N`` before
backward; one all-reduce (sum) of all gradients then gives every rank the gradient of the
mean loss over the whole global batch, so a 2-process run over batch B is a 1-process run
over batch B (up to float rounding). Gradients are reduced by hand rather than with
DistributedDataParallel because the model protocol is ``loss(data)``, not ``forward``:
DDP only hooks gradients for calls made through its own ``forward``, and the trainable part
is a list of tensors around a box that is no submodule. Clipping, the optimiser and the
scheduler then run on identical gradients on every rank, so the weights never drift apart.

Single process (no torchrun, no process group) everything here is a no-op.
"""

from __future__ import annotations

import atexit
import os

import numpy as np
import torch
import torch.distributed as dist

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in TORCHRUN_ENV)


def setup() -> bool:
    """Join the process group torchrun describes (idempotent); True when running distributed.

    Backend gloo for CPU tensors, plus nccl for CUDA tensors when there is a GPU per rank
    (rank on GPU ``LOCAL_RANK``, set before the box is loaded).
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    if not (dist.is_available() and launched_by_torchrun()) or int(os.environ["WORLD_SIZE"]) < 2:
        return False
    backend, local_ranks = "gloo", int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
    if torch.cuda.is_available() and torch.cuda.device_count() >= local_ranks:  # same choice on every rank
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        backend = "cpu:gloo,cuda:nccl"
    dist.init_process_group(backend=backend)
    atexit.register(_teardown)  # we opened it, so we close it; a user's own group is theirs
    return True


def _teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", 0))


def is_main() -> bool:
    """Whether this process writes checkpoints, artifacts, logs and progress bars."""
    return rank() == 0


def shard(batch: np.ndarray) -> tuple[np.ndarray, float]:
    """This rank's contiguous slice of a global batch and its share of the examples."""
    n = world_size()
    if n == 1:
        return batch, 1.0
    part = np.array_split(batch, n)[rank()]
    return part, len(part) / len(batch)


def broadcast_parameters(params: list[torch.Tensor]) -> None:
    """Start every rank from rank 0's weights, as DDP does."""
    if world_size() == 1:
        return
    with torch.no_grad():
        for p in params:
            dist.broadcast(p.data, src=0)


def reduce_gradients(params: list[torch.Tensor], loss: torch.Tensor | None) -> torch.Tensor:
    """Sum the (already share-weighted) gradients and losses of all ranks, in one all-reduce.

    ``loss`` is this rank's weighted loss, or None when its slice was empty. Returns the
    loss of the global batch. A gradient stays None only if it is None on every rank, as
    it would be in one process (AdamW skips such parameters).
    """
    if world_size() == 1:
        return loss.detach()
    device = params[0].device
    flat = [
        p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), device=device, dtype=p.dtype)
        for p in params
    ]
    present = torch.tensor([p.grad is not None for p in params], dtype=flat[0].dtype, device=device)
    value = torch.zeros(1, dtype=flat[0].dtype, device=device) if loss is None else loss.detach().reshape(1)
    buffer = torch.cat([*flat, present, value.to(device, flat[0].dtype)])  # (sum numel + P + 1,)
    dist.all_reduce(buffer)
    offset = 0
    for i, p in enumerate(params):
        grad = buffer[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
        p.grad = grad.clone() if buffer[-len(params) - 1 + i] > 0 else None
    return buffer[-1]


def agree(make, *args, **kwargs):
    """Run ``make`` on rank 0 only and give every rank its (picklable) result, or its error."""
    if world_size() == 1:
        return make(*args, **kwargs)
    box, error = [None], None
    if is_main():
        try:
            box[0] = ("ok", make(*args, **kwargs))
        except Exception as err:  # the other ranks must not wait forever for rank 0
            box[0], error = ("error", f"{type(err).__name__}: {err}"), err
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if error is not None:
        raise error
    if status == "error":
        raise RuntimeError(f"rank 0 failed: {value}")
    return value
