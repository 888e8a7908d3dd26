"""GPU time of each kernel of the Triton backend on the weight-heavy SE shapes.

    python benchmarks/kernel_breakdown.py [--batch 256] [--calls 20] [--json PATH]

Where ``configs.use_batched_excitation`` picks the batched path (SE-ResNet-50's C = 1024 and
2048 stages, EfficientNet-B0's late SE), bf16, channels_last: the forward (SE-ResNet: with
residual + ReLU) and forward + backward, with the c_to_r GEMM split over channels as
``configs.gemm_k_splits`` picks and unsplit (``configs.force_k_splits(1)``), and the
squeeze_fc1 path (FC1 folded into the squeeze, forced: a candidate the dispatcher does not
pick yet; the last lines compare it with the picked path). Each row gives
the mean GPU time per call of every kernel (torch.profiler) and their sum, so a GPU run
says which kernel stands between a shape and its copy floor, and what split-K buys. One more
row: SE-ResNet-50's first stage (256x56x56, the per-sample path), forward + backward, where
the backward's two streaming kernels carry most of a training step's SE time.

With ``--sweep-reduce-tiles`` it times instead the two reductions (the forward's squeeze,
kernel A, and the backward's, kernel A') on the same weight-heavy shapes with every tile of
``configs.SWEEP_REDUCE_TILES`` forced (block sizes, warps, and whether the loop over H*W is
software-pipelined), and on SE-ResNet-50's first stage the picked tile pipelined or not
(``SWEEP_FIRST_STAGE_TILES``), each as GB/s of the bytes it must read (x; and in the
backward the gradient, and with the ReLU tail the output, writing the masked gradient) beside
a copy's: what to put in ``configs.reduce_tile``. With ``--sweep-k-splits`` it times the
batched path with the FC1 GEMM split over 1, 2, 4, 8 and 16 channel ranges (past the
dispatcher's MAX_K_SPLITS): what to set GEMM_PROGRAMS_PER_SM and MAX_K_SPLITS to. With
``--sweep-squeeze-fc1`` it times the squeeze_fc1 forward with every tile of
``configs.SWEEP_SQUEEZE_FC1_TILES``: what to put in ``configs.SQUEEZE_FC1_TILE``. Needs a
CUDA GPU.
"""

import argparse
import sys
import time
from collections import defaultdict
from dataclasses import asdict

import torch

from senet_kernels.bench import (first_stage, reduce_tile_sweep_cases, weight_heavy_shapes,
                                  write_json)
from senet_kernels.testing import make_inputs
from senet_kernels.triton import configs, tuning

from excitation_paths import step, triton


def kernel_us(call, calls):
    """{kernel name: mean GPU microseconds per call} over ``calls`` calls (after a warm-up)."""
    from torch.profiler import ProfilerActivity, profile
    for _ in range(3):
        call()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            call()
        torch.cuda.synchronize()
    times = defaultdict(float)
    for event in prof.key_averages():
        if event.device_time_total > 0:
            times[event.key] += event.device_time_total / calls
    return dict(times)


def _device_tuning():
    """The tuning the dispatcher uses on this GPU (triton/tuning.py): what "picked" means."""
    return tuning.for_device(torch.device("cuda", torch.cuda.current_device()))


def _new_result():
    return {"device": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d"),
            "torch": torch.__version__, "rows": []}


def _inputs(n, c, hw, cr):
    """[x, w1, b1, w2, b2, residual] of one shape: bf16, channels_last, requiring grad."""
    inputs = make_inputs(n, c, hw, hw, cr, dtype=torch.bfloat16, channels_last=True,
                         residual=True, device="cuda", seed=c, draw_on_device=True)
    return [inputs[k].requires_grad_() for k in ("x", "w1", "b1", "w2", "b2", "residual")]


def path_row(family, n, c, hw, cr, path, backward, k_splits, picked, times,
              dispatcher_split=True):
    """A row of per-kernel times of one pass (format_row prints it); ``picked``: whether it is
    what the dispatcher runs; ``dispatcher_split``: whether the path runs as the dispatcher
    would run it (the batched path: its K-split count, see benchmarks/tune.py)."""
    return dict(family=family, shape=[n, c, hw, hw], cr=cr, path=path,
                pass_name="fwd_bwd" if backward else "fwd", k_splits=k_splits,
                picked=picked, dispatcher_split=dispatcher_split, kernel_us=times,
                total_us=sum(times.values()))


