"""Property test: the fused BatchNorm + SE op equals its contract on random calls, NaN and Inf
included.

Hypothesis draws small shapes (N 1-3, C 1-12, H and W 1-5, Cr 1-5), the BatchNorm's flags
(training or eval, affine or not, running statistics or none, momentum 0.1 / 0.0 / 1.0 /
None: the cumulative average, eps), the SE variant (activation x gate x post-ReLU x residual
x bias), the dtype (float32 / float16 / bfloat16 / float64; half inputs with float32
parameters now and then), the layout (NCHW, channels_last, or strided views that are
neither), which arguments require grad (none: the inference path), and up to two NaN / +Inf /
-Inf values injected into y, the BatchNorm vectors, the running statistics, the SE parameters,
the residual or grad_out. Each example runs ``bn_squeeze_excite`` forward and backward on one
backend (the C++ kernels and the Triton kernels, with every fresh allocation poisoned with
NaN; the reference backend)
and compares the output, every gradient, the updated running statistics and
num_batches_tracked with the contract, ``bn_squeeze_excite_reference`` (F.batch_norm, as
nn.BatchNorm2d calls it, then the SE reference) in float64: NaN / Inf in the same positions,
finite values within the dtype's tolerance (tests/nonfinite.py). So a NaN in y in training
makes its channel's batch statistics NaN, hence that channel of every sample, hence (through
the squeeze) every output, as nn.BatchNorm2d followed by the SE module gives; and batch
statistics of a single value per channel raise ValueError on both sides.

Derandomized (a fixed sequence of examples: CI is reproducible) and sized to take about
half a minute on 2 CPU cores.
"""

from dataclasses import dataclass

import pytest
import torch
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from senet_kernels import bn_squeeze_excite
from senet_kernels.backends import backend_status
from senet_kernels.bn_reference import bn_squeeze_excite_reference, uses_batch_stats
from senet_kernels.spec import ACTIVATIONS, GATES

from cases import poisoned_allocations
from nonfinite import assert_matches_reference
from test_bn_reference import make_bn_inputs
from test_properties import NONFINITE, _strided

pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning",
                                        "ignore:overflow encountered:RuntimeWarning")

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
LAYOUTS = ("nchw", "channels_last", "strided")
MOMENTA = (0.1, 0.0, 1.0, None)
#: The differentiable arguments, in bn_squeeze_excite's order.
DIFFERENTIABLE = ("y", "bn_weight", "bn_bias", "w1", "b1", "w2", "b2", "residual")
#: Where a NaN / Inf may be injected besides grad_out.
TARGETS = DIFFERENTIABLE + ("running_mean", "running_var")
EXAMPLES = {"cpu": 300, "reference": 100, "triton": 60}


@dataclass
class Case:
    shape: tuple  # (N, C, H, W, Cr)
    training: bool
    affine: bool
    track: bool  # running statistics given
    momentum: object
    eps: float
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
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 12)), draw(st.integers(1, 5)),
             draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    affine, track = draw(st.booleans()), draw(st.booleans())
    residual, bias = draw(st.booleans()), draw(st.booleans())
    dtype = draw(st.sampled_from(DTYPES))
    float32_params = dtype in (torch.float16, torch.bfloat16) and draw(st.booleans())
    absent = {"bn_weight": not affine, "bn_bias": not affine, "b1": not bias, "b2": not bias,
              "residual": not residual, "running_mean": not track, "running_var": not track}
    present = [k for k in TARGETS if not absent.get(k, False)]
    wrt = draw(st.lists(st.sampled_from([k for k in DIFFERENTIABLE if k in present]),
                        unique=True))
    targets = present + (["grad_out"] if wrt else [])
    injections = draw(st.lists(st.tuples(st.sampled_from(targets), st.sampled_from(NONFINITE),
                                         st.integers(0, 10 ** 6)), max_size=2))
    return Case(shape, draw(st.booleans()), affine, track, draw(st.sampled_from(MOMENTA)),
                draw(st.sampled_from((1e-5, 1e-3))), draw(st.sampled_from(ACTIVATIONS)),
                draw(st.sampled_from(GATES)), draw(st.booleans()), residual, bias, dtype,
                float32_params, draw(st.sampled_from(LAYOUTS)), wrt, injections,
                draw(st.integers(0, 2 ** 31 - 1)))


