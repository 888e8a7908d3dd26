"""Residual blocks of the SENet family, each ending in ONE fused call: SE, residual add, ReLU.

Both blocks compute their residual branch with convolutions and batch norms, then hand the
branch and the shortcut to a ``FusedSEBlock(post_relu=True)``:
``out = relu(branch * gate(excite(mean_hw(branch))) + shortcut)``. In eager PyTorch those
are 7-8 kernels; the fused backends do them in two (and read the branch twice, not ~8 times).

The BatchNorm in front of the SE (bn2 / bn3) is computed inside the fused op where its kernels
exist (``bn_tail.bn_se_tail``: CPU tensors, SE backend "auto" or "cpu"); elsewhere the BatchNorm
module runs, then the fused SE op.

Submodule names follow timm's ResNet (``conv1``/``bn1``/.../``se``/``downsample``), so
state dicts of timm's ``seresnet*`` models load by name; ``se`` holds ``fc1``/``fc2``.
"""

import math

from torch import nn

from ..bn_tail import bn_se_tail
from ..modules import FusedSEBlock


def se_width(channels, reduction, divisor=None):
    """Cr, the width of an SE bottleneck over ``channels``.

    ``divisor=None``: ``channels // reduction`` (at least 1), as in the SENet paper and its
    Caffe models. ``divisor=d``: ``channels / reduction`` rounded to the nearest multiple of
    d, at least d, which is the width timm's ``SEModule`` gives its ResNets (64 channels get
    Cr = 8, not 4).
    """
    if divisor is None:
        return max(1, channels // reduction)
    return max(divisor, int(channels / reduction + divisor / 2) // divisor * divisor)


def conv_bn(in_channels, out_channels, kernel_size, stride=1, groups=1):
    """A bias-free convolution with 'same'-style padding (odd kernels) and its BatchNorm."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                     padding=kernel_size // 2, groups=groups, bias=False)
    return conv, nn.BatchNorm2d(out_channels)


def make_downsample(in_channels, out_channels, stride, kernel_size=1, avg_down=False):
    """The projection shortcut of the first block of a stage.

    ``avg_down=False``: ``Sequential(conv k x k / stride, bn)``; a stride-1 projection is
    always 1x1 (SENet-154 uses 3x3 only where it also downsamples). ``avg_down=True``
    (ResNet-D): ``Sequential(avg-pool 2x2 / stride or Identity, conv 1x1, bn)``, with
    ``ceil_mode`` and ``count_include_pad=False`` so odd sizes pool their last row too.
    The Sequential indices are timm's, so its state dicts load by name.
    """
    if avg_down:
        pool = (nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False)
                if stride > 1 else nn.Identity())
        return nn.Sequential(pool, *conv_bn(in_channels, out_channels, 1))
    if kernel_size % 2 != 1:
        raise ValueError(f"downsample kernel size must be odd, got {kernel_size}")
    return nn.Sequential(*conv_bn(in_channels, out_channels, kernel_size if stride > 1 else 1,
                                  stride))


class SEBasicBlock(nn.Module):
    """Two 3x3 convolutions (stride in the first), then the fused SE + shortcut + ReLU.

    Used by SE-ResNet-18/34; the SE runs over ``planes`` channels. ``relu_before_se`` adds a
    ReLU between the second BN and the SE, as timm's ``legacy_seresnet18/34`` (trained that
    way) have; the SE-ResNet design, and timm's ``seresnet18/34``, have none.
    """

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, *, se_rd_channels,
                 relu_before_se=False, backend="auto"):
        super().__init__()
        self.conv1, self.bn1 = conv_bn(inplanes, planes, 3, stride)
        self.relu = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = conv_bn(planes, planes, 3)
        self.relu_before_se = bool(relu_before_se)
        self.se = FusedSEBlock(planes, rd_channels=se_rd_channels, post_relu=True,
                               backend=backend)
        self.downsample = downsample

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.conv2(out)
        if self.relu_before_se:
            return self.se(self.relu(self.bn2(out)), shortcut)
        return bn_se_tail(self.bn2, self.se, out, shortcut)

    def bn_se_pair(self):
        """(bn2, se), handed to the fused op together; None with ``relu_before_se`` (a ReLU
        stands between them)."""
        return None if self.relu_before_se else (self.bn2, self.se)


class SEBottleneck(nn.Module):
    """1x1 reduce, 3x3 (grouped for ResNeXt / SENet-154), 1x1 expand x4, then the fused tail.

    Args:
        inplanes: input channels. planes: output channels / 4.
        stride: the block's stride, in the first 1x1 conv when ``stride_in_1x1`` (the Caffe
            SE-ResNet models) or in the 3x3 conv (ResNeXt, SENet-154, torchvision/timm).
        groups, base_width: the 3x3 conv has ``width = floor(planes * base_width / 64) *
            groups`` channels in ``groups`` groups (ResNeXt-32x4d: 32, 4; ResNet: 1, 64).
        reduce_first: the first 1x1 conv outputs ``width // reduce_first`` channels
            (SENet-154: 2, i.e. planes * 2 before the 3x3 conv widens to planes * 4).
        se_rd_channels: Cr of the SE over ``planes * 4`` channels.
    """

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, *, groups=1, base_width=64,
                 reduce_first=1, stride_in_1x1=False, se_rd_channels, backend="auto"):
        super().__init__()
        width = math.floor(planes * (base_width / 64)) * groups
        first = width // reduce_first
        outplanes = planes * self.expansion
        stride1, stride3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1, self.bn1 = conv_bn(inplanes, first, 1, stride1)
        self.conv2, self.bn2 = conv_bn(first, width, 3, stride3, groups=groups)
        self.conv3, self.bn3 = conv_bn(width, outplanes, 1)
        self.relu = nn.ReLU(inplace=True)
        self.se = FusedSEBlock(outplanes, rd_channels=se_rd_channels, post_relu=True,
                               backend=backend)
        self.downsample = downsample

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return bn_se_tail(self.bn3, self.se, self.conv3(out), shortcut)

    def bn_se_pair(self):
        """(bn3, se), handed to the fused op together."""
        return self.bn3, self.se
