"""Property test: every kernel backend agrees with the float64 reference on random SE calls.

Hypothesis draws small shapes (N 1-3, C 1-20, H and W 1-5, Cr 1-6), the variant (activation x
gate x post-ReLU x residual x bias), the dtype (float32 / float16 / bfloat16 / float64, with
float32 parameters for half inputs now and then), the layout (NCHW, channels_last, or strided
views that are neither), which arguments require grad (none: the inference path), and up to
two NaN / +Inf / -Inf values injected into x, the parameters, the residual or grad_out. Each
example runs forward and backward on one backend (the C++ CPU kernels; the Triton kernels,
interpreted, on each excitation path) with every fresh allocation poisoned with NaN, and
compares the output and every gradient with the float64 reference: NaN / Inf in the same
positions, finite values within the dtype's tolerance (tests/nonfinite.py).

Derandomized (a fixed sequence of examples: CI is reproducible) and sized to stay well under a
minute on 2 CPU cores (about 25 s unloaded): most examples go to the fast C++ backend, fewer to
each interpreted Triton path. ``pytest --hypothesis-show-statistics`` shows what they cover.
"""

import contextlib
from dataclasses import dataclass

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from senet_kernels.backends import interpreting
from senet_kernels.spec import ACTIVATIONS, GATES

from cases import backend_device_params, make_inputs, poisoned_allocations
from nonfinite import PARAMS, assert_backend_matches_reference

pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning",
                                        "ignore:overflow encountered:RuntimeWarning")

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
LAYOUTS = ("nchw", "channels_last", "strided")
NONFINITE = (float("nan"), float("inf"), float("-inf"))
#: Examples per backend: the C++ kernels take milliseconds, an interpreted Triton call ~0.3 s
#: (on a GPU, Triton gets as many as the others).
EXAMPLES = {"cpu": 300, "triton": 80 if interpreting() else 300}


@dataclass
class Case:
    shape: tuple  # (N, C, H, W, Cr)
    activation: str
    gate: str
    post_relu: bool
    residual: bool
    bias: bool
    dtype: torch.dtype
    float32_params: bool
    layout: str
    wrt: list  # arguments that require grad
    injections: list  # (target, value, flat index before the modulo)
    seed: int


@st.composite
def cases(draw):
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 20)), draw(st.integers(1, 5)),
             draw(st.integers(1, 5)), draw(st.integers(1, 6)))
    residual, bias = draw(st.booleans()), draw(st.booleans())
    dtype = draw(st.sampled_from(DTYPES))
    float32_params = dtype in (torch.float16, torch.bfloat16) and draw(st.booleans())
    present = [k for k in PARAMS if (k not in ("b1", "b2") or bias) and (k != "residual" or residual)]
    wrt = draw(st.lists(st.sampled_from(present), unique=True))
    targets = present + (["grad_out"] if wrt else [])
    injections = draw(st.lists(st.tuples(st.sampled_from(targets), st.sampled_from(NONFINITE),
                                         st.integers(0, 10 ** 6)), max_size=2))
    return Case(shape, draw(st.sampled_from(ACTIVATIONS)), draw(st.sampled_from(GATES)),
                draw(st.booleans()), residual, bias, dtype, float32_params,
                draw(st.sampled_from(LAYOUTS)), wrt, injections, draw(st.integers(0, 2 ** 31 - 1)))


def _strided(t):
    """The same values as a view that is neither dense NCHW nor dense channels_last (4-D: every
    other column of a wider tensor) or not contiguous (2-D: a transposed copy, transposed)."""
    if t.dim() == 4:
        wide = torch.empty(*t.shape[:3], 2 * t.shape[3], dtype=t.dtype, device=t.device)
        view = wide[..., ::2]
    else:
        view = torch.empty(t.shape[::-1], dtype=t.dtype, device=t.device).t()
    view.copy_(t)
    return view


def build(case, device):
    """(args, grad_out or None) of a case, injections applied."""
    args = make_inputs(*case.shape, dtype=case.dtype,
                       param_dtype=torch.float32 if case.float32_params else None,
                       channels_last=case.layout == "channels_last", bias=case.bias,
                       residual=case.residual, device=device, seed=case.seed)
    if case.layout == "strided":
        args = {k: v if v is None or v.dim() == 1 else _strided(v) for k, v in args.items()}
    grad_out = None
    if case.wrt:
        gen = torch.Generator().manual_seed(case.seed + 1)
        grad_out = torch.randn(case.shape[:4], generator=gen, dtype=torch.float64)
        grad_out = grad_out.to(device=device, dtype=case.dtype)
        if case.layout == "channels_last":
            grad_out = grad_out.contiguous(memory_format=torch.channels_last)
    for target, value, index in case.injections:
        t = grad_out if target == "grad_out" else args[target]
        t[torch.unravel_index(torch.tensor(index % t.numel()), t.shape)] = value
    return args, grad_out


def _path(path):
    if path is None:
        return contextlib.nullcontext()
    from senet_kernels.triton import configs
    return configs.force_excitation_path(path)


SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
PARAMS_BY_KIND = {kind: [p for p in backend_device_params(paths=True)
                         if (p.values[0] == "triton") == (kind == "triton")]
                  for kind in ("triton", "extension")}


def check_case(backend, device, path, case):
    """One example: build it, run it on backend (Triton: on the given excitation path)."""
    # what the examples cover: pytest --hypothesis-show-statistics
    event(f"dtype {str(case.dtype).replace('torch.', '')}, layout {case.layout}")
    event(f"{len(case.injections)} non-finite values injected")
    event("forward and backward" if case.wrt else "forward only (inference)")
    args, grad_out = build(case, device)
    options = dict(activation=case.activation, gate=case.gate, post_relu=case.post_relu)
    with poisoned_allocations(), _path(path):
        assert_backend_matches_reference(backend, args, options, case.dtype, grad_out, case.wrt)


@pytest.mark.parametrize("backend,device,excitation_path", PARAMS_BY_KIND["extension"])
@settings(max_examples=EXAMPLES["cpu"], **SETTINGS)
@given(case=cases())
def test_extension_matches_reference(backend, device, excitation_path, case):
    """The C++ kernels (CPU; CUDA where a GPU is) vs the float64 reference, NaN / Inf included."""
    check_case(backend, device, excitation_path, case)


@pytest.mark.parametrize("backend,device,excitation_path", PARAMS_BY_KIND["triton"])
@settings(max_examples=EXAMPLES["triton"], **SETTINGS)
@given(case=cases())
def test_triton_matches_reference(backend, device, excitation_path, case):
    """The Triton kernels, each excitation path, vs the float64 reference, NaN / Inf included."""
    check_case(backend, device, excitation_path, case)
