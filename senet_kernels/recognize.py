"""Which modules are SE modules that the fused op computes, and what their layers are.

A module is converted only when its **exact class** is one whose ``forward`` is known to be
the standard SE (``x * gate(fc2(act(fc1(mean_hw(x)))))``) or the single-FC Effective SE
(``x * gate(fc(mean_hw(x)))``, timm's EffectiveSEModule and hgnet's EseModule): the classes of torchvision, timm,
Cadene's pretrainedmodels and senet.pytorch listed in ``KNOWN_SE_CLASSES`` (matched by module
and class name, so neither library is imported), and classes a user vouches for with
``register_se_class``. Attribute names alone prove nothing: a subclass may override
``forward`` (``super().forward(x) * 2``) and a home-made module with timm's attribute names
may squeeze with a max-pool. Such look-alikes are reported (``look_alike_reason``), never
converted.

Within a known class, the layers are still checked one by one (exact layer types, 1x1 convs,
supported activation and gate, no extra state), since the constructors of these classes take
arbitrary layers.
"""

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from .spec import LEAKY_RELU_SLOPE


def as_linear_weight(w):
    """A 1x1-conv weight [out, in, 1, 1] as a linear weight [out, in]; anything else unchanged."""
    if isinstance(w, torch.Tensor) and w.dim() == 4 and w.shape[2:] == (1, 1):
        return w.reshape(w.shape[0], w.shape[1])
    return w


@dataclass(frozen=True)
class SEParts:
    """The layers of a recognized SE module, with their attribute names for error messages.
    A single-FC module (Effective SE) has no act and no fc2 (None, names None)."""
    fc1: object
    fc1_name: str
    act: object
    act_name: str
    fc2: object
    fc2_name: str
    gate: object
    gate_name: str
    fc_type: type  # what fc1 / fc2 must be: nn.Conv2d (1x1) or nn.Linear
    norm_name: str = None  # a BatchNorm between fc1 and the activation (timm's SEModule.bn)


def _parts(module, fc1, act, fc2, gate, fc_type=nn.Conv2d):
    return SEParts(getattr(module, fc1), fc1, getattr(module, act), act,
                   getattr(module, fc2), fc2, getattr(module, gate), gate, fc_type)


def _check_global_avg_pool(module, name):
    """A pooling submodule used as the squeeze must be the global mean."""
    pool = getattr(module, name)
    if type(pool) is not nn.AdaptiveAvgPool2d or pool.output_size not in (1, (1, 1)):
        raise ValueError(f"{type(module).__name__}.{name} must be nn.AdaptiveAvgPool2d(1) "
                         f"(a global mean), got {pool!r}")


# One parser per attribute layout: the module's layers, or ValueError / TypeError saying
# why this configuration is not computed by the fused op.

def _torchvision_se(module):
    _check_global_avg_pool(module, "avgpool")
    return _parts(module, "fc1", "activation", "fc2", "scale_activation")


def _timm_se_module(module):
    owner = type(module).__name__
    if getattr(module, "add_maxpool", False):
        raise ValueError(f"{owner} with add_maxpool=True is unsupported: its squeeze mixes the "
                         "mean with a max-pool, FusedSEBlock squeezes with the mean only")
    parts = _parts(module, "fc1", "act", "fc2", "gate")
    if type(module.bn) is nn.Identity:
        return parts
    # rexnet's SE: fc1 -> BatchNorm2d -> act -> fc2. Exact class only: SyncBatchNorm, timm's
    # BatchNormAct2d (a norm with an activation inside) and the like compute something else.
    if type(module.bn) is not nn.BatchNorm2d:
        raise ValueError(f"{owner}.bn is {type(module.bn).__name__}: the norm layer between "
                         "fc1 and the activation must be nn.Identity or nn.BatchNorm2d")
    return dataclasses.replace(parts, norm_name="bn")


def _legacy_se(module):
    """timm.models.senet.SEModule (mean in forward) and Cadene's SEModule (avg_pool)."""
    if getattr(module, "avg_pool", None) is not None:
        _check_global_avg_pool(module, "avg_pool")
    return _parts(module, "fc1", "relu", "fc2", "sigmoid")


