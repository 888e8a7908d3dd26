"""senet-kernels: fused Squeeze-and-Excitation for PyTorch.

One op computes the whole SE block, ``relu?(x * gate(W2 act(W1 mean_hw(x) + b1) + b2) +
residual?)``, with Triton kernels on GPUs and C++ kernels on the CPU; each name's own
docstring says what it accepts and what it raises.

Public names (``__all__``):
    squeeze_excite             the op as a function (``backend="auto"`` or a backend's name)
    bn_squeeze_excite          the BatchNorm in front of the SE op absorbed into it (bn3 + SE)
    FusedSEBlock               the op as an ``nn.Module`` (``from_module`` converts one SE module)
    convert_se_modules         swap a model's known SE modules (and SE-ResNet block tails) in place
    FusedResidualBlock         what ``convert_se_modules`` puts in place of an SE-ResNet block
    register_se_class          vouch that a class computes the standard SE, so it is converted
    available_backends         which backends run here, and why not the others
    BackendStatus              ``(available, reason)``, the values of ``available_backends()``
    squeeze_excite_reference   the eager float64-capable oracle the tests compare against

Subpackage ``senet_kernels.models`` (imported on first use: ``senet_kernels.models.se_resnet50()``):
the SENet family with fused blocks (``se_resnet18`` ... ``senet154``, ``SENet``) and
``from_timm``. Models using the op export to ONNX with ``torch.onnx.export`` as they are
(``onnx_export``). Command line: ``python -m senet_kernels check | bench | train``.
Documentation: README.md and docs/ in the source repository.
"""

import importlib

from . import onnx_export as _onnx_export
from .backends import BackendStatus, available_backends
from .bn_functional import bn_squeeze_excite
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
           "bn_squeeze_excite", "convert_se_modules",
           "register_se_class", "squeeze_excite", "squeeze_excite_reference"]

#: Subpackages imported when first used as attributes (``senet_kernels.models``), as
#: torchvision's are, without paying for them at ``import senet_kernels``.
_LAZY_SUBMODULES = ("models",)


def __getattr__(name):
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
