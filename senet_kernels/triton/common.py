"""Triton device functions shared by the forward and backward kernels.

Activation and gate are runtime integer codes (``spec.ACTIVATION_CODE`` / ``spec.GATE_CODE``,
bound below as constexprs): they only run in the excitation tails and GEMM epilogues, on
[N, Cr] / [N, C] vectors, so selecting with ``tl.where`` (every activation is computed, one
kept) costs little there and saves a compiled variant per combination (not yet timed on a GPU
with five activations). Each helper names every code; an unknown code yields NaN (the host
maps names through ``spec``, which raises on an unknown one, so this only catches a code
added there and forgotten here).

NaN and Inf propagate exactly as in the PyTorch ops of ``reference.py`` (see csrc/se_math.h,
which computes the same formulas): comparisons with NaN are false, so every clamp is written
as a select that leaves NaN in place (``tl.maximum`` without ``propagate_nan`` may drop it),
and every derivative that is 0 somewhere (ReLU, hardswish, hardsigmoid) is a select, not a
product, so an Inf or NaN incoming gradient gives 0 there, as PyTorch's backward kernels do.
"""

import math

import triton
import triton.language as tl

from ..spec import ACTIVATION_CODE, GATE_CODE, LEAKY_RELU_SLOPE

#: Runtime flags of the kernels (0/1 or small codes): ``@triton.jit(do_not_specialize=FLAGS)``
#: keeps one compiled kernel for every value, instead of one more wherever a flag equals 1
#: (Triton turns integer arguments equal to 1 into constants), so what the ahead-of-time
#: compile covers is what runs. Names a kernel does not have are ignored.
FLAGS = ["has_b1", "has_b2", "has_bias", "has_fc2", "act", "gate"]

RELU: tl.constexpr = tl.constexpr(ACTIVATION_CODE["relu"])
SILU: tl.constexpr = tl.constexpr(ACTIVATION_CODE["silu"])
GELU: tl.constexpr = tl.constexpr(ACTIVATION_CODE["gelu"])
GELU_TANH: tl.constexpr = tl.constexpr(ACTIVATION_CODE["gelu_tanh"])
HARDSWISH: tl.constexpr = tl.constexpr(ACTIVATION_CODE["hardswish"])
LEAKY_RELU: tl.constexpr = tl.constexpr(ACTIVATION_CODE["leaky_relu"])
SIGMOID: tl.constexpr = tl.constexpr(GATE_CODE["sigmoid"])
HARDSIGMOID: tl.constexpr = tl.constexpr(GATE_CODE["hardsigmoid"])


@triton.jit
def _sigmoid(v):
    return 1.0 / (1.0 + tl.exp(-v))


@triton.jit
def _relu(h):
    """torch.relu: NaN stays NaN (``h <= 0`` is false for it)."""
    return tl.where(h <= 0.0, 0.0, h)


@triton.jit
def _unknown(v):
    """The value of an unknown code: NaN, so that a missing case cannot pass for a result."""
    return tl.where(v == v, float("nan"), v)


# GELU's constants, as PyTorch's kernels spell them: 1/sqrt(2), 1/sqrt(2 pi) and sqrt(2/pi).
# Python floats, so that float64 code gets them unrounded. A constexpr goes right of a tensor
# in a product (the interpreter's constexpr * tensor is no tensor).
SQRT1_2: tl.constexpr = tl.constexpr(math.sqrt(0.5))
INV_SQRT_2PI: tl.constexpr = tl.constexpr(1.0 / math.sqrt(2.0 * math.pi))
SQRT_2_OVER_PI: tl.constexpr = tl.constexpr(math.sqrt(2.0 / math.pi))
GELU_TANH_KAPPA: tl.constexpr = tl.constexpr(0.044715)
#: leaky_relu's negative slope (a Python float, as the constants above).
LEAKY_SLOPE: tl.constexpr = tl.constexpr(LEAKY_RELU_SLOPE)


