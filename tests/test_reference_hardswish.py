"""The reference's hardswish: F.hardswish's values, and one gradient rule wherever h is NaN.

PyTorch's CPU hardswish_backward lets the gradient through a NaN h in its scalar loop and gives
NaN in its vectorized loop, so which one a NaN gets depends on its position in the tensor; its
CUDA kernel lets it through. The reference is the kernels' contract, so it keeps one rule (the
gradient passes), wherever the NaN is, with the other gradients as PyTorch's (selects: 0 where
h <= -3 even for an Inf gradient).
"""

import pytest
import torch
import torch.nn.functional as F

from senet_kernels.reference import hardswish

SPECIALS = [float("nan"), float("inf"), float("-inf"), -3.0, 3.0, 0.0, -1.5, -5.0, 5.0, 1.25]


def _pytorch_scalar_grad(h, grad):
    """PyTorch's gradient taken one element at a time (its scalar loop only)."""
    out = []
    for v, g in zip(h.tolist(), grad.tolist()):
        t = torch.tensor([v], dtype=h.dtype, requires_grad=True)
        out.append(torch.autograd.grad(F.hardswish(t), t, torch.tensor([g], dtype=h.dtype))[0])
    return torch.cat(out)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("position", [0, 37], ids=["vectorized", "tail"])
@pytest.mark.parametrize("grad_value", [1.0, float("inf")], ids=["finite", "inf"])
def test_specials_anywhere_as_pytorch_one_at_a_time(dtype, position, grad_value):
    """Special values at the start of a 48-element tensor (PyTorch's vectorized loop, where a
    NaN h gave a NaN gradient) and in its tail: values equal F.hardswish's, gradients equal
    PyTorch's taken element by element."""
    gen = torch.Generator().manual_seed(position)
    h = torch.randn(48, generator=gen, dtype=torch.float64).to(dtype) * 4
    h[position:position + len(SPECIALS)] = torch.tensor(SPECIALS, dtype=dtype)
    grad = torch.randn(48, generator=gen, dtype=torch.float64).to(dtype)
    grad[position:position + len(SPECIALS)] = grad_value
    leaf = h.clone().requires_grad_()
    y = hardswish(leaf)
    expected = F.hardswish(h)
    assert torch.equal(y.isnan(), expected.isnan())
    finite = ~expected.isnan()
    torch.testing.assert_close(y.detach()[finite], expected[finite], rtol=0, atol=0)
    (actual_grad,) = torch.autograd.grad(y, leaf, grad)
    torch.testing.assert_close(actual_grad, _pytorch_scalar_grad(h, grad), equal_nan=True)


def test_gradgradcheck():
    h = (torch.randn(40, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2)
    h = h[(h.abs() - 3).abs() > 1e-3].requires_grad_()  # not at the kinks
    assert torch.autograd.gradcheck(hardswish, (h,))
    assert torch.autograd.gradgradcheck(hardswish, (h,))


def test_without_grad_is_pytorchs_op():
    h = torch.randn(100, dtype=torch.float32) * 4
    assert torch.equal(hardswish(h), F.hardswish(h))
