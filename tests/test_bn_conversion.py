"""convert_se_modules(fuse_bn=True) absorbs the BatchNorm in front of the SE into the fused op.

A converted model must train exactly as the source: after one SGD step (training mode, float64
so that no ReLU flips between the two) the outputs, every gradient, the parameters, the running
statistics and num_batches_tracked agree; then the eval-mode outputs. Which BatchNorms are
absorbed (exactly nn.BatchNorm2d, affine, tracking running statistics, not hooked) and where
the BatchNorm module runs instead (backend "reference", fuse_bn=False).
"""

import copy

import pytest
import torch
from torch import nn

from senet_kernels import FusedResidualBlock, convert_se_modules
from senet_kernels.backends import backend_status
from senet_kernels.bn_tail import absorbable_bn_reason

timm = pytest.importorskip("timm")

from test_convert import TOL64, make_x, randomize_, rel_err  # noqa: E402
from timm.models.resnet import Bottleneck, ResNet  # noqa: E402
from timm.models.senet import SENet, SEResNetBottleneck  # noqa: E402

needs_cpu_kernels = pytest.mark.skipif(not backend_status("cpu").available,
                                       reason="the C++ extension is not built")


def timm_bottleneck_resnet():
    """timm's ResNet with SE Bottlenecks (as seresnet50), one block per stage."""
    return ResNet(Bottleneck, [1, 1, 1, 1], num_classes=10, block_args={"attn_layer": "se"})


def legacy_bottleneck_senet():
    """timm's legacy SENet with SEResNetBottleneck (as legacy_seresnet50), one block a stage."""
    return SENet(SEResNetBottleneck, [1, 1, 1, 1], groups=1, reduction=16, drop_rate=0.0,
                 num_classes=10)


# name -> (factory, number of BatchNorms absorbed)
MODELS = {
    "seresnet18": (lambda: timm.create_model("seresnet18", pretrained=False), 8),
    # (no dropout before the classifier, which would differ between the two models)
    # its basic blocks apply a ReLU between bn2 and the SE: nothing to absorb
    "legacy_seresnet18": (lambda: timm.create_model("legacy_seresnet18", pretrained=False,
                                                     drop_rate=0.0), 0),
    "timm-bottleneck": (timm_bottleneck_resnet, 4),
    "legacy-bottleneck": (legacy_bottleneck_senet, 4),
}


def make_trainable_(model):
    """A ``randomize_``d model made to train: randomize_ sets momentum 0; the running
    statistics must move here, and the first block's last BatchNorm takes nn.BatchNorm2d's
    cumulative average (momentum None). Returns the model."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.momentum = 0.1
        bn.num_batches_tracked.fill_(3)
    for block in model.modules():
        for name in ("bn3", "bn2"):
            if isinstance(getattr(block, name, None), nn.BatchNorm2d):
                getattr(block, name).momentum = None
                return model
    return model


def make_model(name):
    torch.manual_seed(0)
    return make_trainable_(randomize_(MODELS[name][0]()).double())


def absorbed(model):
    return [m.absorbed_bn for m in model.modules()
            if isinstance(m, FusedResidualBlock) and m.absorbed_bn is not None]


def train_step(model, x):
    """One training step (SGD, lr 0.01); returns the output and the gradients before it."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    out = model(x)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device)
     .view_as(out)).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt.step()
    return out.detach(), grads


def assert_trains_as(converted, source, x):
    out, grads = train_step(converted, x)
    ref_out, ref_grads = train_step(source, x)
    assert rel_err(out, ref_out) < TOL64
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        assert rel_err(grad, ref_grads[name]) < TOL64, name
    state, ref_state = converted.state_dict(), source.state_dict()
    assert state.keys() == ref_state.keys()
    for key, value in state.items():  # parameters after the step, running stats, counters
        if key.endswith("num_batches_tracked"):
            assert torch.equal(value, ref_state[key]), key
        else:
            assert rel_err(value, ref_state[key]) < TOL64, key
    converted.eval(), source.eval()
    with torch.no_grad():
        assert rel_err(converted(x), source(x)) < TOL64


@needs_cpu_kernels
@pytest.mark.parametrize("name", MODELS)
def test_converted_model_trains_as_the_source(name):
    source = make_model(name)
    converted = copy.deepcopy(source)
    params = dict(converted.named_parameters())
    buffers = dict(converted.named_buffers())
    convert_se_modules(converted, backend="cpu")
    assert len(absorbed(converted)) == MODELS[name][1]
    # the BatchNorms stay, under their names: same parameter and buffer objects (the SE's
    # layers are the source SE's own)
    assert all(p is params[n] for n, p in converted.named_parameters())
    assert all(b is buffers[n] for n, b in converted.named_buffers())
    assert_trains_as(converted, source, make_x(2, 3, 32, 32).double())


