"""Triton backend internals: launches per op, H*W splits, the self-resetting arrival counters,
and the ahead-of-time compile of every configuration for sm_80 / sm_90 (no GPU needed)."""

import os
import subprocess
import sys
import threading

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from senet_kernels import squeeze_excite
from senet_kernels.backends import backend_ops, backend_status
from senet_kernels.triton import configs, se_op
from senet_kernels.triton.launcher import recording_launches

from cases import assert_close, make_inputs, reference64
from test_correctness import check_forward_backward

pytestmark = pytest.mark.skipif(not backend_status("triton").available,
                                reason=backend_status("triton").reason)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# aten ops that allocate or re-view memory without computing: no launch on a GPU.
NON_COMPUTE = {"empty", "empty_like", "new_empty", "empty_strided", "view", "reshape",
               "_reshape_alias", "detach", "alias", "as_strided", "t", "transpose"}


class OpLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


EXPECTED_LAUNCHES = {
    "per_sample": (["se_squeeze_excite_fwd", "se_scale_fwd"],
                   ["se_squeeze_excite_bwd", "se_scale_bwd", "se_weight_grads"]),
    "batched": (["se_squeeze_excite_fwd", "se_excite_gemm_c_to_r", "se_excite_gemm_r_to_c",
                 "se_scale_fwd"],
                ["se_squeeze_excite_bwd", "se_excite_gemm_c_to_r", "se_excite_gemm_r_to_c",
                 "se_scale_bwd", "se_weight_grads"]),
    "squeeze_fc1": (["se_squeeze_fc1_fwd", "se_excite_gemm_r_to_c", "se_scale_fwd"],
                    ["se_squeeze_fc2_bwd", "se_excite_gemm_r_to_c", "se_scale_bwd",
                     "se_weight_grads"]),
}


@pytest.mark.parametrize("path", configs.EXCITATION_PATHS)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("post_relu,residual", [(False, False), (True, True), (True, False), (False, True)])
def test_launches_per_op(device, path, channels_last, post_relu, residual):
    """Per-sample path: forward 2 kernel launches, backward 3; batched path: 4 and 5;
    squeeze_fc1: 3 and 4. No torch compute op inside any (nothing but allocations and
    views).

    The kernels are recorded, not run: the interpreter itself copies tensors (aten ops)."""
    forward_kernels, backward_kernels = EXPECTED_LAUNCHES[path]
    args = make_inputs(3, 20, 5, 5, 4, channels_last=channels_last, residual=residual, device=device)
    # The eager fast path (reuse_scratch): the first calls make the plans and their scratch
    # buffers (the counters are zeroed once).
    out, pooled, hidden, scale = se_op.se_forward(*args.values(), "relu", "sigmoid", post_relu,
                                                  reuse_scratch=True)
    se_op.se_backward(torch.randn_like(out), args["x"], out if post_relu else None, args["w1"],
                      args["w2"], pooled, hidden, scale, residual, "relu", "sigmoid",
                      reuse_scratch=True)
    with OpLog() as log, recording_launches(run_too=False) as launches:
        out, pooled, hidden, scale = se_op.se_forward(*args.values(), "relu", "sigmoid", post_relu,
                                                      reuse_scratch=True)
    assert [l.kernel.__name__ for l in launches] == forward_kernels
    assert set(log.ops) <= NON_COMPUTE, f"compute ops inside the forward: {set(log.ops) - NON_COMPUTE}"

    grad = torch.randn_like(out)
    with OpLog() as log, recording_launches(run_too=False) as launches:
        se_op.se_backward(grad, args["x"], out if post_relu else None, args["w1"], args["w2"],
                          pooled, hidden, scale, residual, "relu", "sigmoid", reuse_scratch=True)
    assert [l.kernel.__name__ for l in launches] == backward_kernels
    assert set(log.ops) <= NON_COMPUTE, f"compute ops inside the backward: {set(log.ops) - NON_COMPUTE}"


