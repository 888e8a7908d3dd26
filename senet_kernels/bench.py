"""``python -m senet_kernels bench``: time the SE op beside eager PyTorch and torch.compile.

Every available kernel backend (on the device it serves), eager PyTorch (the SE block as
timm runs it, ``baselines.eager_se``) and ``torch.compile`` of that same eager code run the
same passes on the same tensors in one process, so the ratios are measured under the same
conditions:

    fwd           the SE block forward (SE-ResNet: relu/sigmoid; EfficientNet: silu/sigmoid)
    res_relu_fwd  SE + residual + ReLU forward (SE-ResNet blocks only)
    fwd_bwd       forward + backward (input, residual and weight gradients); SE-ResNet rows
                  include the residual + ReLU tail

and, at the SE-ResNet-50 shapes, SE-ResNet's bn3 in front of the block (the BatchNorm
absorbed into the SE op, ``bn_squeeze_excite``; timed after every SE case):

    bn_res_relu_fwd  BatchNorm + SE + residual + ReLU forward, the BatchNorm as in a training
                     step's forward: batch statistics, running statistics updated (no_grad, as
                     the other forward passes)
    bn_fwd_bwd       the same forward + backward (gradients of y, the BatchNorm and SE
                     parameters and the residual)

each timed as ``bn_fused`` (``bn_squeeze_excite(..., backend="auto")``, where fused kernels
exist for the device: the C++ kernels on the CPU, none yet on a GPU, where "auto" would run
the PyTorch reference, so it is not timed there), ``bn+<backend>`` (the BatchNorm, then the
fused SE op: what a converted model runs where the BatchNorm is not absorbed), eager (the
BatchNorm, then ``eager_se``: ``baselines.eager_bn_se``) and torch.compile of that block.

Times: on the CPU, medians of torch.utils.benchmark. On a GPU, two per row: ``median_ms`` the
wall time per call in a synchronized loop (what a caller waits, host overhead included) and
``gpu_ms`` the GPU time per call, from replaying calls captured in a CUDA graph (no host
overhead); speedups compare wall times, the floor fraction uses the GPU time. torch.compile
compiles the block's linear form with dynamic shapes (one graph per pass, layout and activation
instead of one per shape; a few rows also time a static compile of the conv form, see
``compiled_baseline``). On a GPU ``python -m senet_kernels bench`` has worker processes compile
those graphs and our Triton kernels while the check runs (bench_warmup.py); the timed loop
finds them in the compilers' on-disk caches, and times each case as soon as its compile is
done, while the workers compile the others. GB/s counts the compulsory
traffic of a pass, in units of one activation tensor: fwd 2 (read x, write out),
res_relu_fwd 3 (+ read residual), fwd_bwd 5 without the tail (forward 2; backward reads grad
and x, writes grad_x) or 8 with it (forward 3; backward reads grad, x, out, writes grad_x and
grad_residual). With the BatchNorm the statistics span the whole batch, so at these sizes
(beyond any cache) each direction must read y twice (docs/design.md, "What is saved, and the
traffic", the absorbed column): bn_res_relu_fwd 4 (read y; read y and the residual, write
out), bn_fwd_bwd 11 (forward 4; backward 7: read grad, out, y, write grad_residual; read it
and y, write grad_y). The floor fraction compares that with a copy of a tensor of the same size,
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

from . import available_backends, bn_squeeze_excite, squeeze_excite
from .baselines import batch_norm_train, eager_bn_se, eager_se, linear_bn_se, linear_se
from .bn_functional import bn_fused_kernels_for
from .bench_schedule import BASELINE, PARTS, Schedule, part_of
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
#: traffic in activation tensors (fwd_bwd: 5 or 8, see traffic_tensors)
PASSES = {"fwd": 2, "res_relu_fwd": 3, "fwd_bwd": None, "bn_res_relu_fwd": 4, "bn_fwd_bwd": 11}
#: The passes with SE-ResNet's BatchNorm in front of the SE block (SE-ResNet shapes only).
BN_PASSES = ("bn_res_relu_fwd", "bn_fwd_bwd")


def shapes(sizes):
    n = BATCH[sizes]
    return ([Shape("se_resnet50", n, c, hw, c // 16) for c, hw in RESNET_STAGES] +
            [Shape("efficientnet_b0", n, c, hw, cr) for c, hw, cr in EFFICIENTNET_SE])


def weight_heavy_shapes(n):
    """The GPU run's shapes at batch n that the traffic model sends down the batched path (bf16)."""
    from .triton import configs
    return [s for s in (Shape(s.family, n, s.c, s.hw, s.cr) for s in shapes("gpu"))
            if configs.use_batched_excitation(n, s.c, s.cr, s.hw * s.hw, 2, 2)]