def _timm_efficientnet_se(module):
    return _parts(module, "conv_reduce", "act1", "conv_expand", "gate")


def _single_fc_parts(module, fc, gate):
    """The parts of a single-FC SE module (Effective SE: gate(fc(mean_hw(x)))): fc a 1x1
    nn.Conv2d, and the gate a known one, checked here already so that only such modules read
    as this layout (its attribute names alone, e.g. ``conv`` and ``sigmoid``, are common)."""
    layer = getattr(module, fc)
    if type(layer) is not nn.Conv2d:
        raise TypeError(f"{type(module).__name__}.{fc} must be nn.Conv2d, got "
                        f"{type(layer).__name__}")
    _gate_name(getattr(module, gate), module, gate)
    return SEParts(layer, fc, None, None, None, None, getattr(module, gate), gate, nn.Conv2d)


def _timm_effective_se(module):
    """timm.layers.EffectiveSEModule: fc (1x1 conv C -> C with bias) and gate (hard sigmoid
    by default); add_maxpool mixes a max-pool into the squeeze, which the op does not."""
    if getattr(module, "add_maxpool", False):
        raise ValueError(f"{type(module).__name__} with add_maxpool=True is unsupported: its "
                         "squeeze mixes the mean with a max-pool, FusedSEBlock squeezes with the "
                         "mean only")
    return _single_fc_parts(module, "fc", "gate")


def _timm_hgnet_ese(module):
    """timm.models.hgnet.EseModule: conv (1x1 conv C -> C with bias) and sigmoid."""
    return _single_fc_parts(module, "conv", "sigmoid")


def _senet_pytorch_se(module):
    owner = type(module).__name__
    _check_global_avg_pool(module, "avg_pool")
    fc = module.fc
    if type(fc) is not nn.Sequential or len(fc) != 4:
        raise TypeError(f"{owner}.fc must be nn.Sequential(Linear, activation, Linear, gate), "
                        f"got {fc!r}")
    return SEParts(fc[0], "fc.0", fc[1], "fc.1", fc[2], "fc.2", fc[3], "fc.3", nn.Linear)


#: (attributes of an SE layout, its parser): how a registered class or a look-alike is read.
LAYOUTS = (
    (("avgpool", "fc1", "activation", "fc2", "scale_activation"), _torchvision_se),
    (("fc1", "bn", "act", "fc2", "gate"), _timm_se_module),
    (("fc1", "relu", "fc2", "sigmoid"), _legacy_se),
    (("conv_reduce", "act1", "conv_expand", "gate"), _timm_efficientnet_se),
    (("avg_pool", "fc"), _senet_pytorch_se),
    # single FC, after the two-FC layouts (their parsers check the layer types, see
    # _single_fc_parts)
    (("fc", "gate"), _timm_effective_se),
    (("conv", "sigmoid"), _timm_hgnet_ese),
)

#: (module, class name) -> parser: the SE classes whose forward is known to be the standard SE.
KNOWN_SE_CLASSES = {
    ("torchvision.ops.misc", "SqueezeExcitation"): _torchvision_se,
    ("timm.layers.squeeze_excite", "SEModule"): _timm_se_module,
    ("timm.models.layers.squeeze_excite", "SEModule"): _timm_se_module,  # timm < 0.9
    ("timm.models.senet", "SEModule"): _legacy_se,
    ("pretrainedmodels.models.senet", "SEModule"): _legacy_se,  # Cadene
    ("timm.models._efficientnet_blocks", "SqueezeExcite"): _timm_efficientnet_se,
    ("timm.models.efficientnet_blocks", "SqueezeExcite"): _timm_efficientnet_se,  # timm < 0.9
    ("senet.se_module", "SELayer"): _senet_pytorch_se,  # senet.pytorch
    ("timm.layers.squeeze_excite", "EffectiveSEModule"): _timm_effective_se,
    ("timm.models.layers.squeeze_excite", "EffectiveSEModule"): _timm_effective_se,  # < 0.9
    ("timm.models.hgnet", "EseModule"): _timm_hgnet_ese,
}

KNOWN_NAMES = ("torchvision.ops.SqueezeExcitation, timm SEModule (layers or models.senet), "
               "timm SqueezeExcite (EfficientNet/MobileNetV3), timm EffectiveSEModule and "
               "hgnet EseModule (single FC), pretrainedmodels SEModule, "
               "senet.pytorch SELayer, and classes given to register_se_class")

