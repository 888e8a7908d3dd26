"""The fused BatchNorm + SE op's Triton kernels (``bn_squeeze_excite(backend="triton")``,
senet_kernels/triton/bn_op.py) against the float64 contract: on the GPU where one is present,
else through the Triton interpreter on CPU tensors.

The same checks as tests/test_bn_se_op.py runs on the C++ kernels (outputs and every
gradient against F.batch_norm + the SE reference under autograd, running statistics, NaN
poisoned allocations), over the tails, dtypes, layouts, both statistics modes, odd shapes,
H*W splits of the reductions and K-splits of the FC1 GEMM; then opcheck of the Triton ops,
gradcheck in float64, launch counts, and the eager path against the op.
"""

import itertools

import pytest
import torch

from senet_kernels import bn_squeeze_excite
from senet_kernels.bn_functional import triton_bn_ops
from senet_kernels.spec import ACTIVATIONS, GATES
from senet_kernels.triton import bn_op, configs, se_op
from senet_kernels.triton.launcher import recording_launches
from test_bn_reference import GRAD_NAMES, call, make_bn_inputs
from test_bn_se_op import (ODD_SHAPES, TAILS, check_compile_fullgraph_matches_eager, check_fused,
                           check_gradcheck, check_nonfinite_y, op_args, stats_for)

DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def check(args, device, **options):
    check_fused(args, backend="triton", device=device, **options)


@pytest.mark.usefixtures("poison")
@pytest.mark.parametrize("training", (True, False), ids=("train", "eval"))
@pytest.mark.parametrize("channels_last", (False, True), ids=("nchw", "nhwc"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_contract(device, dtype, channels_last, training):
    args = make_bn_inputs(4, 16, 6, 5, 4, dtype=dtype, channels_last=channels_last)
    check(args, device, dtype=dtype, training=training, activation="relu", gate="sigmoid",
          post_relu=True)


@pytest.mark.usefixtures("poison")
@pytest.mark.parametrize("residual,post_relu", TAILS, ids=[f"res{r:d}-relu{p:d}" for r, p in TAILS])
@pytest.mark.parametrize("training", (True, False), ids=("train", "eval"))
def test_tails(device, training, residual, post_relu):
    args = make_bn_inputs(3, 20, 5, 4, 6, dtype=torch.float32, channels_last=True,
                          residual=residual)
    check(args, device, dtype=torch.float32, training=training, activation="relu",
          gate="sigmoid", post_relu=post_relu)


@pytest.mark.usefixtures("poison")
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16), ids=str)
def test_float32_parameters_with_half_activations(device, dtype):
    args = make_bn_inputs(3, 16, 5, 5, 4, dtype=dtype, param_dtype=torch.float32,
                          channels_last=True)
    check(args, device, dtype=dtype, training=True, activation="relu", gate="sigmoid",
          post_relu=True)


@pytest.mark.usefixtures("poison")
@pytest.mark.parametrize("activation,gate", list(itertools.product(ACTIVATIONS, GATES)))
def test_activations_and_gates(device, activation, gate):
    args = make_bn_inputs(3, 12, 5, 4, 5)
    check(args, device, dtype=torch.float64, training=True, activation=activation, gate=gate,
          post_relu=True)


@pytest.mark.usefixtures("poison")
@pytest.mark.parametrize("training", (True, False), ids=("train", "eval"))
@pytest.mark.parametrize("channels_last", (False, True), ids=("nchw", "nhwc"))
@pytest.mark.parametrize("shape", ODD_SHAPES.values(), ids=ODD_SHAPES.keys())
def test_odd_shapes(device, shape, channels_last, training):
    # C = 1 in training: float64. In float32 the SE weight gradients are a difference of the
    # two samples' nearly equal terms (batch statistics over one channel), which amplifies
    # float32 rounding about 30x: through the interpreter, which rounds every product of the
    # sums where a GPU fuses the multiply-adds, grad b1 came out at 1.02e-5 relative error
    # against the 1e-5 tolerance (the C++ kernels, with fused multiply-adds: 1.4e-6).
    dtype = torch.float64 if shape[1] == 1 and training else torch.float32
    args = make_bn_inputs(*shape, dtype=dtype, channels_last=channels_last)
    check(args, device, dtype=dtype, training=training, activation="relu", gate="sigmoid",
          post_relu=True)


@pytest.mark.usefixtures("poison")
@pytest.mark.parametrize("training", (True, False), ids=("train", "eval"))
def test_no_affine_no_bias_no_running_stats(device, training):
    args = make_bn_inputs(3, 8, 4, 4, 3, affine=False, bias=False)
    check(args, device, dtype=torch.float64, training=training, track=False,
          activation="relu", gate="sigmoid", post_relu=True)


