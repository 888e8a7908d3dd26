"""How a call reaches the kernels: the eager fast path, the custom op, CUDA graphs.

In eager mode ``squeeze_excite`` calls a backend's kernels directly (an autograd.Function when
a gradient is needed); under torch.compile or a dispatch mode it calls the custom op. Both must
give the same numbers. CUDA graph capture (``torch.cuda.graph`` and
``torch.compile(mode="reduce-overhead")``) needs a GPU: those tests skip without one.
"""

import dataclasses

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from senet_kernels import backends, squeeze_excite
from senet_kernels.baselines import eager_se

from cases import assert_close, backend_device_params, make_inputs, reference64

BACKENDS = backend_device_params()
requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


def _run(backend, args, grad, **options):
    leaves = [None if v is None else v.detach().clone().requires_grad_() for v in args.values()]
    out = squeeze_excite(*leaves, backend=backend, **options)
    used = [t for t in leaves if t is not None]
    return out, torch.autograd.grad(out, used, grad)


class _Passthrough(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_eager_path_and_custom_op_agree(backend, device):
    """The same kernels either way: bitwise equal outputs and gradients."""
    args = make_inputs(3, 24, 5, 5, 6, residual=True, device=device, seed=11)
    grad = torch.randn(3, 24, 5, 5, device=device)
    options = dict(activation="silu", gate="hardsigmoid", post_relu=True)
    out, grads = _run(backend, args, grad, **options)
    with _Passthrough():  # a dispatch mode is active: the call goes through the custom op
        out_op, grads_op = _run(backend, args, grad, **options)
    assert torch.equal(out, out_op)
    for g, g_op in zip(grads, grads_op):
        assert torch.equal(g, g_op)
    expected, _ = reference64(args, **options)
    assert_close(out, expected, torch.float32, "out")


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_eager_call_skips_the_dispatcher(backend, device, monkeypatch):
    """Eager calls run the kernels without the custom op; a dispatch mode sees the op."""
    kernels = backends.backend_kernels(backend)
    calls = []

    def counting(op):
        def call(*a):
            calls.append(op)
            return op(*a)
        return call

    ops = dataclasses.replace(kernels.ops, forward=counting(kernels.ops.forward))
    monkeypatch.setitem(backends._kernel_backends, backend, dataclasses.replace(kernels, ops=ops))
    args = make_inputs(2, 8, 3, 3, 2, device=device, seed=12)
    with torch.no_grad():
        squeeze_excite(*args.values(), backend=backend)
    leaves = [v.clone().requires_grad_() for v in args.values() if v is not None]
    squeeze_excite(*leaves, None, backend=backend).sum().backward()
    assert calls == []
    with _Passthrough():
        squeeze_excite(*args.values(), backend=backend)
    assert len(calls) == 1


def test_eager_baseline_matches_reference():
    """The timm-style eager baseline of the benchmarks computes the same block."""
    for post_relu, residual in ((True, True), (False, False)):
        args = make_inputs(2, 16, 5, 5, 4, residual=residual, seed=13)
        for activation, gate in (("relu", "sigmoid"), ("silu", "hardsigmoid")):
            options = dict(activation=activation, gate=gate, post_relu=post_relu)
            expected, _ = reference64(args, **options)
            assert_close(eager_se(*args.values(), **options), expected, torch.float32, "eager_se")


def _graph_inputs(n, c, hw, cr, seed):
    return make_inputs(n, c, hw, hw, cr, dtype=torch.bfloat16, channels_last=True, residual=True,
                       device="cuda", seed=seed)


@requires_gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("shape", [(4, 64, 8, 4), (8, 512, 7, 32)], ids=["per_sample", "batched"])
def test_cuda_graph_capture_forward_and_backward(backend, shape):
    """Capture forward + backward once, replay on new data: same as eager on that data."""
    if not backends.backend_status(backend).available:
        pytest.skip(backends.backend_status(backend).reason)
    n, c, hw, cr = shape
    static = {k: v.clone().requires_grad_() for k, v in _graph_inputs(n, c, hw, cr, 0).items()}
    grad = torch.randn(n, c, hw, hw, device="cuda", dtype=torch.bfloat16)

    def step():
        out = squeeze_excite(*static.values(), backend=backend, post_relu=True)
        return (out,) + torch.autograd.grad(out, list(static.values()), grad)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # warm-up: compile kernels, make plans, outside the capture
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    for seed in (1, 2):
        fresh = _graph_inputs(n, c, hw, cr, seed)
        with torch.no_grad():
            for k, v in fresh.items():
                static[k].copy_(v)
        graph.replay()
        torch.cuda.synchronize()
        leaves = {k: v.clone().requires_grad_() for k, v in fresh.items()}
        out = squeeze_excite(*leaves.values(), backend=backend, post_relu=True)
        expected = (out,) + torch.autograd.grad(out, list(leaves.values()), grad)
        for got, want in zip(captured, expected):
            if backend == "triton":  # the same kernels on the same data: the same bits
                assert torch.equal(got, want)
            else:  # cuBLAS may pick another algorithm inside a capture
                torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2)


@requires_gpu
def test_torch_compile_reduce_overhead():
    """torch.compile(mode="reduce-overhead") (CUDA graphs via cudagraph trees) runs the op."""
    args = _graph_inputs(8, 512, 7, 32, 3)

    def block(x, w1, b1, w2, b2, residual):
        return squeeze_excite(x, w1, b1, w2, b2, residual, post_relu=True, backend="triton")

    compiled = torch.compile(block, mode="reduce-overhead", fullgraph=True)
    expected, _ = reference64(args, post_relu=True)
    for _ in range(3):  # the first calls record, later ones replay the graph
        out = compiled(*args.values())
        assert_close(out.clone(), expected, torch.bfloat16, "reduce-overhead output")


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_torch_func_transforms_see_the_op(backend, device):
    """torch.func wraps tensors: the call goes through the custom op (vmap's fallback runs it
    per sample), not the eager fast path, which would need raw data pointers."""
    args = make_inputs(3, 8, 3, 3, 2, device=device, seed=15)
    x, w1, b1, w2, b2 = (args[k] for k in ("x", "w1", "b1", "w2", "b2"))

    def one(sample):
        return squeeze_excite(sample[None], w1, b1, w2, b2, backend=backend)[0]

    batched = torch.func.vmap(one)(x)
    expected, _ = reference64(args)
    assert_close(batched, expected, torch.float32, "vmap output")
