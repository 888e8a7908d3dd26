"""The BatchNorm + SE spec (senet_kernels/bn_reference.py) against the eager composition.

The two-pass forward and its explicit backward are compared with autograd through
``bn_squeeze_excite_reference`` (F.batch_norm + the SE reference) on fresh random inputs with
a non-zero mean and a different spread per channel; the running statistics with
nn.BatchNorm2d's; the statistics pass with float64 on data whose mean dwarfs its spread.
"""

import itertools

import pytest
import torch
from torch import nn

from senet_kernels.bn_reference import (bn_squeeze_excite_reference, bn_squeeze_excite_two_pass,
                                        bn_squeeze_excite_two_pass_backward, merge_over_samples,
                                        sample_statistics, update_running_stats_)
from senet_kernels.spec import ACTIVATIONS, GATES
from senet_kernels.testing import assert_close

#: The differentiable inputs, in the order of the explicit backward's results.
GRAD_NAMES = ("y", "bn_weight", "bn_bias", "w1", "b1", "w2", "b2", "residual")


def make_bn_inputs(n, c, h, w, cr, *, dtype=torch.float64, param_dtype=None, channels_last=False,
                   residual=True, affine=True, bias=True, seed=0):
    """Random arguments: y with a per-channel mean (O(3)) and spread (0.5 to 2.5), BN affine
    parameters away from the identity, running statistics unlike the batch's, SE weights
    as testing.make_inputs scales them. Drawn in float64, then cast."""
    gen = torch.Generator().manual_seed(seed)
    param_dtype = param_dtype or dtype

    def rand(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale

    spread = 0.5 + 2 * torch.rand(1, c, 1, 1, generator=gen, dtype=torch.float64)
    args = dict(
        y=rand(n, c, h, w) * spread + rand(1, c, 1, 1, scale=3.0),
        bn_weight=1 + rand(c, scale=0.3) if affine else None,
        bn_bias=rand(c, scale=0.5) if affine else None,
        running_mean=rand(c),
        running_var=0.5 + torch.rand(c, generator=gen, dtype=torch.float64),
        w1=rand(cr, c, scale=c ** -0.5),
        b1=rand(cr, scale=0.5) if bias else None,
        w2=rand(c, cr, scale=2 * cr ** -0.5),
        b2=rand(c, scale=0.5) if bias else None,
        residual=rand(n, c, h, w) if residual else None,
    )
    for k, v in args.items():
        if v is None:
            continue
        if k in ("y", "residual"):
            v = v.to(dtype)
            if channels_last:
                v = v.contiguous(memory_format=torch.channels_last)
        elif k not in ("running_mean", "running_var"):
            v = v.to(param_dtype)
        args[k] = v
    return args


def call(fn, args, stats=None, **options):
    """fn(args...) with running statistics ``stats`` = (mean, var, num_batches_tracked)."""
    mean, var, tracked = stats if stats is not None else (None, None, None)
    return fn(args["y"], args["bn_weight"], args["bn_bias"], mean, var, args["w1"], args["b1"],
              args["w2"], args["b2"], args["residual"], num_batches_tracked=tracked, **options)


def fresh_stats(args, dtype=torch.float64):
    return (args["running_mean"].to(dtype).clone(), args["running_var"].to(dtype).clone(),
            torch.tensor(3, dtype=torch.long))


def reference_forward_backward(args, grad, stats, **options):
    """The reference's output and autograd gradients in float64 (None for absent inputs)."""
    leaves = {k: None if v is None else v.detach().double().requires_grad_(k in GRAD_NAMES)
              for k, v in args.items()}
    out = call(bn_squeeze_excite_reference, leaves, stats, **options)
    wanted = [k for k in GRAD_NAMES if leaves[k] is not None]
    grads = dict(zip(wanted, torch.autograd.grad(out, [leaves[k] for k in wanted], grad.double())))
    return out, [grads.get(k) for k in GRAD_NAMES]


def two_pass_forward_backward(args, grad, stats, *, post_relu, activation, gate, **options):
    out, saved = call(bn_squeeze_excite_two_pass, args, stats, post_relu=post_relu,
                      activation=activation, gate=gate, **options)
    grads = bn_squeeze_excite_two_pass_backward(
        grad, args["y"], out if post_relu else None, saved, args["bn_weight"], args["bn_bias"],
        args["w1"], args["b1"], args["w2"], args["b2"], has_residual=args["residual"] is not None,
        activation=activation, gate=gate)
    return out, grads


def assert_output_and_grads(args, out, grads, expected, expected_grads, dtype):
    """``out`` (dtype, y's layout, values) and each gradient (None exactly where the reference
    has none, the input's dtype, values) against the reference's."""
    assert out.dtype == args["y"].dtype
    channels_last = not args["y"].is_contiguous()
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last
                             else torch.contiguous_format)
    assert_close(out, expected, dtype, "out")
    for name, g, e in zip(GRAD_NAMES, grads, expected_grads):
        if e is None:
            assert g is None, f"grad {name} should be None"
            continue
        assert g.dtype == args[name].dtype, f"grad {name}: dtype {g.dtype}"
        assert_close(g, e, dtype, f"grad {name}")


