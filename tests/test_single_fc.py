"""The single-FC form of the SE op (Effective SE: ``x * gate(W1 mean_hw(x) + b1)``, w2 None).

Every kernel backend (the Triton backend on each excitation path) against the float64
reference with poisoned outputs; gradcheck and opcheck of the ops with w2 None; the argument
checks; the conversion of timm's EffectiveSEModule and hgnet's EseModule (outputs, gradients,
state_dict, frozen parameters); torch.func per-sample gradients; ONNX export.
"""

import functools

import pytest
import torch
from torch import nn

from senet_kernels import FusedSEBlock, convert_se_modules, squeeze_excite
from senet_kernels.backends import backend_ops
from senet_kernels.testing import forward_backward_vs_reference

from cases import (DTYPES, SINGLE_FC_VARIANTS, assert_close, backend_device_params,
                   make_inputs)

BACKENDS = backend_device_params()
BACKEND_PATHS = backend_device_params(paths=True)


def single_fc_inputs(n, c, h, w, **kwargs):
    """make_inputs with w1 [C, C] and no second layer (w2 and b2 None)."""
    args = make_inputs(n, c, h, w, c, **kwargs)
    args["w2"] = args["b2"] = None
    return args


def check(backend, args, dtype, *, gate="hardsigmoid", post_relu=False, activation="relu"):
    """Forward and every gradient against the float64 reference (each in its input's dtype)."""
    results = forward_backward_vs_reference(
        functools.partial(squeeze_excite, backend=backend), args, activation=activation,
        gate=gate, post_relu=post_relu)
    for result in results:
        source = args["x"] if result.name == "out" else args[result.name.split()[1]]
        assert result.actual.dtype == source.dtype, result.name
        assert_close(result.actual, result.expected, dtype, result.name)
    return results[0].actual


