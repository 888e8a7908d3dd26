"""The SE custom ops: the one place that defines their schema, fake kernels and autograd.

Each backend gets its own pair of ops, ``senet_kernels::se_forward_<backend>`` and
``senet_kernels::se_backward_<backend>``, because one dispatch key (CPU, CUDA) holds one kernel
and two backends (Triton under the interpreter, the C++ extension) both serve CPU tensors.
``define_backend_ops`` stamps the pair out of the single definition below; a backend only adds
its kernels, from Python (``impls=``) or from C++ (``TORCH_LIBRARY_IMPL`` on the same names).

Forward op::

    se_forward_<b>(x, w1, b1?, w2?, b2?, residual?, activation, gate, post_relu)
        -> (out, pooled, hidden, scale)

``out`` is the block's output (x's dtype, dense in x's layout, see ``layout.py``); ``pooled``
[N, C] = mean over H, W; ``hidden`` [N, Cr] = fc1 output before the activation; ``scale``
[N, C] = the gate. ``w2`` None is the single-FC form (Effective SE): w1 is [C, C], b2 is
None, ``hidden`` [N, C] is the gate's input (W1 pooled + b1) and the activation is not
applied (its name is still checked). The three vectors are in the compute dtype (float32, float64 for float64
inputs) and are what the backward needs besides x (and ``out`` for the ReLU tail): x * s is
never saved.

Backward op::

    se_backward_<b>(grad_out, x, out?, w1, w2?, pooled, hidden, scale, has_residual, activation, gate)
        -> (grad_x, grad_w1, grad_b1, grad_w2, grad_b2, grad_residual)

``w2`` None (single FC): ``grad_w2`` and ``grad_b2`` are empty tensors [0] of w1's dtype.

``out`` is given exactly when the forward had ``post_relu``. ``grad_residual`` is the masked
gradient when ``post_relu`` and ``has_residual``; otherwise it equals ``grad_out`` (or is not
needed) and the op returns an empty tensor instead. Bias gradients are always computed; the
autograd formula drops them when the bias was None. Weight gradients have the weights' dtype.
"""

from dataclasses import dataclass

import torch

from .double_backward import differentiable_input_grads
from .dtypes import compute_dtype
from .layout import is_channels_last

NAMESPACE = "senet_kernels"

FORWARD_SCHEMA = (
    "(Tensor x, Tensor w1, Tensor? b1, Tensor? w2, Tensor? b2, Tensor? residual, "
    "str activation, str gate, bool post_relu) -> (Tensor, Tensor, Tensor, Tensor)"
)
BACKWARD_SCHEMA = (
    "(Tensor grad_out, Tensor x, Tensor? out, Tensor w1, Tensor? w2, Tensor pooled, "
    "Tensor hidden, Tensor scale, bool has_residual, str activation, str gate) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"
)

_lib = torch.library.Library(NAMESPACE, "FRAGMENT")


@dataclass(frozen=True)
class BackendOps:
    """The forward and backward op of one backend (``torch._ops.OpOverload`` each)."""
    forward: object
    backward: object


# Output allocation shared by the fake kernels and every real kernel, so that their
# metadata (shape, dtype, strides) agree by construction.

def allocate_forward_outputs(x, w1, channels_last=None):
    """Empty (out, pooled, hidden, scale) for a forward on x (any layout) with fc1 weight w1.

    ``channels_last``: the layout rule's answer for x when the caller already has it."""
    n, c = x.shape[0], x.shape[1]
    acc = compute_dtype(x.dtype)
    out = torch.empty_like(x, memory_format=_format_of(x, channels_last))
    pooled = x.new_empty((n, c), dtype=acc)
    hidden = x.new_empty((n, w1.shape[0]), dtype=acc)
    scale = x.new_empty((n, c), dtype=acc)
    return out, pooled, hidden, scale


def allocate_backward_outputs(x, w1, w2, post_relu, has_residual, channels_last=None):
    """Empty (grad_x, grad_w1, grad_b1, grad_w2, grad_b2, grad_residual); grad_w2 and
    grad_b2 are empty [0] tensors when w2 is None (single FC)."""
    fmt = _format_of(x, channels_last)
    grad_x = torch.empty_like(x, memory_format=fmt)
    grad_w1 = torch.empty_like(w1, memory_format=torch.contiguous_format)
    grad_b1 = w1.new_empty((w1.shape[0],))
    if w2 is None:
        grad_w2, grad_b2 = w1.new_empty((0,)), w1.new_empty((0,))
    else:
        grad_w2 = torch.empty_like(w2, memory_format=torch.contiguous_format)
        grad_b2 = w2.new_empty((w2.shape[0],))
    if post_relu and has_residual:
        grad_residual = torch.empty_like(x, memory_format=fmt)
    else:
        grad_residual = x.new_empty((0,))
    return grad_x, grad_w1, grad_b1, grad_w2, grad_b2, grad_residual


def _format_of(x, channels_last=None):
    if channels_last is None:
        channels_last = is_channels_last(x)
    return torch.channels_last if channels_last else torch.contiguous_format


def _fake_forward(x, w1, b1, w2, b2, residual, activation, gate, post_relu):
    return allocate_forward_outputs(x, w1)


def _fake_backward(grad_out, x, out, w1, w2, pooled, hidden, scale, has_residual, activation, gate):
    return allocate_backward_outputs(x, w1, w2, out is not None, has_residual)


