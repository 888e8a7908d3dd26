"""``convert_se_modules``: swap the SE modules of any model for fused ``FusedSEBlock``s, in place.

Only modules of a known SE class are converted (``recognize.py``: torchvision, timm,
pretrainedmodels, senet.pytorch, and classes given to ``register_se_class``), matched by
exact class so that neither library is imported and no subclass or look-alike, whose forward
may differ, is replaced. Where the SE module sits in a residual block of a known class (timm's and
pretrainedmodels' SE-ResNet / SE-ResNeXt blocks, ``residual_tail.py``), the whole block is
replaced by a ``FusedResidualBlock`` that also fuses the shortcut add and the final ReLU
(``post_relu=True``), as ``senet_kernels.models`` do; elsewhere the SE module alone is
fused (``post_relu=False``).
"""

import warnings
from dataclasses import dataclass, field

from torch import nn

from .backends import check_backend_name
from .modules import FusedSEBlock
from .recognize import is_known_se_class, unconverted_reason
from .residual_tail import FusedResidualBlock, block_layout


def convert_se_modules(model, backend="auto", *, fuse_residual=True, fuse_bn=True):
    """Replace every supported SE module inside ``model`` by ``FusedSEBlock.from_module``.

    Args:
        model: any ``nn.Module``; its SE submodules are replaced in place (the parent's
            attribute, Sequential / ModuleList / ModuleDict entry). Every other module and
            parameter stays the same object.
        backend: the new blocks' backend ("auto", "triton", "cuda", "cpu", "reference").
        fuse_residual: replace the residual blocks of known classes whose tail is
            ``relu(se(branch) + shortcut)`` by ``FusedResidualBlock`` (the SE, the add and
            the ReLU in one op, two passes over the activation fewer forward and more
            backward). Their ``state_dict`` keys stay the same, but the block's class is no
            longer the source's. False: fuse the SE modules only.
        fuse_bn: in those blocks, also absorb the BatchNorm right in front of the SE (bn3 of
            the bottlenecks, bn2 of timm's and senet.pytorch's basic blocks) when it is exactly
            ``nn.BatchNorm2d`` with ``affine`` and ``track_running_stats``, neither hooked
            nor with a replaced forward (``bn_tail.py``). It stays a submodule under its name
            (same parameters, buffers and ``state_dict``); the fused BatchNorm + SE kernels
            compute it for CPU tensors (SE backend "auto" or "cpu"), elsewhere it runs as a
            module before the fused SE op. No effect with ``fuse_residual=False``.

    Returns:
        The number of SE modules replaced (alone or with their block's tail). A module
        shared by several parents is converted once, counted once, and stays shared.

    Warns:
        UserWarning, once, naming every module left as it was: SE modules of a known class
        in a configuration the fused op does not compute (e.g. a LeakyReLU activation), with
        the reason, SE classes the fused op does not compute (timm's Effective SE, its
        channels-last SE; ``recognize.UNCONVERTED_SE_CLASSES``), and look-alikes (a subclass of an SE class, a home-made module with the
        layout of one), which are never converted. Other modules are passed over silently.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, or is itself an SE module (it cannot
            be replaced in place: use ``FusedSEBlock.from_module(model)``); ``fuse_residual``
            or ``fuse_bn`` not a bool.
        ValueError: ``backend`` is not a backend name.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert_se_modules needs an nn.Module, got {type(model).__name__}")
    check_backend_name(backend)
    if not isinstance(fuse_residual, bool):
        raise TypeError(f"fuse_residual must be a bool, got {type(fuse_residual).__name__}")
    if not isinstance(fuse_bn, bool):
        raise TypeError(f"fuse_bn must be a bool, got {type(fuse_bn).__name__}")
    if is_known_se_class(model):
        raise TypeError(f"the model itself is an SE module ({type(model).__name__}); it cannot "
                        "be replaced in place, use FusedSEBlock.from_module(model)")
    walk = _Walk(backend, fuse_residual, fuse_bn, _shared_modules(model))
    reason = unconverted_reason(model)
    if reason is not None:
        walk.skipped[id(model)] = ("(the model itself)", reason)
    _convert_children(model, "", walk)
    skipped = list(walk.skipped.values())
    if skipped:
        lines = "\n".join(f"  {name}: {reason}" for name, reason in skipped)
        warnings.warn(f"convert_se_modules left {len(skipped)} SE-like module(s) unconverted:"
                      f"\n{lines}", UserWarning, stacklevel=2)
    return len(walk.converted)


@dataclass
class _Walk:
    """What one conversion carries through the module tree."""
    backend: str
    fuse_residual: bool
    fuse_bn: bool
    shared: set  # ids of modules that are children in more than one place
    # {id(source): (source, replacement)}: a module shared by several parents becomes one
    # shared replacement (the source is kept so that its id is not reused while we walk)
    converted: dict = field(default_factory=dict)
    skipped: dict = field(default_factory=dict)  # {id(source): (name, reason)}, once each


def _shared_modules(model):
    """ids of the modules held in more than one child slot (parent object, name): a module
    inside a block that is itself shared is held in one slot, and is not counted."""
    slots = {}
    for parent in model.modules():  # each module once
        for child in parent._modules.values():
            if child is not None:
                slots[id(child)] = slots.get(id(child), 0) + 1
    return {key for key, count in slots.items() if count > 1}


def _convert(module, walk):
    """The fused module for ``module`` (a ``FusedResidualBlock`` or a ``FusedSEBlock``), None
    when it is neither a fusable residual block nor an SE module of a known class, or the
    message saying why an SE-like module is left alone."""
    # An SE module that is also used elsewhere keeps one fused copy with one post_relu
    # everywhere: its block is left as it is and the SE converted alone. Checked before the
    # block is built, which takes over the SE module's layers.
    layout = block_layout(module) if walk.fuse_residual else None
    if layout is not None and id(module._modules[layout.se]) not in walk.shared:
        block = FusedResidualBlock.from_module(module, backend=walk.backend,
                                               fuse_bn=walk.fuse_bn)
        if block is not None:
            return block
    if not is_known_se_class(module):
        return unconverted_reason(module)
    try:
        return FusedSEBlock.from_module(module, backend=walk.backend)
    except (TypeError, ValueError) as e:  # a configuration the fused op does not compute
        return str(e)


def _convert_children(parent, prefix, walk):
    # _modules rather than named_children(), which yields a shared module only once.
    for name, child in list(parent._modules.items()):
        if child is None:
            continue
        path = f"{prefix}{name}"
        if id(child) in walk.converted:
            setattr(parent, name, walk.converted[id(child)][1])
            continue
        result = _convert(child, walk)
        if isinstance(result, (FusedSEBlock, FusedResidualBlock)):
            walk.converted[id(child)] = (child, result)
            setattr(parent, name, result)
            if isinstance(result, FusedResidualBlock):
                # its SE is fused; its branch and shortcut may hold other SE modules
                _convert_children(result, f"{path}.", walk)
            continue
        if result is not None:
            walk.skipped.setdefault(id(child), (path, result))
        # Look inside everything not converted: a module left alone may hold SE modules.
        _convert_children(child, f"{path}.", walk)
