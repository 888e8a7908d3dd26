"""Batched excitation: the FC layers as small GEMMs over tiles of samples, forward and backward.

The per-sample tail of forward.py / backward.py reads W1 and W2 once per sample, in one
program per sample. Where the weights outweigh a sample's activations (SE-ResNet-50 stages 3-4,
any late SE stage: ``configs.use_batched_excitation``) that is most of the traffic and a long
serial tail. Here every program works on a tile of BLOCK_N samples with ``tl.dot``, so each
weight element is read once per tile, and the FC work is spread over the whole GPU. The
[N, C] -> [N, Cr] GEMM has few tiles (64 at SE-ResNet-50's 256x2048x7x7) and a long reduction
over C, so it also splits C over up to ``configs.MAX_K_SPLITS`` programs per tile
(``configs.gemm_k_splits``); the last of them to finish adds the products in split order.

Two GEMM kernels, each used by the forward and the backward:
  ``se_excite_gemm_c_to_r`` [N, C] -> [N, Cr]: forward FC1, backward through FC2.
  ``se_excite_gemm_r_to_c`` [N, Cr] -> [N, C]: forward FC2 + gate, backward through FC1.

Single FC (Effective SE, ``has_fc2`` 0: W1 is [C, C], CR == C, no W2): c_to_r alone is the
excitation, its epilogue applying the gate (forward: hidden = U V + b1, scale = gate(hidden))
or the mean's 1 / HW (backward: U = gz, V = W1, out = gp = U V / HW); r_to_c is not launched.
Forward 3 launches, backward 4.

Forward, 4 launches: ``se_squeeze_excite_fwd`` with EXCITE=False (partial sums of x), c_to_r
(pooled, hidden), r_to_c (scale), ``se_scale_fwd`` (out). Backward, 5 launches:
``se_squeeze_excite_bwd`` with EXCITE=False (partial sums of gy * x), c_to_r (gz, gh), r_to_c
(gp), ``se_scale_bwd`` (grad_x, grad_residual), ``se_weight_grads``. The streaming passes are
the per-sample path's own: one block of elements per program, the whole GPU busy. (Fusing the
FC2 product into the scale pass was tried: each program then streamed its tile's samples one
after another, a serial chain of loads that ran at half the copy bandwidth on an H200.)
"""

import triton
import triton.language as tl

from .common import (FLAGS, activate, activate_backward, apply_gate, arrive_last, dot_acc,
                     gate_backward)


@triton.jit
def c_to_r_epilogue(acc, rows, r, out_mask, b_ptr, hidden_ptr, scale_ptr, out_ptr, CR, HW,
                    has_bias, has_fc2, act, gate, BACKWARD: tl.constexpr, ACC: tl.constexpr):
    """Finish and store a c_to_r tile: + b1 (forward) or * act'(hidden) (backward). Single FC
    (has_fc2 0, CR == C): forward also stores gate(out) to scale_ptr [N, C]; backward
    divides by HW instead (out is gp)."""
    if BACKWARD:
        if has_fc2:
            h = tl.load(hidden_ptr + rows[:, None] * CR + r[None, :], mask=out_mask, other=0.0)
            acc = activate_backward(acc, h, act)
        else:
            acc = acc / HW
    else:
        if has_bias:
            acc += tl.load(b_ptr + r, mask=r < CR, other=0.0).to(ACC)[None, :]
        if has_fc2 == 0:  # (not `not`: a runtime i32 flag)
            tl.store(scale_ptr + rows[:, None] * CR + r[None, :], apply_gate(acc, gate),
                     mask=out_mask)
    tl.store(out_ptr + rows[:, None] * CR + r[None, :], acc, mask=out_mask)