@triton.jit
def _gelu_tanh_inner(h):
    """sqrt(2/pi) (h + 0.044715 h^3), the argument of tanh in nn.GELU(approximate="tanh")."""
    return (h + (h * h * h) * GELU_TANH_KAPPA) * SQRT_2_OVER_PI


@triton.jit
def _one_plus_tanh(u):
    """1 + tanh(u) = 2 sigmoid(2u): Triton's core language has no tanh, and this form has no
    cancellation where tanh(u) is near -1. +-Inf give 2 / 0, NaN stays NaN."""
    return 2.0 / (1.0 + tl.exp(-2.0 * u))


@triton.jit
def _hardswish(h):
    """h * relu6(h + 3) / 6 with NaN kept (PyTorch's CPU formula and order): -Inf gives NaN
    (-Inf * 0), as in PyTorch."""
    v = h + 3.0
    v = tl.where(v <= 0.0, 0.0, v)
    return h * tl.where(v >= 6.0, 6.0, v) / 6.0


@triton.jit
def _leaky_relu(h):
    """F.leaky_relu: h > 0 ? h : h * slope, so NaN stays NaN (h * slope)."""
    return tl.where(h > 0.0, h, h * LEAKY_SLOPE)


@triton.jit
def activate(h, act):
    """act(h) for every activation code (see spec.ACTIVATIONS)."""
    gelu = h * 0.5 * (1.0 + tl.erf(h * SQRT1_2))
    gelu_tanh = 0.5 * h * _one_plus_tanh(_gelu_tanh_inner(h))
    return tl.where(act == RELU, _relu(h),
                    tl.where(act == SILU, h * _sigmoid(h),
                             tl.where(act == GELU, gelu,
                                      tl.where(act == GELU_TANH, gelu_tanh,
                                               tl.where(act == HARDSWISH, _hardswish(h),
                                                        tl.where(act == LEAKY_RELU, _leaky_relu(h),
                                                                 _unknown(h)))))))


@triton.jit
def activate_backward(ga, h, act):
    """ga * act'(h), as PyTorch's backward kernels compute it (formula and order; csrc/se_math.h
    writes the same).

    ReLU: threshold_backward on relu(h), so 0 where h <= 0 (relu'(0) = 0, as in PyTorch) and
    ga elsewhere, where h is NaN too. SiLU: silu_backward. GELU: gelu_backward, erf form
    ga * (cdf + h * pdf), tanh form ga * (left' + left * tanh' * inner') with tanh' = 1 - tanh^2
    written (1 + tanh)(1 - tanh) (see _one_plus_tanh); at h = +-Inf both are NaN (Inf * 0), as
    in PyTorch. Hardswish: a select, 0 where h <= -3 (an Inf ga included), ga * (h / 3 + 1/2)
    where -3 < h < 3, ga elsewhere, a NaN h included (PyTorch's scalar and CUDA kernels; the
    reference keeps that rule, see reference.hardswish). LeakyReLU: leaky_relu_backward,
    h > 0 ? ga : ga * slope (a NaN h takes ga * slope).
    """
    sig = _sigmoid(h)
    silu = ga * sig * (1.0 + h * (1.0 - sig))
    relu = tl.where(h <= 0.0, 0.0, ga)
    cdf = 0.5 * (1.0 + tl.erf(h * SQRT1_2))
    pdf = tl.exp(-0.5 * h * h) * INV_SQRT_2PI
    gelu = ga * (cdf + h * pdf)
    inner = _gelu_tanh_inner(h)
    left = 0.5 * h
    tanh_derivative = _one_plus_tanh(inner) * _one_plus_tanh(-inner)
    inner_derivative = (1.0 + (h * h) * (3.0 * GELU_TANH_KAPPA)) * SQRT_2_OVER_PI
    gelu_tanh = ga * (0.5 * _one_plus_tanh(inner) + left * tanh_derivative * inner_derivative)
    hardswish = tl.where(h <= -3.0, 0.0, tl.where(h < 3.0, ga * (h / 3.0 + 0.5), ga))
    leaky_relu = tl.where(h > 0.0, ga, ga * LEAKY_SLOPE)
    return tl.where(act == RELU, relu,
                    tl.where(act == SILU, silu,
                             tl.where(act == GELU, gelu,
                                      tl.where(act == GELU_TANH, gelu_tanh,
                                               tl.where(act == HARDSWISH, hardswish,
                                                        tl.where(act == LEAKY_RELU, leaky_relu,
                                                                 _unknown(ga)))))))


