"""Triton kernels of the fused BatchNorm + SE op: its two streaming passes each way and the
[C]-sized work between them (docs/design.md, "BatchNorm absorbed into the SE op").

The excitation between the passes is the batched path's GEMMs (batched.py) on [N, C]
vectors; bn_op.py launches everything. Per element the passes read y (the BatchNorm's input),
never the normalized x = a (y - mu) + beta, a = gamma rstd, which exists only as per-channel
coefficients.

Forward:
  ``bn_stats_fwd``  grid (channel blocks * HW splits, N): per (n, c) the mean and M2 of its
      share of y (with batch statistics; the sum alone with running statistics), into
      [N, S, C] partials (sums with running statistics); the last program of a channel block (an arrival counter per block)
      merges them, splits then samples in sample order, into sample_mean [N, C], mean, rstd,
      var [C], the coefficient a [C], and the squeeze p = a (m - mu) + beta [N, C].
  ``bn_scale_fwd``  streaming: out = relu?(s (a (y - mu) + beta) + residual?).
Backward:
  ``bn_grad_sums_bwd``  grid as bn_stats_fwd: per (n, c) G = sum gy and Q = sum gy (y - mu)
      into [N, S, C] partials, and gs = a Q + beta G (the SE backward's sum of gy x) into the
      partials the batched excitation backward reads; gy stored as grad_residual with the
      ReLU tail and a residual.
  ``bn_param_grads_bwd``  grid (channel blocks): grad_beta = sum_n S1, grad_gamma = sum_n S2
      with S1 = s G + P gp, S2 = rstd (s Q + P gp (m - mu)), in sample order, and the grad
      pass's per-channel coefficients.
  ``bn_grad_pass_bwd``  streaming: grad_y = a (dx - grad_beta / M - (y - mu) rstd
      grad_gamma / M) with dx = gy s + gp (batch statistics), a dx (running statistics).
"""

import triton
import triton.language as tl

from .common import arrive_last, masked_grad, reduction_share, streaming_block, tile_offsets

#: Runtime flags (see common.FLAGS): one compiled kernel for every value.
BN_FLAGS = ["has_gamma", "has_beta"]


@triton.jit
def _chan_merge(count_a, mean_a, m2_a, count_b, mean_b, m2_b):
    """Chan et al.'s merge of two (count, mean, M2) summaries; counts are scalars (every
    channel of a tile has as many values), count_a may be 0. Where a mean is infinite, delta
    is too and mean_a + delta * frac would be Inf - Inf: there the weighted average keeps
    the infinite mean (NaN for +Inf with -Inf), as F.batch_norm's sum / count does
    (bn_reference.chan_merge)."""
    count = count_a + count_b
    delta = mean_b - mean_a
    frac = count_b / count
    finite = (delta - delta) == 0  # false for +-Inf and NaN
    mean = tl.where(finite, mean_a + delta * frac, mean_a * (1.0 - frac) + mean_b * frac)
    m2 = m2_a + m2_b + delta * delta * (count_a * frac)
    return count, mean, m2


@triton.jit
def _rsqrt(v, ACC: tl.constexpr):
    """1 / sqrt(v) with the square root correctly rounded (tl.sqrt may approximate float32;
    sqrt_rn takes float32 only, float64's sqrt is exact)."""
    if ACC == tl.float64:
        return 1.0 / tl.sqrt(v)
    else:
        return 1.0 / tl.sqrt_rn(v)


@triton.jit
def _load_vector(ptr, offs, mask, present, fill, ACC: tl.constexpr):
    """A [C]-vector's values at offs in ACC, or ``fill`` where the vector is absent."""
    return tl.load(ptr + offs, mask=mask & (present != 0), other=fill).to(ACC)


