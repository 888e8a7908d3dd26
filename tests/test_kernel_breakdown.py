"""benchmarks/kernel_breakdown.py's summaries of its GPU sweeps (nothing is timed here: the
rows are made up, as a GPU run would write them)."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))
import kernel_breakdown  # noqa: E402


def _tile_row(kernel, tile, warps, stages, us, picked=False, shape=(256, 2048, 7, 7)):
    return dict(family="se_resnet50", shape=list(shape), kernel=kernel, tile=list(tile),
                num_warps=warps, num_stages=stages, picked=picked, us=us, gbps=0.0,
                of_copy=10.0 / us)


def test_best_tile_per_shape_and_reduction_against_the_picked_one():
    rows = [_tile_row("se_squeeze_excite_fwd", (64, 32), 4, 1, 33.6, picked=True),
            _tile_row("se_squeeze_excite_fwd", (64, 32), 4, 3, 16.8),
            _tile_row("se_squeeze_excite_fwd", (128, 64), 8, 1, 20.0),
            _tile_row("se_squeeze_excite_bwd", (64, 32), 4, 1, 56.0, picked=True),
            _tile_row("se_squeeze_excite_bwd", (128, 32), 4, 3, 60.0),
            _tile_row("se_squeeze_excite_fwd", (64, 64), 4, 1, 30.0, shape=(256, 1024, 14, 14))]
    lines = kernel_breakdown.best_tile_lines(rows)
    assert lines == [
        "best se_resnet50 256x2048x7x7 squeeze_excite_fwd: tile 64x32 4 warps 3 stages, 16.8 us "
        "(60% of a copy), 2.00x the picked tile's speed",
        "best se_resnet50 256x2048x7x7 squeeze_excite_bwd: tile 64x32 4 warps 1 stages, 56.0 us "
        "(18% of a copy), 1.00x the picked tile's speed",
        "best se_resnet50 256x1024x14x14 squeeze_excite_fwd: tile 64x64 4 warps 1 stages, "
        "30.0 us (33% of a copy)"]


def test_best_split_per_shape_and_pass():
    def row(pass_name, splits, total, picked=False):
        return dict(family="se_resnet50", shape=[256, 2048, 7, 7], pass_name=pass_name,
                    k_splits=splits, picked=picked, total_us=total)
    rows = [row("fwd", 1, 114.1), row("fwd", 5, 92.5, picked=True), row("fwd", 16, 85.0),
            row("fwd_bwd", 1, 268.1), row("fwd_bwd", 5, 226.5, picked=True)]
    assert kernel_breakdown.best_split_lines(rows) == [
        "best se_resnet50 256x2048x7x7 fwd: K-splits 16, 85.0 us (picked 5: 92.5 us)",
        "best se_resnet50 256x2048x7x7 fwd_bwd: K-splits 5, 226.5 us (picked 5: 226.5 us)"]


def test_the_k_split_sweep_stays_within_what_the_epilogue_reads():
    from senet_kernels.triton import configs
    assert max(kernel_breakdown.K_SPLIT_SWEEP) <= configs.K_SPLIT_LIMIT


def test_candidate_path_against_the_picked_one():
    def row(path, pass_name, splits, total, picked=False, shape=(256, 2048, 7, 7), split=True):
        return dict(family="se_resnet50", shape=list(shape), path=path, pass_name=pass_name,
                    k_splits=splits, picked=picked, total_us=total, cr=128, kernel_us={},
                    dispatcher_split=split)
    rows = [row("batched", "fwd", 5, 92.5, picked=True), row("batched", "fwd", 1, 114.1, split=False),
            row("squeeze_fc1", "fwd", None, 70.0),
            row("batched", "fwd_bwd", 5, 226.5, picked=True), row("squeeze_fc1", "fwd_bwd", None, 240.0),
            row("per_sample", "fwd_bwd", None, 1028.2, picked=True, shape=(256, 256, 56, 56))]
    assert kernel_breakdown.candidate_lines(rows) == [
        "squeeze_fc1 se_resnet50 256x2048x7x7 fwd: 70.0 us vs 92.5 us batched (1.32x); "
        "picked: batched; fastest: squeeze_fc1, 70.0 us",
        "squeeze_fc1 se_resnet50 256x2048x7x7 fwd_bwd: 240.0 us vs 226.5 us batched (0.94x); "
        "picked: batched; fastest: batched, 226.5 us"]
    # a GPU whose tuning takes squeeze_fc1: the batched row as the dispatcher would split it
    rows[0]["picked"], rows[2]["picked"] = False, True
    assert kernel_breakdown.candidate_lines(rows)[0] == (
        "squeeze_fc1 se_resnet50 256x2048x7x7 fwd: 70.0 us vs 92.5 us batched (1.32x); "
        "picked: squeeze_fc1; fastest: squeeze_fc1, 70.0 us")
    assert "fwd_bwd squeeze_fc1 path: 240.0 us" in kernel_breakdown.format_row(rows[4])
    assert "squeeze_fc1 path: 70.0 us" in kernel_breakdown.format_row(rows[2])
    assert "per-sample path" in kernel_breakdown.format_row(rows[5])
