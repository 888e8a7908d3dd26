"""senet-kernels: fused Squeeze-and-Excitation for PyTorch.

Public API: ``squeeze_excite``, ``FusedSEBlock``, ``convert_se_modules`` (and the
``FusedResidualBlock`` it puts in SE-ResNets),
``register_se_class``, ``available_backends``; the SENet models are in the subpackage
``senet_kernels.models`` (imported on first use: ``senet_kernels.models.se_resnet50()``).
Models using them export to ONNX with ``torch.onnx.export`` as they are (``onnx_export``).
"""

import importlib

from . import onnx_export as _onnx_export
from .backends import BackendStatus, available_backends
from .convert import convert_se_modules
from .functional import squeeze_excite
from .modules import FusedSEBlock
from .recognize import register_se_class
from .reference import squeeze_excite_reference
from .residual_tail import FusedResidualBlock

# ONNX export works without any call by the user: both torch.onnx exporters learn the SE
# op's standard-ONNX form now (see onnx_export.py).
_onnx_export.register()

__all__ = ["BackendStatus", "FusedResidualBlock", "FusedSEBlock", "available_backends",
           "convert_se_modules",
           "register_se_class", "squeeze_excite", "squeeze_excite_reference"]

#: Subpackages imported when first used as attributes (``senet_kernels.models``), as
#: torchvision's are, without paying for them at ``import senet_kernels``.
_LAZY_SUBMODULES = ("models",)


def __getattr__(name):
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
