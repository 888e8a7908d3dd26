"""The Triton backend of the fused BatchNorm + SE op: plans and launches (bn_ops.py defines
the op; docs/design.md, "BatchNorm absorbed into the SE op", the math and the launch plan).

Every shape takes one plan: the statistics need every sample before any excitation can run
(a grid-wide dependency), so the per-sample path's "last program of a sample runs its FC
layers" does not apply, and the excitation runs as the batched path's GEMMs (batched.py) on
the [N, C] vectors. Launches:

- forward, 4: ``bn_stats_fwd`` (per-(n, c) statistics, merged per channel block by its last
  program into mean, rstd, var and the squeeze p), FC1 (c_to_r on p), FC2 + gate (r_to_c),
  ``bn_scale_fwd`` (out). Two passes over y, training and eval alike.
- backward, 6: ``bn_grad_sums_bwd`` (G, Q, gs; grad_residual), through FC2 (c_to_r), through
  FC1 (r_to_c: gp), ``bn_param_grads_bwd`` (grad_gamma, grad_beta and the grad pass's
  coefficients), ``bn_grad_pass_bwd`` (grad_y), the weight gradients (``se_weight_grads``).
  Two passes over (grad_out, out, y).

Scratch buffers, plan caching, the eager fast path's scratch reuse, CUDA-graph capture and
the interpreter's serialization are se_op.py's (its module docstring).
"""

import dataclasses

import torch

from ..bn_ops import allocate_bn_backward_outputs, allocate_bn_forward_outputs
from ..layout import to_layout
from ..spec import ACTIVATION_CODE, GATE_CODE
from . import configs
from .bn_kernels import (bn_grad_pass_bwd, bn_grad_sums_bwd, bn_param_grads_bwd, bn_scale_fwd,
                         bn_stats_fwd)
from .se_op import (_check_batch, _is_dense, _launch_with_counters, _offset16,
                    _on_current_device, _Plan, _remember, _scratch, _serialized_when_interpreting,
                    _Shape, _site, check_device)

#: Values per [samples, channels] tile of the per-channel merges over the batch (registers).
MERGE_TILE_VALUES = 2048
#: Channels per program of ``bn_param_grads_bwd``.
PARAM_GRAD_BLOCK_C = 64

_forward_plans = {}
_backward_plans = {}


def _key(tensors, *flags):
    """Everything a plan depends on: each tensor's shape, strides, dtype, device and 16-byte
    alignment (Triton specializes on it), the flags, and what tests and benchmarks force."""
    meta = tuple(None if t is None else (t.shape, t.stride(), t.dtype, t.device, _offset16(t))
                 for t in tensors)
    return meta + flags + (configs.forced_k_splits, configs.forced_reduce_tile,
                           configs.forced_tuning)


