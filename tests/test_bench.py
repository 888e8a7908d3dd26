"""The main job's table and summary (benchmarks themselves are not tests: nothing is timed here)."""

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
