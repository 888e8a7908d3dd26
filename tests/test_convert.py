"""convert_se_modules: fused SE blocks swapped into timm and torchvision models, in place.

Each model is run before and after the conversion on the same random input, in eval and in
training mode: outputs in float32 (and float64), input and weight gradients in float64 (see
``test_converted_model_computes_the_same``). Weights and BN statistics are random.
"""

import copy
import warnings
from collections import OrderedDict

import pytest
import torch
from torch import nn

from senet_kernels import FusedSEBlock, available_backends, convert_se_modules, register_se_class
from senet_kernels.residual_tail import FusedResidualBlock

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")
from timm.layers.squeeze_excite import SEModule  # noqa: E402
from timm.models._efficientnet_blocks import SqueezeExcite  # noqa: E402
from timm.models.senet import SEModule as LegacySEModule  # noqa: E402
from torchvision.ops import SqueezeExcitation  # noqa: E402

from bn_calibration import calibrate_bn_statistics_  # noqa: E402

#: The SE classes these models use, counted independently of from_module's recognition.
SE_CLASSES = (SEModule, LegacySEModule, SqueezeExcite, SqueezeExcitation)

TOLS = {"reference": 1e-5, "cpu": 1e-4}  # float32, relative to the largest reference value
# float64: rounding (1e-16) amplified through a network stays below 1e-8; PyTorch's own
# hard-sigmoid backward uses a float32 1/6 (3e-8 off) even in float64, where the C++ kernel
# is exact, hence 1e-7 for the MobileNetV3 models.
TOL64 = 1e-7
BACKENDS = [pytest.param(b, marks=pytest.mark.skipif(
    not available_backends()[b].available, reason=f"backend {b} unavailable")) for b in TOLS]

MODELS = {
    "timm-seresnet18": lambda: timm.create_model("seresnet18", pretrained=False),
    # residual blocks of every known class: timm Bottleneck (with avg-down shortcut), the
    # legacy SEResNetBlock and SEResNeXtBottleneck; their SE + add + ReLU tails are fused
    "timm-seresnext26d_32x4d": lambda: timm.create_model("seresnext26d_32x4d", pretrained=False),
    "timm-legacy_seresnet18": lambda: timm.create_model("legacy_seresnet18", pretrained=False),
    "timm-legacy_seresnext26_32x4d": lambda: timm.create_model("legacy_seresnext26_32x4d",
                                                               pretrained=False),
    "timm-efficientnet_b0": lambda: timm.create_model("efficientnet_b0", pretrained=False),
    "timm-regnety_002": lambda: timm.create_model("regnety_002", pretrained=False),
    "timm-mobilenetv3_small_050": lambda: timm.create_model("mobilenetv3_small_050",
                                                            pretrained=False),
    "tv-efficientnet_b0": lambda: torchvision.models.efficientnet_b0(),
    "tv-regnet_y_400mf": lambda: torchvision.models.regnet_y_400mf(),
    "tv-mobilenet_v3_small": lambda: torchvision.models.mobilenet_v3_small(),
}


# --- Helpers ------------------------------------------------------------------------------

