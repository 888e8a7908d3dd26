"""Kernel launches: cached compiled kernels on the hot path; recording for the tests.

``KernelLaunch`` is one launch site of a dispatch plan (se_op.py): kernel, grid, scalar
arguments and constexprs are fixed when the plan is made, only the tensors change per call.
Its first call goes through ``kernel[grid](...)``, which compiles (or finds) the kernel and
returns Triton's ``CompiledKernel``; later calls hand the arguments straight to that kernel's
launcher, skipping the per-call argument binding, specialization and cache-key work of
``JITFunction.run`` (tens of microseconds of host time per launch), with the tensors' raw
addresses (Triton's launcher checks each tensor argument with a driver call; an int it takes
as it is, in Triton 3.6 and 3.8 alike). That is sound because
everything Triton specializes on is fixed per plan: argument dtypes, integer values (equal
to 1, divisible by 16), constexprs, and the 16-byte alignment of every tensor, which is part
of the plan's key (``se_op``). Launch hooks (profilers such as proton), the interpreter and
launch recording always take the ``kernel[grid]`` path.

Recording is how the ahead-of-time compile test learns every (kernel, signature, constexpr)
configuration the dispatcher picks, without a GPU, and how tests count launches per op.
"""

import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch

_recorder = None
_stubbed = False
#: SENET_KERNELS_TRITON_DIRECT_LAUNCH=0 sends every launch through kernel[grid] (for A/B checks).
DIRECT_LAUNCH = os.environ.get("SENET_KERNELS_TRITON_DIRECT_LAUNCH", "1") != "0"


@dataclass
class Launch:
    kernel: object
    grid: tuple
    args: dict
    constexprs: dict
    num_warps: int


try:
    from triton import knobs as _knobs
except ImportError:  # a Triton without knobs: no direct launches
    _knobs = None


def hooks_installed():
    """Whether a launch hook is set: a non-empty ``HookChain`` (Triton >= 3.5) or a callable."""
    if _knobs is None:
        return True
    for hook in (_knobs.runtime.launch_enter_hook, _knobs.runtime.launch_exit_hook):
        if hook is not None and getattr(hook, "calls", True):
            return True
    return False


class KernelLaunch:
    """A launch site: ``site(*tensors)`` launches ``kernel`` on ``grid`` with the tensors in the
    order of ``tensor_names`` and the fixed ``scalars`` and ``constexprs`` (dicts by name)."""

    __slots__ = ("kernel", "grid", "tensor_names", "scalars", "constexprs", "num_warps",
                 "_template", "_tensor_slots", "_compiled", "_device", "_run", "_function",
                 "_metadata")

    def __init__(self, kernel, grid, tensor_names, scalars, constexprs, num_warps, device):
        self.kernel = kernel
        self.grid = tuple(grid) + (1,) * (3 - len(grid))
        self.tensor_names = tuple(tensor_names)
        self.scalars = dict(scalars)
        self.constexprs = dict(constexprs)
        self.num_warps = num_warps
        self._device = device
        names = kernel.arg_names
        unknown = set(self.tensor_names) | set(self.scalars) | set(self.constexprs)
        unknown -= set(names)
        missing = set(names) - set(self.tensor_names) - set(self.scalars) - set(self.constexprs)
        if unknown or missing:
            raise TypeError(f"{kernel.__name__}: unknown arguments {sorted(unknown)}, "
                            f"missing {sorted(missing)}")
        # Every parameter in declaration order (constexprs included, as JITFunction.run passes
        # them); tensor slots are filled per call.
        values = {**self.scalars, **self.constexprs}
        self._template = [values.get(name) for name in names]
        self._tensor_slots = tuple(names.index(name) for name in self.tensor_names)
        self._compiled = None

    @property
    def compiled(self):
        """Whether this site launches its compiled kernel directly (after its first call on a
        GPU); False: every call goes through ``kernel[grid]``."""
        return self._compiled is not None

    def __call__(self, *tensors):
        if (self._compiled is not None or _stubbed) and _recorder is None and DIRECT_LAUNCH \
                and not hooks_installed():
            args = self._template.copy()
            # Raw addresses: Triton's launcher takes an int as it is, while for a tensor it
            # calls data_ptr() and then cuPointerGetAttribute (a driver call) per argument.
            for slot, t in zip(self._tensor_slots, tensors):
                args[slot] = t.data_ptr()
            g0, g1, g2 = self.grid
            if _stubbed:
                _NO_OP_KERNEL.run(g0, g1, g2, _current_stream(self._device), None, None, None,
                                  None, None, *args)
                return
            self._run(g0, g1, g2, _current_stream(self._device), self._function, self._metadata,
                      None, None, None, *args)
            return
        named = dict(zip(self.tensor_names, tensors), **self.scalars)
        if _recorder is not None:
            _recorder.append(Launch(self.kernel, self.grid, named, dict(self.constexprs),
                                    self.num_warps))
            if not _recorder.run_too:
                return
        result = self.kernel[self.grid](**named, **self.constexprs, num_warps=self.num_warps)
        if hasattr(result, "result"):  # an asynchronous compile's future
            result = result.result()
        if self._device.type == "cuda" and hasattr(result, "packed_metadata"):
            # what CompiledKernel.run needs, looked up once (run is a property)
            self._run, self._function, self._metadata = (result.run, result.function,
                                                         result.packed_metadata)
            self._compiled = result


_raw_stream = torch._C._cuda_getCurrentRawStream if hasattr(torch._C, "_cuda_getCurrentRawStream") else None


def _current_stream(device):
    return _raw_stream(device.index) if device.type == "cuda" else 0


class _NoOpKernel:
    """Stands in for a compiled kernel while launches are stubbed: takes the arguments of
    ``CompiledKernel.run`` and does nothing."""
    function = packed_metadata = None

    @staticmethod
    def run(*args):
        pass


_NO_OP_KERNEL = _NoOpKernel()


@contextmanager
def stubbed_launches():
    """Inside the block every launch does all its host-side work (argument list, stream)
    except the driver call itself: how benchmarks/host_overhead.py measures the host time of
    the Triton backend on a machine without a GPU."""
    global _stubbed
    previous, _stubbed = _stubbed, True
    try:
        yield
    finally:
        _stubbed = previous


class _Recording(list):
    def __init__(self, run_too):
        super().__init__()
        self.run_too = run_too


def is_recording_only():
    return _recorder is not None and not _recorder.run_too


@contextmanager
def recording_launches(run_too=True):
    """Collect every ``Launch`` made inside the block; with run_too=False nothing runs."""
    global _recorder
    previous, _recorder = _recorder, _Recording(run_too)
    try:
        yield _recorder
    finally:
        _recorder = previous