@triton.jit
def apply_gate(z, gate):
    """gate(z) for gate SIGMOID or HARDSIGMOID = relu6(z + 3) / 6 (NaN stays NaN)."""
    v = z + 3.0
    v = tl.where(v <= 0.0, 0.0, v)
    hard = tl.where(v >= 6.0, 6.0, v) / 6.0
    return tl.where(gate == SIGMOID, _sigmoid(z),
                    tl.where(gate == HARDSIGMOID, hard, _unknown(z)))


@triton.jit
def gate_backward(gs, s, gate):
    """gs * gate'(z), written from s = gate(z) so the backward needs no z.

    sigmoid: PyTorch's ``gs * (1 - s) * s``. hardsigmoid has slope 1/6 exactly where it is
    not clamped, i.e. where 0 < s < 1; elsewhere (and for NaN s) the result is 0 whatever gs
    is, as in PyTorch's hardsigmoid_backward.
    """
    hard = tl.where((s > 0.0) & (s < 1.0), gs * (1.0 / 6.0), 0.0)
    return tl.where(gate == SIGMOID, gs * (1.0 - s) * s,
                    tl.where(gate == HARDSIGMOID, hard, _unknown(gs)))


@triton.jit
def _tf32_high_part(a):
    """float32 ``a`` with its 13 low mantissa bits cleared: exact in TF32, and ``a`` minus it
    is exact in float32. NaN stays NaN (arithmetic NaNs keep their top mantissa bits), Inf
    stays Inf."""
    return (a.to(tl.uint32, bitcast=True) & 0xFFFFE000).to(tl.float32, bitcast=True)


@triton.jit
def dot_acc(a, b, acc, PRECISION: tl.constexpr):
    """acc + a @ b for the small excitation GEMMs, accumulated in acc's dtype.

    float32: tensor cores at PRECISION ("tf32x3", ``configs.dot_precision``), or
    "tf32_split_a" where ``b`` is exact in TF32 (float16 / bfloat16 weights: their
    mantissas fit TF32's 10 bits): then only ``a`` is split, a = high + low with the high part
    exact in TF32, and high @ b + low @ b is what tf32x3 computes less its third product,
    which is zero for such a ``b``: float32-level accuracy in two tensor-core products instead
    of three. As in tf32x3, a NaN of the low product (an Inf in ``a`` gives Inf - Inf there)
    is dropped: the high product carries the Inf. float64 (gradcheck): ``tl.dot`` must be
    told its float64 out_dtype, which the interpreter does not check.
    """
    if acc.dtype == tl.float64:
        return tl.dot(a.to(tl.float64), b.to(tl.float64), acc, input_precision="ieee",
                      out_dtype=tl.float64)
    elif PRECISION == "tf32_split_a":
        a = a.to(tl.float32)
        b = b.to(tl.float32)
        high = _tf32_high_part(a)
        low = tl.dot(a - high, b, input_precision="tf32")
        low = tl.where(low != low, 0.0, low)
        return tl.dot(high, b, acc + low, input_precision="tf32")
    else:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision=PRECISION)