@triton.jit(do_not_specialize=BN_FLAGS)
def bn_stats_fwd(
    y_ptr, gamma_ptr, beta_ptr, rmean_ptr, rvar_ptr, pmean_ptr, pm2_ptr, counter_ptr,
    sample_mean_ptr, pooled_ptr, mean_ptr, rstd_ptr, var_ptr, coef_ptr,
    N, C, HW, HW_PER_SPLIT, NUM_SPLITS, eps, has_gamma, has_beta,
    BATCH_STATS: tl.constexpr, CHANNELS_LAST: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr, BLOCK_N: tl.constexpr, ACC: tl.constexpr,
):
    n, c_block, split, c, cm, hw_start, hw_end, sample = reduction_share(C, HW, HW_PER_SPLIT,
                                                                         BLOCK_C)
    base = y_ptr + sample
    # Each tile's mean and M2 are exact two-pass sums over its values (in registers); tiles
    # merge with Chan's formula, so no E[y^2] - E[y]^2 cancellation anywhere.
    count = tl.full([], 0.0, ACC)  # a scalar of the type the merges make it
    mean = tl.zeros([BLOCK_C], dtype=ACC)
    m2 = tl.zeros([BLOCK_C], dtype=ACC)
    total = tl.zeros([BLOCK_C], dtype=ACC)
    for hw0 in range(hw_start, hw_end, BLOCK_HW):
        offs, mask = tile_offsets(c, cm, hw0, hw_end, C, HW, CHANNELS_LAST, BLOCK_HW)
        v = tl.load(base + offs, mask=mask, other=0.0).to(ACC)
        if BATCH_STATS:
            tile_count = tl.minimum(hw_end - hw0, BLOCK_HW).to(ACC)
            tile_mean = tl.sum(v, axis=1) / tile_count
            d = tl.where(mask, v - tile_mean[:, None], 0.0)
            count, mean, m2 = _chan_merge(count, mean, m2, tile_count, tile_mean,
                                          tl.sum(d * d, axis=1))
        else:
            total += tl.sum(v, axis=1)
    partial = (n * NUM_SPLITS + split) * C + c
    # with running statistics the partials are sums: the merge divides once, by HW
    tl.store(pmean_ptr + partial, mean if BATCH_STATS else total, mask=cm)
    if BATCH_STATS:
        tl.store(pm2_ptr + partial, m2, mask=cm)
    if arrive_last(counter_ptr + c_block, N * NUM_SPLITS):
        _merge_channel_block(gamma_ptr, beta_ptr, rmean_ptr, rvar_ptr, pmean_ptr, pm2_ptr,
                             sample_mean_ptr, pooled_ptr, mean_ptr, rstd_ptr, var_ptr, coef_ptr,
                             c, cm, N, C, HW, HW_PER_SPLIT, NUM_SPLITS, eps, has_gamma, has_beta,
                             BATCH_STATS, BLOCK_C, BLOCK_N, ACC)
        tl.store(counter_ptr + c_block, 0)  # ready for the next launch


