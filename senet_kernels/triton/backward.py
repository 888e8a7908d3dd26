"""Backward kernels: three launches, weight and bias gradients included.

With gy = (out <= 0 ? 0 : g) for the ReLU tail (PyTorch's threshold_backward), else g (the
backward of docs/design.md, "The math"):

Kernel A', ``se_squeeze_excite_bwd``: grid (channel blocks * HW splits, N). Reduces
gs = sum_hw gy * x into ``partials``; with EXCITE, the last program of a sample then runs the
excitation backward for it: gz = gs * gate'(s), gh = (gz W2) * act'(hidden), gp = (gh W1) / HW,
writing the [N, C] / [N, Cr] vectors gz, gh and gp. Without FC2 (``has_fc2`` 0, single FC)
there is no gh: gp = (gz W1) / HW. Without EXCITE it only leaves the partial
sums, for the batched excitation backward (batched.py).

Kernel B', ``se_scale_bwd``: one streaming pass, gx = gy * s + gp (and grad_residual = gy
when the ReLU tail masks it). With a residual behind the ReLU tail (SE-ResNet), kernel A'
stores gy = grad_residual as it reduces, and kernel B' reads gy from there instead of g and
out: 6 passes over the activation's size instead of 7 (A': read g, x, out, write gy; B': read
gy, write gx).

Kernel C', ``se_weight_grads``: the tiny GEMMs over the batch, gW2 = gz^T act(hidden),
gW1 = gh^T pooled, and the bias sums, one program per output tile of either matrix. Single
FC: gW1 = gz^T pooled only (the host passes gz as gh and launches gW1's tiles alone).
"""

import triton
import triton.language as tl

from .common import (FLAGS, activate, activate_backward, arrive_last, dot_acc, gate_backward,
                     masked_grad, matvec_block, reduce_slab_share, streaming_block,
                     sum_partials)


@triton.jit(do_not_specialize=FLAGS)
def se_squeeze_excite_bwd(
    grad_ptr, x_ptr, out_ptr, grad_res_ptr, w1_ptr, w2_ptr, hidden_ptr, scale_ptr,
    partial_ptr, counter_ptr, gz_ptr, gh_ptr, gp_ptr,
    C, HW, CR, HW_PER_SPLIT, NUM_SPLITS, has_fc2, act, gate,
    EXCITE: tl.constexpr, POST_RELU: tl.constexpr, WRITE_GRAD_RESIDUAL: tl.constexpr,
    CHANNELS_LAST: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
    REDUCE_STAGES: tl.constexpr, FC_BLOCK_C: tl.constexpr, FC_BLOCK_R: tl.constexpr,
    ACC: tl.constexpr,
):
    n = reduce_slab_share(x_ptr, grad_ptr, out_ptr, grad_res_ptr, partial_ptr, C, HW, HW_PER_SPLIT,
                          NUM_SPLITS, 2 if POST_RELU else 1, WRITE_GRAD_RESIDUAL, CHANNELS_LAST,
                          BLOCK_C, BLOCK_HW, REDUCE_STAGES, ACC)
    if EXCITE:
        if arrive_last(counter_ptr + n, tl.cdiv(C, BLOCK_C) * NUM_SPLITS):
            fc_c = tl.arange(0, FC_BLOCK_C)
            fc_r = tl.arange(0, FC_BLOCK_R)
            # gz = gs * gate'(z), from s
            for c0 in range(0, C, FC_BLOCK_C):
                c = c0 + fc_c
                cm = c < C
                gs = sum_partials(partial_ptr, n, c, cm, C, NUM_SPLITS, FC_BLOCK_C, ACC)
                sc = tl.load(scale_ptr + n * C + c, mask=cm, other=0.0)
                tl.store(gz_ptr + n * C + c, gate_backward(gs, sc, gate), mask=cm)
            tl.debug_barrier()
            # gh = (gz @ W2) * act'(hidden), W2 is [C, CR]; single FC: gz itself goes to W1
            fc1_grad_ptr = gz_ptr + n * C
            if has_fc2:
                for r0 in range(0, CR, FC_BLOCK_R):
                    r = r0 + fc_r
                    rm = r < CR
                    ga = matvec_block(w2_ptr, gz_ptr + n * C, r, rm, CR, C, True, act, False,
                                      FC_BLOCK_R, FC_BLOCK_C, ACC)
                    h = tl.load(hidden_ptr + n * CR + r, mask=rm, other=0.0)
                    tl.store(gh_ptr + n * CR + r, activate_backward(ga, h, act), mask=rm)
                fc1_grad_ptr = gh_ptr + n * CR
                tl.debug_barrier()
            # gp = (gh @ W1) / HW, W1 is [CR, C]: the gradient of each pixel through the mean
            for c0 in range(0, C, FC_BLOCK_C):
                c = c0 + fc_c
                cm = c < C
                gp = matvec_block(w1_ptr, fc1_grad_ptr, c, cm, C, CR, True, act, False,
                                  FC_BLOCK_C, FC_BLOCK_R, ACC)
                tl.store(gp_ptr + n * C + c, gp / HW, mask=cm)
            tl.store(counter_ptr + n, 0)  # ready for the next launch


