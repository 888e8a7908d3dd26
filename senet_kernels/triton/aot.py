"""Ahead-of-time compilation of every Triton kernel configuration the dispatcher can pick.

The configurations are not listed by hand: the dispatcher (se_op.py) is run over a grid of
cases with launches recorded instead of run, so what is compiled is what would launch.
Needs no GPU, and must run with TRITON_INTERPRET unset (``@triton.jit`` reads it at import).

    python -m senet_kernels.triton.aot --arch 80 90      # compile all, exit 1 on any failure
"""

import argparse
import itertools
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import torch

from ..interpreter import env_asks_for_interpreter
from .launcher import recording_launches

_TRITON_TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32",
                 torch.float64: "fp64", torch.int32: "i32"}

#: (x dtype, parameter dtype) pairs the op accepts: same dtype, or fp32 weights with half x.
DTYPE_PAIRS = [(d, d) for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64)] + [
    (torch.float16, torch.float32), (torch.bfloat16, torch.float32)]
#: (H, W) covering each reduction tile (8x8 and 7x7 maps, a 3x3 "small map"), with H*W both
#: a multiple of 16 (aligned rows, vectorizable in NCHW) and not.
MAP_SIZES = [(8, 8), (7, 7), (3, 3)]
#: A map past configs.TUNED_SMALL_MAP_PIXELS, where a shipped tuning's channels_last_tile applies.
TUNED_LARGE_MAP = (15, 15)


@dataclass
class KernelConfig:
    kernel: object
    signature: dict
    constexprs: dict
    attrs: dict
    num_warps: int
    #: Only the GPU sweeps or a candidate path (configs.CANDIDATE_PATHS, taken where forced;
    #: what a shipped tuning picks is not sweep_only) launch it, on the lent H100 / H200
    #: machines: sm_90 only.
    sweep_only: bool = False

    @property
    def label(self):
        types = ",".join(f"{k}:{v}" for k, v in self.signature.items() if v != "constexpr"
                         and v.startswith("*"))
        consts = ",".join(f"{k}={_short(v)}" for k, v in self.constexprs.items())
        unaligned = [k for i, k in enumerate(self.kernel.arg_names)
                     if self.signature[k] == "i32" and (i,) not in self.attrs]
        warps = "" if self.num_warps == 4 else f" num_warps={self.num_warps}"
        return (f"{self.kernel.__name__}[{consts}]({types}){{not %16: {','.join(unaligned)}}}"
                f"{warps}")


def _short(v):
    return str(v).replace("triton.language.", "").replace("tl.", "")


def _signature(launch):
    """Triton signature, constexprs and divisibility attrs of a recorded launch, specialized
    as the runtime does: integers equal to 1 become constexprs, others get a divisibility-16
    hint when they have it, except parameters marked ``do_not_specialize`` (flags)."""
    signature, attrs, constexprs = {}, {}, dict(launch.constexprs)
    fixed = {i for i, p in enumerate(launch.kernel.params) if p.do_not_specialize}
    for i, name in enumerate(launch.kernel.arg_names):
        if name in launch.constexprs:
            signature[name] = "constexpr"
            continue
        value = launch.args[name]
        if isinstance(value, torch.Tensor):
            signature[name] = "*" + _TRITON_TYPES[value.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]  # torch allocations are 16-byte aligned
        elif isinstance(value, float):  # Triton passes a Python float as fp32
            signature[name] = "fp32"
        elif i not in fixed and value == 1:
            signature[name] = "constexpr"
            constexprs[name] = 1
        else:
            signature[name] = "i32"
            if i not in fixed and value % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return signature, attrs, constexprs


def _record_cases():
    """Run the dispatcher over every configuration-relevant case, recording the launches:
    (those of the paths it picks, with the default tuning and with each GPU's shipped one;
    those of the GPU sweeps and of the candidate paths, which only the lent machines' runs
    and tests force)."""
    from . import configs, tuning

    picked = [p for p in configs.EXCITATION_PATHS if p not in configs.CANDIDATE_PATHS]
    with recording_launches(run_too=False) as launches:
        with configs.force_tuning(configs.DEFAULT_TUNING):
            _record_paths(picked)
            _record_bn_cases()
        for tuned in tuning.shipped().values():
            # the tuned tiles in every dtype and layout (the sweeps time bf16 channels_last),
            # on small maps and on one past TUNED_SMALL_MAP_PIXELS
            with configs.force_tuning(tuned):
                _record_paths(("per_sample", "batched")
                              + (("squeeze_fc1",) if tuned.squeeze_fc1_max_pixels else ()),
                              MAP_SIZES + [TUNED_LARGE_MAP])
    with recording_launches(run_too=False) as sweep_launches:
        with configs.force_tuning(configs.DEFAULT_TUNING):
            _record_sweep_tiles()
            _record_paths(configs.CANDIDATE_PATHS)
    return launches, sweep_launches


