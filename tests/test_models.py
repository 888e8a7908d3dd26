"""senet_kernels.models: the SENet family on fused SE blocks, and timm's weights in it.

Every numerical test compares our model against the timm model it was converted from, with
random weights (no downloads here) and random BatchNorm statistics, on random inputs.
"""

import functools
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from senet_kernels import FusedSEBlock, available_backends
from senet_kernels.models import MODELS, TIMM_ARCHS, SENet, from_timm, se_resnet18, se_width
from senet_kernels.models.timm_weights import rename_state_dict

from bn_calibration import calibrate_bn_statistics_

timm = pytest.importorskip("timm")

#: fp32 tolerance on max|ours - timm| / max|timm|, per SE backend.
TOLS = {"reference": 1e-5, "cpu": 1e-4}
TOL64 = 1e-10  # float64 (sigmoid gates only: rounding amplified through the network)
#: The backends that run here ("triton" is only interpreted on CPU: too slow for networks).
RUNNABLE = tuple(b for b in TOLS if available_backends()[b].available)
BACKENDS = [pytest.param(b, marks=pytest.mark.skipif(
    b not in RUNNABLE, reason=f"backend {b} unavailable")) for b in TOLS]


# --- Helpers ------------------------------------------------------------------------------

def rel_err(actual, expected):
    """max|actual - expected| / max|expected| (0 when both are all zeros, e.g. the gradient
    of an SE whose ReLU is off for the whole batch)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    diff = (actual.double() - expected.double()).abs().max().item()
    return diff / max(expected.double().abs().max().item(), 1e-300)


def make_x(*shape, seed=1, dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def randomize_bn_(model, seed=0):
    """Random BN weights, biases and running statistics, keeping the network well conditioned.

    Statistics drawn independently of the activations they normalize make a deep random
    network blow up (we saw 1e11 at 152 layers) and chaotic: fused and eager SE then differ
    by up to 50% at the output although every single block agrees to 1e-6. So each BN's
    statistics are set, in one eval-mode pass over a random batch, to its own input's mean
    and variance moved by 0.1 std and +-25% (every later BN sees the earlier ones' final
    values, so the perturbations do not compound). For the same reason the last BN of each
    residual branch gets 0.3x smaller weights, so that 50 branches do not pile up.
    """
    gen = torch.Generator().manual_seed(seed)
    was_training = model.training
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.weight.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
            bn.bias.copy_(0.2 * torch.randn(bn.num_features, generator=gen))
        for block in model.modules():
            if hasattr(block, "se") or hasattr(block, "se_module"):
                last = getattr(block, "bn3", None) or block.bn2
                last.weight.mul_(0.3)
    calibrate_bn_statistics_(model, gen, model_in_chans(model))
    return model.train(was_training)


def model_in_chans(model):
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels


def timm_model(name, seed=0, **kwargs):
    """A timm model with random weights and BN statistics, in eval mode."""
    torch.manual_seed(seed)
    return randomize_bn_(timm.create_model(name, pretrained=False, **kwargs), seed).eval()


def compare_eval(source, ours, x, backends=RUNNABLE):
    """{backend: relative error of ours vs source} on x, in eval mode, without autograd."""
    with torch.no_grad():
        expected = source(x)
        errors = {}
        for backend in backends:
            errors[backend] = rel_err(ours.set_backend(backend)(x), expected)
    return errors


# --- from_timm: every supported timm architecture computes what timm computes --------------

#: Deeper or wider versions of architectures tested numerically, checked for structure only
#: (names, shapes, every convolution's geometry, poolings) to keep the suite's runtime down.
STRUCTURE_ONLY = ("seresnet200d", "seresnet269d", "seresnext101_32x8d", "seresnext101d_32x8d",
                  "seresnext101_64x4d")


@pytest.mark.parametrize("arch", [a for a in TIMM_ARCHS if a not in STRUCTURE_ONLY])
def test_from_timm_matches_timm(arch):
    # Every backend in one test: building the deep models takes longer than running them.
    source = timm_model(arch)
    ours = from_timm(source)
    assert isinstance(ours, SENet) and not ours.training
    errors = compare_eval(source, ours, make_x(2, 3, 64, 64))
    assert set(errors) == set(RUNNABLE)
    for backend, err in errors.items():
        assert err < TOLS[backend], f"{arch} {backend}: relative error {err:.3g}"


@pytest.mark.parametrize("arch", STRUCTURE_ONLY)
def test_from_timm_structure_of_the_largest(arch):
    with torch.device("meta"):  # no memory, no init time: names, shapes and geometry only
        source = timm.create_model(arch, pretrained=False)
    ours = from_timm(source)  # raises on any key, shape, convolution or pooling difference
    assert next(ours.parameters()).device.type == "meta"
    assert sum(p.numel() for p in ours.parameters()) == sum(
        p.numel() for p in source.parameters())


@functools.lru_cache(maxsize=None)
def _cached_timm_model(name):
    # Odd-size tests reuse one random model per architecture (they never modify it).
    return timm_model(name)


@pytest.mark.parametrize("size", [(32, 32), (33, 47), (65, 39)])
@pytest.mark.parametrize("arch", ["legacy_seresnet18", "seresnet18", "seresnext26d_32x4d",
                                  "legacy_seresnext26_32x4d"])
def test_from_timm_matches_at_odd_sizes(arch, size):
    # Odd sizes are where ceil_mode pooling, padded pooling and avg-pool shortcuts differ.
    source = _cached_timm_model(arch)
    ours = from_timm(source)
    errors = compare_eval(source, ours, make_x(1, 3, *size, seed=2))
    for backend, err in errors.items():
        assert err < TOLS[backend], f"{arch} {size} {backend}: relative error {err:.3g}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", ["legacy_seresnet18", "legacy_seresnet50",
                                  "seresnext26d_32x4d"])
def test_from_timm_training_mode(arch, backend):
    """A training-mode step (batch statistics, dropout) gives timm's output and gradients.

    Outputs are compared in float32. Gradients are compared in float64: a ReLU network's
    gradient is discontinuous in its input, so float32 rounding differences of 1e-7 flip
    the few ReLUs whose inputs are that close to 0 and move those gradient elements by
    O(1) (we measured 5e-3 for legacy_seresnet50, with timm itself 1e-6 from float64).
    """
    source = timm_model(arch).train()
    x = make_x(2, 3, 64, 64)
    grad_out = make_x(2, 1000, seed=3)

    def step(model, dtype):
        xg = x.to(dtype).requires_grad_()
        torch.manual_seed(7)  # the same dropout mask for both
        y = model(xg)
        y.backward(grad_out.to(dtype))
        return y, xg.grad

    ours = from_timm(source, backend=backend)
    assert ours.training
    with torch.no_grad():
        torch.manual_seed(7)
        expected = source(x)
        torch.manual_seed(7)
        assert rel_err(ours(x), expected) < TOLS[backend]

    source.double()
    ours = from_timm(source, backend=backend)
    y_ref, gx_ref = step(source, torch.float64)
    y, gx = step(ours, torch.float64)
    assert rel_err(y, y_ref) < TOL64
    assert rel_err(gx, gx_ref) < TOL64
    _, origin, _ = rename_state_dict(source.state_dict(), arch)
    source_params = dict(source.named_parameters())
    for name, p in ours.named_parameters():
        expected = source_params[origin[name]].grad
        err = rel_err(p.grad, expected.reshape(p.shape))
        assert err < TOL64, f"{name}: gradient relative error {err:.3g}"


@pytest.mark.parametrize("arch, option", [
    ("legacy_seresnet50", "stride_in_1x1"),
    ("legacy_seresnet18", "maxpool_ceil_mode"),
    ("legacy_seresnet18", "relu_before_se"),
    ("seresnet50", "stride_in_1x1"),
])
def test_wrong_option_is_detected(arch, option):
    """The comparison is sensitive to each option from_timm sets: flipping one fails it."""
    source = timm_model(arch)
    spec = TIMM_ARCHS[arch]
    options = dict(spec.options)
    options[option] = not options.get(option, False)
    ours = SENet(spec.block, spec.layers, backend="reference", **options).eval()
    ours.load_state_dict(rename_state_dict(source.state_dict(), arch)[0])
    assert compare_eval(source, ours, make_x(2, 3, 64, 64), ["reference"])["reference"] > 1e-3


# --- from_timm: what it reads from the model and the weights -----------------------------

def test_from_timm_reads_classes_channels_and_se_widths():
    se_layer = pytest.importorskip("timm.layers").SEModule
    # 10 classes, 1 input channel, SE widths C / 4 and SE layers without biases.
    source = timm_model("seresnet18", num_classes=10, in_chans=1, block_args=dict(
        attn_layer=functools.partial(se_layer, rd_ratio=1 / 4, bias=False)))
    ours = from_timm(source)
    assert ours.fc.out_features == 10 and ours.conv1.in_channels == 1
    assert ours.layer1[0].se.rd_channels == 16 and ours.layer1[0].se.fc1.bias is None
    for backend, err in compare_eval(source, ours, make_x(2, 1, 64, 64)).items():
        assert err < TOLS[backend], backend


@pytest.mark.parametrize("arch, kwargs, match", [
    ("seresnet50", dict(output_stride=16), r"layer4.0.conv2: ours .*stride': \(2, 2\)"),
    ("legacy_seresnet18", dict(global_pool="max"), "global pooling: ours 'avg', timm 'max'"),
])
def test_from_timm_rejects_timm_models_built_otherwise(arch, kwargs, match):
    """Same weights, other network: from_timm compares convolutions and poolings."""
    with torch.device("meta"):
        source = timm.create_model(arch, pretrained=False, **kwargs)
    with pytest.raises(ValueError, match=match):
        from_timm(source)


def test_from_timm_features_only_head():
    source = timm_model("legacy_seresnet18", num_classes=0)
    ours = from_timm(source)
    assert isinstance(ours.fc, nn.Identity)
    for backend, err in compare_eval(source, ours, make_x(2, 3, 64, 64)).items():
        assert err < TOLS[backend], backend


def test_from_timm_float64():
    source = timm_model("seresnet18").double()
    ours = from_timm(source, backend="reference")
    assert all(p.dtype == torch.float64 for p in ours.parameters())
    x = make_x(2, 3, 64, 64, dtype=torch.float64)
    assert compare_eval(source, ours, x, ["reference"])["reference"] < TOL64


def test_from_timm_state_dict_with_arch():
    source = timm_model("legacy_seresnext26_32x4d")
    ours = from_timm(source.state_dict(), arch="legacy_seresnext26_32x4d.in1k")
    assert ours.training  # like any freshly built module
    err = compare_eval(source, ours.eval(), make_x(1, 3, 64, 64), ["reference"])["reference"]
    assert err < TOLS["reference"]
    with pytest.raises(ValueError, match="needs arch="):
        from_timm(source.state_dict())


def test_from_timm_infers_arch_from_pretrained_cfg():
    source = timm_model("seresnet34")
    assert source.pretrained_cfg["architecture"] == "seresnet34"
    ours = from_timm(source)
    assert ours.config["se_rd_divisor"] == 8 and not ours.config["maxpool_ceil_mode"]
    with pytest.raises(ValueError, match="pass arch="):
        from_timm(nn.Sequential(nn.Conv2d(3, 8, 3)))


def test_from_timm_errors_list_the_keys():
    state = timm_model("seresnet18").state_dict()
    with pytest.raises(ValueError, match="does not support the timm architecture 'resnet18'.*"
                                         "legacy_senet154"):
        from_timm(state, arch="resnet18")
    extra = dict(state, **{"layer1.0.extra.weight": torch.randn(3)})
    with pytest.raises(ValueError, match=r"1 source key\(s\) without a counterpart "
                                         r"\['layer1.0.extra.weight'\]"):
        from_timm(extra, arch="seresnet18")
    missing = {k: v for k, v in state.items() if k != "layer2.0.downsample.1.running_var"}
    with pytest.raises(ValueError, match=r"1 SENet key\(s\) without weights "
                                         r"\['layer2.0.downsample.1.running_var'\]"):
        from_timm(missing, arch="seresnet18")
    # Legacy names are reported as the source spells them.
    legacy = timm_model("legacy_seresnet18").state_dict()
    with pytest.raises(ValueError, match=r"'layer0.conv2.weight'"):
        from_timm(dict(legacy, **{"layer0.conv2.weight": torch.randn(1)}), arch="legacy_seresnet18")
    # Weights of another depth do not load silently.
    with pytest.raises(ValueError, match="layer1.2.conv1.weight"):
        from_timm(timm_model("seresnet34").state_dict(), arch="seresnet18")
    with pytest.raises(TypeError, match="timm model or a state dict"):
        from_timm(42)


# --- The constructors ---------------------------------------------------------------------

#: our constructor -> (the timm legacy model it is, constructor overrides to get there)
LEGACY_OF = {
    "se_resnet18": ("legacy_seresnet18", dict(relu_before_se=True)),
    "se_resnet34": ("legacy_seresnet34", dict(relu_before_se=True)),
    "se_resnet50": ("legacy_seresnet50", {}),
    "se_resnet101": ("legacy_seresnet101", {}),
    "se_resnet152": ("legacy_seresnet152", {}),
    "se_resnext50_32x4d": ("legacy_seresnext50_32x4d", {}),
    "se_resnext101_32x4d": ("legacy_seresnext101_32x4d", {}),
    "senet154": ("legacy_senet154", {}),
}


def _shapes(state):
    # SE weights are [Cr, C] here and [Cr, C, 1, 1] in timm; compare them as matrices.
    return {k: tuple(v.shape[:2]) if k.endswith(("fc1.weight", "fc2.weight")) else tuple(v.shape)
            for k, v in state.items()}


@pytest.mark.parametrize("name", list(MODELS))
def test_constructor_is_the_paper_network(name):
    """Each constructor builds the Caffe model timm's legacy_* ports: same tensors, same
    options (which test_from_timm_matches_timm checks against timm numerically)."""
    arch, overrides = LEGACY_OF[name]
    with torch.device("meta"):  # structure only: no memory, no init time
        ours = MODELS[name](**overrides)
        source = timm.create_model(arch, pretrained=False)
    assert _shapes(ours.state_dict()) == _shapes(rename_state_dict(source.state_dict(), arch)[0])
    spec = TIMM_ARCHS[arch]
    expected = dict(spec.options, block=spec.block, layers=spec.layers)
    assert {k: ours.config[k] for k in expected} == expected


@pytest.mark.parametrize("name", list(MODELS))
def test_every_block_has_a_fused_se_with_the_backend(name):
    with torch.device("meta"):
        model = MODELS[name](backend="reference")
    blocks = [m for m in model.modules() if hasattr(m, "se")]
    assert len(blocks) == sum(model.config["layers"])
    assert all(type(b.se) is FusedSEBlock and b.se.post_relu for b in blocks)
    assert {b.se.backend for b in blocks} == {"reference"}
    assert {se.backend for _, se in model.set_backend("cpu").se_blocks()} == {"cpu"}


@pytest.mark.parametrize("name", ["se_resnet18", "se_resnext50_32x4d"])
def test_block_output_is_the_fused_call_on_branch_and_shortcut(name):
    """In every block, SE + residual add + ReLU is ONE call, se(out, shortcut), whose result
    is the block's output."""
    model = MODELS[name](backend="reference").eval()
    calls = {}

    def se_hook(block, se, args, out):
        calls.setdefault(block, []).append((args, out))

    def block_hook(block, args, out):
        (se_args, se_out), = calls[block]
        assert len(se_args) == 2 and se_args[1] is not None  # (branch, shortcut)
        assert out is se_out

    blocks = [m for m in model.modules() if hasattr(m, "se")]
    for block in blocks:
        block.se.register_forward_hook(functools.partial(se_hook, block))
        block.register_forward_hook(block_hook)
    with torch.no_grad():
        model(make_x(1, 3, 32, 32))
    assert len(calls) == len(blocks)


