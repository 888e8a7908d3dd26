"""benchmarks/tune.py on made-up kernel_breakdown.py results: which choices it makes."""

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from senet_kernels.triton import configs, tuning
from senet_kernels.triton.configs import ReduceTile, SqueezeFc1Tile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import tune  # noqa: E402

GPU = "Test GPU"
HEAVY = ([256, 2048, 7, 7], [256, 1024, 14, 14])
FIRST = [256, 256, 56, 56]


def _result(rows):
    return {"device": GPU, "date": "2026-12-01", "torch": "2.11.0", "rows": rows}


def _reduce_row(shape, kernel, tile, us):
    return dict(family="se_resnet50", shape=list(shape), kernel=kernel,
                tile=[tile.block_c, tile.block_hw], num_warps=tile.num_warps,
                num_stages=tile.num_stages, us=us)


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
    assert tuned.weight_heavy_path == configs.DEFAULT_TUNING.weight_heavy_path  # no data


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
    rows = [dict(family="se_resnet50", shape=list(shape), tile="", tile_fields=asdict(t),
                 us=0.0, total_us=us)
            for shape in HEAVY for t, us in ((configs.SQUEEZE_FC1_TILE, 80.0), (fast, 70.0))]
    tuned, lines = tune.tune(configs.DEFAULT_TUNING, squeeze_fc1_result=_result(rows))
    assert tuned.squeeze_fc1_tile == fast
    assert "squeeze_fc1_tile: n16 c128" in lines[0]


def _path_rows(batched, squeeze_fc1):
    rows = []
    for shape in HEAVY:
        for pass_name in ("fwd", "fwd_bwd"):
            rows.append(dict(family="se_resnet50", shape=list(shape), path="batched",
                             pass_name=pass_name, k_splits=4, dispatcher_split=True,
                             total_us=batched))
            rows.append(dict(family="se_resnet50", shape=list(shape), path="batched",
                             pass_name=pass_name, k_splits=1, dispatcher_split=False,
                             total_us=1.0))  # unsplit: not what the dispatcher runs
            rows.append(dict(family="se_resnet50", shape=list(shape), path="squeeze_fc1",
                             pass_name=pass_name, k_splits=None, dispatcher_split=True,
                             total_us=squeeze_fc1))
    rows.append(dict(family="se_resnet50", shape=FIRST, path="per_sample", pass_name="fwd_bwd",
                     k_splits=None, dispatcher_split=True, total_us=1000.0))
    return _result(rows)


@pytest.mark.parametrize("batched, squeeze_fc1, expected",
                         [(92.5, 70.0, "squeeze_fc1"), (92.5, 95.0, "batched")])
def test_weight_heavy_path(batched, squeeze_fc1, expected):
    tuned, lines = tune.tune(configs.DEFAULT_TUNING, paths_result=_path_rows(batched, squeeze_fc1))
    assert tuned.weight_heavy_path == expected
    assert lines == [f"weight_heavy_path: {expected} (4 shape x pass rows: "
                     + ", ".join(f"{p} {t * 4:.1f} us" for p, t in
                                 sorted({"batched": batched, "squeeze_fc1": squeeze_fc1}.items(),
                                        key=lambda kv: kv[1])) + ")"]


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
    assert "weight_heavy_path: squeeze_fc1" in second
    tuned = tuning.load(out)
    assert (tuned.weight_heavy_path, tuned.channels_last_small_map_tile) == ("squeeze_fc1", WIDE)
    assert tuned.source.count("benchmarks/tune.py on Test GPU") == 2
