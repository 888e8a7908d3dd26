"""Checkpoints that resume exactly: model, optimizer, LR schedule, step, every rank's RNG
states and the epoch's running statistics (summed over ranks). The data position is the step
itself (the data order is a function of seed, epoch and step, see ``data``).

Collective: ``save`` gathers every rank's RNG states and statistics, so every rank must call
it; rank 0 writes the file (to a temporary name, then renamed, so a crash never leaves half a
file).
"""

import os
import random
import shutil

import numpy as np
import torch

from . import distributed

FORMAT = 1


def rng_state(device):
    """This process's random generators (python, numpy, torch CPU, and the GPU's)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state, device):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save(path, *, model, optimizer, scheduler, step, epoch_stats, args, env, device,
         keep_as=None):
    """Write a checkpoint of the state after ``step`` optimizer steps (collective); with
    ``keep_as``, also under that name (a hard link where the file system has them)."""
    rngs = distributed.gather_objects(rng_state(device), env.world_size)
    # The epoch's running sums over every rank (each rank holds its own share).
    epoch_stats = distributed.all_reduce_sum(epoch_stats.clone())
    if env.rank == 0:
        state = {
            "format": FORMAT, "step": step, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "epoch_stats": epoch_stats.cpu(), "rng": rngs, "world_size": env.world_size,
            "global_batch": args.global_batch, "model_name": args.model,
            "args": {k: v for k, v in vars(args).items() if k != "func"},
        }
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.tmp"
        torch.save(state, tmp)
        os.replace(tmp, path)
        if keep_as is not None:
            if os.path.exists(keep_as):
                os.remove(keep_as)
            try:
                os.link(path, keep_as)
            except OSError:
                shutil.copyfile(path, keep_as)
    distributed.barrier()  # nobody reads or overwrites the file before it is complete


def load(path):
    """A checkpoint written by ``save`` (on the CPU).

    Holds python and numpy RNG states, which ``weights_only`` loading rejects, so only load
    checkpoints you wrote.
    """
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path!r} is not a checkpoint of python -m senet_kernels train")
    return state


def check_compatible(state, args):
    """Raise ValueError when the checkpoint's model or global batch differ from this run's
    (the weights would not fit, or the data position would mean other images)."""
    if state["model_name"] != args.model:
        raise ValueError(f"--resume: the checkpoint trained {state['model_name']}, not "
                         f"--model {args.model}")
    if state["global_batch"] != args.global_batch:
        raise ValueError(f"--resume: the checkpoint's global batch is {state['global_batch']}, "
                         f"this run's {args.global_batch} (batch size x processes x accum "
                         "steps); use the same to continue the same run")


def restore(state, *, model, optimizer, scheduler, env, device):
    """Load ``state`` into the (unwrapped) model, optimizer and schedule, and this rank's RNG
    states; returns (step, epoch_stats)."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if state["world_size"] == env.world_size:
        set_rng_state(state["rng"][env.rank], device)
    elif env.rank == 0:
        print(f"note: the checkpoint ran on {state['world_size']} processes, this run on "
              f"{env.world_size}: random streams (dropout) start afresh; data order is kept")
    # Rank 0 carries the sums of every rank's share so far, the others start from zero: the
    # all-reduced epoch statistics come out as in the uninterrupted run, on any world size.
    stats = state["epoch_stats"].to(device)
    return state["step"], stats if env.rank == 0 else torch.zeros_like(stats)
