"""The main job's table and summary (benchmarks themselves are not tests: nothing is timed here)."""

import pytest
import torch

from senet_kernels import bench


def _row(backend, ms, gpu_ms=None, **over):
    row = dict(backend=backend, shape=[256, 2048, 7, 7], rd_channels=128, family="se_resnet50",
               dtype="bfloat16", layout="channels_last", median_ms=ms, gpu_ms=gpu_ms,
               speedup_vs_eager=0.2 / ms, speedup_vs_compile=0.1 / ms, gbps=100.0,
               floor_fraction=0.5, **{"pass": "res_relu_fwd"})
    row.update(over)
    return row


def test_summary_and_table():
    result = {"device": "test", "date": "2026-11-28", "versions": {"torch": "x"},
              "backends": ["triton"],
              "rows": [_row("triton", 0.05, 0.04), _row("eager", 0.2, 0.19),
                       _row("compile", 0.1, 0.09), _row("compile_static", 0.1, 0.108)]}
    text = bench.summary(result)
    assert "static compile of eager_se takes 1.20x the time of the dynamic one" in text
    assert "triton  res_relu_fwd: vs eager min 4.00x" in text
    table = bench.format_table(result)
    assert "| GPU ms |" in table and "| 0.040 |" in table
    result["rows"][0]["gpu_ms"] = None  # no CUDA graph (CPU, or not capturable)
    assert "| 0.050 | - |" in bench.format_table(result)


def test_traffic_units():
    """GB/s counts compulsory traffic in activation tensors: 2 for the plain forward, 3 with
    the residual, 5 / 8 for forward + backward without / with the ReLU tail."""
    assert bench.traffic_tensors("fwd", False) == 2
    assert bench.traffic_tensors("res_relu_fwd", True) == 3
    assert bench.traffic_tensors("fwd_bwd", False) == 5
    assert bench.traffic_tensors("fwd_bwd", True) == 8


def test_gpu_shapes_are_batch_256():
    assert {s.n for s in bench.shapes("gpu")} == {256}
    assert {s.n for s in bench.shapes("cpu")} == {8}


def test_case_inputs_are_drawn_where_they_run():
    """The bench draws its inputs with the device's own generator, in the case's dtype and
    layout, reproducibly per seed (a float64 draw on the CPU took 10-15 s per GPU case)."""
    import torch

    case = next(c for c in bench.cases("cpu", ["bfloat16"], ["channels_last"])
                if c.pass_name == "fwd_bwd")
    first, activation, with_residual, backward = bench.case_inputs(case, torch.device("cpu"))
    again, *_ = bench.case_inputs(case, torch.device("cpu"))
    x, w1, b1, w2, b2, res = first
    assert backward and x.requires_grad and w1.requires_grad
    assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)
    assert list(x.shape) == [case.shape.n, case.shape.c, case.shape.hw, case.shape.hw]
    assert w1.shape == (case.shape.cr, case.shape.c) and w2.shape == (case.shape.c, case.shape.cr)
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    assert x.float().std() > 0.5 and not torch.equal(x, res)


def test_bn_traffic_units():
    """The BatchNorm passes read y twice each way (batch statistics over the whole batch):
    forward 4 tensors, forward + backward 4 + 7 (docs/design.md's traffic table)."""
    assert bench.traffic_tensors("bn_res_relu_fwd", True) == 4
    assert bench.traffic_tensors("bn_fwd_bwd", True) == 11


def test_bn_cases_come_last_at_the_se_resnet_shapes_only():
    cases = bench.cases("cpu", ["float32"], ["nchw", "channels_last"])
    kinds = [c.kind for c in cases]
    first_bn = kinds.index("bn")
    assert set(kinds[:first_bn]) == {"se"} and set(kinds[first_bn:]) == {"bn"}
    bn = cases[first_bn:]
    assert {c.shape.family for c in bn} == {"se_resnet50"}
    assert sorted({c.pass_name for c in bn}) == sorted(bench.BN_PASSES)
    assert len(bn) == len(bench.RESNET_STAGES) * 2 * 2
    only = bench.cases("cpu", ["float32"], ["nchw"], passes=["bn_fwd_bwd"])
    assert [c.pass_name for c in only] == ["bn_fwd_bwd"] * len(bench.RESNET_STAGES)


def test_command_line_passes_are_the_bench_passes():
    from senet_kernels.__main__ import BENCH_PASSES
    assert BENCH_PASSES == tuple(bench.PASSES)