def test_one_sample_one_pixel_in_eval(device):
    args = make_bn_inputs(1, 6, 1, 1, 2)
    check(args, device, dtype=torch.float64, training=False, activation="relu",
          gate="sigmoid", post_relu=True)


@pytest.mark.usefixtures("poison")
@pytest.mark.parametrize("training", (True, False), ids=("train", "eval"))
@pytest.mark.parametrize("channels_last", (False, True), ids=("nchw", "nhwc"))
def test_hw_splits(device, channels_last, training, monkeypatch):
    """Many programs per (n, channel block): their partial statistics and sums merged."""
    monkeypatch.setattr(se_op, "_num_sms", lambda device: 64)
    args = make_bn_inputs(2, 16, 24, 24, 4, dtype=torch.float32, channels_last=channels_last)
    with recording_launches() as launches:
        check(args, device, dtype=torch.float32, training=training, activation="relu",
              gate="sigmoid", post_relu=True)
    stats = next(launch for launch in launches if launch.kernel.__name__ == "bn_stats_fwd")
    assert stats.args["NUM_SPLITS"] > 1


@pytest.mark.usefixtures("poison")
@pytest.mark.parametrize("k_splits", (2, 3))
def test_split_k_fc1(device, k_splits):
    args = make_bn_inputs(5, 130, 3, 2, 20, dtype=torch.float32)
    with configs.force_k_splits(k_splits), recording_launches() as launches:
        check(args, device, dtype=torch.float32, training=True, activation="relu",
              gate="sigmoid", post_relu=True)
    gemms = [launch for launch in launches if launch.kernel.__name__ == "se_excite_gemm_c_to_r"]
    assert gemms and all(launch.args["K_SPLITS"] == k_splits for launch in gemms)


def test_running_stats_after_two_steps(device):
    """Two training steps: running statistics and num_batches_tracked as nn.BatchNorm2d's
    (the update op after the Triton forward), checked by check_fused against the reference."""
    for step in range(2):
        args = make_bn_inputs(4, 12, 5, 6, 3, dtype=torch.float32, seed=10 + step)
        check(args, device, dtype=torch.float32, training=True, activation="relu",
              gate="sigmoid", post_relu=True)


@pytest.mark.parametrize("training", (True, False), ids=("train", "eval"))
def test_gradcheck(device, training):
    check_gradcheck(training, True, True, "triton", device)


def _on(device, args):
    return {k: None if v is None else v.to(device) for k, v in args.items()}


@pytest.mark.parametrize("batch_stats", (True, False))
def test_opcheck_forward(device, batch_stats):
    args = _on(device, make_bn_inputs(2, 6, 3, 4, 3, dtype=torch.float32, channels_last=True))
    for k in GRAD_NAMES:
        if args[k] is not None:
            args[k].requires_grad_()
    torch.library.opcheck(triton_bn_ops.forward, op_args(args, batch_stats))


@pytest.mark.parametrize("post_relu,residual", [(True, True), (False, False)])
def test_opcheck_backward(device, post_relu, residual):
    args = _on(device, make_bn_inputs(2, 6, 3, 4, 3, dtype=torch.float32, residual=residual))
    out, sample_mean, pooled, hidden, scale, mean, rstd, _ = triton_bn_ops.forward(
        *op_args(args, True, post_relu))
    torch.library.opcheck(triton_bn_ops.backward, (
        torch.randn_like(out), args["y"], out if post_relu else None, args["bn_weight"],
        args["bn_bias"], args["w1"], args["w2"], sample_mean, pooled, hidden, scale, mean, rstd,
        True, residual, "relu", "sigmoid"))


@pytest.mark.parametrize("training", (True, False), ids=("train", "eval"))
def test_launches_and_passes(device, training):
    """4 launches forward and 6 backward, in both statistics modes; the streaming passes over
    y are two each way (statistics + scale, sums + grad pass)."""
    args = _on(device, make_bn_inputs(3, 20, 5, 5, 4, dtype=torch.float32))
    leaves = {k: None if v is None else v.clone().requires_grad_(k in GRAD_NAMES)
              for k, v in args.items()}
    stats = None if training else stats_for(args, torch.float32)[:2] + (None,)
    with recording_launches() as forward:
        out = call(bn_squeeze_excite, leaves, stats, training=training, post_relu=True,
                   backend="triton")
    with recording_launches() as backward:
        out.backward(torch.randn_like(out))
    assert [launch.kernel.__name__ for launch in forward] == [
        "bn_stats_fwd", "se_excite_gemm_c_to_r", "se_excite_gemm_r_to_c", "bn_scale_fwd"]
    assert [launch.kernel.__name__ for launch in backward] == [
        "bn_grad_sums_bwd", "se_excite_gemm_c_to_r", "se_excite_gemm_r_to_c",
        "bn_param_grads_bwd", "bn_grad_pass_bwd", "se_weight_grads"]


