"""BatchNorm absorbed into the SE op: its contract and the executable spec of its kernels.

The block is ``relu?(se(batch_norm(y)) + residual?)`` where ``y`` is the conv output in front
of the SE op (SE-ResNet's bn3). docs/design.md, "BatchNorm absorbed into the SE op", derives
everything here.

- ``bn_squeeze_excite_reference``: the eager composition (``F.batch_norm``, the SE math of
  ``reference.py``, residual, ReLU), differentiated by autograd. The contract.
- ``bn_squeeze_excite_two_pass`` and ``bn_squeeze_excite_two_pass_backward``: the algorithm the
  kernels follow, in plain PyTorch ops on [N, C, H*W] views, with an explicit backward (no
  autograd). Forward: one pass over y for the per-(n, c) means and M2 (merged over n with
  Chan's formula, in sample order), one pass writing ``out``; the normalized tensor is never
  formed. Backward: one pass for the per-(n, c) sums of g and g * (y - mean), one pass
  writing ``grad_y``.
- ``update_running_stats_``: the running-statistics update of ``nn.BatchNorm2d``.

Everything accumulates in the compute dtype (``dtypes.compute_dtype``: float32, float64 for
float64 inputs); ``out`` and ``grad_y`` are rounded once to y's dtype at the end.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .dtypes import compute_dtype
from .layout import is_channels_last, to_layout
from .reference import _excite_vectors, activate, forward_with_vectors
from .spec import GATES, check_activation, check_gate, check_post_relu

#: Width of the H*W tiles of the statistics pass: each tile's mean and M2 are exact sums over
#: values held at once (in a kernel, registers), and tiles are merged with Chan's formula.
HW_TILE = 1024


# ---------------------------------------------------------------------------------------------
# Argument checks and the running-statistics update (shared by the reference and the spec)

def check_bn_args(y, bn_weight, bn_bias, running_mean, running_var, use_batch_stats, eps):
    """Checks of the BatchNorm arguments, before anything is computed or mutated.

    Raises:
        ValueError: y not 4-D; a BN vector not of shape [C]; only one of running_mean /
            running_var given; batch statistics (training, or no running statistics) with a
            single value per channel (N * H * W == 1), as ``F.batch_norm`` raises; eps <= 0
            with batch statistics or eps < 0 otherwise (``F.batch_norm``'s checks).
    """
    if y.dim() != 4:
        raise ValueError(f"y must have shape [N, C, H, W], got {tuple(y.shape)}")
    c = y.shape[1]
    for name, v in (("bn_weight", bn_weight), ("bn_bias", bn_bias),
                    ("running_mean", running_mean), ("running_var", running_var)):
        if v is not None and tuple(v.shape) != (c,):
            raise ValueError(f"{name} must have shape [{c}] or be None, got {tuple(v.shape)}")
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must both be given or both be None")
    if use_batch_stats and y.shape[0] * y.shape[2] * y.shape[3] == 1:
        raise ValueError("Expected more than 1 value per channel when training, "
                         f"got input size {y.size()}")
    if use_batch_stats and eps <= 0.0:
        raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    if eps < 0.0:
        raise ValueError(f"batch_norm eps must be non-negative, but got {eps}")


def uses_batch_stats(training, running_mean):
    """Whether the batch's statistics normalize y: in training, and in eval mode without
    running statistics (``track_running_stats=False``), as ``nn.BatchNorm2d`` decides."""
    return training or running_mean is None


def running_stats_factor(num_batches_tracked, momentum):
    """The update's weight of the batch, as ``nn.BatchNorm2d.forward`` computes it in training:
    ``momentum``, or with ``momentum=None`` the cumulative average 1 / num_batches_tracked
    (read after its increment); 0.0 when momentum is None and there is no counter."""
    if momentum is None:
        return 0.0 if num_batches_tracked is None else 1.0 / float(num_batches_tracked)
    return momentum


def update_running_stats_(running_mean, running_var, num_batches_tracked, batch_mean,
                          batch_var, count, momentum):
    """``nn.BatchNorm2d``'s update of its buffers after a training-mode batch, in place.

    ``batch_mean`` / ``batch_var`` [C]: the batch's mean and biased variance over ``count``
    (= N * H * W > 1) values per channel. ``num_batches_tracked`` (an int64 scalar tensor or
    None) is incremented first; then, with f = ``running_stats_factor``,
    running_mean = (1 - f) running_mean + f batch_mean and
    running_var = (1 - f) running_var + f batch_var * count / (count - 1) (unbiased),
    computed in the compute dtype of the running statistics and stored in their dtype.
    Call it only in training mode with running statistics (``track_running_stats``).

    Raises:
        ValueError: count <= 1 (the unbiased variance is undefined).
    """
    if count <= 1:
        raise ValueError(f"the running variance needs more than 1 value per channel, got {count}")
    if num_batches_tracked is not None:
        num_batches_tracked.add_(1)
    f = running_stats_factor(num_batches_tracked, momentum)
    acc = compute_dtype(running_mean.dtype)
    unbiased = batch_var.to(acc) * (count / (count - 1))
    running_mean.copy_(running_mean.to(acc) * (1 - f) + batch_mean.to(acc) * f)
    running_var.copy_(running_var.to(acc) * (1 - f) + unbiased * f)


# ---------------------------------------------------------------------------------------------
# The contract: the eager composition

def bn_squeeze_excite_reference(y, bn_weight, bn_bias, running_mean, running_var, w1, b1, w2,
                                b2, residual=None, *, training, num_batches_tracked=None,
                                momentum=0.1, eps=1e-5, activation="relu", gate="sigmoid",
                                post_relu=False):
    """Eager ``relu?(se(batch_norm(y)) + residual?)``, as ``nn.BatchNorm2d`` + the SE reference.

    Shapes: y [N, C, H, W]; bn_weight, bn_bias [C] or None (``affine=False``); running_mean,
    running_var [C] or both None (``track_running_stats=False``); num_batches_tracked an int64
    scalar tensor or None; w1 [Cr, C], b1 [Cr] or None, w2 [C, Cr], b2 [C] or None; residual
    like y or None. ``training`` selects batch statistics (and the in-place update of the
    running statistics, ``momentum=None`` for the cumulative average); in eval mode the
    running statistics normalize y (the batch's when there are none).

    Computed in the compute dtype, so half-precision y is not rounded after the BN; returns a
    tensor of y's dtype, shape and memory format. Differentiable by autograd.

    Raises:
        ValueError: see ``check_bn_args``; an unknown activation or gate.
        TypeError: a non-str activation / gate or a non-bool post_relu.
    """
    check_activation(activation)
    check_gate(gate)
    check_post_relu(post_relu)
    use_batch = uses_batch_stats(training, running_mean)
    check_bn_args(y, bn_weight, bn_bias, running_mean, running_var, use_batch, eps)
    acc = compute_dtype(y.dtype)
    update = training and running_mean is not None
    factor = 0.0
    if update:
        if num_batches_tracked is not None:
            num_batches_tracked.add_(1)
        factor = running_stats_factor(num_batches_tracked, momentum)
    # F.batch_norm updates (or reads) the running statistics in place; it needs them in the
    # compute dtype, so other dtypes go through a copy written back after.
    stats = None if running_mean is None else (running_mean.to(acc), running_var.to(acc))
    x = F.batch_norm(y.to(acc), None if stats is None else stats[0],
                     None if stats is None else stats[1],
                     None if bn_weight is None else bn_weight.to(acc),
                     None if bn_bias is None else bn_bias.to(acc), use_batch, factor, eps)
    if update and stats[0] is not running_mean:
        running_mean.copy_(stats[0])
        running_var.copy_(stats[1])
    out = forward_with_vectors(x, w1, b1, w2, b2, None if residual is None else residual.to(acc),
                               activation, gate, post_relu)[0]
    return to_layout(out.to(y.dtype), is_channels_last(y))


# ---------------------------------------------------------------------------------------------
# The spec: two passes forward, two passes backward

def chan_merge(count_a, mean_a, m2_a, count_b, mean_b, m2_b):
    """Chan et al.'s merge of two groups' (count, mean, M2 = sum of squared deviations).

    ``count_*`` are Python numbers, the means and M2s tensors of one shape. Returns the union's
    (count, mean, M2). No E[y^2] - E[y]^2: the groups' deviations are never cancelled against
    their squared means, so data with a large mean keeps its variance. Where a mean is
    infinite, delta is too and mean_a + delta * f is Inf - Inf = NaN: there the weighted
    average ``mean_a (1 - f) + mean_b f`` keeps the infinite mean (NaN for +Inf with -Inf), as
    the sum / count of ``F.batch_norm`` does.
    """
    count = count_a + count_b
    delta = mean_b - mean_a
    f = count_b / count
    mean = torch.where(torch.isfinite(delta), mean_a + delta * f, mean_a * (1 - f) + mean_b * f)
    m2 = m2_a + m2_b + delta * delta * (count_a * count_b / count)
    return count, mean, m2


def sample_statistics(y3, hw_tile=HW_TILE):
    """Per-(n, c) (mean, M2) of y3 [N, C, P] in one read, in y3's dtype: each tile of
    ``hw_tile`` values along P gets an exact mean and M2, and the tiles are merged in order
    with ``chan_merge``."""
    count, mean, m2 = 0, None, None
    for start in range(0, y3.shape[2], hw_tile):
        tile = y3[:, :, start:start + hw_tile]
        tile_mean = tile.mean(dim=2)
        tile_m2 = (tile - tile_mean[:, :, None]).square().sum(dim=2)
        if mean is None:
            count, mean, m2 = tile.shape[2], tile_mean, tile_m2
        else:
            count, mean, m2 = chan_merge(count, mean, m2, tile.shape[2], tile_mean, tile_m2)
    return mean, m2


def merge_over_samples(sample_mean, sample_m2, count):
    """Channel (mean [C], M2 [C]) from per-(n, c) (mean, M2) [N, C] over ``count`` values
    each: ``chan_merge`` in sample order 0, 1, ..., N - 1, whatever computed the rows."""
    total, mean, m2 = count, sample_mean[0], sample_m2[0]
    for n in range(1, sample_mean.shape[0]):
        total, mean, m2 = chan_merge(total, mean, m2, count, sample_mean[n], sample_m2[n])
    return mean, m2


def _vector(v, acc, c, default, like):
    return torch.full((c,), default, dtype=acc, device=like.device) if v is None else v.to(acc)


class BnSqueezeExciteSaved(NamedTuple):
    """What the forward keeps for the backward besides y (and out for the ReLU tail).

    sample_mean [N, C]: mean_hw(y); pooled [N, C]: mean_hw of the normalized y (the squeeze);
    hidden [N, Cr]: fc1's output before the activation; scale [N, C]: the gate; mean, rstd
    [C]: the statistics that normalized y (the batch's, or the running ones as they were);
    batch_stats: which of the two. All but the flag in the compute dtype.
    """
    sample_mean: torch.Tensor
    pooled: torch.Tensor
    hidden: torch.Tensor
    scale: torch.Tensor
    mean: torch.Tensor
    rstd: torch.Tensor
    batch_stats: bool


def bn_squeeze_excite_two_pass(y, bn_weight, bn_bias, running_mean, running_var, w1, b1, w2,
                               b2, residual=None, *, training, num_batches_tracked=None,
                               momentum=0.1, eps=1e-5, activation="relu", gate="sigmoid",
                               post_relu=False):
    """The fused forward, two passes over y. Arguments as ``bn_squeeze_excite_reference``.

    Pass 1 reads y once: per-(n, c) means (the squeeze) and, with batch statistics, per-(n, c)
    M2 merged over n into the channel statistics. The excitation runs on
    pooled = a (sample_mean - mean) + beta, a = gamma rstd, the affine image of the means.
    Pass 2 reads y (and the residual) and writes
    out = relu?(A (y - mean) + B + residual?), A = scale a, B = scale beta per (n, c).
    Running statistics are updated as ``update_running_stats_`` says, only in training.

    Returns ``(out, BnSqueezeExciteSaved)``; out has y's dtype, shape and memory format.
    Raises as ``bn_squeeze_excite_reference``.
    """
    check_activation(activation)
    check_gate(gate)
    check_post_relu(post_relu)
    use_batch = uses_batch_stats(training, running_mean)
    check_bn_args(y, bn_weight, bn_bias, running_mean, running_var, use_batch, eps)
    n, c, h, w = y.shape
    p = h * w
    acc = compute_dtype(y.dtype)
    y4 = y.to(acc)
    y3 = y4.reshape(n, c, p)

    # Pass 1: one read of y.
    if use_batch:
        sample_mean, sample_m2 = sample_statistics(y3)
        mean, m2 = merge_over_samples(sample_mean, sample_m2, p)
        var = m2 / (n * p)  # biased: what normalizes the batch
        if training and running_mean is not None:
            update_running_stats_(running_mean, running_var, num_batches_tracked, mean, var,
                                  n * p, momentum)
    else:  # the running statistics are known before the pass: only the squeeze's sums
        sample_mean = y3.mean(dim=2)
        mean, var = running_mean.to(acc), running_var.to(acc)
    rstd = torch.rsqrt(var + eps)
    gamma = _vector(bn_weight, acc, c, 1.0, y)
    beta = _vector(bn_bias, acc, c, 0.0, y)
    a = gamma * rstd
    pooled = a * (sample_mean - mean) + beta
    hidden, scale = _excite_vectors(pooled, w1, b1, w2, b2, activation, gate)

    # Pass 2: read y (and the residual), write out. (y - mean) is formed, not a y + b with
    # b = beta - mean a: that would cancel two large terms where |mean| >> std.
    coef = (scale * a)[:, :, None, None]
    shift = (scale * beta)[:, :, None, None]
    out = coef * (y4 - mean[None, :, None, None]) + shift
    if residual is not None:
        out = out + residual.to(acc)
    if post_relu:
        out = F.relu(out)
    out = to_layout(out.to(y.dtype), is_channels_last(y))
    return out, BnSqueezeExciteSaved(sample_mean, pooled, hidden, scale, mean, rstd, use_batch)


def activation_backward(grad, hidden, activation):
    """grad * act'(hidden), by PyTorch's own backward of ``reference.activate`` on the small
    [N, Cr] matrix: one definition of every activation's derivative (spec.ACTIVATIONS), the
    one the kernels are held to."""
    with torch.enable_grad():
        h = hidden.detach().requires_grad_()
        (result,) = torch.autograd.grad(activate(h, activation), h, grad)
    return result


def gate_derivative(scale, gate):
    """gate'(z) from s = gate(z) alone: sigmoid' = s (1 - s); hardsigmoid' = 1/6 where
    0 < s < 1, else 0 (docs/design.md, "The math")."""
    if gate == "sigmoid":
        return scale * (1 - scale)
    if gate == "hardsigmoid":
        inside = (scale > 0) & (scale < 1)
        return torch.where(inside, torch.full_like(scale, 1 / 6), torch.zeros_like(scale))
    raise ValueError(f"gate must be one of {GATES}, got {gate!r}")


def bn_squeeze_excite_two_pass_backward(grad_out, y, out, saved, bn_weight, bn_bias, w1, b1,
                                        w2, b2, *, has_residual, activation, gate):
    """The fused backward, two passes over y, no autograd.

    ``out``: the forward's output when it had the ReLU tail, else None. ``saved``: the
    forward's ``BnSqueezeExciteSaved``. Pass 1 reads grad_out (masked by out > 0 with the
    ReLU tail: gy), y (and out) for two per-(n, c) sums, G = sum_hw gy and
    Q = sum_hw gy (y - mean), and writes grad_residual (= gy). Every other per-(n, c) and
    per-channel quantity follows from G, Q and the saved vectors. Pass 2 reads gy and y and
    writes grad_y = K1 gy + K2 (y - mean) + K3 (K1, K3 per (n, c), K2 per channel).

    Returns ``(grad_y, grad_bn_weight, grad_bn_bias, grad_w1, grad_b1, grad_w2, grad_b2,
    grad_residual)``, None for inputs that are None (and grad_residual without a residual);
    each in its input's dtype.
    """
    n, c, h, w = y.shape
    p = h * w
    acc = compute_dtype(y.dtype)
    y4 = y.to(acc)
    g = grad_out.to(acc)
    if out is not None:  # relu's backward: 0 where out <= 0 (NaN passes, as in PyTorch)
        g = torch.where(out <= 0, torch.zeros_like(g), g)
    mean, rstd, scale = saved.mean, saved.rstd, saved.scale
    gamma = _vector(bn_weight, acc, c, 1.0, y)
    beta = _vector(bn_bias, acc, c, 0.0, y)
    a = gamma * rstd
    centered = y4 - mean[None, :, None, None]

    # Pass 1: two per-(n, c) sums.
    g_sum = g.sum(dim=(2, 3))                 # G [N, C]
    gc_sum = (g * centered).sum(dim=(2, 3))   # Q [N, C]

    # The SE backward on the [N, C] vectors: x = a (y - mean) + beta is the SE op's input.
    gs = a * gc_sum + beta * g_sum            # sum_hw gy x
    gz = gs * gate_derivative(scale, gate)
    gh = activation_backward(gz @ w2.to(acc), saved.hidden, activation)
    gp = (gh @ w1.to(acc)) / p                # d loss / d x gains gp[n, c] at every pixel
    grad_w2 = gz.t() @ activate(saved.hidden, activation)
    grad_w1 = gh.t() @ saved.pooled

    # BN's per-channel sums of dx = gy s + gp and of dx * xhat, xhat = (y - mean) rstd.
    dx_sum = scale * g_sum + p * gp                                               # [N, C]
    dx_xhat_sum = rstd * (scale * gc_sum + p * gp * (saved.sample_mean - mean))   # [N, C]
    grad_beta = dx_sum.sum(dim=0)
    grad_gamma = dx_xhat_sum.sum(dim=0)

    # Pass 2: grad_y = a (dx - mean(dx) - xhat mean(dx xhat)) with batch statistics, a dx
    # with running ones; the means are over the count = N * H * W values of a channel.
    k1 = (a * scale)[:, :, None, None]
    if saved.batch_stats:
        count = n * p
        k2 = (-a * rstd * grad_gamma / count)[None, :, None, None]
        k3 = (a * (gp - grad_beta / count))[:, :, None, None]
        grad_y = k1 * g + k2 * centered + k3
    else:
        grad_y = k1 * g + (a * gp)[:, :, None, None]
    grad_y = to_layout(grad_y.to(y.dtype), is_channels_last(y))

    grad_residual = None
    if has_residual:
        grad_residual = to_layout(g.to(grad_out.dtype), is_channels_last(y)) if out is not None \
            else grad_out
    return (grad_y,
            None if bn_weight is None else grad_gamma.to(bn_weight.dtype),
            None if bn_bias is None else grad_beta.to(bn_bias.dtype),
            grad_w1.to(w1.dtype), None if b1 is None else gh.sum(dim=0).to(b1.dtype),
            grad_w2.to(w2.dtype), None if b2 is None else gz.sum(dim=0).to(b2.dtype),
            grad_residual)
