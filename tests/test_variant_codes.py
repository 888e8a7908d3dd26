"""Activation and gate codes are one vocabulary (senet_kernels/spec.py), and every switch on
them names each code and fails on an unknown one.

- The C++ enums of csrc/se.h, as the extension lists them, equal spec's codes.
- The Triton helpers have a code constant per name, equal to spec's.
- The reference and the benchmarks' eager baseline raise on an unknown name instead of taking
  "the other one".
- The Triton kernels, handed a code they have no case for, give NaN, not some other variant's
  result.
"""

import pytest
import torch

from senet_kernels import baselines, reference, spec
from senet_kernels.backends import backend_status, load_extension

from cases import make_inputs

module, why = load_extension()


@pytest.mark.skipif(module is None, reason=str(why))
def test_cpp_codes_equal_python_codes():
    assert dict(module.activation_codes()) == spec.ACTIVATION_CODE
    assert dict(module.gate_codes()) == spec.GATE_CODE


@pytest.mark.skipif(not backend_status("triton").available, reason="triton unavailable")
def test_triton_code_constants_equal_python_codes():
    from senet_kernels.triton import common
    for names, codes in ((spec.ACTIVATIONS, spec.ACTIVATION_CODE), (spec.GATES, spec.GATE_CODE)):
        for name in names:
            constant = getattr(common, name.upper(), None)
            assert constant is not None, f"triton/common.py has no constant for {name!r}"
            assert constant.value == codes[name], name


@pytest.mark.parametrize("fn,kind", [(reference.activate, "activation"),
                                     (reference.apply_gate, "gate"),
                                     (baselines._activate, "activation"),
                                     (baselines._gate, "gate")])
def test_python_switches_reject_unknown_names(fn, kind):
    t = torch.randn(3)
    for name in (spec.ACTIVATIONS if kind == "activation" else spec.GATES):
        assert torch.isfinite(fn(t.clone(), name)).all()
    with pytest.raises(ValueError, match=f"{kind} must be one of"):
        fn(t, "softsign")


@pytest.mark.skipif(not backend_status("triton").available, reason="triton unavailable")
@pytest.mark.parametrize("path", ["per_sample", "batched"])
@pytest.mark.parametrize("kind", ["activation", "gate"])
def test_triton_kernels_poison_an_unknown_code(device, path, kind, monkeypatch):
    """A code no case of triton/common.py handles (as if a name were added to spec.py and the
    kernels forgotten): the gate, hence the output, is NaN; in the backward the unknown
    derivative is NaN."""
    from senet_kernels.triton import configs, se_op

    table = se_op.ACTIVATION_CODE if kind == "activation" else se_op.GATE_CODE
    monkeypatch.setitem(table, "unknown", len(table))
    options = dict(activation="relu", gate="sigmoid", post_relu=False)
    options[kind] = "unknown"
    a = make_inputs(2, 8, 3, 3, 2, device=device)
    with configs.force_excitation_path(path):
        out, pooled, hidden, scale = se_op.se_forward(a["x"], a["w1"], a["b1"], a["w2"], a["b2"],
                                                      None, options["activation"],
                                                      options["gate"], False)
        assert torch.isnan(scale).all() and torch.isnan(out).all()
        assert torch.isfinite(pooled).all()
        grads = se_op.se_backward(torch.ones_like(out), a["x"], None, a["w1"], a["w2"], pooled,
                                  hidden, torch.rand_like(scale), False, options["activation"],
                                  options["gate"])
    # backward with a finite scale: the unknown derivative poisons gh (grad_b1 = sum_n gh)
    # or gz (grad_b2 = sum_n gz)
    assert torch.isnan(grads[2 if kind == "activation" else 4]).all()
