"""Command line: ``python -m senet_kernels check``.

check: detects the hardware, then runs every available backend against the float64 reference
on SE-ResNet-like shapes (every activation/gate, SE-ResNet tail, both layouts, fp32 and bf16):
forward and all gradients. On a CUDA GPU it also times the forward and forward+backward of
each backend beside eager PyTorch and torch.compile (medians of CUDA-event timings). Without a
GPU the Triton kernels run through the Triton interpreter (correct, but far too slow to time).
Exit status 1 when any check fails.
"""

import argparse
import os
import platform
import sys

import torch


def _ensure_triton_interpreter_without_gpu(argv):
    """Without a GPU, re-run this command with TRITON_INTERPRET=1.

    Triton reads the variable when kernels are defined, and importing senet_kernels (torch's
    custom-op machinery) already imports triton, so setting it now would be too late.
    """
    if torch.cuda.is_available() or "TRITON_INTERPRET" in os.environ:
        return
    env = dict(os.environ, TRITON_INTERPRET="1")
    os.execve(sys.executable, [sys.executable, "-m", "senet_kernels", *argv], env)


CHECK_SHAPES = [  # (N, C, H, W, Cr): SE-ResNet stages in miniature, an EfficientNet-like Cr
    (2, 64, 14, 14, 4),
    (2, 256, 7, 7, 16),
    (3, 40, 5, 5, 10),
]
CHECK_VARIANTS = [  # (activation, gate, residual + post_relu)
    ("relu", "sigmoid", True),
    ("silu", "sigmoid", False),
    ("relu", "hardsigmoid", False),
]


def _check_backend(backend, device):
    from . import squeeze_excite
    from .testing import errors, make_inputs, reference64, within_tolerance

    rows = []
    for shape in CHECK_SHAPES:
        for activation, gate, tail in CHECK_VARIANTS:
            for dtype in (torch.float32, torch.bfloat16):
                for channels_last in (False, True):
                    args = make_inputs(*shape, dtype=dtype, channels_last=channels_last,
                                       residual=tail, device=device, seed=len(rows))
                    options = dict(activation=activation, gate=gate, post_relu=tail)
                    leaves = [None if v is None else v.clone().requires_grad_() for v in args.values()]
                    out = squeeze_excite(*leaves, backend=backend, **options)
                    expected, args64 = reference64(args, **options)
                    grad = torch.randn_like(out)
                    used = [i for i, v in enumerate(leaves) if v is not None]
                    grads = torch.autograd.grad(out, [leaves[i] for i in used], grad)
                    leaves64 = list(args64.values())
                    expected_grads = torch.autograd.grad(expected, [leaves64[i] for i in used],
                                                         grad.double())
                    pairs = [(out, expected)] + list(zip(grads, expected_grads))
                    worst = max(errors(a, e)[0] for a, e in pairs)
                    ok = all(within_tolerance(a, e, dtype) for a, e in pairs)
                    rows.append((shape, activation, gate, tail, dtype, channels_last, worst, ok))
    return rows


def _time_cuda(fn, iters=50):
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for _ in range(5):
        fn()
    for s, e in zip(starts, ends):
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    times = sorted(s.elapsed_time(e) for s, e in zip(starts, ends))
    return times[len(times) // 2]


TIMING_SHAPES = [(64, 256, 56, 56), (64, 512, 28, 28), (64, 1024, 14, 14), (64, 2048, 7, 7)]


def _time_backends(backends):
    from . import squeeze_excite
    from .testing import make_inputs

    compiled = torch.compile(lambda *a: squeeze_excite(*a, post_relu=True, backend="reference"))
    print("\nSE + residual + ReLU, bf16, channels_last, CUDA-event medians (ms):")
    print(f"{'shape':>22} {'impl':>10} {'fwd':>8} {'fwd+bwd':>8}")
    for n, c, h, w in TIMING_SHAPES:
        args = make_inputs(n, c, h, w, c // 16, dtype=torch.bfloat16, channels_last=True,
                           residual=True, device="cuda")
        leaves = [v.requires_grad_() for v in args.values()]
        impls = {name: (lambda *a, b=name: squeeze_excite(*a, post_relu=True, backend=b))
                 for name in backends}
        impls["compile"] = compiled
        for name, fn in impls.items():
            with torch.no_grad():
                fwd = _time_cuda(lambda: fn(*leaves))
            grad = torch.randn(n, c, h, w, device="cuda", dtype=torch.bfloat16)
            both = _time_cuda(lambda: torch.autograd.grad(fn(*leaves), leaves, grad))
            print(f"{str((n, c, h, w)):>22} {name:>10} {fwd:8.3f} {both:8.3f}")


def check(args):
    from . import available_backends

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    hw = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    print(f"device: {hw}; torch {torch.__version__}; python {platform.python_version()}")
    status = available_backends()
    for name, s in status.items():
        print(f"  {name:10} {'available' if s.available else 'unavailable'}: {s.reason}")

    kernel_backends = [b for b in ("triton", "cuda", "cpu") if status[b].available]
    # The C++ CPU kernels run on CPU tensors; Triton on the GPU (or interpreted on the CPU).
    backend_device = {"cpu": torch.device("cpu"), "cuda": device, "triton": device, "reference": device}
    failures = 0
    for backend in kernel_backends + ["reference"]:
        rows = _check_backend(backend, backend_device[backend])
        bad = [r for r in rows if not r[-1]]
        failures += len(bad)
        worst = max(r[-2] for r in rows)
        print(f"check {backend:10} on {backend_device[backend].type}: {len(rows) - len(bad)}/{len(rows)} cases within "
              f"tolerance (forward + all gradients vs float64; worst relative error {worst:.2e})")
        for shape, act, gate, tail, dtype, cl, err, _ in bad:
            print(f"  FAILED {shape} {act}/{gate} tail={tail} {dtype} channels_last={cl}: {err:.2e}")
    if args.time:
        if device.type == "cuda":
            _time_backends([b for b in kernel_backends if b != "cpu"] + ["reference"])
        else:
            print("\ntiming skipped: no CUDA GPU (interpreted Triton timings would mean nothing)")
    print("\nall checks passed" if not failures else f"\n{failures} checks FAILED")
    return 1 if failures else 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m senet_kernels", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="correctness of every available backend (and GPU timings)")
    p.add_argument("--no-time", dest="time", action="store_false", help="skip the GPU timings")
    p.set_defaults(func=check)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    _ensure_triton_interpreter_without_gpu(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
