"""The reference's hard sigmoid in float64 is exact, as the kernels compute it.

PyTorch's CUDA hardsigmoid multiplies by 1/6 rounded to float32 (a saturated gate is
1 + 3e-8 in float64) and its backward does so on every device. The float64 oracle must not
inherit that: on an H200 it failed the float64 double-backward checks of every backend by
6e-10. Here the values and the slopes are compared with the exact formula, on every device.
"""

import pytest
import torch

from senet_kernels.reference import hardsigmoid

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _exact(z):
    return torch.where(z <= -3, 0.0, torch.where(z >= 3, 1.0, (z + 3) / 6))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("grad", [False, True])
def test_float64_values_and_slope_are_exact(device, grad):
    z = torch.linspace(-5, 5, 1001, dtype=torch.float64, device=device)
    z = z[(z.abs() - 3).abs() > 1e-9]  # not at the kinks
    z.requires_grad_(grad)
    y = hardsigmoid(z)
    assert torch.equal(y.detach(), _exact(z.detach()))
    assert (y.detach() == 1).sum() > 0 and (y.detach() == 0).sum() > 0  # both saturations seen
    if grad:
        (slope,) = torch.autograd.grad(y.sum(), z)
        inside = (z.detach() > -3) & (z.detach() < 3)
        assert torch.equal(slope, torch.where(inside, torch.full_like(slope, 1 / 6), torch.zeros_like(slope)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_other_dtypes_keep_pytorchs_values(dtype):
    z = torch.randn(4096, dtype=dtype) * 3
    assert torch.equal(hardsigmoid(z), torch.nn.functional.hardsigmoid(z))


def test_nan_stays_nan():
    z = torch.tensor([float("nan"), 0.0], dtype=torch.float64)
    assert torch.isnan(hardsigmoid(z)[0]) and hardsigmoid(z)[1] == 0.5
    z.requires_grad_()
    assert torch.isnan(hardsigmoid(z)[0])
