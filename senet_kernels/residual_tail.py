"""Residual blocks whose SE, shortcut add and ReLU run as one fused op.

In the residual blocks of SE-ResNet / SE-ResNeXt the SE module is followed by the shortcut
add and a ReLU: ``relu(se(body(x)) + shortcut(x))``. Fusing the SE module alone leaves those
two ops outside, each one more pass over the activation forward and backward; the fused op
computes them in its own passes (``post_relu=True`` with a ``residual``), as
``senet_kernels.models`` does. Doing so needs the block's forward, so it is done only for
block classes whose forward is known (matched by exact class, like the SE classes of
``recognize.py``) and for instances that run that forward unaltered:

* timm ``models.resnet.Bottleneck`` / ``BasicBlock`` (``seresnet*``, ``seresnext*``; timm >= 0.9,
  where drop-block sits at one place in the block),
* timm ``models.senet`` ``SEBottleneck`` / ``SEResNetBottleneck`` / ``SEResNeXtBottleneck`` /
  ``SEResNetBlock`` (``legacy_seresnet*``, ``legacy_senet154``) and the Cadene pretrainedmodels
  classes they were ported from,
* senet.pytorch ``senet.se_resnet.SEBottleneck`` / ``SEBasicBlock``.

``FusedResidualBlock`` takes over the block's submodules under their own names, so the
parameters stay the same objects and checkpoints of the original model load as they are.

Where the branch ends with the BatchNorm right in front of the SE module (the bottlenecks'
bn3, the basic blocks' bn2; not the legacy basic block, whose branch ends with a ReLU), that
BatchNorm is absorbed into the fused op too (``bn_tail.py``), when it is a plain
``nn.BatchNorm2d``: it stays a submodule under its own name, but the block's forward hands it
to ``bn_se_tail``, which computes it inside the fused op where kernels for that exist (CPU
tensors, for now) and calls it as a module everywhere else.
"""

import sys
from dataclasses import dataclass

from torch import nn

from .bn_tail import absorbable_bn_reason, bn_se_tail, se_takes_bn
from .modules import FusedSEBlock
from .recognize import altered_instance, is_known_se_class


@dataclass(frozen=True)
class BlockLayout:
    """Where a block class keeps its parts (attribute names)."""
    body: tuple        # applied in this order to the block input: the branch up to the SE
    se: str            # the SE module, applied to the body's output
    final_relu: str    # applied after the shortcut add
    #: applied between the SE and the add; the tail fuses only when they are None / Identity
    between: tuple = ()
    downsample: str = "downsample"  # the shortcut's module (None: identity shortcut)


# The forwards these layouts stand for (timm 1.0 and >= 0.9; pretrainedmodels 0.7):
#   timm resnet Bottleneck: conv1 bn1 act1 conv2 bn2 drop_block act2 aa conv3 bn3 se
#     drop_path; x += downsample(shortcut); act3
#   timm resnet BasicBlock: conv1 bn1 drop_block act1 aa conv2 bn2 se drop_path; + shortcut; act2
#   legacy Bottleneck: conv1 bn1 relu conv2 bn2 relu conv3 bn3; se_module(out) + residual; relu
#   legacy SEResNetBlock: conv1 bn1 relu conv2 bn2 relu; se_module(out) + residual; relu
#   senet.pytorch SEBottleneck: conv1 bn1 relu conv2 bn2 relu conv3 bn3 se; += residual; relu
#   senet.pytorch SEBasicBlock: conv1 bn1 relu conv2 bn2 se; += residual; relu
_TIMM_BOTTLENECK = BlockLayout(
    body=("conv1", "bn1", "act1", "conv2", "bn2", "drop_block", "act2", "aa", "conv3", "bn3"),
    se="se", final_relu="act3", between=("drop_path",))
_TIMM_BASIC_BLOCK = BlockLayout(
    body=("conv1", "bn1", "drop_block", "act1", "aa", "conv2", "bn2"),
    se="se", final_relu="act2", between=("drop_path",))
_LEGACY_BOTTLENECK = BlockLayout(
    body=("conv1", "bn1", "relu", "conv2", "bn2", "relu", "conv3", "bn3"),
    se="se_module", final_relu="relu")
_LEGACY_BASIC_BLOCK = BlockLayout(
    body=("conv1", "bn1", "relu", "conv2", "bn2", "relu"), se="se_module", final_relu="relu")
_SENET_PYTORCH_BOTTLENECK = BlockLayout(
    body=("conv1", "bn1", "relu", "conv2", "bn2", "relu", "conv3", "bn3"), se="se",
    final_relu="relu")
_SENET_PYTORCH_BASIC_BLOCK = BlockLayout(
    body=("conv1", "bn1", "relu", "conv2", "bn2"), se="se", final_relu="relu")

#: (module, class name) -> layout: the residual block classes whose forward is known.
KNOWN_BLOCK_CLASSES = {
    ("timm.models.resnet", "Bottleneck"): _TIMM_BOTTLENECK,
    ("timm.models.resnet", "BasicBlock"): _TIMM_BASIC_BLOCK,
    **{(module, name): _LEGACY_BOTTLENECK
       for module in ("timm.models.senet", "pretrainedmodels.models.senet")
       for name in ("SEBottleneck", "SEResNetBottleneck", "SEResNeXtBottleneck")},
    ("timm.models.senet", "SEResNetBlock"): _LEGACY_BASIC_BLOCK,
    ("senet.se_resnet", "SEBottleneck"): _SENET_PYTORCH_BOTTLENECK,
    ("senet.se_resnet", "SEBasicBlock"): _SENET_PYTORCH_BASIC_BLOCK,
}


