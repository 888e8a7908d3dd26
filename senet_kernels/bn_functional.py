"""``bn_squeeze_excite``: BatchNorm absorbed into the SE op, as a function, validated and
dispatched to a backend."""

import os
from dataclasses import dataclass

from .backends import (FUSED_OPS, _below_autograd, backend_status, check_backend_name,
                       resolve_backend)
from .bn_ops import bn_eager_function, define_bn_backend_ops, ext_bn_ops, update_running_stats_op
from .bn_reference import bn_squeeze_excite_reference, uses_batch_stats
from .functional import _eager, _needs_grad
from .interpreter import interpreting
from .validation import check_bn_squeeze_excite_args

#: The backends that run the fused BatchNorm + SE op: those with kernels for it
#: (backends.FUSED_OPS; the CUDA extension has none), and the PyTorch reference.
BN_BACKENDS = tuple(name for name, ops in FUSED_OPS.items() if "bn_squeeze_excite" in ops) + (
    "reference",)

#: Whether ``backend="auto"`` (and so ``convert_se_modules``' BatchNorm absorption) takes the
#: Triton kernels for CUDA tensors. They are checked here through the Triton interpreter and
#: compiled ahead of time for sm_80 / sm_90, but have not run on a GPU yet: until a GPU run of
#: benchmarks/gpu_check.sh passes their tests, CUDA tensors keep the unfused path (BatchNorm,
#: then the fused SE op) unless ``backend="triton"`` asks for them, or the environment sets
#: SENET_KERNELS_TRITON_BN=1 (how the GPU check measures converted models with them).
TRITON_BN_BY_DEFAULT = os.environ.get("SENET_KERNELS_TRITON_BN", "0") == "1"


@dataclass(frozen=True)
class _BnKernels:
    """How one kernel backend runs the op: its custom ops (torch.compile, dispatch modes,
    torch.func), its kernels called directly (``forward``, the eager fast path) and the
    autograd.Function over them with the ops' formula (``function``)."""
    forward_op: object
    forward: object
    function: type


# The C++ kernels called past the ops' Python autograd, as backends.py does for the SE op.
_ext_forward = _below_autograd(ext_bn_ops.forward)
_ext = _BnKernels(ext_bn_ops.forward, _ext_forward,
                  bn_eager_function(_ext_forward, _below_autograd(ext_bn_ops.backward)))

# The Triton kernels (and triton itself) are imported on the first call, not here. The ops
# allocate their scratch per call; the eager fast path reuses the plans' (triton/se_op.py).
_bn_op = None


def _triton_bn_op():
    global _bn_op
    if _bn_op is None:
        from .triton import bn_op
        _bn_op = bn_op
    return _bn_op


def _triton_forward(*args):
    return _triton_bn_op().bn_se_forward(*args)


def _triton_backward(*args):
    return _triton_bn_op().bn_se_backward(*args)


def _triton_eager_forward(*args):
    return _triton_bn_op().bn_se_forward(*args, reuse_scratch=True)


def _triton_eager_backward(*args):
    return _triton_bn_op().bn_se_backward(*args, reuse_scratch=True)


triton_bn_ops = define_bn_backend_ops("triton", _triton_forward, _triton_backward)
_triton = _BnKernels(triton_bn_ops.forward, _triton_eager_forward,
                     bn_eager_function(_triton_eager_forward, _triton_eager_backward))
_KERNELS = {"cpu": _ext, "triton": _triton}


def bn_fused_kernels_for(y):
    """Whether ``backend="auto"`` runs fused BatchNorm + SE kernels for the tensor ``y``: a
    CPU tensor with the C++ extension built, or a CUDA tensor with Triton available once
    ``TRITON_BN_BY_DEFAULT`` is set. Elsewhere auto takes the slow PyTorch reference, so
    callers with a faster unfused path (a BatchNorm, then the fused SE op) take that path."""
    if y.device.type == "cpu":
        return backend_status("cpu").available
    return y.is_cuda and TRITON_BN_BY_DEFAULT and backend_status("triton").available


def bn_fused_backend(se_backend, y):
    """The backend that runs the fused BatchNorm + SE op for a block whose SE op is set to
    ``se_backend``, or None where the BatchNorm should run as a module, then the SE op: "auto"
    where ``bn_fused_kernels_for(y)``; "cpu" for CPU tensors with the extension built;
    "triton" under the Triton interpreter or, for CUDA tensors, with ``TRITON_BN_BY_DEFAULT``
    (a forced "cuda" or "reference" SE never: those backends have no fused kernels)."""
    if se_backend == "auto":
        return "auto" if bn_fused_kernels_for(y) else None
    if se_backend == "cpu":
        return "cpu" if y.device.type == "cpu" and backend_status("cpu").available else None
    if se_backend == "triton" and backend_status("triton").available:
        return "triton" if interpreting() or (y.is_cuda and TRITON_BN_BY_DEFAULT) else None
    return None