@needs_cpu_kernels
def test_absorbed_bn_runs_in_the_fused_op():
    """The fused op, not the BatchNorm module, computes an absorbed BatchNorm."""
    model = make_model("seresnet18")
    convert_se_modules(model, backend="cpu")
    block = model.layer1[0]
    assert block.absorbed_bn == "bn2"
    assert "tail: bn2 + SE + shortcut add + ReLU fused" in repr(block)
    calls = []
    block.bn2.forward = lambda y: calls.append(1) or nn.BatchNorm2d.forward(block.bn2, y)
    model.eval()
    with torch.no_grad():
        expected = model(make_x(2, 3, 32, 32).double())
    assert calls == [1]  # a replaced forward is honoured: the module runs instead
    del block.bn2.forward
    with torch.no_grad():
        assert rel_err(model(make_x(2, 3, 32, 32).double()), expected) < TOL64
    assert calls == [1]


def test_checkpoints_load_into_stock_timm():
    model = make_model("seresnet18")
    layout = {k: v.shape for k, v in model.state_dict().items()}
    convert_se_modules(model, backend="cpu")
    assert {k: v.shape for k, v in model.state_dict().items()} == layout
    stock = timm.create_model("seresnet18", pretrained=False).double()
    stock.load_state_dict(model.state_dict())
    model.load_state_dict(stock.state_dict())


@pytest.mark.parametrize("backend, fuse_bn, module_runs", [
    ("reference", True, True),  # as a forced GPU backend: bn3 runs, then the fused SE op
    ("reference", False, True),
    pytest.param("cpu", False, True, marks=needs_cpu_kernels),
    pytest.param("cpu", True, False, marks=needs_cpu_kernels),  # the fused op computes bn3
])
def test_where_the_bn_module_runs(backend, fuse_bn, module_runs, monkeypatch):
    """fuse_bn=False leaves the BatchNorm in the branch; an SE backend without fused
    BatchNorm kernels ("reference" here, "triton" / "cuda" on a GPU) runs the BatchNorm module,
    then the SE. Every way trains as the source."""
    source = make_model("timm-bottleneck")
    model = copy.deepcopy(source)
    convert_se_modules(model, backend=backend, fuse_bn=fuse_bn)
    assert len(absorbed(model)) == (4 if fuse_bn else 0)
    block = model.layer1[0]
    assert (block._body[-1] == "conv3") == fuse_bn
    # counted at class level: a hook on the instance would itself stop the absorption
    calls = []
    bn_forward = nn.BatchNorm2d.forward
    monkeypatch.setattr(nn.BatchNorm2d, "forward",
                        lambda bn, y: calls.append(bn is block.bn3) or bn_forward(bn, y))
    assert_trains_as(model, source, make_x(2, 3, 32, 32).double())
    # the training step and the eval-mode forward of the converted model, then the source's
    assert calls.count(True) == (2 if module_runs else 0)


def _hooked(model):
    for m in model.modules():
        if isinstance(m, Bottleneck):
            m.bn3.register_forward_hook(lambda *args: None)
    return model


def _replace_bn3(factory):
    def edit(model):
        for m in model.modules():
            if isinstance(m, Bottleneck):
                m.bn3 = factory(m.bn3.num_features)
        return model
    return edit


class _BatchNormSubclass(nn.BatchNorm2d):
    pass


def _frozen_bn(channels):
    from torchvision.ops.misc import FrozenBatchNorm2d  # the class timm's frozen BN was
    return FrozenBatchNorm2d(channels)


NOT_ABSORBED = {
    "sync_bn": nn.SyncBatchNorm.convert_sync_batchnorm,
    "forward_hook": _hooked,
    "affine_false": _replace_bn3(lambda c: nn.BatchNorm2d(c, affine=False)),
    "no_running_stats": _replace_bn3(lambda c: nn.BatchNorm2d(c, track_running_stats=False)),
    "frozen_bn": _replace_bn3(_frozen_bn),
    "subclass": _replace_bn3(_BatchNormSubclass),
}


@pytest.mark.parametrize("kind", NOT_ABSORBED)
def test_bn_not_absorbed_but_tail_fused(kind):
    model = NOT_ABSORBED[kind](timm_bottleneck_resnet())
    bn3 = model.layer1[0].bn3
    assert absorbable_bn_reason(bn3) is not None
    assert convert_se_modules(model, backend="cpu") == 4
    blocks = [m for m in model.modules() if isinstance(m, FusedResidualBlock)]
    assert len(blocks) == 4 and not absorbed(model)
    assert blocks[0].bn3 is bn3 and blocks[0]._body[-1] == "bn3"
    assert "tail: SE + shortcut add + ReLU fused" in repr(blocks[0])