def rel_err(actual, expected, floor=1e-300):
    """max|actual - expected| / max(max|expected|, floor)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    diff = (actual.double() - expected.double()).abs().max().item()
    return diff / max(expected.double().abs().max().item(), floor)


def make_x(*shape, seed=1):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def randomize_(model, seed=0):
    """Random biases, BN weights, biases and running statistics; BN momentum 0; eval mode.

    The default inits zero the biases, which would leave the SE gates of some models at
    sigmoid(0) whatever the input. The random network must also stay well conditioned, or
    float32 rounding alone (in the original model: float32 vs float64) exceeds the 1e-5 we
    test at. Running statistics drawn independently of the data, or perturbed after being
    measured in one pass, compound from layer to layer (EfficientNet outputs reached 1e3):
    so each BN's statistics are set, in one eval-mode pass over a random batch, to its own
    input's mean and variance moved by 0.1 std and +-25%. BN weights in [0.15, 0.45] keep
    the residual branches from doubling the stream block after block (at [0.5, 1.5]
    EfficientNet-B0 reached 1e2 and 2e-5 float32 error). Momentum 0 keeps the statistics
    through the training-mode runs.
    """
    gen = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=gen))
        for bn in bns:
            bn.weight.copy_(0.15 + 0.3 * torch.rand(bn.num_features, generator=gen))
            bn.bias.copy_(0.2 * torch.randn(bn.num_features, generator=gen))
            bn.momentum = 0.0
    calibrate_bn_statistics_(model, gen)
    return model


def se_paths(model):
    return [name for name, m in model.named_modules() if isinstance(m, SE_CLASSES)]


def under(paths, name):
    """Whether the parameter ``name`` belongs to one of the modules at ``paths``."""
    return any(name.startswith(path + ".") for path in paths)


def run(model, x, training, grads):
    """(output, input gradient, {parameter name: gradient}) of one forward (and backward)."""
    model.train(training)
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(grads)
    torch.manual_seed(7)  # the same dropout / stochastic-depth draws before and after
    with torch.set_grad_enabled(grads):
        y = model(x)
    if not grads:
        return y, None, {}
    y.backward(make_x(*y.shape, seed=3).to(y.dtype))
    return y.detach(), x.grad, {n: p.grad for n, p in model.named_parameters()}


def se_param_names(source_se, block):
    """(source name, block name) of each parameter of one converted SE: fc1 weight, fc1
    bias, fc2 weight, fc2 bias come in this order in every recognized SE module and in
    FusedSEBlock."""
    names = [n for n, _ in block.named_parameters()]
    source = [n for n, _ in source_se.named_parameters()]
    assert len(source) == len(names)
    return list(zip(source, names))


# --- Conversion of whole models -----------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(MODELS))
def test_converted_model_computes_the_same(name, backend):
    """Outputs (float32 and float64) and all gradients (float64) equal before and after.

    Gradients are compared in float64 because a ReLU network's gradient is discontinuous in
    its input: float32 rounding differences of 1e-7 flip the ReLUs whose inputs are that
    close to 0 and move those gradient elements by O(1), whoever computes the SE.
    """
    torch.manual_seed(0)
    model = randomize_(MODELS[name]())
    model64 = copy.deepcopy(model).double()
    paths = se_paths(model)
    assert paths, "the test model has no SE modules"
    source_se = {p: model64.get_submodule(p) for p in paths}
    x = make_x(2, 3, 64, 64)
    runs = [(model, x, False), (model64, x.double(), True)]  # (model, input, gradients?)
    before = {(i, training): run(m, xi, training, grads)
              for i, (m, xi, grads) in enumerate(runs) for training in (False, True)}
    kept = [{n: p for n, p in m.named_parameters() if not under(paths, n)} for m, _, _ in runs]

    # Every SE of the residual models sits in a block whose tail is fused; none elsewhere.
    tails = name.startswith(("timm-seresne", "timm-legacy"))
    for (m, xi, _), params in zip(runs, kept):
        assert convert_se_modules(m, backend=backend) == len(paths)
        assert se_paths(m) == []
        for path in paths:
            block = m.get_submodule(path)
            assert type(block) is FusedSEBlock and block.backend == backend
            assert block.post_relu == tails and block.fc_layers()[0].weight.dtype == xi.dtype
            parent = m.get_submodule(path.rpartition(".")[0])
            assert (type(parent) is FusedResidualBlock) == tails
        # Everything else is untouched: the very same parameter objects.
        now = {n: p for n, p in m.named_parameters() if not under(paths, n)}
        assert now.keys() == params.keys() and all(now[n] is p for n, p in params.items())

    for (i, training), (y_ref, gx_ref, grads_ref) in before.items():
        m, xi, grads = runs[i]
        y, gx, grads_new = run(m, xi, training, grads)
        tol = TOLS[backend] if y.dtype == torch.float32 else TOL64
        mode = "train" if training else "eval"
        assert rel_err(y, y_ref) < tol, f"{mode} {y.dtype} output"
        if not grads:
            continue
        assert rel_err(gx, gx_ref) < tol, f"{mode} input gradient"
        # Some gradients are 0 up to rounding (a BN's bias feeding a training-mode BN
        # through linear layers only): measure those against 1e-3 of the largest gradient.
        floor = 1e-3 * max(g.abs().max().item() for g in grads_ref.values())
        for n in kept[i]:
            assert rel_err(grads_new[n], grads_ref[n], floor) < tol, f"{mode} {n}"
        for path, se in source_se.items():
            for n_src, n_new in se_param_names(se, m.get_submodule(path)):
                g_new, g_ref = grads_new[f"{path}.{n_new}"], grads_ref[f"{path}.{n_src}"]
                err = rel_err(g_new, g_ref.reshape(g_new.shape), floor)
                assert err < tol, f"{mode} {path}.{n_new}"


# --- What is and is not converted ---------------------------------------------------------

def tv_se(activation=nn.ReLU, channels=16):
    return SqueezeExcitation(channels, 4, activation=activation)


def test_unsupported_se_is_left_alone_with_one_warning():
    softsign_se = tv_se(nn.Softsign)
    maxpool_se = SEModule(16, rd_channels=4, add_maxpool=True)
    model = nn.Sequential(OrderedDict(
        stem=nn.Conv2d(3, 16, 3, padding=1),
        se=tv_se(),
        stage=nn.Sequential(OrderedDict(softsign_se=softsign_se, body=nn.Conv2d(16, 16, 1),
                                        maxpool_se=maxpool_se))))
    randomize_(model).eval()
    x = make_x(2, 3, 16, 16)
    with torch.no_grad():
        expected = model(x)
    with pytest.warns(UserWarning) as record:
        assert convert_se_modules(model, backend="reference") == 1
    assert len(record) == 1
    message = str(record[0].message)
    assert "2 SE-like module(s)" in message
    assert "stage.softsign_se: SqueezeExcitation.activation is Softsign" in message
    assert "stage.maxpool_se: SEModule with add_maxpool=True" in message
    assert type(model.se) is FusedSEBlock
    assert model.stage.softsign_se is softsign_se and model.stage.maxpool_se is maxpool_se
    with torch.no_grad():
        assert rel_err(model(x), expected) < TOLS["reference"]


def test_models_without_se_give_zero_and_no_warning():
    model = torchvision.models.resnet18()
    before = [id(m) for m in model.modules()]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert convert_se_modules(model) == 0
        # Already converted: FusedSEBlock is not an SE module from_module converts again.
        converted = nn.Sequential(tv_se())
        assert convert_se_modules(converted) == 1
        assert convert_se_modules(converted) == 0
    assert [id(m) for m in model.modules()] == before


def test_shared_se_module_stays_shared():
    se = tv_se()
    model = nn.Sequential(se, nn.ReLU(), se)
    assert convert_se_modules(model) == 1
    assert type(model[0]) is FusedSEBlock and model[0] is model[2]


def test_modules_with_avg_pool_and_fc_are_not_se_like():
    """avg_pool + fc, like senet.pytorch's SELayer, but fc is a plain Linear head: neither
    converted nor warned about, and the SE inside it is converted."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 16, 1), tv_se())
            self.avg_pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(16, 4)

    model = Net()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert convert_se_modules(model) == 1
    assert type(model.body[1]) is FusedSEBlock


