"""Whether the Triton kernels run through Triton's interpreter (``TRITON_INTERPRET=1``).

A leaf module: the backend probe, the Triton dispatcher and the command-line tools all ask
here, so the variable is read in one place, once per process. Triton reads it when kernels are
defined (``@triton.jit``), so a later change in the environment would not take effect anyway.
"""

import os

import torch

_answer = []


def env_asks_for_interpreter(environ=os.environ):
    """What TRITON_INTERPRET in ``environ`` says, read now (set and neither "" nor "0")."""
    return environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@torch.compiler.assume_constant_result
def interpreting():
    """True when this process runs Triton kernels through the interpreter (read once)."""
    if not _answer:
        _answer.append(env_asks_for_interpreter())
    return _answer[0]
