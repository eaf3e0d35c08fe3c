"""Single process by default; DDP when started by `torchrun --nproc_per_node=N`.

Every rank evaluates the whole validation set, so early-stopping decisions agree without
messages; only rank 0 writes files.
"""
from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as tdist


@dataclasses.dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world: int = 1

    @classmethod
    def from_env(cls) -> Dist:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1 and not tdist.is_initialized():
            tdist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
            if torch.cuda.is_available():
                torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        return cls(int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world)

    @property
    def backend(self) -> str:
        """The process group's backend (nccl on CUDA, gloo on CPUs), or "none" for one process."""
        return str(tdist.get_backend()) if tdist.is_initialized() else "none"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sampler(self, dataset, seed: int):
        if self.world == 1:
            return None
        return torch.utils.data.distributed.DistributedSampler(dataset, self.world, self.rank, shuffle=True, seed=seed)

    def wrap(self, model):
        if self.world == 1:
            return model
        ids = [self.local_rank] if torch.cuda.is_available() else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def barrier(self) -> None:
        if self.world > 1:
            tdist.barrier()