@triton.jit
def se_scale_bwd(
    grad_ptr, out_ptr, scale_ptr, gp_ptr, grad_x_ptr, grad_res_ptr, C, HW, SAMPLE_NUMEL,
    POST_RELU: tl.constexpr, WRITE_GRAD_RESIDUAL: tl.constexpr, GRAD_RESIDUAL_WRITTEN: tl.constexpr,
    CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr,
):
    """gx = gy * s + gp; with GRAD_RESIDUAL_WRITTEN, kernel A' already stored gy (the masked
    gradient, = grad_residual) and it is read from there: one read instead of g and out."""
    n, offs, mask, c, base = streaming_block(C, HW, SAMPLE_NUMEL, CHANNELS_LAST, BLOCK)
    s = tl.load(scale_ptr + n * C + c, mask=mask, other=0.0)
    gp = tl.load(gp_ptr + n * C + c, mask=mask, other=0.0)
    gy = masked_grad(grad_ptr + base, out_ptr + base, grad_res_ptr + base, offs, mask, POST_RELU,
                     WRITE_GRAD_RESIDUAL, GRAD_RESIDUAL_WRITTEN)
    gx = gy.to(s.dtype) * s + gp
    tl.store(grad_x_ptr + base + offs, gx.to(grad_x_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=FLAGS)
def se_weight_grads(
    gz_ptr, hidden_ptr, gh_ptr, pooled_ptr, gw2_ptr, gb2_ptr, gw1_ptr, gb1_ptr,
    N, C, CR, has_fc2, act,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """G = U^T V and gb = sum_n U, for (U, V, G) = (gz, act(hidden), gW2) or (gh, pooled, gW1).

    Programs [0, tiles(C, CR)) make gW2 [C, CR]; the rest make gW1 [CR, C]. Without FC2
    (has_fc2 0) every program makes gW1 (gh_ptr then holds gz).
    """
    pid = tl.program_id(0)
    w2_k_blocks = tl.cdiv(CR, BLOCK_K)
    w2_tiles = tl.cdiv(C, BLOCK_M) * w2_k_blocks * has_fc2
    if pid < w2_tiles:
        u_ptr, v_ptr, g_ptr, gb_ptr = gz_ptr, hidden_ptr, gw2_ptr, gb2_ptr
        M, K, apply_act = C, CR, 1
        m_block, k_block = pid // w2_k_blocks, pid % w2_k_blocks
    else:
        u_ptr, v_ptr, g_ptr, gb_ptr = gh_ptr, pooled_ptr, gw1_ptr, gb1_ptr
        M, K, apply_act = CR, C, 0
        w1_k_blocks = tl.cdiv(C, BLOCK_K)
        m_block, k_block = (pid - w2_tiles) // w1_k_blocks, (pid - w2_tiles) % w1_k_blocks
    m = m_block * BLOCK_M + tl.arange(0, BLOCK_M)
    k = k_block * BLOCK_K + tl.arange(0, BLOCK_K)
    mm = m < M
    km = k < K
    acc = tl.zeros([BLOCK_M, BLOCK_K], dtype=gz_ptr.dtype.element_ty)
    bias = tl.zeros([BLOCK_M], dtype=gz_ptr.dtype.element_ty)
    for n0 in range(0, N, BLOCK_N):
        rows = n0 + tl.arange(0, BLOCK_N)
        nm = rows < N
        u_t = tl.load(u_ptr + rows[None, :] * M + m[:, None], mask=mm[:, None] & nm[None, :], other=0.0)
        v = tl.load(v_ptr + rows[:, None] * K + k[None, :], mask=nm[:, None] & km[None, :], other=0.0)
        v = tl.where(apply_act == 1, activate(v, act), v)
        # ieee: fp32 weight gradients are owed fp32 accuracy, not TF32's
        acc = dot_acc(u_t, v, acc, "ieee")
        bias += tl.sum(u_t, axis=1)
    tl.store(g_ptr + m[:, None] * K + k[None, :], acc.to(g_ptr.dtype.element_ty),
             mask=mm[:, None] & km[None, :])
    if k_block == 0:
        tl.store(gb_ptr + m, bias.to(gb_ptr.dtype.element_ty), mask=mm)
