"""``convert_se_modules``: swap the SE modules of any model for fused ``FusedSEBlock``s, in place.

Only modules of a known SE class are converted (``recognize.py``: torchvision, timm,
pretrainedmodels, senet.pytorch, and classes given to ``register_se_class``), matched by
exact class so that neither library is imported and no subclass or look-alike, whose forward
may differ, is replaced. The converted blocks have no residual or ReLU tail
(``post_relu=False``): these models add their shortcut outside the SE module, so only the
SE itself is fused here (our own ``senet_kernels.models`` fuse the tail as well).
"""

import warnings

from torch import nn

from .backends import check_backend_name
from .modules import FusedSEBlock
from .recognize import is_known_se_class, look_alike_reason


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
        UserWarning, once, naming every module left as it was: SE modules of a known class
        in a configuration the fused op does not compute (e.g. a GELU activation), with
        the reason, and look-alikes (a subclass of an SE class, a home-made module with the
        layout of one), which are never converted. Other modules are passed over silently.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, or is itself an SE module (it cannot
            be replaced in place: use ``FusedSEBlock.from_module(model)``).
        ValueError: ``backend`` is not a backend name.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert_se_modules needs an nn.Module, got {type(model).__name__}")
    check_backend_name(backend)
    if is_known_se_class(model):
        raise TypeError(f"the model itself is an SE module ({type(model).__name__}); it cannot "
                        "be replaced in place, use FusedSEBlock.from_module(model)")
    converted, skipped = {}, {}
    reason = look_alike_reason(model)
    if reason is not None:
        skipped[id(model)] = ("(the model itself)", reason)
    _convert_children(model, "", backend, converted, skipped)
    skipped = list(skipped.values())
    if skipped:
        lines = "\n".join(f"  {name}: {reason}" for name, reason in skipped)
        warnings.warn(f"convert_se_modules left {len(skipped)} SE-like module(s) unconverted:"
                      f"\n{lines}", UserWarning, stacklevel=2)
    return len(converted)


def _convert(module, backend):
    """The fused block for ``module``, None when it is not an SE module of a known class, or
    the exception / message saying why an SE-like module is left alone."""
    if not is_known_se_class(module):
        return look_alike_reason(module)
    try:
        return FusedSEBlock.from_module(module, backend=backend)
    except (TypeError, ValueError) as e:  # a configuration the fused op does not compute
        return str(e)


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
        if result is not None:
            skipped.setdefault(id(child), (path, result))
        # Look inside everything not converted: a module left alone may hold SE modules.
        _convert_children(child, f"{path}.", backend, converted, skipped)
