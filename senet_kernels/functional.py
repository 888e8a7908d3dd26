"""``squeeze_excite``: the SE op as a function, validated and dispatched to a backend."""

import torch
from torch import nn

from .backends import backend_kernels, resolve_backend
from .func_transforms import transforms_active
from .reference import squeeze_excite_reference
from .validation import check_squeeze_excite_args

_PLAIN_TENSORS = (torch.Tensor, nn.Parameter)


def _eager(x):
    """True when nothing needs to see the op itself: not compiling or exporting, not traced by
    torch.jit.trace (the TorchScript ONNX exporter; the tracer records dispatcher calls only),
    no torch function or dispatch mode active, x a plain tensor (no subclass with its own
    dispatch, no torch.func transform's wrapper)."""
    return (type(x) in _PLAIN_TENSORS and not torch.compiler.is_compiling()
            and not torch._C._is_tracing()
            and not torch._C._is_torch_function_mode_enabled()
            and torch._C._len_torch_dispatch_stack() == 0
            and not torch._C._functorch.is_functorch_wrapped_tensor(x))


def _needs_grad(*tensors):
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def squeeze_excite(x, w1, b1, w2, b2, residual=None, *, activation="relu", gate="sigmoid",
                   post_relu=False, backend="auto"):
    """Fused Squeeze-and-Excitation: ``relu?(x * gate(w2 act(w1 mean_hw(x) + b1) + b2) + residual?)``.

    Args:
        x: [N, C, H, W], float16/bfloat16/float32/float64, NCHW or channels_last (other
            strides are copied once into the nearer dense layout).
        w1: [Cr, C] (or a 1x1 conv weight [Cr, C, 1, 1]); b1: [Cr] or None.
        w2: [C, Cr] (or [C, Cr, 1, 1]); b2: [C] or None. Parameters share one dtype: x's or float32.
            w2 None is the single-FC form (Effective SE, timm's EffectiveSEModule / EseModule):
            ``relu?(x * gate(w1 mean_hw(x) + b1) + residual?)`` with w1 [C, C] and b2 None;
            ``activation`` is then not applied (the name is still checked).
        residual: like x, added after the rescale (SE-ResNet), or None.
        activation: "relu", "silu", "gelu" (nn.GELU()), "gelu_tanh"
            (nn.GELU(approximate="tanh")), "hardswish" or "leaky_relu" (nn.LeakyReLU(), slope
            0.01). gate: "sigmoid" or "hardsigmoid".
        post_relu: apply ReLU last (SE-ResNet's tail).
        backend: "auto", "triton", "cuda", "cpu" or "reference" (see ``available_backends()``).
            "auto" takes Triton for CUDA tensors (then the CUDA extension), the C++ kernels
            for CPU tensors, and the reference where neither is available.

    Returns:
        A tensor like x (dtype, shape, layout). Differentiable w.r.t. x, the parameters and
        the residual. Reductions and the gate are computed in float32 (float64 for float64).

    Raises:
        TypeError: an argument that is not a tensor (or None where allowed), a dtype not
            listed above, parameters whose dtypes differ from each other or are neither x's
            nor float32, a residual of another dtype than x, a non-str activation / gate or
            a non-bool post_relu. The message names the argument.
        ValueError: a wrong shape (x not 4-D or with C, H or W of 0; weights or biases not
            matching C and Cr; w1 not [C, C] or b2 given when w2 is None; a residual not shaped like x), tensors on different devices,
            an unknown activation, gate or backend name, or a backend that is unavailable
            here (the message gives ``available_backends()``'s reason).

    In eager mode the backend's kernels are called directly (through a
    ``torch.autograd.Function`` when a gradient is needed); under torch.compile, export or a
    dispatch mode the call goes through the backend's custom op
    (``torch.ops.senet_kernels.se_forward_<backend>``). Both run the same kernels. Under
    torch.func transforms (``grad``, ``vjp``, ``jacrev``, ``jvp``, ``jacfwd``, ``hessian``,
    ``vmap``, per-sample gradients) an autograd.Function made for them runs the forward
    kernels and differentiates in PyTorch ops (func_transforms.py).
    """
    w1, w2 = check_squeeze_excite_args(x, w1, b1, w2, b2, residual, activation, gate,
                                       post_relu)
    name = resolve_backend(backend, x)
    if name == "reference":
        return squeeze_excite_reference(x, w1, b1, w2, b2, residual, activation=activation,
                                        gate=gate, post_relu=post_relu)
    kernels = backend_kernels(name)
    args = (x, w1, b1, w2, b2, residual, activation, gate, post_relu)
    if transforms_active() and not torch.compiler.is_compiling():
        return kernels.transformable.apply(*args)
    if not _eager(x):
        return kernels.ops.forward(*args)[0]
    if _needs_grad(x, w1, b1, w2, b2, residual):
        return kernels.function.apply(*args)
    return kernels.inference(*args)
