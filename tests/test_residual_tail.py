"""convert_se_modules fuses the tail of known SE residual blocks: relu(se(branch) + shortcut).

Whole-model equality before and after (outputs and every gradient) is in test_convert.py for
timm's Bottleneck / BasicBlock and the legacy SEResNetBlock / SEResNeXtBottleneck. Here: which
blocks are fused and which are left alone, the blocks of Cadene's pretrainedmodels and of
senet.pytorch (not installed here: copies of their forward, written from their published
source, under their module names), checkpoints, sharing, and torch.compile.
"""

import copy

import pytest
import torch
from torch import nn

from senet_kernels import FusedResidualBlock, FusedSEBlock, convert_se_modules

from cases import backend_device_params

timm = pytest.importorskip("timm")

from test_convert import TOL64, TOLS, make_x, randomize_, rel_err  # noqa: E402
from timm.models.resnet import BasicBlock  # noqa: E402


def seresnet18(**kwargs):
    torch.manual_seed(0)
    return randomize_(timm.create_model("seresnet18", pretrained=False, **kwargs))


def count(model, cls):
    return sum(type(m) is cls for m in model.modules())


def outputs_equal_after_conversion(model, x, **convert_kwargs):
    """Convert ``model`` (eval, float32) in place; assert its output is unchanged; return the
    number of SE modules replaced."""
    model.eval()
    with torch.no_grad():
        expected = model(x)
    replaced = convert_se_modules(model, backend="reference", **convert_kwargs)
    with torch.no_grad():
        assert rel_err(model(x), expected) < TOLS["reference"]
    return replaced


def test_fused_blocks_keep_parameters_and_checkpoints():
    model = seresnet18()
    source = copy.deepcopy(model)
    params = dict(model.named_parameters())
    downsample = model.layer2[0].downsample
    assert outputs_equal_after_conversion(model, make_x(2, 3, 32, 32)) == 8
    assert count(model, FusedResidualBlock) == 8
    block = model.layer2[0]
    assert [name for name, _ in block.named_children()] == \
        [name for name, _ in source.layer2[0].named_children()]
    assert block.downsample is downsample
    assert type(block.se) is FusedSEBlock and block.se.post_relu
    # the same parameter objects, except the SE's (copied into the fused block, same names)
    now = dict(model.named_parameters())
    assert now.keys() == params.keys()
    assert all(now[n] is p for n, p in params.items() if ".se." not in n)
    # the source's checkpoint loads as it is (SE weights as 1x1 convs)
    fresh = timm.create_model("seresnet18", pretrained=False)
    convert_se_modules(fresh, backend="reference")
    fresh.load_state_dict(source.state_dict())
    x = make_x(2, 3, 32, 32)
    with torch.no_grad():
        assert rel_err(fresh.eval()(x), source.eval()(x)) < TOLS["reference"]
    assert "tail: bn2 + SE + shortcut add + ReLU fused" in repr(block)
    assert "timm.models.resnet.BasicBlock" in repr(block)


def test_fuse_residual_false_fuses_the_se_modules_only():
    model = seresnet18()
    assert outputs_equal_after_conversion(model, make_x(2, 3, 32, 32), fuse_residual=False) == 8
    assert count(model, FusedResidualBlock) == 0 and count(model, BasicBlock) == 8
    assert not any(m.post_relu for m in model.modules() if type(m) is FusedSEBlock)


class SubclassedBlock(BasicBlock):
    """A subclass may compute something else: its tail is not fused."""


def _drop_path():
    return seresnet18(drop_path_rate=0.1)  # stochastic depth between the SE and the add


def _silu():
    return seresnet18(act_layer=nn.SiLU)  # final activation not a ReLU


def _hooked_block():
    model = seresnet18()
    model.layer1[0].register_forward_hook(lambda module, args, out: out * 2)
    return model


def _hooked_relu():
    model = seresnet18()
    model.layer1[0].act2.register_forward_hook(lambda module, args, out: out * 2)
    return model


def _replaced_forward():
    model = seresnet18()
    block = model.layer1[0]
    block.forward = lambda x: BasicBlock.forward(block, x) * 2
    return model


def _subclass():
    model = seresnet18()
    model.layer1[0].__class__ = SubclassedBlock
    return model


UNFUSED = {  # how the model is built, how many of its 8 blocks keep their class
    "drop-path": (_drop_path, 7),  # timm ramps the rate up from 0: the first block has none
    "silu": (_silu, 8),
    "hooked-block": (_hooked_block, 1),
    "hooked-relu": (_hooked_relu, 1),
    "forward-replaced": (_replaced_forward, 1),
    "subclass": (_subclass, 1),
}


@pytest.mark.parametrize("kind", list(UNFUSED))
def test_blocks_that_may_compute_something_else_keep_their_forward(kind):
    """The SE module inside is still fused alone (post_relu False); outputs unchanged."""
    build, unfused = UNFUSED[kind]
    model = build()
    assert outputs_equal_after_conversion(model, make_x(2, 3, 32, 32)) == 8
    assert count(model, FusedResidualBlock) == 8 - unfused
    kept = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(kept) == unfused
    assert all(type(m.se) is FusedSEBlock and not m.se.post_relu for m in kept)


def test_an_se_module_shared_by_two_blocks_stays_shared():
    """One fused copy, with one post_relu: both blocks keep their forward."""
    model = seresnet18()
    model.layer1[1].se = model.layer1[0].se
    assert outputs_equal_after_conversion(model, make_x(2, 3, 32, 32)) == 7
    assert type(model.layer1[0]) is BasicBlock and type(model.layer1[1]) is BasicBlock
    assert model.layer1[0].se is model.layer1[1].se
    assert count(model, FusedResidualBlock) == 6


