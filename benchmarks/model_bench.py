"""Model benchmark: what SE costs in a whole network, against the networks users run.

    python benchmarks/model_bench.py [--batch 8] [--image 224] [--dtype float32|bfloat16]
                                     [--channels-last] [--compile [MODE ...]] [--cuda-graphs]
                                     [--min-run-time S] [--rounds R] [--json PATH]

Networks, each for inference (no_grad, eval) and a training step (forward, cross-entropy,
backward, SGD step), timed in one run:

    resnet50                 torchvision ResNet-50: the network without SE
    timm seresnet50          timm's SE-ResNet-50 as is (its eager SE modules)
    timm seresnet50 [b]      the same after convert_se_modules(model, backend=b), each fused backend
                             (its blocks' SE + shortcut add + ReLU tails fused, bn3 absorbed
                             into the fused op where its kernels exist: fuse_bn=True, the
                             default; on a GPU, until its kernels exist, the BatchNorm runs
                             and then the fused SE op)
    se_resnet50 [b]          senet_kernels.models.se_resnet50 (SE + residual + ReLU fused), torchvision's layout
    timm efficientnet_b0     as is, and converted [b]: SE beside depthwise convolutions
    timm seresnet50 [b, SE only]       its SE modules fused, the tails left to eager PyTorch
    timm seresnet50 [b, fuse_bn=False] converted with the BatchNorm left to its module
    resnet50 [conv+BN folded]  torchvision ResNet-50 with every BatchNorm folded into the
                             convolution before it (torch.fx.experimental.optimization.fuse,
                             eval mode): the inference floor of a network without SE;
                             inference rows only (folding bakes in the running statistics)

(the last three first fused backend only, last so that a run cut short by a time limit loses
them first). "SE overhead" is time / time(resnet50) - 1 for the SE-ResNet-50 rows.
``--compile`` adds torch.compile rows for resnet50, timm seresnet50 as is and converted
(``[b]``, the first fused backend), after every other row (minutes of compilation per
network and mode on a GPU, so only the comparison that matters; ``--compile inference`` for
the inference rows alone). ``--cuda-graphs``
adds inference replayed from a CUDA graph (torch.cuda.graph, no compilation; GPU only). Times
are medians (torch.utils.benchmark, synchronized; with ``--rounds R`` the median of R
rounds, all rows timed once per round); peak memory is the GPU's for the training
step. On a GPU, "host" is the time the Python thread takes to issue a step: close to the
step's time means the network is host-bound, and then the SE blocks' host time per call
decides, not their kernels. timm rows need timm (optional); the package's own ``reference`` backend is the tests'
oracle and not timed here (it is slower than what users run).
"""

import argparse
import platform
import statistics
import time

import torch

from senet_kernels import available_backends, convert_se_modules
from senet_kernels.bench import median_seconds, timed_round, write_json
from senet_kernels.models import se_resnet50


def fused_backends(device):
    status = available_backends()
    names = ("triton", "cuda") if device.type == "cuda" else ("cpu",)
    return [b for b in names if status[b].available]


def networks(device):
    """[(name, builder)]: every network of the run; builders return a fresh model."""
    import torchvision
    nets = [("resnet50", lambda: torchvision.models.resnet50())]
    try:
        import timm
    except ImportError:
        timm = None
        print("timm is not installed: its rows are skipped", flush=True)
    backends = fused_backends(device)
    if timm is not None:
        nets.append(("timm seresnet50", lambda: timm.create_model("seresnet50")))
    # Our SE-ResNet-50 next (the headline: SE overhead against both rows above; a run cut
    # short by a time limit has it), then timm's with its SE modules fused.
    for b in backends:
        # torchvision's ResNet-50 layout (stride in the 3x3, padded max-pool): it differs from
        # resnet50 by the SE blocks only
        nets.append((f"se_resnet50 [{b}]", lambda b=b: se_resnet50(
            backend=b, stride_in_1x1=False, maxpool_ceil_mode=False)))
    if timm is not None:
        for b in backends:
            nets.append((f"timm seresnet50 [{b}]", lambda b=b: _converted(timm.create_model("seresnet50"), b)))
    if timm is not None:
        nets.append(("timm efficientnet_b0", lambda: timm.create_model("efficientnet_b0")))
        for b in backends:
            nets.append((f"timm efficientnet_b0 [{b}]",
                         lambda b=b: _converted(timm.create_model("efficientnet_b0"), b)))
        # What fusing the blocks' tails buys, in the same run (last: a run cut short by a
        # time limit loses these first); the first fused backend only.
        for b in backends[:1]:
            nets.append((f"timm seresnet50 [{b}, SE only]", lambda b=b: _converted(
                timm.create_model("seresnet50"), b, fuse_residual=False)))
            # What absorbing bn3 into the fused op buys (against [b], fuse_bn=True).
            nets.append((f"timm seresnet50 [{b}, fuse_bn=False]", lambda b=b: _converted(
                timm.create_model("seresnet50"), b, fuse_bn=False)))
    nets.append((FOLDED, lambda: folded_resnet50(torchvision.models.resnet50())))
    return nets