class DoubledSE(SqueezeExcitation):
    """A subclass of a known SE class whose forward computes something else."""

    def forward(self, x):
        return super().forward(x) * 2


class MaxPoolSE(nn.Module):
    """timm-legacy attribute names, but the squeeze is a max-pool."""

    def __init__(self, channels=16, reduced=4):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(reduced, channels, 1)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        s = self.sigmoid(self.fc2(self.relu(self.fc1(x.amax((2, 3), keepdim=True)))))
        return x * s


def _replaced_forward():
    se = tv_se()
    se.forward = lambda x: 2 * x
    return se


def _hooked():
    se = tv_se()
    se.register_forward_hook(lambda module, args, out: out * 3)
    return se


LOOK_ALIKES = {
    "subclass-with-own-forward": (lambda: DoubledSE(16, 4), "DoubledSE"),
    "max-pool-with-timm-names": (MaxPoolSE, "MaxPoolSE"),
    "forward-replaced-on-instance": (_replaced_forward, "forward is replaced on the instance"),
    "forward-hook": (_hooked, "forward hooks"),
}


@pytest.mark.parametrize("kind", list(LOOK_ALIKES))
def test_look_alikes_are_left_alone_with_a_warning_naming_them(kind):
    factory, named = LOOK_ALIKES[kind]
    model = nn.Sequential(OrderedDict(stem=nn.Conv2d(3, 16, 1), se=factory()))
    randomize_(model).eval()
    x = make_x(2, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
    source = model.se
    with pytest.warns(UserWarning, match=f"1 SE-like module.*\\n  se: .*{named}"):
        assert convert_se_modules(model, backend="reference") == 0
    assert model.se is source
    with torch.no_grad():
        assert torch.equal(model(x), expected)


def test_from_module_refuses_look_alikes():
    with pytest.raises(TypeError, match="does not recognize DoubledSE.*register_se_class"):
        FusedSEBlock.from_module(DoubledSE(16, 4))
    with pytest.raises(ValueError, match="forward is replaced on the instance"):
        FusedSEBlock.from_module(_replaced_forward())


def test_registered_class_converts():
    class VendoredSE(MaxPoolSE):
        def forward(self, x):  # the standard SE, with the legacy layout's names
            return x * self.sigmoid(self.fc2(self.relu(self.fc1(x.mean((2, 3), keepdim=True)))))

    model = randomize_(nn.Sequential(nn.Conv2d(3, 16, 1), VendoredSE())).eval()
    x = make_x(2, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
    register_se_class(VendoredSE)
    assert convert_se_modules(model, backend="reference") == 1
    assert type(model[1]) is FusedSEBlock
    with torch.no_grad():
        assert rel_err(model(x), expected) < TOLS["reference"]
    with pytest.raises(TypeError, match="needs an nn.Module subclass"):
        register_se_class(int)


def test_modules_in_containers_and_training_mode():
    model = nn.ModuleDict({"a": nn.ModuleList([tv_se(nn.SiLU), nn.Identity()]),
                           "b": tv_se(channels=8)}).eval()
    model.a[0].train()
    assert convert_se_modules(model, backend="reference") == 2
    assert type(model.a[0]) is FusedSEBlock and model.a[0].activation == "silu"
    assert model.a[0].training and not model["b"].training
    assert model["b"].channels == 8


def test_bad_arguments():
    with pytest.raises(TypeError, match="needs an nn.Module"):
        convert_se_modules("model")
    with pytest.raises(TypeError, match="model itself is an SE module"):
        convert_se_modules(tv_se())
    with pytest.raises(ValueError, match="backend must be one of .*'bogus'"):
        convert_se_modules(nn.Sequential(tv_se()), backend="bogus")
    with pytest.raises(TypeError, match="fuse_residual must be a bool"):
        convert_se_modules(nn.Sequential(tv_se()), fuse_residual="yes")
    with pytest.raises(TypeError, match="fuse_bn must be a bool"):
        convert_se_modules(nn.Sequential(tv_se()), fuse_bn=1)


# --- What a converted model keeps of the source: frozen flags, parameters, checkpoints -----

#: Small models with every recognized SE class and residual block class of timm and
#: torchvision (the pretrainedmodels and senet.pytorch classes: test_residual_tail.py).
ROUND_TRIP_MODELS = {
    "timm-seresnet18": MODELS["timm-seresnet18"],  # resnet BasicBlock, SEModule
    "timm-seresnext26d_32x4d": MODELS["timm-seresnext26d_32x4d"],  # resnet Bottleneck
    "timm-legacy_seresnet18": MODELS["timm-legacy_seresnet18"],  # legacy block and SEModule
    "timm-legacy_seresnext26_32x4d": MODELS["timm-legacy_seresnext26_32x4d"],
    "timm-mobilenetv3_small_050": MODELS["timm-mobilenetv3_small_050"],  # SqueezeExcite
    "tv-mobilenet_v3_small": MODELS["tv-mobilenet_v3_small"],  # SqueezeExcitation
}


def state_layout(model):
    return {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name, fuse_residual", [
    *((name, True) for name in ROUND_TRIP_MODELS),
    # The SE modules converted alone inside the residual blocks (one of each block family).
    ("timm-seresnet18", False), ("timm-legacy_seresnet18", False)])
def test_converted_checkpoints_load_into_the_source_library_and_back(name, fuse_residual):
    """The state_dict of a converted model is the source model's, keys and shapes, so that
    weights trained with the fused blocks are published and served with stock timm /
    torchvision, and their checkpoints load into a converted model."""
    torch.manual_seed(0)
    factory = ROUND_TRIP_MODELS[name]
    model = randomize_(factory())
    layout = state_layout(model)
    params = [id(p) for p in model.parameters()]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert convert_se_modules(model, backend="reference", fuse_residual=fuse_residual) > 0
    assert state_layout(model) == layout
    # Every parameter, SE ones included, is still the same object, in the same order.
    assert [id(p) for p in model.parameters()] == params

    x = make_x(2, 3, 32, 32)
    stock = factory().eval()
    stock.load_state_dict(model.state_dict())  # strict: same keys and shapes
    with torch.no_grad():
        assert rel_err(stock(x), model.eval()(x)) < TOLS["reference"]

    # And back: a stock checkpoint (other weights) into the converted model.
    other = randomize_(factory(), seed=9).eval()
    model.load_state_dict(other.state_dict())
    with torch.no_grad():
        assert rel_err(model(x), other(x)) < TOLS["reference"]


def tv_frozen_sequential():
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), tv_se())
    return model.requires_grad_(False)


