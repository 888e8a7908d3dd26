"""Options of ``python -m senet_kernels train`` and their checks.

Defaults follow the SENet paper's ImageNet recipe (Hu et al., section 6 / appendix): SGD with
momentum 0.9, weight decay 1e-4, a global batch of 1024 with learning rate 0.6 (scaled
linearly for other batches: 0.15 per 256 images), divided by 10 every 30 epochs, 100 epochs,
224 px random-size crops with horizontal flips. Warm-up, cosine decay, AdamW, label smoothing
and SyncBatchNorm are options beyond the paper.

Everything that can be wrong with the command line (unknown model, missing dataset, SyncBN on
the CPU, ...) is found by ``check_args`` before torch.distributed is initialized, so every
rank stops with the same clear message instead of one rank hanging the others.
"""

import argparse
import math
import os
from dataclasses import dataclass

import torch

from .. import models as senet_models
from .models import check_model_and_backend

PAPER_LR_PER_IMAGE = 0.6 / 1024  # SGD, the paper's 0.6 at batch 1024
ADAMW_LR_PER_IMAGE = 1e-3 / 1024  # a common AdamW setting for ResNets, scaled the same way
DEFAULT_WEIGHT_DECAY = {"sgd": 1e-4, "adamw": 0.05}


def add_arguments(parser):
    """Add the train command's options to ``parser`` (an argparse parser)."""
    bool_flag = argparse.BooleanOptionalAction
    g = parser.add_argument_group("model")
    g.add_argument("--model", default="se_resnet50",
                   help="a senet_kernels.models network (se_resnet18/34/50/101/152, "
                        "se_resnext50_32x4d, se_resnext101_32x4d, senet154) or any timm model "
                        "name (its SE modules are swapped for fused ones by convert_se_modules); "
                        "default: se_resnet50")
    g.add_argument("--backend", default="auto",
                   help="SE kernels: auto, triton, cuda, cpu, reference (default: auto, i.e. "
                        "Triton on GPUs, the C++ kernels on the CPU); or eager: a timm model "
                        "keeps its own SE modules (the baseline to compare the fused ones with)")
    g.add_argument("--num-classes", type=int, default=None,
                   help="outputs of the classifier (default: the dataset's classes; 1000 with "
                        "--synthetic)")
    g.add_argument("--pretrained", action="store_true",
                   help="timm models only: start from timm's pretrained weights (they must be "
                        "in the local cache; default: off, random initialization)")
    g.add_argument("--sync-bn", action="store_true",
                   help="SyncBatchNorm across processes (batch statistics over the global "
                        "batch; GPUs only: torch's SyncBatchNorm does not run on CPU tensors). "
                        "The BatchNorm in front of each SE block then runs as a module, the "
                        "rest of the block's tail fused")

    g = parser.add_argument_group("data")
    g.add_argument("--data", metavar="DIR",
                   help="an ImageFolder tree: DIR/train/<class>/*.jpg (and DIR/val/<class>/... "
                        "for validation after each epoch), or DIR/<class>/*.jpg")
    g.add_argument("--synthetic", action="store_true",
                   help="random images instead of --data (each class a fixed low-frequency "
                        "pattern plus noise, so the loss does go down)")
    g.add_argument("--synthetic-size", type=int, default=1281167,
                   help="images per synthetic epoch (default: ImageNet's 1281167)")
    g.add_argument("--image-size", type=int, default=224,
                   help="training crop (and synthetic image) size in pixels (default: 224)")
    g.add_argument("--workers", type=int, default=None,
                   help="data-loading processes per training process (default: CPU cores / "
                        "processes on this machine, at most 8)")

    g = parser.add_argument_group("optimization (defaults: the SENet paper's recipe)")
    g.add_argument("--epochs", type=int, default=100, help="default: 100")
    g.add_argument("--batch-size", type=int, default=128,
                   help="images per process and micro-batch (default: 128; 8 GPUs x 128 = the "
                        "paper's global batch of 1024)")
    g.add_argument("--accum-steps", type=int, default=1,
                   help="micro-batches per optimizer step (gradient accumulation); global batch "
                        "= batch size x processes x accum steps (default: 1)")
    g.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd",
                   help="default: sgd (momentum, the paper's)")
    g.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (default: linear scaling from the global batch: "
                        "SGD 0.6 x batch / 1024, i.e. 0.15 per 256 images, as in the paper; "
                        "AdamW 1e-3 x batch / 1024)")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default: 0.9)")
    g.add_argument("--weight-decay", type=float, default=None,
                   help="default: 1e-4 for SGD (the paper's), 0.05 for AdamW")
    g.add_argument("--schedule", choices=("step", "cosine"), default="step",
                   help="step: lr x gamma every --lr-step-epochs (the paper's); cosine: to 0 "
                        "at the last step (default: step)")
    g.add_argument("--lr-step-epochs", type=int, default=30, help="default: 30")
    g.add_argument("--lr-gamma", type=float, default=0.1, help="default: 0.1")
    g.add_argument("--warmup-epochs", type=float, default=0.0,
                   help="linear warm-up from lr / steps to lr over this many epochs, counted "
                        "in steps (default: 0, none, as in the paper; 5 is common for large "
                        "batches)")
    g.add_argument("--label-smoothing", type=float, default=0.0,
                   help="cross-entropy label smoothing (default: 0, the paper's)")

    g = parser.add_argument_group("run")
    g.add_argument("--device", choices=("cuda", "cpu"), default=None,
                   help="default: cuda when a GPU is visible (one GPU per process, "
                        "LOCAL_RANK), else cpu")
    g.add_argument("--amp", action=bool_flag, default=None,
                   help="bfloat16 autocast (default: on for GPUs, off on the CPU)")
    g.add_argument("--channels-last", action=bool_flag, default=None,
                   help="channels_last model and inputs (default: on for GPUs, off on the CPU)")
    g.add_argument("--deterministic", action="store_true",
                   help="deterministic algorithms, no cuDNN autotuning (slower; for "
                        "bit-exact resume on GPUs)")
    g.add_argument("--seed", type=int, default=0,
                   help="seed of the initialization, data order and augmentation (default: 0)")
    g.add_argument("--output", metavar="DIR", default=None,
                   help="checkpoints and log.jsonl go here (default: runs/<model>); created "
                        "and checked writable before anything is built, and locked for the "
                        "run: a second run given the same DIR stops at once")
    g.add_argument("--resume", metavar="PATH",
                   help="continue from a checkpoint (model, optimizer, schedule, step, RNG "
                        "states, data position); 'auto': DIR/checkpoint-last.pt if present")
    g.add_argument("--save-every", type=int, default=0, metavar="STEPS",
                   help="also save a checkpoint every this many steps (default: 0, only at "
                        "epoch ends and when the run stops)")
    g.add_argument("--keep-checkpoints", action="store_true",
                   help="keep each --save-every checkpoint as DIR/checkpoint-step<N>.pt too "
                        "(default: only DIR/checkpoint-last.pt, overwritten)")
    g.add_argument("--max-steps", type=int, default=None,
                   help="stop after this global step (the schedule still spans --epochs), "
                        "e.g. for a smoke test or to split a run")
    g.add_argument("--log-every", type=int, default=20, metavar="STEPS",
                   help="progress bar update interval (default: 20)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--eval", action=bool_flag, default=True,
                   help="validate after each epoch when DIR/val exists (default: on)")