@pytest.mark.parametrize("name", ["se_resnet18", "se_resnet50", "senet154"])
def test_any_input_from_32_pixels(name):
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    # (input size, last feature map): the global pooling takes whatever is left.
    for size, final in [((32, 32), (1, 1)), ((33, 47), (1, 2)), ((64, 96), (2, 3))]:
        with torch.no_grad():
            features = model.forward_features(make_x(2, 3, *size))
            y = model(make_x(2, 3, *size))
        assert features.shape[2:] == final
        assert y.shape == (2, 1000) and torch.isfinite(y).all()


def test_initialization():
    torch.manual_seed(0)
    model = MODELS["se_resnet50"]()
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight)), name
            assert torch.equal(m.bias, torch.zeros_like(m.bias)), name
        elif isinstance(m, nn.Conv2d) and m.weight.numel() >= 100_000:
            # He-normal, fan_out: std = sqrt(2 / (out_channels * kh * kw)).
            fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
            expected = (2 / fan_out) ** 0.5
            assert abs(m.weight.std().item() / expected - 1) < 0.02, name
            assert abs(m.weight.mean().item()) < 0.02 * expected, name


def test_cpu_and_reference_backends_agree_in_training():
    if not available_backends()["cpu"].available:
        pytest.skip("backend cpu unavailable")
    torch.manual_seed(0)
    ref = se_resnet18(backend="reference")
    fused = se_resnet18(backend="cpu")
    fused.load_state_dict(ref.state_dict())
    x = make_x(2, 3, 64, 64)
    outs = []
    for model in (ref, fused):
        xg = x.clone().requires_grad_()
        y = model(xg)
        y.square().mean().backward()
        outs.append([y, xg.grad] + [p.grad for p in model.parameters()])
    for a, b in zip(*outs):
        assert rel_err(b, a) < TOLS["cpu"]