_registered = set()  # classes vouched for; their layout is read from each instance


def register_se_class(cls):
    """Vouch that instances of ``cls`` compute the standard SE, so they may be converted.

    For SE classes not in ``KNOWN_SE_CLASSES``, typically a vendored copy of senet.pytorch's
    ``SELayer`` or of timm's ``SEModule``. ``cls`` must have one of the attribute layouts of
    the known classes (``LAYOUTS``); its ``forward`` must be exactly the standard SE of that
    layout, which cannot be checked here: that is what registering asserts. Subclasses are not
    covered (register each). Returns ``cls``, so it can be used as a class decorator.

    Raises:
        TypeError: ``cls`` is not an ``nn.Module`` subclass.
    """
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"register_se_class needs an nn.Module subclass, got {cls!r}")
    _registered.add(cls)
    return cls


def _layout_parser(module):
    for attrs, parse in LAYOUTS:
        if all(isinstance(getattr(module, a, None), nn.Module) for a in attrs):
            return parse
    return None


def _known_parser(module):
    cls = type(module)
    if cls in _registered:
        return _layout_parser(module)
    return KNOWN_SE_CLASSES.get((cls.__module__, cls.__qualname__))


def altered_instance(module):
    """Why a known class's instance may not compute its class's forward, or None."""
    if "forward" in vars(module):
        return "its forward is replaced on the instance"
    if module._forward_hooks or module._forward_pre_hooks:
        return "it has forward hooks, which the fused block would drop"
    if module._backward_hooks or module._backward_pre_hooks:
        return "it has backward hooks, which the fused block would drop"
    return None


def se_parts(module):
    """The ``SEParts`` of an SE module of a known class.

    Raises:
        TypeError: not an nn.Module, not of a known SE class (look-alikes included), or a layer
            of an unsupported type.
        ValueError: a known SE class in a configuration the fused op does not compute.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"from_module needs an nn.Module, got {type(module).__name__}")
    parse = _known_parser(module)
    if parse is None:
        hint = ""
        if _layout_parser(module) is not None:
            hint = (" (it has the attributes of one, but its class is not known to compute "
                    "the standard SE; if it does, register_se_class it)")
        raise TypeError(f"FusedSEBlock.from_module does not recognize {type(module).__name__} "
                        f"as an SE module{hint}; supported: {KNOWN_NAMES}")
    altered = altered_instance(module)
    if altered is not None:
        raise ValueError(f"{type(module).__name__}: {altered}")
    return parse(module)


def is_known_se_class(module):
    """Whether ``module``'s exact class is a known (or registered) SE class."""
    return _known_parser(module) is not None


#: (module, class name) -> why: SE classes of the libraries above that are not converted
#: (the fused op does not compute them). They are named in convert_se_modules' warning, as
#: their layouts match none of LAYOUTS and would otherwise be passed over without a word.
UNCONVERTED_SE_CLASSES = {
    ("timm.layers.squeeze_excite", "SqueezeExciteCl"): (
        "an SE over channels-last [N, H, W, C] tensors: the fused op takes [N, C, H, W]"),
}


def unconverted_reason(module):
    """Why a module that is an SE module, or reads as one, is left alone by
    ``convert_se_modules``, or None (a known SE class, or nothing SE-like): an SE class of a
    library that the fused op does not compute (``UNCONVERTED_SE_CLASSES``), or a look-alike
    (``look_alike_reason``)."""
    cls = type(module)
    reason = UNCONVERTED_SE_CLASSES.get((cls.__module__, cls.__qualname__))
    if reason is not None and not is_known_se_class(module):
        return f"{cls.__qualname__} (module {cls.__module__}): {reason}"
    return look_alike_reason(module)