def build(case):
    """(args, grad_out or None) of a case, injections applied; the running statistics in
    float32 (float64 for float64), as nn.BatchNorm2d keeps them under autocast."""
    args = make_bn_inputs(*case.shape, dtype=case.dtype,
                          param_dtype=torch.float32 if case.float32_params else None,
                          channels_last=case.layout == "channels_last", residual=case.residual,
                          affine=case.affine, bias=case.bias, seed=case.seed)
    stats_dtype = torch.float64 if case.dtype == torch.float64 else torch.float32
    for k in ("running_mean", "running_var"):
        args[k] = args[k].to(stats_dtype) if case.track else None
    if case.layout == "strided":
        args = {k: v if v is None or v.dim() == 1 else _strided(v) for k, v in args.items()}
    grad_out = None
    if case.wrt:
        gen = torch.Generator().manual_seed(case.seed + 1)
        grad_out = torch.randn(case.shape[:4], generator=gen, dtype=torch.float64)
        grad_out = grad_out.to(case.dtype)
        if case.layout == "channels_last":
            grad_out = grad_out.contiguous(memory_format=torch.channels_last)
    for target, value, index in case.injections:
        t = grad_out if target == "grad_out" else args[target]
        t[torch.unravel_index(torch.tensor(index % t.numel()), t.shape)] = value
    return args, grad_out


def run(case, args, grad_out, backend):
    """Forward (and backward) of ``backend`` ("reference64": the contract in float64 on
    float64 copies). Returns (out, {name: grad}, running_mean, running_var, tracked)."""
    wrt = case.wrt
    if backend == "reference64":
        leaves = {k: None if v is None else v.detach().double().requires_grad_(k in wrt)
                  for k, v in args.items()}
        grad_out = None if grad_out is None else grad_out.double()
    else:
        # the Triton kernels on the GPU where there is one (else interpreted on the CPU)
        device = "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"
        leaves = {k: None if v is None else v.detach().to(device).clone().requires_grad_(k in wrt)
                  for k, v in args.items()}
        grad_out = None if grad_out is None else grad_out.to(device)
    tracked = (torch.tensor(3, dtype=torch.int64, device=leaves["y"].device) if case.track
               else None)
    options = dict(training=case.training, momentum=case.momentum, eps=case.eps,
                   num_batches_tracked=tracked, activation=case.activation, gate=case.gate,
                   post_relu=case.post_relu)
    positional = [leaves[k] for k in ("y", "bn_weight", "bn_bias", "running_mean",
                                      "running_var", "w1", "b1", "w2", "b2", "residual")]
    if backend == "reference64":
        out = bn_squeeze_excite_reference(*positional, **options)
    else:
        with poisoned_allocations():
            out = bn_squeeze_excite(*positional, backend=backend, **options)
    grads = {}
    if wrt:
        grads = dict(zip(wrt, torch.autograd.grad(out, [leaves[k] for k in wrt], grad_out)))

    def cpu(t):
        return None if t is None else t.cpu()
    return (cpu(out), {k: cpu(g) for k, g in grads.items()}, cpu(leaves["running_mean"]),
            cpu(leaves["running_var"]), cpu(tracked))


def single_value_per_channel(case):
    n, _, h, w, _ = case.shape
    return uses_batch_stats(case.training, True if case.track else None) and n * h * w == 1


