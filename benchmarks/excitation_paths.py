"""GPU time of the Triton backend's excitation paths per shape: the traffic model's data.

    python benchmarks/excitation_paths.py [--json PATH] [--batch 256 32] [--rep-ms 10]
        [--layout channels_last nchw] [--channels C ...]

For SE-ResNet-50 and EfficientNet-B0 SE shapes, both layouts, bf16: the forward (SE-ResNet:
with residual + ReLU) and forward + backward, with the per-sample and the batched excitation
forced (``configs.force_excitation_path``), and where the batched one is picked the
squeeze_fc1 candidate (FC1 folded into the squeeze), beside the eager SE users run
(``baselines.eager_se``). Times are GPU times: each call is captured in a CUDA graph and
replayed (``triton.testing.do_bench_cudagraph``), so host overhead is excluded. The last
columns say which path the dispatcher picks (``configs.excitation_path``: the traffic model,
and where the weights are heavy the GPU's tuning, see ``triton/tuning.py``) and how much
slower its pick is than the fastest path. Needs a CUDA GPU.
"""

import argparse
import sys
import time

import torch

from senet_kernels import squeeze_excite
from senet_kernels.baselines import eager_se
from senet_kernels.bench import EFFICIENTNET_SE, RESNET_STAGES, write_json
from senet_kernels.testing import make_inputs
from senet_kernels.triton import configs, tuning


def shapes(batches, channels=None):
    """(family, N, C, H, Cr) per batch; with ``channels``, only the shapes with those C."""
    out = []
    for n in batches:
        out += [("se_resnet50", n, c, hw, c // 16) for c, hw in RESNET_STAGES]
        out += [("efficientnet_b0", n, c, hw, cr) for c, hw, cr in EFFICIENTNET_SE]
    return [s for s in out if channels is None or s[2] in channels]


def gpu_ms(fn, rep_ms):
    import triton.testing
    return triton.testing.do_bench_cudagraph(fn, rep=rep_ms, return_mode="median")


def step(fn, tensors, tail, backward, path=None):
    """One pass of fn; with ``path``, the Triton backend's excitation path is forced for the
    whole pass (the backward's plan is made inside autograd.grad, so it is inside too)."""
    x, w1, b1, w2, b2, res = tensors
    residual = res if tail else None
    options = dict(activation="relu" if tail else "silu", post_relu=tail)
    leaves = [x, w1, b1, w2, b2] + ([res] if tail else [])
    grad = torch.randn_like(x)

    def one_pass():
        if not backward:
            with torch.no_grad():
                fn(x, w1, b1, w2, b2, residual, **options)
        else:
            torch.autograd.grad(fn(x, w1, b1, w2, b2, residual, **options), leaves, grad)

    if path is None:
        return one_pass

    def forced():
        with configs.force_excitation_path(path):
            one_pass()
    return forced


def triton(*args, **kwargs):
    return squeeze_excite(*args, backend="triton", **kwargs)


def run(batches, rep_ms, layouts=("channels_last", "nchw"), channels=None, json_path=None):
    """Time every shape; with ``json_path`` the results so far are written after each row
    (a run stopped by a time limit keeps what it measured)."""
    impls = [("per_sample", triton, "per_sample"), ("batched", triton, "batched"),
             ("eager", eager_se, None)]
    rows = []
    result = {"device": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d"),
              "torch": torch.__version__, "weight_traffic_limit": configs.WEIGHT_TRAFFIC_LIMIT,
              "rows": rows}
    for family, n, c, hw, cr in shapes(batches, channels):
        tail = family == "se_resnet50"
        for layout in layouts:
            inputs = make_inputs(n, c, hw, hw, cr, dtype=torch.bfloat16,
                                 channels_last=layout == "channels_last", residual=True,
                                 device="cuda", seed=c, draw_on_device=True)
            tensors = [inputs[k].requires_grad_() for k in ("x", "w1", "b1", "w2", "b2", "residual")]
            # hw is H = W; the path the dispatcher takes with this GPU's tuning
            picks = configs.excitation_path(n, c, cr, hw * hw, 2, 2,
                                            tuning.for_device(tensors[0].device))
            # squeeze_fc1 too where the weights are heavy (it is built for those shapes only)
            heavy = picks != "per_sample"
            timed = impls + ([("squeeze_fc1", triton, "squeeze_fc1")] if heavy else [])
            for backward in (False, True):
                times = {name: gpu_ms(step(fn, tensors, tail, backward, path), rep_ms)
                         for name, fn, path in timed}
                picked = times[picks]
                best = min(t for name, t in times.items() if name != "eager")
                rows.append(dict(family=family, shape=[n, c, hw, hw], cr=cr, layout=layout,
                                 pass_name="fwd_bwd" if backward else "fwd", ms=times,
                                 model_picks=picks,
                                 pick_vs_best=picked / best,
                                 pick_vs_eager=times["eager"] / picked))
                print(format_row(rows[-1]), flush=True)
                if json_path:
                    write_json(result, json_path, quiet=True)
    return result


def format_row(r):
    n, c, h, _ = r["shape"]
    t = r["ms"]
    candidate = f" squeeze_fc1 {t['squeeze_fc1']:.4f}" if "squeeze_fc1" in t else ""
    return (f"{r['family']:>15} {n:>3}x{c:>4}x{h:>2}x{h:<2} Cr={r['cr']:<3} {r['layout']:>13} "
            f"{r['pass_name']:>7}: per-sample {t['per_sample']:.4f} batched {t['batched']:.4f}"
            f"{candidate} eager {t['eager']:.4f} ms | model picks {r['model_picks']:>10} "
            f"({r['pick_vs_best']:.2f}x the best path, {r['pick_vs_eager']:.2f}x faster than eager)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[256, 32])
    parser.add_argument("--rep-ms", type=float, default=10, help="graph replay time per measurement")
    parser.add_argument("--layout", nargs="+", default=["channels_last", "nchw"],
                        choices=("channels_last", "nchw"))
    parser.add_argument("--channels", type=int, nargs="+", default=None,
                        help="only the shapes with these C (default: all)")
    parser.add_argument("--json", help="write the rows here (after each row)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("excitation_paths.py times GPU kernels: it needs a CUDA GPU")
    result = run(args.batch, args.rep_ms, args.layout, args.channels, args.json)
    worst = max(result["rows"], key=lambda r: r["pick_vs_best"])
    print(f"worst pick of the traffic model: {worst['pick_vs_best']:.2f}x the best path at "
          f"{format_row(worst)}")
    if args.json:  # run() wrote it after each row
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
