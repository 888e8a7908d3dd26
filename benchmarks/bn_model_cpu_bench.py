"""CPU training step of a whole SE-ResNet with and without the BatchNorm absorbed into the SE op.

    PYTHONPATH=. python benchmarks/bn_model_cpu_bench.py [--model seresnet50] [--batch 8]
        [--size 224] [--rounds 3] [--layouts channels_last nchw]

(PYTHONPATH=. runs this checkout's senet_kernels rather than an installed one.)

One training step (forward, cross-entropy backward, SGD step), fp32, of timm's ``--model``
(random weights) in three forms, each its own copy:
    a  unconverted:  timm's model as built
    b  fuse_bn=False: convert_se_modules(backend="cpu", fuse_bn=False), the fused SE +
                      shortcut add + ReLU after the BatchNorm module
    c  fuse_bn=True:  convert_se_modules(backend="cpu"), bn3 absorbed into the fused op
Each round times one step of every form, interleaved so that load changes hit all alike,
after one warm-up step each; reported: the median over rounds, and the ratios a/c and b/c
(> 1: the absorbed BatchNorm is faster). The load average is printed before and after. The
allocator note of bn_se_cpu_bench.py applies (MALLOC_MMAP_THRESHOLD_ keeps freed memory).
"""

import argparse
import copy
import os
import statistics
import time

import torch
import torch.nn.functional as F

from senet_kernels import convert_se_modules

FORMS = {
    "unconverted": {},
    "fuse_bn=False": {"fuse_bn": False},
    "fuse_bn=True": {"fuse_bn": True},
}


def make_forms(model_name, channels_last):
    import timm
    torch.manual_seed(0)
    source = timm.create_model(model_name, pretrained=False).train()
    forms = {}
    for name, kwargs in FORMS.items():
        model = copy.deepcopy(source)
        if name != "unconverted":
            convert_se_modules(model, backend="cpu", **kwargs)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        forms[name] = (model, torch.optim.SGD(model.parameters(), lr=0.01))
    return forms


def train_step(model, opt, x, target):
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), target).backward()
    opt.step()


def time_step(model, opt, x, target):
    start = time.perf_counter()
    train_step(model, opt, x, target)
    return time.perf_counter() - start


def bench_layout(args, channels_last):
    forms = make_forms(args.model, channels_last)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=gen)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, 1000, (args.batch,), generator=gen)
    for model, opt in forms.values():  # warm-up
        train_step(model, opt, x, target)
    times = {name: [] for name in forms}
    for _ in range(args.rounds):
        for name, (model, opt) in forms.items():
            times[name].append(time_step(model, opt, x, target))
    return {name: statistics.median(t) for name, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="seresnet50")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--layouts", nargs="+", default=["channels_last", "nchw"],
                        choices=["channels_last", "nchw"])
    args = parser.parse_args()
    print(f"{args.model}, batch {args.batch}, {args.size} px, fp32, training step, "
          f"{torch.get_num_threads()} threads, median of {args.rounds} rounds; "
          f"load average {os.getloadavg()[0]:.2f}")
    header = "layout          " + "".join(f"{name:>16}" for name in FORMS) + "     a/c     b/c"
    print(header)
    for layout in args.layouts:
        t = bench_layout(args, layout == "channels_last")
        a, b, c = (t[name] for name in FORMS)
        print(f"{layout:<16}" + "".join(f"{t[name] * 1e3:>13.0f} ms" for name in FORMS)
              + f"{a / c:>8.2f}{b / c:>8.2f}", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
