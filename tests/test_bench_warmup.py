"""The main job's compiler-cache warm-up (senet_kernels/bench_warmup.py): how it shares the
cases out, that the baseline compiles one graph per compile group, and that a worker's compile
is what the timing process then finds in Inductor's cache."""

import itertools

import pytest
import torch

from senet_kernels import bench
from senet_kernels.baselines import linear_bn_se, linear_se
from senet_kernels.bench_warmup import WarmUp, compile_groups, share_out

CPU = torch.device("cpu")


@pytest.fixture
def compiler_settings():
    """configure_compiler() for one test, the process's settings restored after it (by the
    config modules' own patch(): pytest's monkeypatch deletes what it set on them, which hides
    a torch config entry for good)."""
    import torch._dynamo.config as dynamo_config
    import torch.fx.experimental._config as fx_config
    limits = {name: getattr(dynamo_config, name) for name in (
        "recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
        "accumulated_cache_size_limit") if hasattr(dynamo_config, name)}
    with fx_config.patch(use_duck_shape=fx_config.use_duck_shape), dynamo_config.patch(**limits):
        torch._dynamo.reset()
        bench.configure_compiler()
        yield
    torch._dynamo.reset()


def test_share_out_keeps_groups_whole_and_balanced():
    cases = bench.cases("gpu", ["bfloat16"], ["nchw", "channels_last"])
    # 3 SE passes x 2 layouts SE-ResNet, 2 x 2 EfficientNet, 2 BatchNorm passes x 2 layouts
    assert compile_groups(cases) == 14
    shares = share_out(cases, 4)
    assert len(shares) == 4
    assert sorted(c.label for share in shares for c in share) == sorted(c.label for c in cases)
    groups = [{c.compile_group for c in share} for share in shares]
    assert all(not a & b for a, b in itertools.combinations(groups, 2))
    costs = [sum(2 if c.pass_name.endswith("fwd_bwd") else 1 for c in share) for share in shares]
    assert max(costs) <= 2 * min(costs)
    assert len(share_out(cases, 64)) == 14  # never more workers than groups


@pytest.mark.parametrize("sizes", ["gpu", "cpu"])
def test_one_graph_per_compile_group(compiler_settings, sizes):
    """Over a run's cases the dynamic-shape baseline traces exactly one graph per compile
    group (with duck sizing, N = C = 256 in the GPU run's first stage gave 13 instead of 10).
    Traced on meta tensors with a counting backend: no device, no Inductor."""
    graphs = []

    def count(gm, example_inputs):
        graphs.append(gm)
        return gm.forward
    compiled = {"se": torch.compile(linear_se, dynamic=True, backend=count),
                "bn": torch.compile(linear_bn_se, dynamic=True, backend=count)}
    cases = bench.cases(sizes, ["bfloat16"], ["channels_last", "nchw"])
    assert {case.kind for case in cases} == {"se", "bn"}
    for case in cases:
        s = case.shape
        activation, tail = bench.options_for(s)
        with_residual = tail and case.pass_name != "fwd"
        fmt = torch.channels_last if case.layout == "channels_last" else torch.contiguous_format
        meta = dict(device="meta", dtype=torch.bfloat16)
        x = torch.empty(s.n, s.c, s.hw, s.hw, **meta).contiguous(memory_format=fmt)
        params = [torch.empty(s.cr, s.c, **meta), torch.empty(s.cr, **meta),
                  torch.empty(s.c, s.cr, **meta), torch.empty(s.c, **meta)]
        residual = torch.empty_like(x) if with_residual else None
        bn = ([torch.empty(s.c, **meta) for _ in range(4)]
              + [torch.zeros((), device="meta", dtype=torch.long)] if case.kind == "bn" else [])
        if case.pass_name.endswith("fwd_bwd"):
            for t in [x, *params] + ([residual] if with_residual else []) + bn[:2]:
                t.requires_grad_()
        compiled[case.kind](x, *params, residual, *bn, activation=activation,
                            post_relu=with_residual)
    assert len(graphs) == compile_groups(cases)