def look_alike_reason(module):
    """Why a module of an unknown class that reads as an SE module is left alone, or None.

    A module is a look-alike when its attributes form a complete SE layout (the parser of
    that layout accepts it): a subclass of an SE class, or a home-made module named like one.
    Anything else (a classifier head with ``avg_pool`` and ``fc``, a whole model) is not.
    """
    if is_known_se_class(module):
        return None
    parse = _layout_parser(module)
    if parse is None:
        return None
    try:
        parse(module)
    except (TypeError, ValueError):
        return None
    return (f"{type(module).__qualname__} (module {type(module).__module__}) has the layout of "
            "an SE module, but its class is not one whose forward is known; left alone "
            "(senet_kernels.register_se_class it if it computes the standard SE)")


def _fc_params(layer, fc_type, module, name):
    """(weight [out, in], bias or None) of a fully connected layer of an SE module."""
    owner = type(module).__name__
    # Exact types: a subclass may override forward, and we could not tell what it computes.
    if type(layer) is not fc_type:
        raise TypeError(f"{owner}.{name} must be nn.{fc_type.__name__}, "
                        f"got {type(layer).__name__}")
    if fc_type is nn.Conv2d:
        if layer.kernel_size != (1, 1):
            raise ValueError(f"{owner}.{name} must be a 1x1 conv, got kernel_size "
                             f"{layer.kernel_size}")
        # On the pooled 1x1 map, only a plain conv is a linear layer; 1x1 'same'/'valid'
        # padding is no padding.
        if (layer.stride != (1, 1) or layer.dilation != (1, 1) or layer.groups != 1
                or layer.padding not in ((0, 0), "valid", "same")):
            raise ValueError(f"{owner}.{name} must have stride 1, dilation 1, groups 1 and no "
                             f"padding, got stride={layer.stride}, dilation={layer.dilation}, "
                             f"groups={layer.groups}, padding={layer.padding}")
    return as_linear_weight(layer.weight), layer.bias


#: Activation / gate modules by exact type (subclasses might compute something else).
#: nn.GELU's name depends on its ``approximate`` (see _map_layer).
_ACTIVATION_TYPES = {nn.ReLU: "relu", nn.SiLU: "silu", nn.GELU: "gelu",
                     nn.Hardswish: "hardswish"}
_GATE_TYPES = {nn.Sigmoid: "sigmoid", nn.Hardsigmoid: "hardsigmoid"}
# timm's own layers, matched by class name within timm (importing timm is not an option).
# HardSigmoid / HardSigmoidMe compute relu6(x + 3) / 6, which is F.hardsigmoid, and
# HardSwish / HardSwishMe x * relu6(x + 3) / 6, F.hardswish; GELU / GELUTanh call F.gelu.
_TIMM_ACTIVATIONS = {"Swish": "silu", "SwishMe": "silu", "GELU": "gelu",
                     "GELUTanh": "gelu_tanh", "HardSwish": "hardswish",
                     "HardSwishMe": "hardswish"}
_TIMM_GATES = {"Sigmoid": "sigmoid", "HardSigmoid": "hardsigmoid",
               "HardSigmoidMe": "hardsigmoid"}


def _map_layer(layer, torch_types, timm_names):
    cls = type(layer)
    if cls is nn.GELU:
        return {"none": "gelu", "tanh": "gelu_tanh"}.get(layer.approximate)
    if cls is nn.LeakyReLU:  # the fused op has nn.LeakyReLU's default slope only
        return "leaky_relu" if layer.negative_slope == LEAKY_RELU_SLOPE else None
    if cls in torch_types:
        return torch_types[cls]
    if cls.__module__.startswith("timm.") and cls.__name__ in timm_names:
        return timm_names[cls.__name__]
    return None


def _activation_name(layer, module, name):
    activation = _map_layer(layer, _ACTIVATION_TYPES, _TIMM_ACTIVATIONS)
    if activation is None:
        raise ValueError(f"{type(module).__name__}.{name} is {type(layer).__name__}: unsupported "
                         "activation (FusedSEBlock supports nn.ReLU, nn.SiLU, nn.GELU, "
                         f"nn.Hardswish, nn.LeakyReLU with negative_slope={LEAKY_RELU_SLOPE} "
                         "and timm's Swish, GELU, GELUTanh, HardSwish)")
    return activation


def _gate_name(layer, module, name):
    gate = _map_layer(layer, _GATE_TYPES, _TIMM_GATES)
    if gate is None:
        raise ValueError(f"{type(module).__name__}.{name} is {type(layer).__name__}: unsupported "
                         "gate (FusedSEBlock supports nn.Sigmoid and nn.Hardsigmoid, or timm's "
                         "Sigmoid / HardSigmoid)")
    return gate


