"""``from_timm``: timm's SE-ResNet / SE-ResNeXt / SENet-154 weights in a fused ``SENet``.

Two timm families hold these networks, with different structures and parameter names:

* ``timm/models/senet.py``, the ``legacy_*`` models (Cadene's port of the paper's Caffe
  models): the stem is ``layer0.{conv1,bn1[,conv2,bn2,conv3,bn3]}`` then a padding-free
  ``ceil_mode`` max-pool; SE-ResNet-50/101/152 stride in the bottleneck's first 1x1 conv;
  SE-ResNet-18/34 have a ReLU between their second BN and the SE;
  ``se_module`` has Cr = C // 16; the classifier is ``last_linear``; SENet-154's strided
  shortcuts are 3x3.
* ``timm/models/resnet.py``, ``seresnet*`` / ``seresnext*`` / ``senet154``: torchvision's
  names and structure (stride in the 3x3 conv, max-pool padded by one) and timm's
  ``SEModule`` with Cr = C / 16 rounded to a multiple of 8; the ``-d`` / ``-t`` variants add
  a deep stem and average-pool shortcuts.

``ARCHS`` gives, for each supported timm architecture, the ``SENet`` options that make our
model the same network, and which naming its state dict uses. The SE widths are then taken
from the weights themselves, so a model built with another ``rd_ratio`` still loads.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from ..modules import FusedSEBlock
from .senet import SENet


@dataclass(frozen=True)
class TimmArch:
    """How to rebuild one timm architecture: its state-dict naming and ``SENet`` options."""
    naming: str  # "legacy" (timm.models.senet) or "resnet" (timm.models.resnet)
    block: str
    layers: tuple
    options: dict = field(default_factory=dict)


_LEGACY = dict(maxpool_ceil_mode=True, se_rd_divisor=None)
_RESNET = dict(maxpool_ceil_mode=False, se_rd_divisor=8, stride_in_1x1=False)
_LEGACY_SE_RESNET = dict(_LEGACY, stride_in_1x1=True)
# timm's SEResNetBlock applies its ReLU to the second BN's output before the SE as well.
_LEGACY_BASIC = dict(_LEGACY, relu_before_se=True)
_X32X4 = dict(groups=32, base_width=4)
_X32X8 = dict(groups=32, base_width=8)
_X64X4 = dict(groups=64, base_width=4)
# timm's stem_type 'deep' (stem_width 32) and 'deep_tiered'; both ResNet-D shortcuts.
_D = dict(stem_channels=(32, 32, 64), avg_down=True)
_T = dict(stem_channels=(24, 32, 64), avg_down=True)
_SENET154 = dict(groups=64, base_width=4, reduce_first=2, stem_channels=(64, 64, 128),
                 downsample_kernel=3)

_R18, _R34_50, _R101, _R152 = (2, 2, 2, 2), (3, 4, 6, 3), (3, 4, 23, 3), (3, 8, 36, 3)

#: timm architecture name -> TimmArch.
ARCHS = {
    "legacy_seresnet18": TimmArch("legacy", "basic", _R18, _LEGACY_BASIC),
    "legacy_seresnet34": TimmArch("legacy", "basic", _R34_50, _LEGACY_BASIC),
    "legacy_seresnet50": TimmArch("legacy", "bottleneck", _R34_50, _LEGACY_SE_RESNET),
    "legacy_seresnet101": TimmArch("legacy", "bottleneck", _R101, _LEGACY_SE_RESNET),
    "legacy_seresnet152": TimmArch("legacy", "bottleneck", _R152, _LEGACY_SE_RESNET),
    "legacy_seresnext26_32x4d": TimmArch("legacy", "bottleneck", _R18, {**_LEGACY, **_X32X4}),
    "legacy_seresnext50_32x4d": TimmArch("legacy", "bottleneck", _R34_50, {**_LEGACY, **_X32X4}),
    "legacy_seresnext101_32x4d": TimmArch("legacy", "bottleneck", _R101, {**_LEGACY, **_X32X4}),
    "legacy_senet154": TimmArch("legacy", "bottleneck", _R152, {**_LEGACY, **_SENET154}),
    "seresnet18": TimmArch("resnet", "basic", _R18, _RESNET),
    "seresnet34": TimmArch("resnet", "basic", _R34_50, _RESNET),
    "seresnet50": TimmArch("resnet", "bottleneck", _R34_50, _RESNET),
    "seresnet50t": TimmArch("resnet", "bottleneck", _R34_50, {**_RESNET, **_T}),
    "seresnet101": TimmArch("resnet", "bottleneck", _R101, _RESNET),
    "seresnet152": TimmArch("resnet", "bottleneck", _R152, _RESNET),
    "seresnet152d": TimmArch("resnet", "bottleneck", _R152, {**_RESNET, **_D}),
    "seresnet200d": TimmArch("resnet", "bottleneck", (3, 24, 36, 3), {**_RESNET, **_D}),
    "seresnet269d": TimmArch("resnet", "bottleneck", (3, 30, 48, 8), {**_RESNET, **_D}),
    "seresnext26d_32x4d": TimmArch("resnet", "bottleneck", _R18, {**_RESNET, **_X32X4, **_D}),
    "seresnext26t_32x4d": TimmArch("resnet", "bottleneck", _R18, {**_RESNET, **_X32X4, **_T}),
    "seresnext50_32x4d": TimmArch("resnet", "bottleneck", _R34_50, {**_RESNET, **_X32X4}),
    "seresnext101_32x4d": TimmArch("resnet", "bottleneck", _R101, {**_RESNET, **_X32X4}),
    "seresnext101_32x8d": TimmArch("resnet", "bottleneck", _R101, {**_RESNET, **_X32X8}),
    "seresnext101d_32x8d": TimmArch("resnet", "bottleneck", _R101, {**_RESNET, **_X32X8, **_D}),
    "seresnext101_64x4d": TimmArch("resnet", "bottleneck", _R101, {**_RESNET, **_X64X4}),
    "senet154": TimmArch("resnet", "bottleneck", _R152, {**_RESNET, **_SENET154}),
}

# Legacy stem layers: layer0.<name> -> our name, for the 7x7 stem and the three-conv stem
# (where conv1 is a Sequential: conv, bn, relu, conv, bn, relu, conv).
_LEGACY_STEM = {"conv1": "conv1", "bn1": "bn1"}
_LEGACY_DEEP_STEM = {"conv1": "conv1.0", "bn1": "conv1.1", "conv2": "conv1.3",
                     "bn2": "conv1.4", "conv3": "conv1.6", "bn3": "bn1"}


def _legacy_name(key, deep_stem):
    """Our name for a legacy state-dict key, or None when it has no counterpart."""
    if key.startswith("layer0."):
        layer, rest = key[len("layer0."):].split(".", 1)
        stem = _LEGACY_DEEP_STEM if deep_stem else _LEGACY_STEM
        return f"{stem[layer]}.{rest}" if layer in stem else None
    if key.startswith("last_linear."):
        return "fc." + key[len("last_linear."):]
    return key.replace(".se_module.", ".se.")


def rename_state_dict(state_dict, arch):
    """Our names for a timm state dict's keys.

    Returns ``(renamed, origin, unmapped)``: ``{our name: tensor}``, ``{our name: source
    key}`` (for error messages) and the source keys that have no name of ours.
    """
    spec = timm_arch(arch)
    deep_stem = len(spec.options.get("stem_channels", (64,))) == 3
    renamed, origin, unmapped = {}, {}, []
    for key, value in state_dict.items():
        name = _legacy_name(key, deep_stem) if spec.naming == "legacy" else key
        if name is None or name in renamed:
            unmapped.append(key)
        else:
            renamed[name], origin[name] = value, key
    return renamed, origin, unmapped


def timm_arch(arch):
    """The ``TimmArch`` of a timm model name ("seresnet50" or with a tag, "seresnet50.a1_in1k")."""
    name = arch.split(".", 1)[0]
    if name not in ARCHS:
        raise ValueError(f"from_timm does not support the timm architecture {arch!r}; "
                         f"supported: {', '.join(ARCHS)}")
    return ARCHS[name]


def _architecture_of(model):
    """The architecture name a timm model records in its pretrained / default config."""
    for attr in ("pretrained_cfg", "default_cfg"):
        cfg = getattr(model, attr, None)
        if isinstance(cfg, Mapping) and cfg.get("architecture"):
            return cfg["architecture"]
    raise ValueError(f"cannot tell the timm architecture of this {type(model).__name__} (no "
                     "pretrained_cfg / default_cfg['architecture']); pass arch=")


def _fit_se_blocks(model, state):
    """Give every SE block the width (and biases) its weights have.

    The widths come from the weights rather than a rule: timm's rounding of C / 16 is one
    choice among several (``rd_ratio``, ``rd_channels``), and the weights are the truth.
    """
    for name, se in model.se_blocks():
        w1 = state.get(f"{name}.fc1.weight")
        if w1 is None:
            continue  # reported as a missing key
        bias = f"{name}.fc1.bias" in state
        if w1.shape[0] != se.rd_channels or bias != (se.fc1.bias is not None):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, FusedSEBlock(
                se.channels, rd_channels=w1.shape[0], bias=bias, post_relu=se.post_relu,
                backend=se.backend, device=se.fc1.weight.device, dtype=se.fc1.weight.dtype))


def _conv_geometry(conv):
    return dict(kernel_size=conv.kernel_size, stride=conv.stride, padding=conv.padding,
                dilation=conv.dilation, groups=conv.groups)


def _pool_geometry(pool):
    return {k: getattr(pool, k, None) for k in ("kernel_size", "stride", "padding",
                                                 "ceil_mode", "count_include_pad")}


def _check_structure(source, model, origin):
    """Raise unless ``source`` (a timm model) has our convolutions and poolings.

    A state dict does not record strides, paddings, dilations or pooling modes, and timm
    models built with other options (``output_stride=16``, another ``global_pool``) load
    the same weights but compute something else. So every convolution is compared with the
    one its weight comes from, and the max / average poolings in order.
    """
    source_modules = dict(source.named_modules())
    differences = []
    for name, conv in model.named_modules():
        if not isinstance(conv, nn.Conv2d):
            continue
        theirs = source_modules.get(origin[f"{name}.weight"].rpartition(".")[0])
        if not isinstance(theirs, nn.Conv2d) or _conv_geometry(theirs) != _conv_geometry(conv):
            differences.append(f"{name}: ours {_conv_geometry(conv)}, timm {theirs!r}")
    for kind in (nn.MaxPool2d, nn.AvgPool2d):
        ours = [_pool_geometry(m) for m in model.modules() if isinstance(m, kind)]
        theirs = [_pool_geometry(m) for m in source.modules() if isinstance(m, kind)]
        if ours != theirs:
            differences.append(f"{kind.__name__}s: ours {ours}, timm {theirs}")
    pool_type = getattr(getattr(source, "global_pool", None), "pool_type", "avg")
    if pool_type != "avg":
        differences.append(f"global pooling: ours 'avg', timm {pool_type!r}")
    if differences:
        raise ValueError("the timm model is not the network its architecture name says "
                         "(built with other options?); differences:\n  "
                         + "\n  ".join(differences))


def _float_tensor(state):
    return next((t for t in state.values() if torch.is_tensor(t) and t.is_floating_point()),
                None)


def from_timm(model_or_state_dict, arch=None, *, backend="auto"):
    """Our ``SENet`` carrying the weights of a timm SE-ResNet / SE-ResNeXt / SENet-154.

    Args:
        model_or_state_dict: a timm model (``timm.create_model(...)``) or its state dict.
        arch: the timm architecture name (a ``.tag`` suffix is ignored); read from the
            model's ``pretrained_cfg`` / ``default_cfg`` when a model is given, required for
            a bare state dict. Supported: the keys of ``ARCHS``.
        backend: the SE blocks' backend.

    Returns:
        An ``SENet`` computing the same function (in eval mode; in training mode too, up to
        dropout), with the weights' device and floating dtype, the source model's training
        mode and ``drop_rate`` (a state dict gives a model in training mode). The number of
        classes and input channels are read from the weights.

    Raises:
        ValueError: unknown architecture, keys that do not map one to one (the message
            lists the source keys without a counterpart and our keys left without weights),
            or a source model whose convolutions or poolings differ from ours (a timm model
            built with other options, e.g. ``output_stride=16``).
        RuntimeError: a tensor of the wrong shape (from ``load_state_dict``).
    """
    if isinstance(model_or_state_dict, nn.Module):
        source = model_or_state_dict
        arch = arch or _architecture_of(source)
        state = source.state_dict()
        training = source.training
        drop_rate = getattr(source, "drop_rate", None)
    elif isinstance(model_or_state_dict, Mapping):
        if arch is None:
            raise ValueError("from_timm needs arch= (a timm architecture name) with a state dict")
        state, training, drop_rate = model_or_state_dict, True, None
    else:
        raise TypeError(f"from_timm needs a timm model or a state dict, got "
                        f"{type(model_or_state_dict).__name__}")

    spec = timm_arch(arch)
    renamed, origin, unmapped = rename_state_dict(state, arch)
    options = dict(spec.options)
    fc = renamed.get("fc.weight")
    options["num_classes"] = 0 if fc is None else fc.shape[0]
    stem = renamed.get("conv1.weight", renamed.get("conv1.0.weight"))
    if stem is not None:
        options["in_chans"] = stem.shape[1]
    if drop_rate is not None:
        options["drop_rate"] = float(drop_rate)
    like = _float_tensor(state)
    # Built where the weights are (no host copy of a GPU model; nothing at all on "meta").
    with torch.device(like.device if like is not None else "cpu"):
        model = SENet(spec.block, spec.layers, backend=backend, **options)
    if like is not None:
        model.to(dtype=like.dtype)
    _fit_se_blocks(model, renamed)

    expected = model.state_dict()
    unmapped += [origin[k] for k in renamed if k not in expected]
    missing = [k for k in expected if k not in renamed]
    if unmapped or missing:
        raise ValueError(f"timm {arch} state dict does not map onto SENet: "
                         f"{len(unmapped)} source key(s) without a counterpart {unmapped}; "
                         f"{len(missing)} SENet key(s) without weights {missing}")
    model.load_state_dict(renamed)
    if isinstance(model_or_state_dict, nn.Module):
        _check_structure(model_or_state_dict, model, origin)
    return model.train(training)
