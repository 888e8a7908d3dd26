"""The network to train: a ``senet_kernels.models`` SENet, or a timm model with fused SE blocks."""

import difflib
import warnings

from .. import models as senet_models
from ..backends import check_backend_name
from ..convert import convert_se_modules


#: ``--backend`` value that leaves a timm model's SE modules as they are (eager PyTorch).
EAGER = "eager"


def _timm():
    # timm is optional for the package (and takes a second to import): only for its models.
    try:
        import timm
    except ImportError:
        return None
    return timm


def check_model_name(name):
    """Raise ValueError unless ``name`` is one of ours or a timm model name."""
    if name in senet_models.MODELS:
        return
    timm = _timm()
    if timm is not None and timm.is_model(name):
        return
    ours = sorted(senet_models.MODELS)
    known = ours + (timm.list_models() if timm is not None else [])
    close = difflib.get_close_matches(name, known, n=5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    source = ("or a timm model name" if timm is not None
              else "(timm, for its models, is not installed)")
    raise ValueError(f"--model {name!r} is unknown: use one of {', '.join(ours)} {source}{hint}")


def check_model_and_backend(name, backend):
    """Raise ValueError unless ``name`` is a known model and ``backend`` a backend name, or
    ``EAGER`` for a timm model (ours have no unfused SE to keep)."""
    check_model_name(name)
    if backend != EAGER:
        check_backend_name(backend)
    elif name in senet_models.MODELS:
        raise ValueError(f"--backend eager keeps a timm model's own SE modules; {name} is a "
                         "senet_kernels model, whose SE blocks are always fused")


def build_model(name, num_classes, backend="auto", pretrained=False):
    """``name``'s network with ``num_classes`` outputs whose SE blocks run on ``backend``.

    timm models are built by ``timm.create_model`` and converted in place by
    ``convert_se_modules`` (not with ``backend="eager"``, the unfused baseline); a model
    without SE modules trains as it is (with a warning).
    """
    check_model_and_backend(name, backend)
    if name in senet_models.MODELS:
        if pretrained:
            raise ValueError(f"--pretrained is for timm models; {name} starts from random "
                             "weights (senet_kernels.models.from_timm converts timm's)")
        return senet_models.MODELS[name](num_classes=num_classes, backend=backend)
    try:
        model = _timm().create_model(name, pretrained=pretrained, num_classes=num_classes)
    except (OSError, RuntimeError) as e:
        if not pretrained:
            raise
        # Offline, or weights not in the cache: say which option caused it.
        raise ValueError(f"--pretrained: timm could not load {name}'s weights: {e}") from None
    if backend == EAGER:
        return model
    if convert_se_modules(model, backend=backend) == 0:
        warnings.warn(f"timm model {name} has no SE module that senet_kernels fuses; it trains "
                      "unchanged", stacklevel=2)
    return model
