"""The SE op under ``torch.func`` transforms: ``grad``, ``vjp``, ``jacrev``, ``vmap`` and nests.

Neither the eager ``torch.autograd.Function`` (ops.eager_function, old-style ``forward(ctx)``)
nor the custom op's registered autograd (torch.library builds an old-style Function too) can
run under a functorch transform: PyTorch refuses Functions without ``setup_context``, and the
kernels cannot read a transform's wrapped tensors anyway. While a transform is active,
``functional.squeeze_excite`` calls the Function made here instead:

* forward: the backend's kernels, on the plain tensors the transform unwraps to;
* backward: the differentiable gradients of double_backward.py (PyTorch ops, which every
  transform handles; ``torch.func.grad`` always asks for a graph of the gradient anyway, so
  the backward kernels would not be used there either);
* jvp (forward-mode AD: ``jvp``, ``jacfwd``, ``hessian``): the tangent of the reference's
  forward, taken with ``torch.func.jvp``;
* vmap: the vmapped dimension folded into N when only x and the residual carry it (the SE op
  treats the N samples independently, so this is one kernel call), else one call per index of
  the vmapped dimension (per-sample parameters, e.g. ``vmap`` over a stack of weights).
  Per-sample gradients (``vmap(grad(loss))`` over samples) take the first path forward and
  vectorised PyTorch ops backward.
"""

import torch

from .double_backward import differentiable_input_grads
from .reference import forward_with_vectors


def transforms_active():
    """True while a torch.func transform (grad, vjp, jacrev, vmap, jvp, ...) is running."""
    return torch._C._are_functorch_transforms_active()


def transformable_function(inference_impl):
    """A ``torch.autograd.Function`` over a backend's forward kernels that torch.func accepts.

    ``inference_impl(x, w1, b1, w2, b2, residual, activation, gate, post_relu)`` returns the
    block's output alone. ``apply`` takes the same arguments, with w1 [Cr, C] and w2 [C, Cr]
    (as validated by ``validation.check_squeeze_excite_args``), and returns ``out``.
    """
    class SqueezeExciteTransformable(torch.autograd.Function):
        @staticmethod
        def forward(x, w1, b1, w2, b2, residual, activation, gate, post_relu):
            return inference_impl(x, w1, b1, w2, b2, residual, activation, gate, post_relu)

        @staticmethod
        def setup_context(ctx, inputs, output):
            x, w1, b1, w2, b2, residual, activation, gate, post_relu = inputs
            saved = (x, w1, b1, w2, b2, residual, output if post_relu else None)
            ctx.save_for_backward(*saved)
            ctx.save_for_forward(*saved)
            ctx.activation, ctx.gate, ctx.post_relu = activation, gate, post_relu

        @staticmethod
        def backward(ctx, grad_out):
            x, w1, b1, w2, b2, residual, out = ctx.saved_tensors
            grads = differentiable_input_grads(grad_out, x, w1, b1, w2, b2, out,
                                               residual is not None, ctx.activation, ctx.gate)
            return (*grads, None, None, None)

        @staticmethod
        def jvp(ctx, *tangents):
            return output_tangent(ctx.saved_tensors[:6], tangents[:6], ctx.activation,
                                  ctx.gate, ctx.post_relu)

        @staticmethod
        def vmap(info, in_dims, x, w1, b1, w2, b2, residual, activation, gate, post_relu):
            x_dim, w1_dim, b1_dim, w2_dim, b2_dim, residual_dim = in_dims[:6]
            size = info.batch_size
            apply = SqueezeExciteTransformable.apply
            if w1_dim is None and b1_dim is None and w2_dim is None and b2_dim is None:
                out = apply(_fold_into_n(x, x_dim, size), w1, b1, w2, b2,
                            _fold_into_n(residual, residual_dim, size),
                            activation, gate, post_relu)
                return out.unflatten(0, (size, -1)), 0
            tensors = (x, w1, b1, w2, b2, residual)
            outs = [apply(*(_select(t, d, i) for t, d in zip(tensors, in_dims[:6])),
                          activation, gate, post_relu)
                    for i in range(size)]
            return torch.stack(outs), 0

    return SqueezeExciteTransformable


def _fold_into_n(t, dim, size):
    """t [N, ...] with a vmapped dimension ``dim`` (None: shared by all) -> [size * N, ...]."""
    if t is None:
        return None
    if dim is None:
        return t.expand(size, *t.shape).flatten(0, 1)
    return t.movedim(dim, 0).flatten(0, 1)


def _select(t, dim, index):
    if t is None or dim is None:
        return t
    return t.select(dim, index)


def output_tangent(inputs, tangents, activation, gate, post_relu):
    """The tangent of the op's output at ``inputs`` (x, w1, b1, w2, b2, residual) along
    ``tangents`` (None where an input has none), from the reference's forward."""
    moving = [i for i, (t, d) in enumerate(zip(inputs, tangents))
              if t is not None and d is not None]

    def out(*moving_inputs):
        args = list(inputs)
        for i, t in zip(moving, moving_inputs):
            args[i] = t
        return forward_with_vectors(*args, activation, gate, post_relu)[0]

    return torch.func.jvp(out, tuple(inputs[i] for i in moving),
                          tuple(tangents[i] for i in moving))[1]
