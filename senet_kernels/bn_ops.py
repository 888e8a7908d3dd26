"""The fused BatchNorm + SE custom ops: the one place that defines their schemas, fake
kernels and autograd (docs/design.md, "BatchNorm absorbed into the SE op").

As for the SE op (ops.py), each kernel backend gets its own functional pair, stamped out of
the one definition here by ``define_bn_backend_ops``; a backend only adds its kernels (the C++
extension registers ``bn_se_forward_ext`` / ``bn_se_backward_ext`` for CPU tensors with
``TORCH_LIBRARY_IMPL``). The running statistics are updated by a separate op with mutable
arguments, shared by every backend: ``register_autograd`` refuses ops that mutate, and under
torch.compile a separate mutating op is functionalized and written back after the graph.

Forward op::

    bn_se_forward_<b>(y, bn_weight?, bn_bias?, running_mean?, running_var?, w1, b1?, w2, b2?,
                      residual?, batch_stats, eps, activation, gate, post_relu)
        -> (out, sample_mean, pooled, hidden, scale, mean, rstd, var)

``out`` = relu?(scale * BN(y) + residual?), y's dtype, dense in y's layout (layout.py).
``batch_stats``: normalize with the batch's statistics (else with running_mean /
running_var, which the op reads and never writes). The rest is in the compute dtype:
``sample_mean`` [N, C] = mean_hw y; ``pooled`` [N, C] = mean_hw BN(y) (the squeeze);
``hidden`` [N, Cr] fc1's output before the activation; ``scale`` [N, C] the gate; ``mean``,
``rstd`` [C] the statistics that normalized y (fresh tensors in either mode), ``var`` [C] the
batch's biased variance (the running one with ``batch_stats`` false). Only ``out`` is
differentiable.

Backward op::

    bn_se_backward_<b>(grad_out, y, out?, bn_weight?, bn_bias?, w1, w2, sample_mean, pooled,
                       hidden, scale, mean, rstd, batch_stats, has_residual, activation, gate)
        -> (grad_y, grad_bn_weight, grad_bn_bias, grad_w1, grad_b1, grad_w2, grad_b2,
            grad_residual)

``out`` is given exactly when the forward had ``post_relu``. ``grad_bn_weight`` /
``grad_bn_bias`` [C] have bn_weight's / bn_bias's dtype (the compute dtype when absent; the
autograd formula drops them then), weight and bias gradients the weights' dtype;
``grad_residual`` is the gradient past the ReLU tail when ``post_relu`` and
``has_residual``, else an empty tensor.

Running statistics::

    bn_update_running_stats(running_mean!, running_var!, num_batches_tracked!?, batch_mean,
                            batch_var, count, momentum?) -> ()

``bn_reference.update_running_stats_``, as ``nn.BatchNorm2d`` updates its buffers in
training; one implementation in ATen ops for every device.

A backward asked for a graph of its own (``create_graph=True``: double backward, gradient
penalties) computes the same gradients in differentiable PyTorch ops instead of the backward
kernel (``_differentiable_grads``; slower), as double_backward.py does for the SE op.
"""

from dataclasses import dataclass

import torch

from .bn_reference import update_running_stats_
from .dtypes import compute_dtype
from .reference import _excite_vectors
from .ops import NAMESPACE, _format_of, _lib, define_op_pair

BN_FORWARD_SCHEMA = (
    "(Tensor y, Tensor? bn_weight, Tensor? bn_bias, Tensor? running_mean, Tensor? running_var, "
    "Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, Tensor? residual, bool batch_stats, "
    "float eps, str activation, str gate, bool post_relu) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"
)
BN_BACKWARD_SCHEMA = (
    "(Tensor grad_out, Tensor y, Tensor? out, Tensor? bn_weight, Tensor? bn_bias, Tensor w1, "
    "Tensor w2, Tensor sample_mean, Tensor pooled, Tensor hidden, Tensor scale, Tensor mean, "
    "Tensor rstd, bool batch_stats, bool has_residual, str activation, str gate) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"
)
UPDATE_NAME = "bn_update_running_stats"
UPDATE_SCHEMA = (
    "(Tensor(a!) running_mean, Tensor(b!) running_var, Tensor(c!)? num_batches_tracked, "
    "Tensor batch_mean, Tensor batch_var, int count, float? momentum) -> ()"
)


@dataclass(frozen=True)
class BnBackendOps:
    """The forward and backward op of one backend (``torch._ops.OpOverload`` each)."""
    forward: object
    backward: object


