"""Checkpoints that resume exactly: model, optimizer, LR schedule, step, every rank's RNG
states and the epoch's running statistics (summed over ranks). The data position is the step
itself (the data order is a function of seed, epoch and step, see ``data``).

Collective: ``save`` gathers every rank's RNG states and statistics, so every rank must call
it; rank 0 writes the file (to a temporary name of its own in the same directory, then
renamed, so a crash never leaves half a file and two writers never take each other's file).
"""

import os
import random
import shutil
import tempfile

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


def _replace_atomically(path, write):
    """Call ``write(tmp)`` on a new, uniquely named file beside ``path``, then rename it to
    ``path`` (removing it if ``write`` fails)."""
    folder, name = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f"{name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _link_or_copy(source, target):
    """Make ``target`` (an existing placeholder file) the same file as ``source``: a hard
    link where the file system has them, else a copy."""
    os.remove(target)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


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
        _replace_atomically(path, lambda tmp: torch.save(state, tmp))
        if keep_as is not None:
            _replace_atomically(keep_as, lambda tmp: _link_or_copy(path, tmp))
    distributed.barrier()  # nobody reads or overwrites the file before it is complete


def load(path):
    """A checkpoint written by ``save`` (on the CPU).

    Holds python and numpy RNG states, which ``weights_only`` loading rejects, so only load
    checkpoints you wrote. Raises ValueError (one line, naming the file) for a file that is
    not one: empty, truncated, corrupted or another kind of file.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - whatever unpickling a damaged file raises
        # (RuntimeError from the zip reader, UnpicklingError, EOFError, ...)
        reason = (str(e).strip().splitlines() or [""])[0]
        raise ValueError(f"--resume {path!r} is not a readable checkpoint (truncated or "
                         f"corrupted?): {type(e).__name__}: {reason}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"--resume {path!r} is not a checkpoint of python -m senet_kernels "
                         "train")
    return state


def check_compatible(state, args):
    """Raise ValueError when the checkpoint's model, optimizer or global batch differ from
    this run's (the weights or the optimizer's state would not fit, or the data position
    would mean other images). The shapes
    of the weights (the number of classes) are checked by ``check_weights_fit``, once the
    model is built."""
    if state["model_name"] != args.model:
        raise ValueError(f"--resume: the checkpoint trained {state['model_name']}, not "
                         f"--model {args.model}")
    saved_optimizer = state["args"].get("optimizer")
    if saved_optimizer is not None and saved_optimizer != args.optimizer:
        raise ValueError(f"--resume: the checkpoint's optimizer is {saved_optimizer}, not "
                         f"--optimizer {args.optimizer} (its state would not fit)")
    if state["global_batch"] != args.global_batch:
        raise ValueError(f"--resume: the checkpoint's global batch is {state['global_batch']}, "
                         f"this run's {args.global_batch} (batch size x processes x accum "
                         "steps); use the same to continue the same run")


def check_weights_fit(state, model):
    """Raise ValueError unless the checkpoint's weights have ``model``'s names and shapes
    (``load_state_dict`` would raise a multi-line RuntimeError after the whole set-up)."""
    saved, own = state["model"], model.state_dict()
    missing, unexpected = sorted(own.keys() - saved.keys()), sorted(saved.keys() - own.keys())
    if missing or unexpected:
        raise ValueError(f"--resume: the checkpoint's weights are not {state['model_name']}'s "
                         f"({len(missing)} missing, e.g. {missing[:1]}; {len(unexpected)} "
                         f"unexpected, e.g. {unexpected[:1]})")
    for name, tensor in own.items():
        if saved[name].shape != tensor.shape:
            raise ValueError(f"--resume: {name} is {list(saved[name].shape)} in the checkpoint, "
                             f"{list(tensor.shape)} in this run's model (another "
                             "--num-classes or number of classes in --data?)")


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
