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

``eager_bn_se`` / ``linear_bn_se`` put SE-ResNet's bn3 in front of them: what
``nn.BatchNorm2d``'s forward runs in training, then the SE block as above (the baseline of
the fused BatchNorm + SE op, ``bn_squeeze_excite``).
"""

import torch.nn.functional as F

from .spec import ACTIVATIONS, GATES, LEAKY_RELU_SLOPE


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
    if activation == "leaky_relu":
        return F.leaky_relu(h, LEAKY_RELU_SLOPE, inplace=True)
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


def batch_norm_train(y, bn_weight, bn_bias, running_mean, running_var, num_batches_tracked=None,
                     *, momentum=0.1, eps=1e-5):
    """What ``nn.BatchNorm2d`` (affine, tracking running statistics) runs in training mode:
    ``num_batches_tracked += 1``, then ``F.batch_norm`` with the batch's statistics, which
    updates ``running_mean`` / ``running_var`` in place. The module call is left out so that
    one compiled function serves every shape (dynamo guards on a module argument)."""
    if num_batches_tracked is not None:
        num_batches_tracked.add_(1)
    return F.batch_norm(y, running_mean, running_var, bn_weight, bn_bias, True, momentum, eps)


def eager_bn_se(y, w1, b1, w2, b2, residual, bn_weight, bn_bias, running_mean, running_var,
                num_batches_tracked=None, *, activation="relu", gate="sigmoid", post_relu=False):
    """``eager_se(batch_norm_train(y), ...)``: SE-ResNet's bn3 + SE + add + ReLU in eager
    PyTorch, the BatchNorm in training mode (batch statistics, running statistics updated)."""
    x = batch_norm_train(y, bn_weight, bn_bias, running_mean, running_var, num_batches_tracked)
    return eager_se(x, w1, b1, w2, b2, residual, activation=activation, gate=gate,
                    post_relu=post_relu)


def linear_bn_se(y, w1, b1, w2, b2, residual, bn_weight, bn_bias, running_mean, running_var,
                 num_batches_tracked=None, *, activation="relu", gate="sigmoid", post_relu=False):
    """``eager_bn_se`` with the SE block's linear form (``linear_se``): what torch.compile
    compiles with dynamic shapes."""
    x = batch_norm_train(y, bn_weight, bn_bias, running_mean, running_var, num_batches_tracked)
    return linear_se(x, w1, b1, w2, b2, residual, activation=activation, gate=gate,
                     post_relu=post_relu)
