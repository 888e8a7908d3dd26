"""senet-kernels: fused Squeeze-and-Excitation for PyTorch.

Public API: ``squeeze_excite``, ``FusedSEBlock``, ``available_backends``.
"""

from .backends import BackendStatus, available_backends
from .functional import squeeze_excite
from .modules import FusedSEBlock
from .reference import squeeze_excite_reference

__all__ = ["BackendStatus", "FusedSEBlock", "available_backends", "squeeze_excite",
           "squeeze_excite_reference"]