def run(n, calls, json_path=None):
    result = _new_result()
    rows = result["rows"]
    num_sms = torch.cuda.get_device_properties(0).multi_processor_count
    device_tuning = _device_tuning()
    for shape in weight_heavy_shapes(n) + [first_stage(n)]:
        family, n, c, hw, cr = shape.family, shape.n, shape.c, shape.hw, shape.cr
        tail = family == "se_resnet50"
        tensors = _inputs(n, c, hw, cr)
        picked_path = configs.excitation_path(n, c, cr, hw * hw, 2, 2, device_tuning)
        picked_k = configs.gemm_k_splits(n, c, cr, num_sms)[1]
        if picked_path != "per_sample":
            # (backward, path, K-splits): the batched path as the dispatcher splits it and
            # unsplit, and the squeeze_fc1 path (no c_to_r GEMM, forward or backward: nothing
            # to split)
            variants = [(backward, path, k) for backward in (False, True) for path, k in
                        [("batched", k) for k in sorted({picked_k, 1}, reverse=True)]
                        + [("squeeze_fc1", None)]]
        else:  # the per-sample path: no GEMM to split
            variants = [(True, "per_sample", None)]
        for backward, path, k_splits in variants:
            with configs.force_k_splits(k_splits or 1):
                times = kernel_us(step(triton, tensors, tail, backward, path), calls)
            dispatcher_split = path != "batched" or k_splits == picked_k
            rows.append(path_row(family, n, c, hw, cr, path, backward, k_splits,
                                  path == picked_path and dispatcher_split, times,
                                  dispatcher_split))
            print(format_row(rows[-1]), flush=True)
        if json_path:  # after each shape: a run stopped by a time limit keeps what it measured
            write_json(result, json_path, quiet=True)
    for line in candidate_lines(rows):
        print(line, flush=True)
    return result


def candidate_lines(rows):
    """Per shape and pass: the squeeze_fc1 path's total GPU time against the batched path's
    (as the dispatcher splits it), and which the dispatcher picks (the GPU's
    Tuning.squeeze_fc1_max_pixels, see benchmarks/tune.py)."""
    lines = []
    for (family, shape, pass_name), best, picked in _best_per_group(
            rows, lambda r: (r["family"], tuple(r["shape"]), r["pass_name"]),
            lambda r: r["total_us"]):
        group = [r for r in rows if r["family"] == family and tuple(r["shape"]) == shape
                 and r["pass_name"] == pass_name and r["dispatcher_split"]]
        candidate = next((r for r in group if r["path"] == "squeeze_fc1"), None)
        batched = next((r for r in group if r["path"] == "batched"), None)
        if candidate is None or batched is None:
            continue
        lines.append(f"squeeze_fc1 {family} {'x'.join(map(str, shape))} {pass_name}: "
                     f"{candidate['total_us']:.1f} us vs {batched['total_us']:.1f} us batched "
                     f"({batched['total_us'] / candidate['total_us']:.2f}x); picked: "
                     f"{picked['path'] if picked else '-'}; fastest: {best['path']}, "
                     f"{best['total_us']:.1f} us")
    return lines


