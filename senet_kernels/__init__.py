"""senet-kernels: fused Squeeze-and-Excitation for PyTorch.

Public API: ``squeeze_excite``, ``FusedSEBlock``, ``convert_se_modules``,
``available_backends``; the SENet models are in the subpackage ``senet_kernels.models``.
"""

from .backends import BackendStatus, available_backends
from .convert import convert_se_modules
from .functional import squeeze_excite
from .modules import FusedSEBlock
from .reference import squeeze_excite_reference

__all__ = ["BackendStatus", "FusedSEBlock", "available_backends", "convert_se_modules",
           "squeeze_excite", "squeeze_excite_reference"]
