"""NaN and Inf propagate through every kernel backend exactly as through the reference.

The reference is plain PyTorch (F.relu, F.silu, F.gelu, torch.sigmoid, F.hardsigmoid, mean,
linear; hardswish with one rule for a NaN, see reference.hardswish), so its NaN / Inf
behavior, forward and backward, is PyTorch's: ReLU keeps NaN and its backward
(threshold_backward on the result) lets the gradient through where the result is NaN;
hardsigmoid keeps NaN and its backward is 0 wherever it is clamped, whatever the incoming
gradient (Inf included); 0 * Inf is NaN. Each backend must put NaN, +Inf and -Inf in exactly
the reference's positions of the output and of every gradient (tests/nonfinite.py).

Both excitation paths of each backend are covered: the Triton backend's forced per-sample and
batched paths, and the C++ CPU kernels' per-sample path (H*W = 9 here) and batched path
(H*W = 1: their excite_in_batch rule), which used to disagree with each other.
"""

import itertools

import pytest
import torch

from senet_kernels import squeeze_excite, squeeze_excite_reference
from senet_kernels.spec import ACTIVATIONS, GATES

from cases import backend_device_params, make_inputs
from nonfinite import assert_backend_matches_reference

BACKEND_PATHS = backend_device_params(paths=True)
#: (N, C, H, W, Cr): the C++ CPU kernels excite per sample at 3x3, as a batch at 1x1.
SHAPES = [(2, 8, 3, 3, 2), (2, 8, 1, 1, 2)]
SHAPE_IDS = ["3x3", "1x1"]
NONFINITE = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}


@pytest.mark.parametrize("backend,device,path", BACKEND_PATHS)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("where", ["x", "w1", "b1"])
def test_issue_example_nan_count(backend, device, path, shape, where):
    """The issue's example: a NaN in x[0, 0, 0, 0] makes all 72 outputs of sample 0 NaN in
    the reference (its pooled feature feeds every hidden unit), a NaN in w1 or b1 all 144
    outputs; the kernels' ReLU (h > 0 ? h : 0) and clamps used to turn those NaN into
    finite values (1 and 0 NaN instead)."""
    n, c, h, w, cr = shape
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, h, w, generator=gen)
    w1, b1, w2 = torch.randn(cr, c, generator=gen), torch.randn(cr, generator=gen), \
        torch.randn(c, cr, generator=gen)
    if where == "x":
        x[0, 0, 0, 0] = float("nan")
    elif where == "w1":
        w1[0, 0] = float("nan")
    else:
        b1[0] = float("nan")
    bias = b1 if where == "b1" else None
    expected = squeeze_excite_reference(x, w1, bias, w2, None)
    out = squeeze_excite(x.to(device), w1.to(device), None if bias is None else bias.to(device),
                         w2.to(device), None, backend=backend)
    expected_count = {"x": c * h * w, "w1": n * c * h * w, "b1": n * c * h * w}[where]
    assert int(expected.isnan().sum()) == expected_count
    assert int(out.isnan().sum()) == expected_count
    assert torch.equal(out.isnan().cpu(), expected.isnan())