@pytest.mark.parametrize("path", configs.EXCITATION_PATHS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_hw_splits(device, path, channels_last, monkeypatch, poison):
    """Split H*W over several programs per channel block, as on a GPU with many SMs; the
    excitation (per-sample tail or batched GEMM) then sums the split partials. (The
    squeeze_fc1 path's reductions do not split H*W: they are checked to launch no split.)"""
    monkeypatch.setattr(se_op, "_num_sms", lambda device: 64)
    args = make_inputs(1, 16, 24, 24, 4, channels_last=channels_last, residual=True, device=device)
    with recording_launches() as launches:
        check_forward_backward("triton", args, torch.float32, post_relu=True)
    splits = [l.args["NUM_SPLITS"] for l in launches if "NUM_SPLITS" in l.args]
    gemms = [l for l in launches if l.kernel.__name__ == "se_excite_gemm_c_to_r"]
    if path == "squeeze_fc1":  # its reductions do not split H*W
        assert not splits and not gemms
        return
    assert splits and min(splits) > 1, splits
    assert (path == "batched") == bool(gemms)
    assert all(l.args["NUM_SPLITS"] > 1 for l in gemms)


def test_hw_split_tiles_exactly():
    for n, c, hw in [(1, 16, 576), (64, 256, 3136), (2, 2048, 49), (1, 1, 1), (8, 3, 10000)]:
        for tile in configs.REDUCE_TILES:
            per_split, splits = configs.hw_split(n, c, hw, tile, 132)
            assert per_split % tile.block_hw == 0
            assert (splits - 1) * per_split < hw <= splits * per_split


def test_arrival_counters_reset(device):
    """The last program of each sample zeroes its counter, so back-to-back calls stay right."""
    args = make_inputs(5, 70, 4, 4, 6, device=device)
    expected, _ = reference64(args)
    with configs.force_excitation_path("per_sample"), recording_launches() as launches:
        for _ in range(3):
            assert_close(squeeze_excite(*args.values(), backend="triton"), expected,
                         torch.float32, "out")
    counters = [l.args["counter_ptr"] for l in launches if "counter_ptr" in l.args]
    assert len(counters) == 3 and all(c.dtype == torch.int32 for c in counters)
    assert counters[0].data_ptr() == counters[2].data_ptr()  # the plan's buffer, reused
    assert counters[0].numel() == 5 and not counters[0].any()


def test_direct_launch_report(device, monkeypatch):
    """After a plan's first call every launch site of it launches directly on a GPU; under
    the interpreter none does (the interpreter always takes kernel[grid])."""
    monkeypatch.setattr(se_op, "_forward_plans", {})  # only this test's plans
    monkeypatch.setattr(se_op, "_backward_plans", {})
    args = make_inputs(3, 40, 5, 5, 4, device=device)
    x, w1, b1, w2, b2 = (args[k].requires_grad_() for k in ("x", "w1", "b1", "w2", "b2"))
    for _ in range(2):
        out = squeeze_excite(x, w1, b1, w2, b2, backend="triton")
        torch.autograd.grad(out.sum(), [x, w1])
    report = se_op.direct_launch_report()
    assert report["sites"] >= 5 and report["hooks_installed"] is False  # 2 forward, 3 backward
    assert report["compiled"] == (report["sites"] if device.type == "cuda" else 0)


def test_gemm_k_splits_tile_the_channels():
    """Split-K of the batched c_to_r GEMM: SE-ResNet-50's 256x2048x7x7 has only 64 tiles for
    132 SMs and splits 5 ways; EfficientNet-B0's late SE (24 tiles) as far as its 18 channel
    steps and MAX_K_SPLITS allow; no split where the tiles fill the GPU or one step covers C.
    Splits are whole BATCH_BLOCK_K steps and tile C exactly."""
    assert configs.gemm_k_splits(256, 2048, 128, 132) == (448, 5)
    assert configs.gemm_k_splits(256, 1152, 48, 132) == (192, 6)
    assert configs.gemm_k_splits(4096, 2048, 128, 132) == (2048, 1)
    assert configs.gemm_k_splits(256, 64, 4, 132) == (64, 1)
    for n, c, cr in [(256, 2048, 128), (256, 1024, 64), (32, 1152, 48), (1, 130, 5), (8, 1, 1)]:
        for sms in (1, 16, 132):
            per_split, splits = configs.gemm_k_splits(n, c, cr, sms)
            assert per_split % configs.BATCH_BLOCK_K == 0
            assert 1 <= splits <= configs.MAX_K_SPLITS
            assert (splits - 1) * per_split < c <= splits * per_split
    with configs.force_k_splits(3):
        assert configs.gemm_k_splits(256, 2048, 128, 132) == (704, 3)
    # The c_to_r epilogue reads at most K_SPLIT_LIMIT products: no call may ask for more.
    assert configs.MAX_K_SPLITS <= configs.K_SPLIT_LIMIT
    for bad in (0, configs.K_SPLIT_LIMIT + 1):
        with pytest.raises(ValueError, match="splits must be an int in"):
            with configs.force_k_splits(bad):
                pass


@pytest.mark.parametrize("c,k_splits", [(130, 3), (200, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_split_k_gemm(device, c, k_splits, dtype, channels_last, poison):
    """The batched path with its c_to_r GEMM split over channels (the last split short, the
    last sample and hidden-unit tiles partial): forward and every gradient vs float64, three
    calls in a row on the same plan (the per-tile arrival counters reset themselves)."""
    args = make_inputs(33, c, 3, 2, 20, dtype=dtype, channels_last=channels_last, residual=True,
                       device=device, seed=c)
    with configs.force_excitation_path("batched"), configs.force_k_splits(k_splits):
        with recording_launches() as launches:
            for _ in range(3):
                check_forward_backward("triton", args, dtype, activation="silu", post_relu=True)
    gemms = [l for l in launches if l.kernel.__name__ == "se_excite_gemm_c_to_r"]
    assert len(gemms) == 6 and all(l.grid == (2, 2, k_splits) for l in gemms)
    assert all(l.args["K_SPLITS"] == k_splits for l in gemms)
    counters = {l.args["counter_ptr"].data_ptr(): l.args["counter_ptr"] for l in gemms}
    assert all(not t.any() for t in counters.values())


@pytest.mark.parametrize("tile", sorted(set(configs.SWEEP_REDUCE_TILES +
                                             configs.SWEEP_FIRST_STAGE_TILES), key=repr),
                         ids=lambda t: f"{t.block_c}x{t.block_hw}w{t.num_warps}s{t.num_stages}")
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_forced_reduce_tiles(device, tile, channels_last, poison):
    """Every tile the GPU sweep times (kernel_breakdown.py --sweep-reduce-tiles) computes the
    op right, in the forward and backward reductions: partial channel blocks, H*W of 49 (the
    late stages' 7x7), both paths; the plan follows the forced tile."""
    args = make_inputs(3, 70, 7, 7, 6, channels_last=channels_last, residual=True,
                       device=device, seed=tile.block_c + tile.block_hw)
    for path in configs.EXCITATION_PATHS:
        with configs.force_excitation_path(path), configs.force_reduce_tile(tile):
            with recording_launches() as launches:
                check_forward_backward("triton", args, torch.float32, activation="relu",
                                       post_relu=True)
        reductions = [l for l in launches if l.kernel.__name__.startswith("se_squeeze_excite")]
        assert len(reductions) == (0 if path == "squeeze_fc1" else 2)  # its own reductions
        assert all(l.constexprs["BLOCK_C"] == tile.block_c and
                   l.constexprs["BLOCK_HW"] == tile.block_hw and
                   l.constexprs["REDUCE_STAGES"] == tile.num_stages and
                   l.num_warps == tile.num_warps for l in reductions)
    with pytest.raises(ValueError, match="ReduceTile"):
        with configs.force_reduce_tile((64, 32)):
            pass


def test_split_k_gemm_with_more_splits_than_the_dispatcher_picks(device, poison):
    """The K-split sweep (kernel_breakdown.py --sweep-k-splits) forces up to 16 splits, past
    MAX_K_SPLITS: at C = 2048 each split then walks 2 blocks of channels. Forward and every
    gradient vs float64, twice on the same plan."""
    args = make_inputs(5, 2048, 2, 1, 20, residual=True, device=device, seed=23)
    with configs.force_excitation_path("batched"), configs.force_k_splits(16):
        with recording_launches() as launches:
            for _ in range(2):
                check_forward_backward("triton", args, torch.float32, activation="relu",
                                       post_relu=True)
    gemms = [l for l in launches if l.kernel.__name__ == "se_excite_gemm_c_to_r"]
    assert len(gemms) == 4 and all(l.grid[2] == 16 for l in gemms)


def test_split_k_gemm_through_the_custom_ops(device):
    """The custom ops (what torch.compile calls) allocate their scratch, counters included,
    per call: with the split GEMM they give the same bits as the eager fast path."""
    args = make_inputs(33, 130, 3, 2, 20, residual=True, device=device, seed=17)
    ops = backend_ops("triton")
    with configs.force_excitation_path("batched"), configs.force_k_splits(3):
        eager = se_op.se_forward(*args.values(), "silu", "sigmoid", True, reuse_scratch=True)
        for _ in range(2):
            with recording_launches() as launches:
                through_op = ops.forward(*args.values(), "silu", "sigmoid", True)
            for a, b, name in zip(eager, through_op, ["out", "pooled", "hidden", "scale"]):
                assert torch.equal(a, b), name
        assert [l.grid[2] for l in launches if l.kernel.__name__ == "se_excite_gemm_c_to_r"] == [3]
        out, pooled, hidden, scale = eager
        grad = torch.randn_like(out)
        bwd_args = (grad, args["x"], out, args["w1"], args["w2"], pooled, hidden, scale, True,
                    "silu", "sigmoid")
        expected = se_op.se_backward(*bwd_args, reuse_scratch=True)
        for _ in range(2):
            for a, b in zip(expected, ops.backward(*bwd_args)):
                assert torch.equal(a, b)


def test_split_k_gemm_gradcheck(device):
    """float64 gradcheck of the op with the split c_to_r GEMM (forward FC1, backward FC2)."""
    args = make_inputs(2, 130, 1, 1, 5, dtype=torch.float64, residual=True, device=device, seed=9)
    leaves = [v.detach().clone().requires_grad_() for v in args.values()]

    def fn(*tensors):
        return squeeze_excite(*tensors, activation="silu", post_relu=True, backend="triton")

    with configs.force_excitation_path("batched"), configs.force_k_splits(3):
        assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)


def test_grad_residual_stored_by_the_reduction(device, poison):
    """SE-ResNet tail: where grad_out has x's dtype, the backward's reduction stores
    grad_residual (the ReLU-masked gradient) and the grad_x pass reads it back instead of
    grad_out and out; with a float32 grad_out (same values) the grad_x pass masks grad_out
    itself. Both give grad_residual = the masked gradient exactly, and the same bits in every
    other gradient (the correctness tests compare them with float64)."""
    args = make_inputs(3, 40, 5, 5, 6, dtype=torch.bfloat16, channels_last=True, residual=True,
                       device=device, seed=21)
    out, pooled, hidden, scale = se_op.se_forward(*args.values(), "relu", "sigmoid", True)
    grad = torch.randn_like(out)
    results = {}
    for grad_dtype in (torch.bfloat16, torch.float32):
        with recording_launches() as launches:
            results[grad_dtype] = se_op.se_backward(
                grad.to(grad_dtype), args["x"], out, args["w1"], args["w2"], pooled, hidden,
                scale, True, "relu", "sigmoid")
        kernels = {l.kernel.__name__: l.constexprs for l in launches}
        in_reduction = grad_dtype == torch.bfloat16
        assert kernels["se_squeeze_excite_bwd"]["WRITE_GRAD_RESIDUAL"] == in_reduction
        assert kernels["se_scale_bwd"]["GRAD_RESIDUAL_WRITTEN"] == in_reduction
        assert kernels["se_scale_bwd"]["WRITE_GRAD_RESIDUAL"] == (not in_reduction)
    masked = torch.where(out <= 0, torch.zeros_like(grad), grad)
    for grads in results.values():
        assert torch.equal(grads[-1], masked)
    for name, a, b in zip(["grad_x", "grad_w1", "grad_b1", "grad_w2", "grad_b2"],
                          results[torch.bfloat16], results[torch.float32]):
        assert torch.equal(a, b), name


def test_scratch_buffers_are_per_plan_and_stream(device):
    """Inference reuses the plan's scratch; training keeps fresh saved vectors per call."""
    args = make_inputs(2, 16, 4, 4, 4, device=device, seed=14)
    with recording_launches() as launches:
        with torch.no_grad():
            squeeze_excite(*args.values(), backend="triton")
            squeeze_excite(*args.values(), backend="triton")
    scales = [l.args["scale_ptr"] for l in launches if l.kernel.__name__.startswith("se_scale_fwd")]
    assert len(scales) == 2 and scales[0].data_ptr() == scales[1].data_ptr()
    out1, _, _, scale1 = se_op.se_forward(*args.values(), "relu", "sigmoid", False)
    out2, _, _, scale2 = se_op.se_forward(*args.values(), "relu", "sigmoid", False)
    assert scale1.data_ptr() != scale2.data_ptr() and torch.equal(scale1, scale2)


def test_scratch_buffers_are_per_thread(device):
    """Two host threads on one stream interleave their launches: each has its own scratch
    (on a GPU, tests/test_threads.py checks the results of such concurrent calls)."""
    args = make_inputs(2, 16, 4, 4, 4, device=device, seed=15)

    def inference_scales():
        with recording_launches() as launches:
            with torch.no_grad():
                for _ in range(2):
                    squeeze_excite(*args.values(), backend="triton")
        return [l.args["scale_ptr"].data_ptr() for l in launches
                if l.kernel.__name__.startswith("se_scale_fwd")]

    mine = inference_scales()
    theirs = []
    thread = threading.Thread(target=lambda: theirs.extend(inference_scales()))
    thread.start()
    thread.join()
    assert len(mine) == len(theirs) == 2
    assert mine[0] == mine[1] and theirs[0] == theirs[1]  # reused within a thread
    assert mine[0] != theirs[0]  # not shared between threads


@pytest.mark.parametrize("path", configs.EXCITATION_PATHS)
def test_custom_ops_allocate_scratch_per_call(device, path):
    """Through the custom ops (what torch.compile calls) no scratch outlives the call: each call
    gets fresh buffers and the plans keep none. Under torch.compile(mode="reduce-overhead"),
    cudagraph trees' warm-up routes allocations to the graph's private pool and fails on pool
    memory kept past the call (tests/test_call_paths.py checks that on a GPU)."""
    args = make_inputs(3, 24, 4, 4, 4, residual=True, device=device, seed=16)
    ops = backend_ops("triton")
    se_op._forward_plans.clear()
    se_op._backward_plans.clear()
    with configs.force_excitation_path(path), recording_launches() as launches:
        for _ in range(2):
            out, pooled, hidden, scale = ops.forward(*args.values(), "relu", "sigmoid", True)
            ops.backward(torch.randn_like(out), args["x"], out, args["w1"], args["w2"], pooled,
                         hidden, scale, True, "relu", "sigmoid")
    scratch = [l.args.get("partial_ptr", l.args.get("ksum_ptr")) for l in launches
               if l.kernel.__name__.startswith("se_squeeze")]
    assert len(scratch) == 4 and len({p.data_ptr() for p in scratch}) == 4
    plans = [*se_op._forward_plans.values(), *se_op._backward_plans.values()]
    assert len(plans) == 2 and not any(p.scratch.__dict__ for p in plans)


def test_traffic_model_picks_the_path():
    """Weight bytes read by the per-sample tail vs activation bytes: SE-ResNet-50's last two
    stages and EfficientNet-B0's late SE are weight-heavy, the early stages are not."""
    bf16 = 2
    picks = {(c, hw, cr): configs.use_batched_excitation(256, c, cr, hw, bf16, bf16)
             for c, hw, cr in [(256, 3136, 16), (512, 784, 32), (1024, 196, 64), (2048, 49, 128),
                               (96, 3136, 4), (1152, 49, 48)]}
    assert picks == {(256, 3136, 16): False, (512, 784, 32): False, (1024, 196, 64): True,
                     (2048, 49, 128): True, (96, 3136, 4): False, (1152, 49, 48): True}
    assert configs.weight_reads(256, batched=False) == 256
    assert configs.weight_reads(256, batched=True) == 256 // configs.BATCH_BLOCK_N
    # fp32 master weights with bf16 activations double the weight side
    assert configs.use_batched_excitation(8, 512, 32, 784, bf16, 4) == (
        2 * 32 * 4 > configs.WEIGHT_TRAFFIC_LIMIT * 784 * bf16)
    with configs.force_excitation_path("batched"):
        assert configs.use_batched_excitation(256, 256, 16, 3136, bf16, bf16)
    with pytest.raises(ValueError, match="path must be one of"):
        with configs.force_excitation_path("sideways"):
            pass


def test_every_reduce_tile_is_picked():
    """The AOT compile covers what the dispatcher picks; check the picks span the table."""
    from senet_kernels.triton.aot import MAP_SIZES
    picked = {configs.reduce_tile(cl, h * w) for cl in (False, True) for h, w in MAP_SIZES}
    assert picked == set(configs.REDUCE_TILES)


#: A directory holding the oldest supported Triton (3.6, what the lent GPU machines run),
#: installed with `pip install --no-deps --target DIR triton==3.6.0`; .ci/run sets it.
OLDEST_TRITON = os.environ.get("SENET_KERNELS_OLDEST_TRITON")


@pytest.mark.parametrize("triton_dir", [
    pytest.param(None, id="installed"),
    pytest.param(OLDEST_TRITON, id="oldest", marks=pytest.mark.skipif(
        not OLDEST_TRITON, reason="SENET_KERNELS_OLDEST_TRITON (a directory with triton==3.6.0) "
                                  "is not set; CI sets it")),
])
def test_aot_compile_every_configuration_for_sm80_and_sm90(triton_dir):
    """The interpreter accepts code the real compiler rejects: compile every configuration the
    dispatcher launches for real GPU targets (in a subprocess, without TRITON_INTERPRET), with
    the installed Triton and with the oldest supported one."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (triton_dir, ROOT, env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, "-m", "senet_kernels.triton.aot", "--arch", "80", "90"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
    failed = [line for line in proc.stdout.splitlines() if "FAILED" in line]
    assert proc.returncode == 0 and not failed, (failed or proc.stdout[-3000:]) + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    if triton_dir:
        assert lines[0].startswith("triton 3.6.") and triton_dir in lines[0], lines[0]
    summary = lines[-1]
    assert summary.startswith("compiled ") and "targets [80, 90]" in summary, summary
    # the sweeps' 8-warp tiles are compiled as such, not folded into their 4-warp twins
    assert any(line.startswith("sm_90 se_squeeze_fc1_fwd") and "num_warps=8" in line
               for line in lines)


def test_global_access_widths_counts_vector_loads_stores_and_async_copies():
    from senet_kernels.triton.aot import global_access_widths
    ptx = """
        ld.global.v4.b32 {%r1, %r2, %r3, %r4}, [%rd1];
        @%p1 ld.global.b16 %rs1, [%rd2];
        st.global.v2.f32 [%rd3], {%f1, %f2};
        cp.async.cg.shared.global [ %r19 + 0 ], [ %rd3 + 0 ], 0x10, %r20;
        cp.async.ca.shared.global [ %r21 + 0 ], [ %rd4 + 0 ], 4, %r22;
        cp.async.commit_group;
    """
    assert global_access_widths(ptx) == {"ld": {128: 1, 16: 1}, "st": {64: 1},
                                         "async": {128: 1, 32: 1}}
