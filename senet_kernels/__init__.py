"""senet-kernels: fused Squeeze-and-Excitation for PyTorch.

Public API: ``squeeze_excite``, ``FusedSEBlock``, ``convert_se_modules``,
``available_backends``; the SENet models are in the subpackage ``senet_kernels.models``.
Models using them export to ONNX with ``torch.onnx.export`` as they are (``onnx_export``).
"""

from . import onnx_export as _onnx_export
from .backends import BackendStatus, available_backends
from .convert import convert_se_modules
from .functional import squeeze_excite
from .modules import FusedSEBlock
from .reference import squeeze_excite_reference

# ONNX export works without any call by the user: both torch.onnx exporters learn the SE
# op's standard-ONNX form now (see onnx_export.py).
_onnx_export.register()

__all__ = ["BackendStatus", "FusedSEBlock", "available_backends", "convert_se_modules",
           "squeeze_excite", "squeeze_excite_reference"]
