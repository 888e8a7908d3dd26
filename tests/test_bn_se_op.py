"""The fused BatchNorm + SE op on the CPU (``bn_squeeze_excite``, backend "cpu": the C++
kernels of csrc/cpu/bn_se_cpu.cpp) against the float64 contract
(``bn_squeeze_excite_reference``: F.batch_norm + the SE reference under autograd).

Fresh random inputs with a non-zero per-channel mean, every output allocation poisoned with
NaN, fp32/fp16/bf16/fp64, NCHW and channels_last, training and eval; the running statistics
against nn.BatchNorm2d's over two steps; gradcheck, opcheck of every new op, torch.compile.
"""

import itertools

import pytest
import torch
from torch import nn

from senet_kernels import bn_squeeze_excite
from senet_kernels.backends import load_extension
from senet_kernels.bn_ops import ext_bn_ops, update_running_stats_op
from senet_kernels.bn_reference import bn_squeeze_excite_reference
from senet_kernels.reference import squeeze_excite_reference
from senet_kernels.spec import ACTIVATIONS, GATES
from senet_kernels.testing import assert_close
from test_bn_reference import (GRAD_NAMES, assert_output_and_grads, call, make_bn_inputs,
                               reference_forward_backward)

pytestmark = pytest.mark.skipif(load_extension()[0] is None, reason=str(load_extension()[1]))

DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
TAILS = list(itertools.product((False, True), (False, True)))  # (residual, post_relu)


def stats_for(args, dtype):
    """Running statistics (mean, var, num_batches_tracked) in ``dtype``, fresh copies."""
    return (args["running_mean"].to(dtype).clone(), args["running_var"].to(dtype).clone(),
            torch.tensor(3, dtype=torch.long, device=args["running_mean"].device))


def fused_forward_backward(args, grad, stats, backend="cpu", device=None, **options):
    """bn_squeeze_excite(backend=backend)'s output and gradients (None for absent inputs),
    run on ``device`` (default: the arguments' own), returned on the CPU; ``stats`` are
    updated in place."""
    device = device or args["y"].device
    leaves = {k: None if v is None else v.detach().to(device).clone().requires_grad_(k in GRAD_NAMES)
              for k, v in args.items()}
    run_stats = None if stats is None else tuple(s.to(device) for s in stats)
    if args["y"].is_contiguous(memory_format=torch.channels_last) and not args["y"].is_contiguous():
        for k in ("y", "residual"):  # clone keeps the layout; say so explicitly
            if leaves[k] is not None:
                assert leaves[k].is_contiguous(memory_format=torch.channels_last)
    out = call(bn_squeeze_excite, leaves, run_stats, backend=backend, **options)
    wanted = [k for k in GRAD_NAMES if leaves[k] is not None]
    grads = dict(zip(wanted, torch.autograd.grad(out, [leaves[k] for k in wanted],
                                                 grad.to(device))))
    if stats is not None:
        for s, r in zip(stats, run_stats):
            s.copy_(r)
    return out.cpu(), [None if g is None else g.cpu() for g in
                       (grads.get(k) for k in GRAD_NAMES)]


def check_fused(args, *, dtype, training, track=True, backend="cpu", device=None, **options):
    gen = torch.Generator().manual_seed(1)
    grad = torch.randn(args["y"].shape, generator=gen, dtype=torch.float64).to(args["y"].dtype)
    stats_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    ref_stats = stats_for(args, torch.float64) if track else None
    our_stats = stats_for(args, stats_dtype) if track else None
    expected, expected_grads = reference_forward_backward(args, grad, ref_stats,
                                                          training=training, **options)
    out, grads = fused_forward_backward(args, grad, our_stats, backend, device,
                                        training=training, **options)
    assert_output_and_grads(args, out, grads, expected, expected_grads, dtype)
    if track:
        for name, s, r in zip(("running_mean", "running_var"), our_stats, ref_stats):
            assert s.dtype == stats_dtype
            assert_close(s, r, dtype if dtype == torch.float64 else torch.float32, name)
        assert our_stats[2].item() == ref_stats[2].item() == (4 if training else 3)