#: torchvision ResNet-50 with its BatchNorms folded into the convolutions (inference only).
FOLDED = "resnet50 [conv+BN folded]"


def folded_resnet50(model):
    """``model`` (eval mode) with each BatchNorm folded into the convolution before it
    (``torch.fx.experimental.optimization.fuse``: traces the model, rewrites conv + BN pairs
    into one convolution with the running statistics baked into its weight and bias)."""
    from torch.fx.experimental.optimization import fuse
    return fuse(model.eval())


def compile_networks(device):
    """The networks ``--compile`` adds torch.compile rows for: ResNet-50, timm seresnet50 as
    is and converted with the first fused backend (fuse_bn=True)."""
    backends = fused_backends(device)
    return {"resnet50", "timm seresnet50"} | {f"timm seresnet50 [{b}]" for b in backends[:1]}


def inference_only(name):
    return name == FOLDED


def _converted(model, backend, fuse_residual=True, fuse_bn=True):
    replaced = convert_se_modules(model, backend=backend, fuse_residual=fuse_residual,
                                  fuse_bn=fuse_bn)
    assert replaced > 0, "convert_se_modules replaced nothing"
    return model


def make_step(model, x, train):
    if not train:
        model.eval()

        def infer():
            with torch.no_grad():
                return model(x)
        return infer
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    target = torch.randint(0, 1000, (x.shape[0],), device=x.device)

    def train_step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x).float(), target)
        loss.backward()
        opt.step()
    return train_step