@triton.jit
def matvec_block(w_ptr, v_ptr, o, o_mask, OUT, K, TRANSPOSED: tl.constexpr, act,
                 ACTIVATE_V: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr,
                 ACC: tl.constexpr):
    """Outputs ``o`` (mask ``o_mask``) of W @ v, for the per-sample excitation tails.

    W is row-major: [OUT, K] (row o holds output o's weights), or with TRANSPOSED [K, OUT] and
    the product is W^T @ v. ``v`` [K] is read in blocks of BLOCK_K, through ``act`` with
    ACTIVATE_V. Returns the [BLOCK_O] sums in ACC.
    """
    k_range = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_O], dtype=ACC)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + k_range
        k_mask = k < K
        v = tl.load(v_ptr + k, mask=k_mask, other=0.0)
        if ACTIVATE_V:
            v = activate(v, act)
        if TRANSPOSED:
            w = tl.load(w_ptr + k[:, None] * OUT + o[None, :],
                        mask=k_mask[:, None] & o_mask[None, :], other=0.0).to(ACC)
            acc += tl.sum(w * v[:, None], axis=0)
        else:
            w = tl.load(w_ptr + o[:, None] * K + k[None, :],
                        mask=o_mask[:, None] & k_mask[None, :], other=0.0).to(ACC)
            acc += tl.sum(w * v[None, :], axis=1)
    return acc


@triton.jit
def tile_offsets(c_offs, c_mask, hw0, hw_end, C, HW, CHANNELS_LAST: tl.constexpr,
                 BLOCK_HW: tl.constexpr):
    """(offsets in a sample, mask) of the [channels, BLOCK_HW pixels from hw0] tile of a
    per-channel reduction, pixels up to hw_end, in either layout."""
    hw = hw0 + tl.arange(0, BLOCK_HW)
    mask = c_mask[:, None] & (hw < hw_end)[None, :]
    if CHANNELS_LAST:
        offs = c_offs[:, None] + hw[None, :] * C
    else:
        offs = c_offs[:, None] * HW + hw[None, :]
    return offs, mask


@triton.jit
def channel_block_sum(x_ptr, g_ptr, out_ptr, masked_ptr, c_offs, c_mask, hw_start, hw_end, C, HW,
                      MODE: tl.constexpr, STORE_MASKED: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                      BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, STAGES: tl.constexpr,
                      ACC: tl.constexpr):
    """Sum over hw in [hw_start, hw_end) of one sample's channels ``c_offs``.

    MODE 0 sums x (the squeeze); MODE 1 sums g * x and MODE 2 sums gy * x with
    gy = (out <= 0 ? 0 : g) (the backward's gs behind the ReLU tail: threshold_backward, where
    a NaN output passes g). With STORE_MASKED (MODE 2) gy is also stored to ``masked_ptr``, in
    g's dtype: it is the residual's gradient, and the grad_x pass then reads it instead of g
    and out. Pointers point at the sample's first element; the tile is [BLOCK_C, BLOCK_HW] in
    both layouts and the compiler orders it by which axis is contiguous. STAGES > 1 has the
    compiler software-pipeline the loop (loads of the next STAGES - 1 tiles in flight through
    shared memory while one is summed); 1 leaves it a plain loop, one tile load at a time.
    """
    acc = tl.zeros([BLOCK_C, BLOCK_HW], dtype=ACC)
    for hw0 in tl.range(hw_start, hw_end, BLOCK_HW, num_stages=STAGES):
        offs, mask = tile_offsets(c_offs, c_mask, hw0, hw_end, C, HW, CHANNELS_LAST, BLOCK_HW)
        acc += reduction_term(x_ptr, g_ptr, out_ptr, masked_ptr, offs, mask, MODE, STORE_MASKED,
                              ACC)
    return tl.sum(acc, axis=1)


@triton.jit
def reduction_term(x_ptr, g_ptr, out_ptr, masked_ptr, offs, mask, MODE: tl.constexpr,
                   STORE_MASKED: tl.constexpr, ACC: tl.constexpr):
    """The summed term at ``offs`` (mask ``mask``) of a per-channel reduction, in ACC: x
    (MODE 0), g * x (MODE 1) or gy * x with gy = (out <= 0 ? 0 : g) (MODE 2, PyTorch's
    threshold_backward: a NaN output passes g), gy also stored to ``masked_ptr`` in g's dtype
    with STORE_MASKED."""
    v = tl.load(x_ptr + offs, mask=mask, other=0.0).to(ACC)
    if MODE >= 1:
        g = tl.load(g_ptr + offs, mask=mask, other=0.0)
        if MODE == 2:
            o = tl.load(out_ptr + offs, mask=mask, other=0.0)
            g = tl.where(o <= 0, 0.0, g).to(g.dtype)
            if STORE_MASKED:
                tl.store(masked_ptr + offs, g, mask=mask)
        v = v * g.to(ACC)
    return v


