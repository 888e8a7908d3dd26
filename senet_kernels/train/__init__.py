"""``python -m senet_kernels train``: train an SE network, on one process or many (torchrun).

    torchrun --nproc_per_node=8 -m senet_kernels train --data /imagenet --model se_resnet50
    torchrun --nproc_per_node=2 -m senet_kernels train --synthetic --model test_efficientnet \\
        --image-size 32 --num-classes 10 --batch-size 16 --synthetic-size 640 --epochs 3

Started by torchrun it wraps the model in DistributedDataParallel (NCCL on GPUs, gloo on the
CPU); alone it trains in one process. Modules: ``config`` (options and their checks),
``output`` (the output directory, checked writable and locked), ``models`` (ours or timm's,
converted), ``data`` (datasets, step-addressed batches), ``distributed`` (process group),
``schedule`` (optimizer, LR schedule), ``checkpoint`` (exact resume), ``loop`` (the steps,
validation, log).

Before any model is built, bad options, an output directory that cannot be written or that
another run is using, a checkpoint that cannot be read or does not fit, and a dataset of
fewer than 2 classes end the command with exit status 2 and one ``error:`` line. An image
file that cannot be read during training is skipped with a warning naming it (the next
readable image takes its place; ``skipped_images`` in the log counts them).
"""

import argparse
import os
import random
import sys
from dataclasses import dataclass

import numpy as np
import torch
from torch.distributed.elastic.multiprocessing.errors import record

from . import checkpoint, config, data, distributed, output
from .loop import Trainer
from .models import build_model, fusion_summary
from .schedule import build_optimizer, build_scheduler

__all__ = ["add_parser", "parse_args", "prepare", "run", "train"]


DESCRIPTION = ("Train an SE network (senet_kernels.models or timm, SE blocks fused) in one "
               "process, or with DistributedDataParallel under torchrun. Defaults: the SENet "
               "paper's ImageNet recipe. Bad options, an --output directory that cannot be "
               "written or is in use by another run, an unreadable or unfitting --resume "
               "checkpoint, and --data of fewer than 2 classes stop the command before "
               "training (exit status 2, one error line). Image files that cannot be read "
               "are skipped with a warning naming them (the next readable image takes their "
               "place; skipped_images in log.jsonl counts them).")


def add_parser(subparsers):
    """Register the ``train`` subcommand on an argparse ``subparsers`` object."""
    parser = subparsers.add_parser("train", help="train an SE network (DDP under torchrun)",
                                   description=DESCRIPTION)
    config.add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def parse_args(argv):
    """The train options of ``argv`` (a list of strings) as an argparse namespace."""
    parser = argparse.ArgumentParser(prog="python -m senet_kernels train", description=DESCRIPTION)
    config.add_arguments(parser)
    return parser.parse_args(argv)


def _seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class Prepared:
    """What ``prepare`` checked and built before any process group exists."""
    train_set: object
    val_set: object
    model: torch.nn.Module
    steps_per_epoch: int
    state: dict = None  # the checkpoint to resume from
    output_lock: output.OutputLock = None  # rank 0's, held until the training ends

    def release(self):
        if self.output_lock is not None:
            self.output_lock.release()


