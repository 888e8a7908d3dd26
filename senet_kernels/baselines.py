"""The SE block as users run it today in plain PyTorch: the baseline of every benchmark.

``eager_se`` is the op sequence of timm's ``SEModule`` (and torchvision's
``SqueezeExcitation``) followed by SE-ResNet's residual add and ReLU, on the tensors in their
own dtype: mean over H, W (keepdim), 1x1 conv, activation, 1x1 conv, gate, multiply, then
``+ residual`` and an in-place ReLU. It is not the package's ``reference`` backend, which
computes in float32 with extra casts (the tests' oracle, slower than what users run).

``linear_se`` is the same block with the FC layers as ``F.linear`` on the pooled [N, C]
vector: the form the torch.compile baseline compiles. Dynamo specializes a conv's channel
count, so every shape of ``eager_se`` would compile anew; the linear form compiles once per
layout with dynamic shapes (a GPU run of the main job checks that it is as fast as a static
compile of ``eager_se``).
"""

import torch.nn.functional as F

from .spec import ACTIVATIONS, GATES


def _activate(h, activation):
    if activation == "relu":
        return F.relu(h, inplace=True)
    if activation == "silu":
        return F.silu(h, inplace=True)
    if activation == "gelu":
        return F.gelu(h)
    if activation == "gelu_tanh":
        return F.gelu(h, approximate="tanh")
    if activation == "hardswish":
        return F.hardswish(h, inplace=True)
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def _gate(z, gate):
    if gate == "sigmoid":
        return z.sigmoid()
    if gate == "hardsigmoid":
        return F.hardsigmoid(z)
    raise ValueError(f"gate must be one of {GATES}, got {gate!r}")


def _conv_weight(w):
    return w if w.dim() == 4 else w[:, :, None, None]


def eager_se(x, w1, b1, w2, b2, residual=None, *, activation="relu", gate="sigmoid",
             post_relu=False):
    """``relu?(x * gate(fc2(act(fc1(mean_hw(x))))) + residual?)`` as timm computes it.

    Weights are [Cr, C] / [C, Cr] or 1x1-conv shaped; parameters in x's dtype (as in a model
    cast to that dtype)."""
    s = x.mean((2, 3), keepdim=True)
    s = _activate(F.conv2d(s, _conv_weight(w1), b1), activation)
    s = _gate(F.conv2d(s, _conv_weight(w2), b2), gate)
    y = x * s
    if residual is not None:
        y += residual  # in place, as timm's blocks add the shortcut
    if post_relu:
        y = F.relu(y, inplace=True)
    return y


def linear_se(x, w1, b1, w2, b2, residual=None, *, activation="relu", gate="sigmoid",
              post_relu=False):
    """``eager_se`` with ``F.linear`` for the FC layers (weights [Cr, C] / [C, Cr])."""
    s = _activate(F.linear(x.mean((2, 3)), _linear_weight(w1), b1), activation)
    s = _gate(F.linear(s, _linear_weight(w2), b2), gate)
    y = x * s[:, :, None, None]
    if residual is not None:
        y += residual
    if post_relu:
        y = F.relu(y, inplace=True)
    return y


def _linear_weight(w):
    return w if w.dim() == 2 else w.reshape(w.shape[0], w.shape[1])
