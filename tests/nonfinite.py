"""Running a backend forward + backward and comparing with the float64 reference when the
results may hold NaN or Inf (tests/test_nan_semantics.py, tests/test_properties.py).

"Exactly as the reference": NaN, +Inf and -Inf in the same positions of the output and of every
gradient; the finite values within the dtype's tolerance (senet_kernels.testing.TOLERANCES).
NaN and Inf patterns do not depend on the order of a sum (a sum holding NaN, or +Inf and -Inf,
is NaN in any order), so they can be compared exactly where values cannot.
"""

import torch

from senet_kernels import squeeze_excite

from cases import TOLERANCES, errors, reference64

PARAMS = ("x", "w1", "b1", "w2", "b2", "residual")


def run(backend, args, options, grad_out=None, wrt=None):
    """Forward (and backward when ``grad_out`` is given) of ``backend`` on ``args``.

    ``wrt``: names of the arguments that require grad (default: every one given). Returns
    (out, {name: grad}). backend "reference64" runs the reference in float64 on float64
    copies of args (the oracle).
    """
    present = [k for k in PARAMS if args[k] is not None]
    wrt = present if wrt is None else [k for k in wrt if args[k] is not None]
    if backend == "reference64":
        out, leaves = reference64(args, **options)
        grad_out = None if grad_out is None else grad_out.double()
    else:
        leaves = {k: None if v is None else v.detach().clone().requires_grad_(k in wrt)
                  for k, v in args.items()}
        out = squeeze_excite(leaves["x"], leaves["w1"], leaves["b1"], leaves["w2"], leaves["b2"],
                             leaves["residual"], backend=backend, **options)
    if grad_out is None or not wrt:
        return out, {}
    grads = torch.autograd.grad(out, [leaves[k] for k in wrt], grad_out)
    return out, dict(zip(wrt, grads))


def _first_differences(actual, expected, differ, limit=4):
    idx = differ.nonzero()[:limit].tolist()
    return ", ".join(f"{tuple(i)}: {actual[tuple(i)].item()} vs {expected[tuple(i)].item()}"
                     for i in idx)


def assert_matches_reference(actual, expected, dtype, what):
    """NaN / +Inf / -Inf in exactly the reference's positions; finite values within tolerance."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    a = actual.detach().double().cpu()
    e = expected.detach().double().cpu()
    for name, test in (("NaN", torch.isnan), ("+Inf", lambda t: t == float("inf")),
                       ("-Inf", lambda t: t == float("-inf"))):
        differ = test(a) != test(e)
        assert not differ.any(), (
            f"{what}: {name} where the reference has none or the other way round, at "
            f"{int(differ.sum())} of {a.numel()} positions (actual vs reference: "
            f"{_first_differences(a, e, differ)})")
    finite = torch.isfinite(e)
    if not finite.any():
        return
    rel, max_rel = errors(a[finite], e[finite])
    rel_tol, max_tol = TOLERANCES[dtype]
    assert rel <= rel_tol and max_rel <= max_tol, (
        f"{what}: finite values off: relative error {rel:.3e} (tolerance {rel_tol}), "
        f"max abs error / max |ref| {max_rel:.3e} (tolerance {max_tol})")


def assert_backend_matches_reference(backend, args, options, dtype, grad_out=None, wrt=None):
    """Run ``backend`` and the float64 reference; compare the output and every gradient."""
    out, grads = run(backend, args, options, grad_out, wrt)
    expected, expected_grads = run("reference64", args, options, grad_out, wrt)
    assert out.dtype == args["x"].dtype
    assert_matches_reference(out, expected, dtype, "out")
    assert grads.keys() == expected_grads.keys()
    for name, g in grads.items():
        assert g.dtype == args[name].dtype, f"grad of {name} has dtype {g.dtype}"
        assert_matches_reference(g, expected_grads[name], dtype, f"grad {name}")
    return out, grads
