"""The C++/CUDA extension senet_kernels._C: registration, fallback when it is missing.

Its kernels' numbers are checked by the shared correctness tests (backend "cpu", and backend
"cuda" when a GPU is present); here: what is registered where, and how the package behaves
without it. CUDA kernels cannot run without a GPU; their registration is checked here.
"""

import os
import subprocess
import sys

import pytest
import torch

from senet_kernels import available_backends, squeeze_excite
from senet_kernels.backends import backend_status, load_extension, resolve_backend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXT_OPS = ("senet_kernels::se_forward_ext", "senet_kernels::se_backward_ext")
has_kernel = torch._C._dispatch_has_kernel_for_dispatch_key

requires_extension = pytest.mark.skipif(load_extension()[0] is None, reason=str(load_extension()[1]))


@requires_extension
@pytest.mark.parametrize("op", EXT_OPS)
def test_cpu_kernels_registered(op):
    assert has_kernel(op, "CPU")


@requires_extension
@pytest.mark.parametrize("op", EXT_OPS)
def test_cuda_kernels_registered(op):
    """Runs nothing: checks the built library put CUDA kernels under the CUDA key.

    CI sets SENET_KERNELS_EXPECT_CUDA_BUILD=1, so a build that silently fell back to the CPU
    kernels only fails there instead of skipping."""
    module, _ = load_extension()
    if not module.compiled_with_cuda():
        if os.environ.get("SENET_KERNELS_EXPECT_CUDA_BUILD") == "1":
            pytest.fail("senet_kernels._C was built without its CUDA kernels")
        pytest.skip("senet_kernels._C was built without CUDA (CPU-only torch or no nvcc)")
    assert has_kernel(op, "CUDA")


@requires_extension
def test_auto_picks_the_cpu_extension_for_cpu_tensors():
    assert resolve_backend("auto", torch.randn(1, 2, 3, 3)) == "cpu"


def test_cuda_backend_status_explains_itself():
    """Available exactly when the extension has CUDA kernels and a GPU is visible; the reason
    says which of the two is missing, or names the GPU."""
    status = backend_status("cuda")
    module, error = load_extension()
    assert status.reason
    if module is None:
        assert not status.available and status.reason == error
    elif not module.compiled_with_cuda():
        assert not status.available and "built without CUDA kernels" in status.reason
    elif not torch.cuda.is_available():
        assert not status.available and "no CUDA GPU is visible" in status.reason
    else:
        assert status.available, status.reason
        assert torch.cuda.get_device_name() in status.reason


def test_package_works_without_the_extension():
    """With senet_kernels._C unimportable, the package imports, says why, and auto falls back."""
    code = (
        "import sys; sys.modules['senet_kernels._C'] = None\n"
        "import torch, senet_kernels as sk\n"
        "s = sk.available_backends()\n"
        "assert not s['cpu'].available and 'senet_kernels._C' in s['cpu'].reason, s['cpu']\n"
        "assert not s['cuda'].available\n"
        "x = torch.randn(2, 8, 3, 3)\n"
        "w1, w2 = torch.randn(2, 8), torch.randn(8, 2)\n"
        "y = sk.squeeze_excite(x, w1, None, w2, None)\n"
        "ref = sk.squeeze_excite_reference(x, w1, None, w2, None)\n"
        "assert torch.equal(y, ref)\n"
        "try:\n"
        "    sk.squeeze_excite(x, w1, None, w2, None, backend='cpu')\n"
        "except ValueError as e:\n"
        "    assert 'unavailable' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('forcing the missing cpu backend did not raise')\n"
        "print('ok')\n")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr


@requires_extension
def test_cpu_backend_rejects_cuda_only_requests():
    if backend_status("cpu").available:
        x = torch.randn(1, 4, 2, 2)
        with pytest.raises(ValueError, match="backend 'cuda'"):
            squeeze_excite(x, torch.randn(1, 4), None, torch.randn(4, 1), None, backend="cuda")
    assert available_backends()["cpu"].available


@requires_extension
def test_extension_uses_the_traffic_model_of_configs():
    """The CUDA kernels pick per-sample or batched excitation by configs.py's model (its limit
    is handed to the extension at import): both answer alike on a grid of shapes."""
    import itertools

    from senet_kernels.triton import configs

    module, _ = load_extension()
    for n, c, cr, hw, x_size, w_size in itertools.product(
            (1, 8, 256), (16, 512, 2048), (1, 6, 32, 128), (1, 49, 196, 3136), (2, 4), (2, 4)):
        assert module.use_batched_excitation(n, c, cr, hw, x_size, w_size) == \
            configs.use_batched_excitation(n, c, cr, hw, x_size, w_size), (n, c, cr, hw, x_size, w_size)


def test_extension_can_be_disabled():
    """SENET_KERNELS_DISABLE_EXTENSION=1: the package runs without it, saying why."""
    code = ("from senet_kernels import available_backends as a; s = a(); "
            "assert not s['cpu'].available and not s['cuda'].available, s; "
            "assert 'SENET_KERNELS_DISABLE_EXTENSION' in s['cpu'].reason, s; print('ok')")
    env = dict(os.environ, SENET_KERNELS_DISABLE_EXTENSION="1")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stdout + proc.stderr
