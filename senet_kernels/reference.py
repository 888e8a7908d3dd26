"""Plain-PyTorch Squeeze-and-Excitation: the oracle of the tests and the ``reference`` backend.

It writes the math of docs/design.md with PyTorch ops and differentiates through PyTorch
autograd, so its NaN / Inf behavior, forward and backward, is PyTorch's: the contract every
kernel backend keeps (tests/test_nan_semantics.py, tests/test_properties.py).
Half-precision inputs are computed in float32 and rounded once at the end, the contract every
fused backend keeps; float32 and float64 inputs are computed in their own precision.
"""

import torch
import torch.nn.functional as F

from .dtypes import compute_dtype
from .spec import ACTIVATIONS, GATES, LEAKY_RELU_SLOPE, check_activation, check_gate


def activate(h, activation):
    """act(h) for every name of ``spec.ACTIVATIONS``; ValueError for any other."""
    if activation == "relu":
        return F.relu(h)
    if activation == "silu":
        return F.silu(h)
    if activation == "gelu":
        return F.gelu(h)
    if activation == "gelu_tanh":
        return F.gelu(h, approximate="tanh")
    if activation == "hardswish":
        return hardswish(h)
    if activation == "leaky_relu":
        return F.leaky_relu(h, LEAKY_RELU_SLOPE)
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def _in_graph():
    """Whether the op is being compiled, exported or traced: there hardswish and hardsigmoid
    are one op each (ONNX HardSwish / HardSigmoid), except in float64, where ONNX Runtime has
    no kernel for those two and the graph keeps the eager formulas (elementary ops, the same
    values and gradient rules as in eager mode)."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def _hardswish_values(h):
    """F.hardswish's values; in float64 graphs h * clamp(h + 3, 0, 6) / 6, PyTorch's CPU
    formula in its order (the same float64 values), in ops ONNX Runtime runs in double."""
    if h.dtype == torch.float64 and _in_graph():
        return h * (h + 3).clamp(0, 6) / 6
    return F.hardswish(h)


def hardswish(h):
    """F.hardswish, with one gradient rule where h is NaN: PyTorch's CPU kernel has two.

    PyTorch's hardswish_backward is a select: 0 where h <= -3 (an Inf grad included),
    grad * (h / 3 + 1/2) where -3 < h < 3, grad elsewhere, a NaN h included -- in its scalar
    loop and on CUDA; the vectorized loop of its CPU kernel gives NaN for a NaN h instead, so
    on the CPU which one a NaN gets depends on its position in the tensor. This keeps the
    first everywhere (the kernels' rule), with F.hardswish's values exactly, in differentiable
    ops (double backward: the second derivative is 1/3 inside, 0 elsewhere).
    """
    if _in_graph() and h.dtype != torch.float64:
        return F.hardswish(h)  # one op in compiled, exported or traced graphs (ONNX HardSwish)
    if not (h.requires_grad and torch.is_grad_enabled()):
        return _hardswish_values(h)
    values = _hardswish_values(h.detach())
    inside = (h > -3) & (h < 3)
    above = (h >= 3) & torch.isfinite(h)
    # A tensor with hardswish's derivative at every finite h and no NaN or Inf anywhere (which
    # a zero gradient times a derivative would turn into NaN): h (h + 3) / 6 =
    # ((h + 3/2)^2 - 9/4) / 6 inside, h above, 0 below.
    curve = ((torch.where(inside, h, 0) + 1.5).pow(2) - 2.25) / 6
    carrier = torch.where(inside, curve, torch.where(above, h, 0))
    finite = values + (carrier - carrier.detach())  # F.hardswish's values exactly
    return torch.where((h == float("inf")) | h.isnan(), h, finite)  # h itself, gradient 1


def hardsigmoid(z):
    """F.hardsigmoid with a derivative of its own derivative (0), for double backward.

    PyTorch has no derivative of hardsigmoid_backward. Inside (-3, 3) this is (z + 3) / 6
    (slope 1/6); elsewhere the clamped value with no gradient, as F.hardsigmoid's backward
    gives (NaN included: it is outside the open interval). In float64 the values and the
    slope are exact, as the kernels compute them: PyTorch's CUDA kernels multiply by 1/6
    rounded to float32 (3e-8 off, so that a saturated gate is 1 + 3e-8), and its backward
    does so on every device. In other dtypes the values are F.hardsigmoid's.
    """
    if _in_graph() and z.dtype != torch.float64:
        return F.hardsigmoid(z)  # one op in compiled, exported or traced graphs (ONNX HardSigmoid)
    if not (z.requires_grad and torch.is_grad_enabled()):
        return _hardsigmoid_values(z)
    inside = (z > -3) & (z < 3)
    return torch.where(inside, (z + 3) / 6, _hardsigmoid_values(z.detach()))


def _hardsigmoid_values(z):
    if z.dtype == torch.float64:
        return (z + 3).clamp(0, 6) / 6
    return F.hardsigmoid(z)


def apply_gate(z, gate):
    """gate(z) for every name of ``spec.GATES``; ValueError for any other."""
    if gate == "sigmoid":
        return torch.sigmoid(z)
    if gate == "hardsigmoid":
        return hardsigmoid(z)
    raise ValueError(f"gate must be one of {GATES}, got {gate!r}")


def _excite_vectors(pooled, w1, b1, w2, b2, activation, gate):
    """(hidden [N, Cr] before the activation, scale [N, C]) of the excitation, in pooled's dtype.

    ``w2`` None: the single-FC form (Effective SE), hidden = W1 pooled + b1 [N, C] is the
    gate's input and the activation is not applied."""
    dtype = pooled.dtype
    hidden = F.linear(pooled, w1.to(dtype), None if b1 is None else b1.to(dtype))
    if w2 is None:
        return hidden, apply_gate(hidden, gate)
    z = F.linear(activate(hidden, activation), w2.to(dtype), None if b2 is None else b2.to(dtype))
    return hidden, apply_gate(z, gate)


def excite(pooled, w1, b1, w2, b2, activation, gate):
    """The excitation on pooled features [N, C]: FC, activation, FC, gate (w2 None: FC, gate).
    Returns s [N, C]."""
    return _excite_vectors(pooled, w1, b1, w2, b2, activation, gate)[1]


def forward_with_vectors(x, w1, b1, w2, b2, residual, activation, gate, post_relu):
    """``(out, pooled, hidden, scale)`` as the kernel backends' forward op returns them
    (ops.py): ``out`` in x's dtype, the three vectors in the compute dtype. No argument checks
    (``squeeze_excite_reference`` has them)."""
    acc = compute_dtype(x.dtype)
    xa = x.to(acc)
    pooled = xa.mean(dim=(2, 3))
    hidden, scale = _excite_vectors(pooled, w1, b1, w2, b2, activation, gate)
    y = xa * scale[:, :, None, None]
    if residual is not None:
        y = y + residual.to(acc)
    if post_relu:
        y = F.relu(y)
    return y.to(x.dtype), pooled, hidden, scale


def squeeze_excite_reference(x, w1, b1, w2, b2, residual=None, *, activation="relu",
                             gate="sigmoid", post_relu=False):
    """Eager SE block: ``relu?(x * gate(fc2(act(fc1(mean_hw(x))))) + residual?)``, or with
    w2 None (single FC, Effective SE) ``relu?(x * gate(fc1(mean_hw(x))) + residual?)``.

    Shapes: x [N, C, H, W]; w1 [Cr, C] ([C, C] when w2 is None); w2 [C, Cr] or None; b1 [Cr]
    or None; b2 [C] or None (None when w2 is); residual like x or None. Returns a tensor of x's dtype, shape and memory format.
    """
    check_activation(activation)
    check_gate(gate)
    return forward_with_vectors(x, w1, b1, w2, b2, residual, activation, gate, post_relu)[0]
