"""Argument checks of the public SE op and of ``bn_squeeze_excite``: a clear TypeError /
ValueError naming the argument.

Backends may assume what these checks establish; they never see a bad argument.
"""

import numbers

import torch

from .bn_reference import check_bn_args, uses_batch_stats
from .spec import check_activation, check_gate, check_post_relu

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_tensor(name, t):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")


def _as_matrix(name, w, rows, cols):
    """Accept an nn.Linear weight [rows, cols] or a 1x1-conv weight [rows, cols, 1, 1]
    (rows None: any number of rows, called Cr)."""
    rows_name = "Cr" if rows is None else rows
    if w.dim() == 4 and w.shape[2:] == (1, 1):
        w = w.reshape(w.shape[0], w.shape[1])
    if w.dim() != 2:
        raise ValueError(f"{name} must have shape [{rows_name}, {cols}] (or "
                         f"[{rows_name}, {cols}, 1, 1]), got {tuple(w.shape)}")
    if (rows is not None and w.shape[0] != rows) or w.shape[1] != cols:
        raise ValueError(f"{name} must have shape [{rows_name}, {cols}], got {tuple(w.shape)}")
    return w


def _check_vector(name, b, length):
    if b is None:
        return None
    _check_tensor(name, b)
    if b.dim() != 1 or b.shape[0] != length:
        raise ValueError(f"{name} must have shape [{length}] or be None, got {tuple(b.shape)}")
    return b


#: Argument signatures (see _signature) that passed the checks; cleared when it grows past
#: MAX_SIGNATURES. The checks depend on nothing else, so a known signature skips them.
_valid_signatures = set()
MAX_SIGNATURES = 4096


def _signature(t):
    return None if t is None else (type(t), t.shape, t.dtype, t.device)


def check_squeeze_excite_args(x, w1, b1, w2, b2, residual, activation, gate, post_relu):
    """Validate the arguments of ``squeeze_excite``; return ``(w1, w2)`` as 2-D matrices
    (w2 None stays None: the single-FC form).

    The full checks run once per signature (types, shapes, dtypes, devices and the option
    strings); a signature seen before costs a tuple lookup.
    """
    try:
        key = (type(x), x.shape, x.dtype, x.device, type(w1), w1.shape, w1.dtype, w1.device,
               _signature(w2), _signature(b1), _signature(b2),
               _signature(residual), activation, gate, type(post_relu))
        known = key in _valid_signatures
    except (AttributeError, TypeError):  # not tensors, or unhashable options: full checks
        key, known = None, False
    if known:
        return _as_matrix_view(w1), None if w2 is None else _as_matrix_view(w2)
    w1, w2 = _check_squeeze_excite_args(x, w1, b1, w2, b2, residual, activation, gate,
                                        post_relu)
    if key is not None:
        if len(_valid_signatures) >= MAX_SIGNATURES:
            _valid_signatures.clear()
        _valid_signatures.add(key)
    return w1, w2


def _as_matrix_view(w):
    return w.reshape(w.shape[0], w.shape[1]) if w.dim() == 4 else w


