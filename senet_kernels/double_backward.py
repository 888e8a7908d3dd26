"""Gradients that can themselves be differentiated (``create_graph=True``): double backward.

The backward kernels return plain tensors, outside autograd. When a backward runs with
``create_graph=True`` (gradient penalties, Hessian-vector products, ``torch.func`` nests), the
op's autograd formula calls ``differentiable_input_grads`` instead: the same gradients as the
kernels, written in differentiable PyTorch ops from the excitation of the reference
(``reference.excite``), so autograd can go through them once more (and again).

It recomputes the excitation (a few [N, C] vectors) and takes one pass over the activation;
it is not the fast path, and it is never taken when no graph of the gradient is asked for.
"""

import torch

from .dtypes import compute_dtype
from .reference import excite


def differentiable_input_grads(grad_out, x, w1, b1, w2, b2, out, has_residual, activation,
                               gate):
    """(grad_x, grad_w1, grad_b1, grad_w2, grad_b2, grad_residual), differentiable.

    ``out`` is the forward's output when it had the ReLU tail, else None. The ReLU tail
    passes the gradient where ``out`` is not <= 0 (as ``torch.relu``'s backward does: NaN
    passes), and that mask is piecewise constant, so neither the residual nor the mask needs
    a graph. Entries are None for inputs that do not require a gradient (and the residual
    when there is none).

    The gradients are taken with ``torch.func.vjp``, not ``torch.autograd.grad``: under a
    torch.func transform (``jacrev`` runs the backward under ``vmap``) a nested
    ``torch.autograd.grad`` does not see the recomputed graph; a nested transform does, and
    outside transforms the two agree.
    """
    acc = compute_dtype(x.dtype)
    with torch.enable_grad():
        gy = grad_out.to(acc)
        if out is not None:
            gy = torch.where(out <= 0, torch.zeros_like(gy), gy)
        inputs = (x, w1, b1, w2, b2)
        wanted = [i for i, t in enumerate(inputs) if t is not None and t.requires_grad]
        result = [None] * len(inputs)
        if wanted:  # each of them is used by the excitation, so each gets a gradient
            def rescaled(*wanted_inputs):
                args = list(inputs)
                for i, t in zip(wanted, wanted_inputs):
                    args[i] = t
                xa = args[0].to(acc)
                scale = excite(xa.mean(dim=(2, 3)), *args[1:], activation, gate)
                return xa * scale[:, :, None, None]

            _, vjp_fn = torch.func.vjp(rescaled, *(inputs[i] for i in wanted))
            for i, g in zip(wanted, vjp_fn(gy)):
                result[i] = g
        grad_residual = None
        if has_residual:
            grad_residual = (gy if out is not None else grad_out).to(grad_out.dtype)
    return (*result, grad_residual)
