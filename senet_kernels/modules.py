"""``FusedSEBlock``: the SE op as an ``nn.Module``, and its conversion from common SE modules.

The block holds its two fully connected layers as ``nn.Linear`` submodules ``fc1`` / ``fc2``
so that its parameters are ``fc1.weight [Cr, C]``, ``fc1.bias [Cr]``, ``fc2.weight [C, Cr]``
and ``fc2.bias [C]``, the names most SE implementations use. State dicts of 1x1-conv SE
modules (weights ``[Cr, C, 1, 1]`` / ``[C, Cr, 1, 1]``) load as they are.

``FusedSEBlock.from_module`` converts torchvision's and timm's SE modules (and the
senet.pytorch ``SELayer`` form). It recognizes them by their attribute names and submodule
types, never by importing torchvision or timm: both are optional and this package does not
depend on them.
"""

import operator
from dataclasses import dataclass

import torch
from torch import nn

from .backends import BACKENDS
from .functional import squeeze_excite
from .spec import check_activation, check_gate

#: The values of the ``backend`` argument (availability is checked per call, on the input).
BACKEND_NAMES = ("auto",) + BACKENDS


def _positive_int(name, value):
    if isinstance(value, bool):  # bool is an int subclass, but True channels is a bug
        raise TypeError(f"{name} must be an int, got bool")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def check_backend_name(backend):
    """A valid ``backend`` argument (availability is checked per call, on the input)."""
    if backend not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {BACKEND_NAMES}, got {backend!r}")
    return backend


def _as_linear_weight(w):
    """A 1x1-conv weight [out, in, 1, 1] as a linear weight [out, in]; anything else unchanged."""
    if isinstance(w, torch.Tensor) and w.dim() == 4 and w.shape[2:] == (1, 1):
        return w.reshape(w.shape[0], w.shape[1])
    return w


