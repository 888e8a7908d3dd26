"""torch.compile(fullgraph=True) of a network using the SE op: no graph breaks, same numbers.

On the CPU the Triton op is compiled as an opaque custom op. Backends used here: "aot_eager"
(traces forward and backward through AOTAutograd, fast) and "inductor" (the default backend,
generating C++ for the surrounding ops).
"""

import pytest
import torch
from torch import nn

from senet_kernels import squeeze_excite

from cases import assert_close, backend_device_params

BACKENDS = backend_device_params()


class TinySEResidual(nn.Module):
    """conv -> SE with residual + ReLU tail, the SE-ResNet pattern."""

    def __init__(self, c, cr, backend):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.w1 = nn.Parameter(torch.randn(cr, c) * c ** -0.5)
        self.b1 = nn.Parameter(torch.randn(cr) * 0.1)
        self.w2 = nn.Parameter(torch.randn(c, cr) * cr ** -0.5)
        self.b2 = nn.Parameter(torch.randn(c) * 0.1)
        self.backend = backend

    def forward(self, x):
        return squeeze_excite(self.conv(x), self.w1, self.b1, self.w2, self.b2, x,
                              activation="silu", post_relu=True, backend=self.backend)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("compile_backend", ["aot_eager", "inductor"])
def test_compile_fullgraph(backend, device, compile_backend):
    torch.manual_seed(0)
    model = TinySEResidual(12, 3, backend).to(device)
    x = torch.randn(2, 12, 5, 5, device=device, requires_grad=True)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend=compile_backend)
    out = compiled(x)
    expected = model(x)
    assert_close(out, expected.double(), torch.float32, "compiled forward")
    grads = torch.autograd.grad(out.square().sum(), [x, model.w1, model.conv.weight])
    expected_grads = torch.autograd.grad(expected.square().sum(), [x, model.w1, model.conv.weight])
    for g, e in zip(grads, expected_grads):
        assert_close(g, e.double(), torch.float32, "compiled backward")