def check_against_reference(args, *, dtype, training, track=True, **options):
    """Forward, every gradient and the running statistics of the spec vs the reference."""
    gen = torch.Generator().manual_seed(1)
    grad = torch.randn(args["y"].shape, generator=gen, dtype=torch.float64).to(args["y"].dtype)
    ref_stats = fresh_stats(args) if track else None
    spec_stats = fresh_stats(args) if track else None
    expected, expected_grads = reference_forward_backward(args, grad, ref_stats,
                                                          training=training, **options)
    out, grads = two_pass_forward_backward(args, grad, spec_stats, training=training, **options)
    assert_output_and_grads(args, out, grads, expected, expected_grads, dtype)
    if track:
        for name, s, r in zip(("running_mean", "running_var"), spec_stats, ref_stats):
            assert_close(s, r, dtype, name)
        assert spec_stats[2].item() == ref_stats[2].item() == (4 if training else 3)


VARIANT_PARAMS = list(itertools.product(ACTIVATIONS, GATES, (False, True), (False, True)))


@pytest.mark.parametrize("training", (True, False), ids=("train", "eval"))
@pytest.mark.parametrize("channels_last", (False, True), ids=("nchw", "nhwc"))
@pytest.mark.parametrize("activation,gate,residual,post_relu", VARIANT_PARAMS)
def test_two_pass_matches_reference_float64(activation, gate, residual, post_relu, channels_last,
                                            training):
    args = make_bn_inputs(3, 12, 5, 4, 5, channels_last=channels_last, residual=residual)
    check_against_reference(args, dtype=torch.float64, training=training, activation=activation,
                            gate=gate, post_relu=post_relu)


ODD_SHAPES = {
    "C=1": (2, 1, 3, 3, 1),
    "Cr=13": (2, 24, 3, 3, 13),  # not a multiple of 8
    "HW=1": (5, 6, 1, 1, 3),     # one pixel, statistics over the batch only
    "N=1": (1, 7, 3, 4, 2),      # one sample, statistics over its pixels only
    "odd HW": (3, 5, 7, 3, 2),
}


@pytest.mark.parametrize("training", (True, False), ids=("train", "eval"))
@pytest.mark.parametrize("channels_last", (False, True), ids=("nchw", "nhwc"))
@pytest.mark.parametrize("shape", ODD_SHAPES.values(), ids=ODD_SHAPES.keys())
def test_two_pass_odd_shapes(shape, channels_last, training):
    args = make_bn_inputs(*shape, channels_last=channels_last, seed=sum(shape))
    check_against_reference(args, dtype=torch.float64, training=training, activation="silu",
                            gate="hardsigmoid", post_relu=True)


@pytest.mark.parametrize("training", (True, False), ids=("train", "eval"))
def test_no_affine_no_bias_no_running_stats(training):
    """affine=False (no gamma, beta), SE without biases, track_running_stats=False: batch
    statistics in eval mode too."""
    args = make_bn_inputs(2, 6, 3, 5, 3, affine=False, bias=False)
    check_against_reference(args, dtype=torch.float64, training=training, track=False,
                            activation="relu", gate="sigmoid", post_relu=True)