def test_se_width_rules():
    assert [se_width(c, 16) for c in (64, 256, 2048, 8)] == [4, 16, 128, 1]
    # timm: C / 16 to the nearest multiple of 8, at least 8.
    assert [se_width(c, 16, 8) for c in (64, 256, 2048, 8, 200)] == [8, 16, 128, 8, 16]


def test_bad_arguments():
    with pytest.raises(ValueError, match="backend must be one of"):
        se_resnet18(backend="cudnn")
    with pytest.raises(ValueError, match="backend must be one of"):
        se_resnet18().set_backend("cudnn")
    with pytest.raises(ValueError, match="block must be one of"):
        SENet("wide", (1, 1, 1, 1))
    with pytest.raises(ValueError, match="4 stage depths"):
        SENet("basic", (1, 1, 1))
    with pytest.raises(ValueError, match="stem_channels"):
        SENet("basic", (1, 1, 1, 1), stem_channels=(32, 64))


def test_example_script_runs():
    """examples/train_se_resnet50.py, at tiny sizes: inference and training on both backends."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, os.path.join(root, "examples", "train_se_resnet50.py"),
         "--batch-size", "4", "--image-size", "32", "--steps", "1", "--device", "cpu"],
        cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any(line.startswith("fused (") for line in lines), out.stdout
    assert any(line.startswith("reference ") for line in lines), out.stdout
    assert "images/s" in out.stdout and "speed-up" in out.stdout


def test_models_subpackage_is_an_attribute_of_the_package():
    """``import senet_kernels as sk; sk.models.se_resnet50()`` works, as torchvision's
    ``torchvision.models`` does (in a fresh interpreter: here the subpackage is imported)."""
    code = ("import senet_kernels as sk; m = sk.models.se_resnet18(num_classes=3); "
            "print(type(m).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "SENet"
    with pytest.raises(AttributeError, match="has no attribute 'modelz'"):
        import senet_kernels
        senet_kernels.modelz