@pytest.mark.parametrize("training", (True, False), ids=("train", "eval"))
def test_eager_path_equals_the_op(device, training):
    """The eager fast path (scratch reused, kernels called past the ops' autograd) gives the
    custom op's outputs and gradients bitwise."""
    args = _on(device, make_bn_inputs(2, 6, 4, 3, 2, dtype=torch.float32, channels_last=True))
    running = None if training else tuple(args[k].float() for k in ("running_mean", "running_var"))
    grad = torch.randn(args["y"].shape, device=device).contiguous(memory_format=torch.channels_last)
    results = []
    for path in ("eager", "op", "eager"):  # the second eager call reuses the plan's scratch
        leaves = {k: None if v is None else v.clone().requires_grad_(k in GRAD_NAMES)
                  for k, v in args.items()}
        if path == "eager":
            out = call(bn_squeeze_excite, leaves, None if training else running + (None,),
                       training=training, post_relu=True, backend="triton")
        else:
            out = triton_bn_ops.forward(
                leaves["y"], leaves["bn_weight"], leaves["bn_bias"],
                None if training else running[0], None if training else running[1],
                leaves["w1"], leaves["b1"], leaves["w2"], leaves["b2"], leaves["residual"],
                training, 1e-5, "relu", "sigmoid", True)[0]
        wanted = [leaves[k] for k in GRAD_NAMES]
        results.append((out, torch.autograd.grad(out, wanted, grad)))
    for other_out, other_grads in results[1:]:
        assert torch.equal(results[0][0], other_out)
        assert all(torch.equal(a, b) for a, b in zip(results[0][1], other_grads))


def test_plans_are_cached(device):
    args = _on(device, make_bn_inputs(2, 6, 4, 3, 2, dtype=torch.float32))
    bn_op._forward_plans.clear()
    for _ in range(2):
        call(bn_squeeze_excite, args, None, training=True, backend="triton")
    assert len(bn_op._forward_plans) == 1


def test_compile_fullgraph_matches_eager(device):
    check_compile_fullgraph_matches_eager("triton", device)


def test_converted_model_absorbs_the_bn_into_the_triton_op(device, monkeypatch):
    """A model converted with backend="triton" runs its bn3 inside the Triton BatchNorm + SE
    op (on a GPU with TRITON_BN_BY_DEFAULT, which the interpreter does not need) and trains
    as the source: outputs, gradients, running statistics, then eval outputs (float64)."""
    import copy

    from senet_kernels import bn_functional, convert_se_modules
    from test_bn_conversion import absorbed, assert_trains_as, make_model
    from test_convert import make_x
    monkeypatch.setattr(bn_functional, "TRITON_BN_BY_DEFAULT", True)
    source = make_model("timm-bottleneck").to(device)
    converted = copy.deepcopy(source)
    convert_se_modules(converted, backend="triton")
    assert len(absorbed(converted)) == 4
    with recording_launches() as launches:
        assert_trains_as(converted, source, make_x(2, 3, 32, 32).double().to(device))
    names = {launch.kernel.__name__ for launch in launches}
    assert {"bn_stats_fwd", "bn_scale_fwd", "bn_grad_sums_bwd", "bn_grad_pass_bwd"} <= names


@pytest.mark.parametrize("value,enabled", [("1", True), ("0", False), (None, False)])
def test_environment_turns_the_triton_kernels_on_by_default(value, enabled):
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "SENET_KERNELS_TRITON_BN"}
    if value is not None:
        env["SENET_KERNELS_TRITON_BN"] = value
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    out = subprocess.run([sys.executable, "-c", "import senet_kernels.bn_functional as f; "
                          "print(f.TRITON_BN_BY_DEFAULT)"], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == str(enabled)


@pytest.mark.parametrize("hw", [(4, 4), (40, 30)], ids=["4x4", "40x30"])  # 40x30: H*W splits
@pytest.mark.parametrize("channels_last", (False, True), ids=("nchw", "nhwc"))
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=str)
@pytest.mark.parametrize("training", (True, False), ids=("train", "eval"))
def test_nonfinite_y_propagates_as_batchnorm2d_and_se(device, training, value, channels_last, hw):
    check_nonfinite_y(training, value, channels_last, hw, "triton", device)