def _resolve_bn_backend(backend, y):
    check_backend_name(backend)
    if backend == "auto":
        if not bn_fused_kernels_for(y):
            return "reference"
        return "cpu" if y.device.type == "cpu" else "triton"
    if backend not in BN_BACKENDS:
        raise NotImplementedError(f"bn_squeeze_excite has no {backend!r} kernels yet; "
                                  f"use one of {BN_BACKENDS} or 'auto'")
    return resolve_backend(backend, y)


def bn_squeeze_excite(y, bn_weight, bn_bias, running_mean, running_var, w1, b1, w2, b2,
                      residual=None, *, training, momentum=0.1, eps=1e-5,
                      num_batches_tracked=None, activation="relu", gate="sigmoid",
                      post_relu=False, backend="auto"):
    """BatchNorm absorbed into the SE op: ``relu?(se(batch_norm(y)) + residual?)``.

    The block of SE-ResNet's bn3 + SE + residual + ReLU in one op: the SE squeeze is taken
    on the BatchNorm's output, which is never materialized (docs/design.md, "BatchNorm
    absorbed into the SE op").

    Args:
        y: [N, C, H, W] (N >= 1), float16/bfloat16/float32/float64, NCHW or channels_last.
        bn_weight, bn_bias: [C] or None (``affine=False``).
        running_mean, running_var: [C], or both None (``track_running_stats=False``).
            Updated in place in training mode, exactly as ``nn.BatchNorm2d`` does.
        w1, b1, w2, b2, residual, activation, gate, post_relu: as ``squeeze_excite``.
        training: batch statistics (and the running-statistics update); in eval mode the
            running statistics normalize y (the batch's when there are none).
        momentum: the running statistics' update factor, or None for the cumulative average
            (1 / num_batches_tracked). eps: added to the variance.
        num_batches_tracked: an int64 scalar tensor incremented in training, or None.
        backend: "auto", "cpu" (the C++ kernels, CPU tensors), "triton" (CUDA tensors, or
            CPU tensors under TRITON_INTERPRET=1) or "reference" (PyTorch ops, any device).
            "auto" takes "cpu" for CPU tensors when the extension is built, else the
            reference (see ``TRITON_BN_BY_DEFAULT`` for CUDA tensors). The BN vectors and
            running statistics may be y's dtype or float32.

    Returns:
        A tensor like y (dtype, shape, layout), differentiable w.r.t. y, the BatchNorm and SE
        parameters and the residual. Statistics and reductions in float32 (float64 for float64).

    Raises:
        TypeError / ValueError: as ``squeeze_excite`` for the SE arguments (naming y); a BN
            vector not [C], of another dtype than y's or float32, or on another device; only
            one of running_mean / running_var; N == 0; batch statistics with one value per
            channel or eps <= 0 (as ``F.batch_norm``); a non-bool training; a momentum or eps
            that is not a number; num_batches_tracked not an int64 scalar tensor.
        NotImplementedError: backend "cuda" (the CUDA extension has no kernels for this op).
        Nothing is changed when it raises.

    In eager mode the kernels are called directly (through a ``torch.autograd.Function``
    when a gradient is needed); under torch.compile, export, a dispatch mode or a torch.func
    transform the call goes through the custom ops (``torch.ops.senet_kernels.
    bn_se_forward_ext`` / ``bn_se_forward_triton``, then ``bn_update_running_stats``). Both
    run the same kernels.
    """
    w1, w2 = check_bn_squeeze_excite_args(y, bn_weight, bn_bias, running_mean, running_var,
                                          w1, b1, w2, b2, residual, training, momentum, eps,
                                          num_batches_tracked, activation, gate, post_relu)
    name = _resolve_bn_backend(backend, y)
    if name == "reference":
        return bn_squeeze_excite_reference(
            y, bn_weight, bn_bias, running_mean, running_var, w1, b1, w2, b2, residual,
            training=training, num_batches_tracked=num_batches_tracked, momentum=momentum,
            eps=eps, activation=activation, gate=gate, post_relu=post_relu)
    batch_stats = uses_batch_stats(training, running_mean)
    update = training and running_mean is not None
    # With batch statistics the forward does not read the running statistics: not passed.
    args = (y, bn_weight, bn_bias, None if batch_stats else running_mean,
            None if batch_stats else running_var, w1, b1, w2, b2, residual, batch_stats,
            float(eps), activation, gate, post_relu)
    kernels = _KERNELS[name]
    if not _eager(y):  # compiling, exporting, a dispatch mode or a torch.func transform
        forward = kernels.forward_op
    elif _needs_grad(y, bn_weight, bn_bias, w1, b1, w2, b2, residual):
        forward = kernels.function.apply
    else:
        forward = kernels.forward
    out, _, _, _, _, mean, _, var = forward(*args)
    if update:
        n, _, h, w = y.shape
        update_running_stats_op(running_mean, running_var, num_batches_tracked, mean, var,
                                n * h * w, None if momentum is None else float(momentum))
    return out
