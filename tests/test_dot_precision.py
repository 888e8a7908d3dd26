"""Input precision of the Triton excitation GEMMs: tf32x3, or two TF32 products where the
weights (every GEMM's B operand) are float16 / bfloat16 and so exact in TF32.

The interpreter computes ``tl.dot`` in full float32 whatever the precision, so the kernels'
results cannot show TF32 rounding here. What is tested instead: the dispatcher's choice per
weight dtype, the split of the A operand by the kernel helper itself (run in the interpreter),
and, with TF32 emulated as the tensor cores do it, that the two-product split keeps
float32-level accuracy where plain TF32 would not.
"""

import pytest
import torch
import triton
import triton.language as tl

from senet_kernels.backends import backend_status
from senet_kernels.triton import configs, se_op
from senet_kernels.triton.common import _tf32_high_part
from senet_kernels.triton.launcher import recording_launches

from cases import make_inputs

pytestmark = pytest.mark.skipif(not backend_status("triton").available,
                                reason=backend_status("triton").reason)

GEMMS = {"se_excite_gemm_c_to_r", "se_excite_gemm_r_to_c"}


@pytest.mark.parametrize("x_dtype,w_dtype,precision", [
    (torch.bfloat16, torch.bfloat16, "tf32_split_a"),
    (torch.float16, torch.float16, "tf32_split_a"),
    (torch.bfloat16, torch.float32, "tf32x3"),   # fp32 master weights with half activations
    (torch.float32, torch.float32, "tf32x3"),
])
def test_gemms_split_only_what_tf32_cannot_hold(device, x_dtype, w_dtype, precision):
    args = make_inputs(4, 64, 3, 3, 16, dtype=x_dtype, param_dtype=w_dtype, residual=True,
                       device=device)
    with configs.force_excitation_path("batched"), recording_launches(run_too=False) as launches:
        out, pooled, hidden, scale = se_op.se_forward(*args.values(), "relu", "sigmoid", True)
        se_op.se_backward(torch.randn_like(out), args["x"], out, args["w1"], args["w2"], pooled,
                          hidden, scale, True, "relu", "sigmoid")
    gemms = [l for l in launches if l.kernel.__name__ in GEMMS]
    assert len(gemms) == 4  # FC1, FC2 forward; both backward
    assert {l.constexprs["PRECISION"] for l in gemms} == {precision}


@triton.jit
def _high_part_kernel(a_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(out_ptr + offs, _tf32_high_part(tl.load(a_ptr + offs, mask=mask)), mask=mask)


def _run_high_part(a):
    out = torch.full_like(a, float("nan"))
    _high_part_kernel[(1,)](a, out, a.numel(), BLOCK=triton.next_power_of_2(a.numel()))
    return out


def test_high_part_is_exact_in_tf32_and_leaves_an_exact_rest(device):
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(1000, generator=gen) * torch.logspace(-30, 30, 1000)
    specials = torch.tensor([0.0, -0.0, 1.0, -2.5, 1e-40, -1e-42, float("inf"), float("-inf"),
                             float("nan"), 3.4e38])
    a = torch.cat([a, specials]).to(device)
    high = _run_high_part(a)
    bits = high.view(torch.int32)
    finite = torch.isfinite(a)
    assert not (bits[finite] & 0x1FFF).any(), "low 13 mantissa bits must be zero"
    # a = high + (a - high) exactly, and for normal numbers the rest is below TF32's last
    # place of a (a subnormal's bits may all be in the rest, as in TF32x3's split)
    rest = a[finite] - high[finite]
    assert torch.equal(high[finite] + rest, a[finite])
    normal = a[finite].abs() >= torch.finfo(torch.float32).tiny
    assert (rest[normal].abs() <= a[finite][normal].abs() * 2.0 ** -10).all()
    assert torch.equal(high[~finite].isnan(), a[~finite].isnan())
    assert torch.equal(high[a.isinf()], a[a.isinf()])


def _tf32(t):
    """What a TF32 tensor core takes of a float32 operand: the 13 low mantissa bits dropped."""
    return (t.view(torch.int32) & ~0x1FFF).view(torch.float32)


@pytest.mark.parametrize("w_dtype", [torch.float16, torch.bfloat16])
def test_two_products_keep_float32_accuracy_with_half_weights(w_dtype):
    """Emulated: high @ w + low @ w with TF32 operands vs the float64 product. Half-precision
    weights pass through TF32 unchanged, so the split loses nothing TF32x3 would keep; plain
    TF32 is ~1000x worse (what put float16 weight gradients over tolerance)."""
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(64, 2048, generator=gen) + 0.3     # pooled features / gate gradients
    w = (torch.randn(2048, 128, generator=gen) * 2048 ** -0.5).to(w_dtype).float()
    assert torch.equal(_tf32(w), w)
    exact = a.double() @ w.double()
    high = _tf32(a)
    split = _tf32(a - high) @ w + high @ w   # accumulated in float32, as on the GPU
    plain = _tf32(a) @ w
    fp32 = a @ w

    def rel(t):
        return ((t.double() - exact).norm() / exact.norm()).item()
    assert rel(split) <= 3 * rel(fp32)
    assert rel(plain) > 100 * rel(split)