@pytest.mark.parametrize("factory", [tv_frozen_sequential,
                                     lambda: MODELS["timm-seresnet18"]().requires_grad_(False),
                                     lambda: MODELS["timm-mobilenetv3_small_050"]()
                                     .requires_grad_(False)],
                         ids=["tv-sequential", "timm-seresnet18", "timm-mobilenetv3"])
def test_frozen_parameters_stay_frozen(factory):
    """Fine-tuning a frozen backbone must not quietly train its SE layers."""
    model = factory().train()
    assert convert_se_modules(model, backend="reference") > 0
    assert [n for n, p in model.named_parameters() if p.requires_grad] == []
    x = make_x(2, 3, 32, 32).requires_grad_()
    model(x).square().sum().backward()
    assert x.grad is not None  # the backward ran through the fused blocks
    assert [n for n, p in model.named_parameters() if p.grad is not None] == []


def test_partly_frozen_se_keeps_each_flag_and_the_optimizer_keeps_working():
    model = randomize_(MODELS["timm-seresnet18"]()).train()
    se = model.layer1[0].se
    se.fc1.requires_grad_(False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)  # built before the conversion
    convert_se_modules(model, backend="reference")
    fused = model.layer1[0].se
    assert type(fused) is FusedSEBlock and fused.fc1 is se.fc1 and fused.fc2 is se.fc2
    assert not fused.fc1.weight.requires_grad and fused.fc2.weight.requires_grad
    frozen, trained = se.fc1.weight.detach().clone(), se.fc2.weight.detach().clone()
    model(make_x(2, 3, 32, 32)).square().sum().backward()
    optimizer.step()
    assert torch.equal(se.fc1.weight, frozen) and not torch.equal(se.fc2.weight, trained)


def test_se_classes_that_are_not_converted_are_named():
    """timm's channels-last SE has a layout of its own, and an Effective SE with a max-pool
    in its squeeze is not computed by the op: both are named in the warning, not passed over
    (the plain Effective SE modules are converted, single FC)."""
    from timm.layers.squeeze_excite import EffectiveSEModule, SqueezeExciteCl
    from timm.models.hgnet import EseModule
    model = nn.Sequential(OrderedDict(ese=EffectiveSEModule(16), hg=EseModule(16),
                                      maxpool=EffectiveSEModule(16, add_maxpool=True),
                                      cl=SqueezeExciteCl(16), se=tv_se()))
    with pytest.warns(UserWarning) as record:
        assert convert_se_modules(model, backend="reference") == 3
    message = str(record[0].message)
    assert "2 SE-like module(s)" in message
    assert "maxpool: EffectiveSEModule with add_maxpool=True is unsupported" in message
    assert "cl: SqueezeExciteCl" in message and "channels-last" in message
    assert model.ese.single_fc and model.hg.single_fc
