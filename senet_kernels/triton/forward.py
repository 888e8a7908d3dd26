"""Forward kernels: squeeze + excitation in one launch, then scale (+ residual) (+ ReLU) in one.

Kernel A, ``se_squeeze_excite_fwd``: grid (channel blocks * HW splits, N). Each program sums
its [channels, HW range] slab of one sample into ``partials`` [N, S, C]; with EXCITE, the last
program to arrive at a sample (an atomic counter per sample) finishes that sample: pooled =
sum / HW, hidden = W1 pooled + b1, scale = gate(W2 act(hidden) + b2); without FC2 (``has_fc2``
0, the single-FC form: W1 is [C, C]) scale = gate(hidden), stored as hidden is made. One launch, no host
round trip. Without EXCITE it only leaves the partial sums, for the batched excitation
(batched.py), which weight-heavy shapes use instead of the per-sample tail.

Kernel B, ``se_scale_fwd``: grid (blocks of a sample's C*HW elements, N). One streaming pass:
out = relu?(x * scale[n, c] + residual?), computed in the compute dtype, rounded once.
"""

import triton
import triton.language as tl

from .common import (FLAGS, apply_gate, arrive_last, matvec_block, reduce_slab_share,
                     streaming_block, sum_partials)


@triton.jit(do_not_specialize=FLAGS)
def se_squeeze_excite_fwd(
    x_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr,
    partial_ptr, counter_ptr, pooled_ptr, hidden_ptr, scale_ptr,
    C, HW, CR, HW_PER_SPLIT, NUM_SPLITS, has_b1, has_b2, has_fc2, act, gate,
    EXCITE: tl.constexpr, CHANNELS_LAST: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr, REDUCE_STAGES: tl.constexpr, FC_BLOCK_C: tl.constexpr,
    FC_BLOCK_R: tl.constexpr, ACC: tl.constexpr,
):
    n = reduce_slab_share(x_ptr, x_ptr, x_ptr, x_ptr, partial_ptr, C, HW, HW_PER_SPLIT, NUM_SPLITS,
                          0, False, CHANNELS_LAST, BLOCK_C, BLOCK_HW, REDUCE_STAGES, ACC)
    if EXCITE:
        if arrive_last(counter_ptr + n, tl.cdiv(C, BLOCK_C) * NUM_SPLITS):
            fc_c = tl.arange(0, FC_BLOCK_C)
            fc_r = tl.arange(0, FC_BLOCK_R)
            # pooled = (sum of the split partials) / HW
            for c0 in range(0, C, FC_BLOCK_C):
                c = c0 + fc_c
                cm = c < C
                total = sum_partials(partial_ptr, n, c, cm, C, NUM_SPLITS, FC_BLOCK_C, ACC)
                tl.store(pooled_ptr + n * C + c, total / HW, mask=cm)
            tl.debug_barrier()
            # hidden = W1 @ pooled + b1, W1 is [CR, C]
            for r0 in range(0, CR, FC_BLOCK_R):
                r = r0 + fc_r
                rm = r < CR
                h = matvec_block(w1_ptr, pooled_ptr + n * C, r, rm, CR, C, False, act, False,
                                 FC_BLOCK_R, FC_BLOCK_C, ACC)
                if has_b1:
                    h += tl.load(b1_ptr + r, mask=rm, other=0.0).to(ACC)
                tl.store(hidden_ptr + n * CR + r, h, mask=rm)
                if has_fc2 == 0:  # single FC: CR == C, hidden is the gate's input
                    tl.store(scale_ptr + n * C + r, apply_gate(h, gate), mask=rm)
            if has_fc2:
                tl.debug_barrier()
                # scale = gate(W2 @ act(hidden) + b2), W2 is [C, CR]
                for c0 in range(0, C, FC_BLOCK_C):
                    c = c0 + fc_c
                    cm = c < C
                    z = matvec_block(w2_ptr, hidden_ptr + n * CR, c, cm, C, CR, False, act,
                                     True, FC_BLOCK_C, FC_BLOCK_R, ACC)
                    if has_b2:
                        z += tl.load(b2_ptr + c, mask=cm, other=0.0).to(ACC)
                    tl.store(scale_ptr + n * C + c, apply_gate(z, gate), mask=cm)
            tl.store(counter_ptr + n, 0)  # ready for the next launch


@triton.jit
def se_scale_fwd(
    x_ptr, res_ptr, scale_ptr, out_ptr, C, HW, SAMPLE_NUMEL,
    HAS_RESIDUAL: tl.constexpr, POST_RELU: tl.constexpr, CHANNELS_LAST: tl.constexpr,
    BLOCK: tl.constexpr,
):
    n, offs, mask, c, base = streaming_block(C, HW, SAMPLE_NUMEL, CHANNELS_LAST, BLOCK)
    s = tl.load(scale_ptr + n * C + c, mask=mask, other=0.0)
    y = tl.load(x_ptr + base + offs, mask=mask, other=0.0).to(s.dtype) * s
    if HAS_RESIDUAL:
        y += tl.load(res_ptr + base + offs, mask=mask, other=0.0).to(s.dtype)
    if POST_RELU:
        y = tl.maximum(y, 0.0, propagate_nan=tl.PropagateNan.ALL)
    tl.store(out_ptr + base + offs, y.to(out_ptr.dtype.element_ty), mask=mask)
