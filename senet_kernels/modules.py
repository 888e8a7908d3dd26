"""``FusedSEBlock``: the SE op as an ``nn.Module``, and its conversion from common SE modules.

A block built by its constructor holds its two fully connected layers as ``nn.Linear``
submodules ``fc1`` / ``fc2``: parameters ``fc1.weight [Cr, C]``, ``fc1.bias [Cr]``,
``fc2.weight [C, Cr]`` and ``fc2.bias [C]``, the names most SE implementations use. State
dicts of 1x1-conv SE modules (weights ``[Cr, C, 1, 1]`` / ``[C, Cr, 1, 1]``) load as they are.

``FusedSEBlock(channels, single_fc=True)`` is the Effective SE form: one layer ``fc1``
(C -> C) and the gate, no activation and no ``fc2``.

``FusedSEBlock.from_module`` converts the SE modules of torchvision, timm (Effective SE
included), pretrainedmodels and senet.pytorch, recognized by their exact class (``recognize.py``), never by importing
those libraries: they are optional and this package does not depend on them. The converted
block takes over the source's own layers under the source's names (timm's ``conv_reduce``,
senet.pytorch's ``fc.0``, ...), so its parameters are the source's objects (frozen ones stay
frozen, optimizers keep working) and its ``state_dict`` is the source's, keys and shapes: a
checkpoint of a converted model loads into the unconverted one, and back.
"""

import operator

import torch
from torch import nn

