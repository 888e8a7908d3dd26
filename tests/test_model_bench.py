"""benchmarks/model_bench.py's bookkeeping: which networks it times and how rounds combine
(nothing is timed here: the timer is replaced by fixed values)."""

import argparse
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))
import model_bench  # noqa: E402


def test_networks_include_the_se_only_and_batchnorm_rows():
    pytest.importorskip("timm")
    names = [name for name, _ in model_bench.networks(torch.device("cpu"))]
    backend = model_bench.fused_backends(torch.device("cpu"))
    assert names[:2] == ["resnet50", "timm seresnet50"]
    assert names[-1] == "resnet50 [conv+BN folded]"
    if backend:  # the C++ CPU backend is built
        assert names[-3:-1] == [f"timm seresnet50 [{backend[0]}, SE only]",
                                f"timm seresnet50 [{backend[0]}, fuse_bn=False]"]
        assert f"timm seresnet50 [{backend[0]}]" in names


def _args(**over):
    args = dict(cuda_graphs=False, compile=None)
    args.update(over)
    return argparse.Namespace(**args)


def _nets():
    return [(name, None) for name in ("resnet50", "timm seresnet50", "timm seresnet50 [cpu]",
                                      "se_resnet50 [cpu]", "resnet50 [conv+BN folded]")]


def test_plan_without_compile(monkeypatch):
    """Every network in both modes, but the folded ResNet-50 in inference only."""
    monkeypatch.setattr(model_bench, "fused_backends", lambda device: ["cpu"])
    rows = [(name, variant, mode) for name, _, variant, mode in
            model_bench.plan(_args(), torch.device("cpu"), _nets())]
    assert ("resnet50 [conv+BN folded]", "eager", "inference") in rows
    assert ("resnet50 [conv+BN folded]", "eager", "train_step") not in rows
    assert len(rows) == 4 * 2 + 1 and all(variant == "eager" for _, variant, _ in rows)


@pytest.mark.parametrize("modes, expected", [([], ["inference", "train_step"]),
                                             (["inference"], ["inference"])])
def test_plan_puts_the_compile_rows_last(monkeypatch, modes, expected):
    """--compile: ResNet-50, timm seresnet50 and its conversion with the first fused backend,
    after every eager row, in the modes named (none named: both)."""
    monkeypatch.setattr(model_bench, "fused_backends", lambda device: ["cpu"])
    rows = [(name, variant, mode) for name, _, variant, mode in
            model_bench.plan(_args(compile=modes), torch.device("cpu"), _nets())]
    compiled = [r for r in rows if r[1] == "compile"]
    assert rows[-len(compiled):] == compiled
    assert compiled == [(name, "compile", mode) for name in
                        ("resnet50", "timm seresnet50", "timm seresnet50 [cpu]")
                        for mode in expected]


def test_folded_resnet50_computes_the_eval_model_without_batchnorms():
    """The conv + BN folding keeps the eval-mode output (float64, BatchNorms with random
    running statistics and affine parameters, so that folding them changes the weights)."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18().double().eval()  # the same conv + BN pairs, smaller
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        expected = model(x)
        folded = model_bench.folded_resnet50(model)
        got = folded(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # a copy
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


def test_se_overhead_only_for_networks_with_se():
    base = dict(variant="eager", mode="inference", images_per_s=1.0, peak_mib=None)
    rows = [dict(network="resnet50", ms=10.0, **base),
            dict(network="resnet50 [conv+BN folded]", ms=8.0, **base),
            dict(network="timm seresnet50 [cpu, fuse_bn=False]", ms=12.0, **base)]
    assert model_bench.se_overhead(rows[1], rows) is None
    assert model_bench.se_overhead(rows[2], rows) == pytest.approx(0.2)


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