def _inject(args, grad_out, target, value):
    """Put ``value`` into one element of args[target] (or of grad_out) in place."""
    t = grad_out if target == "grad_out" else args[target]
    t.view(-1)[(t.numel() - 1) // 2] = value


def _case(shape, target, value, seed, **variant):
    args = make_inputs(*shape, residual=True, seed=seed)
    grad_out = torch.randn(shape[:4], generator=torch.Generator().manual_seed(seed + 1))
    _inject(args, grad_out, target, NONFINITE[value])
    return args, grad_out, dict(variant, post_relu=True)


TARGETS = ["x", "w1", "b1", "w2", "b2", "residual", "grad_out"]
VARIANTS = list(itertools.product(ACTIVATIONS, GATES))


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("value", NONFINITE)
@pytest.mark.parametrize("activation,gate", VARIANTS)
def test_cpu_backend_every_injection(shape, target, value, activation, gate):
    """C++ CPU kernels: a NaN / +Inf / -Inf in any input or in grad_out, every variant, both
    excitation paths: output and every gradient have the reference's NaN / Inf pattern."""
    pytest.importorskip("senet_kernels._C")
    args, grad_out, options = _case(shape, target, value, TARGETS.index(target),
                                    activation=activation, gate=gate)
    assert_backend_matches_reference("cpu", args, options, torch.float32, grad_out)


TRITON_PATHS = [p for p in BACKEND_PATHS if p.values[0] == "triton"]


@pytest.mark.parametrize("backend,device,path", TRITON_PATHS)
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("value", NONFINITE)
def test_triton_backend_every_injection(backend, device, path, target, value):
    """Triton kernels, both excitation paths: the same check, each (target, value) with one
    variant (cycling through all of them) to keep the interpreter's time down."""
    i = TARGETS.index(target) * len(NONFINITE) + list(NONFINITE).index(value)
    activation, gate = VARIANTS[i % len(VARIANTS)]
    args, grad_out, options = _case(SHAPES[0], target, value, i, activation=activation, gate=gate)
    args = {k: None if v is None else v.to(device) for k, v in args.items()}
    assert_backend_matches_reference(backend, args, options, torch.float32, grad_out.to(device))


@pytest.mark.parametrize("backend,device,path", BACKEND_PATHS)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_relu_tail_passes_gradient_where_out_is_nan(backend, device, path, shape):
    """post_relu: PyTorch's relu backward is threshold_backward on the result, which lets the
    gradient through where the result is NaN. A NaN in the residual makes one output NaN;
    grad_residual there is grad_out (finite), not 0 as an `out > 0` mask gave."""
    args = make_inputs(*shape, residual=True, seed=3, device=device)
    args["residual"][1, 2, 0, 0] = float("nan")
    grad_out = torch.randn(shape[:4], generator=torch.Generator().manual_seed(4)).to(device)
    _, grads = assert_backend_matches_reference(
        backend, args, dict(activation="relu", gate="sigmoid", post_relu=True), torch.float32,
        grad_out)
    assert grads["residual"][1, 2, 0, 0] == grad_out[1, 2, 0, 0]


@pytest.mark.parametrize("backend,device,path", BACKEND_PATHS)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_clamped_hardsigmoid_blocks_an_infinite_gradient(backend, device, path, shape):
    """hardsigmoid's backward is a select: 0 where the gate is clamped even when the incoming
    gradient is Inf (PyTorch). Channel 0's gate is clamped at 0 (b2 = -10) and grad_out holds
    an Inf there: the reference's weight gradients stay finite; gs * gate'(s) as a product
    gave Inf * 0 = NaN and spread it into grad_w1, grad_w2 and every grad_x."""
    args = make_inputs(*shape, seed=5, device=device)
    args["b2"][0] = -10.0
    grad_out = torch.randn(shape[:4], generator=torch.Generator().manual_seed(6)).to(device)
    grad_out[0, 0, 0, 0] = float("inf")
    _, grads = assert_backend_matches_reference(
        backend, args, dict(activation="silu", gate="hardsigmoid"), torch.float32, grad_out)
    for name in ("w1", "b1", "w2", "b2"):
        assert torch.isfinite(grads[name]).all(), name


@pytest.mark.parametrize("backend,device,path", BACKEND_PATHS)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_inactive_relu_blocks_an_infinite_gradient(backend, device, path, shape):
    """ReLU's backward is a select too: 0 where h <= 0, even for an Inf gradient. Hidden unit
    0 is off for every sample (b1 = -10), and an Inf in grad_out makes gz, then ga, infinite:
    the reference's grad_w1 / grad_b1 row 0 stays 0; ga * relu'(h) gave Inf * 0 = NaN."""
    args = make_inputs(*shape, seed=7, device=device)
    args["b1"][0] = -10.0
    grad_out = torch.randn(shape[:4], generator=torch.Generator().manual_seed(8)).to(device)
    grad_out[0, 0, 0, 0] = float("inf")
    _, grads = assert_backend_matches_reference(
        backend, args, dict(activation="relu", gate="sigmoid"), torch.float32, grad_out)
    assert (grads["w1"][0] == 0).all() and grads["b1"][0] == 0


@pytest.mark.parametrize("backend,device,path", BACKEND_PATHS)
@pytest.mark.parametrize("gate", ["sigmoid", "hardsigmoid"])
def test_gates_saturate_at_infinity(backend, device, path, gate):
    """A gate logit of +-Inf (b2) gives the gate 1 / 0, as in PyTorch, not NaN."""
    args = make_inputs(2, 8, 3, 3, 2, seed=9, device=device)
    args["b2"][0], args["b2"][1] = float("inf"), float("-inf")
    grad_out = torch.randn(2, 8, 3, 3, generator=torch.Generator().manual_seed(10)).to(device)
    out, _ = assert_backend_matches_reference(
        backend, args, dict(activation="silu", gate=gate), torch.float32, grad_out)
    assert torch.equal(out[:, 0], args["x"][:, 0]) and (out[:, 1] == 0).all()


@pytest.mark.parametrize("backend,device,path", BACKEND_PATHS)
def test_hardswish_passes_gradient_where_hidden_is_nan(backend, device, path):
    """A NaN in b1 makes hidden unit 0 NaN for every sample, hence every gate (hardsigmoid
    keeps NaN) and output; hardsigmoid's backward is 0 at a NaN gate, so ga is 0 and
    hardswish's backward at the NaN hidden unit passes it: grad_b1[0] = 0, as PyTorch's
    scalar and CUDA kernels give (its vectorized CPU loop, which a 20-unit hidden vector
    reaches, gives NaN there; the reference keeps the first rule)."""
    args = make_inputs(2, 24, 3, 3, 20, seed=11, device=device)
    args["b1"][0] = float("nan")
    grad_out = torch.randn(2, 24, 3, 3, generator=torch.Generator().manual_seed(12)).to(device)
    out, grads = assert_backend_matches_reference(
        backend, args, dict(activation="hardswish", gate="hardsigmoid"), torch.float32, grad_out)
    assert torch.isnan(out).all()
    assert grads["b1"][0] == 0 and torch.isfinite(grads["w1"]).all()