@pytest.mark.usefixtures("poison")
@pytest.mark.parametrize("residual,post_relu", TAILS, ids=[f"res{r:d}-relu{p:d}" for r, p in TAILS])
@pytest.mark.parametrize("training", (True, False), ids=("train", "eval"))
@pytest.mark.parametrize("channels_last", (False, True), ids=("nchw", "nhwc"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_contract(dtype, channels_last, training, residual, post_relu):
    args = make_bn_inputs(4, 16, 6, 5, 4, dtype=dtype, channels_last=channels_last,
                          residual=residual)
    check_fused(args, dtype=dtype, training=training, activation="relu", gate="sigmoid",
                post_relu=post_relu)


@pytest.mark.usefixtures("poison")
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
@pytest.mark.parametrize("training", (True, False), ids=("train", "eval"))
def test_float32_parameters_with_half_activations(dtype, training):
    args = make_bn_inputs(3, 16, 5, 5, 4, dtype=dtype, param_dtype=torch.float32,
                          channels_last=True)
    check_fused(args, dtype=dtype, training=training, activation="relu", gate="sigmoid",
                post_relu=True)


@pytest.mark.usefixtures("poison")
@pytest.mark.parametrize("activation,gate", list(itertools.product(ACTIVATIONS, GATES)))
@pytest.mark.parametrize("training", (True, False), ids=("train", "eval"))
@pytest.mark.parametrize("channels_last", (False, True), ids=("nchw", "nhwc"))
def test_activations_and_gates(activation, gate, training, channels_last):
    args = make_bn_inputs(3, 12, 5, 4, 5, channels_last=channels_last)
    check_fused(args, dtype=torch.float64, training=training, activation=activation, gate=gate,
                post_relu=True)


ODD_SHAPES = {
    "C=1": (2, 1, 3, 3, 1),
    "Cr=3": (2, 24, 3, 3, 3),
    "HW=1": (5, 6, 1, 1, 3),        # one pixel: statistics over the batch only
    "N=1": (1, 7, 3, 4, 2),         # one sample: statistics over its pixels only
    "odd HW": (3, 5, 7, 3, 2),
    # 1200 values per (n, c): two NCHW tiles merged. (With C = 3 this seed's SE weight
    # gradients cancel to 3e-4 relative error in float32, the spec's as well as the kernel's.)
    "HW>tile": (2, 4, 40, 30, 2),
    # N = 1: several NHWC channel blocks, each in 2 (fp32) or 3 (fp64) pixel tiles
    "C>block": (1, 136, 17, 19, 8),
}


@pytest.mark.usefixtures("poison")
@pytest.mark.parametrize("training", (True, False), ids=("train", "eval"))
@pytest.mark.parametrize("channels_last", (False, True), ids=("nchw", "nhwc"))
@pytest.mark.parametrize("dtype", (torch.float64, torch.float32), ids=str)
@pytest.mark.parametrize("shape", ODD_SHAPES.values(), ids=ODD_SHAPES.keys())
def test_odd_shapes(shape, dtype, channels_last, training):
    args = make_bn_inputs(*shape, dtype=dtype, channels_last=channels_last)
    check_fused(args, dtype=dtype, training=training, activation="relu", gate="sigmoid",
                post_relu=True)


@pytest.mark.usefixtures("poison")
@pytest.mark.parametrize("training", (True, False), ids=("train", "eval"))
def test_no_affine_no_bias_no_running_stats(training):
    """affine=False, SE without biases, track_running_stats=False (the batch normalizes y in
    eval mode too)."""
    args = make_bn_inputs(3, 8, 4, 4, 3, affine=False, bias=False)
    check_fused(args, dtype=torch.float64, training=training, track=False, activation="relu",
                gate="sigmoid", post_relu=True)


def test_one_sample_one_pixel_in_eval():
    """N = 1, H = W = 1 is fine with running statistics (eval), and raises in training."""
    args = make_bn_inputs(1, 6, 1, 1, 2)
    check_fused(args, dtype=torch.float64, training=False, activation="relu", gate="sigmoid",
                post_relu=True)
    stats = stats_for(args, torch.float64)
    before = [s.clone() for s in stats]
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        call(bn_squeeze_excite, args, stats, training=True, backend="cpu")
    for s, b in zip(stats, before):  # nothing changed
        assert torch.equal(s, b)


@pytest.mark.parametrize("channels_last", (False, True), ids=("nchw", "nhwc"))
@pytest.mark.parametrize("momentum", (0.1, None))
def test_running_stats_follow_batchnorm2d(momentum, channels_last):
    """Two training steps on different batches: the buffers equal nn.BatchNorm2d's."""
    c = 12
    bn = nn.BatchNorm2d(c, momentum=momentum)
    bn.running_mean.normal_(generator=torch.Generator().manual_seed(2))
    stats = (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
    for step in range(2):
        args = make_bn_inputs(4, c, 5, 6, 3, dtype=torch.float32, channels_last=channels_last,
                              seed=10 + step)
        bn(args["y"])
        with torch.no_grad():
            call(bn_squeeze_excite, args, stats, training=True, momentum=momentum, backend="cpu")
    torch.testing.assert_close(stats[0], bn.running_mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(stats[1], bn.running_var, rtol=1e-6, atol=1e-6)
    assert stats[2].item() == bn.num_batches_tracked.item() == 2


@pytest.mark.parametrize("training", (True, False), ids=("train", "eval"))
@pytest.mark.parametrize("residual,post_relu", [(True, True), (False, False)],
                         ids=("res-relu", "plain"))
def test_gradcheck(training, residual, post_relu):
    check_gradcheck(training, residual, post_relu, "cpu", torch.device("cpu"))


def check_gradcheck(training, residual, post_relu, backend, device):
    """torch.autograd.gradcheck of bn_squeeze_excite on ``backend`` in float64, w.r.t. every
    differentiable input."""
    args = {k: None if v is None else v.to(device)
            for k, v in make_bn_inputs(2, 3, 3, 2, 2, residual=residual).items()}
    names = [k for k in GRAD_NAMES if args[k] is not None]
    # eval mode reads the running statistics; training uses the batch's (no buffers mutated)
    mean, var = (None, None) if training else (args["running_mean"], args["running_var"])

    def fn(*tensors):
        a = dict(args, **dict(zip(names, tensors)))
        return bn_squeeze_excite(a["y"], a["bn_weight"], a["bn_bias"], mean, var, a["w1"],
                                 a["b1"], a["w2"], a["b2"], a["residual"], training=training,
                                 post_relu=post_relu, backend=backend)

    inputs = [args[k].clone().requires_grad_() for k in names]
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def op_args(args, batch_stats, post_relu=True):
    a = args
    running = [a[k].to(a["y"].dtype) for k in ("running_mean", "running_var")]
    return (a["y"], a["bn_weight"], a["bn_bias"],
            None if batch_stats else running[0], None if batch_stats else running[1],
            a["w1"], a["b1"], a["w2"], a["b2"], a["residual"], batch_stats, 1e-5, "relu",
            "sigmoid", post_relu)


@pytest.mark.parametrize("batch_stats", (True, False))
@pytest.mark.parametrize("channels_last", (False, True), ids=("nchw", "nhwc"))
def test_opcheck_forward(batch_stats, channels_last):
    args = make_bn_inputs(2, 6, 3, 4, 3, dtype=torch.float32, channels_last=channels_last)
    for k in GRAD_NAMES:
        if args[k] is not None:
            args[k].requires_grad_()
    torch.library.opcheck(ext_bn_ops.forward, op_args(args, batch_stats))


@pytest.mark.parametrize("post_relu,residual", [(True, True), (True, False), (False, True)])
def test_opcheck_backward(post_relu, residual):
    args = make_bn_inputs(2, 6, 3, 4, 3, dtype=torch.float32, residual=residual)
    out, sample_mean, pooled, hidden, scale, mean, rstd, _ = ext_bn_ops.forward(
        *op_args(args, True, post_relu))
    grad = torch.randn_like(out)
    torch.library.opcheck(ext_bn_ops.backward, (
        grad, args["y"], out if post_relu else None, args["bn_weight"], args["bn_bias"],
        args["w1"], args["w2"], sample_mean, pooled, hidden, scale, mean, rstd, True, residual,
        "relu", "sigmoid"))


@pytest.mark.parametrize("momentum", (0.1, None))
@pytest.mark.parametrize("tracked", (True, False))
def test_opcheck_update_running_stats(momentum, tracked):
    gen = torch.Generator().manual_seed(0)
    mean, var = torch.randn(5, generator=gen), torch.rand(5, generator=gen) + 0.5
    counter = torch.tensor(2, dtype=torch.long) if tracked else None
    torch.library.opcheck(update_running_stats_op,
                          (mean, var, counter, torch.randn(5, generator=gen),
                           torch.rand(5, generator=gen), 30, momentum))


def test_compile_fullgraph_matches_eager():
    check_compile_fullgraph_matches_eager("cpu", torch.device("cpu"))


def check_compile_fullgraph_matches_eager(backend, device):
    """Two training steps and one eval step under torch.compile(fullgraph=True) (aot_eager):
    the same outputs, gradients and running statistics as eager."""
    base = {k: None if v is None else v.to(device)
            for k, v in make_bn_inputs(2, 8, 4, 3, 2, dtype=torch.float32).items()}

    def step(a, stats, training):
        return call(bn_squeeze_excite, a, stats, training=training, post_relu=True,
                    backend=backend)

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    results = []
    for fn in (step, compiled):
        a = {k: None if v is None else v.clone().requires_grad_(k in GRAD_NAMES)
             for k, v in base.items()}
        stats = stats_for(base, torch.float32)
        outs = [fn(a, stats, True), fn(a, stats, True), fn(a, stats, False)]
        loss = sum((o * torch.linspace(-1, 1, o.numel(), device=device).reshape(o.shape)).sum()
                   for o in outs)
        loss.backward()
        results.append((outs, [a[k].grad for k in GRAD_NAMES if a[k] is not None], stats))
    (e_outs, e_grads, e_stats), (c_outs, c_grads, c_stats) = results
    for e, c in zip(e_outs + e_grads + list(e_stats), c_outs + c_grads + list(c_stats)):
        torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-6)
    assert c_stats[2].item() == 5


def nonfinite_pattern(t):
    return torch.isnan(t), torch.isposinf(t), torch.isneginf(t)


@pytest.mark.parametrize("hw", [(4, 4), (40, 30)], ids=["4x4", "40x30"])  # 1200: two tiles
@pytest.mark.parametrize("channels_last", (False, True), ids=("nchw", "nhwc"))
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=str)
@pytest.mark.parametrize("training", (True, False), ids=("train", "eval"))
def test_nonfinite_y_propagates_as_batchnorm2d_and_se(training, value, channels_last, hw):
    check_nonfinite_y(training, value, channels_last, hw, "cpu", torch.device("cpu"))


def check_nonfinite_y(training, value, channels_last, hw, backend, device):
    """A NaN or +-Inf in y: nn.BatchNorm2d followed by the SE reference puts NaN / Inf where
    the fused op does (in training the channel's statistics, and so every sample's
    excitation; in eval the sample's squeeze), in the output and in the running statistics:
    an infinite value makes the batch mean infinite (F.batch_norm's sum / count), which
    Chan's merge of the per-sample means used to turn into NaN (Inf - Inf)."""
    args = make_bn_inputs(3, 6, *hw, 2, dtype=torch.float32, channels_last=channels_last)
    args["y"][1, 2, 0, 3] = value
    args = {k: None if v is None else v.to(device) for k, v in args.items()}
    bn = nn.BatchNorm2d(6).train(training).to(device)
    with torch.no_grad():
        bn.weight.copy_(args["bn_weight"])
        bn.bias.copy_(args["bn_bias"])
        bn.running_mean.copy_(args["running_mean"])
        bn.running_var.copy_(args["running_var"])
        stats = (bn.running_mean.clone(), bn.running_var.clone(), None)
        expected = squeeze_excite_reference(bn(args["y"]), args["w1"], args["b1"], args["w2"],
                                            args["b2"], args["residual"], post_relu=True)
        out = call(bn_squeeze_excite, args, stats, training=training, post_relu=True,
                   backend=backend)
    if value != value or training:  # (in eval an infinite value may end at a ReLU's 0)
        assert not torch.isfinite(expected).all()
    for actual, reference in ((out, expected), (stats[0], bn.running_mean),
                              (stats[1], bn.running_var)):
        assert all(torch.equal(a, e) for a, e in zip(nonfinite_pattern(actual),
                                                     nonfinite_pattern(reference)))
    if training and value != value:  # NaN
        assert torch.isnan(stats[0][2])
    elif training:
        assert stats[0][2] == value  # the running mean takes the infinite batch mean


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("post_relu,residual", [(True, True), (False, False)])
def test_double_backward(training, post_relu, residual):
    """create_graph=True (double backward, gradient penalties): the gradients are computed in
    differentiable PyTorch ops; gradgradcheck in float64, and a gradient penalty's gradients
    equal the reference backend's."""
    args = make_bn_inputs(2, 4, 3, 3, 2, residual=residual)
    names = ("y", "bn_weight", "bn_bias", "w1", "b1", "w2", "b2")
    inputs = [args[n].clone().requires_grad_() for n in names]
    residual_t = args["residual"].clone().requires_grad_() if residual else None

    def run(backend, *tensors, res=residual_t):
        y, gamma, beta, w1, b1, w2, b2 = tensors
        return bn_squeeze_excite(y, gamma, beta, args["running_mean"].clone(),
                                 args["running_var"].clone(), w1, b1, w2, b2, res,
                                 training=training, post_relu=post_relu, backend=backend)

    assert torch.autograd.gradgradcheck(lambda *t: run("cpu", *t[:7], res=t[7] if residual else None),
                                        (*inputs, *([residual_t] if residual else [])),
                                        eps=1e-6, atol=1e-5, rtol=1e-4)
    penalties = []
    for backend in ("cpu", "reference"):
        out = run(backend, *inputs)
        grads = torch.autograd.grad(out.square().sum(), inputs, create_graph=True)
        penalty = sum(g.square().sum() for g in grads)
        penalties.append((penalty, torch.autograd.grad(penalty, inputs)))
    (p_cpu, g_cpu), (p_ref, g_ref) = penalties
    torch.testing.assert_close(p_cpu, p_ref, rtol=1e-9, atol=0)
    for name, a, b in zip(names, g_cpu, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10, msg=name)


def test_reference_backend_is_the_contract():
    args = make_bn_inputs(2, 4, 3, 3, 2)
    s1, s2 = stats_for(args, torch.float64), stats_for(args, torch.float64)
    out = call(bn_squeeze_excite, args, s1, training=True, backend="reference")
    expected = call(bn_squeeze_excite_reference, args, s2, training=True)
    assert torch.equal(out, expected) and torch.equal(s1[0], s2[0]) and torch.equal(s1[1], s2[1])


def bad(args, **changes):
    return dict(args, **changes)


ERRORS = {
    "bn_weight shape": (lambda a: bad(a, bn_weight=a["bn_weight"][:3]), ValueError, "bn_weight"),
    "bn_bias dtype": (lambda a: bad(a, bn_bias=a["bn_bias"].half()), TypeError, "bn_bias"),
    "only running_mean": (lambda a: bad(a, running_var=None), ValueError, "both"),
    "y 3-D": (lambda a: bad(a, y=a["y"][0]), ValueError, "y must be 4-D"),
    "w1 shape": (lambda a: bad(a, w1=a["w1"][:, :3]), ValueError, "w1"),
    "residual dtype": (lambda a: bad(a, residual=a["residual"].float()), TypeError, "residual"),
}


@pytest.mark.parametrize("case", ERRORS.values(), ids=ERRORS.keys())
def test_bad_arguments_raise_and_change_nothing(case):
    make_bad, error, match = case
    args = make_bad(make_bn_inputs(2, 4, 3, 3, 2))
    stats = (args["running_mean"], args["running_var"], torch.tensor(0, dtype=torch.long))
    before = [None if s is None else s.clone() for s in stats]
    with pytest.raises(error, match=match):
        call(bn_squeeze_excite, args, stats, training=True, backend="cpu")
    for s, b in zip(stats, before):
        assert (s is None and b is None) or torch.equal(s, b)


@pytest.mark.parametrize("backend,error", [("cuda", NotImplementedError),
                                           ("nope", ValueError)])
def test_backends_without_kernels_raise(backend, error):
    args = make_bn_inputs(2, 4, 3, 3, 2)
    with pytest.raises(error):
        call(bn_squeeze_excite, args, None, training=True, backend=backend)


def test_training_must_be_a_bool():
    args = make_bn_inputs(2, 4, 3, 3, 2)
    with pytest.raises(TypeError, match="training"):
        call(bn_squeeze_excite, args, None, training=1, backend="cpu")


def test_kernel_checks_its_arguments():
    """The op boundary checks what the schema cannot say (a direct call, past the Python
    validation)."""
    args = make_bn_inputs(2, 4, 3, 3, 2, dtype=torch.float32)
    a = op_args(args, False)
    with pytest.raises(ValueError, match="running_mean"):
        ext_bn_ops.forward(*a[:3], a[3][:2], *a[4:])


@pytest.mark.parametrize("options,match", [
    (dict(momentum="0.1"), "momentum"),
    (dict(eps=None), "eps"),
    (dict(eps=0.0), "eps must be positive"),
])
def test_bad_options_raise(options, match):
    args = make_bn_inputs(2, 4, 3, 3, 2)
    with pytest.raises((TypeError, ValueError), match=match):
        call(bn_squeeze_excite, args, None, training=True, backend="cpu", **options)


def test_num_batches_tracked_must_be_an_int64_scalar():
    args = make_bn_inputs(2, 4, 3, 3, 2)
    stats = (args["running_mean"], args["running_var"], torch.tensor(1.0))
    with pytest.raises(TypeError, match="num_batches_tracked"):
        call(bn_squeeze_excite, args, stats, training=True, backend="cpu")


def test_auto_takes_the_cpu_kernels_for_cpu_tensors():
    args = make_bn_inputs(2, 6, 4, 3, 2, dtype=torch.float32)
    s1, s2 = stats_for(args, torch.float32), stats_for(args, torch.float32)
    out = call(bn_squeeze_excite, args, s1, training=True, post_relu=True, backend="auto")
    expected = call(bn_squeeze_excite, args, s2, training=True, post_relu=True, backend="cpu")
    assert torch.equal(out, expected)
    assert all(torch.equal(a, b) for a, b in zip(s1, s2))


@pytest.mark.parametrize("training", (True, False), ids=("train", "eval"))
def test_eager_path_equals_the_op(training):
    """The eager fast path (the kernels called past the ops' autograd, through an
    autograd.Function, or directly without grad) gives the op's outputs and gradients
    bitwise."""
    args = make_bn_inputs(2, 6, 4, 3, 2, dtype=torch.float32, channels_last=True)
    stats = stats_for(args, torch.float32)
    grad = torch.randn(args["y"].shape).contiguous(memory_format=torch.channels_last)
    results = []
    for path in ("eager", "op"):
        leaves = {k: None if v is None else v.clone().requires_grad_(k in GRAD_NAMES)
                  for k, v in args.items()}
        batch = training
        if path == "eager":
            out = call(bn_squeeze_excite, leaves, None if training else stats[:2] + (None,),
                       training=training, post_relu=True, backend="cpu")
        else:
            out = ext_bn_ops.forward(
                leaves["y"], leaves["bn_weight"], leaves["bn_bias"],
                None if batch else stats[0], None if batch else stats[1], leaves["w1"],
                leaves["b1"], leaves["w2"], leaves["b2"], leaves["residual"], batch, 1e-5,
                "relu", "sigmoid", True)[0]
        wanted = [leaves[k] for k in GRAD_NAMES]
        results.append((out, torch.autograd.grad(out, wanted, grad)))
    (e_out, e_grads), (o_out, o_grads) = results
    assert torch.equal(e_out, o_out)
    assert all(torch.equal(e, o) for e, o in zip(e_grads, o_grads))
    with torch.no_grad():
        out = call(bn_squeeze_excite, args, None if training else stats[:2] + (None,),
                   training=training, post_relu=True, backend="cpu")
    assert torch.equal(out, e_out)


def test_available_backends_say_which_backend_fuses_what():
    """available_backends()[name].fuses is what each backend really runs: the BatchNorm + SE
    op on the backends that list it, NotImplementedError on a kernel backend that does not."""
    from senet_kernels import available_backends
    from senet_kernels.backends import FUSED_OPS
    statuses = available_backends()
    assert {name: s.fuses for name, s in statuses.items()} == FUSED_OPS
    assert all("squeeze_excite" in FUSED_OPS[name] for name in ("triton", "cuda", "cpu"))
    args = make_bn_inputs(2, 4, 3, 3, 2)
    for name, ops in FUSED_OPS.items():
        if name == "reference" or "bn_squeeze_excite" in ops:
            continue
        with pytest.raises(NotImplementedError, match=f"no {name!r} kernels"):
            call(bn_squeeze_excite, args, None, training=True, backend=name)
    out = call(bn_squeeze_excite, args, None, training=True, backend="cpu")
    assert out.shape == args["y"].shape