@triton.jit
def _merge_channel_block(gamma_ptr, beta_ptr, rmean_ptr, rvar_ptr, pmean_ptr, pm2_ptr,
                         sample_mean_ptr, pooled_ptr, mean_ptr, rstd_ptr, var_ptr, coef_ptr,
                         c, cm, N, C, HW, HW_PER_SPLIT, NUM_SPLITS, eps, has_gamma, has_beta,
                         BATCH_STATS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
                         ACC: tl.constexpr):
    """The last program of a channel block: per (n, c) the splits merged in order into
    sample_mean (and M2); over n, in tiles of BLOCK_N samples (every row has HW values, so
    the merge over samples is the closed form mu = mean_n m, M2 = sum_n M2[n] +
    HW sum_n (m[n] - mu)^2: two passes over the [N, block] rows); then rstd, a and p."""
    rows = tl.arange(0, BLOCK_N)
    # pass 1: per-(n, c) means (and M2) from the splits; sum of the means
    mean_sum = tl.zeros([BLOCK_C], dtype=ACC)
    m2_sum = tl.zeros([BLOCK_C], dtype=ACC)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + rows
        mask = (n < N)[:, None] & cm[None, :]
        count = tl.full([], 0.0, ACC)
        m = tl.zeros([BLOCK_N, BLOCK_C], dtype=ACC)
        m2 = tl.zeros([BLOCK_N, BLOCK_C], dtype=ACC)
        for s in range(0, NUM_SPLITS):
            offs = (n[:, None] * NUM_SPLITS + s) * C + c[None, :]
            # read past L1, which may hold stale lines of other programs' partials
            pm = tl.load(pmean_ptr + offs, mask=mask, other=0.0, cache_modifier=".cg")
            if BATCH_STATS:
                pv = tl.load(pm2_ptr + offs, mask=mask, other=0.0, cache_modifier=".cg")
                split_count = tl.minimum(HW_PER_SPLIT, HW - s * HW_PER_SPLIT).to(ACC)
                count, m, m2 = _chan_merge(count, m, m2, split_count, pm, pv)
            else:
                m += pm
        if not BATCH_STATS:
            m = m / HW
        tl.store(sample_mean_ptr + n[:, None] * C + c[None, :], m, mask=mask)
        mean_sum += tl.sum(tl.where(mask, m, 0.0), axis=0)
        m2_sum += tl.sum(tl.where(mask, m2, 0.0), axis=0)
    tl.debug_barrier()
    if BATCH_STATS:
        mu = mean_sum / N
        # pass 2: the spread of the sample means about mu
        spread = tl.zeros([BLOCK_C], dtype=ACC)
        for n0 in range(0, N, BLOCK_N):
            n = n0 + rows
            mask = (n < N)[:, None] & cm[None, :]
            m = tl.load(sample_mean_ptr + n[:, None] * C + c[None, :], mask=mask, other=0.0)
            d = tl.where(mask, m - mu[None, :], 0.0)
            spread += tl.sum(d * d, axis=0)
        var = (m2_sum + spread * HW) / (N * HW)
    else:
        mu = tl.load(rmean_ptr + c, mask=cm, other=0.0).to(ACC)
        var = tl.load(rvar_ptr + c, mask=cm, other=1.0).to(ACC)
    rstd = _rsqrt(var + eps, ACC)
    a = _load_vector(gamma_ptr, c, cm, has_gamma, 1.0, ACC) * rstd
    beta = _load_vector(beta_ptr, c, cm, has_beta, 0.0, ACC)
    tl.store(mean_ptr + c, mu, mask=cm)
    tl.store(rstd_ptr + c, rstd, mask=cm)
    tl.store(var_ptr + c, var, mask=cm)
    tl.store(coef_ptr + c, a, mask=cm)
    # pass 3: the squeeze of the normalized tensor, p = a (m - mu) + beta
    for n0 in range(0, N, BLOCK_N):
        n = n0 + rows
        mask = (n < N)[:, None] & cm[None, :]
        offs = n[:, None] * C + c[None, :]
        m = tl.load(sample_mean_ptr + offs, mask=mask, other=0.0)
        tl.store(pooled_ptr + offs, a[None, :] * (m - mu[None, :]) + beta[None, :], mask=mask)


@triton.jit(do_not_specialize=["has_beta"])
def bn_scale_fwd(
    y_ptr, res_ptr, scale_ptr, coef_ptr, mean_ptr, beta_ptr, out_ptr, C, HW, SAMPLE_NUMEL,
    has_beta, HAS_RESIDUAL: tl.constexpr, POST_RELU: tl.constexpr,
    CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr,
):
    """out = relu?(s (a (y - mu) + beta) + residual?) in the compute dtype, rounded once.
    mu is subtracted, not folded into a shift: no cancellation where |mu| >> std."""
    n, offs, mask, c, base = streaming_block(C, HW, SAMPLE_NUMEL, CHANNELS_LAST, BLOCK)
    s = tl.load(scale_ptr + n * C + c, mask=mask, other=0.0)
    a = tl.load(coef_ptr + c, mask=mask, other=0.0)
    mu = tl.load(mean_ptr + c, mask=mask, other=0.0)
    x = (tl.load(y_ptr + base + offs, mask=mask, other=0.0).to(s.dtype) - mu) * a
    if has_beta != 0:
        x += tl.load(beta_ptr + c, mask=mask, other=0.0).to(s.dtype)
    out = x * s
    if HAS_RESIDUAL:
        out += tl.load(res_ptr + base + offs, mask=mask, other=0.0).to(s.dtype)
    if POST_RELU:
        out = tl.maximum(out, 0.0, propagate_nan=tl.PropagateNan.ALL)
    tl.store(out_ptr + base + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=BN_FLAGS)
