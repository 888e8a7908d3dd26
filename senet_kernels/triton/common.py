"""Triton device functions shared by the forward and backward kernels.

Activation and gate are runtime integer codes (``spec.ACTIVATION_CODE`` / ``spec.GATE_CODE``):
they only run in the per-sample excitation tail, so selecting with ``tl.where`` costs nothing
measurable and saves a compiled variant per combination.
"""

import triton
import triton.language as tl

#: Runtime flags of the kernels (0/1 or small codes): ``@triton.jit(do_not_specialize=FLAGS)``
#: keeps one compiled kernel for every value, instead of one more wherever a flag equals 1
#: (Triton turns integer arguments equal to 1 into constants), so what the ahead-of-time
#: compile covers is what runs. Names a kernel does not have are ignored.
FLAGS = ["has_b1", "has_b2", "has_bias", "act", "gate"]


@triton.jit
def _sigmoid(v):
    return 1.0 / (1.0 + tl.exp(-v))


@triton.jit
def activate(h, act):
    """act 0: relu, 1: silu."""
    return tl.where(act == 0, tl.maximum(h, 0.0), h * _sigmoid(h))


@triton.jit
def activate_grad(h, act):
    """d act(h) / dh. ReLU's derivative at 0 is 0, as in PyTorch."""
    sig = _sigmoid(h)
    return tl.where(act == 0, tl.where(h > 0.0, 1.0, 0.0), sig * (1.0 + h * (1.0 - sig)))


@triton.jit
def apply_gate(z, gate):
    """gate 0: sigmoid, 1: hardsigmoid = relu6(z + 3) / 6."""
    hard = tl.minimum(tl.maximum(z + 3.0, 0.0), 6.0) / 6.0
    return tl.where(gate == 0, _sigmoid(z), hard)


@triton.jit
def gate_grad_from_scale(s, gate):
    """d gate(z) / dz written in terms of s = gate(z), so the backward needs no z.

    hardsigmoid has slope 1/6 exactly where it is not clamped, i.e. where 0 < s < 1.
    """
    hard = tl.where((s > 0.0) & (s < 1.0), 1.0 / 6.0, 0.0)
    return tl.where(gate == 0, s * (1.0 - s), hard)


@triton.jit
def dot_acc(a, b, acc, PRECISION: tl.constexpr):
    """acc + a @ b for the small excitation GEMMs, accumulated in acc's dtype.

    float32: tensor cores at PRECISION ("tf32" for half-precision inputs, whose own rounding
    is coarser; "tf32x3" or "ieee" where float32 accuracy is owed). float64 (gradcheck):
    ``tl.dot`` must be told its float64 out_dtype, which the interpreter does not check.
    """
    if acc.dtype == tl.float64:
        return tl.dot(a.to(tl.float64), b.to(tl.float64), acc, input_precision="ieee",
                      out_dtype=tl.float64)
    else:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision=PRECISION)


@triton.jit
def channel_block_sum(x_ptr, g_ptr, out_ptr, c_offs, c_mask, hw_start, hw_end, C, HW,
                      MODE: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                      BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, ACC: tl.constexpr):
    """Sum over hw in [hw_start, hw_end) of one sample's channels ``c_offs``.

    MODE 0 sums x (the squeeze); MODE 1 sums g * x and MODE 2 sums g * (out > 0) * x (the
    backward's gs). Pointers point at the sample's first element; the tile is
    [BLOCK_C, BLOCK_HW] in both layouts and the compiler orders it by which axis is contiguous.
    """
    hw_range = tl.arange(0, BLOCK_HW)
    acc = tl.zeros([BLOCK_C, BLOCK_HW], dtype=ACC)
    for hw0 in range(hw_start, hw_end, BLOCK_HW):
        hw = hw0 + hw_range
        mask = c_mask[:, None] & (hw < hw_end)[None, :]
        if CHANNELS_LAST:
            offs = c_offs[:, None] + hw[None, :] * C
        else:
            offs = c_offs[:, None] * HW + hw[None, :]
        v = tl.load(x_ptr + offs, mask=mask, other=0.0).to(ACC)
        if MODE >= 1:
            g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(ACC)
            if MODE == 2:
                o = tl.load(out_ptr + offs, mask=mask, other=0.0)
                g = tl.where(o > 0, g, 0.0)
            v = v * g
        acc += v
    return tl.sum(acc, axis=1)


@triton.jit
def reduce_slab_share(x_ptr, g_ptr, out_ptr, partial_ptr, C, HW, HW_PER_SPLIT, NUM_SPLITS,
                      MODE: tl.constexpr, CHANNELS_LAST: tl.constexpr, BLOCK_C: tl.constexpr,
                      BLOCK_HW: tl.constexpr, ACC: tl.constexpr):
    """The reduction phase of kernels A and A' (grid: channel blocks * HW splits, N).

    Sums this program's [channel block, HW split] share of sample n (see channel_block_sum for
    MODE) into partials [N, NUM_SPLITS, C]. Returns n.
    """
    n = tl.program_id(1)
    num_c_blocks = tl.cdiv(C, BLOCK_C)
    c_block = tl.program_id(0) % num_c_blocks
    split = tl.program_id(0) // num_c_blocks
    c_offs = c_block * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c_offs < C
    hw_start = split * HW_PER_SPLIT
    hw_end = tl.minimum(hw_start + HW_PER_SPLIT, HW)
    base = n.to(tl.int64) * C * HW
    sums = channel_block_sum(x_ptr + base, g_ptr + base, out_ptr + base, c_offs, c_mask,
                             hw_start, hw_end, C, HW, MODE, CHANNELS_LAST, BLOCK_C, BLOCK_HW, ACC)
    tl.store(partial_ptr + (n * NUM_SPLITS + split) * C + c_offs, sums, mask=c_mask)
    return n


@triton.jit
def sum_partials(partial_ptr, n, c, c_mask, C, NUM_SPLITS, BLOCK: tl.constexpr, ACC: tl.constexpr):
    """Channels c of sample n summed over the HW splits; read past L1, which may be stale."""
    total = tl.zeros([BLOCK], dtype=ACC)
    for s in range(0, NUM_SPLITS):
        total += tl.load(partial_ptr + (n * NUM_SPLITS + s) * C + c, mask=c_mask, other=0.0,
                         cache_modifier=".cg")
    return total


@triton.jit
def arrive_last(counter_ptr, arrivals):
    """Count this program's arrival at its sample; True for the sample's last program.

    The barrier orders every thread's partial-sum stores before the (gpu-scope acq_rel)
    atomic; the last program then sees all partials. It does not reset the counter: the caller's
    last program stores 0 after its work, so the counters are zero again for the next launch.
    """
    tl.debug_barrier()
    count = tl.atomic_add(counter_ptr, 1, sem="acq_rel")
    return count == arrivals - 1