def first_stage(n):
    """SE-ResNet-50's first stage at batch n (the per-sample path)."""
    c, hw = RESNET_STAGES[0]
    return Shape("se_resnet50", n, c, hw, c // 16)


def reduce_tile_sweep_cases(n):
    """[(Shape, tiles)] a GPU run of benchmarks/kernel_breakdown.py --sweep-reduce-tiles times
    (and the ahead-of-time compile covers): every tile of ``configs.SWEEP_REDUCE_TILES`` on the
    weight-heavy shapes, and ``SWEEP_FIRST_STAGE_TILES`` on SE-ResNet-50's first stage."""
    from .triton import configs
    return ([(shape, configs.SWEEP_REDUCE_TILES) for shape in weight_heavy_shapes(n)] +
            [(first_stage(n), configs.SWEEP_FIRST_STAGE_TILES)])


def passes_for(shape):
    """The SE passes of a shape (the BatchNorm passes: bn_passes_for)."""
    return ("fwd", "res_relu_fwd", "fwd_bwd") if shape.family == "se_resnet50" else ("fwd", "fwd_bwd")


def bn_passes_for(shape):
    """The BatchNorm + SE passes of a shape: SE-ResNet's only (bn3 in front of the SE)."""
    return BN_PASSES if shape.family == "se_resnet50" else ()


def is_bn_pass(pass_name):
    return pass_name in BN_PASSES


def options_for(shape):
    """(activation, whether the residual + ReLU tail is part of the block)."""
    return ("relu", True) if shape.family == "se_resnet50" else ("silu", False)


def traffic_tensors(pass_name, tail):
    """Compulsory traffic of a pass in activation tensors (the module docstring)."""
    if pass_name == "fwd_bwd":
        return 8 if tail else 5
    return PASSES[pass_name]


def median_seconds(fn, min_run_time):
    """Median seconds per call of ``fn`` (torch.utils.benchmark, at least min_run_time)."""
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


def cuda_wall_seconds(fn, min_run_time, rounds=5):
    """Median over rounds of the time per call of back-to-back calls, synchronized."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    once = max(time.perf_counter() - start, 1e-6)
    calls = max(1, min(200, int(min_run_time / rounds / once)))
    return statistics.median(timed_round(fn, calls, torch.cuda.synchronize)[1]
                             for _ in range(rounds))


def timed_round(fn, calls, sync):
    """(issue, wall) seconds per call of ``calls`` back-to-back calls of ``fn``: the time the
    Python thread takes to issue them, and the time until ``sync`` (waiting for the device;
    a no-op on the CPU) returns after the last. Issue close to wall means host-bound."""
    sync()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    issued = time.perf_counter()
    sync()
    return (issued - start) / calls, (time.perf_counter() - start) / calls


def cuda_graph_seconds(fn, approx_seconds, replay_seconds=0.01):
    """GPU time per call: ``fn`` captured in a CUDA graph (as many calls as fill about
    replay_seconds), replayed; None if the call cannot be captured."""
    calls = max(1, min(50, int(replay_seconds / max(approx_seconds, 1e-6))))
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(calls):
                fn()
    except Exception:  # noqa: BLE001 - an uncapturable call reports no GPU time
        torch.cuda.synchronize()
        return None
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    samples = []
    for _ in range(3):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) * 1e-3 / calls)
    return statistics.median(samples)


def copy_bandwidth(numel, dtype, device, min_run_time):
    """Bytes read + written per second by a copy of numel elements (GPU time on a GPU)."""
    src = torch.randn(numel, device=device).to(dtype)
    dst = torch.empty_like(src)

    def copy():
        dst.copy_(src)
    if device.type == "cuda":
        seconds = cuda_graph_seconds(copy, cuda_wall_seconds(copy, min_run_time))
    else:
        seconds = median_seconds(copy, min_run_time)
    return 2 * src.numel() * src.element_size() / seconds


def make_step(fn, tensors, activation, with_residual, backward):
    """A zero-argument callable running one pass of ``fn`` (squeeze_excite-like) on tensors
    (``case_inputs``'): ``fn(x, w1, b1, w2, b2, residual, *bn)``, where a BatchNorm case's
    tensors end with ``bn`` = (weight, bias, running_mean, running_var, num_batches_tracked).
    Backward: the gradients of every input that requires one."""
    x, w1, b1, w2, b2, res, *bn = tensors
    residual = res if with_residual else None
    kwargs = dict(activation=activation, post_relu=with_residual)
    if not backward:
        def step():
            with torch.no_grad():
                return fn(x, w1, b1, w2, b2, residual, *bn, **kwargs)
        return step
    grad = torch.randn_like(x)
    leaves = ([x, w1, b1, w2, b2] + ([res] if with_residual else [])
              + [t for t in bn if t.requires_grad])

    def step():
        return torch.autograd.grad(fn(x, w1, b1, w2, b2, residual, *bn, **kwargs), leaves, grad)
    return step


def backend_fn(name):
    def fn(*args, **kwargs):
        return squeeze_excite(*args, backend=name, **kwargs)
    return fn


def bn_fused(y, w1, b1, w2, b2, residual, bn_weight, bn_bias, running_mean, running_var,
             num_batches_tracked, **kwargs):
    """The fused BatchNorm + SE op in training mode, as a converted model's block calls it."""
    return bn_squeeze_excite(y, bn_weight, bn_bias, running_mean, running_var, w1, b1, w2, b2,
                             residual, training=True, num_batches_tracked=num_batches_tracked,
                             backend="auto", **kwargs)


def bn_then_se_op(backend):
    """The BatchNorm (``baselines.batch_norm_train``), then the fused SE op on ``backend``:
    what ``bn_se_tail`` runs where the BatchNorm is not absorbed."""
    def fn(y, w1, b1, w2, b2, residual, bn_weight, bn_bias, running_mean, running_var,
           num_batches_tracked, **kwargs):
        x = batch_norm_train(y, bn_weight, bn_bias, running_mean, running_var,
                             num_batches_tracked)
        return squeeze_excite(x, w1, b1, w2, b2, residual, backend=backend, **kwargs)
    return fn


def configure_compiler():
    """Dynamo settings of every process that compiles the baseline (the timed one and the
    warm-up workers: their graphs must be the same for the workers' cache entries to serve).

    One compiled function serves every shape, layout and dtype here: past dynamo's default of
    8 recompiles it would silently run eager, and the "compile" column would be eager. Duck
    sizing off: with it, dynamic shapes give sizes of equal value one symbol, so N = C = 256
    (SE-ResNet-50's first stage at batch 256) compiles a graph that the next stage's shapes
    fail to match (13 graphs instead of 10 over the GPU cases)."""
    allow_recompiles()
    try:
        import torch.fx.experimental._config as fx_config
    except ImportError:
        return
    if hasattr(fx_config, "use_duck_shape"):
        fx_config.use_duck_shape = False


def compiled_baseline():
    """torch.compile of the SE block: its linear form with dynamic shapes (one compile per
    pass, layout and activation, see baselines.linear_se). On the CPU it is also the faster
    baseline: over the 40 SE cases on the CPU (2 cores, fp32) it took 0.76x the time of a
    static compile of eager_se (median; 0.48x to 1.19x) and compiled in 34 s instead of 112 s."""
    return torch.compile(linear_se, dynamic=True)


def compiled_bn_baseline():
    """torch.compile of the BatchNorm + SE block (``baselines.linear_bn_se``), dynamic shapes
    as ``compiled_baseline``."""
    return torch.compile(linear_bn_se, dynamic=True)


#: (family, C, H*W, pass, layout) rows where a run also times a static compile of eager_se,
#: to check that the dynamic-shape baseline is as fast (see the summary).
STATIC_COMPILE_CHECKS = {("se_resnet50", 256, 56, "res_relu_fwd", "channels_last"),
                         ("se_resnet50", 2048, 7, "res_relu_fwd", "channels_last"),
                         ("se_resnet50", 2048, 7, "fwd_bwd", "channels_last")}


def timed_backends(device):
    """Kernel backends that serve tensors on ``device`` and are worth timing there."""
    status = available_backends()
    if device.type == "cuda":
        return [b for b in ("triton", "cuda") if status[b].available]
    return ["cpu"] if status["cpu"].available else []  # interpreted Triton: not worth timing


def allow_recompiles(limit=1024):
    """Raise dynamo's recompile limits to ``limit`` (see configure_compiler)."""
    import torch._dynamo.config as dynamo_config
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                 "accumulated_cache_size_limit"):
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, max(getattr(dynamo_config, name), limit))


