"""ONNX export of the SE op: what the exporters turn ``se_forward_<backend>`` into.

The fused kernels have no ONNX form, so an exported graph computes the SE block from
standard ONNX ops (ReduceMean or GlobalAveragePool, Gemm or MatMul; the activation Relu,
Sigmoid * x, GELU from Erf or Tanh, hardswish as x * HardSigmoid, or LeakyRelu; the gate Sigmoid or
HardSigmoid (Min, Max and Div in place of HardSigmoid for float64 inputs); Mul, Add, Relu,
Cast around half-precision inputs and mixed-precision parameters) that any engine runs.
Both of ``torch.onnx.export``'s exporters are taught this at package import (``register()``),
so users export models with ``FusedSEBlock``s as they are:

* ``dynamo=True`` (the default since torch 2.9): the exporter captures the model with
  ``torch.export`` (our custom op appears as one node) and then decomposes every op it has
  no ONNX translation for with PyTorch's decomposition tables, which include
  ``torch._decomp.decomposition_table`` (the exporter's sources do so from torch 2.5 through
  2.14, the newest; tested here on 2.14). We add ``se_forward_decomposition`` there for each
  kernel backend's forward op, with ``torch._decomp.register_decomposition`` (PyTorch's own
  way to fill that table, though not a documented API: tests/test_onnx.py would catch a
  torch that stops reading it); its ATen ops are then translated by the exporter's own
  library. A translation of the op itself would instead need every user to pass
  ``custom_translation_table=``: the exporter builds its translation registry afresh for
  each export, from its own libraries only. Nor can the op have a
  ``CompositeImplicitAutograd`` kernel (the exporter's other decomposition source), because
  it has device kernels and its own autograd. A ``custom_translation_table`` entry a user
  does pass for our op takes precedence (the exporter skips decomposing ops it has a
  translation for).
* ``dynamo=False`` (the TorchScript exporter): a symbolic function registered with
  ``torch.onnx.register_custom_op_symbolic`` for opset 11 and later.

``torch.export.export`` itself is unaffected: its default decompositions leave the custom
op in the graph, so it still runs the fused kernels.
"""

import math

import torch

from .backends import backend_ops
from .reference import forward_with_vectors
from .spec import ACTIVATIONS, LEAKY_RELU_SLOPE

#: Kernel backends whose forward op gets the decomposition ("cpu" and "cuda" share "ext").
KERNEL_BACKENDS = ("triton", "cpu")

#: The oldest opset the TorchScript-exporter symbolic is registered for (Gemm's bias input
#: is optional from opset 11 on).
LEGACY_MIN_OPSET = 11


def se_forward_decomposition(x, w1, b1, w2, b2, residual, activation, gate, post_relu):
    """``se_forward_<backend>`` in ATen ops: ``(out, pooled, hidden, scale)`` as the op returns.

    The reference's forward (``reference.forward_with_vectors``): computed in the op's compute
    dtype (float32; float64 for float64 inputs) and ``out`` rounded once to x's dtype, as the
    kernels do; the three vectors stay in the compute dtype, like the op's (so a graph using
    them stays valid, though exported models use ``out`` only).
    """
    return forward_with_vectors(x, w1, b1, w2, b2, residual, activation, gate, post_relu)


# --- TorchScript exporter (dynamo=False) ----------------------------------------------------

#: ONNX TensorProto element types of the scalar types the op accepts.
_ONNX_TYPE = {"Half": 10, "BFloat16": 16, "Float": 1, "Double": 11}


def _is_none(value):
    return value.node().mustBeNone()


def _linear(g, inp, weight, bias):
    """inp @ weight.T (+ bias): Gemm with the bias, MatMul on the transposed weight without."""
    if _is_none(bias):
        return g.op("MatMul", inp, g.op("Transpose", weight, perm_i=[1, 0]))
    return g.op("Gemm", inp, weight, bias, transB_i=1)


