"""torch.func transforms over the SE op: grad, jacrev, jacfwd, hessian, vmap and per-sample
gradients.

Every kernel backend that runs here is checked against the reference backend in float64
(senet_kernels/func_transforms.py: the forward runs the backend's kernels, the backward is
PyTorch ops, the jvp the reference's tangent, vmap folds the vmapped dimension into N or
loops over it).
"""

import pytest
import torch
from torch.func import functional_call, grad, hessian, jacfwd, jacrev, vmap

from senet_kernels import FusedSEBlock, backends, squeeze_excite

from cases import assert_close, backend_device_params, make_inputs

BACKENDS = backend_device_params()
DTYPES = (torch.float64, torch.float32)
#: activation, gate, residual, post_relu
VARIANTS = [("relu", "sigmoid", False, False), ("silu", "hardsigmoid", True, True),
            ("relu", "hardsigmoid", True, False), ("silu", "sigmoid", False, True)]
NAMES = ("x", "w1", "b1", "w2", "b2", "residual")


def _inputs(n, dtype, residual, device, seed, c=6, h=3, cr=3):
    return make_inputs(n, c, h, h, cr, dtype=dtype, residual=residual, device=device,
                       seed=seed)


def _float64(args):
    return {k: None if v is None else v.detach().double() for k, v in args.items()}