def graphed_inference(model, x):
    """Inference replayed from a CUDA graph captured once (static input x)."""
    model.eval()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.no_grad():
        for _ in range(3):
            model(x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        model(x)
    return graph.replay


def measure(step, device, min_run_time):
    """(seconds per step, peak MiB or None, host seconds per step or None)."""
    step()  # warm-up (compilation, cudnn.benchmark's search, plans)
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    seconds = median_seconds(step, min_run_time)
    if device.type != "cuda":
        return seconds, None, None
    peak = torch.cuda.max_memory_allocated() / 2**20
    return seconds, peak, host_seconds(step)


def host_seconds(step, calls=3, rounds=5):
    """Time for the Python thread to issue one step (median over rounds of ``calls`` steps
    issued back to back, the GPU idle at the start; few enough that its launch queue does not
    fill). Close to the step's wall time means the network is host-bound."""
    return statistics.median(timed_round(step, calls, torch.cuda.synchronize)[0]
                             for _ in range(rounds))


def variants(args, device):
    """[(variant, mode)]: how each network runs (without torch.compile: plan())."""
    out = [("eager", "inference"), ("eager", "train_step")]
    if args.cuda_graphs and device.type == "cuda":
        out.append(("cuda graph", "inference"))
    return out


def compile_modes(args):
    """The modes of the torch.compile rows: none without --compile, both with it alone."""
    if args.compile is None:
        return []
    return args.compile or ["inference", "train_step"]


def plan(args, device, nets):
    """[(name, build, variant, mode)] in the order they are timed: every network's eager (and
    CUDA-graph) rows, then the torch.compile rows of compile_networks (slow to compile: a
    time limit cuts them first). Inference-only networks have no training rows."""
    rows = [(name, build, variant, mode) for name, build in nets
            for variant, mode in variants(args, device)
            if not (inference_only(name) and mode == "train_step")]
    compiled = compile_networks(device)
    rows += [(name, build, "compile", mode) for name, build in nets if name in compiled
             for mode in compile_modes(args)]
    return rows


def run(args):
    """Time every (network, variant, mode); with args.json the rows so far (SE overheads
    included) are written after each row."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    dtype = getattr(torch, args.dtype)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    x = torch.randn(args.batch, 3, args.image, args.image, device=device, dtype=dtype)
    x = x.contiguous(memory_format=fmt)
    rows = []
    result = {"device": torch.cuda.get_device_name() if device.type == "cuda"
              else f"CPU {platform.machine()}, {torch.get_num_threads()} threads",
              "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "batch": args.batch,
              "image": args.image, "dtype": args.dtype, "channels_last": args.channels_last,
              "rounds": args.rounds, "rows": rows}
    kept = []  # (row, step, seconds per round) when args.rounds > 1
    for name, build, variant, mode in plan(args, device, networks(device)):
        torch.manual_seed(0)
        try:
            model = build().to(device=device, dtype=dtype, memory_format=fmt)
            if variant == "compile":
                model = torch.compile(model)
            step = (graphed_inference(model, x) if variant == "cuda graph"
                    else make_step(model, x, mode == "train_step"))
            seconds, peak, host = measure(step, device, args.min_run_time)
        except Exception as e:  # noqa: BLE001 - report and go on with the other rows
            print(f"{name:>40} {variant:>10} {mode:>10}: FAILED {type(e).__name__}: "
                  f"{str(e).splitlines()[0][:200] if str(e) else ''}", flush=True)
            continue
        rows.append(dict(network=name, variant=variant, mode=mode, ms=seconds * 1e3,
                         host_ms=None if host is None else host * 1e3,
                         images_per_s=args.batch / seconds,
                         peak_mib=peak if mode == "train_step" else None))
        overhead = se_overhead(rows[-1], rows)
        if overhead is not None:
            rows[-1]["se_overhead"] = overhead
        print(format_row(rows[-1], rows), flush=True)
        if args.json:
            write_json(result, args.json, quiet=True)
        if args.rounds > 1:
            kept.append((rows[-1], step, [seconds]))
        del model, step
    if kept:
        more_rounds(kept, args, rows)
        if args.json:
            write_json(result, args.json, quiet=True)
    return result


def more_rounds(kept, args, rows):
    """Time every kept (row, step) args.rounds - 1 more times, interleaved, so that a drift
    of the machine hits all rows alike; each row's time becomes the median of its rounds."""
    print(f"\n{args.rounds - 1} more rounds, interleaved:", flush=True)
    for _ in range(args.rounds - 1):
        for _, step, samples in kept:
            samples.append(median_seconds(step, args.min_run_time))
    for row, _, samples in kept:
        seconds = statistics.median(samples)
        row.update(ms=seconds * 1e3, images_per_s=args.batch / seconds, rounds=len(samples))
    for row in rows:
        overhead = se_overhead(row, rows)
        if overhead is not None:
            row["se_overhead"] = overhead
        print(format_row(row, rows) + f"  (median of {row.get('rounds', 1)} rounds)", flush=True)


def se_overhead(row, rows):
    """time / time(ResNet-50, same variant and mode) - 1, for SE-ResNet-50 rows; else None
    (ResNet-50 itself, folded or not, has no SE)."""
    if not any(name in row["network"] for name in ("seresnet50", "se_resnet50")):
        return None
    base = next((r for r in rows if r["network"] == "resnet50" and r["variant"] == row["variant"]
                 and r["mode"] == row["mode"]), None)
    return None if base is None else row["ms"] / base["ms"] - 1


def format_row(row, rows):
    overhead = se_overhead(row, rows)
    return (f"{row['network']:>40} {row['variant']:>10} {row['mode']:>10}: {row['ms']:8.2f} ms "
            f"{row['images_per_s']:8.0f} img/s"
            + ("" if row.get("host_ms") is None else f"  host {row['host_ms']:6.2f} ms")
            + ("" if overhead is None else f"  SE overhead {overhead:+6.1%}")
            + ("" if row["peak_mib"] is None else f"  peak {row['peak_mib']:.0f} MiB"))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image", type=int, default=224)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", nargs="*", default=None, choices=("inference", "train_step"),
                        help="add torch.compile rows of resnet50, timm seresnet50 and its "
                             "conversion, in these modes (none named: both), after every "
                             "other row (slow to compile)")
    parser.add_argument("--cuda-graphs", action="store_true", help="add CUDA-graph inference rows")
    parser.add_argument("--min-run-time", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=1,
                        help="time every row this many times, the rounds after the first "
                             "interleaved, and report the median (for noisy machines; keeps "
                             "every network alive until the end)")
    parser.add_argument("--json")
    return parser.parse_args(argv)


def main():
    args = parse_args()
    result = run(args)
    print("\nSE overhead over ResNet-50 (same variant and mode):")
    for row in result["rows"]:
        if row.get("se_overhead") is not None:
            print(f"  {row['network']:>40} {row['variant']:>10} {row['mode']:>10}: "
                  f"{row['se_overhead']:+.1%}")
    if args.json:
        write_json(result, args.json)


if __name__ == "__main__":
    main()