def allocate_bn_forward_outputs(y, w1):
    """Empty (out, sample_mean, pooled, hidden, scale, mean, rstd, var), as every kernel
    allocates them."""
    n, c = y.shape[0], y.shape[1]
    acc = compute_dtype(y.dtype)
    out = torch.empty_like(y, memory_format=_format_of(y))
    per_sample = [y.new_empty((n, c), dtype=acc) for _ in range(2)]
    hidden = y.new_empty((n, w1.shape[0]), dtype=acc)
    scale = y.new_empty((n, c), dtype=acc)
    per_channel = [y.new_empty((c,), dtype=acc) for _ in range(3)]
    return (out, *per_sample, hidden, scale, *per_channel)


def allocate_bn_backward_outputs(y, bn_weight, bn_bias, w1, w2, post_relu, has_residual):
    """Empty (grad_y, grad_bn_weight, grad_bn_bias, grad_w1, grad_b1, grad_w2, grad_b2,
    grad_residual)."""
    fmt = _format_of(y)
    c = y.shape[1]
    acc = compute_dtype(y.dtype)
    return (torch.empty_like(y, memory_format=fmt),
            y.new_empty((c,), dtype=acc if bn_weight is None else bn_weight.dtype),
            y.new_empty((c,), dtype=acc if bn_bias is None else bn_bias.dtype),
            torch.empty_like(w1, memory_format=torch.contiguous_format),
            w1.new_empty((w1.shape[0],)),
            torch.empty_like(w2, memory_format=torch.contiguous_format),
            w2.new_empty((w2.shape[0],)),
            torch.empty_like(y, memory_format=fmt) if post_relu and has_residual
            else y.new_empty((0,)))


def _fake_forward(y, bn_weight, bn_bias, running_mean, running_var, w1, b1, w2, b2, residual,
                  batch_stats, eps, activation, gate, post_relu):
    return allocate_bn_forward_outputs(y, w1)


def _fake_backward(grad_out, y, out, bn_weight, bn_bias, w1, w2, sample_mean, pooled, hidden,
                   scale, mean, rstd, batch_stats, has_residual, activation, gate):
    return allocate_bn_backward_outputs(y, bn_weight, bn_bias, w1, w2, out is not None,
                                        has_residual)


def _make_autograd(backward_op):
    def setup_context(ctx, inputs, output):
        (y, bn_weight, bn_bias, _rm, _rv, w1, b1, w2, b2, residual, batch_stats, _eps,
         activation, gate, post_relu) = inputs
        out, sample_mean, pooled, hidden, scale, mean, rstd, _var = output
        ctx.save_for_backward(y, out if post_relu else None, bn_weight, bn_bias, w1, w2,
                              sample_mean, pooled, hidden, scale, mean, rstd, b1, b2)
        ctx.has = (bn_weight is not None, bn_bias is not None, b1 is not None, b2 is not None)
        ctx.eps = _eps
        ctx.has_residual, ctx.post_relu, ctx.batch_stats = residual is not None, post_relu, batch_stats
        ctx.activation, ctx.gate = activation, gate
        ctx.mark_non_differentiable(*output[1:])

    def backward(ctx, grad_out, *_grad_vectors):
        y, out, bn_weight, bn_bias, w1, w2, *saved, b1, b2 = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: a backward that is differentiable
            mean, rstd = saved[-2:]
            (grad_y, grad_gamma, grad_beta, grad_w1, grad_b1, grad_w2, grad_b2,
             grad_res) = _differentiable_grads(ctx, grad_out, y, out, bn_weight, bn_bias, w1, b1,
                                               w2, b2, mean, rstd)
        else:
            (grad_y, grad_gamma, grad_beta, grad_w1, grad_b1, grad_w2, grad_b2,
             grad_res) = backward_op(grad_out, y, out, bn_weight, bn_bias, w1, w2, *saved,
                                     ctx.batch_stats, ctx.has_residual, ctx.activation, ctx.gate)
        if not ctx.has_residual:
            grad_res = None
        elif not ctx.post_relu:
            grad_res = grad_out  # d(x s + residual) / d residual is the identity
        has_gamma, has_beta, has_b1, has_b2 = ctx.has
        return (grad_y, grad_gamma if has_gamma else None, grad_beta if has_beta else None,
                None, None, grad_w1, grad_b1 if has_b1 else None, grad_w2,
                grad_b2 if has_b2 else None, grad_res, None, None, None, None, None)

    return backward, setup_context