def _se_forward_symbolic(g, x, w1, b1, w2, b2, residual, activation, gate, post_relu):
    """The TorchScript exporter's translation of ``se_forward_<backend>``: its four outputs
    (w2 None, the single-FC form: one Gemm / MatMul, then the gate).

    float64 inputs get ops ONNX Runtime implements for double (its CPU GlobalAveragePool and
    HardSigmoid are float-only): ReduceMean and the clamped ``(z + 3) / 6``; float32
    parameters beside them are cast to float64, as the op computes.
    """
    x_type = x.type().scalarType()
    if x_type not in _ONNX_TYPE:
        raise ValueError(f"ONNX export of the SE op needs x's dtype to be known and one of "
                         f"float16/bfloat16/float32/float64, got {x_type}")
    double = x_type == "Double"
    acc_type = "Double" if double else "Float"

    def to_acc(value):
        # Parameters may be float32 beside half or float64 inputs: cast what is not in the
        # compute type already (a value of unknown type too).
        if _is_none(value) or value.type().scalarType() == acc_type:
            return value
        return g.op("Cast", value, to_i=_ONNX_TYPE[acc_type])

    xa = to_acc(x)
    if double:
        pooled = _mean_hw(g, xa)
    else:
        pooled = g.op("Flatten", g.op("GlobalAveragePool", xa), axis_i=1)
    hidden = _linear(g, pooled, to_acc(w1), to_acc(b1))
    if _is_none(w2):  # single FC (Effective SE): the gate takes hidden, no activation
        logits = hidden
    else:
        act = _activation_symbolic(g, hidden, activation, double)
        logits = _linear(g, act, to_acc(w2), to_acc(b2))
    if gate == "sigmoid":
        scale = g.op("Sigmoid", logits)
    else:
        scale = _hardsigmoid_symbolic(g, logits, double)
    # [N, C] -> [N, C, 1, 1]: Reshape keeps N (0) and infers C (-1), whatever the batch.
    out = g.op("Mul", xa, g.op("Reshape", scale,
                               g.op("Constant", value_t=torch.tensor([0, -1, 1, 1]))))
    if not _is_none(residual):
        out = g.op("Add", out, to_acc(residual))
    if post_relu:
        out = g.op("Relu", out)
    if x_type != acc_type:
        out = g.op("Cast", out, to_i=_ONNX_TYPE[x_type])
    return out, pooled, hidden, scale


def _mean_hw(g, x):
    """[N, C, H, W] -> [N, C], the mean over H and W, with ReduceMean (axes an attribute
    before opset 18, an input from 18 on)."""
    if g.opset >= 18:
        axes = g.op("Constant", value_t=torch.tensor([2, 3]))
        return g.op("ReduceMean", x, axes, keepdims_i=0)
    return g.op("ReduceMean", x, axes_i=[2, 3], keepdims_i=0)


def _const(g, value, double):
    return g.op("Constant", value_t=torch.tensor(
        value, dtype=torch.float64 if double else torch.float32))


def _hardsigmoid_symbolic(g, z, double):
    """F.hardsigmoid(z). In float64 (z + 3).clamp(0, 6) / 6, exact as the reference computes
    it, with Min / Max / Div: ONNX Runtime's CPU HardSigmoid has no double kernel."""
    if not double:  # clamp(z / 6 + 1 / 2, 0, 1)
        return g.op("HardSigmoid", z, alpha_f=1.0 / 6.0, beta_f=0.5)
    shifted = g.op("Add", z, _const(g, 3.0, double))
    clamped = g.op("Min", g.op("Max", shifted, _const(g, 0.0, double)), _const(g, 6.0, double))
    return g.op("Div", clamped, _const(g, 6.0, double))


def _activation_symbolic(g, h, activation, double):
    """act(h) in ONNX ops of opset 11 (no Gelu or HardSwish there); ``double``: h is float64
    (else float32)."""
    def const(value):
        return _const(g, value, double)

    if activation == "relu":
        return g.op("Relu", h)
    if activation == "silu":
        return g.op("Mul", h, g.op("Sigmoid", h))
    if activation == "gelu":  # h / 2 * (1 + erf(h / sqrt(2)))
        erf = g.op("Erf", g.op("Mul", h, const(math.sqrt(0.5))))
        return g.op("Mul", g.op("Mul", h, const(0.5)), g.op("Add", const(1.0), erf))
    if activation == "gelu_tanh":  # h / 2 * (1 + tanh(sqrt(2 / pi) (h + 0.044715 h^3)))
        cube = g.op("Mul", g.op("Mul", h, h), h)
        inner = g.op("Mul", g.op("Add", h, g.op("Mul", cube, const(0.044715))),
                     const(math.sqrt(2.0 / math.pi)))
        return g.op("Mul", g.op("Mul", h, const(0.5)), g.op("Add", const(1.0), g.op("Tanh", inner)))
    if activation == "hardswish":  # h * hardsigmoid(h)
        return g.op("Mul", h, _hardsigmoid_symbolic(g, h, double))
    if activation == "leaky_relu":
        return g.op("LeakyRelu", h, alpha_f=LEAKY_RELU_SLOPE)
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def _legacy_symbolic():
    from torch.onnx import symbolic_helper
    return symbolic_helper.parse_args("v", "v", "v", "v", "v", "v", "s", "s", "b")(
        _se_forward_symbolic)


_registered = []


def register():
    """Teach both ONNX exporters the SE op (idempotent; done when ``senet_kernels`` is
    imported, so users never call it)."""
    if _registered:
        return
    import torch.onnx
    from torch._decomp import register_decomposition

    # The TorchScript exporter is deprecated: a torch without it gets the decomposition only.
    legacy = getattr(torch.onnx, "register_custom_op_symbolic", None)
    symbolic = _legacy_symbolic() if legacy is not None else None
    for backend in KERNEL_BACKENDS:
        op = backend_ops(backend).forward
        register_decomposition(op)(se_forward_decomposition)
        if legacy is not None:
            legacy(op.name(), symbolic, LEGACY_MIN_OPSET)
    _registered.append(True)
