"""The squeeze with FC1 folded in, over tiles of samples: the forward of the "squeeze_fc1" path.

On the batched path (batched.py) the forward is 4 launches: squeeze (kernel A, one
[channels, H*W] slab of one sample per program), FC1 as a split-K GEMM, FC2 + gate, scale.
On an H200, at SE-ResNet-50's 256x2048x7x7 (bf16), the squeeze took 33.7 us for 51 MB
(a third of the read bandwidth: each program reads 6 KB, too little to keep HBM busy) and the
FC1 GEMM 16.0 us (a latency-bound chain over C), of a 92.5 us forward.

Here one program reads a channel block of a tile of BLOCK_N samples, all of their H*W (one
loop over (sample, H*W block) pairs that the compiler can software-pipeline, STAGES), so it
keeps several loads in flight for longer; then multiplies its pooled [BLOCK_N, BLOCK_C] block
by W1's matching columns (``tl.dot``): a split-K product of FC1 per channel block, so W1 is
read once per tile of samples and the GEMM needs no launch and no chain of its own. The last
program of each sample tile to arrive (an atomic counter per tile, left zeroed) adds the
channel blocks' products in channel order (deterministic, whichever finished last), adds b1
and stores ``hidden``. FC2 + gate (batched.se_excite_gemm_r_to_c) and the scale pass follow:
3 launches. The backward is the batched path's.
"""

import triton
import triton.language as tl

from .common import FLAGS, arrive_last, dot_acc


@triton.jit(do_not_specialize=FLAGS)
def se_squeeze_fc1_fwd(
    x_ptr, w1_ptr, b1_ptr, pooled_ptr, ksum_ptr, counter_ptr, hidden_ptr,
    N, C, CR, HW, has_b1,
    CHANNELS_LAST: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr, BLOCK_R: tl.constexpr, STAGES: tl.constexpr,
    SUM_CHUNK: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
):
    """Grid (channel blocks, sample tiles).

    pooled [N, C] = mean over H*W of x; ksum [channel blocks, N, CR] holds each channel
    block's product pooled[:, block] @ W1[:, block]^T; hidden [N, CR] = their sum + b1,
    stored by the tile's last program. The sum reads SUM_CHUNK products per step, loads that
    do not wait on each other.
    """
    c_block = tl.program_id(0)
    tile = tl.program_id(1)
    num_c_blocks = tl.num_programs(0)
    first = tile * BLOCK_N
    rows = first + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    c = c_block * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    hw_range = tl.arange(0, BLOCK_HW)
    samples = tl.arange(0, BLOCK_N)
    hw_blocks = tl.cdiv(HW, BLOCK_HW)
    # pooled^T [BLOCK_C, BLOCK_N]: channels on the tile's first axis, as in the loaded tiles,
    # so each step's per-channel sums add in without a change of layout
    sums = tl.zeros([BLOCK_C, BLOCK_N], dtype=ACC)
    for step in tl.range(0, tl.minimum(BLOCK_N, N - first) * hw_blocks, num_stages=STAGES):
        i = step // hw_blocks
        hw = (step - i * hw_blocks) * BLOCK_HW + hw_range
        mask = c_mask[:, None] & (hw < HW)[None, :]
        if CHANNELS_LAST:
            offs = c[:, None] + hw[None, :] * C
        else:
            offs = c[:, None] * HW + hw[None, :]
        v = tl.load(x_ptr + (first + i).to(tl.int64) * C * HW + offs, mask=mask, other=0.0)
        part = tl.sum(v.to(ACC), axis=1)
        sums += tl.where(samples[None, :] == i, part[:, None], 0.0)
    pooled = tl.trans(sums / HW)  # [BLOCK_N, BLOCK_C]
    tl.store(pooled_ptr + rows[:, None] * C + c[None, :], pooled,
             mask=row_mask[:, None] & c_mask[None, :])
    products = ksum_ptr + (c_block * N + rows[:, None]).to(tl.int64) * CR
    for r0 in range(0, CR, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        r_mask = r < CR
        # V [BLOCK_C, BLOCK_R] = W1[r, c]^T (W1 is [CR, C])
        w = tl.load(w1_ptr + r[None, :] * C + c[:, None], mask=c_mask[:, None] & r_mask[None, :],
                    other=0.0)
        product = dot_acc(pooled, w, tl.zeros([BLOCK_N, BLOCK_R], dtype=ACC), PRECISION)
        tl.store(products + r[None, :], product, mask=row_mask[:, None] & r_mask[None, :])
    if arrive_last(counter_ptr + tile, num_c_blocks):
        for r0 in range(0, CR, BLOCK_R):
            r = r0 + tl.arange(0, BLOCK_R)
            out_mask = row_mask[:, None] & (r < CR)[None, :]
            total = tl.zeros([BLOCK_N, BLOCK_R], dtype=ACC)
            for k0 in range(0, num_c_blocks, SUM_CHUNK):
                for k in tl.static_range(SUM_CHUNK):  # read past L1, which may be stale
                    block = k0 + k
                    total += tl.load(
                        ksum_ptr + (block * N + rows[:, None]).to(tl.int64) * CR + r[None, :],
                        mask=out_mask & (block < num_c_blocks), other=0.0, cache_modifier=".cg")
            if has_b1:
                total += tl.load(b1_ptr + r, mask=r < CR, other=0.0).to(ACC)[None, :]
            tl.store(hidden_ptr + rows[:, None] * CR + r[None, :], total, mask=out_mask)
        tl.store(counter_ptr + tile, 0)  # ready for the next launch
