"""The C++ kernels check their arguments at the op boundary.

``torch.ops.senet_kernels.se_forward_ext`` / ``se_backward_ext`` can be called directly (the
schema only says "Tensor"), so the kernels must not trust their caller: one checking function
in csrc/se_common.cpp, called first by the CPU and the CUDA kernels, rejects bad shapes, dtypes
and devices with a message naming the argument, instead of reading or writing out of bounds.
"""

import pytest
import torch

from senet_kernels.backends import load_extension

module, why = load_extension()
pytestmark = pytest.mark.skipif(module is None, reason=str(why))

N, C, H, W, CR = 2, 6, 3, 4, 3
ERRORS = (RuntimeError, ValueError, TypeError)  # what TORCH_CHECK / _VALUE / _TYPE raise


def _devices():
    devices = ["cpu"]
    if module is not None and module.compiled_with_cuda() and torch.cuda.is_available():
        devices.append("cuda")
    return devices


def forward_args(device):
    gen = torch.Generator().manual_seed(0)
    args = dict(x=torch.randn(N, C, H, W, generator=gen), w1=torch.randn(CR, C, generator=gen),
                b1=torch.randn(CR, generator=gen), w2=torch.randn(C, CR, generator=gen),
                b2=torch.randn(C, generator=gen), residual=torch.randn(N, C, H, W, generator=gen))
    return {k: v.to(device) for k, v in args.items()}


def call_forward(a):
    return torch.ops.senet_kernels.se_forward_ext(a["x"], a["w1"], a["b1"], a["w2"], a["b2"],
                                                  a["residual"], "relu", "sigmoid", True)


def backward_args(device):
    a = forward_args(device)
    out, pooled, hidden, scale = call_forward(a)
    return dict(grad_out=torch.randn_like(out), x=a["x"], out=out, w1=a["w1"], w2=a["w2"],
                pooled=pooled, hidden=hidden, scale=scale)


def call_backward(a):
    return torch.ops.senet_kernels.se_backward_ext(a["grad_out"], a["x"], a["out"], a["w1"],
                                                   a["w2"], a["pooled"], a["hidden"],
                                                   a["scale"], True, "relu", "sigmoid")


# (argument, how to break it, what the message must say)
BAD_FORWARD = {
    "x 3-D": ("x", lambda t: t[0], "x must be 4-D"),
    "x integer": ("x", lambda t: t.to(torch.int32), "x must be float16"),
    "x zero width": ("x", lambda t: t[..., :0], "C, H, W >= 1"),
    "w1 wrong C": ("w1", lambda t: torch.cat([t, t[:, :1]], 1), "w1 must be"),
    "w1 1-D": ("w1", lambda t: t[0], "w1 must be"),
    "w1 no rows": ("w1", lambda t: t[:0], "Cr >= 1"),
    "w2 wrong Cr": ("w2", lambda t: torch.cat([t, t[:, :1]], 1), "w2 must be"),
    "w2 wrong C": ("w2", lambda t: t[:-1], "w2 must be"),
    "w2 dtype": ("w2", lambda t: t.double(), "w2 has dtype"),
    "weights float64 for float32 x": (("w1", "w2", "b1", "b2"), lambda t: t.double(),
                                      "x's dtype or float32"),
    "b1 length": ("b1", lambda t: torch.cat([t, t[:1]]), "b1 must be"),
    "b1 dtype": ("b1", lambda t: t.double(), "b1 has dtype"),
    "b2 length": ("b2", lambda t: t[:-1], "b2 must be"),
    "b2 2-D": ("b2", lambda t: t[None], "b2 must be"),
    "residual shape": ("residual", lambda t: t[:, :, :-1], "residual must have x's shape"),
    "residual dtype": ("residual", lambda t: t.double(), "residual has dtype"),
}

BAD_BACKWARD = {
    "grad_out shape": ("grad_out", lambda t: t[:1], "grad_out must have x's shape"),
    "grad_out dtype": ("grad_out", lambda t: t.double(), "grad_out has dtype"),
    "out shape": ("out", lambda t: t[..., :-1], "out must have x's shape"),
    "x 3-D": ("x", lambda t: t[0], "x must be 4-D"),
    "w1 wrong C": ("w1", lambda t: t[:, :-1], "w1 must be"),
    "w2 wrong Cr": ("w2", lambda t: t[:, :-1], "w2 must be"),
    "pooled shape": ("pooled", lambda t: t[:, :-1], "pooled must be"),
    "pooled dtype": ("pooled", lambda t: t.double(), "pooled must have dtype"),
    "hidden shape": ("hidden", lambda t: t[:1], "hidden must be"),
    "scale shape": ("scale", lambda t: t.t(), "scale must be"),
    "scale dtype": ("scale", lambda t: t.half(), "scale must have dtype"),
}


def _break(args, names, fn):
    for name in (names,) if isinstance(names, str) else names:
        args[name] = fn(args[name])
    return args


@pytest.mark.parametrize("device", _devices())
def test_good_arguments_pass(device):
    """The baseline the bad cases below change one thing of."""
    assert call_forward(forward_args(device))[0].shape == (N, C, H, W)
    assert call_backward(backward_args(device))[0].shape == (N, C, H, W)


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("case", BAD_FORWARD)
def test_forward_rejects(device, case):
    names, fn, message = BAD_FORWARD[case]
    args = _break(forward_args(device), names, fn)
    with pytest.raises(ERRORS, match=message):
        call_forward(args)


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("case", BAD_BACKWARD)
def test_backward_rejects(device, case):
    names, fn, message = BAD_BACKWARD[case]
    args = _break(backward_args(device), names, fn)
    with pytest.raises(ERRORS, match=message):
        call_backward(args)


@pytest.mark.parametrize("device", _devices())
def test_parameters_on_another_device_are_rejected(device):
    """Every tensor must be on x's device. (The dispatcher picks the CUDA kernel whenever one
    argument is a CUDA tensor, so this needs a GPU; a meta tensor would go to the fake kernel.)"""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device beside the CPU")
    args = forward_args(device)
    args["w1"] = args["w1"].to("cpu" if device == "cuda" else "cuda")
    with pytest.raises(ERRORS, match="w1 is on|x must be a cuda tensor"):
        call_forward(args)


@pytest.mark.parametrize("device", _devices())
def test_unknown_activation_and_gate_are_rejected(device):
    a = forward_args(device)
    with pytest.raises(ValueError, match="activation must be one of 'relu', 'silu', 'gelu'"):
        torch.ops.senet_kernels.se_forward_ext(a["x"], a["w1"], None, a["w2"], None, None,
                                               "softsign", "sigmoid", False)
    with pytest.raises(ValueError, match="gate must be one of 'sigmoid', 'hardsigmoid'"):
        torch.ops.senet_kernels.se_forward_ext(a["x"], a["w1"], None, a["w2"], None, None,
                                               "relu", "tanh", False)