def sweep_reduce_tiles(n, calls, json_path=None):
    """GPU time of kernels A and A' per forced reduce tile, on the weight-heavy shapes (and a
    few tiles on SE-ResNet-50's first stage): bench.reduce_tile_sweep_cases."""
    result = _new_result()
    rows = result["rows"]
    device_tuning = _device_tuning()
    for shape, tiles in reduce_tile_sweep_cases(n):
        family, n, c, hw, cr = shape.family, shape.n, shape.c, shape.hw, shape.cr
        tail = family == "se_resnet50"
        tensors = _inputs(n, c, hw, cr)
        x = tensors[0]
        copy_gbps = copy_bandwidth(x)
        # bytes each reduction moves: A reads x; A' reads grad and x (+ out, and writes the
        # masked grad, with the ReLU tail)
        moved = {"se_squeeze_excite_fwd": 1, "se_squeeze_excite_bwd": 4 if tail else 2}
        for tile in tiles:
            try:
                forced, one_pass = sweep_pass("reduce", tile, tensors, tail)
                with forced:
                    times = kernel_us(one_pass, calls)
            except Exception as e:  # noqa: BLE001 - one tile that fails is a row, not the end
                print(f"{family:>15} {n}x{c}x{hw}x{hw} tile {tile}: FAILED {type(e).__name__}: "
                      f"{str(e).splitlines()[0][:200] if str(e) else ''}", flush=True)
                continue
            for kernel, tensors_moved in moved.items():
                us = times.get(kernel)
                if us is None:
                    continue
                gbps = tensors_moved * x.numel() * x.element_size() / us / 1e3
                rows.append(reduce_tile_row(
                    family, [n, c, hw, hw], kernel, tile,
                    tile == configs.reduce_tile(True, hw * hw, device_tuning), us, gbps,
                    copy_gbps))
                r = rows[-1]
                print(f"{family:>15} {n}x{c}x{hw}x{hw} {kernel.removeprefix('se_'):>20} tile "
                      f"{tile.block_c:>3}x{tile.block_hw:<3} {tile.num_warps} warps "
                      f"{tile.num_stages} stage{'s' if tile.num_stages > 1 else ' '}"
                      f"{' (picked)' if r['picked'] else '         '}"
                      f": {us:7.1f} us {gbps:6.0f} GB/s = {r['of_copy']:4.0%} of a copy", flush=True)
        if json_path:
            write_json(result, json_path, quiet=True)
    for line in best_tile_lines(rows):
        print(line, flush=True)
    return result


def reduce_tile_row(family, shape, kernel, tile, picked, us, gbps, copy_gbps):
    """A row of the reduce-tile sweep (benchmarks/tune.py reads these fields)."""
    return dict(family=family, shape=list(shape), kernel=kernel,
                tile=[tile.block_c, tile.block_hw], num_warps=tile.num_warps,
                num_stages=tile.num_stages, picked=picked, us=us, gbps=gbps,
                of_copy=gbps / copy_gbps)


def squeeze_fc1_tile_row(family, shape, tile, picked, us, total_us, gbps, copy_gbps):
    """A row of the squeeze_fc1 tile sweep: the kernel's time (us) and the whole forward's
    (total_us); benchmarks/tune.py reads the tile back from tile_fields."""
    return dict(family=family, shape=list(shape), tile=_tile_name(tile),
                tile_fields=asdict(tile), picked=picked, us=us, total_us=total_us, gbps=gbps,
                of_copy=gbps / copy_gbps)


def _best_per_group(rows, group_key, cost):
    """[(key, fastest row, picked row or None)] per group of rows, in first-seen order."""
    groups = {}
    for r in rows:
        groups.setdefault(group_key(r), []).append(r)
    return [(key, min(group, key=cost), next((r for r in group if r["picked"]), None))
            for key, group in groups.items()]


def best_tile_lines(rows):
    """Per shape and reduction: the fastest tile of the sweep against the one reduce_tile
    picks, as lines to read configs.reduce_tile's next values from."""
    lines = []
    for (family, shape, kernel), best, picked in _best_per_group(
            rows, lambda r: (r["family"], tuple(r["shape"]), r["kernel"]), lambda r: r["us"]):
        gain = f", {picked['us'] / best['us']:.2f}x the picked tile's speed" if picked else ""
        lines.append(f"best {family} {'x'.join(map(str, shape))} {kernel.removeprefix('se_')}: "
                     f"tile {best['tile'][0]}x{best['tile'][1]} {best['num_warps']} warps "
                     f"{best['num_stages']} stages, {best['us']:.1f} us "
                     f"({best['of_copy']:.0%} of a copy){gain}")
    return lines