def bn_grad_sums_bwd(
    grad_ptr, y_ptr, out_ptr, grad_res_ptr, mean_ptr, rstd_ptr, gamma_ptr, beta_ptr,
    g_sum_ptr, q_sum_ptr, gs_ptr, C, HW, HW_PER_SPLIT, NUM_SPLITS, has_gamma, has_beta,
    POST_RELU: tl.constexpr, STORE_MASKED: tl.constexpr, CHANNELS_LAST: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, ACC: tl.constexpr,
):
    """G = sum gy, Q = sum gy (y - mu) of this program's [channel block, HW split] share,
    and gs = a Q + beta G, each into [N, S, C] partials. gy = (out <= 0 ? 0 : g) with the
    ReLU tail (threshold_backward: a NaN output passes g), stored to grad_res_ptr with
    STORE_MASKED."""
    n, _, split, c, cm, hw_start, hw_end, base = reduction_share(C, HW, HW_PER_SPLIT, BLOCK_C)
    mu = tl.load(mean_ptr + c, mask=cm, other=0.0)
    # per-tile row sums: two [BLOCK_C, BLOCK_HW] accumulators held across the loop took 186
    # registers (sm_90, fp32) and spilled in NCHW tiles
    g_sum = tl.zeros([BLOCK_C], dtype=ACC)
    q_sum = tl.zeros([BLOCK_C], dtype=ACC)
    for hw0 in range(hw_start, hw_end, BLOCK_HW):
        offs, mask = tile_offsets(c, cm, hw0, hw_end, C, HW, CHANNELS_LAST, BLOCK_HW)
        offs = base + offs
        g = tl.load(grad_ptr + offs, mask=mask, other=0.0)
        if POST_RELU:
            o = tl.load(out_ptr + offs, mask=mask, other=0.0)
            g = tl.where(o <= 0, 0.0, g).to(g.dtype)
            if STORE_MASKED:
                tl.store(grad_res_ptr + offs, g, mask=mask)
        y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(ACC)
        gy = g.to(ACC)
        g_sum += tl.sum(gy, axis=1)
        q_sum += tl.sum(gy * tl.where(mask, y - mu[:, None], 0.0), axis=1)
    # one use of each loop result: Triton 3.8's OptimizeThreadLocality pass asserts that a
    # reduction carried through a loop has one use
    g_sum = tl.where(cm, g_sum, 0.0)
    q_sum = tl.where(cm, q_sum, 0.0)
    a = _load_vector(gamma_ptr, c, cm, has_gamma, 1.0, ACC) * tl.load(rstd_ptr + c, mask=cm,
                                                                      other=0.0)
    gs = a * q_sum + _load_vector(beta_ptr, c, cm, has_beta, 0.0, ACC) * g_sum
    partial = (n * NUM_SPLITS + split) * C + c
    tl.store(g_sum_ptr + partial, g_sum, mask=cm)
    tl.store(q_sum_ptr + partial, q_sum, mask=cm)
    tl.store(gs_ptr + partial, gs, mask=cm)