class FusedSEBlock(nn.Module):
    """Squeeze-and-Excitation block computed by the fused ``squeeze_excite`` op.

    ``y = relu?(x * gate(fc2(act(fc1(mean_hw(x))))) + residual?)``

    Args:
        channels: C, the channels of the input.
        reduction: Cr = max(1, channels // reduction) unless ``rd_channels`` is given.
        rd_channels: Cr, the width of the bottleneck, overriding ``reduction``.
        bias: whether fc1 and fc2 have biases (both or neither).
        activation: "relu" or "silu", applied after fc1.
        gate: "sigmoid" or "hardsigmoid", applied after fc2.
        post_relu: apply a ReLU after the rescale (and the residual add), as in SE-ResNet.
        backend: "auto", "triton", "cuda", "cpu" or "reference". Whether a backend can run
            depends on the input (device, installed extensions), so it is checked in forward.
        device, dtype: where and in which dtype the parameters are created.

    Parameters: ``fc1.weight [Cr, C]``, ``fc1.bias [Cr]``, ``fc2.weight [C, Cr]``,
    ``fc2.bias [C]``, initialized as ``nn.Linear`` does. ``load_state_dict`` also accepts
    1x1-conv shaped weights ``[Cr, C, 1, 1]`` / ``[C, Cr, 1, 1]``.

    Forward: ``block(x, residual=None)`` with x [N, C, H, W] (NCHW or channels_last) returns a
    tensor like x; see ``squeeze_excite`` for dtypes and layouts.
    """

    def __init__(self, channels, reduction=16, *, rd_channels=None, bias=True, activation="relu",
                 gate="sigmoid", post_relu=False, backend="auto", device=None, dtype=None):
        super().__init__()
        channels = _positive_int("channels", channels)
        reduction = _positive_int("reduction", reduction)
        if rd_channels is None:
            rd_channels = max(1, channels // reduction)
        else:
            rd_channels = _positive_int("rd_channels", rd_channels)
        self.channels = channels
        self.rd_channels = rd_channels
        self.activation = check_activation(activation)
        self.gate = check_gate(gate)
        self.post_relu = bool(post_relu)
        self.backend = check_backend_name(backend)
        factory = {"device": device, "dtype": dtype}
        self.fc1 = nn.Linear(channels, rd_channels, bias=bias, **factory)
        self.fc2 = nn.Linear(rd_channels, channels, bias=bias, **factory)

    def forward(self, x, residual=None):
        return squeeze_excite(x, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias,
                              residual, activation=self.activation, gate=self.gate,
                              post_relu=self.post_relu, backend=self.backend)

    def extra_repr(self):
        return (f"channels={self.channels}, rd_channels={self.rd_channels}, "
                f"activation={self.activation!r}, gate={self.gate!r}, "
                f"post_relu={self.post_relu}, backend={self.backend!r}")

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # Reshape 1x1-conv weights in the dict being loaded (load_state_dict's own copy, from
        # which the fc1/fc2 submodules' entries are taken next) and let nn.Module do the rest,
        # so that shape mismatches and missing / unexpected keys are reported as usual.
        for name in ("fc1.weight", "fc2.weight"):
            key = prefix + name
            if key in state_dict:
                state_dict[key] = _as_linear_weight(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    @classmethod
    def from_module(cls, module, *, backend="auto", post_relu=False):
        """A ``FusedSEBlock`` computing what ``module`` computes, with a copy of its weights.

        Recognized modules (by attribute names and submodule types):

        * torchvision ``ops.SqueezeExcitation``: ``avgpool``, ``fc1``, ``activation``, ``fc2``,
          ``scale_activation``;
        * timm ``layers.SEModule``: ``fc1``, ``bn`` (must be ``nn.Identity``), ``act``,
          ``fc2``, ``gate``, and ``add_maxpool`` False;
        * timm ``models.senet.SEModule`` (legacy): ``fc1``, ``relu``, ``fc2``, ``sigmoid``;
        * timm EfficientNet / MobileNetV3 ``SqueezeExcite``: ``conv_reduce``, ``act1``,
          ``conv_expand``, ``gate``;
        * senet.pytorch ``SELayer``: ``avg_pool`` and ``fc = Sequential(Linear, act, Linear,
          gate)``.

        The fully connected layers must be 1x1 ``nn.Conv2d`` (``nn.Linear`` for SELayer)
        without stride, dilation, padding or groups; the activation ``nn.ReLU`` or ``nn.SiLU``
        (or timm's Swish); the gate ``nn.Sigmoid`` or ``nn.Hardsigmoid`` (or timm's Sigmoid,
        HardSigmoid). The parameters keep the source's dtype and device; the block gets its
        training mode. ``post_relu`` and ``backend`` are the new block's (the source modules
        have no residual or ReLU tail).

        Raises:
            TypeError: ``module`` is not one of the recognized SE modules, or a layer of it
                has an unsupported type.
            ValueError: a recognized module in a configuration the fused op does not compute
                (e.g. a GELU activation, a max-pool squeeze, a norm layer, a 3x3 conv).
        """
        parts = _se_parts(module)
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
        _check_no_other_state(module, [w1, w2, b1, b2, parts.fc1.weight, parts.fc2.weight])

        block = cls(c, rd_channels=cr, bias=b1 is not None, activation=activation, gate=gate,
                    post_relu=post_relu, backend=backend, device=w1.device, dtype=w1.dtype)
        with torch.no_grad():
            block.fc1.weight.copy_(w1)
            block.fc2.weight.copy_(w2)
            if b1 is not None:
                block.fc1.bias.copy_(b1)
                block.fc2.bias.copy_(b2)
        return block.train(module.training)


# --- Recognizing SE modules ---------------------------------------------------------------

@dataclass(frozen=True)
class _SEParts:
    """The layers of a recognized SE module, with their attribute names for error messages."""
    fc1: object
    fc1_name: str
    act: object
    act_name: str
    fc2: object
    fc2_name: str
    gate: object
    gate_name: str
    fc_type: type  # what fc1 / fc2 must be: nn.Conv2d (1x1) or nn.Linear


def _parts(module, fc1, act, fc2, gate, fc_type=nn.Conv2d):
    return _SEParts(getattr(module, fc1), fc1, getattr(module, act), act,
                    getattr(module, fc2), fc2, getattr(module, gate), gate, fc_type)


def _check_global_avg_pool(module, name):
    """The squeeze of torchvision / senet.pytorch is a pooling submodule: it must be the mean."""
    pool = getattr(module, name)
    if type(pool) is not nn.AdaptiveAvgPool2d or pool.output_size not in (1, (1, 1)):
        raise ValueError(f"{type(module).__name__}.{name} must be nn.AdaptiveAvgPool2d(1) "
                         f"(a global mean), got {pool!r}")


def _torchvision_se(module):
    _check_global_avg_pool(module, "avgpool")
    return _parts(module, "fc1", "activation", "fc2", "scale_activation")


def _timm_se_module(module):
    owner = type(module).__name__
    if getattr(module, "add_maxpool", False):
        raise ValueError(f"{owner} with add_maxpool=True is unsupported: its squeeze mixes the "
                         "mean with a max-pool, FusedSEBlock squeezes with the mean only")
    if type(module.bn) is not nn.Identity:
        raise ValueError(f"{owner}.bn is {type(module.bn).__name__}: a norm layer between fc1 "
                         "and the activation is unsupported (only nn.Identity)")
    return _parts(module, "fc1", "act", "fc2", "gate")


def _timm_legacy_se(module):
    return _parts(module, "fc1", "relu", "fc2", "sigmoid")


def _timm_efficientnet_se(module):
    return _parts(module, "conv_reduce", "act1", "conv_expand", "gate")


def _senet_pytorch_se(module):
    owner = type(module).__name__
    _check_global_avg_pool(module, "avg_pool")
    fc = module.fc
    if type(fc) is not nn.Sequential or len(fc) != 4:
        raise TypeError(f"{owner}.fc must be nn.Sequential(Linear, activation, Linear, gate), "
                        f"got {fc!r}")
    return _SEParts(fc[0], "fc.0", fc[1], "fc.1", fc[2], "fc.2", fc[3], "fc.3", nn.Linear)


#: (attributes that identify a kind of SE module, its parser), tried in order.
_KINDS = (
    (("avgpool", "fc1", "activation", "fc2", "scale_activation"), _torchvision_se),
    (("fc1", "bn", "act", "fc2", "gate"), _timm_se_module),
    (("fc1", "relu", "fc2", "sigmoid"), _timm_legacy_se),
    (("conv_reduce", "act1", "conv_expand", "gate"), _timm_efficientnet_se),
    (("avg_pool", "fc"), _senet_pytorch_se),
)

_KNOWN = ("torchvision.ops.SqueezeExcitation, timm SEModule (layers or models.senet), "
          "timm SqueezeExcite (EfficientNet/MobileNetV3), senet.pytorch SELayer")


def _se_parts(module):
    if not isinstance(module, nn.Module):
        raise TypeError(f"from_module needs an nn.Module, got {type(module).__name__}")
    for attrs, parse in _KINDS:
        if all(isinstance(getattr(module, a, None), nn.Module) for a in attrs):
            return parse(module)
    raise TypeError(f"FusedSEBlock.from_module does not recognize {type(module).__name__} as an "
                    f"SE module; supported: {_KNOWN}")


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
    return _as_linear_weight(layer.weight), layer.bias


#: Activation / gate modules by exact type (subclasses might compute something else).
_ACTIVATION_TYPES = {nn.ReLU: "relu", nn.SiLU: "silu"}
_GATE_TYPES = {nn.Sigmoid: "sigmoid", nn.Hardsigmoid: "hardsigmoid"}
# timm's own layers, matched by class name within timm (importing timm is not an option).
# HardSigmoid / HardSigmoidMe compute relu6(x + 3) / 6, which is F.hardsigmoid.
_TIMM_ACTIVATIONS = {"Swish": "silu", "SwishMe": "silu"}
_TIMM_GATES = {"Sigmoid": "sigmoid", "HardSigmoid": "hardsigmoid",
               "HardSigmoidMe": "hardsigmoid"}


def _map_layer(layer, torch_types, timm_names):
    cls = type(layer)
    if cls in torch_types:
        return torch_types[cls]
    if cls.__module__.startswith("timm.") and cls.__name__ in timm_names:
        return timm_names[cls.__name__]
    return None


def _activation_name(layer, module, name):
    activation = _map_layer(layer, _ACTIVATION_TYPES, _TIMM_ACTIVATIONS)
    if activation is None:
        raise ValueError(f"{type(module).__name__}.{name} is {type(layer).__name__}: unsupported "
                         "activation (FusedSEBlock supports nn.ReLU and nn.SiLU / timm Swish)")
    return activation


def _gate_name(layer, module, name):
    gate = _map_layer(layer, _GATE_TYPES, _TIMM_GATES)
    if gate is None:
        raise ValueError(f"{type(module).__name__}.{name} is {type(layer).__name__}: unsupported "
                         "gate (FusedSEBlock supports nn.Sigmoid and nn.Hardsigmoid, or timm's "
                         "Sigmoid / HardSigmoid)")
    return gate


def _check_no_other_state(module, used):
    """Every parameter and buffer of the source must be one the block copies.

    A recognized module with more state (an added submodule, a norm layer somewhere) computes
    something the fused op does not, and converting it would silently drop that state.
    """
    used = {id(t) for t in used if t is not None}
    extra = [n for n, p in module.named_parameters() if id(p) not in used]
    extra += [n for n, _ in module.named_buffers()]
    if extra:
        raise ValueError(f"{type(module).__name__} has state the SE op does not use: "
                         f"{', '.join(extra)}")