def not_comparable(case, backend):
    """The kinds of example whose expected result depends on rounding or on how PyTorch's
    BatchNorm kernel happens to be written, not on the op:

    - Two values per channel under batch statistics: the normalized output is then +-1
      whatever y is (up to eps), so grad_y is O(1) terms cancelling down to O(eps / var)
      (1e-5 of them): float32 rounding alone is 1e-3 of it, for F.batch_norm's own float32
      backward as for the kernels. (The forward is compared; grad_y is not asked for.)
    - One sample under batch statistics without affine: the squeeze of the normalized y is
      then exactly 0, a rounding residue (1e-17 in float64, 1e-8 in float32) for the
      composition: grad_w1 (proportional to it) is rounding, and an infinite w1 gives
      Inf * 0 = NaN in the kernels, +-Inf by the residue's sign in the composition.
    - An infinite BatchNorm weight: PyTorch's CPU BatchNorm computes y * a + (beta - mean * a)
      (a = weight * rstd), which is Inf - Inf = NaN wherever y and the mean have the same
      sign; the kernels compute a * (y - mean) + beta (docs/design.md: it keeps a large mean
      from cancelling), +-Inf there, as the mathematical limit is.
    - An infinite grad_out: the kernels take the SE's sum_hw g x (x = a (y - mean) + beta,
      the normalized y) as a Q + beta G from their per-(n, c) sums G = sum_hw g and
      Q = sum_hw g (y - mean) (docs/design.md), where Inf - Inf (or 0 * Inf at beta = 0,
      BatchNorm's initial bias) is NaN and the elementwise sum of autograd +-Inf; the NaN
      spreads to grad_y where autograd has +-Inf. (A NaN in grad_out is compared.)
    - The reference backend, gelu and an infinite value below float64: PyTorch's float32
      F.gelu(+Inf) is NaN, its float64 one +Inf (the contract is PyTorch's, in the input's
      compute dtype).
    """
    n, _, h, w, _ = case.shape
    if any(t == "grad_out" and abs(v) == float("inf") for t, v, _ in case.injections):
        return True
    infinite = any(abs(v) == float("inf") for _, v, _ in case.injections)
    if (backend == "reference" and case.activation == "gelu" and infinite
            and case.dtype != torch.float64):
        return True
    if any(t == "bn_weight" and abs(v) == float("inf") for t, v, _ in case.injections):
        return True
    if not uses_batch_stats(case.training, True if case.track else None):
        return False
    if n * h * w == 2 and "y" in case.wrt:
        return True
    infinite_w1 = any(t == "w1" and abs(v) == float("inf") for t, v, _ in case.injections)
    return n == 1 and not case.affine and ("w1" in case.wrt or infinite_w1)


def check_case(backend, case):
    assume(not not_comparable(case, backend))
    event(f"dtype {str(case.dtype).replace('torch.', '')}, layout {case.layout}")
    event("training" if case.training else "eval")
    event(f"{len(case.injections)} non-finite values injected")
    event("forward and backward" if case.wrt else "forward only (inference)")
    args, grad_out = build(case)
    if single_value_per_channel(case):  # F.batch_norm raises; so must the op, changing nothing
        for fn in (lambda: run(case, args, grad_out, "reference64"),
                   lambda: run(case, args, grad_out, backend)):
            with pytest.raises(ValueError, match="more than 1 value per channel"):
                fn()
        return
    out, grads, mean, var, tracked = run(case, args, grad_out, backend)
    expected, expected_grads, exp_mean, exp_var, exp_tracked = run(case, args, grad_out,
                                                                   "reference64")
    assert out.dtype == case.dtype and out.shape == expected.shape
    assert_matches_reference(out, expected, case.dtype, "out")
    assert grads.keys() == expected_grads.keys()
    for name, g in grads.items():
        assert g.dtype == args[name].dtype, f"grad of {name} has dtype {g.dtype}"
        assert_matches_reference(g, expected_grads[name], case.dtype, f"grad {name}")
    if case.track:
        # the statistics are float32 for half inputs: compared at float32's tolerance
        stats_dtype = torch.float64 if case.dtype == torch.float64 else torch.float32
        assert_matches_reference(mean, exp_mean, stats_dtype, "running_mean")
        assert_matches_reference(var, exp_var, stats_dtype, "running_var")
        assert tracked.item() == exp_tracked.item() == (4 if case.training else 3)


SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.skipif(not backend_status("cpu").available, reason="the C++ extension is not built")
@settings(max_examples=EXAMPLES["cpu"], **SETTINGS)
@given(case=cases())
def test_cpu_kernels_match_the_contract(case):
    """The C++ kernels vs nn.BatchNorm2d's F.batch_norm + the SE reference, NaN / Inf
    included."""
    check_case("cpu", case)


@settings(max_examples=EXAMPLES["triton"], **SETTINGS)
@given(case=cases())
def test_triton_kernels_match_the_contract(case):
    """The Triton kernels (on the GPU, else through the interpreter) vs the contract, NaN /
    Inf included."""
    check_case("triton", case)


@settings(max_examples=EXAMPLES["reference"], **SETTINGS)
@given(case=cases())
def test_reference_backend_matches_the_contract(case):
    """backend="reference" (the contract in the input's dtype) vs the contract in float64."""
    check_case("reference", case)
