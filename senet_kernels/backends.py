"""Which backends work here, why the others do not, and what ``backend="auto"`` picks."""

import dataclasses
import importlib
import os
from dataclasses import dataclass

import torch

from .func_transforms import transformable_function
from .interpreter import interpreting
from .ops import BackendOps, define_backend_ops, eager_function

BACKENDS = ("triton", "cuda", "cpu", "reference")
#: The values of every ``backend`` argument.
BACKEND_NAMES = ("auto",) + BACKENDS


def check_backend_name(backend):
    """A valid ``backend`` argument: "auto" or a backend's name (whether it can run here is
    another question, answered per input by ``resolve_backend``)."""
    if not isinstance(backend, str) or backend not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {BACKEND_NAMES}, got {backend!r}")
    return backend


@dataclass(frozen=True)
class BackendStatus:
    """Whether a backend can run here (``available``) and why or why not (``reason``: a
    sentence for people, e.g. "no CUDA GPU is visible (set TRITON_INTERPRET=1 to interpret on
    the CPU)"), and which ops it has fused kernels for (``fuses``, see ``FUSED_OPS``).
    Returned by ``available_backends``; frozen."""

    available: bool
    reason: str
    fuses: tuple = ()


#: The ops each backend computes with fused kernels of its own: "squeeze_excite" (the SE
#: block, with its residual add and ReLU) and "bn_squeeze_excite" (the BatchNorm in front of
#: it absorbed). The CUDA extension has no BatchNorm + SE kernels (a converted model runs the
#: BatchNorm module, then its fused SE op); "reference" is PyTorch ops, nothing fused.
#: (Triton's BatchNorm + SE kernels run on GPUs where asked for until a GPU run has verified
#: them: bn_functional.TRITON_BN_BY_DEFAULT.)
FUSED_OPS = {"triton": ("squeeze_excite", "bn_squeeze_excite"),
             "cuda": ("squeeze_excite",),
             "cpu": ("squeeze_excite", "bn_squeeze_excite"),
             "reference": ()}


_status = {}


def _triton_status():
    try:
        importlib.import_module("triton")
    except Exception as e:  # ImportError, or a broken install
        return BackendStatus(False, f"triton cannot be imported: {e}")
    if interpreting():
        from .triton.interpreter_check import interpreter_problem
        problem = interpreter_problem()
        if problem is not None:
            return BackendStatus(False, f"TRITON_INTERPRET=1, but {problem}")
        return BackendStatus(True, "TRITON_INTERPRET=1: Triton kernels run on CPU tensors, interpreted")
    if not torch.cuda.is_available():
        return BackendStatus(False, "no CUDA GPU is visible (set TRITON_INTERPRET=1 to interpret on the CPU)")
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        return BackendStatus(False, f"needs a GPU of compute capability >= 8.0, found {major}.{minor}")
    return BackendStatus(True, f"CUDA GPU {torch.cuda.get_device_name()} (sm_{major}{minor})")


_extension = {}


def load_extension():
    """(module or None, why not): senet_kernels._C, imported once.

    SENET_KERNELS_DISABLE_EXTENSION=1 leaves it unloaded (the "cpu" and "cuda" backends then
    report unavailable): for runs that must not depend on it, e.g. while it is being built."""
    if not _extension and os.environ.get("SENET_KERNELS_DISABLE_EXTENSION", "0") not in ("", "0"):
        _extension["module"] = None
        _extension["error"] = "the C++ extension is disabled (SENET_KERNELS_DISABLE_EXTENSION=1)"
    if not _extension:
        try:
            module = importlib.import_module("senet_kernels._C")
            from .triton.configs import WEIGHT_TRAFFIC_LIMIT  # one traffic model for both
            module.set_weight_traffic_limit(WEIGHT_TRAFFIC_LIMIT)
            _extension["module"] = module
            _extension["error"] = None
        except Exception as e:  # ImportError, or an undefined symbol of a mismatched torch
            _extension["module"] = None
            _extension["error"] = (f"the C++ extension senet_kernels._C is not built or does not "
                                   f"load ({type(e).__name__}: {e}); build it with "
                                   "`pip install --no-build-isolation -e .`")
    return _extension["module"], _extension["error"]


def _cpu_status():
    module, error = load_extension()
    if module is None:
        return BackendStatus(False, error)
    return BackendStatus(True, "C++ CPU kernels of senet_kernels._C")


def _cuda_status():
    module, error = load_extension()
    if module is None:
        return BackendStatus(False, error)
    if not module.compiled_with_cuda():
        return BackendStatus(False, "senet_kernels._C was built without CUDA kernels "
                                    "(no CUDA toolkit at build time, or SENET_KERNELS_CPU_ONLY=1)")
    if not torch.cuda.is_available():
        return BackendStatus(False, "senet_kernels._C has CUDA kernels, but no CUDA GPU is visible")
    return BackendStatus(True, f"CUDA kernels of senet_kernels._C on {torch.cuda.get_device_name()}")


def _reference_status():
    return BackendStatus(True, "plain PyTorch (eager), always available")


_PROBES = {
    "triton": _triton_status,
    "cuda": _cuda_status,
    "cpu": _cpu_status,
    "reference": _reference_status,
}


@torch.compiler.assume_constant_result
def backend_status(name):
    """BackendStatus of one backend, probed once (a constant to torch.compile)."""
    if name not in _status:
        # A first call may come from inside a torch.func transform, which would wrap the
        # probes' own tensors (Triton's interpreter cannot read them): probe outside it.
        with torch._C._DisableFuncTorch():
            _status[name] = dataclasses.replace(_PROBES[name](), fuses=FUSED_OPS[name])
    return _status[name]


