"""benchmarks/tune.py on made-up kernel_breakdown.py results: which choices it makes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from senet_kernels.triton import configs, tuning
from senet_kernels.triton.configs import ReduceTile, SqueezeFc1Tile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import kernel_breakdown  # noqa: E402  (its row builders: tune.py reads what it writes)
import tune  # noqa: E402

GPU = "Test GPU"
HEAVY = ([256, 2048, 7, 7], [256, 1024, 14, 14])
FIRST = [256, 256, 56, 56]


def _result(rows):
    return {"device": GPU, "date": "2026-12-01", "torch": "2.11.0", "rows": rows}


def _reduce_row(shape, kernel, tile, us):
    return kernel_breakdown.reduce_tile_row("se_resnet50", shape, kernel, tile, False, us,
                                            gbps=1.0, copy_gbps=1.0)


def reduce_sweep(small_times, large_times):
    """Rows of --sweep-reduce-tiles: {tile: us} per kernel on each weight-heavy shape, and on
    the first stage."""
    rows = []
    for shape in HEAVY:
        for kernel in ("se_squeeze_excite_fwd", "se_squeeze_excite_bwd"):
            rows += [_reduce_row(shape, kernel, t, us) for t, us in small_times.items()]
    for kernel in ("se_squeeze_excite_fwd", "se_squeeze_excite_bwd"):
        rows += [_reduce_row(FIRST, kernel, t, us) for t, us in large_times.items()]
    return _result(rows)


DEFAULT_CL = configs.CHANNELS_LAST_TILE
WIDE = ReduceTile(128, 32, num_stages=3)
PIPELINED = ReduceTile(64, 32, num_stages=3)


def test_reduce_tiles_take_the_fastest_on_each_side():
    tuned, lines = tune.tune(configs.DEFAULT_TUNING,
                             reduce_sweep({DEFAULT_CL: 30.0, WIDE: 20.0}, {DEFAULT_CL: 100.0, PIPELINED: 90.0}))
    assert tuned.channels_last_small_map_tile == WIDE
    assert tuned.channels_last_tile == PIPELINED
    assert tuned.device == GPU and "2026-12-01" in tuned.source and "2.11.0" in tuned.source
    assert lines[0].startswith("channels_last_small_map_tile: 128x32 w4 s3")
    assert tuned.squeeze_fc1_max_pixels == 0  # no data: the base's


def test_a_gain_within_the_margin_keeps_the_base_choice():
    tuned, _ = tune.tune(configs.DEFAULT_TUNING,
                         reduce_sweep({DEFAULT_CL: 30.0, WIDE: 29.9}, {DEFAULT_CL: 100.0, PIPELINED: 99.0}))
    assert tuned.channels_last_small_map_tile == DEFAULT_CL
    assert tuned.channels_last_tile == DEFAULT_CL


def test_only_tiles_measured_on_every_shape_compete():
    result = reduce_sweep({DEFAULT_CL: 30.0}, {DEFAULT_CL: 100.0})
    # a tile that failed (no row) on one of the shapes cannot win on the others' times
    result["rows"].append(_reduce_row(HEAVY[0], "se_squeeze_excite_fwd", WIDE, 1.0))
    tuned, _ = tune.tune(configs.DEFAULT_TUNING, result)
    assert tuned.channels_last_small_map_tile == DEFAULT_CL


def test_squeeze_fc1_tile_by_summed_forward_time():
    fast = SqueezeFc1Tile(block_c=128)
    rows = [kernel_breakdown.squeeze_fc1_tile_row("se_resnet50", shape, t, False, us / 2, us,
                                                  gbps=1.0, copy_gbps=1.0)
            for shape in HEAVY for t, us in ((configs.SQUEEZE_FC1_TILE, 80.0), (fast, 70.0))]
    tuned, lines = tune.tune(configs.DEFAULT_TUNING, squeeze_fc1_result=_result(rows))
    assert tuned.squeeze_fc1_tile == fast
    assert "squeeze_fc1_tile: n16 c128" in lines[0]


def _path_rows(batched, squeeze_fc1):
    """kernel_breakdown.py's plain run: each weight-heavy shape (HEAVY: 7x7, then 14x14) on
    both paths, forward and forward + backward; ``batched`` / ``squeeze_fc1``: us per row, one
    number for all shapes or one per shape."""
    def row(shape, path, backward, k_splits, total, dispatcher_split=True):
        n, c, hw, _ = shape
        # two kernels, so that the row's total is their sum
        return kernel_breakdown.path_row("se_resnet50", n, c, hw, c // 16, path, backward,
                                         k_splits, False, {"a": total / 4, "b": total * 3 / 4},
                                         dispatcher_split)
    per_shape = lambda t: t if isinstance(t, tuple) else (t,) * len(HEAVY)
    rows = []
    for shape, b, s in zip(HEAVY, per_shape(batched), per_shape(squeeze_fc1)):
        for backward in (False, True):
            rows.append(row(shape, "batched", backward, 4, b))
            # unsplit: not what the dispatcher runs
            rows.append(row(shape, "batched", backward, 1, 1.0, dispatcher_split=False))
            rows.append(row(shape, "squeeze_fc1", backward, None, s))
    rows.append(row(FIRST, "per_sample", True, None, 1000.0))
    return _result(rows)


@pytest.mark.parametrize("batched, squeeze_fc1, expected", [
    (92.5, 70.0, 196),                 # squeeze_fc1 faster on both map sizes
    ((92.5, 120.0), (70.0, 130.0), 49),  # on 7x7 only
    (92.5, 95.0, 0),                   # on neither
    (92.5, 91.0, 0),                   # faster, but within the margin
])
def test_squeeze_fc1_max_pixels(batched, squeeze_fc1, expected):
    tuned, lines = tune.tune(configs.DEFAULT_TUNING, paths_result=_path_rows(batched, squeeze_fc1))
    assert tuned.squeeze_fc1_max_pixels == expected
    assert lines[0].startswith(f"squeeze_fc1_max_pixels: {expected} (")
    assert "summed over 4 shape x pass rows" in lines[0]


def test_a_limit_past_the_measured_maps_stays_when_it_picks_the_same():
    base = configs.Tuning(device=GPU, squeeze_fc1_max_pixels=400)
    tuned, _ = tune.tune(base, paths_result=_path_rows(92.5, 70.0))
    assert tuned.squeeze_fc1_max_pixels == 400
    tuned, _ = tune.tune(base, paths_result=_path_rows(92.5, 120.0))
    assert tuned.squeeze_fc1_max_pixels == 0


def test_results_of_two_gpus_are_refused():
    other = {**_path_rows(90.0, 80.0), "device": "Other GPU"}
    with pytest.raises(ValueError, match="one GPU"):
        tune.tune(configs.DEFAULT_TUNING, reduce_sweep({DEFAULT_CL: 1.0}, {DEFAULT_CL: 1.0}), None, other)
    with pytest.raises(ValueError, match="base tuning is for"):
        tune.tune(configs.Tuning(device="Other GPU"), paths_result=_path_rows(90.0, 80.0))


def test_command_line_in_two_steps_as_gpu_check_runs_it(tmp_path):
    """Tiles first, then the path on top of them (--base): a file tuning.py loads."""
    files = {"reduce": reduce_sweep({DEFAULT_CL: 30.0, WIDE: 20.0}, {DEFAULT_CL: 100.0}),
             "paths": _path_rows(92.5, 70.0)}
    for name, result in files.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(result))
    out = tmp_path / "tuning.json"
    run = lambda *args: subprocess.run([sys.executable, str(ROOT / "benchmarks" / "tune.py"),
                                        "--out", str(out), *args], capture_output=True,
                                       text=True, check=True).stdout
    first = run("--reduce-tiles", str(tmp_path / "reduce.json"))
    assert "differs from the defaults in channels_last_small_map_tile" in first
    second = run("--base", str(out), "--paths", str(tmp_path / "paths.json"))
    assert "squeeze_fc1_max_pixels: 196" in second
    tuned = tuning.load(out)
    assert (tuned.squeeze_fc1_max_pixels, tuned.channels_last_small_map_tile) == (196, WIDE)
    assert tuned.source.count("benchmarks/tune.py on Test GPU") == 2


class _FakeGpu:
    """kernel_breakdown.py's GPU side replaced (no kernel runs): per-kernel times that
    depend on what each call forces or the tuning in effect picks, so that the widest
    reduction tile and the squeeze_fc1 tile with 128 channels are the fastest, and the
    squeeze_fc1 path is faster than batched with that tile only."""

    class Pass:
        """What kernel_breakdown.step returns: a pass to time (or, warming, to run once)."""

        def __init__(self, fake, tensors, backward, path):
            self.fake, self.backward, self.path = fake, backward, path
            self.shape = tuple(tensors[0].shape)

        def forced(self):
            """(shape, sweep kind, tile) of a pass the tile sweeps force, else None."""
            if configs.forced_reduce_tile is not None:
                return self.shape, "reduce", configs.forced_reduce_tile
            if configs.forced_squeeze_fc1_tile is not None:
                return self.shape, "squeeze_fc1", configs.forced_squeeze_fc1_tile
            return None

        def __call__(self):
            self.fake.warmed.append(self.forced())

    def __init__(self, monkeypatch):
        class Props:
            multi_processor_count = 132
        self.timed, self.warmed = [], []  # the sweeps' (shape, kind, tile), as timed / run
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda *a: Props())
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: GPU)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
        monkeypatch.setattr(kernel_breakdown, "_inputs", self.inputs)
        monkeypatch.setattr(kernel_breakdown, "copy_bandwidth", lambda x: 3000.0)
        monkeypatch.setattr(kernel_breakdown, "step", lambda fn, tensors, tail, backward, path:
                            self.Pass(self, tensors, backward, path))
        monkeypatch.setattr(kernel_breakdown, "kernel_us", self.kernel_us)

    @staticmethod
    def inputs(n, c, hw, cr):
        x = torch.empty(n, c, hw, hw, dtype=torch.bfloat16)
        return [x, torch.empty(cr, c), torch.empty(cr), torch.empty(c, cr), torch.empty(c), x]

    def kernel_us(self, call, calls):
        path, backward = call.path, call.backward
        if call.forced():
            self.timed.append(call.forced())
        tile = configs.forced_reduce_tile
        if tile is not None:  # the reduce-tile sweep
            us = 1000.0 / tile.block_c + tile.num_stages
            return {"se_squeeze_excite_fwd": us, "se_squeeze_excite_bwd": 2 * us}
        # the tile the dispatcher takes, from the tuning in effect, unless one is forced
        fc1_tile = configs.forced_squeeze_fc1_tile or configs.squeeze_fc1_tile(
            49, 2, tuning.for_device(torch.device("cuda", 0)))
        fc1_us = 40.0 if fc1_tile.block_c == 128 and fc1_tile.num_warps == 4 else 55.0
        tail = {"se_excite_gemm_r_to_c": 7.4, "se_scale_fwd": 35.4}
        if path == "squeeze_fc1":  # faster than batched only with the tuned tile
            return {"se_squeeze_fc1_fwd": fc1_us, **tail,
                    **({"se_squeeze_fc2_bwd": 80.0} if backward else {})}
        return {"se_squeeze_excite_fwd": 33.7, "se_excite_gemm_c_to_r": 16.0, **tail,
                **({"se_squeeze_excite_bwd": 90.0} if backward else {})}


def test_measure_on_fake_timings(monkeypatch, tmp_path):
    """tune.py --measure (what gpu_check.sh runs) with kernel_breakdown.py's GPU side faked:
    both sweeps with the defaults, the tiles, the plain breakdown with them in effect, the
    path; what it chooses is what the fake timings favour."""
    fake = _FakeGpu(monkeypatch)
    warmed = []
    monkeypatch.setattr(tune, "warm_caches", lambda batch, workers: warmed.append(
        (batch, workers, len(fake.timed))))
    out = tmp_path / "tuning.json"
    saved = []
    real_save = tuning.save
    monkeypatch.setattr(tuning, "save", lambda t, path: (saved.append(t), real_save(t, path)))
    tuned, lines = tune.measure(256, 1, out, warm_workers=3)
    assert warmed == [(256, 3, 0)]  # before anything was timed
    tiles = saved[0]  # written before the plain breakdown ran
    assert tiles.channels_last_small_map_tile == ReduceTile(256, 16)  # widest, no stages
    assert tiles.channels_last_tile == configs.CHANNELS_LAST_TILE  # the first stage's sweep
    assert tiles.squeeze_fc1_tile == SqueezeFc1Tile(block_c=128)
    assert tiles.squeeze_fc1_max_pixels == 0  # not measured yet
    # squeeze_fc1 is faster than batched with the tuned tile only: the tiles were in effect
    assert tuned.squeeze_fc1_max_pixels == 196  # every weight-heavy shape measured
    assert (tuned.channels_last_small_map_tile, tuned.squeeze_fc1_tile) == (
        tiles.channels_last_small_map_tile, tiles.squeeze_fc1_tile)
    assert tuning.load(out) == tuned and len(saved) == 2
    assert tuned.device == GPU and tuned.source.count("benchmarks/tune.py on Test GPU") == 2
    assert [line.split(":")[0] for line in lines] == [
        "channels_last_small_map_tile", "channels_last_tile", "squeeze_fc1_tile",
        "squeeze_fc1_max_pixels"]
    # the warm-up processes run exactly what the sweeps time
    jobs = [((s.n, s.c, s.hw, s.hw), kind, tile)
            for s, kind, tile in kernel_breakdown.tuning_sweep_jobs(256)]
    assert fake.timed == jobs


def test_warm_up_shards_run_the_sweeps_jobs_once(monkeypatch):
    fake = _FakeGpu(monkeypatch)
    for shard in range(3):
        kernel_breakdown.warm_caches(256, shard, 3)
    jobs = [((s.n, s.c, s.hw, s.hw), kind, tile)
            for s, kind, tile in kernel_breakdown.tuning_sweep_jobs(256)]
    assert sorted(map(repr, fake.warmed)) == sorted(map(repr, jobs))


def test_warm_caches_starts_a_process_per_shard_and_stops_late_ones(monkeypatch):
    started = []

    class FakeProcess:
        def __init__(self, args, env):
            self.args, self.env, self.killed = args, env, False
            started.append(self)

        def wait(self, timeout=None):
            if self.args[-1] == "1/2" and not self.killed:  # this one hangs
                raise subprocess.TimeoutExpired(self.args, timeout)
            return 0

        def kill(self):
            self.killed = True
    monkeypatch.setattr(subprocess, "Popen", FakeProcess)
    tune.warm_caches(128, 2, timeout=0.1)
    assert [p.args[-3:] for p in started] == [["128", "--warm-shard", "0/2"],
                                              ["128", "--warm-shard", "1/2"]]
    assert all(p.args[1].endswith("kernel_breakdown.py") for p in started)
    assert all(p.env["SENET_KERNELS_TUNING"] == "none" for p in started)
    assert [p.killed for p in started] == [False, True]
