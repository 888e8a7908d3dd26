"""Host time per SE call: what each implementation costs the CPU thread that issues it.

    python benchmarks/host_overhead.py [--json PATH] [--calls 400] [--repeats 7]

On a GPU most SE kernels take tens of microseconds, so the Python and dispatcher work per
call matters as much as memory traffic: a network issuing its blocks faster than the GPU runs
them hides that work, one issuing them slower does not. Measured per implementation, forward
alone (no_grad) and forward + backward, in one run (medians over --repeats rounds of --calls
calls, implementations interleaved):

- GPU: ``host_us`` = time for the Python thread to issue one call (the GPU only queues the
  launches; a sample-size input, N=8 C=256 56x56 bf16, keeps the GPU ahead of the host),
  ``wall_us`` = time per call including waiting for the GPU (synchronized at the end), and
  ``gpu_us`` = the summed duration of the call's kernels (torch.profiler). ``host_us`` close
  to ``wall_us`` means the call is host-bound.
- CPU (no GPU): kernels would run on the CPU, so they are excluded instead: the Triton backend
  runs with its launches stubbed (every host-side step of a launch except the driver call,
  see ``launcher.stubbed_launches``); eager PyTorch and the C++ CPU backend run on a
  1x8x1x1 input, where the compute is a few nanoseconds and what remains is host work.

"eager" is the SE-ResNet tail as timm runs it (``senet_kernels.baselines.eager_se``).
"""

import argparse
import os
import platform
import statistics
import time

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

from senet_kernels import available_backends, squeeze_excite
from senet_kernels.baselines import eager_se
from senet_kernels.bench import timed_round, write_json
from senet_kernels.testing import make_inputs

GPU_SHAPE = (8, 256, 56, 56, 16)   # N, C, H, W, Cr: SE-ResNet-50 stage 1 at batch 8
CPU_SHAPE = (1, 8, 1, 1, 2)


def implementations(device):
    """[(name, fn)] of the implementations to time on this device."""
    status = available_backends()
    impls = [("eager", eager_se)]
    names = ("triton", "cuda") if device.type == "cuda" else ("triton", "cpu")
    for name in names:
        if status[name].available:
            impls.append((name, lambda *a, _b=name, **k: squeeze_excite(*a, backend=_b, **k)))
    return impls


def make_call(fn, args, backward):
    x, w1, b1, w2, b2, res = args
    if not backward:
        def call():
            with torch.no_grad():
                fn(x, w1, b1, w2, b2, res, post_relu=True)
        return call
    leaves = [x, w1, b1, w2, b2, res]
    grad = torch.randn_like(x)

    def call():
        torch.autograd.grad(fn(x, w1, b1, w2, b2, res, post_relu=True), leaves, grad)
    return call



def gpu_seconds(call, calls=20):
    """Summed kernel time per call, from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            call()
        torch.cuda.synchronize()
    total_us = sum(e.device_time_total for e in prof.key_averages())
    return total_us * 1e-6 / calls


def run(calls=400, repeats=7):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shape, dtype = (GPU_SHAPE, torch.bfloat16) if device.type == "cuda" else (CPU_SHAPE, torch.float32)
    inputs = make_inputs(*shape, dtype=dtype, channels_last=device.type == "cuda", residual=True,
                         device=device, seed=0)
    args = [inputs[k].requires_grad_() for k in ("x", "w1", "b1", "w2", "b2", "residual")]
    stub = _stub_triton_launches(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rows, row_calls = [], []
    for backward in (False, True):
        impls = [(name, make_call(fn, args, backward)) for name, fn in implementations(device)]
        samples = {name: [] for name, _ in impls}
        with stub():
            for name, call in impls:  # warm-up: compilation, plans, allocator
                for _ in range(20):
                    call()
            for _ in range(repeats):  # interleaved, so drifts of the machine hit all alike
                for name, call in impls:
                    samples[name].append(timed_round(call, calls, sync))
        for name, call in impls:
            host = statistics.median(s[0] for s in samples[name])
            wall = statistics.median(s[1] for s in samples[name])
            rows.append(dict(impl=name, pass_name="fwd_bwd" if backward else "fwd",
                             host_us=host * 1e6, wall_us=wall * 1e6,
                             stubbed=device.type == "cpu" and name == "triton"))
            row_calls.append(call)
    if device.type == "cuda":
        # Only after every timing: once a torch.profiler session has run in a process, its
        # launches can stay slower (on an H200 this inflated the forward + backward rows,
        # timed after the forward rows' profiling, to ~0.6 / 1.3 ms of host time per call).
        for row, call in zip(rows, row_calls):
            row["gpu_us"] = gpu_seconds(call) * 1e6
    for row in rows:
        eager = next(r for r in rows if r["impl"] == "eager" and r["pass_name"] == row["pass_name"])
        row["host_vs_eager"] = row["host_us"] / eager["host_us"]
    return {"device": torch.cuda.get_device_name() if device.type == "cuda"
            else f"CPU {platform.processor() or platform.machine()}",
            "shape": list(shape), "dtype": str(dtype).replace("torch.", ""),
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "rows": rows}


def _stub_triton_launches(device):
    from contextlib import nullcontext
    if device.type == "cuda":
        return nullcontext
    from senet_kernels.triton.launcher import stubbed_launches
    return stubbed_launches


def format_rows(result):
    lines = [f"host time per SE call on {result['device']} (shape {result['shape']}, {result['dtype']}, "
             f"torch {result['torch']}); medians",
             f"{'impl':>8} {'pass':>8} {'host us':>9} {'vs eager':>9} {'wall us':>9} {'gpu us':>8}"]
    for r in result["rows"]:
        gpu = f"{r['gpu_us']:8.1f}" if "gpu_us" in r else f"{'-':>8}"
        note = "  (launches stubbed)" if r["stubbed"] else ""
        lines.append(f"{r['impl']:>8} {r['pass_name']:>8} {r['host_us']:9.1f} {r['host_vs_eager']:8.2f}x "
                     f"{r['wall_us']:9.1f} {gpu}{note}")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=400, help="calls per timed round")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (the median is reported)")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    result = run(args.calls, args.repeats)
    print(format_rows(result))
    if args.json:
        write_json(result, args.json)


if __name__ == "__main__":
    main()
