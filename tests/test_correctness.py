"""Forward and every gradient of each kernel backend against the float64 reference.

The matrix: every variant (activation x gate x bias x residual x post-ReLU) in both layouts and
fp32 / fp16 / bf16, then odd sizes, non-contiguous inputs and mixed parameter precision.
All outputs are poisoned (NaN) before the kernels write them.
"""

import functools

import pytest
import torch

from senet_kernels import squeeze_excite
from senet_kernels.testing import forward_backward_vs_reference

from cases import (DTYPES, VARIANTS, assert_close, backend_device_params, make_inputs,
                   reference64)

BACKENDS = backend_device_params()
BACKEND_PATHS = backend_device_params(paths=True)


def check_forward_backward(backend, args, dtype, *, activation="relu", gate="sigmoid",
                           post_relu=False, grad_layout=None):
    """Run forward + backward of ``backend`` on args and compare with the float64 reference."""
    results = forward_backward_vs_reference(
        functools.partial(squeeze_excite, backend=backend), args, grad_layout=grad_layout,
        activation=activation, gate=gate, post_relu=post_relu)
    for result in results:
        source = args["x"] if result.name == "out" else args[result.name.split()[1]]
        assert result.actual.dtype == source.dtype, f"{result.name} has dtype {result.actual.dtype}"
        assert_close(result.actual, result.expected, dtype, result.name)
    return results[0].actual


@pytest.mark.parametrize("backend,device,path", BACKEND_PATHS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("activation,gate,bias,residual,post_relu", VARIANTS)
def test_variant_matrix(backend, device, path, dtype, channels_last, activation, gate, bias, residual,
                        post_relu, poison):
    args = make_inputs(2, 40, 5, 7, 6, dtype=dtype, channels_last=channels_last, bias=bias,
                       residual=residual, device=device, seed=VARIANTS.index((activation, gate, bias, residual, post_relu)))
    out = check_forward_backward(backend, args, dtype, activation=activation, gate=gate,
                                 post_relu=post_relu)
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


ODD_SHAPES = [  # (N, C, H, W, Cr)
    (1, 1, 1, 1, 1),
    (1, 3, 7, 7, 6),
    (2, 3, 1, 1, 1),
    (1, 2048, 7, 7, 222),
    (2, 2048, 1, 1, 6),
    (3, 40, 7, 7, 222),     # Cr > C
    (2, 24, 19, 23, 6),     # H*W spans several reduction blocks, prime sizes
]


@pytest.mark.parametrize("backend,device,path", BACKEND_PATHS)
@pytest.mark.parametrize("shape", ODD_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_odd_sizes(backend, device, path, shape, channels_last, poison):
    args = make_inputs(*shape, channels_last=channels_last, residual=True, device=device, seed=1)
    check_forward_backward(backend, args, torch.float32, activation="silu", post_relu=True)


@pytest.mark.parametrize("backend,device,path", BACKEND_PATHS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_float32_parameters_with_half_input(backend, device, path, dtype, poison):
    """fp32 master weights with half activations: grads of the weights stay fp32."""
    args = make_inputs(2, 24, 6, 6, 6, dtype=dtype, param_dtype=torch.float32, residual=True,
                       device=device, seed=2)
    check_forward_backward(backend, args, dtype, post_relu=True)


def _non_contiguous_cases():
    def channel_slice(t):          # stride over C: not dense in any layout -> NCHW copy
        return torch.cat([t, t], dim=1)[:, ::2]

    def transposed_hw(t):          # H and W swapped by a view
        return t.transpose(2, 3).contiguous().transpose(2, 3)

    def channels_last_slice(t):    # C still the fastest axis -> channels_last copy
        wide = torch.cat([t, t], dim=1).contiguous(memory_format=torch.channels_last)
        return wide[:, : t.shape[1]]

    return {"channel_slice": channel_slice, "transposed_hw": transposed_hw,
            "channels_last_slice": channels_last_slice}


@pytest.mark.parametrize("backend,device,path", BACKEND_PATHS)
@pytest.mark.parametrize("name,view", list(_non_contiguous_cases().items()), ids=lambda v: v if isinstance(v, str) else "")
def test_non_contiguous_inputs(backend, device, path, name, view, poison):
    args = make_inputs(2, 16, 5, 6, 4, residual=True, device=device, seed=3)
    args["x"] = view(args["x"])
    args["residual"] = view(args["residual"])
    assert not args["x"].is_contiguous()
    assert not args["x"].is_contiguous(memory_format=torch.channels_last)
    check_forward_backward(backend, args, torch.float32, post_relu=True,
                           grad_layout=lambda g: view(g.contiguous()))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_residual_in_other_layout_and_expanded_grad(backend, device, poison):
    args = make_inputs(2, 16, 4, 4, 4, residual=True, channels_last=True, device=device, seed=4)
    args["residual"] = args["residual"].contiguous()
    check_forward_backward(backend, args, torch.float32, post_relu=True)
    x = args["x"].detach().clone().requires_grad_()
    squeeze_excite(x, args["w1"], args["b1"], args["w2"], args["b2"], backend=backend).sum().backward()
    x_ref = args["x"].detach().double().requires_grad_()
    from senet_kernels import squeeze_excite_reference
    squeeze_excite_reference(x_ref, args["w1"].double(), args["b1"].double(), args["w2"].double(),
                             args["b2"].double()).sum().backward()
    assert_close(x.grad, x_ref.grad, torch.float32, "grad x from an expanded (stride-0) grad")


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_conv_shaped_weights(backend, device, poison):
    args = make_inputs(2, 16, 4, 4, 4, device=device, seed=5)
    conv_args = dict(args, w1=args["w1"][:, :, None, None], w2=args["w2"][:, :, None, None])
    out = squeeze_excite(*conv_args.values(), backend=backend)
    expected, _ = reference64(args)
    assert_close(out, expected, torch.float32, "out with 1x1-conv weights")


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_empty_batch(backend, device):
    args = make_inputs(0, 8, 3, 3, 2, residual=True, device=device)
    leaves = {k: v.clone().requires_grad_() for k, v in args.items()}
    out = squeeze_excite(*leaves.values(), backend=backend, post_relu=True)
    assert out.shape == (0, 8, 3, 3)
    out.sum().backward()
    assert leaves["w1"].grad.abs().sum() == 0 and leaves["x"].grad.shape == (0, 8, 3, 3)


def test_poison_fixture_poisons(poison):
    """The poison fixture is what makes unwritten outputs fail: check that it works."""
    assert torch.isnan(torch.empty(16)).all()
    assert torch.isnan(torch.empty_like(torch.ones(2, 3, 4, 5), memory_format=torch.channels_last)).all()


@pytest.mark.parametrize("backend,device,path", BACKEND_PATHS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("activation,gate,tail", [("relu", "hardsigmoid", True), ("silu", "sigmoid", False)])
def test_weight_heavy_shapes(backend, device, path, dtype, channels_last, activation, gate, tail, poison):
    """Small maps with a wide bottleneck (2 * Cr >= H * W): where the C++ CPU kernels run the
    excitation for the whole batch as GEMMs instead of per sample."""
    args = make_inputs(3, 24, 2, 3, 10, dtype=dtype, channels_last=channels_last, residual=tail,
                       device=device, seed=6)
    check_forward_backward(backend, args, dtype, activation=activation, gate=gate, post_relu=tail)