def sweep_squeeze_fc1(n, calls, json_path=None):
    """GPU time of the squeeze_fc1 forward per forced tile (configs.SWEEP_SQUEEZE_FC1_TILES)
    on the weight-heavy shapes: the squeeze + FC1 kernel alone (GB/s of x beside a copy's)
    and the whole forward."""
    result = _new_result()
    rows = result["rows"]
    device_tuning = _device_tuning()
    for shape in weight_heavy_shapes(n):
        family, n, c, hw, cr = shape.family, shape.n, shape.c, shape.hw, shape.cr
        tail = family == "se_resnet50"
        tensors = _inputs(n, c, hw, cr)
        x = tensors[0]
        copy_gbps = copy_bandwidth(x)
        picked = configs.squeeze_fc1_tile(hw * hw, 2, device_tuning)
        for tile in configs.SWEEP_SQUEEZE_FC1_TILES:
            try:
                forced, one_pass = sweep_pass("squeeze_fc1", tile, tensors, tail)
                with forced:
                    times = kernel_us(one_pass, calls)
            except Exception as e:  # noqa: BLE001 - one tile that fails is a row, not the end
                print(f"{family:>15} {n}x{c}x{hw}x{hw} squeeze_fc1 tile {tile}: FAILED "
                      f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}",
                      flush=True)
                continue
            us = times.get("se_squeeze_fc1_fwd")
            if us is None:
                continue
            gbps = x.numel() * x.element_size() / us / 1e3
            rows.append(squeeze_fc1_tile_row(family, [n, c, hw, hw], tile, tile == picked, us,
                                             sum(times.values()), gbps, copy_gbps))
            r = rows[-1]
            print(f"{family:>15} {n}x{c}x{hw}x{hw} squeeze_fc1 {r['tile']:>22}"
                  f"{' (picked)' if r['picked'] else '         '}: {us:7.1f} us "
                  f"{gbps:6.0f} GB/s = {r['of_copy']:4.0%} of a copy; forward {r['total_us']:.1f} us",
                  flush=True)
        if json_path:
            write_json(result, json_path, quiet=True)
    for (family, shape), best, picked in _best_per_group(
            rows, lambda r: (r["family"], tuple(r["shape"])), lambda r: r["total_us"]):
        gain = f" (picked: {picked['total_us']:.1f} us)" if picked else ""
        print(f"best squeeze_fc1 {family} {'x'.join(map(str, shape))} fwd: tile {best['tile']}, "
              f"{best['total_us']:.1f} us{gain}", flush=True)
    return result


def _tile_name(tile):
    return (f"n{tile.block_n} c{tile.block_c} hw{tile.block_hw} s{tile.num_stages} "
            f"w{tile.num_warps}")


#: Split counts the K-split sweep asks for (fewer where C has fewer blocks of channels).
K_SPLIT_SWEEP = (1, 2, 4, 8, 16)


def sweep_k_splits(n, calls, json_path=None):
    """GPU time of the batched path per forced split count of its FC1 GEMM (c_to_r), forward
    and forward + backward, on the weight-heavy shapes."""
    result = _new_result()
    rows = result["rows"]
    num_sms = torch.cuda.get_device_properties(0).multi_processor_count
    for shape in weight_heavy_shapes(n):
        family, n, c, hw, cr = shape.family, shape.n, shape.c, shape.hw, shape.cr
        tail = family == "se_resnet50"
        tensors = _inputs(n, c, hw, cr)
        picked = configs.gemm_k_splits(n, c, cr, num_sms)[1]
        for backward in (False, True):
            done = set()
            for asked in K_SPLIT_SWEEP:
                with configs.force_k_splits(asked):
                    splits = configs.gemm_k_splits(n, c, cr, num_sms)[1]
                    if splits in done:  # C has too few blocks of channels for more splits
                        continue
                    done.add(splits)
                    times = kernel_us(step(triton, tensors, tail, backward, "batched"), calls)
                rows.append(path_row(family, n, c, hw, cr, "batched", backward, splits,
                                      splits == picked, times))
                print(format_row(rows[-1]), flush=True)
        if json_path:
            write_json(result, json_path, quiet=True)
    for line in best_split_lines(rows):
        print(line, flush=True)
    return result


def best_split_lines(rows):
    """Per shape and pass: the split count with the least total GPU time against the picked."""
    lines = []
    for (family, shape, pass_name), best, picked in _best_per_group(
            rows, lambda r: (r["family"], tuple(r["shape"]), r["pass_name"]),
            lambda r: r["total_us"]):
        gain = f" (picked {picked['k_splits']}: {picked['total_us']:.1f} us)" if picked else ""
        lines.append(f"best {family} {'x'.join(map(str, shape))} {pass_name}: "
                     f"K-splits {best['k_splits']}, {best['total_us']:.1f} us{gain}")
    return lines


def copy_bandwidth(x, calls=20):
    """GB/s (read + write) of copying x, GPU time from the profiler."""
    dst = torch.empty_like(x)
    us = sum(kernel_us(lambda: dst.copy_(x), calls).values())
    return 2 * x.numel() * x.element_size() / us / 1e3


