"""Bad input gets a clear TypeError / ValueError naming the argument, on every backend."""

import pytest
import torch

from senet_kernels import available_backends, squeeze_excite
from senet_kernels.interpreter import interpreting

from cases import make_inputs

BACKEND_NAMES = ["reference"] + [b for b, s in available_backends().items() if s.available and b != "reference"]


def good():
    return make_inputs(2, 8, 3, 3, 2, residual=True)


def with_(**changes):
    args = good()
    args.update(changes)
    return args


BAD_CASES = [
    ("x 3-D", lambda: with_(x=torch.randn(2, 8, 9), residual=None), ValueError, "x must be 4-D"),
    ("x integer", lambda: with_(x=torch.randint(0, 5, (2, 8, 3, 3)), residual=None), TypeError, "x must be float"),
    ("x not a tensor", lambda: with_(x=[[1.0]]), TypeError, "x must be a torch.Tensor"),
    ("x zero channels", lambda: with_(x=torch.randn(2, 0, 3, 3), residual=None), ValueError, "C, H, W >= 1"),
    ("w1 wrong C", lambda: with_(w1=torch.randn(2, 7)), ValueError, "w1 must have shape"),
    ("w1 3-D", lambda: with_(w1=torch.randn(2, 8, 1)), ValueError,
     r"w1 must have shape \[Cr, 8\] \(or \[Cr, 8, 1, 1\]\), got \(2, 8, 1\)"),
    ("w2 inconsistent Cr", lambda: with_(w2=torch.randn(8, 3)), ValueError, "w2 must have shape"),
    ("w2 wrong C", lambda: with_(w2=torch.randn(7, 2)), ValueError, "w2 must have shape"),
    ("b1 wrong length", lambda: with_(b1=torch.randn(3)), ValueError, "b1 must have shape"),
    ("b2 wrong length", lambda: with_(b2=torch.randn(2)), ValueError, "b2 must have shape"),
    ("b2 integer", lambda: with_(b2=torch.ones(8, dtype=torch.int64)), TypeError, "b2 must be float"),
    ("params mixed dtype", lambda: with_(w2=torch.randn(8, 2, dtype=torch.float64)), TypeError, "w2 has dtype"),
    ("half params with fp32 x", lambda: with_(w1=torch.randn(2, 8).half(), w2=torch.randn(8, 2).half(),
                                               b1=None, b2=None), TypeError, "parameters must be x's dtype or float32"),
    ("residual wrong shape", lambda: with_(residual=torch.randn(2, 8, 3, 4)), ValueError, "residual must have x's shape"),
    ("residual wrong dtype", lambda: with_(residual=torch.randn(2, 8, 3, 3, dtype=torch.float64)), TypeError, "residual has dtype"),
    ("residual not a tensor", lambda: with_(residual=1.0), TypeError, "residual must be a torch.Tensor"),
    ("w1 on meta device", lambda: with_(w1=torch.randn(2, 8, device="meta")), ValueError, "w1 is on meta"),
]


@pytest.mark.parametrize("backend", BACKEND_NAMES)
@pytest.mark.parametrize("name,make,error,message", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_arguments(backend, name, make, error, message):
    args = make()
    with pytest.raises(error, match=message):
        squeeze_excite(*args.values(), backend=backend)


@pytest.mark.parametrize("option,value,message", [
    ("activation", "softsign", "activation must be one of"),
    ("gate", "tanh", "gate must be one of"),
    ("backend", "cudnn", "backend must be one of .*'cudnn'"),
    ("backend", ["cpu"], "backend must be one of"),
])
def test_unknown_names(option, value, message):
    with pytest.raises(ValueError, match=message):
        squeeze_excite(*good().values(), **{option: value})


@pytest.mark.parametrize("backend", BACKEND_NAMES)
@pytest.mark.parametrize("option,value,message", [
    ("activation", ["relu"], "activation must be a str, got list"),
    ("gate", None, "gate must be a str, got NoneType"),
    ("post_relu", "no", "post_relu must be a bool, got str"),
    ("post_relu", 1, "post_relu must be a bool, got int"),
])
def test_options_of_the_wrong_type(backend, option, value, message):
    """Options of the wrong type get a TypeError naming them on every backend (a truthy
    string for post_relu was silently True on the reference)."""
    with pytest.raises(TypeError, match=message):
        squeeze_excite(*good().values(), backend=backend, **{option: value})


@pytest.mark.parametrize("backend", [b for b, s in available_backends().items() if not s.available])
def test_forced_unavailable_backend_says_why(backend):
    reason = available_backends()[backend].reason
    with pytest.raises(ValueError, match=f"backend '{backend}' is unavailable here"):
        squeeze_excite(*good().values(), backend=backend)
    assert reason


def test_available_backends_reports_every_backend():
    status = available_backends()
    assert set(status) == {"triton", "cuda", "cpu", "reference"}
    assert status["reference"].available
    assert all(isinstance(s.reason, str) and s.reason for s in status.values())


@pytest.mark.skipif(not interpreting(), reason="probes Triton's interpreter (no GPU here)")
def test_triton_interpreter_probe(monkeypatch):
    """The interpreter probe passes with this Triton and numpy, and a failing interpreter
    (Triton 3.6 with numpy >= 2.4 fails so) makes the backend unavailable, saying why."""
    from senet_kernels import backends
    from senet_kernels.triton import interpreter_check
    assert interpreter_check.interpreter_problem() is None

    class Broken:
        def __getitem__(self, grid):
            def launch(*args):
                raise TypeError("only 0-dimensional arrays can be converted to Python scalars")
            return launch
    monkeypatch.setattr(interpreter_check, "_loop_bounded_by_program_id", Broken())
    status = backends._triton_status()
    assert not status.available
    assert "only 0-dimensional arrays" in status.reason and "numpy<2.4" in status.reason
