"""FusedSEBlock: parameters, state dicts, layouts, gradients, and conversion from the SE
modules of torchvision, timm and senet.pytorch (``FusedSEBlock.from_module``).

Shapes are small (the Triton backend runs interpreted on CPU); inputs and weights are fresh
random draws, scaled so that the gates are neither saturated nor trivial.
"""

import copy
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from senet_kernels import FusedSEBlock, register_se_class

N, C, CR, H, W = 2, 24, 6, 5, 5
TOL = 1e-5  # float32, relative to the largest reference magnitude


# --- Helpers ------------------------------------------------------------------------------

def randomize_(module, seed=0):
    """Random weights ~ 1/sqrt(fan_in) and random biases, so gate logits are O(1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            scale = p[0].numel() ** -0.5 if p.dim() > 1 else 0.5
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * scale)
    return module


def make_x(seed=1, device="cpu", dtype=torch.float32, channels=C):
    gen = torch.Generator().manual_seed(seed)
    # The per-channel offset keeps the pooled means O(1) rather than ~1/sqrt(H*W).
    x = torch.randn(N, channels, H, W, generator=gen)
    x += torch.randn(1, channels, 1, 1, generator=gen)
    return x.to(device=device, dtype=dtype)


def assert_rel_close(actual, expected, tol=TOL):
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    err = (actual.double() - expected.double()).abs().max() / expected.double().abs().max()
    assert err < tol, f"relative error {err:.3g} >= {tol}"


# --- The SE modules from_module converts --------------------------------------------------

def torchvision_se(activation=nn.ReLU, gate=nn.Sigmoid):
    ops = pytest.importorskip("torchvision.ops")
    return ops.SqueezeExcitation(C, CR, activation=activation, scale_activation=gate)


def timm_se(**kwargs):
    se = pytest.importorskip("timm.layers.squeeze_excite")
    return se.SEModule(C, rd_channels=CR, **kwargs)


def timm_legacy_se():
    senet = pytest.importorskip("timm.models.senet")
    return senet.SEModule(C, reduction=C // CR)


def timm_efficientnet_se(**kwargs):
    blocks = pytest.importorskip("timm.models._efficientnet_blocks")
    return blocks.SqueezeExcite(C, rd_channels=CR, **kwargs)


def timm_act(name):
    """A timm activation class by name: Swish, HardSigmoid (activations) or SwishMe,
    HardSigmoidMe (activations_me, the memory-efficient ones)."""
    module = "activations_me" if name.endswith("Me") else "activations"
    return getattr(pytest.importorskip(f"timm.layers.{module}"), name)


@register_se_class  # a vendored copy: its forward is the standard SE
class SELayer(nn.Module):
    """The senet.pytorch SE layer (written out here: that project is not a package)."""

    def __init__(self, channel=C, reduction=C // CR, bias=False, gate=nn.Sigmoid):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channel, channel // reduction, bias=bias),
            nn.ReLU(inplace=True),
            nn.Linear(channel // reduction, channel, bias=bias),
            gate(),
        )

    def forward(self, x):
        b, c, _, _ = x.size()
        y = self.avg_pool(x).view(b, c)
        y = self.fc(y).view(b, c, 1, 1)
        return x * y.expand_as(x)


#: id -> (factory, expected activation, expected gate)
SE_MODULES = {
    "tv-relu-sigmoid": (lambda: torchvision_se(), "relu", "sigmoid"),
    "tv-silu-sigmoid": (lambda: torchvision_se(nn.SiLU), "silu", "sigmoid"),
    "tv-relu-hardsigmoid": (lambda: torchvision_se(gate=nn.Hardsigmoid), "relu", "hardsigmoid"),
    "tv-silu-hardsigmoid": (lambda: torchvision_se(nn.SiLU, nn.Hardsigmoid), "silu", "hardsigmoid"),
    # timm's 'sigmoid' gate is its own Sigmoid class; 'swish' / 'hard_sigmoid' are torch's.
    "timm-se-default": (lambda: timm_se(), "relu", "sigmoid"),
    "timm-se-swish-hardsigmoid": (lambda: timm_se(act_layer="swish", gate_layer="hard_sigmoid"),
                                  "silu", "hardsigmoid"),
    "timm-se-timm-classes": (lambda: timm_se(act_layer=timm_act("Swish"),
                                             gate_layer=timm_act("HardSigmoid")),
                             "silu", "hardsigmoid"),
    "timm-se-me-classes": (lambda: timm_se(act_layer=timm_act("SwishMe"),
                                           gate_layer=timm_act("HardSigmoidMe")),
                           "silu", "hardsigmoid"),
    "timm-se-nn-sigmoid-nobias": (lambda: timm_se(gate_layer=nn.Sigmoid, bias=False),
                                  "relu", "sigmoid"),
    "timm-legacy-senet": (timm_legacy_se, "relu", "sigmoid"),
    "timm-eff-relu-sigmoid": (lambda: timm_efficientnet_se(), "relu", "sigmoid"),
    "timm-eff-silu-sigmoid": (lambda: timm_efficientnet_se(act_layer=nn.SiLU), "silu", "sigmoid"),
    # MobileNetV3's SE: ReLU forced, hard-sigmoid gate.
    "timm-eff-relu-hardsigmoid": (lambda: timm_efficientnet_se(act_layer=nn.SiLU,
                                                               force_act_layer=nn.ReLU,
                                                               gate_layer="hard_sigmoid"),
                                  "relu", "hardsigmoid"),
    "timm-eff-silu-hardsigmoid": (lambda: timm_efficientnet_se(act_layer="swish",
                                                               gate_layer="hard_sigmoid"),
                                  "silu", "hardsigmoid"),
    # rexnet's SE (fc1 -> BatchNorm2d -> act -> fc2), compared in training mode here (batch
    # statistics: the block runs the source's layers); eval mode: test_se_with_batch_norm_*.
    "timm-se-batchnorm": (lambda: timm_se(norm_layer=nn.BatchNorm2d, act_layer="swish"),
                          "silu", "sigmoid"),
    "tv-gelu": (lambda: torchvision_se(nn.GELU), "gelu", "sigmoid"),
    "tv-gelu-tanh": (lambda: torchvision_se(lambda: nn.GELU(approximate="tanh")), "gelu_tanh",
                     "sigmoid"),
    "tv-hardswish-hardsigmoid": (lambda: torchvision_se(nn.Hardswish, nn.Hardsigmoid),
                                 "hardswish", "hardsigmoid"),
    "timm-se-timm-gelu": (lambda: timm_se(act_layer=timm_act("GELU")), "gelu", "sigmoid"),
    "timm-se-timm-gelu-tanh": (lambda: timm_se(act_layer=timm_act("GELUTanh")), "gelu_tanh",
                               "sigmoid"),
    "timm-eff-timm-hardswish": (lambda: timm_efficientnet_se(act_layer=timm_act("HardSwish")),
                                "hardswish", "sigmoid"),
    "timm-eff-timm-hardswish-me": (lambda: timm_efficientnet_se(
        act_layer=timm_act("HardSwishMe")), "hardswish", "sigmoid"),
    # sedarknet21's SE: timm SEModule with nn.LeakyReLU (its default slope, 0.01)
    "timm-se-leaky-relu": (lambda: timm_se(act_layer=nn.LeakyReLU), "leaky_relu", "sigmoid"),
    "tv-leaky-relu-hardsigmoid": (lambda: torchvision_se(nn.LeakyReLU, nn.Hardsigmoid),
                                  "leaky_relu", "hardsigmoid"),
    "senet-pytorch": (lambda: SELayer(), "relu", "sigmoid"),
    "senet-pytorch-bias-hardsigmoid": (lambda: SELayer(bias=True, gate=nn.Hardsigmoid),
                                       "relu", "hardsigmoid"),
}


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("kind", list(SE_MODULES))
def test_from_module_matches_source(kind, backend, device):
    factory, activation, gate = SE_MODULES[kind]
    dev = device if backend == "triton" else torch.device("cpu")
    source = randomize_(factory()).to(dev)
    block = FusedSEBlock.from_module(source, backend=backend)
    assert (block.activation, block.gate, block.backend) == (activation, gate, backend)
    x = make_x(device=dev)
    expected = source(x.clone())
    assert_rel_close(block(x), expected)


def test_from_module_shares_the_sources_parameters_and_mode():
    source = randomize_(timm_se()).to(torch.float64).eval()
    block = FusedSEBlock.from_module(source, backend="reference")
    # The very same parameter objects: dtype, device and requires_grad are the source's.
    assert [id(p) for p in block.parameters()] == [id(p) for p in source.parameters()]
    assert not block.training
    assert_rel_close(block(make_x(dtype=torch.float64)), source(make_x(dtype=torch.float64)), 1e-12)
    # Shared: changing the source's weights changes what the block computes.
    with torch.no_grad():
        source.fc1.weight.add_(0.5)
    assert_rel_close(block(make_x(dtype=torch.float64)), source(make_x(dtype=torch.float64)), 1e-12)
    assert FusedSEBlock.from_module(source.train()).training
    # Only the block's flag follows the source: the shared layers keep their own.
    source.eval()
    source.fc1.train()
    block = FusedSEBlock.from_module(source)
    assert not block.training and block.fc1.training


@pytest.mark.parametrize("kind", list(SE_MODULES))
def test_from_module_keeps_the_sources_state_dict_and_frozen_flags(kind):
    factory = SE_MODULES[kind][0]
    source = randomize_(factory())
    first = next(source.parameters())
    first.requires_grad_(False)  # fc1's weight frozen, the rest trainable
    block = FusedSEBlock.from_module(source, backend="reference")

    def layout(module):
        return {k: tuple(v.shape) for k, v in module.state_dict().items()}

    assert layout(block) == layout(source)
    assert [p.requires_grad for p in block.parameters()] == [
        p.requires_grad for p in source.parameters()] == [False] + [True] * (
        len(list(source.parameters())) - 1)
    # The converted block's checkpoint loads into a fresh source module, and back.
    fresh = randomize_(factory(), seed=5)
    fresh.load_state_dict(block.state_dict())
    x = make_x()
    assert_rel_close(block(x), fresh(x))
    other = FusedSEBlock.from_module(randomize_(factory(), seed=6), backend="reference")
    other.load_state_dict(source.state_dict())
    assert_rel_close(other(x), source(x))
    # Training the block leaves the frozen weight without a gradient.
    block(x.requires_grad_()).square().sum().backward()
    assert first.grad is None
    assert all(p.grad is not None for p in block.parameters() if p.requires_grad)


def test_from_module_loads_checkpoints_of_constructed_blocks():
    """Converted blocks used to hold nn.Linear fc1 / fc2 whatever the source: those
    checkpoints (keys fc1.* / fc2.*, weights [out, in]) still load into a converted block
    whose layers are named otherwise (timm's conv_reduce / conv_expand)."""
    old = randomize_(FusedSEBlock(C, rd_channels=CR, activation="silu"), seed=3)
    block = FusedSEBlock.from_module(timm_efficientnet_se(act_layer=nn.SiLU),
                                     backend="reference")
    assert list(block.state_dict())[0] == "conv_reduce.weight"
    result = block.load_state_dict(old.state_dict())
    assert result.missing_keys == [] and result.unexpected_keys == []
    x = make_x()
    assert_rel_close(block(x), old(x))
    senet_block = FusedSEBlock.from_module(SELayer(), backend="reference")
    old = randomize_(FusedSEBlock(C, rd_channels=CR, bias=False), seed=4)
    senet_block.load_state_dict(old.state_dict())
    assert_rel_close(senet_block(x), old(x))


@pytest.mark.parametrize("where", ["fc1-forward-hook", "fc2-backward-hook", "act-forward"])
def test_from_module_refuses_altered_layers(where):
    """The fused op never calls the SE module's layers: a hook or a replaced forward on one
    would be dropped silently, so such a module is refused."""
    source = torchvision_se()
    if where == "fc1-forward-hook":
        source.fc1.register_forward_hook(lambda *args: None)
    elif where == "fc2-backward-hook":
        source.fc2.register_full_backward_hook(lambda *args: None)
    else:
        source.activation.forward = lambda x: x
    with pytest.raises(ValueError, match="hooks|forward is replaced"):
        FusedSEBlock.from_module(source)


def test_from_module_post_relu_adds_the_resnet_tail():
    source = randomize_(timm_legacy_se())
    block = FusedSEBlock.from_module(source, backend="reference", post_relu=True)
    x, residual = make_x(seed=1), make_x(seed=2)
    assert block.post_relu
    assert_rel_close(block(x, residual), F.relu(source(x) + residual))


# --- rexnet's SE: a BatchNorm between fc1 and the activation ---------------------------

def se_with_batch_norm(seed=0, bias=True):
    source = randomize_(timm_se(norm_layer=nn.BatchNorm2d, act_layer="swish", bias=bias), seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        source.bn.running_mean.copy_(0.5 * torch.randn(CR, generator=gen))
        source.bn.running_var.copy_(0.5 + torch.rand(CR, generator=gen))
    return source


@pytest.mark.parametrize("backend", ["reference", "triton", "cpu"])
@pytest.mark.parametrize("bias", [True, False])
def test_se_with_batch_norm_folds_it_in_eval_mode(backend, bias, device):
    """In eval mode the BatchNorm's running statistics fold into fc1 (exact up to rounding)
    and the fused op runs; outputs and every gradient equal the source's (float64)."""
    from senet_kernels import available_backends
    if not available_backends()[backend].available:
        pytest.skip(f"backend {backend} unavailable: {available_backends()[backend].reason}")
    dev = device if backend == "triton" else torch.device("cpu")
    source = se_with_batch_norm(bias=bias).double().to(dev).eval()
    block = FusedSEBlock.from_module(source, backend=backend)
    assert block.bn is source.bn and "bn.running_mean" in block.state_dict()
    x = make_x(device=dev, dtype=torch.float64).requires_grad_()
    results = []
    for module in (source, block):
        y = module(x)
        grad = make_x(seed=3, device=dev, dtype=torch.float64)
        results.append((y, *torch.autograd.grad(y, [x, *source.parameters()], grad)))
    for actual, expected in zip(results[1], results[0]):
        assert_rel_close(actual, expected, 1e-10)
    # float32 through the fused kernels: the fold costs no accuracy
    source32, block32 = source.float(), block.float()
    x32 = make_x(device=dev)
    with torch.no_grad():
        assert_rel_close(block32(x32), source32(x32))


def test_se_with_batch_norm_in_training_mode_is_the_sources_forward():
    """With batch statistics the block runs the source's layers: same output, same
    gradients, same running-statistics updates; then eval mode uses what training left."""
    source = se_with_batch_norm().train()
    twin = copy.deepcopy(source)
    block = FusedSEBlock.from_module(twin, backend="reference", post_relu=True)
    for step in range(2):
        x, residual = make_x(seed=10 + step), make_x(seed=20 + step)
        expected = F.relu(source(x) + residual)
        actual = block(x, residual)
        assert torch.equal(actual, expected)
        expected.square().sum().backward()
        actual.square().sum().backward()
    for (name, a), b in zip(twin.state_dict().items(), source.state_dict().values()):
        assert torch.equal(a, b), name
    for a, b in zip(twin.parameters(), source.parameters()):
        assert torch.equal(a.grad, b.grad)
    assert int(twin.bn.num_batches_tracked) == 2
    source.eval(), block.eval()
    x = make_x(seed=5)
    with torch.no_grad():
        assert_rel_close(block(x), F.relu(source(x)))


def test_se_with_a_norm_other_than_batch_norm_is_refused():
    with pytest.raises(ValueError, match="must be nn.Identity or nn.BatchNorm2d"):
        FusedSEBlock.from_module(timm_se(norm_layer=nn.SyncBatchNorm))


# --- from_module rejects what the fused op does not compute -------------------------------

def _replace(module, **children):
    for name, child in children.items():
        setattr(module, name, child)
    return module


@register_se_class
class SELayerWithScale(SELayer):
    """A registered SE class carrying extra state that a conversion would drop."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(C))


class ScaledSiLU(nn.SiLU):
    """A subclass of a supported activation that computes something else."""

    def forward(self, x):
        return 2 * super().forward(x)


class HardSigmoid(nn.Module):
    """Named like timm's HardSigmoid, but not timm's (nor a hard sigmoid)."""

    def forward(self, x):
        return torch.sigmoid(x)


class DoubledConv(nn.Conv2d):
    """A Conv2d subclass whose forward is not a plain conv."""

    def forward(self, x):
        return 2 * super().forward(x)


UNSUPPORTED = {
    "not-a-module": (lambda: 42, TypeError, "needs an nn.Module, got int"),
    "conv2d": (lambda: nn.Conv2d(C, C, 1), TypeError, "does not recognize Conv2d"),
    "timm-effective-se-add-maxpool": (
        lambda: pytest.importorskip("timm.layers").EffectiveSEModule(C, add_maxpool=True),
        ValueError, "EffectiveSEModule with add_maxpool=True"),
    "timm-effective-se-tanh-gate": (
        lambda: pytest.importorskip("timm.layers").EffectiveSEModule(C, gate_layer="tanh"),
        ValueError, "EffectiveSEModule.gate is Tanh"),
    "timm-se-add-maxpool": (lambda: timm_se(add_maxpool=True), ValueError,
                            "SEModule with add_maxpool=True"),
    "timm-se-instancenorm": (lambda: timm_se(norm_layer=nn.InstanceNorm2d), ValueError,
                             "SEModule.bn is InstanceNorm2d"),
    "timm-se-tanh-gate": (lambda: timm_se(gate_layer="tanh"), ValueError, "SEModule.gate is Tanh"),
    "timm-eff-relu6": (lambda: timm_efficientnet_se(act_layer=nn.ReLU6), ValueError,
                       "SqueezeExcite.act1 is ReLU6"),
    "tv-softsign": (lambda: torchvision_se(nn.Softsign), ValueError,
                    "SqueezeExcitation.activation is Softsign"),
    "tv-tanh-gate": (lambda: torchvision_se(gate=nn.Tanh), ValueError,
                     "SqueezeExcitation.scale_activation is Tanh"),
    "tv-silu-subclass": (lambda: torchvision_se(ScaledSiLU), ValueError,
                         "SqueezeExcitation.activation is ScaledSiLU"),
    "non-timm-hardsigmoid": (lambda: SELayer(gate=HardSigmoid), ValueError,
                             "SELayer.fc.3 is HardSigmoid"),
    "tv-conv-subclass": (lambda: _replace(torchvision_se(), fc2=DoubledConv(CR, C, 1)),
                         TypeError, "SqueezeExcitation.fc2 must be nn.Conv2d, got DoubledConv"),
    "tv-3x3-conv": (lambda: _replace(torchvision_se(), fc1=nn.Conv2d(C, CR, 3, padding=1)),
                    ValueError, "SqueezeExcitation.fc1 must be a 1x1 conv"),
    "tv-grouped-conv": (lambda: _replace(torchvision_se(), fc2=nn.Conv2d(CR, C, 1, groups=2)),
                        ValueError, "SqueezeExcitation.fc2 must have stride 1.*groups=2"),
    "tv-strided-conv": (lambda: _replace(torchvision_se(), fc1=nn.Conv2d(C, CR, 1, stride=2)),
                        ValueError, "stride=\\(2, 2\\)"),
    "tv-linear-fc": (lambda: _replace(torchvision_se(), fc1=nn.Linear(C, CR)), TypeError,
                     "SqueezeExcitation.fc1 must be nn.Conv2d, got Linear"),
    "tv-max-pool": (lambda: _replace(torchvision_se(), avgpool=nn.AdaptiveMaxPool2d(1)),
                    ValueError, "SqueezeExcitation.avgpool must be nn.AdaptiveAvgPool2d"),
    "tv-mismatched-fc": (lambda: _replace(torchvision_se(), fc2=nn.Conv2d(CR + 1, C, 1)),
                         ValueError, "fc1 maps 24 -> 6 channels but fc2 maps 7 -> 24"),
    "senet-mixed-bias": (lambda: _replace(SELayer(), fc=nn.Sequential(
        nn.Linear(C, CR, bias=True), nn.ReLU(), nn.Linear(CR, C, bias=False), nn.Sigmoid())),
        ValueError, "only one of fc.0 and fc.2 has a bias"),
    "senet-extra-state": (SELayerWithScale, ValueError, "state the SE op does not use: scale"),
    # the fused op has nn.LeakyReLU's default slope only
    "tv-leaky-relu-other-slope": (lambda: torchvision_se(lambda: nn.LeakyReLU(0.1)), ValueError,
                                  "activation is LeakyReLU: unsupported activation.*"
                                  "nn.LeakyReLU with negative_slope=0.01"),
}


@pytest.mark.parametrize("kind", list(UNSUPPORTED))
def test_from_module_rejects_unsupported(kind):
    factory, error, match = UNSUPPORTED[kind]
    with pytest.raises(error, match=match):
        FusedSEBlock.from_module(factory())


# --- The block itself ---------------------------------------------------------------------

def test_parameter_names_and_shapes():
    def shapes(block):
        return {name: tuple(p.shape) for name, p in block.named_parameters()}

    assert shapes(FusedSEBlock(C, reduction=4)) == {
        "fc1.weight": (6, C), "fc1.bias": (6,), "fc2.weight": (C, 6), "fc2.bias": (C,)}
    assert shapes(FusedSEBlock(C, rd_channels=5, bias=False)) == {
        "fc1.weight": (5, C), "fc2.weight": (C, 5)}
    assert FusedSEBlock(64).rd_channels == 4  # default reduction 16
    assert FusedSEBlock(8).rd_channels == 1  # never below one channel
    assert list(FusedSEBlock(C).buffers()) == []


def test_extra_repr():
    block = FusedSEBlock(C, rd_channels=CR, activation="silu", gate="hardsigmoid",
                         post_relu=True, backend="reference")
    assert ("channels=24, rd_channels=6, activation='silu', gate='hardsigmoid', "
            "post_relu=True, backend='reference'") in repr(block)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_forward_residual_post_relu(backend, device):
    dev = device if backend == "triton" else torch.device("cpu")
    block = randomize_(FusedSEBlock(C, rd_channels=CR, activation="silu", gate="hardsigmoid",
                                    post_relu=True, backend=backend)).to(dev)
    x, residual = make_x(seed=1, device=dev), make_x(seed=2, device=dev)
    s = F.hardsigmoid(block.fc2(F.silu(block.fc1(x.mean((2, 3))))))
    assert_rel_close(block(x, residual), F.relu(x * s[:, :, None, None] + residual))


def test_state_dict_round_trip():
    config = dict(rd_channels=CR, activation="silu", gate="hardsigmoid")
    a = randomize_(FusedSEBlock(C, **config))
    state = a.state_dict()
    assert list(state) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    b = FusedSEBlock(C, **config)
    b.load_state_dict(state)
    for name, p in a.state_dict().items():
        assert torch.equal(b.state_dict()[name], p)
    x = make_x()
    assert torch.equal(a(x), b(x))


def test_loads_conv_shaped_state_dict():
    source = randomize_(timm_se(act_layer="swish"))
    state = source.state_dict()
    assert state["fc1.weight"].shape == (CR, C, 1, 1)
    block = FusedSEBlock(C, rd_channels=CR, activation="silu", gate="sigmoid",
                         backend="reference")
    result = block.load_state_dict(state)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert block.fc1.weight.shape == (CR, C) and block.fc2.weight.shape == (C, CR)
    assert state["fc1.weight"].dim() == 4  # the caller's dict is left as it was
    x = make_x()
    assert_rel_close(block(x), source(x))

    # Nested under a prefix, as inside a larger model.
    model = nn.Sequential(nn.Identity(), FusedSEBlock(C, rd_channels=CR))
    model.load_state_dict({"1." + k: v for k, v in state.items()})
    assert torch.equal(model[1].fc2.weight, source.fc2.weight.reshape(C, CR))

    # A conv weight of the wrong size still fails as a size mismatch.
    with pytest.raises(RuntimeError, match="size mismatch for fc1.weight"):
        FusedSEBlock(C, rd_channels=CR + 2).load_state_dict(state)


def test_strict_loading_still_reports_bad_keys():
    state = randomize_(FusedSEBlock(C, rd_channels=CR)).state_dict()
    block = FusedSEBlock(C, rd_channels=CR)

    extra = dict(state, **{"fc3.weight": torch.randn(C, CR)})
    with pytest.raises(RuntimeError, match=r'Unexpected key\(s\).*"fc3.weight"'):
        block.load_state_dict(extra)
    missing = {k: v for k, v in state.items() if k != "fc1.bias"}
    with pytest.raises(RuntimeError, match=r'Missing key\(s\).*"fc1.bias"'):
        block.load_state_dict(missing)

    # timm EfficientNet SE weights are conv-shaped but named differently: not a match.
    effnet_state = timm_efficientnet_se().state_dict()
    with pytest.raises(RuntimeError, match="conv_reduce.weight"):
        block.load_state_dict(effnet_state)
    result = block.load_state_dict(effnet_state, strict=False)
    assert sorted(result.missing_keys) == sorted(state)
    assert sorted(result.unexpected_keys) == sorted(effnet_state)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_channels_last_in_channels_last_out(backend, device):
    dev = device if backend == "triton" else torch.device("cpu")
    block = randomize_(FusedSEBlock(C, rd_channels=CR, backend=backend)).to(dev)
    x = make_x(device=dev)
    x_cl = x.to(memory_format=torch.channels_last)
    assert not x_cl.is_contiguous()
    y = block(x_cl)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert_rel_close(y, block(x))


@pytest.mark.parametrize("activation, gate, residual, post_relu", [
    ("relu", "sigmoid", False, False),
    ("silu", "hardsigmoid", True, True),
])
def test_triton_gradients_match_reference(activation, gate, residual, post_relu, device):
    config = dict(rd_channels=CR, activation=activation, gate=gate, post_relu=post_relu)
    reference = randomize_(FusedSEBlock(C, backend="reference", **config)).to(device)
    fused = FusedSEBlock(C, backend="triton", **config).to(device)
    fused.load_state_dict(reference.state_dict())
    x = make_x(seed=1, device=device)
    res = make_x(seed=2, device=device) if residual else None
    grad_out = make_x(seed=3, device=device)

    def run(block):
        xg = x.clone().requires_grad_()
        rg = res.clone().requires_grad_() if residual else None
        y = block(xg, rg)
        y.backward(grad_out)
        grads = {"x": xg.grad, **{n: p.grad for n, p in block.named_parameters()}}
        if residual:
            grads["residual"] = rg.grad
        return y, grads

    y_ref, grads_ref = run(reference)
    y, grads = run(fused)
    assert_rel_close(y, y_ref)
    assert set(grads) == set(grads_ref)
    for name, g in grads_ref.items():
        assert g is not None and grads[name] is not None, name
        assert_rel_close(grads[name], g)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(channels=0), ValueError, "channels must be >= 1, got 0"),
    (dict(channels=-3), ValueError, "channels must be >= 1, got -3"),
    (dict(channels=24.0), TypeError, "channels must be an int, got float"),
    (dict(channels=C, reduction=0), ValueError, "reduction must be >= 1"),
    (dict(channels=C, rd_channels=0), ValueError, "rd_channels must be >= 1"),
    (dict(channels=C, activation="softsign"), ValueError, "activation must be one of"),
    (dict(channels=C, gate="tanh"), ValueError, "gate must be one of"),
    (dict(channels=C, backend="cudnn"), ValueError, "backend must be one of"),
])
def test_constructor_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        FusedSEBlock(**kwargs)


def test_package_does_not_import_timm_or_torchvision():
    code = ("import sys; from senet_kernels import FusedSEBlock; FusedSEBlock(8); "
            "print(sorted(m for m in ('timm', 'torchvision') if m in sys.modules))")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