def _bn_case(pass_name, layout="channels_last"):
    return bench.Case(bench.Shape("se_resnet50", 3, 16, 5, 4), pass_name, "float32", layout)


def test_bn_case_inputs():
    """A BatchNorm case's tensors: the SE case's, then the BatchNorm's affine parameters
    (leaves of the backward), running statistics as a fresh nn.BatchNorm2d has them, and its
    batch counter."""
    case = _bn_case("bn_fwd_bwd")
    tensors, activation, with_residual, backward = bench.case_inputs(case, torch.device("cpu"))
    assert (activation, with_residual, backward) == ("relu", True, True)
    x, w1, b1, w2, b2, res, weight, bias, mean, var, count = tensors
    assert weight.requires_grad and bias.requires_grad and not mean.requires_grad
    assert weight.shape == bias.shape == mean.shape == var.shape == (16,)
    assert weight.std() > 0 and not torch.equal(weight, torch.ones(16))
    assert torch.equal(mean, torch.zeros(16)) and torch.equal(var, torch.ones(16))
    assert count.dtype == torch.long and count.item() == 0
    forward, *_, no_grad = bench.case_inputs(_bn_case("bn_res_relu_fwd"), torch.device("cpu"))
    assert not no_grad and not any(t.requires_grad for t in forward)


def _run_step(fn, case):
    """One step of fn on fresh inputs: (output or gradients, running mean, var, counter)."""
    tensors, activation, with_residual, backward = bench.case_inputs(case, torch.device("cpu"))
    out = bench.make_step(fn, tensors, activation, with_residual, backward)()
    return out, tensors[-3:]


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("pass_name", ["bn_res_relu_fwd", "bn_fwd_bwd"])
def test_bn_implementations_time_the_same_work(pass_name, layout, monkeypatch):
    """Every implementation of a BatchNorm case computes the block of a training step: the
    same output (forward) or the same gradients of y, the SE and BatchNorm parameters and
    the residual (forward + backward), and the same running statistics, as the eager block
    in float64 (not a correctness test of the kernels: that the rows time equal work)."""
    case = _bn_case(pass_name, layout)
    # one output gradient for every step (make_step draws it with randn_like)
    grad = torch.randn(3, 16, 5, 5, dtype=torch.float64)
    monkeypatch.setattr(torch, "randn_like", lambda t: torch.empty_like(t).copy_(grad))
    impls = dict(bench.implementations(torch.device("cpu"))["bn"])
    assert "eager" in impls and "compile" in impls
    if bench.bn_fused_kernels_for(torch.empty(0)):
        assert {"bn_fused", "bn+cpu"} <= set(impls)
    tensors, activation, with_residual, backward = bench.case_inputs(case, torch.device("cpu"))
    as64 = [t.detach().double().requires_grad_(t.requires_grad) if t.is_floating_point()
            else t.clone() for t in tensors]
    expected = bench.make_step(impls["eager"], as64, activation, with_residual, backward)()
    expected = expected if backward else [expected]
    assert len(expected) == (8 if backward else 1)
    for name, fn in impls.items():
        out, (mean, var, count) = _run_step(fn, case)
        out = out if backward else [out]
        for got, want in zip(out, expected):
            torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4, msg=name)
        torch.testing.assert_close(mean.double(), as64[-3], rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(var.double(), as64[-2], rtol=1e-5, atol=1e-6, msg=name)
        assert count.item() == 1, name
    assert as64[-3].abs().max() > 0.01  # the update moved the statistics


def test_summary_compares_the_fused_bn_op_with_bn_then_the_se_op():
    bn = dict(shape=[8, 256, 56, 56], family="se_resnet50", dtype="float32", layout="nchw")
    rows = [_row("bn_fused", 2.0, **bn, **{"pass": "bn_fwd_bwd"}),
            _row("bn+cpu", 5.0, **bn, **{"pass": "bn_fwd_bwd"}),
            _row("eager", 8.0, **bn, **{"pass": "bn_fwd_bwd"}),
            _row("compile", 6.0, **bn, **{"pass": "bn_fwd_bwd"})]
    result = {"device": "test", "date": "2026-12-06", "versions": {}, "backends": ["cpu"],
              "rows": rows}
    text = bench.summary(result)
    assert "bn_fused    bn_fwd_bwd: vs eager min" in text
    assert " bn+cpu    bn_fwd_bwd: vs eager min" in text
    assert "bn_fused bn_fwd_bwd: vs bn+cpu (the BatchNorm, then the fused SE op) min 2.50x" in text
    assert "| bn_fused | 2.000 |" in bench.format_table(result)