def test_a_shared_block_stays_shared():
    block = seresnet18().layer1[0]
    model = nn.Sequential(block, block)
    assert outputs_equal_after_conversion(model, make_x(2, 64, 8, 8)) == 1
    assert type(model[0]) is FusedResidualBlock and model[0] is model[1]


# --- Cadene's pretrainedmodels blocks --------------------------------------------------
# The forward of pretrainedmodels.models.senet (v0.7.4) as published, under its module
# name, so that the exact-class match finds it.

class SEModule(nn.Module):
    __module__ = "pretrainedmodels.models.senet"

    def __init__(self, channels, reduction):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, padding=0)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, padding=0)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        return x * self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))


class SEResNeXtBottleneck(nn.Module):
    __module__ = "pretrainedmodels.models.senet"

    def __init__(self, inplanes, planes, groups, reduction, stride=1, downsample=None):
        super().__init__()
        width = planes * 2
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=groups,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.se_module = SEModule(planes * 4, reduction=reduction)
        self.downsample = downsample

    def forward(self, x):
        residual = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            residual = self.downsample(x)
        out = self.se_module(out) + residual
        return self.relu(out)


def assert_blocks_fused_with_same_results(model, x_shape):
    """Randomize ``model`` (a Sequential of two blocks, 3 input channels), convert it in
    float64, training mode; outputs and every gradient equal the source's."""
    model = randomize_(model).double().train()
    source = copy.deepcopy(model)
    layout = {k: v.shape for k, v in model.state_dict().items()}
    assert convert_se_modules(model, backend="reference") == 2
    # The converted blocks' checkpoint is the source's: same keys and shapes, both ways.
    assert {k: v.shape for k, v in model.state_dict().items()} == layout
    copy.deepcopy(source).load_state_dict(model.state_dict())
    copy.deepcopy(model).load_state_dict(source.state_dict())
    assert all(type(block) is FusedResidualBlock for block in model)
    x = make_x(*x_shape).double().requires_grad_()
    results = []
    for m in (source, model):
        y = m(x)
        grad = make_x(*y.shape, seed=3).double()
        results.append((y, *torch.autograd.grad(y, [x, *m.parameters()], grad)))
    for actual, expected in zip(results[1], results[0]):
        assert rel_err(actual, expected.reshape(actual.shape)) < TOL64


def test_pretrainedmodels_blocks_forward_and_gradients():
    torch.manual_seed(0)
    down = nn.Sequential(nn.Conv2d(3, 32, 1, stride=2, bias=False), nn.BatchNorm2d(32))
    assert_blocks_fused_with_same_results(nn.Sequential(
        SEResNeXtBottleneck(3, 8, groups=4, reduction=4, stride=2, downsample=down),
        SEResNeXtBottleneck(32, 8, groups=4, reduction=4)), (2, 3, 9, 9))


# --- senet.pytorch's blocks --------------------------------------------------------------
# As published in moskomule/senet.pytorch (senet/se_module.py, senet/se_resnet.py), under
# their module names.

class SELayer(nn.Module):
    __module__ = "senet.se_module"

    def __init__(self, channel, reduction=16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(channel, channel // reduction, bias=False),
                                nn.ReLU(inplace=True),
                                nn.Linear(channel // reduction, channel, bias=False),
                                nn.Sigmoid())

    def forward(self, x):
        b, c, _, _ = x.size()
        y = self.fc(self.avg_pool(x).view(b, c)).view(b, c, 1, 1)
        return x * y.expand_as(x)


class SEBasicBlock(nn.Module):
    __module__ = "senet.se_resnet"

    def __init__(self, inplanes, planes, stride=1, downsample=None, reduction=16):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.se = SELayer(planes, reduction)
        self.downsample = downsample

    def forward(self, x):
        residual = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        if self.downsample is not None:
            residual = self.downsample(x)
        out += residual
        return self.relu(out)


def test_senet_pytorch_blocks_forward_and_gradients():
    torch.manual_seed(0)
    down = nn.Sequential(nn.Conv2d(3, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))
    assert_blocks_fused_with_same_results(nn.Sequential(
        SEBasicBlock(3, 16, stride=2, downsample=down, reduction=4),
        SEBasicBlock(16, 16, reduction=4)), (2, 3, 9, 9))


@pytest.mark.parametrize("backend,device", backend_device_params())
def test_fused_block_compiles_without_graph_breaks(backend, device):
    model = nn.Sequential(seresnet18().layer2[0].to(device))
    convert_se_modules(model, backend=backend)
    fused = model[0]
    assert type(fused) is FusedResidualBlock
    x = make_x(2, 64, 8, 8).to(device).requires_grad_()
    torch._dynamo.reset()
    compiled = torch.compile(fused, fullgraph=True, backend="aot_eager")
    # Full-precision, deterministic convolutions on a GPU (no TF32, one algorithm), so that
    # compiled and eager differ by nothing but the compilation.
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True,
                                    allow_tf32=False):
        out, expected = compiled(x), fused(x)
        assert rel_err(out, expected) < 1e-5
        grads = torch.autograd.grad(out.square().sum(), [x, fused.se.fc1.weight])
        expected_grads = torch.autograd.grad(expected.square().sum(), [x, fused.se.fc1.weight])
    for g, e in zip(grads, expected_grads):
        assert rel_err(g, e) < 1e-5
