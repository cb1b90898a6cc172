"""Several processes, one run: ``torchrun --nproc_per_node=N -m mixlab ...`` with DistributedDataParallel.

torchrun sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; :func:`setup` joins the process group
(NCCL for CUDA tensors, gloo for CPU tensors and Python objects) once per process. With one
process (no torchrun) ``Dist()`` is rank 0 of 1 and every collective below is the identity, so
single-process runs never touch ``torch.distributed``.
"""
from __future__ import annotations

import atexit
import os
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor


def stream_seed(seed: int, stream: str) -> int:
    """The seed of a named random stream of a run (``mix_global``): its own, fixed by ``seed``."""
    return int(np.random.SeedSequence([seed, int.from_bytes(stream.encode(), "little")]).generate_state(1)[0])


@dataclass(frozen=True)
class Dist:
    """This process's place in the run, and the few collectives the training loop needs."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one process that evaluates, prints and writes the run records."""
        return self.rank == 0

    def seed(self, seed: int) -> int:
        """A seed of this process's own from the run's ``seed``: distinct per rank, the same every run."""
        return int(np.random.SeedSequence([seed, self.rank]).generate_state(1)[0])

    def gather(self, t: Tensor) -> Tensor:
        """Every process's ``t`` (equal shapes) concatenated along dim 0 in rank order. No gradient."""
        if self.world == 1:
            return t
        import torch.distributed as dist

        parts = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(parts, t.detach().contiguous())
        return torch.cat(parts)

    def sum(self, t: Tensor) -> Tensor:
        """The elementwise sum of ``t`` over the processes (a new tensor; ``t`` is left alone)."""
        if self.world == 1:
            return t
        import torch.distributed as dist

        t = t.detach().clone()
        dist.all_reduce(t)
        return t

    def any(self, flag: bool) -> bool:
        """True on every process if ``flag`` is true on any: also a barrier."""
        return bool(self.sum(torch.tensor([float(flag)])).item())

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` (picklable), on every process."""
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_objects(self, obj: Any) -> list[Any]:
        """Every process's ``obj`` (picklable), in rank order, on every process."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out


def setup() -> Dist:
    """Join the process group torchrun describes (once; later calls return the same ``Dist``).
    Without torchrun, or with ``--nproc_per_node=1``, returns the single-process ``Dist()``."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Dist()
    import torch.distributed as dist

    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "gloo"
        if torch.cuda.is_available():
            backend = "cpu:gloo,cuda:nccl"
            if local_rank < torch.cuda.device_count():
                torch.cuda.set_device(local_rank)
        dist.init_process_group(backend)
        atexit.register(_teardown)
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank)


def _teardown() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        with suppress(Exception):
            dist.destroy_process_group()

