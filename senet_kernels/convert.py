"""``convert_se_modules``: swap the SE modules of any model for fused ``FusedSEBlock``s, in place.

An SE module is recognized the way ``FusedSEBlock.from_module`` recognizes it (by attribute
names and submodule types), so this works on timm, torchvision and senet.pytorch models
without importing either library. The converted blocks have no residual or ReLU tail
(``post_relu=False``): these models add their shortcut outside the SE module, so only the
SE itself is fused here (our own ``senet_kernels.models`` fuse the tail as well).
"""

import warnings

from torch import nn

from .modules import FusedSEBlock

# from_module raises TypeError with this text when a module is not an SE module at all (as
# opposed to an SE module it cannot compute, which is worth a warning).
_NOT_SE = "does not recognize"


def convert_se_modules(model, backend="auto"):
    """Replace every supported SE module inside ``model`` by ``FusedSEBlock.from_module``.

    Args:
        model: any ``nn.Module``; its SE submodules are replaced in place (the parent's
            attribute, Sequential / ModuleList / ModuleDict entry). Every other module and
            parameter stays the same object.
        backend: the new blocks' backend ("auto", "triton", "cuda", "cpu", "reference").

    Returns:
        The number of SE modules replaced. A module shared by several parents is converted
        once, counted once, and stays shared.

    Warns:
        UserWarning, once, listing by name every SE-like module left as it was because the
        fused op does not compute it (e.g. a GELU activation), with from_module's reason.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, or is itself an SE module (it cannot
            be replaced in place: use ``FusedSEBlock.from_module(model)``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert_se_modules needs an nn.Module, got {type(model).__name__}")
    converted, skipped = {}, {}
    root = _convert(model, backend)
    if isinstance(root, FusedSEBlock):
        raise TypeError(f"the model itself is an SE module ({type(model).__name__}); it cannot "
                        "be replaced in place, use FusedSEBlock.from_module(model)")
    if isinstance(root, Exception):
        skipped[id(model)] = ("(the model itself)", str(root))
    _convert_children(model, "", backend, converted, skipped)
    skipped = list(skipped.values())
    if skipped:
        lines = "\n".join(f"  {name}: {reason}" for name, reason in skipped)
        warnings.warn(f"convert_se_modules left {len(skipped)} SE-like module(s) unconverted "
                      f"(unsupported by FusedSEBlock):\n{lines}", UserWarning, stacklevel=2)
    return len(converted)


def _convert(module, backend):
    """The fused block for ``module``, None when it is not an SE module, or the exception
    saying why an SE-like module cannot be converted."""
    try:
        return FusedSEBlock.from_module(module, backend=backend)
    except Exception as e:  # noqa: BLE001 - any reason to refuse is reported, not raised
        if isinstance(e, TypeError) and _NOT_SE in str(e):
            return None
        return e


def _convert_children(parent, prefix, backend, converted, skipped):
    # converted: {id(source): (source, block)}, so a module shared by several parents becomes
    # one shared block (the source is kept so that its id is not reused while we walk);
    # skipped: {id(source): (name, reason)}, each reported once.
    # _modules rather than named_children(), which yields a shared module only once.
    for name, child in list(parent._modules.items()):
        if child is None:
            continue
        path = f"{prefix}{name}"
        if id(child) in converted:
            setattr(parent, name, converted[id(child)][1])
            continue
        result = _convert(child, backend)
        if isinstance(result, FusedSEBlock):
            converted[id(child)] = (child, result)
            setattr(parent, name, result)
            continue
        if isinstance(result, Exception):
            skipped.setdefault(id(child), (path, str(result)))
        # Look inside everything not converted, SE-like modules included: a module that only
        # looks SE-like by its attribute names could hold real SE modules.
        _convert_children(child, f"{path}.", backend, converted, skipped)