@dataclass(frozen=True)
class Case:
    """One row group of the table: a shape, a pass, a dtype and a layout."""
    shape: Shape
    pass_name: str
    dtype: str
    layout: str

    @property
    def label(self):
        return f"{self.shape.label} {self.pass_name} {self.layout}"

    @property
    def kind(self):
        """"bn" for the BatchNorm + SE passes, else "se": which implementations time it."""
        return "bn" if is_bn_pass(self.pass_name) else "se"

    @property
    def compile_group(self):
        """Cases of one group share the baseline's compiled graph (dynamic shapes): pass,
        layout, dtype and family (activation, tail)."""
        return (self.pass_name, self.layout, self.dtype, self.shape.family)


def cases(sizes="cpu", dtypes=("float32",), layouts=("nchw", "channels_last"), passes=None):
    """Every (shape, pass, dtype, layout) of a run, in the order they are timed: the SE
    cases, then the BatchNorm + SE cases (a time budget leaves those out first). ``passes``:
    only these passes (None: all of PASSES)."""
    def wanted(p):
        return passes is None or p in passes
    return ([Case(s, p, d, l) for s in shapes(sizes) for p in passes_for(s) if wanted(p)
             for d in dtypes for l in layouts] +
            [Case(s, p, d, l) for s in shapes(sizes) for p in bn_passes_for(s) if wanted(p)
             for d in dtypes for l in layouts])


