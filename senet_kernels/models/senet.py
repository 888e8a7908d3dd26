"""The SENet family (Hu et al., "Squeeze-and-Excitation Networks") with fused SE blocks.

``SENet`` is the classic skeleton ``conv1``/``bn1``/``relu``/``maxpool``/``layer1..4``/
``avgpool``/``fc``; its options cover the published variants exactly:

* the paper's Caffe models (ported by Cadene, timm's ``legacy_*``): the defaults of the
  constructors below, e.g. SE-ResNet-50 with its stride in the first 1x1 conv of the
  bottleneck, a padding-free ``ceil_mode`` max-pool and Cr = C // 16. SE-ResNet-18/34 (not
  in the paper) follow the same design; timm's legacy ones also apply a ReLU before the SE
  (``relu_before_se=True``);
* timm's ResNet-based ``seresnet*`` / ``seresnext*`` / ``senet154``: ``stride_in_1x1=False``,
  ``maxpool_ceil_mode=False``, ``se_rd_divisor=8`` (and deep stems, ``avg_down`` for the
  ``-d`` / ``-t`` variants). ``senet_kernels.models.from_timm`` picks these for you.

Every block ends in one ``FusedSEBlock(post_relu=True)`` call that does the SE, the residual
add and the ReLU; ``backend`` selects its kernels ("reference" is plain PyTorch).
"""

import inspect

import torch
from torch import nn

from ..backends import check_backend_name
from ..modules import FusedSEBlock
from .blocks import SEBasicBlock, SEBottleneck, conv_bn, make_downsample, se_width

BLOCKS = {"basic": SEBasicBlock, "bottleneck": SEBottleneck}


