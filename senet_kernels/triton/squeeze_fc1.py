"""The squeeze_fc1 path: the per-channel reductions with the adjacent FC layer folded in, over
tiles of samples, forward and backward.

On the batched path (batched.py) the forward is 4 launches: squeeze (kernel A, one
[channels, H*W] slab of one sample per program), FC1 as a split-K GEMM, FC2 + gate, scale.
On an H200, at SE-ResNet-50's 256x2048x7x7 (bf16), the squeeze took 33.7 us for 51 MB
(a third of the read bandwidth: each program reads 6 KB, too little to keep HBM busy) and the
FC1 GEMM 16.0 us (a latency-bound chain over C), of a 92.5 us forward.

Here one program reads a channel block of a tile of BLOCK_N samples, all of their H*W (one
loop over (sample, H*W block) pairs that the compiler can software-pipeline, STAGES), so it
keeps several loads in flight for longer; then multiplies its [BLOCK_N, BLOCK_C] block of
per-channel values by the matching rows of the FC layer (``tl.dot``): a split-K product per
channel block, so the weights are read once per tile of samples and the GEMM needs no launch
and no chain of its own. The last program of each sample tile to arrive (an atomic counter
per tile, left zeroed) adds the channel blocks' products in channel order (deterministic,
whichever finished last) and finishes them.

  ``se_squeeze_fc1_fwd``: pooled = mean of x; hidden = pooled W1^T + b1. Then FC2 + gate
  (batched.se_excite_gemm_r_to_c) and the scale pass: 3 launches instead of 4.
  ``se_squeeze_fc2_bwd``: gs = sum of gy * x (gy = g, or g masked by the ReLU tail, stored as
  grad_residual when asked); gz = gs * gate'(scale); gh = (gz W2) * act'(hidden). Then the
  gradient through FC1 (r_to_c), the grad_x pass and the weight gradients: 4 launches
  instead of 5.
"""

import triton
import triton.language as tl

from .batched import c_to_r_epilogue
from .common import FLAGS, arrive_last, dot_acc, gate_backward, reduction_term


@triton.jit
def _tile_channel_sums(x_ptr, g_ptr, out_ptr, masked_ptr, first, N, C, HW, c, c_mask,
                       MODE: tl.constexpr, STORE_MASKED: tl.constexpr,
                       CHANNELS_LAST: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, STAGES: tl.constexpr,
                       ACC: tl.constexpr):
    """[BLOCK_N, BLOCK_C]: for samples first.. first + BLOCK_N - 1 and channels c, the sum
    over H*W of common.reduction_term (x, g * x or the masked gy * x, by MODE). Rows past N
    are 0."""
    hw_range = tl.arange(0, BLOCK_HW)
    samples = tl.arange(0, BLOCK_N)
    hw_blocks = tl.cdiv(HW, BLOCK_HW)
    # transposed, [BLOCK_C, BLOCK_N]: channels on the first axis, as in the loaded tiles, so
    # each step's per-channel sums add in without a change of layout
    sums = tl.zeros([BLOCK_C, BLOCK_N], dtype=ACC)
    for step in tl.range(0, tl.minimum(BLOCK_N, N - first) * hw_blocks, num_stages=STAGES):
        i = step // hw_blocks
        hw = (step - i * hw_blocks) * BLOCK_HW + hw_range
        mask = c_mask[:, None] & (hw < HW)[None, :]
        if CHANNELS_LAST:
            offs = c[:, None] + hw[None, :] * C
        else:
            offs = c[:, None] * HW + hw[None, :]
        offs += (first + i).to(tl.int64) * C * HW
        part = tl.sum(reduction_term(x_ptr, g_ptr, out_ptr, masked_ptr, offs, mask, MODE,
                                     STORE_MASKED, ACC), axis=1)
        sums += tl.where(samples[None, :] == i, part[:, None], 0.0)
    return tl.trans(sums)