@pytest.mark.parametrize("backend,device,path", BACKEND_PATHS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("gate,bias,residual,post_relu", SINGLE_FC_VARIANTS)
def test_variants_float32(backend, device, path, channels_last, gate, bias, residual, post_relu,
                          poison):
    args = single_fc_inputs(2, 40, 5, 7, channels_last=channels_last, bias=bias,
                            residual=residual, device=device,
                            seed=SINGLE_FC_VARIANTS.index((gate, bias, residual, post_relu)))
    out = check(backend, args, torch.float32, gate=gate, post_relu=post_relu)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert out.is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("backend,device,path", BACKEND_PATHS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("gate", ["sigmoid", "hardsigmoid"])
def test_dtypes(backend, device, path, dtype, channels_last, gate, poison):
    args = single_fc_inputs(3, 24, 6, 5, dtype=dtype, channels_last=channels_last,
                            residual=True, device=device, seed=3)
    check(backend, args, dtype, gate=gate, post_relu=True)


@pytest.mark.parametrize("backend,device,path", BACKEND_PATHS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_float32_parameters_with_half_input(backend, device, path, dtype, poison):
    args = single_fc_inputs(2, 24, 6, 6, dtype=dtype, param_dtype=torch.float32, device=device,
                            seed=4)
    check(backend, args, dtype, gate="sigmoid")


ODD_SHAPES = [  # (N, C, H, W)
    (1, 1, 1, 1),
    (2, 3, 1, 1),
    (1, 3, 7, 7),
    (3, 70, 5, 5),     # several GEMM tiles of channels and of samples
    (2, 24, 19, 23),   # H*W over several reduction blocks, prime sizes
    (20, 130, 2, 2),   # more samples than one GEMM tile, C past two channel blocks
]


@pytest.mark.parametrize("backend,device,path", BACKEND_PATHS)
@pytest.mark.parametrize("shape", ODD_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_odd_sizes(backend, device, path, shape, channels_last, poison):
    args = single_fc_inputs(*shape, channels_last=channels_last, residual=True, device=device,
                            seed=5)
    check(backend, args, torch.float32, gate="sigmoid", post_relu=True)


@pytest.mark.parametrize("splits", [2, 3])
def test_triton_batched_path_with_k_splits(device, splits, poison):
    """The batched path's c_to_r GEMM split over channels (its last program per tile adds the
    splits and runs the single-FC epilogue): forward gate and backward gp."""
    from senet_kernels.triton import configs
    args = single_fc_inputs(5, 150, 3, 3, residual=True, device=device, seed=6)
    with configs.force_excitation_path("batched"), configs.force_k_splits(splits):
        check("triton", args, torch.float32, gate="hardsigmoid", post_relu=True)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_non_contiguous_inputs(backend, device, poison):
    """x strided over C (no dense layout), w1 a transposed view."""
    args = single_fc_inputs(2, 12, 4, 5, residual=True, device=device, seed=7)
    args["x"] = torch.cat([args["x"], args["x"]], dim=1)[:, ::2]
    args["w1"] = args["w1"].t().contiguous().t()
    assert not args["x"].is_contiguous() and not args["w1"].is_contiguous()
    check(backend, args, torch.float32, gate="hardsigmoid", post_relu=False)


def test_activation_is_not_applied_but_checked():
    args = single_fc_inputs(2, 6, 3, 3, dtype=torch.float64, seed=8)
    plain = squeeze_excite(*args.values(), activation="relu", backend="reference")
    other = squeeze_excite(*args.values(), activation="gelu", backend="reference")
    expected = args["x"] * torch.sigmoid(args["x"].mean((2, 3)) @ args["w1"].T
                                         + args["b1"])[:, :, None, None]
    assert torch.equal(plain, other)
    torch.testing.assert_close(plain, expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="activation must be one of"):
        squeeze_excite(*args.values(), activation="tanh")


def test_argument_checks():
    args = single_fc_inputs(2, 6, 3, 3, seed=9)
    x, w1, b1 = args["x"], args["w1"], args["b1"]
    with pytest.raises(ValueError, match=r"w1 \(with w2 None, the single FC layer\) must have "
                                         r"shape \[6, 6\]"):
        squeeze_excite(x, w1[:3], None, None, None)
    with pytest.raises(ValueError, match="b2 must be None when w2 is None"):
        squeeze_excite(x, w1, b1, None, torch.randn(6))
    with pytest.raises(ValueError, match=r"b1 must have shape \[6\]"):
        squeeze_excite(x, w1, b1[:3], None, None)
    # 1x1-conv shaped weights are accepted, as for the two-FC form
    torch.testing.assert_close(squeeze_excite(x, w1[:, :, None, None], b1, None, None),
                               squeeze_excite(x, w1, b1, None, None))


def test_fused_batch_norm_op_refuses_single_fc():
    from senet_kernels import bn_squeeze_excite
    args = single_fc_inputs(2, 6, 3, 3, seed=10)
    c = 6
    with pytest.raises(ValueError, match="bn_squeeze_excite needs w2"):
        bn_squeeze_excite(args["x"], torch.ones(c), torch.zeros(c), torch.zeros(c),
                          torch.ones(c), args["w1"], args["b1"], None, None, training=False)


@pytest.mark.parametrize("backend,device", [p for p in BACKENDS if p.values[0] == "cuda"] or
                         [pytest.param(None, None, marks=pytest.mark.skip(
                             reason="the CUDA backend's own checks need a GPU"))])
def test_extension_checks_on_cuda(backend, device):
    a = single_fc_inputs(2, 6, 3, 3, device="cuda", seed=11)
    with pytest.raises(ValueError, match="when w2 is absent"):
        torch.ops.senet_kernels.se_forward_ext(a["x"], a["w1"][:3], None, None, None, None,
                                               "relu", "sigmoid", False)


def test_extension_checks_on_the_cpu():
    if "cpu" not in [p.values[0] for p in BACKENDS]:
        pytest.skip("the C++ extension is not built")
    a = single_fc_inputs(2, 6, 3, 3, seed=11)
    op = torch.ops.senet_kernels.se_forward_ext
    with pytest.raises(ValueError, match=r"w1 must be \[6, 6\] when w2 is absent"):
        op(a["x"], a["w1"][:3], None, None, None, None, "relu", "sigmoid", False)
    with pytest.raises(ValueError, match="b2 must be absent when w2 is"):
        op(a["x"], a["w1"], None, None, a["b1"], None, "relu", "sigmoid", False)


# --- gradcheck and opcheck ------------------------------------------------------------------

def _leaves(args):
    return [None if v is None else v.detach().clone().requires_grad_() for v in args.values()]


@pytest.mark.parametrize("backend,device,path", BACKEND_PATHS)
@pytest.mark.parametrize("gate,bias,residual,post_relu", SINGLE_FC_VARIANTS)
def test_gradcheck(backend, device, path, gate, bias, residual, post_relu):
    args = single_fc_inputs(2, 5, 3, 2, dtype=torch.float64, channels_last=bias, bias=bias,
                            residual=residual, device=device, seed=12)

    def fn(x, w1, b1, w2, b2, res):
        return squeeze_excite(x, w1, b1, w2, b2, res, gate=gate, post_relu=post_relu,
                              backend=backend)

    # full Jacobian for one variant, random projections for the others
    full = (gate, bias, residual, post_relu) == SINGLE_FC_VARIANTS[0]
    assert torch.autograd.gradcheck(fn, _leaves(args), eps=1e-6, atol=1e-7, rtol=1e-5,
                                    fast_mode=not full)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_gradgradcheck(backend, device):
    args = single_fc_inputs(2, 3, 2, 2, dtype=torch.float64, residual=True, device=device,
                            seed=13)

    def fn(x, w1, b1, w2, b2, res):
        return squeeze_excite(x, w1, b1, w2, b2, res, gate="sigmoid", post_relu=True,
                              backend=backend)

    assert torch.autograd.gradgradcheck(fn, _leaves(args), eps=1e-6, atol=1e-6, rtol=1e-5)


OPCHECK_CASES = [  # (dtype, channels_last, bias, residual, post_relu, gate)
    (torch.float32, False, True, True, True, "sigmoid"),
    (torch.float32, True, False, False, False, "hardsigmoid"),
    (torch.bfloat16, True, True, True, False, "hardsigmoid"),
]


@pytest.mark.parametrize("backend,device,path", BACKEND_PATHS)
@pytest.mark.parametrize("case", OPCHECK_CASES, ids=lambda c: "-".join(map(str, c)))
def test_opcheck(backend, device, path, case):
    dtype, channels_last, bias, residual, post_relu, gate = case
    ops = backend_ops(backend)
    args = single_fc_inputs(2, 12, 3, 4, dtype=dtype, channels_last=channels_last, bias=bias,
                            residual=residual, device=device, seed=14)
    fwd_args = (*_leaves(args), "relu", gate, post_relu)
    torch.library.opcheck(ops.forward, fwd_args)
    out, pooled, hidden, scale = ops.forward(*[a.detach() if isinstance(a, torch.Tensor) else a
                                               for a in fwd_args])
    assert hidden.shape == (2, 12)
    bwd_args = (torch.randn_like(out), args["x"], out if post_relu else None, args["w1"], None,
                pooled, hidden, scale, residual, "relu", gate)
    torch.library.opcheck(ops.backward, bwd_args)
    grads = ops.backward(*bwd_args)
    assert grads[3].shape == (0,) and grads[4].shape == (0,)


# --- FusedSEBlock and the conversion of timm's modules --------------------------------------

timm_se = pytest.importorskip("timm.layers.squeeze_excite")
timm_hgnet = pytest.importorskip("timm.models.hgnet")


def timm_modules(c):
    return {
        "effective-se": timm_se.EffectiveSEModule(c),
        "effective-se-sigmoid": timm_se.EffectiveSEModule(c, gate_layer="sigmoid"),
        "hgnet-ese": timm_hgnet.EseModule(c),
    }


@pytest.mark.parametrize("name", list(timm_modules(4)))
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_from_timm_module(name, backend, device):
    """Eval output and train-mode gradients (x and the parameters) equal the source's within
    float32 tolerance; the block holds the source's own layer under its name."""
    torch.manual_seed(15)
    source = timm_modules(24)[name].to(device)
    block = FusedSEBlock.from_module(source, backend=backend)
    layer_name = "conv" if name == "hgnet-ese" else "fc"
    assert block.single_fc and block.activation is None
    assert block.fc_layers() == (getattr(source, layer_name),)
    assert list(block.state_dict()) == list(source.state_dict())
    x = make_inputs(3, 24, 5, 6, 24, device=device, seed=16)["x"]
    with torch.no_grad():
        assert_close(block.eval()(x), source.eval()(x).double(), torch.float32, "eval output")
    block.train(), source.train()
    grads = []
    for module in (source, block):
        xg = x.clone().requires_grad_()
        module.zero_grad()
        module(xg).square().sum().backward()
        layer = getattr(source, layer_name)
        grads.append([t.detach().clone() for t in (xg.grad, layer.weight.grad, layer.bias.grad)])
    for what, actual, expected in zip(("x", "weight", "bias"), grads[1], grads[0]):
        assert_close(actual, expected.double(), torch.float32, f"grad {what}")


def test_state_dict_round_trip_and_frozen_parameters():
    torch.manual_seed(17)
    source = timm_se.EffectiveSEModule(16)
    source.fc.bias.requires_grad_(False)
    model = nn.Sequential(source)
    assert convert_se_modules(model, backend="reference") == 1
    block = model[0]
    assert block.fc is source.fc and not block.fc.bias.requires_grad
    assert block.fc.weight.requires_grad
    # a converted checkpoint loads into the unconverted module, and back
    state = {k: v + 1 for k, v in block.state_dict().items()}
    fresh = timm_se.EffectiveSEModule(16)
    fresh.load_state_dict(state)
    block.load_state_dict(fresh.state_dict())
    for key, value in fresh.state_dict().items():
        assert torch.equal(block.state_dict()[key], value)
    # and a constructed single-FC block takes [out, in] or 1x1-conv shaped weights
    built = FusedSEBlock(16, single_fc=True, gate="hardsigmoid", backend="reference")
    built.load_state_dict({"fc1.weight": state["fc.weight"], "fc1.bias": state["fc.bias"]})
    x = torch.randn(2, 16, 3, 3)
    torch.testing.assert_close(built(x), fresh(x))


def test_constructed_block():
    block = FusedSEBlock(10, single_fc=True, gate="hardsigmoid", backend="reference")
    assert block.single_fc and block.rd_channels == 10 and block.activation is None
    assert [k for k, _ in block.named_parameters()] == ["fc1.weight", "fc1.bias"]
    assert "single_fc=True" in repr(block)
    with pytest.raises(ValueError, match="rd_channels must be None with single_fc=True"):
        FusedSEBlock(10, rd_channels=5, single_fc=True)
    with pytest.raises(TypeError, match="single_fc must be a bool"):
        FusedSEBlock(10, single_fc="yes")
    with pytest.raises(ValueError, match="activation must be one of"):
        FusedSEBlock(10, single_fc=True, activation="tanh")


def test_timm_model_converts_every_effective_se():
    """A whole timm model (ESE-VoVNet): every Effective SE converted, same output."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(18)
    model = timm.create_model("ese_vovnet19b_dw", pretrained=False, num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        assert convert_se_modules(model, backend="reference") == 4
        actual = model(x)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


# --- torch.func -----------------------------------------------------------------------------

@pytest.mark.parametrize("backend,device", BACKENDS)
def test_per_sample_gradients(backend, device):
    from torch.func import functional_call, grad, vmap
    n, c = 4, 6
    torch.manual_seed(19)
    block = FusedSEBlock(c, single_fc=True, gate="hardsigmoid", backend=backend).to(device)
    x = make_inputs(n, c, 3, 3, c, device=device, seed=20)["x"]
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(21)).to(device)

    def loss(module, params, xi, ui):
        return (functional_call(module, params, (xi[None],))[0] * ui).sum()

    params = {k: v.detach() for k, v in block.named_parameters()}
    actual = vmap(grad(lambda p, xi, ui: loss(block, p, xi, ui)),
                  in_dims=(None, 0, 0))(params, x, upstream)
    reference = FusedSEBlock(c, single_fc=True, gate="hardsigmoid", backend="reference").double()
    for i in range(n):
        expected = grad(lambda p: loss(reference, p, x[i].double(), upstream[i].double()))(
            {k: v.double() for k, v in params.items()})
        for name in params:
            assert_close(actual[name][i], expected[name], torch.float32, f"sample {i}: {name}")


# --- ONNX -----------------------------------------------------------------------------------

@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_onnx_export(dynamo):
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    import io
    torch.manual_seed(22)
    block = FusedSEBlock(12, single_fc=True, gate="hardsigmoid", post_relu=True).eval()
    x = torch.randn(2, 12, 4, 5)
    residual = torch.randn_like(x)
    if dynamo:
        batch = torch.export.Dim("batch")
        proto = torch.onnx.export(block, (x, residual), dynamo=True, verbose=False,
                                  dynamic_shapes=({0: batch}, {0: batch})).model_proto
    else:
        buffer = io.BytesIO()
        torch.onnx.export(block, (x, residual), buffer, dynamo=False,
                          input_names=["x", "residual"], output_names=["out"],
                          dynamic_axes={"x": {0: "batch"}, "residual": {0: "batch"},
                                        "out": {0: "batch"}})
        proto = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(proto)
    ops = {node.op_type for node in proto.graph.node}
    assert not any("se_forward" in op for op in ops), ops
    assert len([op for op in proto.graph.node if op.op_type in ("Gemm", "MatMul")]) == 1
    session = onnxruntime.InferenceSession(proto.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    x3, r3 = torch.randn(3, 12, 4, 5), torch.randn(3, 12, 4, 5)
    feeds = {i.name: a.numpy() for i, a in zip(session.get_inputs(), (x3, r3))}
    actual = torch.from_numpy(session.run(None, feeds)[0])
    with torch.no_grad():
        expected = block(x3, r3)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_residual_block_with_effective_se_keeps_its_batch_norm(training):
    """A timm Bottleneck with an Effective SE: its tail (SE, add, ReLU) is fused, but its bn3
    is not absorbed (the BatchNorm + SE op is two-FC only): output and gradients as before."""
    resnet = pytest.importorskip("timm.models.resnet")
    torch.manual_seed(23)
    block = resnet.Bottleneck(16, 4, attn_layer=timm_se.EffectiveSEModule).train(training)
    x = torch.randn(2, 16, 6, 6)
    expected_model = type(block)(16, 4, attn_layer=timm_se.EffectiveSEModule).train(training)
    expected_model.load_state_dict(block.state_dict())
    model = nn.Sequential(block)
    assert convert_se_modules(model, backend="auto", fuse_bn=True) == 1
    fused = model[0]
    assert fused.se.single_fc and getattr(fused, "absorbed_bn", None) is None
    xa, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    actual, expected = fused(xa), expected_model(xe)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    actual.square().sum().backward()
    expected.square().sum().backward()
    torch.testing.assert_close(xa.grad, xe.grad, rtol=1e-4, atol=1e-5)


SINGLE_FC_LAUNCHES = {  # forced path -> (forward kernels, backward kernels)
    "per_sample": (["se_squeeze_excite_fwd", "se_scale_fwd"],
                   ["se_squeeze_excite_bwd", "se_scale_bwd", "se_weight_grads"]),
    "batched": (["se_squeeze_excite_fwd", "se_excite_gemm_c_to_r", "se_scale_fwd"],
                ["se_squeeze_excite_bwd", "se_excite_gemm_c_to_r", "se_scale_bwd",
                 "se_weight_grads"]),
    # squeeze_fc1 has no single-FC kernels: the batched path runs instead
    "squeeze_fc1": (["se_squeeze_excite_fwd", "se_excite_gemm_c_to_r", "se_scale_fwd"],
                    ["se_squeeze_excite_bwd", "se_excite_gemm_c_to_r", "se_scale_bwd",
                     "se_weight_grads"]),
}


@pytest.mark.parametrize("path", list(SINGLE_FC_LAUNCHES))
def test_triton_launches(device, path):
    """No FC2 launch (r_to_c) on any path; the weight gradients launch gW1's tiles only."""
    from senet_kernels.triton import configs, se_op
    from senet_kernels.triton.launcher import recording_launches
    forward_kernels, backward_kernels = SINGLE_FC_LAUNCHES[path]
    c = 40  # gW1 alone: 2 x 2 tiles of 32
    args = single_fc_inputs(3, c, 5, 5, residual=True, device=device, seed=24)
    with configs.force_excitation_path(path):
        with recording_launches(run_too=False) as launches:
            out, pooled, hidden, scale = se_op.se_forward(*args.values(), "relu", "sigmoid",
                                                          True)
        assert [launch.kernel.__name__ for launch in launches] == forward_kernels
        with recording_launches(run_too=False) as launches:
            se_op.se_backward(torch.randn_like(out), args["x"], out, args["w1"], None, pooled,
                              hidden, scale, True, "relu", "sigmoid")
        assert [launch.kernel.__name__ for launch in launches] == backward_kernels
        weight_grads = launches[-1]
        tiles = configs.cdiv(c, configs.WGRAD_BLOCK_M) * configs.cdiv(c, configs.WGRAD_BLOCK_K)
        assert weight_grads.grid[0] == tiles and weight_grads.args["has_fc2"] == 0


def test_traffic_model_counts_one_weight():
    """The single-FC form reads C x C weight bytes, half of a two-FC SE with Cr = C: at an
    H*W between the two thresholds, the two-FC SE is weight-heavy and the single FC is not."""
    from senet_kernels.triton import configs
    n, c, size = 8, 64, 2
    one_layer = c * c * size  # weight bytes; activation bytes per sample: c * hw * size
    hw = int(1.5 * one_layer / (configs.WEIGHT_TRAFFIC_LIMIT * c * size))
    assert configs.excitation_path(n, c, c, hw, size, size, single_fc=True) == "per_sample"
    assert configs.excitation_path(n, c, c, hw, size, size) == "batched"