from .backends import check_backend_name
from .functional import squeeze_excite
from .recognize import as_linear_weight, read_se_module
from .reference import activate, apply_gate
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

    ``y = relu?(x * gate(fc2(act(fc1(mean_hw(x))))) + residual?)``, or with ``single_fc``
    (Effective SE) ``y = relu?(x * gate(fc1(mean_hw(x))) + residual?)``.

    Args:
        channels: C, the channels of the input.
        reduction: Cr = max(1, channels // reduction) unless ``rd_channels`` is given.
        rd_channels: Cr, the width of the bottleneck, overriding ``reduction``.
        bias: whether fc1 and fc2 have biases (both or neither).
        single_fc: the Effective SE form: one layer ``fc1`` C -> C, no ``fc2`` (then
            ``reduction`` and ``rd_channels`` are not used, and ``rd_channels`` must be None;
            ``activation`` is not applied and is recorded as None).
        activation: "relu", "silu", "gelu" (erf form), "gelu_tanh", "hardswish" or
            "leaky_relu" (slope 0.01), applied after fc1.
        gate: "sigmoid" or "hardsigmoid", applied after fc2.
        post_relu: apply a ReLU after the rescale (and the residual add), as in SE-ResNet.
        backend: "auto", "triton", "cuda", "cpu" or "reference". Whether a backend can run
            depends on the input (device, installed extensions), so it is checked in forward.
        device, dtype: where and in which dtype the parameters are created.

    Parameters: ``fc1.weight [Cr, C]``, ``fc1.bias [Cr]``, ``fc2.weight [C, Cr]``,
    ``fc2.bias [C]``, initialized as ``nn.Linear`` does (single FC: ``fc1.weight [C, C]`` and
    ``fc1.bias [C]`` only). ``load_state_dict`` also accepts
    1x1-conv shaped weights ``[Cr, C, 1, 1]`` / ``[C, Cr, 1, 1]``. A block made by
    ``from_module`` has the source's layers and parameter names instead (``fc_layers()``
    returns the two layers either way).

    Forward: ``block(x, residual=None)`` with x [N, C, H, W] (NCHW or channels_last) returns a
    tensor like x; see ``squeeze_excite`` for dtypes, layouts and the errors it raises.

    Raises:
        TypeError: ``channels`` / ``reduction`` / ``rd_channels`` not an int (a bool
            included), ``activation`` / ``gate`` not a str, ``post_relu`` not a bool.
        ValueError: a size < 1, an unknown activation, gate or backend name, ``rd_channels``
            given with ``single_fc``.
    """

    def __init__(self, channels, reduction=16, *, rd_channels=None, bias=True, activation="relu",
                 gate="sigmoid", post_relu=False, backend="auto", single_fc=False, device=None,
                 dtype=None):
        super().__init__()
        channels = _positive_int("channels", channels)
        reduction = _positive_int("reduction", reduction)
        if not isinstance(single_fc, bool):
            raise TypeError(f"single_fc must be a bool, got {type(single_fc).__name__}")
        if single_fc:
            if rd_channels is not None:
                raise ValueError("rd_channels must be None with single_fc=True (its one layer "
                                 "maps C -> C)")
            check_activation(activation)  # a bad name is still an error, though unused
            rd_channels, activation = channels, None
        elif rd_channels is None:
            rd_channels = max(1, channels // reduction)
        else:
            rd_channels = _positive_int("rd_channels", rd_channels)
        self._set_options(channels, rd_channels, activation, gate, post_relu, backend)
        factory = {"device": device, "dtype": dtype}
        self.fc1 = nn.Linear(channels, rd_channels, bias=bias, **factory)
        if single_fc:
            self._fc_paths = (("fc1",),)
        else:
            self.fc2 = nn.Linear(rd_channels, channels, bias=bias, **factory)
            self._fc_paths = (("fc1",), ("fc2",))
        self._norm_path = None

    def _set_options(self, channels, rd_channels, activation, gate, post_relu, backend):
        """activation None: the single-FC form (no activation; the op is passed "relu", which
        it does not apply)."""
        self.channels = channels
        self.rd_channels = rd_channels
        self.activation = None if activation is None else check_activation(activation)
        self._op_activation = activation or "relu"
        self.gate = check_gate(gate)
        self.post_relu = check_post_relu(post_relu)
        self.backend = check_backend_name(backend)

    @property
    def single_fc(self):
        """Whether this is the single-FC form (Effective SE: one layer C -> C, no fc2)."""
        return len(self._fc_paths) == 1

    def fc_layers(self):
        """The fully connected layers, (fc1: C -> Cr, fc2: Cr -> C), or (fc1,) for the
        single-FC form: ``nn.Linear`` for a constructed block; for a converted one the
        source's own layers (e.g. 1x1 ``nn.Conv2d``, whose weights are ``[out, in, 1, 1]``)."""
        return tuple(self._layer(path) for path in self._fc_paths)

    def _layer(self, path):
        module = self
        for name in path:  # plain dict lookups: this runs on every forward
            module = module._modules[name]
        return module

    def forward(self, x, residual=None):
        paths = self._fc_paths
        fc1 = self._layer(paths[0])
        w1, b1 = fc1.weight, fc1.bias
        if len(paths) == 1:  # single FC (Effective SE)
            return squeeze_excite(x, w1, b1, None, None, residual,
                                  activation=self._op_activation, gate=self.gate,
                                  post_relu=self.post_relu, backend=self.backend)
        fc2 = self._layer(paths[1])
        if self._norm_path is not None:
            norm = self._layer(self._norm_path)
            if norm.training or norm.running_mean is None:
                return self._forward_with_batch_statistics(x, residual, fc1, norm, fc2)
            w1, b1 = fold_batch_norm(w1, b1, norm)
        return squeeze_excite(x, w1, b1, fc2.weight, fc2.bias, residual,
                              activation=self._op_activation, gate=self.gate,
                              post_relu=self.post_relu, backend=self.backend)

    def _forward_with_batch_statistics(self, x, residual, fc1, norm, fc2):
        """The source's own layers, eagerly: a BatchNorm on fc1's output that normalizes with
        the batch's statistics ([N, Cr], training mode) couples the samples' excitations,
        which the fused op computes independently. timm's SEModule forward, in its order."""
        pooled = x.mean((2, 3), keepdim=True)
        hidden = activate(norm(fc1(pooled)), self.activation)
        y = x * apply_gate(fc2(hidden), self.gate)
        if residual is not None:
            y = y + residual
        return torch.relu(y) if self.post_relu else y

    def extra_repr(self):
        if self.single_fc:
            return (f"channels={self.channels}, single_fc=True, gate={self.gate!r}, "
                    f"post_relu={self.post_relu}, backend={self.backend!r}")
        return (f"channels={self.channels}, rd_channels={self.rd_channels}, "
                f"activation={self.activation!r}, gate={self.gate!r}, "
                f"post_relu={self.post_relu}, backend={self.backend!r}")

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # Edit the dict being loaded (load_state_dict's own copy, from which the submodules'
        # entries are taken next) and let nn.Module do the rest, so that shape mismatches and
        # missing / unexpected keys are reported as usual:
        # - a weight saved as [out, in] or [out, in, 1, 1] takes this block's layer's shape
        #   (1x1-conv checkpoints load into nn.Linear layers, and the other way round);
        # - a converted block whose layers are not named fc1 / fc2 (timm's conv_reduce /
        #   conv_expand, senet.pytorch's fc.0 / fc.2) also loads checkpoints that name them
        #   fc1 / fc2, as converted models did before they kept the source's names.
        for index, path in enumerate(self._fc_paths):
            layer = self._layer(path)
            own = prefix + ".".join(path) + "."
            legacy = f"{prefix}fc{index + 1}."
            if own != legacy and own + "weight" not in state_dict:
                for name in ("weight", "bias"):
                    if legacy + name in state_dict:
                        state_dict[own + name] = state_dict.pop(legacy + name)
            key = own + "weight"
            if key in state_dict:
                state_dict[key] = _as_shape_of(state_dict[key], layer.weight)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    @classmethod
    def from_module(cls, module, *, backend="auto", post_relu=False):
        """A ``FusedSEBlock`` computing what ``module`` computes, built from its own layers.

        The block holds ``module``'s fully connected layers (the same objects, under the
        same attribute names), so its parameters are ``module``'s: their ``requires_grad``,
        device and dtype carry over, an optimizer built on them keeps working, and
        ``block.state_dict()`` has ``module``'s keys and shapes (``block.load_state_dict``
        also takes the ``fc1`` / ``fc2`` keys and ``[out, in]`` shapes of constructed blocks).
        The stateless layers (activation, gate, pooling) are not kept: the op computes them.

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
        * timm ``layers.EffectiveSEModule`` (ese_vovnet, rdnet, cspnext): ``fc`` (1x1 conv
          C -> C) and ``gate``, and ``add_maxpool`` False; timm ``models.hgnet.EseModule``:
          ``conv`` (1x1 conv C -> C) and ``sigmoid``. These become single-FC blocks
          (``single_fc`` True, ``activation`` None);
        * any class given to ``senet_kernels.register_se_class`` (e.g. a vendored copy of
          SELayer), read by the attribute layout of the above it has.

        An instance whose ``forward`` was replaced, or that has forward or backward hooks, is
        refused, and so is one with such a layer (the fused op never calls the layers).

        The fully connected layers must be 1x1 ``nn.Conv2d`` (``nn.Linear`` for SELayer)
        without stride, dilation, padding or groups; the activation ``nn.ReLU`` or ``nn.SiLU``
        (or timm's Swish); the gate ``nn.Sigmoid`` or ``nn.Hardsigmoid`` (or timm's Sigmoid,
        HardSigmoid). The block gets the source's training flag (the shared layers keep their
        own). ``post_relu`` and ``backend`` are the new block's (the source modules
        have no residual or ReLU tail).

        Raises:
            TypeError: ``module``'s class is not a recognized SE class, or a layer of it
                has an unsupported type.
            ValueError: a recognized module in a configuration the fused op does not compute
                (e.g. a LeakyReLU activation, a max-pool squeeze, a norm layer, a 3x3 conv).
        """
        spec = read_se_module(module)
        block = cls.__new__(cls)
        nn.Module.__init__(block)
        c, cr = spec.w1.shape[1], spec.w1.shape[0]
        block._set_options(c, cr, spec.activation, spec.gate, post_relu, backend)
        # The source's layers themselves, under their own names: the parameters stay the
        # same objects (requires_grad, device, dtype, optimizer state all carry over) and
        # the state_dict keeps the source's keys and shapes. senet.pytorch's fc is the
        # Sequential (Linear, act, Linear, gate), kept whole for its keys fc.0 / fc.2.
        fc_paths = tuple(tuple(path.split(".")) for path in (spec.fc1_path, spec.fc2_path)
                         if path is not None)  # one path for a single-FC module
        for name in dict.fromkeys(path[0] for path in fc_paths):
            block.add_module(name, module._modules[name])
        block._fc_paths = fc_paths
        block._norm_path = None
        if spec.norm_path is not None:  # rexnet's SE: fc1 -> BatchNorm2d -> act -> fc2
            block._norm_path = tuple(spec.norm_path.split("."))
            block.add_module(spec.norm_path, module._modules[spec.norm_path])
        block.training = module.training  # the flag only: the shared layers keep theirs
        return block


def fold_batch_norm(w1, b1, norm):
    """(weight [Cr, C], bias [Cr]) of fc1 followed by ``norm`` with its running statistics
    (an eval-mode BatchNorm on fc1's output), as one linear layer: exact up to rounding, and
    differentiable in fc1's and the norm's parameters. A few [Cr, C] elementwise ops."""
    scale = torch.rsqrt(norm.running_var + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight
    shift = -norm.running_mean * scale
    if norm.bias is not None:
        shift = shift + norm.bias
    bias = shift if b1 is None else b1 * scale + shift
    return as_linear_weight(w1) * scale[:, None].to(w1.dtype), bias.to(w1.dtype)


def _as_shape_of(weight, target):
    """``weight`` reshaped to ``target``'s shape when the two are the same [out, in] matrix
    (one of them 1x1-conv shaped), else unchanged (a real mismatch is reported by loading)."""
    if (isinstance(weight, torch.Tensor) and weight.shape != target.shape
            and as_linear_weight(weight).shape == as_linear_weight(target).shape):
        return weight.reshape(target.shape)
    return weight
