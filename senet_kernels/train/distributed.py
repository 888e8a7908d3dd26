"""Process-group set-up for torchrun: NCCL with one GPU per process, gloo on the CPU.

Started without torchrun (no WORLD_SIZE, or WORLD_SIZE=1) nothing is initialized and the
helpers below act on the single process.
"""

import datetime

import torch
import torch.distributed as dist


def setup(env, device_type):
    """Initialize the process group for ``env`` (a ``config.DistEnv``); returns the device
    this rank trains on."""
    device = torch.device(device_type)
    if device_type == "cuda":
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    if env.distributed:
        backend = "nccl" if device_type == "cuda" else "gloo"
        # device_id binds NCCL to this rank's GPU at once (no lazy, guessed device).
        extra = {"device_id": device} if device_type == "cuda" else {}
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30), **extra)
    return device


def teardown():
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor):
    """Sum ``tensor`` over ranks in place (a no-op in a single process); returns it."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather_objects(obj, world_size):
    """A list of every rank's ``obj`` (on every rank)."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_buffers(module):
    """Give every rank rank 0's buffers (BatchNorm running statistics) of ``module``."""
    if dist.is_initialized():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def barrier():
    if dist.is_initialized():
        dist.barrier()