def _record_paths(paths, map_sizes=MAP_SIZES):
    """Every dtype pair, map size, layout and tail of each excitation path in ``paths``, with
    two FC layers and with one (single FC: w2 None, whose kernels take the same constexprs
    but another runtime flag, and where the sizes may specialize differently)."""
    from . import configs
    for path, (dtype, pdtype), (h, w), channels_last, residual, post_relu, single_fc in (
            itertools.product(paths, DTYPE_PAIRS, map_sizes, (False, True), (False, True),
                              (False, True), (False, True))):
        n, c = 4, 64
        cr = c if single_fc else 16
        x = torch.randn(n, c, h, w, dtype=dtype)
        if channels_last:
            x = x.to(memory_format=torch.channels_last)
        res = torch.randn_like(x) if residual else None
        w1, w2 = torch.randn(cr, c, dtype=pdtype), torch.randn(c, cr, dtype=pdtype)
        b1, b2 = torch.randn(cr, dtype=pdtype), torch.randn(c, dtype=pdtype)
        if single_fc:
            w2 = b2 = None
        with configs.force_excitation_path(path):
            _forward_backward(x, w1, b1, w2, b2, res, post_relu, torch.randn_like(x))


def _record_bn_cases(map_sizes=MAP_SIZES):
    """The fused BatchNorm + SE op (bn_op.py): every dtype pair, map size, layout, tail and
    statistics mode (running statistics in the parameters' dtype: float32, or y's own)."""
    from .bn_op import bn_se_backward, bn_se_forward
    for (dtype, pdtype), (h, w), channels_last, residual, post_relu, batch_stats in itertools.product(
            DTYPE_PAIRS, map_sizes, (False, True), (False, True), (False, True), (False, True)):
        n, c, cr = 4, 64, 16
        y = torch.randn(n, c, h, w, dtype=dtype)
        if channels_last:
            y = y.to(memory_format=torch.channels_last)
        res = torch.randn_like(y) if residual else None
        gamma, beta = torch.rand(c, dtype=pdtype) + 0.5, torch.randn(c, dtype=pdtype)
        running = None if batch_stats else (torch.randn(c, dtype=pdtype),
                                            torch.rand(c, dtype=pdtype) + 0.5)
        w1, w2 = torch.randn(cr, c, dtype=pdtype), torch.randn(c, cr, dtype=pdtype)
        b1, b2 = torch.randn(cr, dtype=pdtype), torch.randn(c, dtype=pdtype)
        outputs = bn_se_forward(y, gamma, beta, *(running or (None, None)), w1, b1, w2, b2, res,
                                batch_stats, 1e-5, "relu", "sigmoid", post_relu)
        bn_se_backward(torch.randn_like(y), y, outputs[0] if post_relu else None, gamma, beta,
                       w1, w2, *outputs[1:7], batch_stats, residual, "relu", "sigmoid")


def _record_sweep_tiles():
    """The reductions of the GPU tile sweep (``bench.reduce_tile_sweep_cases``) as
    kernel_breakdown.py --sweep-reduce-tiles launches them: bf16, channels_last, SE + residual
    + ReLU, forward and backward, at batch 256 (their H*W splits, hence specializations,
    differ by shape and tile); and the squeeze_fc1 path on the weight-heavy shapes, as
    kernel_breakdown.py times it, with each tile of its sweep too. Nothing runs: the tensors
    are only allocated."""
    from ..bench import reduce_tile_sweep_cases, weight_heavy_shapes
    from . import configs

    for shape, tiles in reduce_tile_sweep_cases(256):
        x, w1, b1, w2, b2 = _empty_gpu_case(shape)
        for tile in tiles:
            with configs.force_reduce_tile(tile):
                _forward_backward(x, w1, b1, w2, b2, x, True, x)
    # the squeeze_fc1 path, which kernel_breakdown.py times beside the batched one, and with
    # each tile of its sweep (which times the forward only)
    from .se_op import se_forward
    for shape in weight_heavy_shapes(256):
        x, w1, b1, w2, b2 = _empty_gpu_case(shape)
        with configs.force_excitation_path("squeeze_fc1"):
            _forward_backward(x, w1, b1, w2, b2, x, True, x)
            for tile in configs.SWEEP_SQUEEZE_FC1_TILES:
                with configs.force_squeeze_fc1_tile(tile):
                    se_forward(x, w1, b1, w2, b2, x, "relu", "sigmoid", True)


def _empty_gpu_case(shape):
    """x (bf16, channels_last), w1, b1, w2, b2 of a GPU run's shape, allocated, not filled."""
    n, c, hw, cr = shape.n, shape.c, shape.hw, shape.cr
    x = torch.empty(n, c, hw, hw, dtype=torch.bfloat16).to(memory_format=torch.channels_last)
    w1, w2 = torch.empty(cr, c, dtype=torch.bfloat16), torch.empty(c, cr, dtype=torch.bfloat16)
    b1, b2 = torch.empty(cr, dtype=torch.bfloat16), torch.empty(c, dtype=torch.bfloat16)
    return x, w1, b1, w2, b2


