"""Scale-out through PyTorch's own engine: torchrun with DDP (gloo on CPU, nccl on GPU) or FSDP2.

`torchrun --nproc_per_node=N -m llmkit train pretrain ...` sets RANK/WORLD_SIZE; without them
everything runs in one process. Only rank 0 writes files and registry rows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def mean(self, value: float) -> float:
        """The average of a scalar across ranks (the loss people see is the global batch's)."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t.item()) / self.world

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def setup() -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world <= 1:
        return Dist(device="cuda" if cuda else "cpu")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    device = "cpu"
    if cuda:
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    return Dist(rank=rank, world=world, local_rank=local_rank, device=device)


def wrap(model: torch.nn.Module, d: Dist, fsdp: bool) -> torch.nn.Module:
    if not d.enabled:
        return model
    if fsdp:
        from llmkit.errors import UserError

        if not d.device.startswith("cuda"):
            raise UserError("train.fsdp needs GPUs (FSDP2 shards parameters across CUDA devices); use plain DDP on CPU")
        from torch.distributed.fsdp import fully_shard

        for layer in model.layers:  # shard each decoder block, then the root
            fully_shard(layer)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[d.local_rank] if d.device.startswith("cuda") else None)


def full_state_dict(model: torch.nn.Module, fsdp: bool) -> dict[str, torch.Tensor] | None:
    """The whole model's weights on rank 0 (gathered from shards under FSDP)."""
    if not fsdp:
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def teardown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()