def format_row(r):
    n, c, h, _ = r["shape"]
    kernels = ", ".join(f"{name.removeprefix('se_')} {us:.1f}"
                        for name, us in sorted(r["kernel_us"].items(), key=lambda kv: -kv[1]))
    if r["path"] == "per_sample":
        variant = "per-sample path"
    elif r["path"] == "squeeze_fc1":
        variant = "squeeze_fc1 path"
    else:
        variant = f"K-splits {r['k_splits']}" + (" (picked)" if r["picked"] else "")
    return (f"{r['family']:>15} {n}x{c}x{h}x{h} Cr={r['cr']:<3} {r['pass_name']:>7} "
            f"{variant}: {r['total_us']:.1f} us = {kernels}")


def sweep_pass(kind, tile, tensors, tail):
    """(the context that forces ``tile``, the pass to run inside it) of one job of the tile
    sweeps: kind "reduce", forward + backward with the dispatcher's path (kernels A and A');
    kind "squeeze_fc1", that path's forward."""
    if kind == "reduce":
        return configs.force_reduce_tile(tile), step(triton, tensors, tail, True, None)
    return (configs.force_squeeze_fc1_tile(tile),
            step(triton, tensors, tail, False, "squeeze_fc1"))


def tuning_sweep_jobs(n):
    """[(Shape, "reduce" | "squeeze_fc1", tile)]: what the two tile sweeps time, in order."""
    jobs = [(shape, "reduce", tile) for shape, tiles in reduce_tile_sweep_cases(n)
            for tile in tiles]
    return jobs + [(shape, "squeeze_fc1", tile) for shape in weight_heavy_shapes(n)
                   for tile in configs.SWEEP_SQUEEZE_FC1_TILES]


def warm_caches(n, shard, shards):
    """Run every ``shards``-th job of tuning_sweep_jobs once, from the ``shard``-th, untimed,
    so that the Triton kernels they need are compiled into Triton's on-disk cache, where the
    timed sweeps find them (benchmarks/tune.py --measure starts one process per shard first,
    so that the kernels of the sweeps' 83 jobs (tile x shape) compile in parallel, not one after
    another). A job that fails is reported and skipped: the timed sweep reports it again."""
    done = failed = 0
    shape_drawn = None
    for shape, kind, tile in tuning_sweep_jobs(n)[shard::shards]:
        if shape != shape_drawn:  # the jobs come shape by shape
            tensors, shape_drawn = _inputs(shape.n, shape.c, shape.hw, shape.cr), shape
        try:
            forced, one_pass = sweep_pass(kind, tile, tensors, shape.family == "se_resnet50")
            with forced:
                one_pass()
            torch.cuda.synchronize()
            done += 1
        except Exception as e:  # noqa: BLE001 - warming is best effort
            failed += 1
            print(f"warm-up {kind} {shape} {tile}: {type(e).__name__}: "
                  f"{str(e).splitlines()[0][:200] if str(e) else ''}", flush=True)
    print(f"warm-up shard {shard}/{shards}: {done} jobs run, {failed} failed", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--calls", type=int, default=20, help="profiled calls per row")
    parser.add_argument("--json", help="write the rows here (after each shape)")
    parser.add_argument("--sweep-reduce-tiles", action="store_true",
                        help="time the reductions with every tile of configs.SWEEP_REDUCE_TILES")
    parser.add_argument("--sweep-k-splits", action="store_true",
                        help="time the batched path with the FC1 GEMM split 1-16 ways")
    parser.add_argument("--sweep-squeeze-fc1", action="store_true",
                        help="time the squeeze_fc1 forward with every tile of "
                             "configs.SWEEP_SQUEEZE_FC1_TILES")
    parser.add_argument("--warm-shard", metavar="I/N",
                        help="only run the I-th of N shares of the two tile sweeps' jobs once, "
                             "untimed (compiles into Triton's cache; see warm_caches)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("kernel_breakdown.py profiles GPU kernels: it needs a CUDA GPU")
    if args.warm_shard:
        shard, shards = map(int, args.warm_shard.split("/"))
        warm_caches(args.batch, shard, shards)
        return
    if args.sweep_reduce_tiles:
        sweep_reduce_tiles(args.batch, args.calls, args.json)
    elif args.sweep_k_splits:
        sweep_k_splits(args.batch, args.calls, args.json)
    elif args.sweep_squeeze_fc1:
        sweep_squeeze_fc1(args.batch, args.calls, args.json)
    else:
        run(args.batch, args.calls, args.json)
    if args.json:  # run() wrote it after each shape
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