@dataclass
class DistEnv:
    """What torchrun (or its absence) says about this process, read before any init."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def distributed(self):
        return self.world_size > 1

    @classmethod
    def from_environ(cls, environ=None):
        env = os.environ if environ is None else environ
        try:
            return cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)),
                       int(env.get("LOCAL_RANK", 0)), int(env.get("LOCAL_WORLD_SIZE", 1)))
        except ValueError as e:
            raise ValueError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers: {e}") from None


#: The options of type float (argparse accepts "nan" and "inf" for them).
FLOAT_OPTIONS = ("lr", "momentum", "weight_decay", "lr_gamma", "warmup_epochs",
                 "label_smoothing")


def _option(name):
    return f"--{name.replace('_', '-')}"


def _finite(args, *names):
    for name in names:
        value = getattr(args, name)
        if value is not None and not math.isfinite(value):
            raise ValueError(f"{_option(name)} must be a finite number, got {value}")


def _positive(args, *names):
    for name in names:
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise ValueError(f"{_option(name)} must be positive, got {value}")


def check_args(args, env=None):
    """Check ``args`` and fill in the derived defaults (in place); returns ``args``.

    Raises ValueError with a message naming the option. Touches no process group, so it runs
    on every rank before torch.distributed is initialized. (The dataset itself is scanned by
    ``data.build_datasets``, also before initialization.)
    """
    env = DistEnv.from_environ() if env is None else env
    if args.synthetic == (args.data is not None):
        raise ValueError("give exactly one of --data DIR and --synthetic")
    if args.data is not None and not os.path.isdir(args.data):
        what = "does not exist" if not os.path.exists(args.data) else "is not a directory"
        raise ValueError(f"--data {args.data!r} {what}")
    check_model_and_backend(args.model, args.backend)
    # NaN passes every comparison below as false, so it would slip through them all.
    _finite(args, *FLOAT_OPTIONS)
    _positive(args, "epochs", "batch_size", "accum_steps", "lr", "lr_step_epochs",
              "max_steps", "log_every", "num_classes", "synthetic_size", "image_size")
    for name in ("save_every", "workers", "weight_decay", "momentum", "warmup_epochs"):
        value = getattr(args, name)
        if value is not None and value < 0:
            raise ValueError(f"{_option(name)} must be >= 0, got {value}")
    if args.num_classes is not None and args.num_classes < 2:
        raise ValueError(f"--num-classes must be at least 2 (a classifier of one class has "
                         f"nothing to learn), got {args.num_classes}")
    if not 0.0 <= args.label_smoothing < 1.0:
        raise ValueError(f"--label-smoothing must be in [0, 1), got {args.label_smoothing}")
    if not 0.0 < args.lr_gamma <= 1.0:
        raise ValueError(f"--lr-gamma must be in (0, 1], got {args.lr_gamma}")
    if args.image_size < 32:
        raise ValueError(f"--image-size must be at least 32 (five stride-2 stages), got "
                         f"{args.image_size}")
    if args.pretrained and args.model in senet_models.MODELS:
        raise ValueError(f"--pretrained is for timm models; {args.model} starts from random "
                         "weights (senet_kernels.models.from_timm converts timm's)")
    if args.resume not in (None, "auto") and not os.path.isfile(args.resume):
        raise ValueError(f"--resume {args.resume!r}: no such checkpoint file")

    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda, but no CUDA GPU is visible")
        if env.local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {env.local_rank} has no GPU: only "
                             f"{torch.cuda.device_count()} visible (use --nproc_per_node <= "
                             "the GPU count)")
    if args.sync_bn and args.device != "cuda" and env.distributed:
        raise ValueError("--sync-bn needs GPUs: torch's SyncBatchNorm raises on CPU tensors "
                         "(gloo); leave it out on the CPU")
    on_gpu = args.device == "cuda"
    if args.amp is None:
        args.amp = on_gpu
    if args.channels_last is None:
        args.channels_last = on_gpu
    if args.workers is None:
        args.workers = min(8, max(1, (os.cpu_count() or 1) // env.local_world_size))

    args.global_batch = args.batch_size * env.world_size * args.accum_steps
    per_image = PAPER_LR_PER_IMAGE if args.optimizer == "sgd" else ADAMW_LR_PER_IMAGE
    if args.lr is None:
        args.lr = per_image * args.global_batch
    if args.weight_decay is None:
        args.weight_decay = DEFAULT_WEIGHT_DECAY[args.optimizer]
    if args.output is None:
        args.output = os.path.join("runs", args.model.replace("/", "_"))
    return args
