"""Learning-rate schedule per optimizer step, and the optimizer."""

import math

import torch


class LRFactor:
    """Multiplier of the peak learning rate after ``step`` optimizer steps (a LambdaLR
    function; a class, so the scheduler's state dict records its settings).

    Linear warm-up over ``warmup_steps`` (from 1/warmup_steps of the peak), then either
    "step": times ``gamma`` every ``step_epochs`` epochs (the paper's: 0.1 every 30), or
    "cosine": half a cosine from the peak to 0 at ``total_steps``.
    """

    def __init__(self, kind, steps_per_epoch, total_steps, warmup_steps=0, step_epochs=30,
                 gamma=0.1):
        self.kind, self.steps_per_epoch, self.total_steps = kind, steps_per_epoch, total_steps
        self.warmup_steps, self.step_epochs, self.gamma = warmup_steps, step_epochs, gamma

    def __call__(self, step):
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "step":
            return self.gamma ** (step // (self.steps_per_epoch * self.step_epochs))
        span = max(1, self.total_steps - self.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - self.warmup_steps) / span)))


def build_optimizer(model, args):
    """SGD (momentum, the paper's) or AdamW over every parameter, with ``args``' settings.

    Weight decay applies to every parameter, BatchNorm and biases included, as in the
    paper's Caffe training.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if args.optimizer == "sgd":
        return torch.optim.SGD(params, lr=args.lr, momentum=args.momentum,
                               weight_decay=args.weight_decay)
    return torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)


def build_scheduler(optimizer, args, steps_per_epoch):
    warmup = round(args.warmup_epochs * steps_per_epoch)
    factor = LRFactor(args.schedule, steps_per_epoch, args.epochs * steps_per_epoch,
                      warmup_steps=warmup, step_epochs=args.lr_step_epochs, gamma=args.lr_gamma)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
