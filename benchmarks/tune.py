"""Write a GPU's tuning (configs.Tuning, see senet_kernels/triton/tuning.py) from its sweeps.

    python benchmarks/tune.py --measure --out tuning.json [--batch 256] [--calls 10]   # GPU
    python benchmarks/tune.py --out tuning.json [--base tuning.json] \
        [--reduce-tiles R.json] [--squeeze-fc1-tiles F.json] [--paths B.json]

``--measure`` runs the measurements below in this process, in order (the sweeps with the
defaults, then the plain run with the tiles chosen from them), writing the file after the
tiles and again after the path: what benchmarks/gpu_check.sh runs. Otherwise the inputs are
the JSON files of benchmarks/kernel_breakdown.py on one GPU:

- ``--reduce-tiles``: ``--sweep-reduce-tiles`` (kernels A and A' with each tile, run with
  SENET_KERNELS_TUNING=none): the channels_last tile of maps up to
  configs.TUNED_SMALL_MAP_PIXELS, from the weight-heavy shapes, and of larger maps, from
  SE-ResNet-50's first stage;
- ``--squeeze-fc1-tiles``: ``--sweep-squeeze-fc1`` (the squeeze_fc1 forward with each tile);
- ``--paths``: the plain run (each weight-heavy shape's forward and forward + backward on the
  batched and the squeeze_fc1 path), best run with the tiles chosen above in effect
  (SENET_KERNELS_TUNING=<the file the first two wrote>): up to which map size the
  weight-heavy shapes take squeeze_fc1 (0, or one of the measured shapes' map sizes; batched
  above it).

Each choice minimizes the summed GPU time over the shapes that measured every candidate (what
a network with all of them spends), and leaves the base tuning's choice in place unless the
best is more than MARGIN faster (run-to-run noise must not flip it). A choice without data
keeps the base's. The file says how it was measured (``source``) and each choice is printed
with its numbers. From JSON it runs anywhere (no GPU needed): tests/test_tune.py checks it on
made-up rows, and ``measure`` with kernel_breakdown.py's GPU side faked.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from senet_kernels.triton import configs, tuning  # noqa: E402

#: A choice moves off the base tuning only when the best candidate is faster by more than this.
MARGIN = 0.02


def choose(totals, current):
    """(choice, line): the candidate of {candidate: summed us} with the least time, or
    ``current`` where that is within MARGIN of the best."""
    best = min(totals, key=totals.get)
    if current in totals and totals[best] >= totals[current] * (1 - MARGIN):
        best = current
    ranked = ", ".join(f"{_name(k)} {v:.1f} us" for k, v in sorted(totals.items(), key=lambda kv: kv[1]))
    return best, ranked


def _name(choice):
    if isinstance(choice, configs.ReduceTile):
        return f"{choice.block_c}x{choice.block_hw} w{choice.num_warps} s{choice.num_stages}"
    if isinstance(choice, configs.SqueezeFc1Tile):
        return (f"n{choice.block_n} c{choice.block_c} hw{choice.block_hw} r{choice.block_r} "
                f"s{choice.num_stages} w{choice.num_warps}")
    return str(choice)


def _totals(rows, group_of, candidate_of, cost):
    """{candidate: summed cost} over the groups, for candidates measured in every group, in
    the order first seen (the sweep's order: the first of equally fast candidates wins)."""
    groups, order = {}, {}
    for r in rows:
        groups.setdefault(group_of(r), {})[candidate_of(r)] = cost(r)
        order.setdefault(candidate_of(r), None)
    return {c: sum(g[c] for g in groups.values()) for c in order
            if all(c in g for g in groups.values())}


def _reduce_tile(row):
    return configs.ReduceTile(row["tile"][0], row["tile"][1], row["num_warps"], row["num_stages"])


def reduce_tiles(result, base):
    """(channels_last_small_map_tile, channels_last_tile, lines) from --sweep-reduce-tiles."""
    chosen, lines = {}, []
    for small, name in ((True, "channels_last_small_map_tile"), (False, "channels_last_tile")):
        rows = [r for r in result["rows"]
                if (r["shape"][2] * r["shape"][3] <= configs.TUNED_SMALL_MAP_PIXELS) == small]
        totals = _totals(rows, lambda r: (tuple(r["shape"]), r["kernel"]), _reduce_tile,
                         lambda r: r["us"])
        current = getattr(base, name)
        if not totals:
            chosen[name] = current
            continue
        chosen[name], ranked = choose(totals, current)
        shapes = sorted({"x".join(map(str, r["shape"])) for r in rows})
        lines.append(f"{name}: {_name(chosen[name])} (kernels A + A' on {', '.join(shapes)}: "
                     f"{ranked})")
    return chosen["channels_last_small_map_tile"], chosen["channels_last_tile"], lines


def squeeze_fc1_tile(result, base):
    """(squeeze_fc1_tile, lines) from --sweep-squeeze-fc1 (the whole forward's GPU time)."""
    totals = _totals(result["rows"], lambda r: tuple(r["shape"]),
                     lambda r: configs.SqueezeFc1Tile(**r["tile_fields"]), lambda r: r["total_us"])
    if not totals:
        return base.squeeze_fc1_tile, []
    tile, ranked = choose(totals, base.squeeze_fc1_tile)
    return tile, [f"squeeze_fc1_tile: {_name(tile)} (squeeze_fc1 forwards: {ranked})"]


def squeeze_fc1_max_pixels(result, base):
    """(pixels, lines) from kernel_breakdown.py's plain run, which times every weight-heavy
    shape's forward and forward + backward on the batched path (as the dispatcher splits it)
    and the squeeze_fc1 path: the map size up to which squeeze_fc1 is taken (0: nowhere),
    among 0 and the measured shapes' map sizes."""
    times = {}
    for r in result["rows"]:
        if r["path"] in ("batched", "squeeze_fc1") and r.get("dispatcher_split", True):
            group = (tuple(r["shape"]), r["pass_name"])
            times.setdefault(group, {})[r["path"]] = r["total_us"]
    times = {g: t for g, t in times.items() if len(t) == 2}
    if not times:
        return base.squeeze_fc1_max_pixels, []
    pixels = lambda group: group[0][2] * group[0][3]
    candidates = [0] + sorted({pixels(g) for g in times})
    totals = {p: sum(t["squeeze_fc1" if pixels(g) <= p else "batched"] for g, t in times.items())
              for p in candidates}
    # the base's limit acts as the largest candidate it covers
    current = max(p for p in candidates if p <= base.squeeze_fc1_max_pixels)
    chosen, ranked = choose(totals, current)
    if chosen == current:
        chosen = base.squeeze_fc1_max_pixels
    return chosen, [f"squeeze_fc1_max_pixels: {chosen} (weight-heavy maps up to that many "
                    f"pixels take squeeze_fc1, larger ones batched; summed over {len(times)} "
                    f"shape x pass rows, by limit: {ranked})"]


def tune(base, reduce_result=None, squeeze_fc1_result=None, paths_result=None):
    """(Tuning, lines): ``base`` with the choices the given kernel_breakdown.py results make."""
    results = [r for r in (reduce_result, squeeze_fc1_result, paths_result) if r]
    devices = {r["device"] for r in results}
    if len(devices) != 1:
        raise ValueError(f"the results must come from one GPU, got {sorted(devices) or 'none'}")
    device = devices.pop()
    if base.device and base.device != device:
        raise ValueError(f"the base tuning is for {base.device}, the results for {device}")
    fields, lines = {}, []
    if reduce_result:
        small, large, more = reduce_tiles(reduce_result, base)
        fields.update(channels_last_small_map_tile=small, channels_last_tile=large)
        lines += more
    if squeeze_fc1_result:
        fields["squeeze_fc1_tile"], more = squeeze_fc1_tile(squeeze_fc1_result, base)
        lines += more
    if paths_result:
        fields["squeeze_fc1_max_pixels"], more = squeeze_fc1_max_pixels(paths_result, base)
        lines += more
    latest = max(results, key=lambda r: r.get("date", ""))
    measured = (f"benchmarks/tune.py on {device}, {latest.get('date', '?')}, torch "
                f"{latest.get('torch', '?')}, from kernel_breakdown.py sweeps: " + "; ".join(lines))
    source = f"{base.source} | {measured}" if base.source else measured
    return replace(base, **fields, device=device, source=source), lines


def warm_caches(batch, workers, timeout=150):
    """Start ``workers`` processes that together run each job of the tile sweeps once
    (kernel_breakdown.py --warm-shard), and wait for them (at most ``timeout`` seconds):
    Triton compiles into its on-disk cache in parallel what the timed sweeps then find."""
    start = time.monotonic()
    script = str(Path(__file__).with_name("kernel_breakdown.py"))
    env = {**os.environ, "SENET_KERNELS_TUNING": "none"}  # as the sweeps run
    procs = [subprocess.Popen([sys.executable, script, "--batch", str(batch),
                               "--warm-shard", f"{i}/{workers}"], env=env)
             for i in range(workers)]
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(max(0.0, timeout - (time.monotonic() - start))))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes.append(f"killed after {timeout} s")
            proc.wait()
    print(f"compile caches warmed by {workers} processes in {time.monotonic() - start:.0f} s "
          f"(exit codes: {', '.join(map(str, codes))})", flush=True)


