"""``FusedSEBlock``: the SE op as an ``nn.Module``, and its conversion from common SE modules.

The block holds its two fully connected layers as ``nn.Linear`` submodules ``fc1`` / ``fc2``
so that its parameters are ``fc1.weight [Cr, C]``, ``fc1.bias [Cr]``, ``fc2.weight [C, Cr]``
and ``fc2.bias [C]``, the names most SE implementations use. State dicts of 1x1-conv SE
modules (weights ``[Cr, C, 1, 1]`` / ``[C, Cr, 1, 1]``) load as they are.

``FusedSEBlock.from_module`` converts the SE modules of torchvision, timm, pretrainedmodels
and senet.pytorch, recognized by their exact class (``recognize.py``), never by importing
those libraries: they are optional and this package does not depend on them.
"""

import operator

import torch
from torch import nn

from .backends import check_backend_name
from .functional import squeeze_excite
from .recognize import as_linear_weight, read_se_module
from .spec import check_activation, check_gate, check_post_relu


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
        self.post_relu = check_post_relu(post_relu)
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
                state_dict[key] = as_linear_weight(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    @classmethod
    def from_module(cls, module, *, backend="auto", post_relu=False):
        """A ``FusedSEBlock`` computing what ``module`` computes, with a copy of its weights.

        Recognized modules, by their exact class (``recognize.KNOWN_SE_CLASSES``; subclasses
        and look-alikes are refused, since their forward may compute something else):

        * torchvision ``ops.SqueezeExcitation``: ``avgpool``, ``fc1``, ``activation``, ``fc2``,
          ``scale_activation``;
        * timm ``layers.SEModule``: ``fc1``, ``bn`` (must be ``nn.Identity``), ``act``,
          ``fc2``, ``gate``, and ``add_maxpool`` False;
        * timm ``models.senet.SEModule`` (legacy) and pretrainedmodels' ``SEModule``: ``fc1``,
          ``relu``, ``fc2``, ``sigmoid`` (and the latter's ``avg_pool``);
        * timm EfficientNet / MobileNetV3 ``SqueezeExcite``: ``conv_reduce``, ``act1``,
          ``conv_expand``, ``gate``;
        * senet.pytorch ``SELayer`` (module ``senet.se_module``): ``avg_pool`` and
          ``fc = Sequential(Linear, act, Linear, gate)``;
        * any class given to ``senet_kernels.register_se_class`` (e.g. a vendored copy of
          SELayer), read by the attribute layout of the above it has.

        An instance whose ``forward`` was replaced, or that has forward hooks, is refused.

        The fully connected layers must be 1x1 ``nn.Conv2d`` (``nn.Linear`` for SELayer)
        without stride, dilation, padding or groups; the activation ``nn.ReLU`` or ``nn.SiLU``
        (or timm's Swish); the gate ``nn.Sigmoid`` or ``nn.Hardsigmoid`` (or timm's Sigmoid,
        HardSigmoid). The parameters keep the source's dtype and device; the block gets its
        training mode. ``post_relu`` and ``backend`` are the new block's (the source modules
        have no residual or ReLU tail).

        Raises:
            TypeError: ``module``'s class is not a recognized SE class, or a layer of it
                has an unsupported type.
            ValueError: a recognized module in a configuration the fused op does not compute
                (e.g. a GELU activation, a max-pool squeeze, a norm layer, a 3x3 conv).
        """
        spec = read_se_module(module)
        w1, b1, w2, b2 = spec.w1, spec.b1, spec.w2, spec.b2
        c, cr = w1.shape[1], w1.shape[0]
        block = cls(c, rd_channels=cr, bias=b1 is not None, activation=spec.activation,
                    gate=spec.gate, post_relu=post_relu, backend=backend, device=w1.device,
                    dtype=w1.dtype)
        with torch.no_grad():
            block.fc1.weight.copy_(w1)
            block.fc2.weight.copy_(w2)
            if b1 is not None:
                block.fc1.bias.copy_(b1)
                block.fc2.bias.copy_(b2)
        return block.train(module.training)
