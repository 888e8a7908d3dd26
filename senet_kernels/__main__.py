"""Command line: ``python -m senet_kernels bench`` (the main job) and ``check``.

check: detects the hardware, then runs every available backend against the float64 reference
on SE-ResNet-like shapes (every activation/gate, SE-ResNet tail, both layouts, fp32 and bf16):
forward and all gradients. Without a GPU the Triton kernels run through the Triton
interpreter (correct, but far too slow to time). Exit status 1 when any check fails.

bench: the check, then timings of every available backend beside eager PyTorch and
torch.compile (see senet_kernels/bench.py) as a table, with --json / --plot outputs. On a GPU
it times batch-256 shapes in bfloat16 by default, on the CPU batch 8 in float32. On a GPU the
check runs in a process of its own while worker processes compile and this one times
(bench_warmup.py); its printout comes before the table. On the CPU it runs first. Nothing
starts after --budget seconds (bench_schedule.py); the summary names what that left out.
"""

import argparse
import os
import sys

import torch


def _ensure_triton_interpreter_without_gpu(argv):
    """Without a GPU, re-run this command with TRITON_INTERPRET=1.

    Triton reads the variable when kernels are defined, and ``import torch`` followed by any
    use of torch._dynamo (``import senet_kernels`` uses torch.compiler and torch.library, which
    do) imports triton when it is installed: set after that, it would come too late.
    """
    if torch.cuda.is_available() or "TRITON_INTERPRET" in os.environ:
        return
    env = dict(os.environ, TRITON_INTERPRET="1")
    os.execve(sys.executable, [sys.executable, "-m", "senet_kernels", *argv], env)


def check(args):
    from .check import run_checks
    failures = run_checks()
    print("\nall checks passed" if not failures else f"\n{failures} checks FAILED")
    return 1 if failures else 0


#: Seconds after the start past which the main job times nothing more (--budget): on a GPU the
#: job then ends within a minute of its command (imports, the part being timed, the report),
#: its untimed parts named in the summary. On the CPU the SE cases take about 1.5 minutes
#: (2.7 on a first run) and the BatchNorm + SE cases after them about one more (timed apart:
#: 65 s, 36 s of it compiling their torch.compile graphs, one thread on a loaded 2-core
#: machine): 300 s lets a first run time them all.
DEFAULT_BUDGET = {"cuda": 50.0, "cpu": 300.0}
#: The main job's passes (senet_kernels.bench.PASSES; spelled out so that parsing the command
#: line imports nothing more of the package).
BENCH_PASSES = ("fwd", "res_relu_fwd", "fwd_bwd", "bn_res_relu_fwd", "bn_fwd_bwd")


def bench(args):
    import time

    from . import bench as bench_module
    from .bench_warmup import CheckProcess, WarmUp, check_shards, compile_groups, default_workers

    start = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.sizes is None:
        args.sizes = "gpu" if device.type == "cuda" else "cpu"
    if args.dtype is None:
        args.dtype = ["bfloat16"] if device.type == "cuda" else ["float32"]
    min_run_time = args.min_run_time
    if min_run_time is None:
        min_run_time = 0.05 if args.sizes == "gpu" else 0.2
    budget = args.budget
    if budget is None:
        budget = DEFAULT_BUDGET[device.type]
    deadline = start + budget if budget > 0 else None
    cases = bench_module.cases(args.sizes, args.dtype, args.layout, args.passes)
    workers = args.warm_workers
    if workers is None:
        workers = default_workers(device, compile_groups(cases))
    warm_up = WarmUp.start(cases, workers, time_limit=budget if budget > 0 else 120.0)
    # With workers (a GPU), the check runs in a process of its own beside the compiling and
    # the timing (CheckProcess); without (the CPU's two cores), first, on its own.
    check_process = (CheckProcess.start(check_shards(workers))
                     if warm_up and not args.skip_check else None)
    if warm_up:
        print(f"{len(cases)} cases on {bench_module.describe_device(device)}: "
              f"{len(warm_up.processes)} worker processes compile, each case is timed once "
              f"compiled{'; the correctness check runs beside, its report follows the timings' if check_process else ''}",
              flush=True)
    failures, check_seconds = 0, None
    if not warm_up and not args.skip_check:
        from .check import run_checks
        failures = run_checks()
        check_seconds = time.perf_counter() - start
    # each case is timed as soon as a worker has compiled it, the rest after them
    try:
        result = bench_module.run(cases, args.sizes, min_run_time=min_run_time,
                                  progress=not args.no_progress, source=warm_up,
                                  deadline=deadline)
    finally:  # workers still compiling when the timing fails must not outlive it
        warmed = warm_up.finish() if warm_up else None
    if warmed:
        print(f"compiler caches warmed by {warmed['workers']} workers: {warmed['cases_done']}/"
              f"{warmed['cases']} cases in {warmed['seconds']:.0f} s", flush=True)
    if check_process:
        failures, text, check_seconds = check_process.result()
        print(text.rstrip())
        if failures is None:  # a check that could not run is a failed check
            failures = 1
    result["phases"].update(check_seconds=check_seconds, check_beside_timing=bool(check_process),
                            warm_up=warmed, budget_seconds=budget or None,
                            total_seconds=time.perf_counter() - start)
    print()
    print(bench_module.format_table(result))
    print()
    print(bench_module.summary(result))
    if args.json:
        bench_module.write_json(result, args.json)
    if args.plot:
        bench_module.plot(result, args.plot)
        print(f"wrote {args.plot}")
    if failures:
        print(f"\n{failures} correctness checks FAILED")
    return 1 if failures else 0


def build_parser():
    """The command line's parser (bench, check, train)."""
    parser = argparse.ArgumentParser(prog="python -m senet_kernels", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="correctness of every available backend")
    p.set_defaults(func=check)
    b = sub.add_parser("bench", help="correctness check, then timings vs eager and torch.compile")
    b.add_argument("--sizes", choices=("cpu", "gpu"), default=None,
                   help="batch 8 or batch 256 shapes (default: gpu when a GPU is visible, else cpu)")
    b.add_argument("--dtype", nargs="+", default=None,
                   choices=("float32", "float16", "bfloat16"),
                   help="default: bfloat16 on a GPU, float32 on the CPU")
    b.add_argument("--layout", nargs="+", default=["nchw", "channels_last"],
                   choices=("nchw", "channels_last"))
    b.add_argument("--passes", nargs="+", default=None, choices=BENCH_PASSES,
                   help="only these passes (default: all; the bn_* passes put SE-ResNet's "
                        "BatchNorm in front of the SE block, at the SE-ResNet shapes)")
    b.add_argument("--min-run-time", type=float, default=None,
                   help="seconds per measurement (default 0.2 on the CPU, 0.05 with --sizes gpu)")
    b.add_argument("--json", help="write the results (device, versions, rows) here")
    b.add_argument("--plot", help="write a PNG of the floor fraction per shape and backend here")
    b.add_argument("--skip-check", action="store_true", help="skip the correctness check")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.add_argument("--budget", type=float, default=None,
                   help="seconds after the start past which no more is timed; what is left "
                        "is named in the summary (default: 50 on a GPU, 300 on the CPU; "
                        "0: no limit)")
    b.add_argument("--warm-workers", type=int, default=None,
                   help="worker processes compiling (warming the compiler caches) while "
                        "this one times; default: on a GPU one per compile group (14 in the "
                        "GPU run) with two cores left free, on the CPU none")
    b.set_defaults(func=bench)
    from .train import add_parser as add_train_parser
    add_train_parser(sub)
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    _ensure_triton_interpreter_without_gpu(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
