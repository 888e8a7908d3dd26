"""Model benchmark: what SE costs in a whole network, per implementation, in one run.

    python benchmarks/model_bench.py [--batch 8] [--image 224] [--dtype float32|bfloat16]
                                     [--channels-last] [--json PATH]

Times ResNet-50 (torchvision, no SE) and SE-ResNet-50 (senet_kernels.models.se_resnet50, the
same bottleneck network with an SE block in each residual block) for inference and for a
training step (forward, backward, SGD step), eager and under torch.compile:

    eager     SE-ResNet-50 with backend="reference" (plain PyTorch SE) vs eager ResNet-50
    fused     SE-ResNet-50 with our fused kernels (triton on a GPU, C++ on the CPU) vs eager ResNet-50
    compile   torch.compile(SE-ResNet-50, reference SE) vs torch.compile(ResNet-50)

and reports the SE overhead = time(SE-ResNet-50) / time(ResNet-50) - 1 for each, plus peak
GPU memory of the training step (CUDA only). Medians of repeated runs (torch.utils.benchmark).
"""

import argparse
import json
import os
import platform
import sys
import time

import torch
import torch.utils.benchmark as benchmark

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from senet_kernels import available_backends  # noqa: E402
from senet_kernels.models import se_resnet50  # noqa: E402


def median_seconds(fn, min_run_time):
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


def fused_backend(device):
    status = available_backends()
    order = ("triton", "cuda") if device.type == "cuda" else ("cpu",)
    return next((b for b in order if status[b].available), None)


def make_steps(model, x, train):
    """(step callable) for inference or a training step of model on x."""
    if not train:
        model.eval()

        def infer():
            with torch.no_grad():
                return model(x)
        return infer
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    target = torch.randint(0, 1000, (x.shape[0],), device=x.device)

    def train_step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x).float(), target)
        loss.backward()
        opt.step()
    return train_step


def measure(step, device, min_run_time):
    step()  # warm-up (and compilation)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    seconds = median_seconds(step, min_run_time)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    return seconds, peak


def main():
    import torchvision

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image", type=int, default=224)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--min-run-time", type=float, default=1.0)
    parser.add_argument("--json")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    fused = fused_backend(device)
    x = torch.randn(args.batch, 3, args.image, args.image, device=device, dtype=dtype).contiguous(memory_format=fmt)

    def build(kind):
        torch.manual_seed(0)
        # SE-ResNet-50 in torchvision's ResNet-50 layout (stride in the 3x3, padded max-pool),
        # so that the two networks differ by the SE blocks only.
        model = (torchvision.models.resnet50() if kind == "resnet50" else
                 se_resnet50(backend=kind, stride_in_1x1=False, maxpool_ceil_mode=False))
        return model.to(device=device, dtype=dtype, memory_format=fmt)

    impls = {  # name: (backend of the SE blocks, torch.compile both networks?)
        "eager": ("reference", False),
        "compile": ("reference", True),
    }
    if fused:
        impls[f"fused ({fused})"] = (fused, False)
    rows = []
    for mode in ("inference", "train_step"):
        for name, (se_backend, compiled) in impls.items():
            times = {}
            for net in ("resnet50", "se_resnet50"):
                model = build("resnet50" if net == "resnet50" else se_backend)
                if compiled:
                    model = torch.compile(model)
                seconds, peak = measure(make_steps(model, x, mode == "train_step"), device,
                                        args.min_run_time)
                times[net] = (seconds, peak)
            overhead = times["se_resnet50"][0] / times["resnet50"][0] - 1
            rows.append(dict(mode=mode, impl=name, resnet50_ms=times["resnet50"][0] * 1e3,
                             se_resnet50_ms=times["se_resnet50"][0] * 1e3, se_overhead=overhead,
                             images_per_s=args.batch / times["se_resnet50"][0],
                             peak_mib=times["se_resnet50"][1]))
            print(f"{mode:>10} {name:>14}: ResNet-50 {rows[-1]['resnet50_ms']:8.2f} ms, "
                  f"SE-ResNet-50 {rows[-1]['se_resnet50_ms']:8.2f} ms, SE overhead {overhead:+.1%}"
                  + (f", peak {rows[-1]['peak_mib']:.0f} MiB" if rows[-1]["peak_mib"] else ""), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name() if device.type == "cuda"
                       else f"CPU {platform.machine()}, {torch.get_num_threads()} threads",
                       "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
                       "batch": args.batch, "image": args.image, "dtype": args.dtype,
                       "channels_last": args.channels_last, "rows": rows}, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
