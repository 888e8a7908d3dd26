"""Kernel launches go through here, so that a test can record them instead of running them.

Recording is how the ahead-of-time compile test learns every (kernel, signature, constexpr)
configuration the dispatcher picks, without a GPU, and how tests count launches per op.
"""

from contextlib import contextmanager
from dataclasses import dataclass

_recorder = None


@dataclass
class Launch:
    kernel: object
    grid: tuple
    args: dict
    constexprs: dict
    num_warps: int


def launch(kernel, grid, args, constexprs, num_warps):
    if _recorder is not None:
        _recorder.append(Launch(kernel, tuple(grid), dict(args), dict(constexprs), num_warps))
        if not _recorder.run_too:
            return
    kernel[grid](**args, **constexprs, num_warps=num_warps)


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