@needs_cpu_kernels
@pytest.mark.parametrize("kind", ["forward_hook", "affine_false", "no_running_stats"])
def test_not_absorbed_bn_trains_as_the_source(kind):
    torch.manual_seed(0)
    source = NOT_ABSORBED[kind](randomize_(timm_bottleneck_resnet())).double()
    model = copy.deepcopy(source)
    convert_se_modules(model, backend="cpu")
    assert not absorbed(model)
    assert_trains_as(model, source, make_x(2, 3, 32, 32).double())


@needs_cpu_kernels
@pytest.mark.parametrize("block, relu_before_se, absorbed_bns", [
    ("bottleneck", False, 4), ("basic", False, 4), ("basic", True, 0)])
def test_senet_models_absorb_the_bn_in_front_of_the_se(block, relu_before_se, absorbed_bns,
                                                       monkeypatch):
    """senet_kernels.models with backend "cpu" compute bn3 / bn2 in the fused op (not with a
    ReLU between it and the SE), and train as with backend "reference" (BatchNorm, then SE)."""
    from senet_kernels.models import SENet
    torch.manual_seed(0)
    kwargs = {"relu_before_se": relu_before_se} if block == "basic" else {}
    source = randomize_(SENet(block, [1, 1, 1, 1], num_classes=10, backend="reference",
                              **kwargs)).double()
    for bn in source.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.momentum = 0.1
    model = copy.deepcopy(source).set_backend("cpu")
    last_bns = {id(getattr(m, "bn3", None) or m.bn2) for m in model.modules() if hasattr(m, "se")}
    calls = []
    bn_forward = nn.BatchNorm2d.forward
    monkeypatch.setattr(nn.BatchNorm2d, "forward",
                        lambda bn, y: calls.append(id(bn) in last_bns) or bn_forward(bn, y))
    assert_trains_as(model, source, make_x(2, 3, 32, 32).double())
    # the training step and the eval-mode forward
    assert calls.count(True) == 2 * (4 - absorbed_bns)


@needs_cpu_kernels
def test_absorbed_bn_compiles_in_training_mode():
    """torch.compile(fullgraph=True) of a block with its bn3 absorbed, training mode: the same
    output, gradients and running statistics as eager."""
    source = make_model("timm-bottleneck").layer2[0]
    blocks = {}
    for mode in ("eager", "compiled"):
        block = nn.Sequential(copy.deepcopy(source))
        convert_se_modules(block, backend="cpu")
        assert block[0].absorbed_bn == "bn3"
        blocks[mode] = block.train()
    torch._dynamo.reset()
    compiled = torch.compile(blocks["compiled"], fullgraph=True, backend="aot_eager")
    x = make_x(2, 256, 8, 8).double()
    results = {}
    for mode, fn in (("eager", blocks["eager"]), ("compiled", compiled)):
        out = fn(x)
        grads = torch.autograd.grad(out.square().sum(), list(blocks[mode].parameters()))
        results[mode] = [out, *grads, *blocks[mode].buffers()]
    for actual, expected in zip(results["compiled"], results["eager"]):
        if actual.dtype == torch.int64:
            assert torch.equal(actual, expected)
        else:
            assert rel_err(actual, expected) < TOL64


@needs_cpu_kernels
def test_torch_func_transforms_run_the_bn_module():
    """Under torch.func (no transform rules for the fused BatchNorm + SE op yet) the BatchNorm
    module runs, then the SE op: per-parameter gradients as without absorption."""
    source = make_model("timm-bottleneck").layer2[0].eval()
    blocks = {}
    for fuse_bn in (True, False):
        blocks[fuse_bn] = nn.Sequential(copy.deepcopy(source))
        convert_se_modules(blocks[fuse_bn], backend="cpu", fuse_bn=fuse_bn)
    x = make_x(2, 256, 8, 8).double()
    grads = {}
    for fuse_bn, block in blocks.items():
        params = {k: v.detach() for k, v in block.named_parameters()}
        buffers = dict(block.named_buffers())

        def loss(p, block=block, buffers=buffers):
            return torch.func.functional_call(block, (p, buffers), (x,)).square().sum()

        grads[fuse_bn] = torch.func.grad(loss)(params)
    for name, grad in grads[True].items():
        assert rel_err(grad, grads[False][name]) < TOL64, name
