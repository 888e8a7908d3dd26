"""Random but well-conditioned BatchNorm running statistics for whole-network comparisons."""

import torch
from torch import nn


def calibrate_bn_statistics_(model, gen, in_chans=3):
    """Set every BatchNorm2d's running statistics, in one eval-mode pass over a random batch, to
    its own input's mean and variance moved by 0.1 std and +-25%.

    Statistics drawn independently of the activations they normalize make a deep random network
    blow up and turn chaotic; measured ones, perturbed a little, keep it well conditioned (every
    later BN sees the earlier ones' final values, so the perturbations do not compound).
    """
    def set_statistics(bn, args):
        x = args[0]
        mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3))
        bn.running_mean.copy_(mean + 0.1 * var.sqrt() * torch.randn(mean.shape, generator=gen))
        bn.running_var.copy_(var * (0.75 + 0.5 * torch.rand(var.shape, generator=gen)))

    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    hooks = [bn.register_forward_pre_hook(set_statistics) for bn in bns]
    try:
        with torch.no_grad():
            model.eval()(torch.randn(4, in_chans, 64, 64, generator=gen))
    finally:
        for hook in hooks:
            hook.remove()