def prepare(args, env):
    """Everything that can fail on bad options, before any process group exists: checks
    ``args`` (filling in derived defaults), checks and locks the output directory (rank 0,
    the one that writes), scans the dataset, reads the checkpoint to resume, builds the model
    (the same initial weights on every rank) and checks that the checkpoint's weights fit
    it. Raises ValueError with a message naming the option (the lock released). The
    returned ``Prepared`` holds the lock: ``release`` it when the training ends."""
    config.check_args(args, env)
    # Rank 0 alone writes the output (checkpoint.save, the log), on its own machine.
    lock = output.claim(args.output) if env.rank == 0 else None
    try:
        return _prepare(args, env, lock)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _prepare(args, env, lock):
    train_set, val_set, num_classes = data.build_datasets(args)
    steps = data.steps_per_epoch(len(train_set), args.global_batch)
    if steps == 0:
        raise ValueError(f"the training set has {len(train_set)} images, fewer than one global "
                         f"batch ({args.global_batch} = batch size x processes x accum steps)")
    resume = args.resume
    if resume == "auto":
        path = os.path.join(args.output, "checkpoint-last.pt")
        resume = path if os.path.isfile(path) else None
    state = None
    if resume:
        state = checkpoint.load(resume)
        checkpoint.check_compatible(state, args)
    _seed_everything(args.seed)
    # SyncBatchNorm before the SE conversion, which leaves it a module (build_model); it
    # needs no process group until it trains.
    model = build_model(args.model, num_classes, args.backend, args.pretrained,
                        sync_bn=args.sync_bn and env.distributed)
    if state is not None:
        checkpoint.check_weights_fit(state, model)
    return Prepared(train_set, val_set, model, steps, state, lock)


def train(args, env=None):
    """Check ``args`` (the namespace of ``parse_args``), then train.

    Raises ValueError for bad options before any process group exists (``prepare``), and
    for an output directory that cannot be written or that another run holds.
    Returns the JSON log entries this process wrote (every rank gets the same values).
    """
    env = config.DistEnv.from_environ() if env is None else env
    return _train(args, env, prepare(args, env))


def _train(args, env, prepared):
    try:
        return _train_prepared(args, env, prepared)
    finally:  # the output directory is free again (in-process callers train more than once)
        prepared.release()


def _train_prepared(args, env, prepared):
    if args.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = args.device == "cuda" and not args.deterministic
    device = distributed.setup(env, args.device)
    try:
        model, steps = prepared.model, prepared.steps_per_epoch
        fmt = torch.channels_last if args.channels_last else torch.contiguous_format
        model = model.to(device, memory_format=fmt)
        optimizer = build_optimizer(model, args)
        scheduler = build_scheduler(optimizer, args, steps)
        # Same initial weights everywhere (DDP broadcasts rank 0's too); from here on each
        # rank has its own random stream (dropout, stochastic depth).
        _seed_everything(data.mix_seed(args.seed, 5, env.rank))
        start_step, epoch_stats = 0, None
        if prepared.state is not None:
            start_step, epoch_stats = checkpoint.restore(
                prepared.state, model=model, optimizer=optimizer, scheduler=scheduler, env=env,
                device=device)
            prepared.state = None  # free the CPU copy
        ddp_model = model
        if env.distributed:
            ids = [device.index] if device.type == "cuda" else None
            ddp_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        criterion = torch.nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
        if env.rank == 0:
            how = (f"DDP over {'nccl' if device.type == 'cuda' else 'gloo'}"
                   if env.distributed else "one process")
            print(f"training {args.model} on {env.world_size} x {device.type} ({how}), global "
                  f"batch {args.global_batch}, lr {args.lr:.4g}, {steps} steps/epoch, from step "
                  f"{start_step}; output {args.output}", flush=True)
            print(f"fused: {fusion_summary(model, device)}", flush=True)
        trainer = Trainer(model=model, ddp_model=ddp_model, optimizer=optimizer,
                          scheduler=scheduler, criterion=criterion,
                          train_set=prepared.train_set, val_set=prepared.val_set, args=args,
                          env=env, device=device, start_step=start_step,
                          epoch_stats=epoch_stats)
        return trainer.run()
    finally:
        distributed.teardown()


@record  # under torchrun: the failing rank's traceback goes into torchrun's error summary
def run(args):
    """The subcommand: exit status 0, or 2 with a one-line message for bad options, an
    unusable or busy --output, an unusable --resume checkpoint or dataset (nothing
    started)."""
    env = config.DistEnv.from_environ()
    try:
        prepared = prepare(args, env)
    except ValueError as e:
        print(f"python -m senet_kernels train: error: {e}", file=sys.stderr)
        return 2
    _train(args, env, prepared)  # errors from here on propagate with their traceback
    return 0
