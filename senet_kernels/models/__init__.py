"""The SENet family with fused SE blocks, and timm's pretrained weights for it.

``se_resnet18`` ... ``senet154`` build the paper's networks (``SENet``); ``from_timm`` turns a
timm SE-ResNet / SE-ResNeXt / SENet-154 (model or state dict) into one with the same weights.
"""

from .blocks import SEBasicBlock, SEBottleneck, se_width
from .senet import (MODELS, SENet, se_resnet18, se_resnet34, se_resnet50, se_resnet101,
                    se_resnet152, se_resnext50_32x4d, se_resnext101_32x4d, senet154)
from .timm_weights import ARCHS as TIMM_ARCHS
from .timm_weights import from_timm

__all__ = ["MODELS", "SEBasicBlock", "SEBottleneck", "SENet", "TIMM_ARCHS", "from_timm",
           "se_resnet18", "se_resnet34", "se_resnet50", "se_resnet101", "se_resnet152",
           "se_resnext50_32x4d", "se_resnext101_32x4d", "se_width", "senet154"]
