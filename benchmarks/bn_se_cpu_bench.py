"""CPU benchmark of BatchNorm absorbed into the SE op (SE-ResNet's bn3 + SE + residual + ReLU).

    python benchmarks/bn_se_cpu_bench.py [--rounds 5] [--calls 2] [--layouts nchw channels_last]

Training-mode forward + backward (gradients of y, the BN and SE parameters and the residual)
at the SE-ResNet-50 stage shapes, batch 8, fp32, Cr = C / 16, of
    a  fused:     senet_kernels.bn_squeeze_excite(..., post_relu=True, backend="cpu")
    b  BN + SE:   F.batch_norm, then senet_kernels.squeeze_excite(residual, post_relu=True,
                  backend="cpu"), the fused SE op of today
    c  eager:     F.batch_norm, then the timm-style SE module + add + ReLU (baselines.eager_se)
Each round times every implementation (``--calls`` steps each, interleaved so that load
changes hit all of them alike); reported: the median over rounds of the time per step, and
the ratios b/a and c/a. The load average is printed before and after: on a shared machine
the absolute times move, the interleaved ratios less.

Every implementation allocates activation-sized outputs per step. glibc serves blocks above
its mmap threshold with fresh pages and unmaps them when freed, so a step may pay a page
fault per 4 KiB written, and which steps pay depends on the order of allocations (measured:
the SE op's channels_last backward at 256x56x56 took 28 ms this way, 5.8 ms without). For
a comparison of the kernels themselves, keep freed memory in the process:
MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=68719476736 (PyTorch's CUDA caching
allocator has no such effect on GPUs).
"""

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from senet_kernels import bn_squeeze_excite, squeeze_excite
from senet_kernels.baselines import eager_se

STAGES = ((256, 56), (512, 28), (1024, 14), (2048, 7))  # (C, H = W) of SE-ResNet-50's stages


def make_case(n, c, hw, channels_last, seed=0):
    gen = torch.Generator().manual_seed(seed)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    cr = c // 16

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale)

    leaves = dict(
        y=(rand(n, c, hw, hw) + 0.5).contiguous(memory_format=fmt),
        bn_weight=1 + rand(c, scale=0.1), bn_bias=rand(c, scale=0.1),
        w1=rand(cr, c, scale=c ** -0.5), b1=rand(cr, scale=0.1),
        w2=rand(c, cr, scale=cr ** -0.5), b2=rand(c, scale=0.1),
        residual=rand(n, c, hw, hw).contiguous(memory_format=fmt),
    )
    for v in leaves.values():
        v.requires_grad_()
    stats = (torch.zeros(c), torch.ones(c), torch.tensor(0, dtype=torch.long))
    grad = rand(n, c, hw, hw).contiguous(memory_format=fmt)
    return leaves, stats, grad


def fused(t, stats):
    return bn_squeeze_excite(t["y"], t["bn_weight"], t["bn_bias"], stats[0], stats[1], t["w1"],
                             t["b1"], t["w2"], t["b2"], t["residual"], training=True,
                             num_batches_tracked=stats[2], post_relu=True, backend="cpu")


def _batch_norm(t, stats):
    stats[2].add_(1)  # as nn.BatchNorm2d counts its batches
    return F.batch_norm(t["y"], stats[0], stats[1], t["bn_weight"], t["bn_bias"], True, 0.1, 1e-5)


def bn_then_fused_se(t, stats):
    return squeeze_excite(_batch_norm(t, stats), t["w1"], t["b1"], t["w2"], t["b2"],
                          t["residual"], post_relu=True, backend="cpu")


def all_eager(t, stats):
    return eager_se(_batch_norm(t, stats), t["w1"], t["b1"], t["w2"], t["b2"], t["residual"],
                    post_relu=True)


IMPLEMENTATIONS = {"a fused": fused, "b BN + SE op": bn_then_fused_se, "c eager": all_eager}


def step_fn(fn, leaves, stats, grad):
    inputs = list(leaves.values())

    def step():
        out = fn(leaves, stats)
        torch.autograd.grad(out, inputs, grad)
    return step


def time_case(steps, rounds, calls):
    """Median seconds per step of each step function, over interleaved rounds."""
    for step in steps.values():  # warm-up (allocator, first-call dispatch)
        step()
    samples = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(calls):
                step()
            samples[name].append((time.perf_counter() - start) / calls)
    return {name: statistics.median(s) for name, s in samples.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--layouts", nargs="+", default=["channels_last", "nchw"],
                        choices=["channels_last", "nchw"])
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average before: {os.getloadavg()[0]:.2f}")
    print(f"{'layout':<14}{'C x HW':<12}" + "".join(f"{k:>16}" for k in IMPLEMENTATIONS)
          + f"{'b/a':>8}{'c/a':>8}")
    for layout in args.layouts:
        for c, hw in STAGES:
            leaves, stats, grad = make_case(args.batch, c, hw, layout == "channels_last")
            steps = {name: step_fn(fn, leaves, stats, grad) for name, fn in IMPLEMENTATIONS.items()}
            ms = {k: v * 1e3 for k, v in time_case(steps, args.rounds, args.calls).items()}
            a, b, e = ms["a fused"], ms["b BN + SE op"], ms["c eager"]
            print(f"{layout:<14}{f'{c}x{hw}x{hw}':<12}" + "".join(f"{v:>13.2f} ms" for v in ms.values())
                  + f"{b / a:>8.2f}{e / a:>8.2f}", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
