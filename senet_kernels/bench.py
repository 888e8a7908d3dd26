"""``python -m senet_kernels bench``: time the SE op beside eager PyTorch and torch.compile.

Every available kernel backend (on the device it serves), eager PyTorch (the reference backend)
and ``torch.compile`` of the same eager code run the same passes on the same tensors in one
process, so the ratios are measured under the same conditions:

    fwd           the SE block forward (SE-ResNet: relu/sigmoid; EfficientNet: silu/sigmoid)
    res_relu_fwd  SE + residual + ReLU forward (SE-ResNet blocks only)
    fwd_bwd       forward + backward (input, residual and weight gradients); SE-ResNet rows
                  include the residual + ReLU tail

Times are medians (torch.utils.benchmark, which synchronizes CUDA). GB/s counts the compulsory
traffic of a pass, in units of one activation tensor: fwd 2 (read x, write out),
res_relu_fwd 3 (+ read residual), fwd_bwd 5 without the tail (forward 2; backward reads grad
and x, writes grad_x) or 8 with it (forward 3; backward reads grad, x, out, writes grad_x and
grad_residual). The floor fraction compares that with a copy of a tensor of the same size,
measured in the same run (bytes read + written / time): the bandwidth the memory system gives
a working set of that size (DRAM on a GPU at these sizes; often cache on a CPU).
"""

import json
import platform
import statistics
import time
from dataclasses import dataclass

import torch
import torch.utils.benchmark as benchmark

from . import available_backends, squeeze_excite
from .testing import make_inputs


@dataclass(frozen=True)
class Shape:
    family: str      # "se_resnet50" or "efficientnet_b0"
    n: int
    c: int
    hw: int
    cr: int

    @property
    def label(self):
        return f"{self.family} {self.n}x{self.c}x{self.hw}x{self.hw} Cr={self.cr}"


# SE-ResNet-50 stages (C, H=W), Cr = C / 16; EfficientNet-B0 SE inputs at 224 px (C, H=W, Cr).
RESNET_STAGES = [(256, 56), (512, 28), (1024, 14), (2048, 7)]
EFFICIENTNET_SE = [(96, 56, 4), (240, 28, 10), (672, 14, 28), (1152, 7, 48)]
BATCH = {"cpu": 8, "gpu": 256}
PASSES = {"fwd": 2, "res_relu_fwd": 3, "fwd_bwd": None}  # traffic in tensors (fwd_bwd: 5 or 8)


def shapes(sizes):
    n = BATCH[sizes]
    return ([Shape("se_resnet50", n, c, hw, c // 16) for c, hw in RESNET_STAGES] +
            [Shape("efficientnet_b0", n, c, hw, cr) for c, hw, cr in EFFICIENTNET_SE])


def passes_for(shape):
    return ("fwd", "res_relu_fwd", "fwd_bwd") if shape.family == "se_resnet50" else ("fwd", "fwd_bwd")


def options_for(shape):
    """(activation, whether the residual + ReLU tail is part of the block)."""
    return ("relu", True) if shape.family == "se_resnet50" else ("silu", False)


def traffic_tensors(pass_name, tail):
    if pass_name == "fwd_bwd":
        return 8 if tail else 5
    return PASSES[pass_name]


def median_seconds(fn, min_run_time):
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


def copy_bandwidth(numel, dtype, device, min_run_time):
    """Bytes read + written per second by a copy of numel elements."""
    src = torch.randn(numel, device=device).to(dtype)
    dst = torch.empty_like(src)
    return 2 * src.numel() * src.element_size() / median_seconds(lambda: dst.copy_(src), min_run_time)


def make_step(fn, tensors, activation, with_residual, backward):
    """A zero-argument callable running one pass of ``fn`` (squeeze_excite-like) on tensors."""
    x, w1, b1, w2, b2, res = tensors
    residual = res if with_residual else None
    kwargs = dict(activation=activation, post_relu=with_residual)
    if not backward:
        def step():
            with torch.no_grad():
                return fn(x, w1, b1, w2, b2, residual, **kwargs)
        return step
    grad = torch.randn_like(x)
    leaves = [x, w1, b1, w2, b2] + ([res] if with_residual else [])

    def step():
        return torch.autograd.grad(fn(x, w1, b1, w2, b2, residual, **kwargs), leaves, grad)
    return step


def backend_fn(name):
    def fn(*args, **kwargs):
        return squeeze_excite(*args, backend=name, **kwargs)
    return fn


def timed_backends(device):
    """Kernel backends that serve tensors on ``device`` and are worth timing there."""
    status = available_backends()
    if device.type == "cuda":
        return [b for b in ("triton", "cuda") if status[b].available]
    return ["cpu"] if status["cpu"].available else []  # interpreted Triton: not worth timing


def allow_recompiles(limit=1024):
    """One compiled function serves every shape, layout and dtype here: past dynamo's default
    of 8 recompiles it would silently run eager, and the "compile" column would be eager."""
    import torch._dynamo.config as dynamo_config
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                 "accumulated_cache_size_limit"):
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, max(getattr(dynamo_config, name), limit))