def _upstream(shape, dtype, device, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation,gate,residual,post_relu", VARIANTS)
def test_grad_matches_the_reference(backend, device, dtype, activation, gate, residual,
                                    post_relu):
    args = _inputs(3, dtype, residual, device, seed=1)
    names = [k for k, v in args.items() if v is not None]
    upstream = _upstream(args["x"].shape, dtype, device, seed=2)

    def loss(backend, upstream, *tensors):
        kw = dict(zip(names, tensors))
        out = squeeze_excite(kw["x"], kw["w1"], kw.get("b1"), kw["w2"], kw.get("b2"),
                             kw.get("residual"), activation=activation, gate=gate,
                             post_relu=post_relu, backend=backend)
        return (out * upstream).sum()

    argnums = tuple(range(2, 2 + len(names)))
    actual = grad(loss, argnums=argnums)(backend, upstream, *(args[k] for k in names))
    args64 = _float64(args)
    expected = grad(loss, argnums=argnums)("reference", upstream.double(),
                                           *(args64[k] for k in names))
    for name, a, e in zip(names, actual, expected):
        assert a.dtype == args[name].dtype, name
        assert_close(a, e, dtype, f"grad {name}")


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("post_relu", (False, True))
def test_jacrev_matches_the_reference(backend, device, dtype, post_relu):
    args = _inputs(2, dtype, True, device, seed=3, c=4, h=2, cr=2)

    def block(backend, x, w1, b2, residual):
        return squeeze_excite(x, w1, args_b1[backend], args_w2[backend], b2, residual,
                              post_relu=post_relu, backend=backend)

    args64 = _float64(args)
    args_b1 = {backend: args["b1"], "reference": args64["b1"]}
    args_w2 = {backend: args["w2"], "reference": args64["w2"]}
    wrt = ("x", "w1", "b2", "residual")
    actual = jacrev(block, argnums=(1, 2, 3, 4))(backend, *(args[k] for k in wrt))
    expected = jacrev(block, argnums=(1, 2, 3, 4))("reference", *(args64[k] for k in wrt))
    for name, a, e in zip(wrt, actual, expected):
        assert_close(a, e, dtype, f"jacobian w.r.t. {name}")


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("activation,gate,residual,post_relu", VARIANTS[:2])
def test_forward_mode_matches_the_reference(backend, device, activation, gate, residual,
                                            post_relu):
    """jacfwd (the Function's jvp) and hessian (jacfwd of jacrev: forward mode through the
    backward), in float64."""
    args = _inputs(2, torch.float64, residual, device, seed=12, c=4, h=2, cr=2)
    options = dict(activation=activation, gate=gate, post_relu=post_relu)

    def block(backend, x, w1, b1):
        return squeeze_excite(x, w1, b1, args["w2"], args["b2"], args["residual"],
                              backend=backend, **options)

    def loss(backend, w1, b1):
        return block(backend, args["x"], w1, b1).square().sum()

    wrt = (args["x"], args["w1"], args["b1"])
    actual = jacfwd(block, argnums=(1, 2, 3))(backend, *wrt)
    expected = jacfwd(block, argnums=(1, 2, 3))("reference", *wrt)
    for name, a, e in zip(("x", "w1", "b1"), actual, expected):
        assert_close(a, e, torch.float64, f"jacfwd w.r.t. {name}")
    actual = hessian(loss, argnums=(1, 2))(backend, args["w1"], args["b1"])
    expected = hessian(loss, argnums=(1, 2))("reference", args["w1"], args["b1"])
    for i, j in ((0, 0), (0, 1), (1, 1)):
        assert_close(actual[i][j], expected[i][j], torch.float64, f"hessian block {i}{j}")


def _per_sample_loss(block, params, x, residual, upstream):
    """The loss of one sample (x [C, H, W]) as a function of the block's parameters."""
    out = functional_call(block, params, (x[None],),
                          {} if residual is None else {"residual": residual[None]})
    return (out[0] * upstream).sum()


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation,gate,residual,post_relu", VARIANTS)
def test_per_sample_gradients_of_a_block_match_the_reference(backend, device, dtype,
                                                             activation, gate, residual,
                                                             post_relu):
    """Opacus-style: vmap(grad(loss of one sample)) over the batch w.r.t. the parameters,
    beside the reference backend's gradients of each sample taken one at a time."""
    n, c = 4, 8
    torch.manual_seed(5)
    block = FusedSEBlock(c, rd_channels=3, activation=activation, gate=gate,
                         post_relu=post_relu, backend=backend).to(device=device, dtype=dtype)
    args = make_inputs(n, c, 3, 3, 3, dtype=dtype, residual=residual, device=device, seed=6)
    upstream = _upstream(args["x"].shape, dtype, device, seed=7)
    params = {k: v.detach() for k, v in block.named_parameters()}
    per_sample = vmap(grad(lambda p, x, r, u: _per_sample_loss(block, p, x, r, u)),
                      in_dims=(None, 0, None if args["residual"] is None else 0, 0))
    actual = per_sample(params, args["x"], args["residual"], upstream)

    reference = FusedSEBlock(c, rd_channels=3, activation=activation, gate=gate,
                             post_relu=post_relu, backend="reference").double()
    params64 = {k: v.double() for k, v in params.items()}
    args64 = _float64(args)
    for i in range(n):
        r = None if args64["residual"] is None else args64["residual"][i]
        expected = grad(lambda p: _per_sample_loss(reference, p, args64["x"][i], r,
                                                   upstream[i].double()))(params64)
        for name in params:
            assert_close(actual[name][i], expected[name], dtype, f"sample {i}: grad {name}")


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("in_dims", [(1, None, None, 1), (None, 0, 0, None), (0, 0, None, None)],
                         ids=["x-residual-dim1", "w1-b1", "x-w1"])
def test_vmap_matches_the_reference(backend, device, in_dims):
    """vmap over x and the residual (folded into N, vmapped dim not first), over per-sample
    weights (one call per index), and over both."""
    size = 3
    args = _inputs(2, torch.float64, True, device, seed=8, c=4, h=2, cr=2)
    gen = torch.Generator().manual_seed(9)
    batched = []
    for name, dim in zip(("x", "w1", "b1", "residual"), in_dims):
        t = args[name]
        if dim is not None:  # a stack of `size` different draws along `dim`
            t = torch.stack([t + torch.randn(t.shape, generator=gen, dtype=t.dtype)
                             for _ in range(size)], dim)
        batched.append(t)

    def block(backend, x, w1, b1, residual):
        return squeeze_excite(x, w1, b1, args["w2"], args["b2"], residual, post_relu=True,
                              backend=backend)

    actual = vmap(lambda *a: block(backend, *a), in_dims=in_dims)(*batched)
    for i in range(size):
        sample = [t if d is None else t.select(d, i) for t, d in zip(batched, in_dims)]
        assert_close(actual[i], block("reference", *sample), torch.float64, f"index {i}")


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_grad_of_vmap_matches_the_reference(backend, device):
    """grad outside vmap: the vmap rule's folded call is differentiated."""
    args = _inputs(2, torch.float64, False, device, seed=10, c=4, h=2, cr=2)
    xs = torch.stack([args["x"], args["x"].flip(0) * 0.5])

    def loss(backend, w1, b2):
        out = vmap(lambda x: squeeze_excite(x, w1, args["b1"], args["w2"], b2, backend=backend))(xs)
        return out.square().sum()

    actual = grad(loss, argnums=(1, 2))(backend, args["w1"], args["b2"])
    expected = grad(loss, argnums=(1, 2))("reference", args["w1"], args["b2"])
    for name, a, e in zip(("w1", "b2"), actual, expected):
        assert_close(a, e, torch.float64, f"grad {name}")


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_first_call_inside_a_transform(backend, device, monkeypatch):
    """The backends' availability probes run outside the transform, even when the first call
    of the process comes from inside one (Triton's interpreter cannot read wrapped tensors)."""
    monkeypatch.setattr(backends, "_status", {})
    monkeypatch.setattr(backends, "_resolved", {})
    args = _inputs(2, torch.float64, False, device, seed=11, c=4, h=2, cr=2)
    actual = grad(lambda w1: squeeze_excite(args["x"], w1, args["b1"], args["w2"], args["b2"],
                                            backend=backend).sum())(args["w1"])
    expected = grad(lambda w1: squeeze_excite(args["x"], w1, args["b1"], args["w2"], args["b2"],
                                              backend="reference").sum())(args["w1"])
    assert_close(actual, expected, torch.float64, "grad w1")
