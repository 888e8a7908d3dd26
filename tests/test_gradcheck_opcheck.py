"""torch.autograd.gradcheck in float64 and torch.library.opcheck on every custom op."""

import pytest
import torch

from senet_kernels import squeeze_excite
from senet_kernels.backends import backend_ops

from cases import VARIANTS, backend_device_params, make_inputs

BACKENDS = backend_device_params()
BACKEND_PATHS = backend_device_params(paths=True)


def _leaves(args):
    return [None if v is None else v.detach().clone().requires_grad_() for v in args.values()]


@pytest.mark.parametrize("backend,device,path", BACKEND_PATHS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("activation,gate,bias,residual,post_relu", VARIANTS)
def test_gradcheck_fast(backend, device, path, channels_last, activation, gate, bias, residual, post_relu):
    """Every variant, fast mode (random projections of the Jacobian)."""
    args = make_inputs(2, 5, 3, 2, 3, dtype=torch.float64, channels_last=channels_last, bias=bias,
                       residual=residual, device=device, seed=7)

    def fn(x, w1, b1, w2, b2, res):
        return squeeze_excite(x, w1, b1, w2, b2, res, activation=activation, gate=gate,
                              post_relu=post_relu, backend=backend)

    assert torch.autograd.gradcheck(fn, _leaves(args), eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)


@pytest.mark.parametrize("backend,device,path", BACKEND_PATHS)
@pytest.mark.parametrize("activation,gate", [("relu", "sigmoid"), ("silu", "hardsigmoid")])
def test_gradcheck_full(backend, device, path, activation, gate):
    """The full Jacobian of the SE-ResNet form on a tiny input."""
    args = make_inputs(2, 3, 2, 2, 2, dtype=torch.float64, channels_last=True, residual=True,
                       device=device, seed=8)

    def fn(x, w1, b1, w2, b2, res):
        return squeeze_excite(x, w1, b1, w2, b2, res, activation=activation, gate=gate,
                              post_relu=True, backend=backend)

    assert torch.autograd.gradcheck(fn, _leaves(args), eps=1e-6, atol=1e-7, rtol=1e-5)


OPCHECK_CASES = [  # (dtype, channels_last, bias, residual, post_relu, activation, gate)
    (torch.float32, False, True, True, True, "relu", "sigmoid"),
    (torch.float32, True, False, False, False, "silu", "hardsigmoid"),
    (torch.bfloat16, True, True, True, False, "relu", "hardsigmoid"),
    (torch.float16, False, False, True, True, "silu", "sigmoid"),
]


@pytest.mark.parametrize("backend,device,path", BACKEND_PATHS)
@pytest.mark.parametrize("case", OPCHECK_CASES, ids=lambda c: "-".join(map(str, c)))
def test_opcheck(backend, device, path, case):
    dtype, channels_last, bias, residual, post_relu, activation, gate = case
    ops = backend_ops(backend)
    args = make_inputs(2, 12, 3, 4, 3, dtype=dtype, channels_last=channels_last, bias=bias,
                       residual=residual, device=device, seed=9)
    fwd_args = (*_leaves(args), activation, gate, post_relu)
    torch.library.opcheck(ops.forward, fwd_args)

    out, pooled, hidden, scale = ops.forward(*[a.detach() if isinstance(a, torch.Tensor) else a
                                               for a in fwd_args])
    bwd_args = (torch.randn_like(out), args["x"], out if post_relu else None, args["w1"], args["w2"],
                pooled, hidden, scale, residual, activation, gate)
    torch.library.opcheck(ops.backward, bwd_args)
