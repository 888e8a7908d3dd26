"""The correctness check of ``python -m senet_kernels check`` and of the main job.

Every available backend against the float64 reference on SE-ResNet-like shapes (every
activation / gate, the SE-ResNet tail, both layouts, fp32 and bf16): the forward and all
gradients. The cases can be split into shards (every ``shards``-th case from ``shard``), so
that on a GPU, where most of the check's time is Triton compiling the kernels of its small
cases (about a hundred configurations), several processes share it (bench_warmup.CheckProcess).
"""

import functools
import os
import platform

import torch

SHAPES = [  # (N, C, H, W, Cr): SE-ResNet stages in miniature, an EfficientNet-like Cr
    (2, 64, 14, 14, 4),
    (2, 256, 7, 7, 16),
    (3, 40, 5, 5, 10),
]
VARIANTS = [  # (activation, gate, residual + post_relu)
    ("relu", "sigmoid", True),
    ("silu", "sigmoid", False),
    ("relu", "hardsigmoid", False),
    ("gelu", "hardsigmoid", True),
    ("hardswish", "sigmoid", False),
]


def cases():
    """[(shape, activation, gate, tail, dtype, channels_last)]; a case's index is its seed."""
    return [(shape, activation, gate, tail, dtype, channels_last)
            for shape in SHAPES for activation, gate, tail in VARIANTS
            for dtype in (torch.float32, torch.bfloat16) for channels_last in (False, True)]


def device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def backends():
    """[(backend, device)] checked here: every available kernel backend where it runs (the C++
    CPU kernels on CPU tensors, Triton on the GPU or interpreted on the CPU), and the
    reference."""
    from . import available_backends
    status = available_backends()
    on = {"cpu": torch.device("cpu"), "cuda": device(), "triton": device(),
          "reference": device()}
    return [(b, on[b]) for b in ("triton", "cuda", "cpu") if status[b].available] + [
        ("reference", on["reference"])]


def header_lines():
    """The hardware and each backend's availability."""
    from . import available_backends
    d = device()
    hw = (torch.cuda.get_device_name() if d.type == "cuda"
          else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)")
    lines = [f"device: {hw}; torch {torch.__version__}; python {platform.python_version()}"]
    for name, s in available_backends().items():
        lines.append(f"  {name:10} {'available' if s.available else 'unavailable'}: {s.reason}")
    return lines


def check_case(backend, on, index):
    """(index, worst relative error, failing results as text) of case ``index``."""
    from . import squeeze_excite
    from .testing import forward_backward_vs_reference, make_inputs
    shape, activation, gate, tail, dtype, channels_last = cases()[index]
    args = make_inputs(*shape, dtype=dtype, channels_last=channels_last, residual=tail,
                       device=on, seed=index)
    results = forward_backward_vs_reference(
        functools.partial(squeeze_excite, backend=backend), args, seed=index,
        activation=activation, gate=gate, post_relu=tail)
    errs = [r.errors() for r in results]
    failing = [f"{r.name}: rel {e[0]:.2e}, max {e[1]:.2e}"
               for r, e in zip(results, errs) if not r.within_tolerance(dtype)]
    return index, max(e[0] for e in errs), "; ".join(failing)


def run(shard=0, shards=1):
    """{backend: [check_case results]} for this shard's cases, every backend."""
    indices = range(shard, len(cases()), shards)
    return {backend: [check_case(backend, on, i) for i in indices] for backend, on in backends()}


def report(results):
    """(failures, lines) of results {backend: [(index, worst, failing)]}, merged from shards."""
    failures, lines = 0, []
    on = dict(backends())
    for backend, rows in results.items():
        rows = sorted(rows)
        bad = [r for r in rows if r[2]]
        failures += len(bad)
        lines.append(f"check {backend:10} on {on[backend].type}: {len(rows) - len(bad)}/"
                     f"{len(rows)} cases within tolerance (forward + all gradients vs float64; "
                     f"worst relative error {max(r[1] for r in rows):.2e})")
        for index, _, failing in bad:
            shape, act, gate, tail, dtype, cl = cases()[index]
            lines.append(f"  FAILED {shape} {act}/{gate} tail={tail} {dtype} "
                         f"channels_last={cl}: {failing}")
    return failures, lines


def run_checks():
    """Print the hardware, the backends and each backend's check (as it finishes); returns
    the number of failed cases."""
    print("\n".join(header_lines()), flush=True)
    failures = 0
    for backend, on in backends():
        rows = [check_case(backend, on, i) for i in range(len(cases()))]
        bad, lines = report({backend: rows})
        failures += bad
        print("\n".join(lines), flush=True)
    return failures
