"""Test setup: Triton kernels run through the interpreter on CPU tensors unless a GPU is present.

TRITON_INTERPRET must be set before triton is imported, so it is set here, at collection.
On a machine with a CUDA GPU (the lent-GPU check) the Triton tests run on the GPU instead.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture
def device():
    """The device Triton-backend tests run on: the GPU when present, else the CPU (interpreted)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def poison():
    """Fill every uninitialized allocation (torch.empty & co.) with NaN while the test runs,
    so an output element a kernel fails to write shows up as NaN."""
    from cases import poisoned_allocations
    with poisoned_allocations():
        yield


@pytest.fixture(autouse=True)
def excitation_path(request):
    """Force the Triton backend's excitation path when the test is parametrized with ``path``
    (see cases.backend_device_params(paths=True)); otherwise the traffic model picks."""
    callspec = getattr(request.node, "callspec", None)
    path = callspec.params.get("path") if callspec is not None else None
    if path is None:
        yield None
        return
    from senet_kernels.triton import configs  # imports no triton
    with configs.force_excitation_path(path):
        yield path


@pytest.fixture(autouse=True)
def default_tuning(request):
    """Every test runs with configs.DEFAULT_TUNING, whatever GPU it is on and whatever
    SENET_KERNELS_TUNING says, so that what a test expects of the dispatcher does not depend
    on the machine; tests marked ``device_tuning`` see the device's own (tests/test_tuning.py
    checks the op under it)."""
    if request.node.get_closest_marker("device_tuning"):
        yield
        return
    from senet_kernels.triton import configs  # imports no triton
    with configs.force_tuning(configs.DEFAULT_TUNING):
        yield