# The autograd formula, shared by the ops' registered autograd (the dispatcher path, traced by
# torch.compile) and the eager autograd.Function of ``eager_function`` (the fast path of
# functional.squeeze_excite): both save the same tensors and call the same backward kernel.
# A backward asked for a graph of its own (create_graph=True, double backward) computes the
# same gradients in differentiable ops instead (double_backward.py); b1 and b2 are saved for it.

def _save_for_backward(ctx, inputs, output):
    x, w1, b1, w2, b2, residual, activation, gate, post_relu = inputs
    out, pooled, hidden, scale = output
    ctx.save_for_backward(x, w1, w2, pooled, hidden, scale, out if post_relu else None, b1, b2)
    ctx.has_bias = (b1 is not None, b2 is not None)
    ctx.has_residual = residual is not None
    ctx.post_relu = post_relu
    ctx.activation, ctx.gate = activation, gate


def _input_grads(ctx, grad_out, backward_fn):
    """Gradients of (x, w1, b1, w2, b2, residual, activation, gate, post_relu)."""
    x, w1, w2, pooled, hidden, scale, out, b1, b2 = ctx.saved_tensors
    if torch.is_grad_enabled():  # the engine runs backward in grad mode iff create_graph=True
        grads = differentiable_input_grads(grad_out, x, w1, b1, w2, b2, out, ctx.has_residual,
                                           ctx.activation, ctx.gate)
        return (*grads, None, None, None)
    grad_x, grad_w1, grad_b1, grad_w2, grad_b2, grad_res = backward_fn(
        grad_out, x, out, w1, w2, pooled, hidden, scale, ctx.has_residual,
        ctx.activation, ctx.gate)
    if ctx.has_residual and not ctx.post_relu:
        grad_res = grad_out  # d(x*s + residual)/d residual is the identity
    elif not ctx.has_residual:
        grad_res = None
    has_b1, has_b2 = ctx.has_bias
    if w2 is None:  # single FC: the op returned empty placeholders
        grad_w2 = None
    return (grad_x, grad_w1, grad_b1 if has_b1 else None, grad_w2,
            grad_b2 if has_b2 else None, grad_res, None, None, None)


def _make_autograd(backward_op):
    def setup_context(ctx, inputs, output):
        _save_for_backward(ctx, inputs, output)
        ctx.mark_non_differentiable(*output[1:])

    def backward(ctx, grad_out, _grad_pooled, _grad_hidden, _grad_scale):
        return _input_grads(ctx, grad_out, backward_op)

    return backward, setup_context


def eager_function(forward_impl, backward_impl):
    """A ``torch.autograd.Function`` running a backend's kernels directly (no dispatcher).

    ``apply(x, w1, b1, w2, b2, residual, activation, gate, post_relu)`` returns ``out`` with
    the same autograd formula as the custom op. Only for eager mode: torch.compile and
    dispatch modes must see the op (``functional.squeeze_excite`` chooses).
    """
    class SqueezeExcite(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *inputs):
            output = forward_impl(*inputs)
            _save_for_backward(ctx, inputs, output)
            return output[0]

        @staticmethod
        def backward(ctx, grad_out):
            return _input_grads(ctx, grad_out, backward_impl)

    return SqueezeExcite


def define_backend_ops(backend, forward_impl=None, backward_impl=None, dispatch_keys=("CPU", "CUDA")):
    """Define ``se_forward_<backend>`` / ``se_backward_<backend>`` with fake kernels and autograd.

    ``forward_impl`` / ``backward_impl`` (Python callables taking the schema's arguments) are
    registered for ``dispatch_keys``; leave them None when C++ registers the kernels.
    """
    return BackendOps(*define_op_pair(
        f"se_forward_{backend}", f"se_backward_{backend}", FORWARD_SCHEMA, BACKWARD_SCHEMA,
        _fake_forward, _fake_backward, _make_autograd, forward_impl, backward_impl,
        dispatch_keys))


def define_op_pair(fwd_name, bwd_name, forward_schema, backward_schema, fake_forward,
                   fake_backward, make_autograd, forward_impl, backward_impl, dispatch_keys):
    """Define a forward op and its backward op in this package's namespace: schemas, fake
    kernels, the Python kernels for ``dispatch_keys`` (where given), and the forward's
    autograd from ``make_autograd(backward_op) -> (backward, setup_context)``. Returns the two
    ``OpOverload``s. Shared by the SE ops and the BatchNorm + SE ops (bn_ops.py)."""
    _lib.define(fwd_name + forward_schema)
    _lib.define(bwd_name + backward_schema)
    torch.library.register_fake(f"{NAMESPACE}::{fwd_name}", fake_forward, lib=_lib)
    torch.library.register_fake(f"{NAMESPACE}::{bwd_name}", fake_backward, lib=_lib)
    for key in dispatch_keys:
        if forward_impl is not None:
            _lib.impl(fwd_name, forward_impl, key)
        if backward_impl is not None:
            _lib.impl(bwd_name, backward_impl, key)
    namespace = getattr(torch.ops, NAMESPACE)
    forward = getattr(namespace, fwd_name).default
    backward_op = getattr(namespace, bwd_name).default
    backward, setup_context = make_autograd(backward_op)
    torch.library.register_autograd(f"{NAMESPACE}::{fwd_name}", backward,
                                    setup_context=setup_context, lib=_lib)
    return forward, backward_op
