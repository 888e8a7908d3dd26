"""CPU benchmark: the C++ CPU backend vs eager PyTorch vs torch.compile (inductor, CPU).

    python benchmarks/cpu_bench.py [--batch 8] [--json benchmarks/results/cpu.json]

Rows: SE-ResNet-50 stage shapes (C, H=W) in {(256, 56), (512, 28), (1024, 14), (2048, 7)},
fp32, NCHW and channels_last; passes: plain SE forward, SE + residual + ReLU forward, and
SE + residual + ReLU forward+backward (input, residual and weight gradients). Every time is
the median of repeated runs (torch.utils.benchmark), all measured in one run. GB/s counts the
compulsory traffic of each pass (below) and is compared with a large tensor copy measured in
the same run (bytes read + written / time).

Compulsory traffic, in units of one activation tensor (N*C*H*W elements):
    forward: read x, write out (2); with residual: + read residual (3)
    forward+backward with residual + ReLU: forward 3 + backward read grad, x, out and write
    grad_x, grad_residual (5) = 8
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch
import torch.utils.benchmark as benchmark

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from senet_kernels import available_backends, squeeze_excite  # noqa: E402
from senet_kernels.testing import make_inputs  # noqa: E402

STAGES = [(256, 56), (512, 28), (1024, 14), (2048, 7)]
PASSES = {  # name: (residual + ReLU tail, backward, tensors of compulsory traffic)
    "se_fwd": (False, False, 2),
    "se_res_relu_fwd": (True, False, 3),
    "se_res_relu_fwd_bwd": (True, True, 8),
}


def median_seconds(fn, min_run_time):
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


def copy_bandwidth(min_run_time):
    """Bytes read + written per second by a 256 MiB fp32 copy (far larger than any cache)."""
    src = torch.randn(64 * 1024 * 1024)
    dst = torch.empty_like(src)
    seconds = median_seconds(lambda: dst.copy_(src), min_run_time)
    return 2 * src.numel() * src.element_size() / seconds


def make_step(impl, args, tail, backward):
    """A zero-argument callable running one pass of ``impl`` ("cpu", "reference", compiled fn)."""
    x, w1, b1, w2, b2, res = args
    residual = res if tail else None
    fn = impl if callable(impl) else (lambda *a, **k: squeeze_excite(*a, backend=impl, **k))
    if not backward:
        def step():
            with torch.no_grad():
                return fn(x, w1, b1, w2, b2, residual, post_relu=tail)
        return step
    grad = torch.randn_like(x)
    leaves = [x, w1, b1, w2, b2, res]

    def step():
        out = fn(x, w1, b1, w2, b2, residual, post_relu=tail)
        return torch.autograd.grad(out, leaves, grad)
    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--min-run-time", type=float, default=0.5, help="seconds per measurement")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    status = available_backends()["cpu"]
    if not status.available:
        sys.exit(f"the C++ CPU backend is unavailable: {status.reason}")

    torch.manual_seed(0)
    bandwidth = copy_bandwidth(args.min_run_time)
    print(f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads; "
          f"torch {torch.__version__}; copy bandwidth {bandwidth / 1e9:.1f} GB/s (read + write)")

    def reference(*a, **k):
        return squeeze_excite(*a, backend="reference", **k)

    compiled = torch.compile(reference)
    rows = []
    header = (f"{'pass':>20} {'layout':>6} {'C':>5} {'HW':>3} | {'ours ms':>8} {'eager ms':>8} "
              f"{'compile ms':>10} | {'vs eager':>8} {'vs compile':>10} | {'GB/s':>6} {'of copy':>7}")
    print(header)
    print("-" * len(header))
    started = time.time()
    for pass_name, (tail, backward, tensors) in PASSES.items():
        for channels_last in (False, True):
            for c, hw in STAGES:
                inputs = make_inputs(args.batch, c, hw, hw, c // 16, channels_last=channels_last,
                                     residual=True, seed=c)
                tensors_in = [inputs[k] for k in ("x", "w1", "b1", "w2", "b2", "residual")]
                if backward:
                    tensors_in = [t.requires_grad_() for t in tensors_in]
                times = {}
                for name, impl in (("ours", "cpu"), ("eager", "reference"), ("compile", compiled)):
                    step = make_step(impl, tensors_in, tail, backward)
                    step()  # warm-up (and compilation)
                    times[name] = median_seconds(step, args.min_run_time)
                nbytes = tensors * inputs["x"].numel() * inputs["x"].element_size()
                gbps = nbytes / times["ours"] / 1e9
                row = dict(backend="cpu", shape=[args.batch, c, hw, hw], dtype="float32",
                           layout="channels_last" if channels_last else "nchw", pass_=pass_name,
                           median_ms=times["ours"] * 1e3, eager_ms=times["eager"] * 1e3,
                           compile_ms=times["compile"] * 1e3,
                           speedup_vs_eager=times["eager"] / times["ours"],
                           speedup_vs_compile=times["compile"] / times["ours"], gbps=gbps,
                           floor_fraction=gbps * 1e9 / bandwidth)
                rows.append(row)
                print(f"{pass_name:>20} {'nhwc' if channels_last else 'nchw':>6} {c:>5} {hw:>3} | "
                      f"{row['median_ms']:8.3f} {row['eager_ms']:8.3f} {row['compile_ms']:10.3f} | "
                      f"{row['speedup_vs_eager']:7.2f}x {row['speedup_vs_compile']:9.2f}x | "
                      f"{gbps:6.1f} {row['floor_fraction']:6.0%}", flush=True)
    print(f"({time.time() - started:.0f} s)")
    for pass_name in PASSES:
        sel = [r for r in rows if r["pass_"] == pass_name]
        print(f"{pass_name}: speedup vs eager min {min(r['speedup_vs_eager'] for r in sel):.2f}x "
              f"median {statistics.median(r['speedup_vs_eager'] for r in sel):.2f}x; vs compile min "
              f"{min(r['speedup_vs_compile'] for r in sel):.2f}x")
    if args.json:
        result = {"device": f"CPU {platform.processor() or platform.machine()}, "
                            f"{torch.get_num_threads()} threads",
                  "versions": {"torch": torch.__version__, "python": platform.python_version()},
                  "copy_bandwidth_gbps": bandwidth / 1e9, "batch": args.batch,
                  "rows": [dict({("pass" if k == "pass_" else k): v for k, v in r.items()}) for r in rows]}
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