def implementations(device):
    """{case kind: [(name, fn)]} timed on every case of that kind (``Case.kind``).

    "se": the kernel backends, eager and torch.compile. "bn": ``bn_fused`` where fused
    BatchNorm + SE kernels exist for the device, ``bn+<b>`` (the BatchNorm, then the fused SE
    op on the first kernel backend: what "auto" picks), eager and torch.compile."""
    backends = timed_backends(device)
    se = ([(b, backend_fn(b)) for b in backends] +
          [("eager", eager_se), ("compile", compiled_baseline())])
    bn = ([("bn_fused", bn_fused)] if bn_fused_kernels_for(torch.empty(0, device=device))
          else [])
    bn += [(f"bn+{b}", bn_then_se_op(b)) for b in backends[:1]]
    bn += [("eager", eager_bn_se), ("compile", compiled_bn_baseline())]
    return {"se": se, "bn": bn}


def case_implementations(case, impls):
    """``impls[case.kind]`` plus, on the rows of STATIC_COMPILE_CHECKS, a static compile of
    eager_se."""
    s = case.shape
    chosen = impls[case.kind]
    if (s.family, s.c, s.hw, case.pass_name, case.layout) in STATIC_COMPILE_CHECKS:
        return chosen + [("compile_static", torch.compile(eager_se, dynamic=False))]
    return chosen


def case_inputs(case, device):
    """(tensors, activation, with_residual, backward) of a case: fresh random inputs."""
    shape = case.shape
    activation, tail = options_for(shape)
    with_residual = tail and case.pass_name != "fwd"
    inputs = make_inputs(shape.n, shape.c, shape.hw, shape.hw, shape.cr,
                         dtype=getattr(torch, case.dtype),
                         channels_last=case.layout == "channels_last", residual=True,
                         device=device, seed=shape.c, draw_on_device=True)
    tensors = [inputs[k] for k in ("x", "w1", "b1", "w2", "b2", "residual")]
    backward = case.pass_name in ("fwd_bwd", "bn_fwd_bwd")
    if backward:
        tensors = [t.requires_grad_() for t in tensors]
    if case.kind == "bn":
        tensors += bn_inputs(shape.c, getattr(torch, case.dtype), device, seed=shape.c + 1,
                             requires_grad=backward)
    return tensors, activation, with_residual, backward


