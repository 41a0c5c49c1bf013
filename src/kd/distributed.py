"""Data-parallel training with PyTorch's own engine: torchrun + DistributedDataParallel.

A training stage is distributed when torchrun started it (WORLD_SIZE > 1 in the
environment), or when params.yaml asks for `distributed.processes > 1`, in which
case the stage relaunches itself under `torchrun --standalone` on this machine.
Every rank trains on its own slice of each batch; only rank 0 writes files.
Without torchrun, everything here is a no-op and rank 0 is the only rank.
"""
from __future__ import annotations

import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from kd.errors import UserError


class LaunchError(UserError, RuntimeError):
    """The processes were started in a way this stage cannot train with."""


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def launched() -> bool:
    """True in a process that torchrun started as one of several."""
    return _env_int("WORLD_SIZE", 1) > 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else _env_int("RANK", 0)


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else _env_int("WORLD_SIZE", 1)


def is_main() -> bool:
    """The one process that writes outputs, checkpoints and tracking records.

    Valid before init() too (it reads torchrun's RANK), so other modules can ask early.
    """
    return rank() == 0


def init(device: torch.device) -> torch.device:
    """Join the process group torchrun set up; return this rank's device.

    gloo on CPU, NCCL on CUDA with one GPU per local rank.
    """
    if not launched():
        return device
    if device.type == "cuda":
        local = _env_int("LOCAL_RANK", 0)
        if local >= torch.cuda.device_count():
            raise LaunchError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPU(s): "
                               "start at most one process per GPU")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=10))
    return device


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def relaunch_under_torchrun(processes: int) -> None:
    """Replace this process by `torchrun --standalone` running the same script `processes` times."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={processes}", sys.argv[0], *sys.argv[1:]]
    print(f"relaunching under torchrun: {' '.join(cmd[1:])}", flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, cmd)


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP wrapper when distributed, the model itself otherwise.

    DDP copies rank 0's weights to every rank here, so all ranks start equal.
    """
    if not dist.is_initialized():
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def sum_all(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum over all ranks (identity when not distributed)."""
    if not dist.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_true(flag: bool, device: torch.device) -> bool:
    """True only if `flag` is true on every rank; lets all ranks stop together."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
