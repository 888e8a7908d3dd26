"""Batched excitation: the FC layers as small GEMMs over tiles of samples, forward and backward.

The per-sample tail of forward.py / backward.py reads W1 and W2 once per sample, in one
program per sample. Where the weights outweigh a sample's activations (SE-ResNet-50 stages 3-4,
any late SE stage: ``configs.use_batched_excitation``) that is most of the traffic and a long
serial tail. Here every program works on a tile of BLOCK_N samples with ``tl.dot``, so each
weight element is read once per tile, and the FC work is spread over the whole GPU.

Forward, 3 launches:
  1. ``se_squeeze_excite_fwd`` (forward.py) with EXCITE=False: partial sums of x [N, S, C].
  2. ``se_excite_gemm`` (BACKWARD=False): pooled = sum / HW (stored), hidden = pooled W1^T + b1.
  3. ``se_scale_excite_fwd``: s = gate(act(hidden) W2^T + b2) for a [samples, channels] tile
     (stored as the scale output), then out = relu?(x * s + residual?) over that tile.
Backward, 4 launches:
  1. ``se_squeeze_excite_bwd`` (backward.py) with EXCITE=False: partial sums of gy * x.
  2. ``se_excite_gemm`` (BACKWARD=True): gz = gs * gate'(s) (stored), gh = (gz W2) * act'(hidden).
  3. ``se_scale_excite_bwd``: gp = gh W1 / HW for the tile, then grad_x = gy * s + gp (and
     grad_residual = gy behind the ReLU tail) over that tile.
  4. ``se_weight_grads`` (backward.py).

Grids of the scale passes: (channel blocks * splits, sample tiles). Each program recomputes
its tile's small FC product (BLOCK_N x BLOCK_C x Cr multiply-adds: cheap next to streaming
BLOCK_N x BLOCK_C x HW elements) and streams its split of each sample's channel block:
NCHW, a contiguous range of the block's BLOCK_C * HW elements (so loads vectorize whatever
H*W is); channels_last, a range of pixels, BLOCK_C channels wide.
"""

import triton
import triton.language as tl

from .common import (FLAGS, activate, activate_grad, apply_gate, dot_acc, gate_grad_from_scale,
                     grad_elements, scale_elements)