def bn_inputs(c, dtype, device, seed, requires_grad):
    """[weight, bias, running_mean, running_var, num_batches_tracked] of a BatchNorm over c
    channels: affine parameters near 1 and 0 (random), running statistics as a fresh
    ``nn.BatchNorm2d`` has them, in ``dtype`` (a model cast to it), drawn on ``device``."""
    gen = torch.Generator(device=device).manual_seed(seed)
    weight = 1 + 0.1 * torch.randn(c, generator=gen, device=device)
    bias = 0.1 * torch.randn(c, generator=gen, device=device)
    affine = [t.to(dtype).requires_grad_(requires_grad) for t in (weight, bias)]
    stats = [torch.zeros(c, device=device, dtype=dtype), torch.ones(c, device=device, dtype=dtype)]
    return affine + stats + [torch.zeros((), device=device, dtype=torch.long)]


def compile_cache_counters():
    """{counter: count} so far in this process: Inductor's FX-graph cache and AOTAutograd's
    cache (each compiled graph is a hit or a miss of one of them)."""
    from torch._dynamo.utils import counters
    return {"fxgraph_hit": counters["inductor"]["fxgraph_cache_hit"],
            "fxgraph_miss": counters["inductor"]["fxgraph_cache_miss"],
            "aot_autograd_hit": counters["aot_autograd"]["autograd_cache_hit"],
            "aot_autograd_miss": counters["aot_autograd"]["autograd_cache_miss"]}


def run(todo, sizes, min_run_time=0.2, progress=True, source=None, deadline=None):
    """Time every case of ``todo`` (from ``cases``, of the batch sizes ``sizes``); returns the
    result dict written by --json, rows in ``todo``'s order.

    Each case is timed in two parts, in the order of bench_schedule.Schedule: ``source``
    reports the parts the warm-up workers have compiled (None: no workers), and no part starts
    after ``deadline`` (a time.perf_counter() value; None: no limit). A case whose baseline
    part was not timed has no torch.compile rows and no speedup vs compile; the result's
    ``untimed`` lists such cases per part."""
    configure_compiler()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    impls = implementations(device)
    bar = progress_bar(len(todo) * len(PARTS), progress, "bench")
    cache_before = compile_cache_counters()
    start = time.perf_counter()
    # per position: wall and GPU seconds per implementation, and the traffic of the pass
    times, gpu_times, traffic, bandwidth = {}, {}, {}, {}
    schedule = Schedule(len(todo), source, deadline)
    for index, (position, part) in enumerate(schedule, 1):
        case = todo[position]
        tensors, activation, with_residual, backward = case_inputs(case, device)
        x = tensors[0]
        spent = []
        for name, fn in case_implementations(case, impls):
            if part_of(name) != part:
                continue
            bar.set_postfix_str(f"{case.label}: {name}")
            step = make_step(fn, tensors, activation, with_residual, backward)
            began = time.perf_counter()
            step()  # warm-up (and compilation)
            if device.type == "cuda":
                torch.cuda.synchronize()
            warm = time.perf_counter()
            case_times = times.setdefault(position, {})
            if device.type == "cuda":
                case_times[name] = cuda_wall_seconds(step, min_run_time)
                gpu_times.setdefault(position, {})[name] = cuda_graph_seconds(
                    step, case_times[name])
            else:
                case_times[name] = median_seconds(step, min_run_time)
            spent.append(f"{name} {warm - began:.1f}+{time.perf_counter() - warm:.1f}")
        key = (x.numel(), x.dtype)
        if key not in bandwidth:
            bandwidth[key] = copy_bandwidth(*key, device, min_run_time)
        traffic[position] = (traffic_tensors(case.pass_name, with_residual) * x.numel()
                             * x.element_size(), bandwidth[key])
        bar.update(1)
        if not progress:  # a log line per part instead: where a slow run spends its time
            # (seconds of each implementation's first call, which compiles, + of its timing)
            print(f"[{index}/{len(todo) * len(PARTS)}] {case.label} {part}: "
                  f"{time.perf_counter() - start:.0f} s ({', '.join(spent)} s)", flush=True)
    bar.close()
    cache_after = compile_cache_counters()
    rows = [row for position in sorted(times) for row in _rows(
        todo[position], times[position], gpu_times.get(position, {}), *traffic[position])]
    return {"device": describe_device(device), "date": time.strftime("%Y-%m-%d"),
            "versions": versions(), "sizes": sizes, "backends": timed_backends(device),
            "triton_tuning": triton_tuning(device), "rows": rows,
            "phases": {"timing_seconds": time.perf_counter() - start,
                       "parts_timed_as_compiled": schedule.from_workers,
                       "out_of_time": schedule.out_of_time},
            "untimed": {part: [todo[p].label for p in schedule.remaining(part)] for part in PARTS},
            "compile_cache": {k: cache_after[k] - cache_before[k] for k in cache_after}}


