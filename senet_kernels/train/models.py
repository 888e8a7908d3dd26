"""The network to train: a ``senet_kernels.models`` SENet, or a timm model with fused SE blocks."""

import difflib
import warnings
from collections import Counter

import torch

from .. import models as senet_models
from ..backends import check_backend_name
from ..bn_tail import fused_op_reason
from ..convert import convert_se_modules
from ..models.blocks import SEBasicBlock, SEBottleneck
from ..modules import FusedSEBlock
from ..residual_tail import FusedResidualBlock


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


def build_model(name, num_classes, backend="auto", pretrained=False, sync_bn=False):
    """``name``'s network with ``num_classes`` outputs whose SE blocks run on ``backend``.

    timm models are built by ``timm.create_model`` and converted in place by
    ``convert_se_modules`` (not with ``backend="eager"``, the unfused baseline); a model
    without SE modules trains as it is (with a warning). ``sync_bn``: every BatchNorm becomes
    a ``torch.nn.SyncBatchNorm`` (which needs a process group to train), before the SE
    conversion: the conversion then sees that the BatchNorm in front of an SE is not a plain
    one and leaves it a module in the branch (``bn_tail.absorbable_bn_reason``), fusing the
    rest of the tail; converted after it, the block would still be marked as absorbing it
    (the forward checks again, so it would only run the module).
    """
    check_model_and_backend(name, backend)
    if name in senet_models.MODELS:
        if pretrained:
            raise ValueError(f"--pretrained is for timm models; {name} starts from random "
                             "weights (senet_kernels.models.from_timm converts timm's)")
        model = senet_models.MODELS[name](num_classes=num_classes, backend=backend)
        # its blocks hand bn3 / bn2 to the fused op on every forward, which checks its class
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model) if sync_bn else model
    try:
        model = _timm().create_model(name, pretrained=pretrained, num_classes=num_classes)
    except (OSError, RuntimeError) as e:
        if not pretrained:
            raise
        # Offline, or weights not in the cache: say which option caused it.
        raise ValueError(f"--pretrained: timm could not load {name}'s weights: {e}") from None
    if sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if backend == EAGER:
        return model
    if convert_se_modules(model, backend=backend) == 0:
        warnings.warn(f"timm model {name} has no SE module that senet_kernels fuses; it trains "
                      "unchanged", stacklevel=2)
    return model


def _bn_se_pairs(model):
    """(BatchNorm, fused SE block) for every BatchNorm right in front of a fused SE."""
    for m in model.modules():
        if isinstance(m, (FusedResidualBlock, SEBasicBlock, SEBottleneck)):
            pair = m.bn_se_pair()
            if pair is not None:
                yield pair


def fusion_summary(model, device):
    """One line saying what is fused in ``model`` on ``device`` (a torch.device or name): the
    fused SE blocks (and their backends), those that also take the shortcut add and ReLU,
    and how many of the BatchNorms right in front of them the fused op computes, with the
    reason for the others (a SyncBatchNorm, no fused kernels for the device, ...)."""
    se_blocks = [m for m in model.modules() if isinstance(m, FusedSEBlock)]
    if not se_blocks:
        return "no SE block fused (the model's own SE modules, or none)"
    backends = ", ".join(sorted({se.backend for se in se_blocks}))
    tails = sum(se.post_relu for se in se_blocks)
    parts = [f"{len(se_blocks)} SE blocks (backend {backends}), {tails} with their shortcut add "
             "+ ReLU"]
    pairs = list(_bn_se_pairs(model))
    if pairs:
        probe = torch.empty(0, device=device)
        reasons = Counter(fused_op_reason(bn, se, probe) for bn, se in pairs)
        kinds = ", ".join(f"{n} {kind}" for kind, n in
                          sorted(Counter(type(bn).__name__ for bn, _ in pairs).items()))
        absorbed = reasons.pop(None, 0)
        line = (f"BatchNorm in front of the SE ({kinds}): {absorbed} absorbed into the fused "
                "op")
        if reasons:
            line += "; run as modules before it: " + "; ".join(
                f"{n} ({reason})" for reason, n in sorted(reasons.items()))
        parts.append(line)
    return "; ".join(parts)