@triton.jit(do_not_specialize=FLAGS)
def se_excite_gemm(
    partial_ptr, scale_ptr, w_ptr, b_ptr, hidden_ptr, vec_ptr, out_ptr,
    N, C, CR, HW, NUM_SPLITS, w_stride_c, w_stride_r, has_bias, act, gate,
    BACKWARD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
):
    """out = epilogue(U @ V) for one [BLOCK_N samples, BLOCK_R hidden units] tile.

    Grid (sample tiles, hidden-unit tiles). U [N, C] is made on the fly from the partial sums
    [N, S, C] and stored to ``vec_ptr`` by the programs of the first hidden-unit tile;
    V[c, r] = w[c * w_stride_c + r * w_stride_r]:
      forward:  U = pooled = sum / HW,        V = W1^T,  out = hidden = U V + b1
      backward: U = gz = gs * gate'(scale),   V = W2,    out = gh = (U V) * act'(hidden)
    """
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    r = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < N
    r_mask = r < CR
    store_u = tl.program_id(1) == 0
    acc = tl.zeros([BLOCK_N, BLOCK_R], dtype=ACC)
    for k0 in range(0, C, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_mask = k < C
        u_mask = row_mask[:, None] & k_mask[None, :]
        u = tl.zeros([BLOCK_N, BLOCK_K], dtype=ACC)
        for s in range(0, NUM_SPLITS):
            u += tl.load(partial_ptr + (rows[:, None] * NUM_SPLITS + s) * C + k[None, :],
                         mask=u_mask, other=0.0)
        if BACKWARD:
            sc = tl.load(scale_ptr + rows[:, None] * C + k[None, :], mask=u_mask, other=0.0)
            u = u * gate_grad_from_scale(sc, gate)
        else:
            u = u / HW
        if store_u:
            tl.store(vec_ptr + rows[:, None] * C + k[None, :], u, mask=u_mask)
        v = tl.load(w_ptr + k[:, None] * w_stride_c + r[None, :] * w_stride_r,
                    mask=k_mask[:, None] & r_mask[None, :], other=0.0)
        acc = dot_acc(u, v, acc, PRECISION)
    out_mask = row_mask[:, None] & r_mask[None, :]
    if BACKWARD:
        h = tl.load(hidden_ptr + rows[:, None] * CR + r[None, :], mask=out_mask, other=0.0)
        acc = acc * activate_grad(h, act)
    else:
        if has_bias:
            acc += tl.load(b_ptr + r, mask=r_mask, other=0.0).to(ACC)[None, :]
    tl.store(out_ptr + rows[:, None] * CR + r[None, :], acc, mask=out_mask)


@triton.jit
def _tile_coords(C, HW, SPLIT_LEN, CHANNELS_LAST: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_C: tl.constexpr):
    """(first sample, channel offsets, channel mask, [start, end) of this program's split) of
    a scale-pass program. The split range counts pixels (NHWC) or elements of the channel
    block's contiguous range within a sample (NCHW)."""
    num_c_blocks = tl.cdiv(C, BLOCK_C)
    c0 = (tl.program_id(0) % num_c_blocks) * BLOCK_C
    split = tl.program_id(0) // num_c_blocks
    c = c0 + tl.arange(0, BLOCK_C)
    if CHANNELS_LAST:
        start = split * SPLIT_LEN
        end = tl.minimum(start + SPLIT_LEN, HW)
    else:
        start = c0 * HW + split * SPLIT_LEN
        end = tl.minimum(start + SPLIT_LEN, tl.minimum(c0 + BLOCK_C, C) * HW)
    return tl.program_id(1) * BLOCK_N, c, c < C, start, end


@triton.jit(do_not_specialize=FLAGS)
def se_scale_excite_fwd(
    x_ptr, res_ptr, hidden_ptr, w2_ptr, b2_ptr, scale_ptr, out_ptr,
    N, C, HW, CR, SAMPLE_NUMEL, SPLIT_LEN, has_b2, act, gate,
    HAS_RESIDUAL: tl.constexpr, POST_RELU: tl.constexpr, CHANNELS_LAST: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK: tl.constexpr,
    PRECISION: tl.constexpr, ACC: tl.constexpr,
):
    """s = gate(act(hidden) W2^T + b2) for [BLOCK_N samples, BLOCK_C channels], then
    out = relu?(x * s + residual?) over this program's split of those samples' channels."""
    n0, c, c_mask, start, end = _tile_coords(C, HW, SPLIT_LEN, CHANNELS_LAST, BLOCK_N, BLOCK_C)
    rows = n0 + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    z = tl.zeros([BLOCK_N, BLOCK_C], dtype=ACC)
    for r0 in range(0, CR, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        r_mask = r < CR
        a = tl.load(hidden_ptr + rows[:, None] * CR + r[None, :],
                    mask=row_mask[:, None] & r_mask[None, :], other=0.0)
        w = tl.load(w2_ptr + c[None, :] * CR + r[:, None], mask=r_mask[:, None] & c_mask[None, :],
                    other=0.0)
        z = dot_acc(activate(a, act), w, z, PRECISION)  # act(0) = 0: padding adds nothing
    if has_b2:
        z += tl.load(b2_ptr + c, mask=c_mask, other=0.0).to(ACC)[None, :]
    # Every split of the tile computes the same s and stores it; the bits are identical.
    tl.store(scale_ptr + rows[:, None] * C + c[None, :], apply_gate(z, gate),
             mask=row_mask[:, None] & c_mask[None, :])
    tl.debug_barrier()  # this program's s is visible to all its threads (read back below)
    for i in range(0, BLOCK_N):
        n = n0 + i
        if n < N:
            base = n.to(tl.int64) * SAMPLE_NUMEL
            if CHANNELS_LAST:
                s = tl.load(scale_ptr + n * C + c, mask=c_mask, other=0.0)
                for p0 in range(start, end, BLOCK // BLOCK_C):
                    p = p0 + tl.arange(0, BLOCK // BLOCK_C)
                    offs = p[:, None] * C + c[None, :]
                    mask = (p < end)[:, None] & c_mask[None, :]
                    scale_elements(x_ptr + base, res_ptr + base, out_ptr + base, offs,
                                   s[None, :], mask, HAS_RESIDUAL, POST_RELU)
            else:
                for e0 in range(start, end, BLOCK):
                    offs = e0 + tl.arange(0, BLOCK)
                    mask = offs < end
                    s = tl.load(scale_ptr + n * C + offs // HW, mask=mask, other=0.0)
                    scale_elements(x_ptr + base, res_ptr + base, out_ptr + base, offs, s, mask,
                                   HAS_RESIDUAL, POST_RELU)


@triton.jit
def se_scale_excite_bwd(
    grad_ptr, out_ptr, gh_ptr, w1_ptr, scale_ptr, gp_ptr, grad_x_ptr, grad_res_ptr,
    N, C, HW, CR, SAMPLE_NUMEL, SPLIT_LEN,
    POST_RELU: tl.constexpr, WRITE_GRAD_RESIDUAL: tl.constexpr, CHANNELS_LAST: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK: tl.constexpr,
    PRECISION: tl.constexpr, ACC: tl.constexpr,
):
    """gp = gh W1 / HW for [BLOCK_N samples, BLOCK_C channels] (stored to gp_ptr [N, C]),
    then grad_x = gy * s + gp (and grad_residual = gy) over this program's split."""
    n0, c, c_mask, start, end = _tile_coords(C, HW, SPLIT_LEN, CHANNELS_LAST, BLOCK_N, BLOCK_C)
    rows = n0 + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    gp = tl.zeros([BLOCK_N, BLOCK_C], dtype=ACC)
    for r0 in range(0, CR, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        r_mask = r < CR
        gh = tl.load(gh_ptr + rows[:, None] * CR + r[None, :],
                     mask=row_mask[:, None] & r_mask[None, :], other=0.0)
        w = tl.load(w1_ptr + r[:, None] * C + c[None, :], mask=r_mask[:, None] & c_mask[None, :],
                    other=0.0)
        gp = dot_acc(gh, w, gp, PRECISION)
    # Identical bits from every split of the tile, as in the forward.
    tl.store(gp_ptr + rows[:, None] * C + c[None, :], gp / HW,
             mask=row_mask[:, None] & c_mask[None, :])
    tl.debug_barrier()
    for i in range(0, BLOCK_N):
        n = n0 + i
        if n < N:
            base = n.to(tl.int64) * SAMPLE_NUMEL
            if CHANNELS_LAST:
                s = tl.load(scale_ptr + n * C + c, mask=c_mask, other=0.0)
                g = tl.load(gp_ptr + n * C + c, mask=c_mask, other=0.0)
                for p0 in range(start, end, BLOCK // BLOCK_C):
                    p = p0 + tl.arange(0, BLOCK // BLOCK_C)
                    offs = p[:, None] * C + c[None, :]
                    mask = (p < end)[:, None] & c_mask[None, :]
                    grad_elements(grad_ptr + base, out_ptr + base, grad_x_ptr + base,
                                  grad_res_ptr + base, offs, s[None, :], g[None, :], mask,
                                  POST_RELU, WRITE_GRAD_RESIDUAL)
            else:
                for e0 in range(start, end, BLOCK):
                    offs = e0 + tl.arange(0, BLOCK)
                    mask = offs < end
                    ch = n * C + offs // HW
                    s = tl.load(scale_ptr + ch, mask=mask, other=0.0)
                    g = tl.load(gp_ptr + ch, mask=mask, other=0.0)
                    grad_elements(grad_ptr + base, out_ptr + base, grad_x_ptr + base,
                                  grad_res_ptr + base, offs, s, g, mask, POST_RELU,
                                  WRITE_GRAD_RESIDUAL)