@triton.jit
def _program_tile(N, C, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """(channel block, sample tile, channel blocks, first sample, rows, row mask, channels,
    channel mask) of this program (grid: channel blocks, sample tiles)."""
    c_block, tile = tl.program_id(0), tl.program_id(1)
    first = tile * BLOCK_N
    rows = first + tl.arange(0, BLOCK_N)
    c = c_block * BLOCK_C + tl.arange(0, BLOCK_C)
    return c_block, tile, tl.num_programs(0), first, rows, rows < N, c, c < C


@triton.jit
def _finish_tile(ksum_ptr, counter_ptr, tile, num_c_blocks, rows, row_mask, b_ptr, hidden_ptr,
                 out_ptr, N, CR, has_bias, act, BACKWARD: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_R: tl.constexpr, SUM_CHUNK: tl.constexpr, ACC: tl.constexpr):
    """The tile's last program to arrive: the channel blocks' products summed in order, then
    batched's c_to_r epilogue (+ b1 into hidden, or x act'(hidden) into gh); the counter
    zeroed for the next launch."""
    if arrive_last(counter_ptr + tile, num_c_blocks):
        for r0 in range(0, CR, BLOCK_R):
            r = r0 + tl.arange(0, BLOCK_R)
            out_mask = row_mask[:, None] & (r < CR)[None, :]
            total = _sum_block_products(ksum_ptr, num_c_blocks, rows, r, out_mask, N, CR,
                                        BLOCK_N, BLOCK_R, SUM_CHUNK, ACC)
            # two FC layers only (has_fc2 1): scale_ptr, HW and gate are not read
            c_to_r_epilogue(total, rows, r, out_mask, b_ptr, hidden_ptr, out_ptr, out_ptr, CR, 1,
                            has_bias, 1, act, 0, BACKWARD, ACC)
        tl.store(counter_ptr + tile, 0)


@triton.jit
def _store_block_product(u, w_ptr, w_stride_c, w_stride_r, ksum_ptr, c_block, rows, row_mask,
                         c, c_mask, N, CR, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
                         PRECISION: tl.constexpr, ACC: tl.constexpr):
    """ksum[c_block, rows, :] = u [BLOCK_N, BLOCK_C] @ V[c, :], V[c, r] = w[c * w_stride_c +
    r * w_stride_r]: this channel block's share of the [N, C] @ [C, CR] product."""
    products = ksum_ptr + (c_block * N + rows[:, None]).to(tl.int64) * CR
    for r0 in range(0, CR, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        r_mask = r < CR
        w = tl.load(w_ptr + c[:, None] * w_stride_c + r[None, :] * w_stride_r,
                    mask=c_mask[:, None] & r_mask[None, :], other=0.0)
        product = dot_acc(u, w, tl.zeros([BLOCK_N, BLOCK_R], dtype=ACC), PRECISION)
        tl.store(products + r[None, :], product, mask=row_mask[:, None] & r_mask[None, :])


@triton.jit
def _sum_block_products(ksum_ptr, num_c_blocks, rows, r, out_mask, N, CR,
                        BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, SUM_CHUNK: tl.constexpr,
                        ACC: tl.constexpr):
    """[BLOCK_N, BLOCK_R]: the channel blocks' products for rows and hidden units r, added in
    channel-block order, SUM_CHUNK loads per step (they do not wait on each other); read past
    L1, which may be stale."""
    total = tl.zeros([BLOCK_N, BLOCK_R], dtype=ACC)
    for k0 in range(0, num_c_blocks, SUM_CHUNK):
        for k in tl.static_range(SUM_CHUNK):
            block = k0 + k
            total += tl.load(ksum_ptr + (block * N + rows[:, None]).to(tl.int64) * CR + r[None, :],
                             mask=out_mask & (block < num_c_blocks), other=0.0,
                             cache_modifier=".cg")
    return total


@triton.jit(do_not_specialize=FLAGS)
def se_squeeze_fc1_fwd(
    x_ptr, w1_ptr, b1_ptr, pooled_ptr, ksum_ptr, counter_ptr, hidden_ptr,
    N, C, CR, HW, has_b1,
    CHANNELS_LAST: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr, BLOCK_R: tl.constexpr, STAGES: tl.constexpr,
    SUM_CHUNK: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
):
    """Grid (channel blocks, sample tiles). pooled [N, C] = mean over H*W of x; ksum
    [channel blocks, N, CR] holds each block's pooled[:, block] @ W1[:, block]^T; the tile's
    last program stores hidden [N, CR] = their sum + b1."""
    c_block, tile, num_c_blocks, first, rows, row_mask, c, c_mask = _program_tile(
        N, C, BLOCK_N, BLOCK_C)
    pooled = _tile_channel_sums(x_ptr, x_ptr, x_ptr, x_ptr, first, N, C, HW, c, c_mask, 0,
                                False, CHANNELS_LAST, BLOCK_N, BLOCK_C, BLOCK_HW, STAGES,
                                ACC) / HW
    tl.store(pooled_ptr + rows[:, None] * C + c[None, :], pooled,
             mask=row_mask[:, None] & c_mask[None, :])
    _store_block_product(pooled, w1_ptr, 1, C, ksum_ptr, c_block, rows, row_mask, c, c_mask, N,
                         CR, BLOCK_N, BLOCK_R, PRECISION, ACC)
    _finish_tile(ksum_ptr, counter_ptr, tile, num_c_blocks, rows, row_mask, b1_ptr, hidden_ptr,
                 hidden_ptr, N, CR, has_b1, 0, False, BLOCK_N, BLOCK_R, SUM_CHUNK, ACC)


@triton.jit(do_not_specialize=FLAGS)
def se_squeeze_fc2_bwd(
    grad_ptr, x_ptr, out_ptr, grad_res_ptr, w2_ptr, hidden_ptr, scale_ptr, gz_ptr, ksum_ptr,
    counter_ptr, gh_ptr,
    N, C, CR, HW, act, gate,
    POST_RELU: tl.constexpr, WRITE_GRAD_RESIDUAL: tl.constexpr, CHANNELS_LAST: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
    BLOCK_R: tl.constexpr, STAGES: tl.constexpr, SUM_CHUNK: tl.constexpr,
    PRECISION: tl.constexpr, ACC: tl.constexpr,
):
    """Grid (channel blocks, sample tiles). gs = sum over H*W of gy * x (gy stored to
    grad_res with WRITE_GRAD_RESIDUAL); gz [N, C] = gs * gate'(scale); ksum holds each
    block's gz[:, block] @ W2[block, :]; the tile's last program stores gh [N, CR] =
    (their sum) * act'(hidden)."""
    c_block, tile, num_c_blocks, first, rows, row_mask, c, c_mask = _program_tile(
        N, C, BLOCK_N, BLOCK_C)
    gs = _tile_channel_sums(x_ptr, grad_ptr, out_ptr, grad_res_ptr, first, N, C, HW, c, c_mask,
                            2 if POST_RELU else 1, WRITE_GRAD_RESIDUAL, CHANNELS_LAST, BLOCK_N,
                            BLOCK_C, BLOCK_HW, STAGES, ACC)
    vec_mask = row_mask[:, None] & c_mask[None, :]
    sc = tl.load(scale_ptr + rows[:, None] * C + c[None, :], mask=vec_mask, other=0.0)
    gz = gate_backward(gs, sc, gate)
    tl.store(gz_ptr + rows[:, None] * C + c[None, :], gz, mask=vec_mask)
    _store_block_product(gz, w2_ptr, CR, 1, ksum_ptr, c_block, rows, row_mask, c, c_mask, N, CR,
                         BLOCK_N, BLOCK_R, PRECISION, ACC)
    _finish_tile(ksum_ptr, counter_ptr, tile, num_c_blocks, rows, row_mask, w2_ptr, hidden_ptr,
                 gh_ptr, N, CR, 0, act, True, BLOCK_N, BLOCK_R, SUM_CHUNK, ACC)