def _rows(case, times, gpu_times, nbytes, bandwidth):
    """The table rows of one case: one per implementation timed."""
    shape = case.shape
    rows = []
    for name, seconds in times.items():
        floor_seconds = gpu_times.get(name) or seconds
        gbps = nbytes / floor_seconds / 1e9
        rows.append(dict(backend=name, shape=[shape.n, shape.c, shape.hw, shape.hw],
                         rd_channels=shape.cr, family=shape.family, dtype=case.dtype,
                         layout=case.layout, **{"pass": case.pass_name},
                         median_ms=seconds * 1e3,
                         gpu_ms=None if gpu_times.get(name) is None else gpu_times[name] * 1e3,
                         speedup_vs_eager=times["eager"] / seconds,
                         speedup_vs_compile=(times["compile"] / seconds if "compile" in times
                                             else None),
                         gbps=gbps, floor_fraction=gbps * 1e9 / bandwidth))
    return rows


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


def triton_tuning(device):
    """The Triton backend's tuning on ``device`` (triton/tuning.py), in one line."""
    from .triton import tuning
    return tuning.describe(tuning.for_device(device))


def progress_bar(total, enabled, desc):
    try:
        from tqdm import tqdm
        return tqdm(total=total, disable=not enabled, desc=desc, leave=False)
    except ImportError:
        class NoBar:
            def update(self, n):
                pass

            def set_postfix_str(self, text):
                pass

            def close(self):
                pass
        return NoBar()