def test_worker_compile_is_found_by_the_timing_process(tmp_path, monkeypatch, compiler_settings):
    """A worker compiles a case's baseline into a fresh Inductor cache; this process then
    compiles the same case from that cache (a hit, no compile of its own)."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # the worker inherits it
    case = bench.Case(bench.Shape("se_resnet50", 2, 24, 3, 6), "res_relu_fwd", "float32", "nchw")
    warm_up = WarmUp.start([case], workers=1, time_limit=600)
    reported = _drain(warm_up)
    assert sorted(reported) == [("baseline", 0), ("kernels", 0)]
    summary = warm_up.finish()
    assert summary["errors"] == [] and summary["cases_done"] == 1 and not summary["timed_out"]
    before = bench.compile_cache_counters()
    tensors, activation, with_residual, backward = bench.case_inputs(case, CPU)
    bench.make_step(bench.compiled_baseline(), tensors, activation, with_residual, backward)()
    after = bench.compile_cache_counters()
    assert after["fxgraph_hit"] - before["fxgraph_hit"] >= 1
    assert after["fxgraph_miss"] == before["fxgraph_miss"]


def _drain(warm_up):
    """Every (part, index) the workers report until none is left working."""
    reported = []
    while warm_up.active:
        reported += warm_up.poll(timeout=5.0)
    return reported


def test_warm_up_past_its_time_limit_is_stopped():
    """Workers still compiling at the limit are stopped at once, and the summary says so."""
    case = bench.Case(bench.Shape("efficientnet_b0", 2, 20, 3, 5), "fwd", "float32", "nchw")
    warm_up = WarmUp.start([case], workers=1, time_limit=0.5)
    assert warm_up.poll(timeout=30.0) == []  # a worker takes seconds to import torch
    assert not warm_up.active
    summary = warm_up.finish()
    assert summary["timed_out"] and summary["cases_done"] == 0 and summary["seconds"] < 5
    assert not any(p.is_alive() for p in warm_up.processes)


def test_cases_are_timed_as_the_workers_compile_them(tmp_path, monkeypatch, compiler_settings):
    """With the workers as the schedule's source, the timing loop takes each part as a worker
    reports it compiled; rows come back in the run's order, with every column, and its
    compiles are cache hits."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    shape = bench.Shape("se_resnet50", 2, 24, 3, 6)
    cases = [bench.Case(shape, "fwd", "float32", "nchw"),
             bench.Case(shape, "res_relu_fwd", "float32", "channels_last")]
    warm_up = WarmUp.start(cases, workers=1, time_limit=600)
    result = bench.run(cases, "cpu", min_run_time=0.01, progress=False, source=warm_up)
    summary = warm_up.finish()
    assert summary["errors"] == [] and summary["cases_done"] == 2 and not summary["timed_out"]
    assert result["phases"]["parts_timed_as_compiled"] >= 1
    assert result["untimed"] == {"kernels": [], "baseline": []}
    passes = [row["pass"] for row in result["rows"]]
    assert passes.index("fwd") < passes.index("res_relu_fwd")  # todo's order
    assert {row["backend"] for row in result["rows"]} >= {"eager", "compile"}
    assert all(row["speedup_vs_compile"] is not None for row in result["rows"])
    assert result["compile_cache"]["fxgraph_hit"] >= 1


def test_check_process_reports_the_checks_result():
    """The check in processes of its own (the GPU main job's), two shards here: every case
    checked once, the printout and failure count merged in the parent."""
    from senet_kernels.bench_warmup import CheckProcess
    failures, text, seconds = CheckProcess.start(shards=2).result()
    assert failures == 0, text
    from senet_kernels.check import cases
    count = len(list(cases()))
    assert "check reference" in text and f"{count}/{count} cases within tolerance" in text
    assert seconds > 0
    assert text.startswith("device: ")


def test_check_process_that_dies_is_a_failure():
    from senet_kernels.bench_warmup import CheckProcess
    check = CheckProcess.start(shards=2)
    check.processes[1].kill()
    failures, text, _ = check.result()
    assert failures is None and "ended without a result" in text


def test_check_shards_use_the_cores_left(monkeypatch):
    from senet_kernels import bench_warmup
    monkeypatch.setattr(bench_warmup.os, "cpu_count", lambda: 16)
    assert bench_warmup.check_shards(10) == 4  # 16 cores - 10 workers - the timing process
    assert bench_warmup.check_shards(13) == 2
    assert bench_warmup.check_shards(15) == 1


def test_default_workers(monkeypatch):
    """One worker per compile group on a GPU, two cores left free, as many as the device
    memory holds; none on the CPU."""
    from senet_kernels import bench_warmup
    assert bench_warmup.default_workers(CPU, 10) == 0
    gib = 1 << 30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (140 * gib, 141 * gib))
    monkeypatch.setattr(bench_warmup.os, "cpu_count", lambda: 16)
    gpu = torch.device("cuda")
    assert bench_warmup.default_workers(gpu, 10) == 10
    assert bench_warmup.default_workers(gpu, 20) == 14
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (20 * gib, 141 * gib))
    assert bench_warmup.default_workers(gpu, 10) == 3


def test_worker_compiles_a_batchnorm_case(compiler_settings):
    """A worker's loop (run in this process) over a BatchNorm + SE case: both parts reported,
    no error (the case's own implementations and inputs, not the SE case's)."""
    import queue

    import torch._inductor.config as inductor_config
    from senet_kernels import bench_warmup

    case = bench.Case(bench.Shape("se_resnet50", 2, 24, 3, 6), "bn_res_relu_fwd", "float32",
                      "nchw")
    messages = queue.Queue()
    with inductor_config.patch(compile_threads=inductor_config.compile_threads):
        bench_warmup._worker([(0, case)], messages)  # sets compile_threads, restored here
    got = [messages.get_nowait() for _ in range(messages.qsize())]
    assert got == [("kernels", 0), ("baseline", 0), ("exit", None)], got