def _check_no_other_state(module, used):
    """Every parameter and buffer of the source must be one the fused block uses.

    A recognized module with more state (an added submodule, a norm layer somewhere) computes
    something the fused op does not, and converting it would silently drop that state.
    """
    used = {id(t) for t in used if t is not None}
    extra = [n for n, p in module.named_parameters() if id(p) not in used]
    extra += [n for n, b in module.named_buffers() if id(b) not in used]
    if extra:
        raise ValueError(f"{type(module).__name__} has state the SE op does not use: "
                         f"{', '.join(extra)}")


@dataclass(frozen=True)
class SESpec:
    """What a recognized SE module computes: the op's parameters and options, and where its
    fully connected layers sit in it (attribute paths such as "fc1" or "fc.0")."""
    w1: object  # [Cr, C]
    b1: object  # [Cr] or None
    w2: object  # [C, Cr], or None for a single-FC module (w1 [C, C])
    b2: object  # [C] or None
    activation: str  # None for a single-FC module
    gate: str
    fc1_path: str
    fc2_path: str  # None for a single-FC module
    norm_path: str = None  # an nn.BatchNorm2d on fc1's output (see FusedSEBlock.forward)


def read_se_module(module):
    """The ``SESpec`` of an SE module of a known class (see ``se_parts`` for the errors)."""
    parts = se_parts(module)
    if parts.fc2 is None:
        return _read_single_fc(module, parts)
    w1, b1 = _fc_params(parts.fc1, parts.fc_type, module, parts.fc1_name)
    w2, b2 = _fc_params(parts.fc2, parts.fc_type, module, parts.fc2_name)
    owner = type(module).__name__
    c, cr = w1.shape[1], w1.shape[0]
    if w2.shape != (c, cr):
        raise ValueError(f"{owner}: {parts.fc1_name} maps {c} -> {cr} channels but "
                         f"{parts.fc2_name} maps {w2.shape[1]} -> {w2.shape[0]}")
    if (b1 is None) != (b2 is None):
        raise ValueError(f"{owner}: only one of {parts.fc1_name} and {parts.fc2_name} has a "
                         "bias; FusedSEBlock has biases on both or neither")
    activation = _activation_name(parts.act, module, parts.act_name)
    gate = _gate_name(parts.gate, module, parts.gate_name)
    used = [w1, w2, b1, b2, parts.fc1.weight, parts.fc2.weight]
    if parts.norm_name is not None:
        norm = getattr(module, parts.norm_name)
        if norm.num_features != cr:
            raise ValueError(f"{owner}.{parts.norm_name} normalizes {norm.num_features} "
                             f"channels, {parts.fc1_name} gives {cr}")
        used += [*norm.parameters(), *norm.buffers()]
    _check_no_other_state(module, used)
    _check_layers_unaltered(module)
    return SESpec(w1, b1, w2, b2, activation, gate, parts.fc1_name, parts.fc2_name,
                  parts.norm_name)


def _read_single_fc(module, parts):
    """The ``SESpec`` of a single-FC SE module (Effective SE): w2, b2 and activation None."""
    w1, b1 = _fc_params(parts.fc1, parts.fc_type, module, parts.fc1_name)
    if w1.shape[0] != w1.shape[1]:
        raise ValueError(f"{type(module).__name__}: {parts.fc1_name} maps {w1.shape[1]} -> "
                         f"{w1.shape[0]} channels; a single-FC SE maps C -> C")
    gate = _gate_name(parts.gate, module, parts.gate_name)
    _check_no_other_state(module, [w1, b1, parts.fc1.weight])
    _check_layers_unaltered(module)
    return SESpec(w1, b1, None, None, None, gate, parts.fc1_name, None)


def _check_layers_unaltered(module):
    """The fused op never calls the SE module's layers: a hook on one (activation statistics,
    a pruning mask) or a forward replaced on it would be dropped without a word."""
    for name, layer in module.named_modules():
        if name:
            altered = altered_instance(layer)
            if altered is not None:
                raise ValueError(f"{type(module).__name__}.{name}: {altered}")
