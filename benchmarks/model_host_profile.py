"""Where a network's host time goes in eager inference, as is and with its SE modules fused.

    python benchmarks/model_host_profile.py [--model efficientnet_b0] [--batch 128]
                                            [--backend triton] [--calls 5]

Answers why a converted network can be slower in eager mode while faster under a CUDA graph
(timm EfficientNet-B0 on an H200: 9.10 ms converted vs 8.13 ms as is, 5.78 vs 6.17 ms
replayed). Per forward, for the model as is and after ``convert_se_modules``:

- wall time, and host time (until ``model(x)`` returns, nothing synchronized);
- host time spent inside the SE modules (forward pre/post hooks around each SE module, so the
  number includes the SE call's whole host path and nothing else);
- from torch.profiler: kernel launches, calls that make the host wait for the GPU
  (synchronizations, blocking copies) and allocator calls to the driver (cudaMalloc/cudaFree,
  which synchronize), and the CPU ops with the most self time;
- for the Triton backend, how many launch sites launch their compiled kernel directly (the
  cheap path) and whether a launch hook forces every launch through ``kernel[grid]``.

bf16, channels_last, timm models. Prints only (gpu_check keeps it in its log).
"""

import argparse
import statistics
import sys
import time

import torch

from senet_kernels import FusedSEBlock, convert_se_modules
from senet_kernels.recognize import is_known_se_class

LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx", "cudaLaunchKernelExC")
WAITS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")
DRIVER_ALLOCATIONS = ("cudaMalloc", "cudaFree")


def se_modules(model):
    """The SE modules (a fused residual block's tail is its FusedSEBlock)."""
    return [m for m in model.modules() if is_known_se_class(m) or isinstance(m, FusedSEBlock)]


def se_host_seconds(model, x, sync, calls):
    """Host seconds per forward spent inside the SE modules (outermost ones only)."""
    spent, depth, start = [0.0], [0], [0.0]

    def enter(module, args):
        if depth[0] == 0:
            start[0] = time.perf_counter()
        depth[0] += 1

    def leave(module, args, out):
        depth[0] -= 1
        if depth[0] == 0:
            spent[0] += time.perf_counter() - start[0]

    handles = []
    for m in se_modules(model):
        handles += [m.register_forward_pre_hook(enter), m.register_forward_hook(leave)]
    try:
        with torch.no_grad():
            for _ in range(calls):
                model(x)
                sync()
    finally:
        for h in handles:
            h.remove()
    return spent[0] / calls


def profile_counts(model, x, sync, calls):
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if x.is_cuda else [])
    with torch.no_grad(), profile(activities=activities) as prof:
        for _ in range(calls):
            model(x)
        sync()
    events = prof.key_averages()

    def count(names):
        return sum(e.count for e in events if e.key in names) / calls

    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:8]
    return {"launches": count(LAUNCHES), "waits": count(WAITS),
            "driver_allocations": count(DRIVER_ALLOCATIONS),
            "top_self_cpu": [(e.key, e.self_cpu_time_total / calls, e.count / calls) for e in top]}


def sync_of(x):
    return torch.cuda.synchronize if x.is_cuda else (lambda: None)


def time_forwards(model, x, calls):
    """Wall, host and SE-module host time per forward (no profiler involved)."""
    sync = sync_of(x)
    model.eval()
    with torch.no_grad():
        for _ in range(3):  # warm-up: compilation, cudnn.benchmark, plans, allocator
            model(x)
    sync()
    walls, hosts = [], []
    with torch.no_grad():
        for _ in range(calls):
            sync()
            t0 = time.perf_counter()
            model(x)
            t1 = time.perf_counter()
            sync()
            hosts.append(t1 - t0)
            walls.append(time.perf_counter() - t0)
    return {"wall_ms": statistics.median(walls) * 1e3, "host_ms": statistics.median(hosts) * 1e3,
            "se_host_ms": se_host_seconds(model, x, sync, calls) * 1e3,
            "se_modules": len(se_modules(model))}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="efficientnet_b0", help="a timm model name")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--image", type=int, default=224)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--calls", type=int, default=5)
    args = parser.parse_args()
    import timm
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    x = torch.randn(args.batch, 3, args.image, args.image, device=device, dtype=dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    models = {}
    for converted in (False, True):
        torch.manual_seed(0)
        model = timm.create_model(args.model)
        if converted:
            convert_se_modules(model, backend=args.backend)
        name = f"{args.model} {'converted [' + args.backend + ']' if converted else 'as is'}"
        models[name] = model.to(device=device, dtype=dtype, memory_format=torch.channels_last)
    # Every timing before any profiler session: after one, launches can stay slower for the
    # rest of the process (an H200 run measured a converted model at 14.0 ms after profiling
    # and 8.8 ms in a fresh process).
    timings = {name: time_forwards(model, x, args.calls) for name, model in models.items()}
    for name, model in models.items():
        r = {**timings[name], **profile_counts(model, x, sync_of(x), args.calls)}
        print(f"{name}: wall {r['wall_ms']:.2f} ms, host {r['host_ms']:.2f} ms per forward; "
              f"{r['se_modules']} SE modules take {r['se_host_ms']:.2f} ms of host time "
              f"({r['se_host_ms'] * 1e3 / max(r['se_modules'], 1):.1f} us each); per forward "
              f"{r['launches']:.0f} kernel launches, {r['waits']:.0f} waits for the GPU, "
              f"{r['driver_allocations']:.0f} cudaMalloc/cudaFree (these counts: profiled "
              "after the timings)", flush=True)
        for key, self_us, count in r["top_self_cpu"]:
            print(f"    {key[:60]:60s} {self_us / 1e3:8.3f} ms self CPU, {count:6.1f} calls")
    if "senet_kernels.triton.se_op" in sys.modules:
        report = sys.modules["senet_kernels.triton.se_op"].direct_launch_report()
        print(f"triton launch sites: {report['compiled']} of {report['sites']} launch their "
              f"compiled kernel directly; launch hooks installed: {report['hooks_installed']}")


if __name__ == "__main__":
    main()