def _merge_block_n(block_c):
    return max(1, MERGE_TILE_VALUES // block_c)


def _vectors_dense(*tensors):
    return all(t is None or t.is_contiguous() for t in tensors)


def _forward_plan(y, bn_weight, bn_bias, w1, b1, w2, b2, residual, batch_stats, eps,
                  activation, gate, post_relu):
    s = _Shape.of(y, w1)
    device = y.device
    flags = dict(act=ACTIVATION_CODE[activation], gate=GATE_CODE[gate])
    tile, per_split, splits, grid = s.reduce_grid()
    stats = _site(bn_stats_fwd, grid,
                  "y_ptr gamma_ptr beta_ptr rmean_ptr rvar_ptr pmean_ptr pm2_ptr counter_ptr "
                  "sample_mean_ptr pooled_ptr mean_ptr rstd_ptr var_ptr coef_ptr",
                  dict(N=s.n, C=s.c, HW=s.hw, HW_PER_SPLIT=per_split, NUM_SPLITS=splits,
                       eps=float(eps), has_gamma=int(bn_weight is not None),
                       has_beta=int(bn_bias is not None)),
                  dict(BATCH_STATS=batch_stats, CHANNELS_LAST=s.channels_last,
                       BLOCK_C=tile.block_c, BLOCK_HW=tile.block_hw,
                       BLOCK_N=_merge_block_n(tile.block_c), ACC=s.acc),
                  device, tile.num_warps)
    # FC1 on p: the batched GEMM reading p as the partial "sums" of one split over one pixel
    fc1 = dataclasses.replace(s, hw=1).c_to_r_site(1, (1, s.c), int(b1 is not None),
                                                   backward=False, device=device, **flags)
    fc2 = s.r_to_c_site((1, s.cr), int(b2 is not None), backward=False, device=device, **flags)
    scale = _site(bn_scale_fwd, s.streaming_grid(),
                  "y_ptr res_ptr scale_ptr coef_ptr mean_ptr beta_ptr out_ptr",
                  dict(C=s.c, HW=s.hw, SAMPLE_NUMEL=s.c * s.hw, has_beta=int(bn_bias is not None)),
                  dict(HAS_RESIDUAL=residual is not None, POST_RELU=post_relu,
                       CHANNELS_LAST=s.channels_last, BLOCK=configs.SCALE_BLOCK), device)
    dense = (_is_dense(y, s.channels_last)
             and (residual is None or _is_dense(residual, s.channels_last))
             and _vectors_dense(bn_weight, bn_bias, w1, b1, w2, b2))
    return _Plan(s, splits, (stats, fc1, fc2, scale), dense)


def _forward_scratch(shape, splits, device):
    """Partial means (sums) and M2 [N, S, C]; an arrival counter per channel block (zeroed;
    the last program leaves it zeroed); the coefficient a [C]; the c_to_r GEMM's K-split
    products and counters (se_op's)."""
    acc, n, c = shape.acc_dtype, shape.n, shape.c
    tile = configs.reduce_tile(shape.channels_last, shape.hw, shape.tuning)
    k_splits = shape.k_split()[1]
    return dict(
        pmean=torch.empty((n, splits, c), dtype=acc, device=device),
        pm2=torch.empty((n, splits, c), dtype=acc, device=device),
        counters=torch.zeros(configs.cdiv(c, tile.block_c), dtype=torch.int32, device=device),
        coef=torch.empty((c,), dtype=acc, device=device),
        **_gemm_scratch(shape, k_splits, device))


def _gemm_scratch(shape, k_splits, device):
    acc = shape.acc_dtype
    if k_splits > 1:
        return dict(k_products=torch.empty((k_splits, shape.n, shape.cr), dtype=acc, device=device),
                    gemm_counters=torch.zeros(shape.gemm_tiles(), dtype=torch.int32, device=device))
    return dict(k_products=torch.empty((1,), dtype=acc, device=device),
                gemm_counters=torch.empty((1,), dtype=torch.int32, device=device))


@_serialized_when_interpreting
def bn_se_forward(y, bn_weight, bn_bias, running_mean, running_var, w1, b1, w2, b2, residual,
                  batch_stats, eps, activation, gate, post_relu, reuse_scratch=False):
    """The forward op (bn_ops.py): (out, sample_mean, pooled, hidden, scale, mean, rstd, var).
    ``reuse_scratch``: the plan's scratch buffers (the eager fast path), as in se_op."""
    check_device(y)
    if not _on_current_device(y.device):
        with torch.cuda.device(y.device):
            return bn_se_forward(y, bn_weight, bn_bias, running_mean, running_var, w1, b1, w2,
                                 b2, residual, batch_stats, eps, activation, gate, post_relu,
                                 reuse_scratch)
    outputs = allocate_bn_forward_outputs(y, w1)
    if y.shape[0] == 0:
        return outputs
    key = _key((y, bn_weight, bn_bias, running_mean, running_var, w1, b1, w2, b2, residual),
               batch_stats, float(eps), activation, gate, post_relu)
    plan = _forward_plans.get(key)
    if plan is None:
        _check_batch(y.shape[0])
        plan = _remember(_forward_plans, key, _forward_plan(
            y, bn_weight, bn_bias, w1, b1, w2, b2, residual, batch_stats, eps, activation, gate,
            post_relu))
    shape, device = plan.shape, y.device
    if not plan.dense:
        y = to_layout(y, shape.channels_last)
        residual = None if residual is None else to_layout(residual, shape.channels_last)
        bn_weight, bn_bias, w1, b1, w2, b2 = (None if t is None else t.contiguous()
                                              for t in (bn_weight, bn_bias, w1, b1, w2, b2))
    running_mean = None if running_mean is None else running_mean.contiguous()
    running_var = None if running_var is None else running_var.contiguous()
    scratch = _scratch(plan, device, lambda: _forward_scratch(shape, plan.splits, device),
                       reuse_scratch)
    out, sample_mean, pooled, hidden, scale, mean, rstd, var = outputs
    # an unused pointer still needs a tensor
    gamma = y if bn_weight is None else bn_weight
    beta = y if bn_bias is None else bn_bias
    rmean = y if running_mean is None else running_mean
    rvar = y if running_var is None else running_var
    stats, fc1, fc2, scale_pass = plan.sites
    _launch_with_counters(plan, stats, device, y, gamma, beta, rmean, rvar, scratch["pmean"],
                          scratch["pm2"], scratch["counters"], sample_mean, pooled, mean, rstd,
                          var, scratch["coef"])
    # c_to_r reads p as its partials and writes it back unchanged as its U vector
    _launch_with_counters(plan, fc1, device, pooled, pooled, w1, w1 if b1 is None else b1, hidden,
                          pooled, scratch["k_products"], scratch["gemm_counters"], hidden)
    fc2(hidden, w2, w2 if b2 is None else b2, scale)
    scale_pass(y, y if residual is None else residual, scale, scratch["coef"], mean, beta, out)
    return outputs


def _backward_plan(grad_out, y, out, bn_weight, bn_bias, w1, w2, batch_stats, has_residual,
                   activation, gate):
    s = _Shape.of(y, w1)
    device = y.device
    post_relu = out is not None
    write_grad_res = post_relu and has_residual
    # gy is stored as grad_residual by the sums pass and read back by the grad pass where
    # grad_residual (y's dtype) holds grad_out's values exactly (se_op does the same)
    grad_res_in_sums = write_grad_res and grad_out.dtype == y.dtype
    flags = dict(act=ACTIVATION_CODE[activation], gate=GATE_CODE[gate])
    has_gamma, has_beta = int(bn_weight is not None), int(bn_bias is not None)
    tile, per_split, splits, grid = s.reduce_grid()
    sums = _site(bn_grad_sums_bwd, grid,
                 "grad_ptr y_ptr out_ptr grad_res_ptr mean_ptr rstd_ptr gamma_ptr beta_ptr "
                 "g_sum_ptr q_sum_ptr gs_ptr",
                 dict(C=s.c, HW=s.hw, HW_PER_SPLIT=per_split, NUM_SPLITS=splits,
                      has_gamma=has_gamma, has_beta=has_beta),
                 dict(POST_RELU=post_relu, STORE_MASKED=grad_res_in_sums,
                      CHANNELS_LAST=s.channels_last, BLOCK_C=tile.block_c,
                      BLOCK_HW=tile.block_hw, ACC=s.acc),
                 device, tile.num_warps)
    through_fc2 = s.c_to_r_site(splits, (s.cr, 1), 0, backward=True, device=device, **flags)
    through_fc1 = s.r_to_c_site((s.c, 1), 0, backward=True, device=device, **flags)
    param_grads = _site(bn_param_grads_bwd, (configs.cdiv(s.c, PARAM_GRAD_BLOCK_C),),
                        "g_sum_ptr q_sum_ptr scale_ptr gp_ptr sample_mean_ptr mean_ptr rstd_ptr "
                        "gamma_ptr grad_gamma_ptr grad_beta_ptr kcoef_ptr",
                        dict(N=s.n, C=s.c, HW=s.hw, NUM_SPLITS=splits, has_gamma=has_gamma),
                        dict(BATCH_STATS=batch_stats, BLOCK_C=PARAM_GRAD_BLOCK_C,
                             BLOCK_N=_merge_block_n(PARAM_GRAD_BLOCK_C), ACC=s.acc), device)
    grad_pass = _site(bn_grad_pass_bwd, s.streaming_grid(),
                      "grad_ptr out_ptr y_ptr scale_ptr gp_ptr mean_ptr kcoef_ptr grad_y_ptr "
                      "grad_res_ptr",
                      dict(C=s.c, HW=s.hw, SAMPLE_NUMEL=s.c * s.hw),
                      dict(BATCH_STATS=batch_stats, POST_RELU=post_relu,
                           WRITE_GRAD_RESIDUAL=write_grad_res and not grad_res_in_sums,
                           GRAD_RESIDUAL_WRITTEN=grad_res_in_sums,
                           CHANNELS_LAST=s.channels_last, BLOCK=configs.SCALE_BLOCK), device)
    weight_grads = s.weight_grads_site(flags["act"], device)
    dense = (all(_is_dense(t, s.channels_last) for t in (grad_out, y) + ((out,) if post_relu else ()))
             and _vectors_dense(bn_weight, bn_bias, w1, w2))
    return _Plan(s, splits, (sums, through_fc2, through_fc1, param_grads, grad_pass, weight_grads),
                 dense)


def _backward_scratch(shape, splits, device):
    """G, Q and gs partials [N, S, C]; gz [N, C], gh [N, Cr], gp [N, C]; the grad pass's
    coefficients [3, C]; the c_to_r GEMM's K-split products and counters."""
    acc, n, c = shape.acc_dtype, shape.n, shape.c
    partials = {name: torch.empty((n, splits, c), dtype=acc, device=device)
                for name in ("g_sum", "q_sum", "gs")}
    return dict(**partials, gz=torch.empty((n, c), dtype=acc, device=device),
                gh=torch.empty((n, shape.cr), dtype=acc, device=device),
                gp=torch.empty((n, c), dtype=acc, device=device),
                kcoef=torch.empty((3, c), dtype=acc, device=device),
                **_gemm_scratch(shape, shape.k_split()[1], device))


@_serialized_when_interpreting
def bn_se_backward(grad_out, y, out, bn_weight, bn_bias, w1, w2, sample_mean, pooled, hidden,
                   scale, mean, rstd, batch_stats, has_residual, activation, gate,
                   reuse_scratch=False):
    """The backward op (bn_ops.py): (grad_y, grad_bn_weight, grad_bn_bias, grad_w1, grad_b1,
    grad_w2, grad_b2, grad_residual)."""
    check_device(y)
    if not _on_current_device(y.device):
        with torch.cuda.device(y.device):
            return bn_se_backward(grad_out, y, out, bn_weight, bn_bias, w1, w2, sample_mean,
                                  pooled, hidden, scale, mean, rstd, batch_stats, has_residual,
                                  activation, gate, reuse_scratch)
    post_relu = out is not None
    grads = allocate_bn_backward_outputs(y, bn_weight, bn_bias, w1, w2, post_relu, has_residual)
    if y.shape[0] == 0:
        for g in grads[1:7]:
            g.zero_()
        return grads
    key = _key((grad_out, y, out, bn_weight, bn_bias, w1, w2, sample_mean, pooled, hidden, scale,
                mean, rstd), batch_stats, has_residual, activation, gate)
    plan = _backward_plans.get(key)
    if plan is None:
        _check_batch(y.shape[0])
        plan = _remember(_backward_plans, key, _backward_plan(
            grad_out, y, out, bn_weight, bn_bias, w1, w2, batch_stats, has_residual, activation,
            gate))
    shape, device = plan.shape, y.device
    if not plan.dense:
        y = to_layout(y, shape.channels_last)
        grad_out = to_layout(grad_out, shape.channels_last)
        out = None if out is None else to_layout(out, shape.channels_last)
        bn_weight, bn_bias, w1, w2 = (None if t is None else t.contiguous()
                                      for t in (bn_weight, bn_bias, w1, w2))
    sample_mean, pooled, hidden, scale, mean, rstd = (
        t.contiguous() for t in (sample_mean, pooled, hidden, scale, mean, rstd))
    grad_y, grad_gamma, grad_beta, grad_w1, grad_b1, grad_w2, grad_b2, grad_res = grads
    scratch = _scratch(plan, device, lambda: _backward_scratch(shape, plan.splits, device),
                       reuse_scratch)
    gamma = y if bn_weight is None else bn_weight
    beta = y if bn_bias is None else bn_bias
    out_arg = y if out is None else out
    grad_res_arg = grad_res if post_relu and has_residual else grad_y
    sums, through_fc2, through_fc1, param_grads, grad_pass, weight_grads = plan.sites
    sums(grad_out, y, out_arg, grad_res_arg, mean, rstd, gamma, beta, scratch["g_sum"],
         scratch["q_sum"], scratch["gs"])
    _launch_with_counters(plan, through_fc2, device, scratch["gs"], scale, w2, w2, hidden,
                          scratch["gz"], scratch["k_products"], scratch["gemm_counters"],
                          scratch["gh"])
    through_fc1(scratch["gh"], w1, w1, scratch["gp"])
    param_grads(scratch["g_sum"], scratch["q_sum"], scale, scratch["gp"], sample_mean, mean, rstd,
                gamma, grad_gamma, grad_beta, scratch["kcoef"])
    grad_pass(grad_out, out_arg, y, scale, scratch["gp"], mean, scratch["kcoef"], grad_y,
              grad_res_arg)
    weight_grads(scratch["gz"], hidden, scratch["gh"], pooled, grad_w2, grad_b2, grad_w1, grad_b1)
    return grads