def measure(batch, calls, out, warm_workers=0):
    """Measure this GPU's tuning and write it to ``out``: both tile sweeps against the
    defaults (their kernels compiled first by ``warm_workers`` processes, if any), the tiles
    (written at once: a run cut short keeps them), then the plain breakdown with those tiles
    in effect, and the path. Returns (Tuning, lines)."""
    import kernel_breakdown

    if warm_workers:
        warm_caches(batch, warm_workers)
    with configs.force_tuning(configs.DEFAULT_TUNING):
        reduce_result = kernel_breakdown.sweep_reduce_tiles(batch, calls)
        squeeze_fc1_result = kernel_breakdown.sweep_squeeze_fc1(batch, calls)
    tiles, lines = tune(configs.DEFAULT_TUNING, reduce_result, squeeze_fc1_result)
    tuning.save(tiles, out)
    print(f"wrote {out} (tiles): {tuning.describe(tiles)}", flush=True)
    with configs.force_tuning(tiles):
        paths_result = kernel_breakdown.run(batch, calls)
    tuned, more = tune(tiles, paths_result=paths_result)
    tuning.save(tuned, out)
    return tuned, lines + more


def _load_json(path):
    return json.loads(Path(path).read_text()) if path else None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the tuning file to write")
    parser.add_argument("--measure", action="store_true",
                        help="measure on this GPU (kernel_breakdown.py's sweeps and plain run, "
                             "in this process) instead of reading their JSON")
    parser.add_argument("--batch", type=int, default=256, help="with --measure")
    parser.add_argument("--calls", type=int, default=10, help="with --measure: profiled calls per row")
    parser.add_argument("--warm-workers", type=int, default=0,
                        help="with --measure: processes that compile the sweeps' kernels first")
    parser.add_argument("--base", help="a tuning file to start from (default: the defaults)")
    parser.add_argument("--reduce-tiles", help="kernel_breakdown.py --sweep-reduce-tiles --json")
    parser.add_argument("--squeeze-fc1-tiles", help="kernel_breakdown.py --sweep-squeeze-fc1 --json")
    parser.add_argument("--paths", help="kernel_breakdown.py --json (its plain run)")
    args = parser.parse_args()
    if args.measure:
        import torch
        if not torch.cuda.is_available():
            sys.exit("tune.py --measure times GPU kernels: it needs a CUDA GPU")
        if args.base or args.reduce_tiles or args.squeeze_fc1_tiles or args.paths:
            sys.exit("--measure measures everything from the defaults: no --base or JSON inputs")
        tuned, lines = measure(args.batch, args.calls, args.out, args.warm_workers)
    else:
        if not (args.reduce_tiles or args.squeeze_fc1_tiles or args.paths):
            sys.exit("give --measure (on a GPU), or kernel_breakdown.py results to tune from "
                     "(--reduce-tiles, --squeeze-fc1-tiles, --paths)")
        base = tuning.load(args.base) if args.base else configs.DEFAULT_TUNING
        tuned, lines = tune(base, *(_load_json(p) for p in (args.reduce_tiles,
                                                            args.squeeze_fc1_tiles, args.paths)))
        tuning.save(tuned, args.out)
    for line in lines:
        print(line)
    changed = list(tuning.changed_fields(tuned))
    print(f"wrote {args.out} for {tuned.device}: "
          f"{'differs from the defaults in ' + ', '.join(changed) if changed else 'the defaults'}")


if __name__ == "__main__":
    main()