# K_SPLITS stays a runtime value even when it is 1 (Triton would make a constant of it): one
# compiled kernel serves both branches, so what the ahead-of-time compile covers is what runs.
@triton.jit(do_not_specialize=FLAGS + ["K_SPLITS"])
def se_excite_gemm_c_to_r(
    partial_ptr, scale_ptr, w_ptr, b_ptr, hidden_ptr, vec_ptr, ksum_ptr, counter_ptr, out_ptr,
    N, C, CR, HW, NUM_SPLITS, K_PER_SPLIT, K_SPLITS, w_stride_c, w_stride_r, has_bias, has_fc2,
    act, gate, BACKWARD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr, SPLIT_LIMIT: tl.constexpr, PRECISION: tl.constexpr,
    ACC: tl.constexpr,
):
    """out = epilogue(U @ V) for one [BLOCK_N samples, BLOCK_R hidden units] tile.

    Grid (sample tiles, hidden-unit tiles, K-splits). U [N, C] is made on the fly from the
    partial sums [N, S, C] and stored to ``vec_ptr`` by the programs of the first hidden-unit
    tile; V[c, r] = w[c * w_stride_c + r * w_stride_r]:
      forward:  U = pooled = sum / HW,        V = W1^T,  out = hidden = U V + b1
      backward: U = gz = gs * gate'(scale),   V = W2,    out = gh = (U V) * act'(hidden)
    and without FC2 (has_fc2 0, single FC, CR == C):
      forward:  as above, and scale_ptr receives gate(hidden)
      backward: U = gz,                       V = W1,    out = gp = U V / HW
    Program (i, j, k) sums channels [k * K_PER_SPLIT, (k + 1) * K_PER_SPLIT). With
    K_SPLITS > 1 it stores its product to ksum [K_SPLITS, N, CR]; the tile's last program to
    arrive (counter per tile, left zeroed) adds the K_SPLITS products in split order and runs
    the epilogue, so the result does not depend on which program finished last. It reads them
    in one unrolled step of SPLIT_LIMIT (>= K_SPLITS) masked loads: the loads do not wait on
    each other, so that costs one L2 round trip, not one per split, on the GEMM's critical
    path (the last tile's epilogue ends the kernel).
    """
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    r = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < N
    r_mask = r < CR
    store_u = tl.program_id(1) == 0
    k_start = tl.program_id(2) * K_PER_SPLIT
    k_end = tl.minimum(k_start + K_PER_SPLIT, C)
    acc = tl.zeros([BLOCK_N, BLOCK_R], dtype=ACC)
    for k0 in range(k_start, k_end, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_mask = k < k_end
        u_mask = row_mask[:, None] & k_mask[None, :]
        u = tl.zeros([BLOCK_N, BLOCK_K], dtype=ACC)
        for s in range(0, NUM_SPLITS):
            u += tl.load(partial_ptr + (rows[:, None] * NUM_SPLITS + s) * C + k[None, :],
                         mask=u_mask, other=0.0)
        if BACKWARD:
            sc = tl.load(scale_ptr + rows[:, None] * C + k[None, :], mask=u_mask, other=0.0)
            u = gate_backward(u, sc, gate)
        else:
            u = u / HW
        if store_u:
            tl.store(vec_ptr + rows[:, None] * C + k[None, :], u, mask=u_mask)
        v = tl.load(w_ptr + k[:, None] * w_stride_c + r[None, :] * w_stride_r,
                    mask=k_mask[:, None] & r_mask[None, :], other=0.0)
        acc = dot_acc(u, v, acc, PRECISION)
    out_mask = row_mask[:, None] & r_mask[None, :]
    if K_SPLITS == 1:
        c_to_r_epilogue(acc, rows, r, out_mask, b_ptr, hidden_ptr, scale_ptr, out_ptr, CR, HW,
                        has_bias, has_fc2, act, gate, BACKWARD, ACC)
    else:
        tile_ptrs = rows[:, None] * CR + r[None, :]
        tl.store(ksum_ptr + tl.program_id(2) * N * CR + tile_ptrs, acc, mask=out_mask)
        counter = counter_ptr + tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)
        if arrive_last(counter, K_SPLITS):
            total = tl.zeros([BLOCK_N, BLOCK_R], dtype=ACC)
            for split in tl.static_range(SPLIT_LIMIT):  # read past L1, which may be stale
                total += tl.load(ksum_ptr + split * N * CR + tile_ptrs,
                                 mask=out_mask & (split < K_SPLITS), other=0.0,
                                 cache_modifier=".cg")
            c_to_r_epilogue(total, rows, r, out_mask, b_ptr, hidden_ptr, scale_ptr, out_ptr, CR,
                            HW, has_bias, has_fc2, act, gate, BACKWARD, ACC)
            tl.store(counter, 0)  # ready for the next launch


@triton.jit(do_not_specialize=FLAGS)
def se_excite_gemm_r_to_c(
    u_ptr, w_ptr, b_ptr, out_ptr,
    N, C, CR, HW, v_stride_r, v_stride_c, has_bias, act, gate,
    BACKWARD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_R: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
):
    """out [N, C] = epilogue(U @ V) for one [BLOCK_N samples, BLOCK_C channels] tile.

    Grid (sample tiles, channel tiles); U [N, Cr], V[r, c] = w[r * v_stride_r + c * v_stride_c]:
      forward:  U = act(hidden), V = W2^T,  out = scale = gate(U V + b2)
      backward: U = gh,          V = W1,    out = gp = U V / HW
    """
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_mask = rows < N
    c_mask = c < C
    acc = tl.zeros([BLOCK_N, BLOCK_C], dtype=ACC)
    for r0 in range(0, CR, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        r_mask = r < CR
        u = tl.load(u_ptr + rows[:, None] * CR + r[None, :],
                    mask=row_mask[:, None] & r_mask[None, :], other=0.0)
        if not BACKWARD:
            u = activate(u, act)  # act(0) = 0: the padding adds nothing
        v = tl.load(w_ptr + r[:, None] * v_stride_r + c[None, :] * v_stride_c,
                    mask=r_mask[:, None] & c_mask[None, :], other=0.0)
        acc = dot_acc(u, v, acc, PRECISION)
    if BACKWARD:
        acc = acc / HW
    else:
        if has_bias:
            acc += tl.load(b_ptr + c, mask=c_mask, other=0.0).to(ACC)[None, :]
        acc = apply_gate(acc, gate)
    tl.store(out_ptr + rows[:, None] * C + c[None, :], acc, mask=row_mask[:, None] & c_mask[None, :])
