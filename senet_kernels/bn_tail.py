"""The BatchNorm in front of a fused SE block, absorbed into the fused op where it can be.

SE-ResNet blocks end ``bn3 -> SE -> + shortcut -> ReLU`` (basic blocks: ``bn2``). The fused
``bn_squeeze_excite`` op computes the BatchNorm inside the SE op, never writing its output
(docs/design.md, "BatchNorm absorbed into the SE op"). ``bn_se_tail`` takes that op where it
has kernels for the input and the BatchNorm is a plain ``nn.BatchNorm2d`` (``absorbable_bn_
reason``); everywhere else it runs the BatchNorm module, then the SE block, as before.
"""

import torch
from torch import nn

from .backends import FUSED_OPS
from .bn_functional import bn_fused_backend, bn_squeeze_excite
from .func_transforms import transforms_active
from .recognize import altered_instance


def absorbable_bn_reason(bn):
    """Why ``bn`` cannot be computed by the fused op in its module's place, or None.

    Absorbed: exactly ``nn.BatchNorm2d`` (its forward is known: not SyncBatchNorm, timm's
    FrozenBatchNorm2d or any subclass) with ``affine=True`` and ``track_running_stats=True``,
    its forward neither replaced nor hooked (the fused op would not call it). Cheap: it is
    checked again on every forward, so that later changes (a hook added, the flags set) fall
    back to the module.
    """
    if type(bn) is not nn.BatchNorm2d:
        return f"{type(bn).__name__} is not nn.BatchNorm2d"
    if not bn.affine:
        return "affine=False"
    if not bn.track_running_stats or bn.running_mean is None or bn.running_var is None:
        return "track_running_stats=False"
    return altered_instance(bn)


def se_takes_bn(se):
    """Whether the fused SE block ``se`` can take a BatchNorm in front of it: not one that
    keeps a norm layer of its own (rexnet's SE, computed with its own layers in training),
    nor a single-FC one (the fused BatchNorm + SE op computes the two-FC SE only)."""
    return se._norm_path is None and not se.single_fc


def fused_op_reason(bn, se, y):
    """Why ``bn_se_tail`` runs ``bn`` as a module before the SE op for the input ``y``, or
    None where the fused op computes it. ``y``: the branch, or any tensor on its device (a
    report asks with an empty one). The checks of ``bn_se_tail``, cheapest first."""
    if se.backend != "auto" and "bn_squeeze_excite" not in FUSED_OPS[se.backend]:
        return f"SE backend {se.backend!r} has no fused BatchNorm + SE kernels"
    if bn_fused_backend(se.backend, y) is None:
        return (f"no fused BatchNorm + SE kernels for {y.device.type} tensors with SE backend "
                f"{se.backend!r}" + (" (the C++ extension is not built)"
                                     if se.backend != "triton" and y.device.type == "cpu" else ""))
    if not se_takes_bn(se):
        return "the SE block has a norm layer of its own"
    altered = altered_instance(se)
    if altered is not None:
        return f"the SE block: {altered}"
    reason = absorbable_bn_reason(bn)
    if reason is not None:
        return reason
    if transforms_active():
        return "a torch.func transform is active"
    if torch.onnx.is_in_onnx_export():
        return "an ONNX export is running"
    return None


def bn_se_tail(bn, se, y, shortcut):
    """``se(bn(y), shortcut)``, with ``bn`` computed inside the fused op where that runs.

    Args:
        bn: the BatchNorm module in front of the SE (any module: one that is not absorbable
            is simply called).
        se: a ``FusedSEBlock``; y: the branch before ``bn``; shortcut: the residual or None.

    The fused op runs (``fused_op_reason`` is None) where it has kernels for the SE block's
    backend (``bn_functional.bn_fused_backend``: CPU tensors with the C++ extension built and
    an SE backend "auto" or "cpu"; the Triton kernels where they are enabled), for an
    absorbable ``bn`` and an SE block without its own norm layer, except under a torch.func
    transform or during an ONNX export (the fused BatchNorm + SE op supports neither yet;
    the SE op does). It computes what the module
    does, running statistics and ``num_batches_tracked`` included (``bn.training`` decides
    batch statistics; ``momentum=None`` is the cumulative average). Errors are those of
    ``bn_squeeze_excite`` / the modules.
    """
    if fused_op_reason(bn, se, y) is None:
        fc1, fc2 = se.fc_layers()
        return bn_squeeze_excite(
            y, bn.weight, bn.bias, bn.running_mean, bn.running_var, fc1.weight, fc1.bias,
            fc2.weight, fc2.bias, shortcut, training=bn.training, momentum=bn.momentum,
            eps=bn.eps, num_batches_tracked=bn.num_batches_tracked, activation=se.activation,
            gate=se.gate, post_relu=se.post_relu, backend=bn_fused_backend(se.backend, y))
    return se(bn(y), shortcut)