class SENet(nn.Module):
    """SE-ResNet / SE-ResNeXt / SENet-154 with fused SE blocks.

    Args:
        block: "basic" (two 3x3 convs, SE-ResNet-18/34) or "bottleneck".
        layers: blocks per stage, e.g. (3, 4, 6, 3).
        groups, base_width, reduce_first, stride_in_1x1: the bottleneck's shape (see
            ``SEBottleneck``); ignored by basic blocks.
        relu_before_se: basic blocks only: a ReLU before the SE (timm's legacy_seresnet18/34).
        stem_channels: ``(64,)``: one 7x7 / 2 conv; ``(c1, c2, c3)``: three 3x3 convs (the
            first with stride 2) of those widths, with BN + ReLU between them, held in
            ``conv1`` as a Sequential (timm's layout). The last width feeds layer1.
        maxpool_ceil_mode: ``True``: 3x3 / 2 max-pool without padding in ``ceil_mode`` (the
            Caffe models); ``False``: with padding 1 (torchvision / timm ResNets). Both give
            the same size on even inputs, but not the same values.
        downsample_kernel: kernel of the strided projection shortcuts (SENet-154: 3).
        avg_down: projection shortcuts average-pool then 1x1 conv (ResNet-D).
        se_reduction, se_rd_divisor: Cr = ``se_width(C, se_reduction, se_rd_divisor)``.
        drop_rate: dropout before ``fc`` while training.
        num_classes: outputs of ``fc``; 0 replaces ``fc`` by ``nn.Identity`` (features).
        in_chans: input channels.
        backend: the ``FusedSEBlock`` backend of every block ("auto", "triton", "cuda",
            "cpu", "reference"); ``set_backend`` changes it later.

    Initialization: convolutions He-normal (``kaiming_normal_``, fan_out, ReLU), BatchNorm
    weight 1 and bias 0; the SE and ``fc`` layers keep ``nn.Linear``'s default.

    The pooling at the end is global (adaptive), so any input from 32 x 32 pixels up works.

    Raises:
        ValueError: an unknown ``block`` or ``backend`` name, ``layers`` without 4 depths,
            ``stem_channels`` without 1 or 3 widths.
        TypeError: an unknown keyword option.
    """

    def __init__(self, block, layers, *, groups=1, base_width=64, reduce_first=1,
                 stride_in_1x1=False, relu_before_se=False, stem_channels=(64,),
                 maxpool_ceil_mode=True, downsample_kernel=1, avg_down=False, se_reduction=16,
                 se_rd_divisor=None, drop_rate=0.0, num_classes=1000, in_chans=3,
                 backend="auto"):
        super().__init__()
        if block not in BLOCKS:
            raise ValueError(f"block must be one of {tuple(BLOCKS)}, got {block!r}")
        if len(layers) != 4:
            raise ValueError(f"layers must give 4 stage depths, got {layers!r}")
        if len(stem_channels) not in (1, 3):
            raise ValueError(f"stem_channels must have 1 (7x7 stem) or 3 (3x3 stem) widths, "
                             f"got {stem_channels!r}")
        check_backend_name(backend)  # fail at construction, not in the first forward
        block_cls = BLOCKS[block]
        self.config = dict(block=block, layers=tuple(layers), groups=groups,
                           base_width=base_width, reduce_first=reduce_first,
                           stride_in_1x1=stride_in_1x1, relu_before_se=relu_before_se,
                           stem_channels=tuple(stem_channels),
                           maxpool_ceil_mode=maxpool_ceil_mode,
                           downsample_kernel=downsample_kernel, avg_down=avg_down,
                           se_reduction=se_reduction, se_rd_divisor=se_rd_divisor,
                           drop_rate=drop_rate, num_classes=num_classes, in_chans=in_chans)

        self.conv1 = self._stem(in_chans, stem_channels)
        inplanes = stem_channels[-1]
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.relu = nn.ReLU(inplace=True)
        # Caffe pools with ceil_mode and no padding; PyTorch ResNets pad by one instead.
        self.maxpool = (nn.MaxPool2d(3, 2, padding=0, ceil_mode=True) if maxpool_ceil_mode
                        else nn.MaxPool2d(3, 2, padding=1))

        block_kwargs = {"backend": backend}
        if block_cls is SEBottleneck:
            block_kwargs.update(groups=groups, base_width=base_width,
                                reduce_first=reduce_first, stride_in_1x1=stride_in_1x1)
        else:
            block_kwargs.update(relu_before_se=relu_before_se)
        for index, (planes, depth) in enumerate(zip((64, 128, 256, 512), layers)):
            stride = 1 if index == 0 else 2
            outplanes = planes * block_cls.expansion
            blocks = []
            for i in range(depth):
                downsample = None
                if i == 0 and (stride != 1 or inplanes != outplanes):
                    downsample = make_downsample(inplanes, outplanes, stride,
                                                 downsample_kernel, avg_down)
                blocks.append(block_cls(
                    inplanes, planes, stride if i == 0 else 1, downsample,
                    se_rd_channels=se_width(outplanes, se_reduction, se_rd_divisor),
                    **block_kwargs))
                inplanes = outplanes
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))

        self.num_features = inplanes
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(drop_rate)
        self.fc = nn.Linear(inplanes, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    @staticmethod
    def _stem(in_chans, widths):
        if len(widths) == 1:
            return nn.Conv2d(in_chans, widths[0], 7, stride=2, padding=3, bias=False)
        c1, c2, c3 = widths
        # conv-bn-relu, conv-bn-relu, conv: the last BN and ReLU are the model's bn1 / relu.
        conv_a, bn_a = conv_bn(in_chans, c1, 3, stride=2)
        conv_b, bn_b = conv_bn(c1, c2, 3)
        return nn.Sequential(conv_a, bn_a, nn.ReLU(inplace=True), conv_b, bn_b,
                             nn.ReLU(inplace=True), nn.Conv2d(c2, c3, 3, padding=1, bias=False))

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def se_blocks(self):
        """(name, FusedSEBlock) of every SE block, in forward order."""
        return [(n, m) for n, m in self.named_modules() if isinstance(m, FusedSEBlock)]

    def set_backend(self, backend):
        """Make every SE block run on ``backend``; returns self."""
        check_backend_name(backend)  # fail here, not in the first forward
        for _, se in self.se_blocks():
            se.backend = backend
        return self

    def forward_features(self, x):
        """The last stage's feature map [N, num_features, H/32, W/32] (rounded up)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x):
        x = torch.flatten(self.avgpool(self.forward_features(x)), 1)
        return self.fc(self.dropout(x))


def _build(block, layers, defaults, kwargs):
    """A ``SENet`` from an architecture's defaults, any of them overridden by ``kwargs``."""
    return SENet(block, layers, **{**defaults, **kwargs})


# The paper's models as released (Caffe): stride in the bottleneck's first 1x1 conv.
_SE_RESNET = dict(stride_in_1x1=True)
# ResNeXt keeps its stride in the grouped 3x3 conv, as does SENet-154.
_SE_RESNEXT_32X4D = dict(groups=32, base_width=4)
_SENET154 = dict(groups=64, base_width=4, reduce_first=2, stem_channels=(64, 64, 128),
                 downsample_kernel=3, drop_rate=0.2)


def se_resnet18(**kwargs):
    """SE-ResNet-18: basic blocks (2, 2, 2, 2). ``kwargs`` override any ``SENet`` option."""
    return _build("basic", (2, 2, 2, 2), {}, kwargs)


def se_resnet34(**kwargs):
    """SE-ResNet-34: basic blocks (3, 4, 6, 3)."""
    return _build("basic", (3, 4, 6, 3), {}, kwargs)


def se_resnet50(**kwargs):
    """SE-ResNet-50: bottlenecks (3, 4, 6, 3), stride in the first 1x1 conv (paper/Caffe)."""
    return _build("bottleneck", (3, 4, 6, 3), _SE_RESNET, kwargs)


def se_resnet101(**kwargs):
    """SE-ResNet-101: bottlenecks (3, 4, 23, 3), stride in the first 1x1 conv."""
    return _build("bottleneck", (3, 4, 23, 3), _SE_RESNET, kwargs)


def se_resnet152(**kwargs):
    """SE-ResNet-152: bottlenecks (3, 8, 36, 3), stride in the first 1x1 conv."""
    return _build("bottleneck", (3, 8, 36, 3), _SE_RESNET, kwargs)


def se_resnext50_32x4d(**kwargs):
    """SE-ResNeXt-50 (32x4d): bottlenecks (3, 4, 6, 3), 32 groups of width 4 per 64 planes."""
    return _build("bottleneck", (3, 4, 6, 3), _SE_RESNEXT_32X4D, kwargs)


def se_resnext101_32x4d(**kwargs):
    """SE-ResNeXt-101 (32x4d): bottlenecks (3, 4, 23, 3), 32 groups."""
    return _build("bottleneck", (3, 4, 23, 3), _SE_RESNEXT_32X4D, kwargs)


def senet154(**kwargs):
    """SENet-154: 64-group bottlenecks (3, 8, 36, 3) halving the first 1x1 conv, a stem of
    three 3x3 convs (64, 64, 128), 3x3 strided projection shortcuts, dropout 0.2."""
    return _build("bottleneck", (3, 8, 36, 3), _SENET154, kwargs)


#: Constructor of each model by name.
MODELS = {f.__name__: f for f in (se_resnet18, se_resnet34, se_resnet50, se_resnet101,
                                  se_resnet152, se_resnext50_32x4d, se_resnext101_32x4d,
                                  senet154)}

# Every constructor above takes the same options; said once here, shown by help() on each.
_CONSTRUCTOR_OPTIONS = """

Args:
    **kwargs: any ``SENet`` keyword option (``num_classes``, ``backend``, ``drop_rate``,
        ``in_chans``, the block shape, ...), overriding this architecture's defaults.

Returns:
    A freshly initialized ``SENet`` (no pretrained weights: ``from_timm`` brings timm's),
    in training mode, on the CPU in float32.

Raises:
    ValueError / TypeError: as ``SENet`` (a bad option value, an unknown option).
"""
for _constructor in MODELS.values():
    _constructor.__doc__ = inspect.cleandoc(_constructor.__doc__) + _CONSTRUCTOR_OPTIONS