def format_table(result):
    """Markdown table: one line per (shape, pass, dtype, layout, implementation)."""
    lines = [f"device: {result['device']}; {', '.join(f'{k} {v}' for k, v in result['versions'].items())}; "
             f"{result['date']}"
             + (f"; Triton tuning: {result['triton_tuning']}" if result.get("triton_tuning") else ""),
             "",
             "| shape | pass | dtype | layout | impl | median ms | GPU ms | vs eager | vs compile | GB/s | of copy |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        n, c, h, _ = r["shape"]
        gpu = "-" if r.get("gpu_ms") is None else f"{r['gpu_ms']:.3f}"
        lines.append(f"| {r['family']} {n}x{c}x{h}x{h} | {r['pass']} | {r['dtype']} | {r['layout']} | "
                     f"{r['backend']} | {r['median_ms']:.3f} | {gpu} | {r['speedup_vs_eager']:.2f}x | "
                     f"{_ratio(r['speedup_vs_compile'])} | {r['gbps']:.1f} | {r['floor_fraction']:.0%} |")
    return "\n".join(lines)


def _ratio(value):
    return "-" if value is None else f"{value:.2f}x"


def phase_lines(result):
    """Where the run's time went: check, cache warm-up, timing; compiler cache hits."""
    phases, lines = result.get("phases", {}), []
    if phases.get("total_seconds") is not None:
        parts = [f"{phases['total_seconds']:.0f} s in all"]
        if phases.get("check_seconds") is not None:
            beside = " (beside the compiling and timing)" if phases.get("check_beside_timing") else ""
            parts.append(f"check {phases['check_seconds']:.0f} s{beside}")
        warm = phases.get("warm_up")
        if warm:
            parts.append(f"compiler caches warmed by {warm['workers']} workers in "
                         f"{warm['seconds']:.0f} s ({warm['cases_done']}/{warm['cases']} cases"
                         f"{', stopped at the time limit' if warm['timed_out'] else ''})")
        parts.append(f"timing {phases['timing_seconds']:.0f} s")
        if phases.get("parts_timed_as_compiled"):
            parts.append(f"{phases['parts_timed_as_compiled']} case parts timed as the workers "
                         f"compiled them, beside their compiling")
        lines.append("main job: " + ", ".join(parts))
        lines.extend(untimed_lines(result))
        for error in (warm or {}).get("errors", []):
            lines.append(f"  a warm-up worker failed (its cases compiled while timing): {error}")
    cache = result.get("compile_cache")
    if cache:
        lines.append(f"torch.compile graphs while timing: {cache['fxgraph_miss']} compiled, "
                     f"{cache['fxgraph_hit']} from Inductor's cache; AOTAutograd cache "
                     f"{cache['aot_autograd_hit']} hits, {cache['aot_autograd_miss']} misses")
    return lines


def untimed_lines(result):
    """What the time budget left out, if anything."""
    untimed = result.get("untimed") or {}
    kernels, baseline = untimed.get("kernels", []), untimed.get("baseline", [])
    if not kernels and not baseline:
        return []
    budget = result.get("phases", {}).get("budget_seconds")
    why = f"the {budget:g} s time budget" if budget else "the time budget"
    baseline_only = [label for label in baseline if label not in kernels]
    lines = [f"NOT TIMED within {why} (--budget 0 times everything): "
             f"{len(kernels)} cases entirely, and the torch.compile baseline of "
             f"{len(baseline_only)} more (their speedups vs compile are missing)"]
    lines += [f"  untimed: {label}" for label in kernels]
    lines += [f"  no torch.compile timing: {label}" for label in baseline_only]
    return lines


def summary(result):
    """Where the time went, then per implementation of ours (kernel backends, and in the
    BatchNorm passes bn_fused and bn+<backend>) and pass: min / median speedup vs eager and
    vs torch.compile; then bn_fused against the BatchNorm followed by the fused SE op."""
    lines = phase_lines(result)
    rows = result["rows"]
    static = [r for r in rows if r["backend"] == "compile_static"]
    for r in static:
        dynamic = next(d for d in result["rows"] if d["backend"] == "compile" and all(
            d[k] == r[k] for k in ("shape", "pass", "dtype", "layout")))
        ratio = (r["gpu_ms"] or r["median_ms"]) / (dynamic["gpu_ms"] or dynamic["median_ms"])
        lines.append(f"torch.compile baseline, {r['family']} {r['shape']} {r['pass']} {r['layout']}: "
                     f"static compile of eager_se takes {ratio:.2f}x the time of the dynamic one")
    # ours: every implementation but the baselines (the kernel backends; with the BatchNorm
    # cases, the fused BatchNorm + SE op and the BatchNorm then the fused SE op)
    ours = dict.fromkeys(r["backend"] for r in rows
                         if r["backend"] != "eager" and part_of(r["backend"]) != BASELINE)
    for backend in ours:
        for pass_name in PASSES:
            sel = [r for r in result["rows"] if r["backend"] == backend and r["pass"] == pass_name]
            if not sel:
                continue
            eager = [r["speedup_vs_eager"] for r in sel]
            comp = [r["speedup_vs_compile"] for r in sel if r["speedup_vs_compile"] is not None]
            floor = [r["floor_fraction"] for r in sel]
            vs_compile = (f"vs compile min {min(comp):.2f}x median {statistics.median(comp):.2f}x"
                          f"{'' if len(comp) == len(sel) else f' ({len(comp)} of {len(sel)} rows)'}"
                          if comp else "vs compile -")
            lines.append(f"{backend:>7} {pass_name:>13}: vs eager min {min(eager):.2f}x median "
                         f"{statistics.median(eager):.2f}x | {vs_compile} | floor fraction "
                         f"median {statistics.median(floor):.0%}")
    lines.extend(bn_fused_lines(rows))
    return "\n".join(lines)


def bn_fused_lines(rows):
    """Per BatchNorm pass: how much faster bn_fused is than the BatchNorm followed by the
    fused SE op (bn+<backend>, wall times) on the same case; nothing without both."""
    lines = []
    for pass_name in BN_PASSES:
        fused = [r for r in rows if r["backend"] == "bn_fused" and r["pass"] == pass_name]
        for other in dict.fromkeys(r["backend"] for r in rows if r["backend"].startswith("bn+")):
            ratios = [o["median_ms"] / f["median_ms"] for f in fused for o in rows
                      if o["backend"] == other and all(
                          o[k] == f[k] for k in ("shape", "pass", "dtype", "layout"))]
            if ratios:
                lines.append(f"bn_fused {pass_name}: vs {other} (the BatchNorm, then the fused "
                             f"SE op) min {min(ratios):.2f}x median "
                             f"{statistics.median(ratios):.2f}x over {len(ratios)} cases")
    return lines


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


def write_json(result, path, quiet=False):
    """Write a benchmark's result dict to path (used by every benchmark script); ``quiet`` for
    the scripts that rewrite it after each row, so that a run stopped by a time limit keeps
    what it measured."""
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    if not quiet:
        print(f"wrote {path}")
