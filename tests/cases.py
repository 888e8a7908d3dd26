"""Shared test parametrization: every kernel backend is checked by the same tests.

Inputs and comparisons live in ``senet_kernels.testing`` (the main job's check uses them too).
"""

import contextlib
import itertools

import pytest
import torch

from senet_kernels.backends import backend_status
from senet_kernels.interpreter import interpreting
from senet_kernels.spec import ACTIVATIONS, GATES
from senet_kernels.testing import (TOLERANCES, assert_close, errors, make_inputs,  # noqa: F401
                                   reference64)

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
#: Activations checked in every combination with the other options.
FULL_MATRIX_ACTIVATIONS = ("relu", "silu")
#: activation, gate, bias, residual, post_relu: every variant of the op for the activations
#: above; each other one (it only changes the excitation's hidden vector, whatever the bias,
#: residual and tail) with each gate, once with every option on and once with none, which
#: keeps the matrices that take these (x dtypes, layouts, backends) from growing 2.5-fold.
VARIANTS = list(itertools.product(FULL_MATRIX_ACTIVATIONS, GATES, (True, False), (True, False),
                                  (True, False)))
VARIANTS += [(activation, gate, options, options, options)
             for activation in ACTIVATIONS if activation not in FULL_MATRIX_ACTIVATIONS
             for gate, options in zip(GATES, (True, False))]
KERNEL_BACKENDS = ("triton", "cpu", "cuda")


def kernel_backends(device):
    """The kernel backends (not the reference) that run on ``device`` here."""
    names = []
    for name in KERNEL_BACKENDS:
        if not backend_status(name).available:
            continue
        runs_on = {"cuda": "cuda", "cpu": "cpu", "triton": "cpu" if interpreting() else "cuda"}[name]
        if device.type != runs_on:
            continue
        names.append(name)
    return names


#: The Triton backend's two excitation paths (configs.use_batched_excitation picks per shape).
TRITON_PATHS = ("per_sample", "batched")


def backend_device_params(paths=False):
    """pytest params (backend, device) for every kernel backend that runs here.

    paths=True: (backend, device, path) instead, the Triton backend once per excitation path
    (forced by conftest's ``excitation_path`` fixture), the others with path None.
    """
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    params = []
    for d in devices:
        for b in kernel_backends(d):
            if not paths:
                params.append(pytest.param(b, d, id=f"{b}-{d.type}"))
            elif b == "triton":
                params += [pytest.param(b, d, p, id=f"{b}[{p}]-{d.type}") for p in TRITON_PATHS]
            else:
                params.append(pytest.param(b, d, None, id=f"{b}-{d.type}"))
    assert params, "no kernel backend runs here: every kernel test would be skipped"
    return params



@contextlib.contextmanager
def poisoned_allocations():
    """Fill every uninitialized allocation (torch.empty & co.) with NaN inside the block, so
    an output element a kernel fails to write shows up as NaN (conftest's ``poison`` fixture;
    the property test uses it per example)."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(False)


#: gate, bias, residual, post_relu: every variant of the single-FC form (Effective SE, w2
#: None), which has no activation.
SINGLE_FC_VARIANTS = list(itertools.product(GATES, (True, False), (True, False), (True, False)))