def available_backends():
    """Which backends can run in this process, and why the others cannot.

    Takes no arguments. Returns a dict ``{name: BackendStatus(available, reason, fuses)}``
    with the keys "triton", "cuda", "cpu" and "reference", in that order; ``fuses`` names the
    ops the backend has fused kernels for (``FUSED_OPS``). "triton" needs a CUDA GPU of
    compute capability >= 8.0, or ``TRITON_INTERPRET=1`` (CPU tensors, interpreted); "cuda" and
    "cpu" need the C++ extension ``senet_kernels._C`` (built by ``pip install -e .``; "cuda"
    also its CUDA kernels and a GPU); "reference" is always available. Each backend is probed
    once per process (importing Triton or loading the extension), later calls are cheap.
    A backend that cannot be imported or loaded is reported, not raised: ``available=False``
    with the error as its reason.
    Any name here, or "auto", is a valid ``backend`` argument of ``squeeze_excite``,
    ``FusedSEBlock`` and the models; passing an unavailable one raises ``ValueError`` then,
    with this reason.
    """
    return {name: backend_status(name) for name in BACKENDS}


_resolved = {}


def resolve_backend(backend, x):
    """The backend that runs an op on x: ``backend`` itself when forced, else auto's choice.

    Successful answers are remembered per (backend, device type, interpreting): availability
    is probed once per process anyway, and this sits on every call's path.
    """
    if not isinstance(backend, str):  # unhashable (a list) must not reach the cache
        check_backend_name(backend)
    key = (backend, x.device.type, interpreting())
    name = _resolved.get(key)
    if name is None:
        name = _resolved[key] = _resolve_backend(backend, x)
    return name


def _resolve_backend(backend, x):
    check_backend_name(backend)
    if backend == "auto":
        if x.is_cuda:
            order = ("triton", "cuda", "reference")
        else:
            order = ("cpu", "reference")
        return next(name for name in order if backend_status(name).available)
    status = backend_status(backend)
    if not status.available:
        raise ValueError(f"backend {backend!r} is unavailable here: {status.reason}")
    if backend == "cuda" and not x.is_cuda:
        raise ValueError(f"backend 'cuda' needs CUDA tensors, x is on {x.device}")
    if backend == "cpu" and x.device.type != "cpu":
        raise ValueError(f"backend 'cpu' needs CPU tensors, x is on {x.device}")
    if backend == "triton" and not x.is_cuda and not interpreting():
        raise ValueError(f"backend 'triton' needs CUDA tensors (or TRITON_INTERPRET=1), x is on {x.device}")
    return backend


# Kernel backends' ops are defined at import, so torch.compile never traces their definition.
# The Triton kernels (and triton itself) are imported on the first call, not here.

_se_op = None


def _triton_se_op():
    global _se_op
    if _se_op is None:
        from .triton import se_op
        _se_op = se_op
    return _se_op


# The custom ops' kernels allocate their scratch per call; the eager fast path reuses the
# plans' scratch buffers (triton/se_op.py says why the two differ).

def _triton_forward(*args):
    return _triton_se_op().se_forward(*args)


def _triton_backward(*args):
    return _triton_se_op().se_backward(*args)


def _triton_eager_forward(*args):
    return _triton_se_op().se_forward(*args, reuse_scratch=True)


def _triton_eager_backward(*args):
    return _triton_se_op().se_backward(*args, reuse_scratch=True)


def _triton_inference(*args):
    return _triton_se_op().se_inference(*args)


def _below_autograd(op):
    """Call a custom op straight at its device kernel (C++), past its Python autograd."""
    def call(*args):
        with torch._C._AutoDispatchBelowAutograd():
            return op(*args)
    return call


@dataclass(frozen=True)
class BackendKernels:
    """How one kernel backend is called.

    ``ops``: its custom ops (the dispatcher path, which torch.compile traces and opcheck
    checks). ``forward`` / ``backward``: the same kernels called directly, the eager fast path
    (no dispatcher round trip into Python). ``inference``: ``out`` alone, for calls that no
    backward follows (a backend may skip keeping what only the backward reads).
    ``function``: the eager autograd.Function over forward and backward, with the ops'
    autograd formula (ops.eager_function). ``transformable``: the autograd.Function used
    under torch.func transforms (func_transforms.transformable_function).
    """
    ops: BackendOps
    forward: object
    backward: object
    inference: object
    function: type
    transformable: type


def _kernels(ops, forward, backward, inference=None):
    if inference is None:
        def inference(*args):
            return forward(*args)[0]
    return BackendKernels(ops, forward, backward, inference, eager_function(forward, backward),
                          transformable_function(inference))


# The C++ extension registers its CPU and CUDA kernels for these (csrc/); one op pair serves
# backend="cpu" and backend="cuda", told apart by the tensors' device.
_ext_ops = define_backend_ops("ext")
_ext_kernels = _kernels(_ext_ops, _below_autograd(_ext_ops.forward),
                        _below_autograd(_ext_ops.backward))
_kernel_backends = {
    "triton": _kernels(define_backend_ops("triton", _triton_forward, _triton_backward),
                       _triton_eager_forward, _triton_eager_backward, _triton_inference),
    "cpu": _ext_kernels,
    "cuda": _ext_kernels,
}


def backend_kernels(name):
    """The ``BackendKernels`` of a kernel backend."""
    if name not in _kernel_backends:
        raise ValueError(f"backend {name!r} has no kernels (no custom ops)")
    return _kernel_backends[name]


def backend_ops(name):
    """The custom ops (``ops.BackendOps``) of a kernel backend."""
    return backend_kernels(name).ops