def run(sizes="cpu", dtypes=("float32",), layouts=("nchw", "channels_last"), min_run_time=0.2,
        progress=True):
    """Time every (shape, pass, dtype, layout); returns the result dict written by --json."""
    allow_recompiles()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backends = timed_backends(device)
    eager = backend_fn("reference")
    compiled = torch.compile(eager)
    impls = [(b, backend_fn(b)) for b in backends] + [("eager", eager), ("compile", compiled)]
    cases = [(s, p, d, l) for s in shapes(sizes) for p in passes_for(s) for d in dtypes for l in layouts]
    bar = _progress(len(cases), progress)
    rows, bandwidth = [], {}
    for shape, pass_name, dtype_name, layout in cases:
        dtype = getattr(torch, dtype_name)
        activation, tail = options_for(shape)
        with_residual = tail and pass_name != "fwd"
        inputs = make_inputs(shape.n, shape.c, shape.hw, shape.hw, shape.cr, dtype=dtype,
                             channels_last=layout == "channels_last", residual=True, device=device,
                             seed=shape.c)
        tensors = [inputs[k] for k in ("x", "w1", "b1", "w2", "b2", "residual")]
        backward = pass_name == "fwd_bwd"
        if backward:
            tensors = [t.requires_grad_() for t in tensors]
        times = {}
        for name, fn in impls:
            step = make_step(fn, tensors, activation, with_residual, backward)
            step()  # warm-up (and compilation)
            times[name] = median_seconds(step, min_run_time)
        key = (inputs["x"].numel(), dtype)
        if key not in bandwidth:
            bandwidth[key] = copy_bandwidth(*key, device, min_run_time)
        nbytes = traffic_tensors(pass_name, with_residual) * inputs["x"].numel() * inputs["x"].element_size()
        for name, seconds in times.items():
            gbps = nbytes / seconds / 1e9
            rows.append(dict(backend=name, shape=[shape.n, shape.c, shape.hw, shape.hw],
                             rd_channels=shape.cr, family=shape.family, dtype=dtype_name,
                             layout=layout, **{"pass": pass_name}, median_ms=seconds * 1e3,
                             speedup_vs_eager=times["eager"] / seconds,
                             speedup_vs_compile=times["compile"] / seconds, gbps=gbps,
                             floor_fraction=gbps * 1e9 / bandwidth[key]))
        bar.update(1)
    bar.close()
    return {"device": describe_device(device), "date": time.strftime("%Y-%m-%d"),
            "versions": versions(), "sizes": sizes, "backends": backends, "rows": rows}


def describe_device(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def versions():
    out = {"torch": torch.__version__, "python": platform.python_version()}
    try:
        import triton
        out["triton"] = triton.__version__
    except ImportError:
        pass
    if torch.version.cuda:
        out["cuda"] = torch.version.cuda
    return out


def _progress(total, enabled):
    try:
        from tqdm import tqdm
        return tqdm(total=total, disable=not enabled, desc="bench", leave=False)
    except ImportError:
        class NoBar:
            def update(self, n):
                pass

            def close(self):
                pass
        return NoBar()


def format_table(result):
    """Markdown table: one line per (shape, pass, dtype, layout, implementation)."""
    lines = [f"device: {result['device']}; {', '.join(f'{k} {v}' for k, v in result['versions'].items())}; "
             f"{result['date']}",
             "",
             "| shape | pass | dtype | layout | impl | median ms | vs eager | vs compile | GB/s | of copy |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        n, c, h, _ = r["shape"]
        lines.append(f"| {r['family']} {n}x{c}x{h}x{h} | {r['pass']} | {r['dtype']} | {r['layout']} | "
                     f"{r['backend']} | {r['median_ms']:.3f} | {r['speedup_vs_eager']:.2f}x | "
                     f"{r['speedup_vs_compile']:.2f}x | {r['gbps']:.1f} | {r['floor_fraction']:.0%} |")
    return "\n".join(lines)


def summary(result):
    """Per kernel backend and pass: min / median speedup vs eager and vs torch.compile."""
    lines = []
    for backend in result["backends"]:
        for pass_name in PASSES:
            sel = [r for r in result["rows"] if r["backend"] == backend and r["pass"] == pass_name]
            if not sel:
                continue
            eager = [r["speedup_vs_eager"] for r in sel]
            comp = [r["speedup_vs_compile"] for r in sel]
            floor = [r["floor_fraction"] for r in sel]
            lines.append(f"{backend:>7} {pass_name:>13}: vs eager min {min(eager):.2f}x median "
                         f"{statistics.median(eager):.2f}x | vs compile min {min(comp):.2f}x median "
                         f"{statistics.median(comp):.2f}x | floor fraction median {statistics.median(floor):.0%}")
    return "\n".join(lines)


def plot(result, path):
    """PNG: floor fraction per shape, one bar per implementation (first dtype and layout)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    dtype, layout = rows[0]["dtype"], rows[0]["layout"]
    passes = [p for p in PASSES if any(r["pass"] == p for r in rows)]
    impls = list(dict.fromkeys(r["backend"] for r in rows))
    fig, axes = plt.subplots(len(passes), 1, figsize=(11, 3.2 * len(passes)), squeeze=False)
    for ax, pass_name in zip(axes[:, 0], passes):
        sel = [r for r in rows if r["pass"] == pass_name and r["dtype"] == dtype and r["layout"] == layout]
        short = {"se_resnet50": "SE-R50", "efficientnet_b0": "EffNet-B0"}
        labels = list(dict.fromkeys(f"{short[r['family']]}\n{r['shape'][1]}x{r['shape'][2]}" for r in sel))
        width = 0.8 / len(impls)
        for i, impl in enumerate(impls):
            vals = [r["floor_fraction"] for r in sel if r["backend"] == impl]
            ax.bar([x + i * width for x in range(len(vals))], vals, width, label=impl)
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(labels))], labels, fontsize=8)
        ax.set_ylabel("fraction of copy bandwidth")
        ax.set_title(f"{pass_name} ({dtype}, {layout}) on {result['device']}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_json(result, path):
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
