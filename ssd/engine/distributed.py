"""Data-parallel plumbing for the training loop: one process per device, launched by torchrun.

Semantics (the one rule to remember): `train.batch_size` is the batch of *one process*; with
`world_size` processes the global batch of an iteration is `train.batch_size * world_size`.
`ssd.data.loader.TrainBatchSampler` defines the global stream, and process `rank` takes the
`rank`-th slice of every global batch, so the union over processes of iteration i's samples is
the single-process batch of iteration i with that global batch size. `train.lr` is the learning
rate of the global batch as configured: when the number of processes changes, scale it by the
same factor as the global batch (linear scaling rule, with warm-up; Goyal et al. 2017,
"Accurate, Large Minibatch SGD").

`DistContext` is what the loop sees: rank, world size, the device, and a few collectives that
are no-ops in a single process (so single-process runs take no extra code path).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ssd.config import ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")

# Rank 0 evaluates while the others wait in a collective: allow for a long evaluation.
PROCESS_GROUP_TIMEOUT = datetime.timedelta(minutes=60)


def env_world(env: Mapping[str, str] | None = None) -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment variables RANK, WORLD_SIZE and
    LOCAL_RANK; (0, 1, 0) when they are absent. Raises ValueError naming a malformed variable."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env:
        return 0, 1, 0
    raw = {"RANK": env.get("RANK", "0"), "WORLD_SIZE": env["WORLD_SIZE"]}
    raw["LOCAL_RANK"] = env.get("LOCAL_RANK", raw["RANK"])
    values = []
    for name, text in raw.items():
        try:
            values.append(int(text))
        except ValueError:
            raise ValueError(f"environment variable {name}={text!r} is not an integer") from None
    rank, world_size, local_rank = values
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"environment: need 0 <= RANK < WORLD_SIZE, got RANK={rank} WORLD_SIZE={world_size}")
    return rank, world_size, local_rank


@dataclass
class DistContext:
    """This process's place in a data-parallel run (rank 0 of 1 in a single process)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool = False  # we initialised the process group, so we tear it down

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files and evaluates."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    # ---------------------------------------------------------------- collectives (no-ops alone)

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        """Sum `tensor` over processes, in place (every process gets bitwise the same result)."""
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def any_rank(self, flag: bool) -> bool:
        """True on every process when `flag` is true on at least one."""
        if not self.distributed:
            return flag
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def broadcast(self, obj: T) -> T:
        """Rank 0's `obj` on every process (picklable objects); the others wait for rank 0."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index or 0])
            else:
                dist.barrier()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (e.g. generating a synthetic dataset), then the others."""
        if not self.is_main:
            self.barrier()
        try:
            yield
        finally:
            if self.is_main:
                self.barrier()

    # ---------------------------------------------------------------- model

    def wrap(self, model: nn.Module, sync_bn: bool = False) -> nn.Module:
        """The module to call in the training step: `model` itself in a single process, else
        `DistributedDataParallel(model)` (gradients averaged over processes in backward), with
        BatchNorm converted to SyncBatchNorm first when `sync_bn` (CUDA only). The parameters
        stay the same objects, so an optimizer built on `model` keeps working, and `model`'s
        state-dict keys do not change (no "module." prefix in checkpoints)."""
        if not self.distributed:
            return model
        if sync_bn:
            if self.device.type != "cuda":
                raise ConfigError(
                    f"train.sync_bn: SyncBatchNorm needs CUDA devices, training runs on {self.device}"
                )
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # type: ignore[no-untyped-call]
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def close(self) -> None:
        """Tear the process group down if `setup_distributed` created it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def setup_distributed(
    device: str | torch.device = "cpu", env: Mapping[str, str] | None = None
) -> DistContext:
    """The `DistContext` of this process.

    An already initialised default process group is used as it is (its rank and world size).
    Otherwise, under torchrun (WORLD_SIZE > 1 in the environment) the group is initialised
    here: NCCL for CUDA devices, gloo for CPU. On CUDA each process uses `cuda:LOCAL_RANK`
    (an index in `device` is replaced). WORLD_SIZE=1 or no torchrun: a single process.
    """
    dev = torch.device(device)
    env = os.environ if env is None else env
    rank, world_size, local_rank = env_world(env)
    owns = False
    if dist.is_available() and dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
        local_rank = int(env.get("LOCAL_RANK", rank))
    elif world_size > 1:
        if dev.type == "cuda":
            torch.cuda.set_device(local_rank)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=PROCESS_GROUP_TIMEOUT)
        owns = True
        log.info("process group: backend %s, rank %d of %d", backend, rank, world_size)
    if world_size > 1 and dev.type == "cuda":
        if dev.index is not None and dev.index != local_rank:
            log.warning("data-parallel: device %s replaced by cuda:%d (LOCAL_RANK)", dev, local_rank)
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    return DistContext(rank, world_size, local_rank, dev, owns)
