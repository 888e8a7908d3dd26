"""Whether Triton's interpreter can run the kernels with the numpy installed here.

Triton's interpreter before the fix of triton-lang/triton#9172 (Triton 3.6, which torch 2.11
pins, does not have it; 3.8 does) turns a loop bound computed from ``tl.program_id`` into a
Python int with ``int()`` of a one-element array, which numpy >= 2.4 refuses. Every reduction
of the SE kernels loops over such a range, so under that pair each kernel call fails with
``TypeError: only 0-dimensional arrays can be converted to Python scalars``. The backend
probe runs one tiny kernel of that form and reports the Triton backend unavailable, with the
remedy, instead.
"""

import torch
import triton
import triton.language as tl


@triton.jit
def _loop_bounded_by_program_id(out_ptr):
    pid = tl.program_id(0)
    total = 0
    for i in range(pid, pid + 2):
        total += i
    tl.store(out_ptr + pid, total)


def interpreter_problem():
    """None when the interpreter runs a loop bounded by the program id correctly, else why not
    (with what to install)."""
    out = torch.full((2,), -1, dtype=torch.int32)
    try:
        _loop_bounded_by_program_id[(2,)](out)
    except Exception as e:  # noqa: BLE001 - any failure here is the answer
        import numpy
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        return (f"the interpreter of triton {triton.__version__} fails with numpy "
                f"{numpy.__version__} ({detail}); install numpy<2.4, or triton>=3.8")
    if out.tolist() != [1, 3]:
        return f"the interpreter of triton {triton.__version__} computed {out.tolist()}, not [1, 3]"
    return None