@triton.jit
def reduction_share(C, HW, HW_PER_SPLIT, BLOCK_C: tl.constexpr):
    """This program's share of a per-channel reduction (grid: channel blocks * HW splits, N):
    (n, channel block, split, channels, their mask, first pixel, end pixel, sample offset)."""
    n = tl.program_id(1)
    num_c_blocks = tl.cdiv(C, BLOCK_C)
    c_block = tl.program_id(0) % num_c_blocks
    split = tl.program_id(0) // num_c_blocks
    c_offs = c_block * BLOCK_C + tl.arange(0, BLOCK_C)
    hw_start = split * HW_PER_SPLIT
    hw_end = tl.minimum(hw_start + HW_PER_SPLIT, HW)
    return (n, c_block, split, c_offs, c_offs < C, hw_start, hw_end,
            n.to(tl.int64) * C * HW)


@triton.jit
def streaming_block(C, HW, SAMPLE_NUMEL, CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr):
    """This program's block of a per-element pass (grid: blocks of a sample's C*HW elements,
    N): (n, element offsets in the sample, their mask, their channels, sample offset)."""
    n = tl.program_id(1)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    if CHANNELS_LAST:
        c = offs % C
    else:
        c = offs // HW
    return n, offs, offs < SAMPLE_NUMEL, c, n.to(tl.int64) * SAMPLE_NUMEL


@triton.jit
def masked_grad(grad_ptr, out_ptr, grad_res_ptr, offs, mask, POST_RELU: tl.constexpr,
                WRITE_GRAD_RESIDUAL: tl.constexpr, GRAD_RESIDUAL_WRITTEN: tl.constexpr):
    """The gradient past the ReLU tail at ``offs``: gy = (out <= 0 ? 0 : g) with POST_RELU
    (threshold_backward: a NaN output passes g), else g; stored to ``grad_res_ptr`` with
    WRITE_GRAD_RESIDUAL; read back from there instead with GRAD_RESIDUAL_WRITTEN (the
    reduction pass stored it: one read instead of g and out)."""
    if GRAD_RESIDUAL_WRITTEN:
        gy = tl.load(grad_res_ptr + offs, mask=mask, other=0.0)
    else:
        gy = tl.load(grad_ptr + offs, mask=mask, other=0.0)
        if POST_RELU:
            o = tl.load(out_ptr + offs, mask=mask, other=0.0)
            gy = tl.where(o <= 0, 0.0, gy).to(gy.dtype)
        if WRITE_GRAD_RESIDUAL:
            tl.store(grad_res_ptr + offs, gy, mask=mask)
    return gy


@triton.jit
def reduce_slab_share(x_ptr, g_ptr, out_ptr, masked_ptr, partial_ptr, C, HW, HW_PER_SPLIT,
                      NUM_SPLITS, MODE: tl.constexpr, STORE_MASKED: tl.constexpr,
                      CHANNELS_LAST: tl.constexpr, BLOCK_C: tl.constexpr,
                      BLOCK_HW: tl.constexpr, STAGES: tl.constexpr, ACC: tl.constexpr):
    """The reduction phase of kernels A and A' (grid: channel blocks * HW splits, N).

    Sums this program's [channel block, HW split] share of sample n (see channel_block_sum for
    MODE and STORE_MASKED) into partials [N, NUM_SPLITS, C]. Returns n.
    """
    n, _, split, c_offs, c_mask, hw_start, hw_end, base = reduction_share(C, HW, HW_PER_SPLIT,
                                                                          BLOCK_C)
    sums = channel_block_sum(x_ptr + base, g_ptr + base, out_ptr + base, masked_ptr + base, c_offs,
                             c_mask, hw_start, hw_end, C, HW, MODE, STORE_MASKED, CHANNELS_LAST,
                             BLOCK_C, BLOCK_HW, STAGES, ACC)
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