def _differentiable_grads(ctx, grad_out, y, out, bn_weight, bn_bias, w1, b1, w2, b2, mean,
                          rstd):
    """The backward's eight gradients (as the backward op returns them) in differentiable
    PyTorch ops: the vector-Jacobian product of the forward recomputed from y with the
    reference's formulas (batch statistics from y, or the saved running ones as constants),
    the ReLU tail's mask taken from the saved output."""
    acc = compute_dtype(y.dtype)
    c = y.shape[1]
    present = {name: t for name, t in (("bn_weight", bn_weight), ("bn_bias", bn_bias),
                                       ("b1", b1), ("b2", b2)) if t is not None}

    def per_channel(v):
        return v.to(acc).reshape(1, c, 1, 1)

    def pre_tail(y, w1, w2, **optional):
        ya = y.to(acc)
        if ctx.batch_stats:
            batch_mean = ya.mean((0, 2, 3))
            batch_rstd = torch.rsqrt(ya.var((0, 2, 3), unbiased=False) + ctx.eps)
        else:
            batch_mean, batch_rstd = mean, rstd
        z = (ya - per_channel(batch_mean)) * per_channel(batch_rstd)
        if "bn_weight" in optional:
            z = z * per_channel(optional["bn_weight"])
        if "bn_bias" in optional:
            z = z + per_channel(optional["bn_bias"])
        _, s = _excite_vectors(z.mean((2, 3)), w1, optional.get("b1"), w2, optional.get("b2"),
                               ctx.activation, ctx.gate)
        return z * s[:, :, None, None]

    grad = grad_out.to(acc)
    if out is not None:  # relu's backward: 0 where out <= 0 (NaN passes, as in PyTorch)
        grad = torch.where(out <= 0, torch.zeros_like(grad), grad)
    names = list(present)
    _, vjp = torch.func.vjp(lambda y, w1, w2, *opt: pre_tail(y, w1, w2, **dict(zip(names, opt))),
                            y, w1, w2, *present.values())
    grad_y, grad_w1, grad_w2, *grad_opt = vjp(grad)
    grads = dict(zip(names, grad_opt))
    grad_res = grad.to(y.dtype) if ctx.has_residual else None
    return (grad_y, grads.get("bn_weight"), grads.get("bn_bias"), grad_w1, grads.get("b1"),
            grad_w2, grads.get("b2"), grad_res)


def bn_eager_function(forward_impl, backward_impl):
    """A ``torch.autograd.Function`` running a backend's kernels directly (no dispatcher
    round trip through the ops' Python autograd), with the ops' autograd formula.

    ``apply`` takes the forward op's arguments and returns its eight outputs, all but
    ``out`` non-differentiable. Only for eager mode: torch.compile, dispatch modes and
    torch.func transforms must see the op (``bn_functional`` chooses).
    """
    backward, setup_context = _make_autograd(backward_impl)

    class BnSqueezeExcite(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *inputs):
            output = forward_impl(*inputs)
            setup_context(ctx, inputs, output)
            return output

        @staticmethod
        def backward(ctx, *grads):
            return backward(ctx, *grads)

    return BnSqueezeExcite


def define_bn_backend_ops(backend, forward_impl=None, backward_impl=None,
                          dispatch_keys=("CPU", "CUDA")):
    """Define ``bn_se_forward_<backend>`` / ``bn_se_backward_<backend>`` with fake kernels
    and autograd; ``forward_impl`` / ``backward_impl`` (Python callables taking the schema's
    arguments) are registered for ``dispatch_keys``, None when C++ registers the kernels."""
    return BnBackendOps(*define_op_pair(
        f"bn_se_forward_{backend}", f"bn_se_backward_{backend}", BN_FORWARD_SCHEMA,
        BN_BACKWARD_SCHEMA, _fake_forward, _fake_backward, _make_autograd, forward_impl,
        backward_impl, dispatch_keys))


def _update_running_stats(running_mean, running_var, num_batches_tracked, batch_mean, batch_var,
                          count, momentum):
    update_running_stats_(running_mean, running_var, num_batches_tracked, batch_mean, batch_var,
                          count, momentum)


def _fake_update(running_mean, running_var, num_batches_tracked, batch_mean, batch_var, count,
                 momentum):
    return None


_lib.define(UPDATE_NAME + UPDATE_SCHEMA)
_lib.impl(UPDATE_NAME, _update_running_stats, "CompositeExplicitAutograd")
torch.library.register_fake(f"{NAMESPACE}::{UPDATE_NAME}", _fake_update, lib=_lib)
#: The running-statistics update op (``torch._ops.OpOverload``).
update_running_stats_op = getattr(getattr(torch.ops, NAMESPACE), UPDATE_NAME).default

# The C++ extension registers its CPU kernels for these (csrc/cpu/bn_se_cpu.cpp); CUDA
# tensors have no kernel yet.
ext_bn_ops = define_bn_backend_ops("ext")