@triton.jit(do_not_specialize=["has_gamma"])
def bn_param_grads_bwd(
    g_sum_ptr, q_sum_ptr, scale_ptr, gp_ptr, sample_mean_ptr, mean_ptr, rstd_ptr, gamma_ptr,
    grad_gamma_ptr, grad_beta_ptr, kcoef_ptr, N, C, HW, NUM_SPLITS, has_gamma,
    BATCH_STATS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
    ACC: tl.constexpr,
):
    """Per channel block: grad_beta = sum_n (s G + P gp), grad_gamma = sum_n rstd (s Q +
    P gp (m - mu)) over the samples in order (gp is the gradient through the squeeze, already
    divided by P = HW), and the grad pass's coefficients kcoef [3, C]: a = gamma rstd, and
    with batch statistics grad_beta / M, rstd grad_gamma / M (M = N HW)."""
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c < C
    mu = tl.load(mean_ptr + c, mask=cm, other=0.0)
    rstd = tl.load(rstd_ptr + c, mask=cm, other=0.0)
    rows = tl.arange(0, BLOCK_N)
    grad_beta = tl.zeros([BLOCK_C], dtype=ACC)
    grad_gamma = tl.zeros([BLOCK_C], dtype=ACC)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + rows
        mask = (n < N)[:, None] & cm[None, :]
        g = tl.zeros([BLOCK_N, BLOCK_C], dtype=ACC)
        q = tl.zeros([BLOCK_N, BLOCK_C], dtype=ACC)
        for s in range(0, NUM_SPLITS):
            offs = (n[:, None] * NUM_SPLITS + s) * C + c[None, :]
            g += tl.load(g_sum_ptr + offs, mask=mask, other=0.0)
            q += tl.load(q_sum_ptr + offs, mask=mask, other=0.0)
        offs = n[:, None] * C + c[None, :]
        sc = tl.load(scale_ptr + offs, mask=mask, other=0.0)
        gp = tl.load(gp_ptr + offs, mask=mask, other=0.0) * HW
        m = tl.load(sample_mean_ptr + offs, mask=mask, other=0.0)
        s1 = sc * g + gp
        s2 = sc * q + gp * (m - mu[None, :])
        grad_beta += tl.sum(tl.where(mask, s1, 0.0), axis=0)
        grad_gamma += tl.sum(tl.where(mask, s2, 0.0), axis=0)
    grad_gamma = grad_gamma * rstd
    tl.store(grad_beta_ptr + c, grad_beta.to(grad_beta_ptr.dtype.element_ty), mask=cm)
    tl.store(grad_gamma_ptr + c, grad_gamma.to(grad_gamma_ptr.dtype.element_ty), mask=cm)
    tl.store(kcoef_ptr + c, _load_vector(gamma_ptr, c, cm, has_gamma, 1.0, ACC) * rstd, mask=cm)
    if BATCH_STATS:
        count = N * HW
        tl.store(kcoef_ptr + C + c, grad_beta / count, mask=cm)
        tl.store(kcoef_ptr + 2 * C + c, rstd * grad_gamma / count, mask=cm)


@triton.jit
def bn_grad_pass_bwd(
    grad_ptr, out_ptr, y_ptr, scale_ptr, gp_ptr, mean_ptr, kcoef_ptr,
    grad_y_ptr, grad_res_ptr, C, HW, SAMPLE_NUMEL,
    BATCH_STATS: tl.constexpr, POST_RELU: tl.constexpr, WRITE_GRAD_RESIDUAL: tl.constexpr,
    GRAD_RESIDUAL_WRITTEN: tl.constexpr, CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr,
):
    """grad_y = a (dx - kcoef[1] - (y - mu) kcoef[2]) (a = kcoef[0]) with dx = gy s + gp
    (batch statistics: BatchNorm's own backward through mu and rstd), a dx with running
    statistics (y not read). gy: common.masked_grad (with GRAD_RESIDUAL_WRITTEN read from
    grad_res_ptr, where bn_grad_sums_bwd stored it)."""
    n, offs, mask, c, base = streaming_block(C, HW, SAMPLE_NUMEL, CHANNELS_LAST, BLOCK)
    s = tl.load(scale_ptr + n * C + c, mask=mask, other=0.0)
    gp = tl.load(gp_ptr + n * C + c, mask=mask, other=0.0)
    a = tl.load(kcoef_ptr + c, mask=mask, other=0.0)
    gy = masked_grad(grad_ptr + base, out_ptr + base, grad_res_ptr + base, offs, mask, POST_RELU,
                     WRITE_GRAD_RESIDUAL, GRAD_RESIDUAL_WRITTEN)
    dx = gy.to(s.dtype) * s + gp
    if BATCH_STATS:
        mu = tl.load(mean_ptr + c, mask=mask, other=0.0)
        k_mean = tl.load(kcoef_ptr + C + c, mask=mask, other=0.0)
        k_xh = tl.load(kcoef_ptr + 2 * C + c, mask=mask, other=0.0)
        y = tl.load(y_ptr + base + offs, mask=mask, other=0.0).to(s.dtype)
        dx = dx - k_mean - (y - mu) * k_xh
    tl.store(grad_y_ptr + base + offs, (a * dx).to(grad_y_ptr.dtype.element_ty), mask=mask)