def _forward_backward(x, w1, b1, w2, b2, residual, post_relu, grad):
    """One forward and one backward through the dispatcher (ReLU, sigmoid)."""
    from .se_op import se_backward, se_forward
    out, pooled, hidden, scale = se_forward(x, w1, b1, w2, b2, residual, "relu", "sigmoid",
                                            post_relu)
    se_backward(grad, x, out if post_relu else None, w1, w2, pooled, hidden, scale,
                residual is not None, "relu", "sigmoid")


def dispatcher_configs():
    """Every distinct (kernel, argument types, divisibility, constexprs, warps) the dispatcher
    launches, then those only the GPU sweeps and the candidate paths launch (``sweep_only``)."""
    configs = {}
    launches, sweep_launches = _record_cases()
    for sweep_only, recorded in ((False, launches), (True, sweep_launches)):
        for launch in recorded:
            signature, attrs, constexprs = _signature(launch)
            # num_warps too: the sweeps time some tiles at 4 and 8 warps
            key = (launch.kernel.__name__, tuple(signature.items()), tuple(sorted(attrs)),
                   tuple((k, _short(v)) for k, v in constexprs.items()), launch.num_warps)
            configs.setdefault(key, KernelConfig(launch.kernel, signature, constexprs, attrs,
                                                 launch.num_warps, sweep_only))
    return list(configs.values())


def compile_config(config, arch):
    import triton
    from triton.backends.compiler import GPUTarget

    src = triton.compiler.ASTSource(config.kernel, config.signature, config.constexprs, config.attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": config.num_warps})


def _ptxas():
    import triton
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


def resource_usage(compiled, arch):
    """Registers, spill bytes and shared memory, from ptxas -v on the kernel's PTX."""
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(compiled.asm["ptx"])
    try:
        gpu = f"sm_{arch}a" if arch == 90 else f"sm_{arch}"
        log = subprocess.run([_ptxas(), f"-arch={gpu}", "-v", f.name, "-o", os.devnull],
                             capture_output=True, text=True, check=True).stderr
    finally:
        os.unlink(f.name)
    regs = int(re.search(r"Used (\d+) registers", log).group(1))
    spills = sum(int(v) for v in re.findall(r"(\d+) bytes spill (?:stores|loads)", log))
    return {"registers": regs, "spill_bytes": spills, "shared_bytes": compiled.metadata.shared}


_ACCESS = re.compile(r"\b(ld|st)\.global(?:\.[a-z]+)*?(?:\.v(\d))?\.(?:b|f|u|s)(\d+)\b")
# Asynchronous global -> shared copies of a software-pipelined loop: cp.async.{ca,cg}.shared
# .global [dst], [src], bytes
_ASYNC_COPY = re.compile(r"\bcp\.async\.c[ag]\.shared\.global\s*\[[^]]*\],\s*\[[^]]*\],\s*(0x[0-9a-fA-F]+|\d+)")


def global_access_widths(ptx):
    """{"ld": {bits: count}, "st": {bits: count}, "async": {bits: count}} of the global
    loads / stores in PTX, and of the asynchronous copies from global to shared memory
    (which load instead of ld.global where the compiler pipelines a loop)."""
    widths = {"ld": {}, "st": {}, "async": {}}
    for op, vec, bits in _ACCESS.findall(ptx):
        width = int(vec or 1) * int(bits)
        widths[op][width] = widths[op].get(width, 0) + 1
    for size in _ASYNC_COPY.findall(ptx):
        width = 8 * int(size, 0)
        widths["async"][width] = widths["async"].get(width, 0) + 1
    return widths


_jobs_configs = []  # the configurations, inherited by forked workers


def _compile_status(job):
    """(index, arch) -> "ok" or the first line of the compile error."""
    index, arch = job
    try:
        compile_config(_jobs_configs[index], arch)
        return "ok"
    except Exception as e:  # report every failing configuration, not just the first
        return f"FAILED: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="compile in this many processes (default: one per CPU)")
    args = parser.parse_args(argv)
    if env_asks_for_interpreter():
        sys.exit("unset TRITON_INTERPRET: ahead-of-time compilation needs real @triton.jit kernels")
    import triton
    print(f"triton {triton.__version__} ({os.path.dirname(triton.__file__)})", flush=True)
    _jobs_configs[:] = dispatcher_configs()
    jobs = [(i, arch) for arch in args.arch for i, config in enumerate(_jobs_configs)
            if arch == 90 or not config.sweep_only]
    if args.jobs > 1:
        import multiprocessing
        # fork: workers inherit the configurations (kernels are not picklable); no CUDA is used
        with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
            statuses = pool.map(_compile_status, jobs, chunksize=4)
    else:
        statuses = [_compile_status(job) for job in jobs]
    for (index, arch), status in zip(jobs, statuses):
        print(f"sm_{arch} {_jobs_configs[index].label}: {status}")
    failures = sum(status != "ok" for status in statuses)
    total = len(jobs)
    sweep = sum(config.sweep_only for config in _jobs_configs)
    print(f"compiled {total - failures} of {total} kernel configurations "
          f"({len(_jobs_configs) - sweep} the dispatcher picks, per target, and {sweep} of the GPU "
          f"sweeps and candidate paths, for sm_90; targets {args.arch})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