def _timm_version_known():
    """Whether the imported timm is >= 0.9: older resnet blocks applied drop-block after
    each norm layer, a forward the layout above does not describe."""
    timm = sys.modules.get("timm")
    try:
        major, minor = (int(p) for p in timm.__version__.split(".")[:2])
    except (AttributeError, ValueError):
        return False
    return (major, minor) >= (0, 9)


def block_layout(module):
    """The ``BlockLayout`` of a residual block whose tail can be fused, else None.

    None also when the class is known but this instance is not fusable: its forward or the
    final ReLU altered (replaced, hooked), a stochastic-depth layer between SE and add, a
    final activation other than ``nn.ReLU``, or an SE module the fused op does not compute
    (which ``convert_se_modules`` then handles, or reports, on its own).
    """
    cls = type(module)
    layout = KNOWN_BLOCK_CLASSES.get((cls.__module__, cls.__qualname__))
    if layout is None:
        return None
    if cls.__module__.startswith("timm.") and not _timm_version_known():
        return None
    if altered_instance(module) is not None:
        return None
    parts = module._modules
    if any(name not in parts for name in layout.body + (layout.se, layout.final_relu)):
        return None
    relu = parts[layout.final_relu]
    if type(relu) is not nn.ReLU or altered_instance(relu) is not None:
        return None
    for name in layout.between:
        between = parts.get(name)
        if between is not None and (type(between) is not nn.Identity
                                    or altered_instance(between) is not None):
            return None
    se = parts[layout.se]
    if se is None or not is_known_se_class(se):
        return None
    return layout


class FusedResidualBlock(nn.Module):
    """A known residual block (``KNOWN_BLOCK_CLASSES``) with its tail fused:
    ``se(body(x), shortcut(x))`` where ``se`` is a ``FusedSEBlock`` with ``post_relu=True``.

    Built by ``from_module`` (``convert_se_modules`` does it for every fusable block). The
    submodules are the source block's, under the same names and in the same order, with the
    SE module replaced by the fused block: ``state_dict`` keys are the source's (1x1-conv SE
    weights load as they are), and every other parameter is the same object.

    ``absorbed_bn`` (an attribute, None or a submodule name): the BatchNorm ending the branch
    that ``bn_se_tail`` computes with the SE (``bn_tail.py``).
    """

    def __init__(self, modules, layout, source_name, *, fuse_bn=False):
        super().__init__()
        for name, module in modules.items():
            self.add_module(name, module)
        body = tuple(name for name in layout.body if modules.get(name) is not None)
        self.absorbed_bn = None
        if fuse_bn and body and _absorbable(modules[body[-1]], modules[layout.se]):
            self.absorbed_bn, body = body[-1], body[:-1]
        self._body = body
        self._se_name = layout.se
        self._downsample = layout.downsample
        self.source_name = source_name

    @classmethod
    def from_module(cls, block, *, backend="auto", fuse_bn=False):
        """The fused form of ``block``, sharing its submodules; None if ``block`` is not a
        fusable residual block (see ``block_layout``) or its SE module is not convertible.
        ``fuse_bn``: absorb the BatchNorm ending the branch, if there is one right in front
        of the SE and it is absorbable (``bn_tail.absorbable_bn_reason``)."""
        layout = block_layout(block)
        if layout is None:
            return None
        try:
            se = FusedSEBlock.from_module(block._modules[layout.se], backend=backend,
                                          post_relu=True)
        except (TypeError, ValueError):
            return None
        modules = dict(block._modules)
        modules[layout.se] = se
        source = f"{type(block).__module__}.{type(block).__qualname__}"
        fused = cls(modules, layout, source, fuse_bn=fuse_bn)
        fused.training = block.training  # the flag only: the shared submodules keep theirs
        return fused

    def forward(self, x):
        out = x
        for name in self._body:
            out = getattr(self, name)(out)
        downsample = getattr(self, self._downsample, None)
        shortcut = x if downsample is None else downsample(x)
        se = getattr(self, self._se_name)
        if self.absorbed_bn is None:
            return se(out, shortcut)
        return bn_se_tail(getattr(self, self.absorbed_bn), se, out, shortcut)

    def bn_se_pair(self):
        """(the BatchNorm module ending the branch, right in front of the SE, absorbed or not:
        a SyncBatchNorm, say, stays in the branch; the fused SE block), or None when the
        branch does not end with a BatchNorm."""
        name = self.absorbed_bn or (self._body[-1] if self._body else None)
        bn = None if name is None else getattr(self, name)
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
            return None
        return bn, getattr(self, self._se_name)

    def extra_repr(self):
        bn = "" if self.absorbed_bn is None else f"{self.absorbed_bn} + "
        return f"source={self.source_name}, tail: {bn}SE + shortcut add + ReLU fused"


def _absorbable(bn, se):
    """Whether the module ``bn`` ending a branch can be absorbed into the fused SE ``se``."""
    return absorbable_bn_reason(bn) is None and se_takes_bn(se)
