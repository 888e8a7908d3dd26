"""The precision the SE op computes in, shared by the reference, the ops and every backend."""

import torch


def compute_dtype(dtype):
    """The precision an SE op on ``dtype`` accumulates in: float64 for float64, else float32
    (half-precision inputs are computed in float32 and rounded once at the end)."""
    return torch.float64 if dtype == torch.float64 else torch.float32