def test_eval_without_running_stats_uses_the_batch():
    """Eval mode without running statistics normalizes with the batch's, as nn.BatchNorm2d."""
    args = make_bn_inputs(2, 4, 3, 3, 2, residual=False)
    out, saved = call(bn_squeeze_excite_two_pass, args, None, training=False)
    y = args["y"]
    assert saved.batch_stats
    torch.testing.assert_close(saved.mean, y.mean(dim=(0, 2, 3)), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(saved.rstd, (y.var(dim=(0, 2, 3), unbiased=False) + 1e-5).rsqrt(),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("momentum", (0.1, None), ids=("momentum0.1", "cumulative"))
@pytest.mark.parametrize("stats_dtype", (torch.float64, torch.float32))
def test_running_stats_follow_batchnorm2d(momentum, stats_dtype):
    """Several training steps (and an eval step between, which changes nothing) leave
    running_mean, running_var and num_batches_tracked as nn.BatchNorm2d leaves its buffers."""
    c = 5
    bn = nn.BatchNorm2d(c, momentum=momentum).to(stats_dtype)
    buffers = {name: (bn.running_mean.clone(), bn.running_var.clone(),
                      bn.num_batches_tracked.clone()) for name in ("reference", "two_pass")}
    fns = {"reference": bn_squeeze_excite_reference, "two_pass": bn_squeeze_excite_two_pass}
    for step, training in enumerate((True, True, False, True, True)):
        args = make_bn_inputs(3, c, 4, 3, 2, seed=10 + step)
        args["y"] = args["y"] * (step + 1)  # batches of different statistics
        bn.train(training)
        with torch.no_grad():
            bn(args["y"].to(stats_dtype))
        for name, fn in fns.items():
            call(fn, args, buffers[name], training=training, momentum=momentum)
    for name, (mean, var, tracked) in buffers.items():
        assert tracked.item() == bn.num_batches_tracked.item() == 4, name
        assert mean.dtype == var.dtype == stats_dtype, name
        tol = dict(rtol=1e-12, atol=1e-12) if stats_dtype == torch.float64 else {}
        torch.testing.assert_close(mean, bn.running_mean, **tol, msg=f"{name} running_mean")
        torch.testing.assert_close(var, bn.running_var, **tol, msg=f"{name} running_var")


def test_update_running_stats_matches_batchnorm2d_directly():
    """The update alone, from a batch's mean and biased variance (unbiased running_var)."""
    bn = nn.BatchNorm2d(3, momentum=0.3).double().train()
    y = make_bn_inputs(4, 3, 2, 5, 1)["y"]
    mean, var = bn.running_mean.clone(), bn.running_var.clone()
    tracked = bn.num_batches_tracked.clone()
    bn(y)
    update_running_stats_(mean, var, tracked, y.mean(dim=(0, 2, 3)),
                          y.var(dim=(0, 2, 3), unbiased=False), y.numel() // 3, 0.3)
    torch.testing.assert_close(mean, bn.running_mean, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(var, bn.running_var, rtol=1e-14, atol=1e-14)
    assert tracked.item() == 1
    with pytest.raises(ValueError, match="more than 1 value"):
        update_running_stats_(mean, var, tracked, mean, var, 1, 0.3)


@pytest.mark.parametrize("fn", (bn_squeeze_excite_reference, bn_squeeze_excite_two_pass),
                         ids=("reference", "two_pass"))
def test_one_value_per_channel_raises_in_training(fn):
    """N * H * W == 1 with batch statistics raises PyTorch's ValueError before any buffer
    changes; with running statistics in eval mode it is computed."""
    args = make_bn_inputs(1, 4, 1, 1, 2)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        nn.BatchNorm2d(4).double().train()(args["y"])
    stats = fresh_stats(args)
    before = [t.clone() for t in stats]
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        call(fn, args, stats, training=True)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        call(fn, args, None, training=False)  # no running statistics: the batch's
    for t, b in zip(stats, before):
        assert torch.equal(t, b)
    out = call(fn, args, stats, training=False)
    out = out[0] if isinstance(out, tuple) else out
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("post_relu", (False, True))
@pytest.mark.parametrize("training", (True, False), ids=("train", "eval"))
def test_reference_gradcheck(training, post_relu):
    args = make_bn_inputs(2, 3, 3, 2, 2, residual=True)
    stats = fresh_stats(args)
    names = [k for k in GRAD_NAMES if args[k] is not None]

    def fn(*tensors):
        leaves = dict(args, **dict(zip(names, tensors)))
        # fresh copies: a training call updates the running statistics it is given
        return call(bn_squeeze_excite_reference, leaves, tuple(t.clone() for t in stats),
                    training=training, activation="silu", gate="sigmoid", post_relu=post_relu)

    inputs = [args[k].detach().clone().requires_grad_() for k in names]
    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("param_dtype", (None, torch.float32), ids=("params_like_y", "params_fp32"))
@pytest.mark.parametrize("training", (True, False), ids=("train", "eval"))
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16, torch.float32))
def test_low_precision_vs_float64(dtype, training, param_dtype):
    """fp16 / bf16 / fp32 y against the float64 reference on the same (rounded) values:
    computed in float32, rounded once (testing.TOLERANCES)."""
    args = make_bn_inputs(4, 16, 6, 5, 4, dtype=dtype, param_dtype=param_dtype, channels_last=True)
    check_against_reference(args, dtype=dtype, training=training, activation="relu",
                            gate="sigmoid", post_relu=True)


# The statistics pass on data whose mean dwarfs its spread (mean 1e4, std 1; a conv output
# rarely has more than a few std of mean, but nothing in the algorithm should depend on it).

def large_mean_batch(seed=0, n=8, c=6, hw=196):
    gen = torch.Generator().manual_seed(seed)
    spread = torch.linspace(0.5, 2.0, c, dtype=torch.float64)[None, :, None]
    y64 = 1e4 + spread * torch.randn(n, c, hw, generator=gen, dtype=torch.float64)
    y32 = y64.float()
    exact = y32.double()  # the float64 truth of the values float32 holds
    return y32, exact.mean(dim=(0, 2)), exact.var(dim=(0, 2), unbiased=False)


def relative_error(actual, expected):
    return ((actual.double() - expected) / expected).abs().max().item()


def test_chan_merge_is_accurate_where_the_naive_formula_fails():
    """float32 E[y^2] - E[y]^2 loses the variance entirely at mean 1e4, std 1 (the squares
    carry 24 bits of which the variance is below the last); the per-(n, c) M2 with Chan's
    merge keeps it to a few 1e-5."""
    y, mean, var = large_mean_batch()
    naive = (y * y).mean(dim=(0, 2)) - y.mean(dim=(0, 2)) ** 2
    assert relative_error(naive, var) > 0.5
    sample_mean, sample_m2 = sample_statistics(y)
    merged_mean, merged_m2 = merge_over_samples(sample_mean, sample_m2, y.shape[2])
    assert relative_error(merged_m2 / y[:, 0].numel(), var) < 5e-4
    # the mean itself to a few float32 steps of 1e4 (2^-10 each), i.e. 1e-3 of a std
    assert (merged_mean.double() - mean).abs().max().item() < 4e-3


def test_statistics_are_deterministic_and_order_stable():
    """Bitwise the same on every call; merging the samples in another order, or tiling H*W
    differently, moves the result by rounding only (no order-dependent loss of accuracy)."""
    y, _, var = large_mean_batch(seed=1, hw=300)
    count = y.shape[2]
    first = merge_over_samples(*sample_statistics(y), count)
    again = merge_over_samples(*sample_statistics(y), count)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    variances = [first[1] / y[:, 0].numel()]
    order = torch.randperm(y.shape[0], generator=torch.Generator().manual_seed(2))
    for permuted, tile in ((y.flip(0), 1024), (y[order], 1024), (y, 64), (y, 7)):
        _, m2 = merge_over_samples(*sample_statistics(permuted, hw_tile=tile), count)
        variances.append(m2 / y[:, 0].numel())
    for v in variances:
        assert relative_error(v, var) < 5e-4


@pytest.mark.parametrize("hw_tile", [1024, 7])  # one tile per sample, several merged
def test_an_infinite_value_makes_the_mean_infinite_as_a_sum_does(hw_tile):
    """+Inf in one channel, -Inf in another, both in a third: the merged means are +Inf, -Inf
    and NaN, as y.mean (F.batch_norm's sum / count) gives; Chan's mean_a + delta * f alone
    gives Inf - Inf = NaN for the first two. The M2 is NaN wherever a value is infinite."""
    y = torch.randn(3, 4, 30, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y[1, 0, 17] = float("inf")
    y[0, 1, 3] = float("-inf")
    y[2, 2, 29], y[0, 2, 0] = float("inf"), float("-inf")
    mean, m2 = merge_over_samples(*sample_statistics(y, hw_tile=hw_tile), y.shape[2])
    expected = y.mean(dim=(0, 2))
    assert torch.equal(mean[:3].isnan(), expected[:3].isnan()) and mean[0] == float("inf")
    assert mean[1] == float("-inf") and torch.isnan(mean[2])
    assert torch.isnan(m2[:3]).all()
    assert torch.allclose(mean[3], expected[3]) and torch.isfinite(m2[3])