def _check_squeeze_excite_args(x, w1, b1, w2, b2, residual, activation, gate, post_relu,
                               x_name="x"):
    """The checks themselves (see check_squeeze_excite_args).

    Rules: x is [N, C, H, W] with C, H, W >= 1; w1 is [Cr, C] and w2 [C, Cr] (1x1-conv shaped
    weights [.., .., 1, 1] are accepted as views); biases are [Cr] / [C] or None; w2 None is
    the single-FC form (Effective SE): then w1 must be [C, C] and b2 None; all parameters
    share one dtype, which is x's dtype or float32 (fp32 master weights with half activations);
    residual matches x in shape, dtype and device; everything lives on x's device. ``x_name``:
    what the messages call x (the fused BatchNorm + SE op calls it y).
    """
    check_activation(activation)
    check_gate(gate)
    check_post_relu(post_relu)
    _check_tensor(x_name, x)
    if x.dim() != 4:
        raise ValueError(f"{x_name} must be 4-D [N, C, H, W], got {x.dim()}-D with shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    if c == 0 or h == 0 or w == 0:
        raise ValueError(f"{x_name} must have C, H, W >= 1, got shape {tuple(x.shape)}")
    _check_tensor("w1", w1)
    if w2 is None:  # single FC: gate(W1 pooled + b1), W1 maps C -> C
        if b2 is not None:
            raise ValueError("b2 must be None when w2 is None (the single-FC form has one "
                             "bias, b1)")
        w1 = _as_matrix("w1 (with w2 None, the single FC layer)", w1, c, c)
        cr = c
    else:
        _check_tensor("w2", w2)
        w1 = _as_matrix("w1", w1, None, c)
        cr = w1.shape[0]
        if cr == 0:
            raise ValueError("w1 must have at least one row (Cr >= 1)")
        w2 = _as_matrix("w2", w2, c, cr)
    _check_vector("b1", b1, cr)
    _check_vector("b2", b2, c)
    params = {"w1": w1, "w2": w2, "b1": b1, "b2": b2}
    params = {k: v for k, v in params.items() if v is not None}
    for name, p in params.items():
        if p.device != x.device:
            raise ValueError(f"{name} is on {p.device} but {x_name} is on {x.device}")
        if p.dtype != w1.dtype:
            raise TypeError(f"{name} has dtype {p.dtype} but w1 has {w1.dtype}: "
                            "all SE parameters must share one dtype")
    if w1.dtype not in (x.dtype, torch.float32):
        raise TypeError(f"the SE parameters have dtype {w1.dtype} but {x_name} has {x.dtype}: "
                        f"parameters must be {x_name}'s dtype or float32")
    if residual is not None:
        if not isinstance(residual, torch.Tensor):
            raise TypeError(f"residual must be a torch.Tensor or None, got {type(residual).__name__}")
        if residual.shape != x.shape:
            raise ValueError(f"residual must have {x_name}'s shape {tuple(x.shape)}, got {tuple(residual.shape)}")
        if residual.dtype != x.dtype:
            raise TypeError(f"residual has dtype {residual.dtype} but {x_name} has {x.dtype}")
        if residual.device != x.device:
            raise ValueError(f"residual is on {residual.device} but {x_name} is on {x.device}")
    return w1, w2


# ---------------------------------------------------------------------------------------------
# BatchNorm absorbed into the SE op

def _check_bn_vector(name, v, y):
    if v is None:
        return
    _check_tensor(name, v)
    if v.device != y.device:
        raise ValueError(f"{name} is on {v.device} but y is on {y.device}")
    if v.dtype not in (y.dtype, torch.float32):
        raise TypeError(f"{name} has dtype {v.dtype} but y has {y.dtype}: "
                        "it must be y's dtype or float32")


def check_bn_squeeze_excite_args(y, bn_weight, bn_bias, running_mean, running_var, w1, b1, w2,
                                 b2, residual, training, momentum, eps, num_batches_tracked,
                                 activation, gate, post_relu):
    """Validate the arguments of ``bn_squeeze_excite``; return ``(w1, w2)`` as 2-D matrices.

    The SE arguments as ``squeeze_excite``'s (y in x's place), except that w2 is required
    (ValueError for None: no single-FC form here); the BatchNorm vectors [C] of
    y's dtype or float32 on y's device; N >= 1; training a bool, momentum a number or None,
    eps a number, num_batches_tracked an int64 scalar tensor or None; then
    ``bn_reference.check_bn_args`` (F.batch_norm's rules). Runs in full on every call.
    """
    if w2 is None:
        raise ValueError("bn_squeeze_excite needs w2: the fused BatchNorm + SE op computes the "
                         "two-FC SE only (squeeze_excite takes w2=None, the single-FC form)")
    w1, w2 = _check_squeeze_excite_args(y, w1, b1, w2, b2, residual, activation, gate,
                                        post_relu, x_name="y")
    if y.shape[0] == 0:
        raise ValueError(f"y must have N >= 1, got shape {tuple(y.shape)}")
    if not isinstance(training, bool):
        raise TypeError(f"training must be a bool, got {type(training).__name__}")
    if momentum is not None and (not isinstance(momentum, numbers.Real)
                                 or isinstance(momentum, bool)):
        raise TypeError(f"momentum must be a float or None, got {type(momentum).__name__}")
    if not isinstance(eps, numbers.Real) or isinstance(eps, bool):
        raise TypeError(f"eps must be a float, got {type(eps).__name__}")
    for name, v in (("bn_weight", bn_weight), ("bn_bias", bn_bias),
                    ("running_mean", running_mean), ("running_var", running_var)):
        _check_bn_vector(name, v, y)
    if num_batches_tracked is not None:
        if not isinstance(num_batches_tracked, torch.Tensor):
            raise TypeError("num_batches_tracked must be a torch.Tensor or None, got "
                            f"{type(num_batches_tracked).__name__}")
        if num_batches_tracked.dtype != torch.int64 or num_batches_tracked.dim() != 0:
            raise TypeError("num_batches_tracked must be an int64 scalar tensor, got "
                            f"{num_batches_tracked.dtype} of shape {tuple(num_batches_tracked.shape)}")
    check_bn_args(y, bn_weight, bn_bias, running_mean, running_var,
                  uses_batch_stats(training, running_mean), eps)
    return w1, w2
