"""benchmarks/model_bench.py's bookkeeping: which networks it times and how rounds combine
(nothing is timed here: the timer is replaced by fixed values)."""

import argparse
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))
import model_bench  # noqa: E402


def test_networks_include_the_se_only_conversion():
    pytest.importorskip("timm")
    names = [name for name, _ in model_bench.networks(torch.device("cpu"))]
    backend = model_bench.fused_backends(torch.device("cpu"))
    assert names[:2] == ["resnet50", "timm seresnet50"]
    if backend:  # the C++ CPU backend is built
        assert names[-1] == f"timm seresnet50 [{backend[0]}, SE only]"
        assert f"timm seresnet50 [{backend[0]}]" in names


def test_more_rounds_takes_each_rows_median_and_recomputes_the_overheads(monkeypatch):
    rows = [dict(network="resnet50", variant="eager", mode="inference", ms=10.0,
                 images_per_s=800.0, peak_mib=None),
            dict(network="timm seresnet50", variant="eager", mode="inference", ms=14.0,
                 images_per_s=571.4, peak_mib=None, se_overhead=0.4)]
    steps = [object(), object()]
    # seconds per round after the first: resnet50 9, 12 ms; timm 11, 13 ms
    later = {id(steps[0]): [0.009, 0.012], id(steps[1]): [0.011, 0.013]}
    monkeypatch.setattr(model_bench, "median_seconds", lambda step, _: later[id(step)].pop(0))
    kept = [(rows[0], steps[0], [0.010]), (rows[1], steps[1], [0.014])]
    args = argparse.Namespace(rounds=3, min_run_time=0.1, batch=8)
    model_bench.more_rounds(kept, args, rows)
    assert rows[0]["ms"] == pytest.approx(10.0) and rows[0]["rounds"] == 3
    assert rows[1]["ms"] == pytest.approx(13.0)  # median of 14, 11, 13
    assert rows[1]["images_per_s"] == pytest.approx(8 / 0.013)
    assert rows[1]["se_overhead"] == pytest.approx(0.3)
