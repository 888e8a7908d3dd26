"""Double backward (create_graph=True): gradients of gradients equal the reference's.

The backward kernels return plain tensors; a backward that must be differentiable computes the
same gradients in differentiable ops (senet_kernels/double_backward.py). Checked on the eager
fast path (squeeze_excite) and on the custom op (the dispatcher path of torch.compile), and
with torch.autograd.gradgradcheck in float64.
"""

import pytest
import torch

from senet_kernels import squeeze_excite
from senet_kernels.backends import backend_ops

from cases import VARIANTS, assert_close, backend_device_params, make_inputs, reference64

BACKEND_PATHS = backend_device_params(paths=True)
NAMES = ("x", "w1", "b1", "w2", "b2", "residual")


def _second_order(forward, args):
    """d/d(every input) of |d(|y|^2)/dx|^2 + <d(|y|^2)/dw1, d(|y|^2)/dw1>: a function of
    first-order gradients w.r.t. an activation and a weight, differentiated again."""
    leaves = [None if v is None else v.detach().clone().requires_grad_() for v in args.values()]
    y = forward(*leaves)
    gx, gw1 = torch.autograd.grad(y.square().sum(), [leaves[0], leaves[1]], create_graph=True)
    loss = gx.square().sum() + gw1.square().sum()
    used = [(n, t) for n, t in zip(NAMES, leaves) if t is not None]
    return dict(zip([n for n, _ in used],
                    torch.autograd.grad(loss, [t for _, t in used], allow_unused=True)))


@pytest.mark.parametrize("backend,device,path", BACKEND_PATHS)
@pytest.mark.parametrize("activation,gate,bias,residual,post_relu",
                         [v for v in VARIANTS if v[2] == v[3]])  # bias and residual together
def test_gradients_of_gradients_match_the_reference(backend, device, path, activation, gate,
                                                     bias, residual, post_relu):
    args = make_inputs(2, 12, 3, 4, 5, dtype=torch.float32, bias=bias, residual=residual,
                       device=device, seed=3)
    options = dict(activation=activation, gate=gate, post_relu=post_relu)
    actual = _second_order(lambda *a: squeeze_excite(*a, backend=backend, **options), args)
    _, args64 = reference64(args, **options)
    expected = _second_order(
        lambda *a: squeeze_excite(*a, backend="reference", **options),
        {k: None if v is None else v.double() for k, v in args64.items()})
    assert actual.keys() == expected.keys()
    for name in actual:
        if expected[name] is None:  # residual: the loss does not depend on it
            assert actual[name] is None or not actual[name].any(), name
            continue
        assert actual[name] is not None, f"no second-order gradient for {name}"
        assert_close(actual[name], expected[name], torch.float32, f"d2 / d {name}")


@pytest.mark.parametrize("backend,device,path", BACKEND_PATHS)
def test_gradgradcheck(backend, device, path):
    args = make_inputs(2, 3, 2, 2, 2, dtype=torch.float64, residual=True, device=device, seed=4)
    leaves = [v.detach().clone().requires_grad_() for v in args.values()]

    def fn(*inputs):
        return squeeze_excite(*inputs, activation="silu", gate="sigmoid", post_relu=True,
                              backend=backend)

    assert torch.autograd.gradgradcheck(fn, leaves, eps=1e-6, atol=1e-6, rtol=1e-5,
                                        fast_mode=True)


@pytest.mark.parametrize("backend,device,path", BACKEND_PATHS)
def test_custom_op_double_backward(backend, device, path):
    """The op's registered autograd (what torch.compile and dispatch modes go through)."""
    ops = backend_ops(backend)
    args = make_inputs(2, 12, 3, 4, 5, dtype=torch.float64, residual=True, device=device,
                       seed=5)
    options = ("relu", "hardsigmoid", True)
    actual = _second_order(lambda *a: ops.forward(*a, *options)[0], args)
    expected = _second_order(
        lambda *a: squeeze_excite(*a, activation="relu", gate="hardsigmoid", post_relu=True,
                                  backend="reference"), args)
    for name in expected:
        if expected[name] is not None:
            assert_close(actual[name], expected[name], torch.float64, f"d2 / d {name}")
