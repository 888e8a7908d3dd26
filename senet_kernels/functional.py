"""``squeeze_excite``: the SE op as a function, validated and dispatched to a backend."""

from .backends import backend_ops, resolve_backend
from .reference import squeeze_excite_reference
from .validation import check_squeeze_excite_args


def squeeze_excite(x, w1, b1, w2, b2, residual=None, *, activation="relu", gate="sigmoid",
                   post_relu=False, backend="auto"):
    """Fused Squeeze-and-Excitation: ``relu?(x * gate(w2 act(w1 mean_hw(x) + b1) + b2) + residual?)``.

    Args:
        x: [N, C, H, W], float16/bfloat16/float32/float64, NCHW or channels_last (other
            strides are copied once into the nearer dense layout).
        w1: [Cr, C] (or a 1x1 conv weight [Cr, C, 1, 1]); b1: [Cr] or None.
        w2: [C, Cr] (or [C, Cr, 1, 1]); b2: [C] or None. Parameters share one dtype: x's or float32.
        residual: like x, added after the rescale (SE-ResNet), or None.
        activation: "relu" or "silu". gate: "sigmoid" or "hardsigmoid".
        post_relu: apply ReLU last (SE-ResNet's tail).
        backend: "auto", "triton", "cuda", "cpu" or "reference" (see ``available_backends()``).

    Returns:
        A tensor like x (dtype, shape, layout). Differentiable w.r.t. x, the parameters and
        the residual. Reductions and the gate are computed in float32 (float64 for float64).
    """
    w1, w2 = check_squeeze_excite_args(x, w1, b1, w2, b2, residual, activation, gate)
    name = resolve_backend(backend, x)
    if name == "reference":
        return squeeze_excite_reference(x, w1, b1, w2, b2, residual, activation=activation,
                                        gate=gate, post_relu=post_relu)
    out, _pooled, _hidden, _scale = backend_ops(name).forward(
        x, w1, b1, w2, b2, residual, activation, gate, post_relu)
    return out
