"""Which dense memory layout a kernel works in, shared by every backend and the fake kernels.

The kernels index dense NCHW (``channels_last=False``) or dense NHWC (``channels_last=True``)
tensors. Dense inputs in either layout are used as they are; anything else (a strided slice, a
permuted view) is copied once into the dense layout closest to it.
"""

import torch


def is_channels_last(x):
    """True when x should be processed as NHWC: dense channels_last, or C its fastest axis.

    A tensor that is both NCHW- and NHWC-contiguous (C == 1 or H == W == 1) counts as NCHW.
    """
    if x.is_contiguous():
        return False
    if x.is_contiguous(memory_format=torch.channels_last):
        return True
    return x.stride(1) == 1


def to_layout(t, channels_last):
    """``t`` as a dense tensor in the given layout; no copy when it already is one."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return t.contiguous(memory_format=fmt)
