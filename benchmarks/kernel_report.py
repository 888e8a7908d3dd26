"""Per-kernel resource report for a GPU target, with no GPU: registers, spills, shared memory
and the width of global loads/stores (128-bit = vectorized), from an ahead-of-time compile.

    TRITON_INTERPRET= python benchmarks/kernel_report.py [--arch 90] [--dtype bf16 fp32 | --all]

The streaming passes (se_scale_*, and the reduction loops of se_squeeze_excite_*) should show
no spills and 128-bit global accesses; the per-sample excitation tail and the weight-gradient
GEMM load [N, C]-sized vectors and may use narrower accesses.
"""

import argparse
import sys

from senet_kernels.interpreter import env_asks_for_interpreter
from senet_kernels.triton.aot import (
    compile_config, dispatcher_configs, global_access_widths, resource_usage)


def _widths(counts):
    return " ".join(f"{bits}b:{n}" for bits, n in sorted(counts.items(), reverse=True)) or "-"


def _x_dtype(config):
    first = next(v for v in config.signature.values() if v.startswith("*"))
    weight_types = {v for k, v in config.signature.items() if k.startswith(("w1", "w2", "gw"))}
    return first[1:], (weight_types.pop()[1:] if weight_types else first[1:])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--dtype", nargs="+", default=["bf16", "fp32"],
                        help="x dtypes to report (with weights of the same dtype)")
    parser.add_argument("--all", action="store_true", help="every configuration the dispatcher picks")
    args = parser.parse_args()
    if env_asks_for_interpreter():
        sys.exit("unset TRITON_INTERPRET: the report compiles real @triton.jit kernels")

    rows = []
    for config in dispatcher_configs():
        x_dtype, w_dtype = _x_dtype(config)
        if not args.all and (x_dtype not in args.dtype or w_dtype != x_dtype):
            continue
        compiled = compile_config(config, args.arch)
        usage = resource_usage(compiled, args.arch)
        widths = global_access_widths(compiled.asm["ptx"])
        rows.append((config.label, usage, widths))

    print(f"| kernel configuration (sm_{args.arch}) | regs | spill B | smem B | global loads (bits:count) | global stores |")
    print("|---|---|---|---|---|---|")
    for label, usage, widths in rows:
        loads = _widths(widths["ld"])
        if widths["async"]:  # a software-pipelined loop loads through cp.async
            loads += f" (cp.async {_widths(widths['async'])})"
        print(f"| {label} | {usage['registers']} | {usage['spill_bytes']} | {usage['shared_bytes']} "
              f"| {loads} | {_widths(widths['st'])} |")
    spilling = [label for label, usage, _ in rows if usage["spill_bytes"]]
    print(f"\n{len(rows)} configurations, {len(spilling)} with spills" +
          (": " + ", ".join(spilling) if spilling else ""))


if __name__ == "__main__":
    main()
