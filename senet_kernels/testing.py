"""Correctness helpers shared by the tests and ``python -m senet_kernels check``.

Inputs are fresh random draws (never zeros or ones), scaled so that the pooled features,
hidden activations and gate logits are O(1): the gates are neither saturated nor trivial.
Results are compared with the float64 reference (the verification ladder of docs/design.md):
``forward_backward_vs_reference`` runs a forward and a backward and pairs every result with
the reference's.
"""

from dataclasses import dataclass

import torch

from .reference import squeeze_excite_reference

#: (relative norm error, max abs error relative to max |reference|) per dtype, vs float64.
TOLERANCES = {
    torch.float64: (1e-12, 1e-11),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 4e-3),
    torch.bfloat16: (1e-2, 2e-2),
}


def make_inputs(n, c, h, w, cr, *, dtype=torch.float32, param_dtype=None, channels_last=False,
                bias=True, residual=False, device="cpu", seed=0, draw_on_device=False):
    """Random SE arguments: dict(x, w1, b1, w2, b2, residual).

    Drawn in float64 on the CPU, so that a seed gives the same values on every device; with
    ``draw_on_device``, drawn in float32 by ``device``'s own generator (the benchmarks: a
    float64 draw on the CPU of a batch-256 activation takes 10-15 s)."""
    draw_device = torch.device(device) if draw_on_device else torch.device("cpu")
    draw_dtype = torch.float32 if draw_on_device else torch.float64
    gen = torch.Generator(device=draw_device).manual_seed(seed)
    param_dtype = param_dtype or dtype

    def rand(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen, dtype=draw_dtype, device=draw_device) * scale

    # A per-channel offset keeps the pooled means O(1) however large H*W is.
    x = rand(n, c, h, w) + rand(1, c, 1, 1)
    args = dict(
        x=x,
        w1=rand(cr, c, scale=c ** -0.5),
        b1=rand(cr, scale=0.5) if bias else None,
        w2=rand(c, cr, scale=2 * cr ** -0.5),
        b2=rand(c, scale=0.5) if bias else None,
        residual=rand(n, c, h, w) if residual else None,
    )
    out = {}
    for k, v in args.items():
        if v is None:
            out[k] = None
            continue
        v = v.to(device=device, dtype=dtype if k in ("x", "residual") else param_dtype)
        if channels_last and v.dim() == 4:
            v = v.contiguous(memory_format=torch.channels_last)
        out[k] = v
    return out


def reference64(args, **options):
    """Output of the float64 reference on float64 copies of args (leaves requiring grad)."""
    args64 = {k: None if v is None else v.detach().double().requires_grad_() for k, v in args.items()}
    out = squeeze_excite_reference(args64["x"], args64["w1"], args64["b1"], args64["w2"],
                                   args64["b2"], args64["residual"], **options)
    return out, args64


def errors(actual, expected):
    """(relative norm error, max abs error / max |expected|) of actual vs expected; NaN -> inf."""
    actual = actual.detach().double()
    expected = expected.detach().double()
    if torch.isnan(actual).any():
        return float("inf"), float("inf")
    diff = actual - expected
    rel = diff.norm().item() / max(expected.norm().item(), 1e-30)
    max_rel = diff.abs().max().item() / max(expected.abs().max().item(), 1e-30) if diff.numel() else 0.0
    return rel, max_rel


def within_tolerance(actual, expected, dtype):
    rel, max_rel = errors(actual, expected)
    rel_tol, max_tol = TOLERANCES[dtype]
    return rel <= rel_tol and max_rel <= max_tol


def assert_close(actual, expected, dtype, what):
    """Relative-norm and max-abs comparison against a float64 expected value; NaN fails."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert not torch.isnan(actual).any(), f"{what}: NaN in output (an element left unwritten?)"
    rel, max_rel = errors(actual, expected)
    rel_tol, max_tol = TOLERANCES[dtype]
    assert rel <= rel_tol, f"{what}: relative error {rel:.3e} > {rel_tol}"
    assert max_rel <= max_tol, f"{what}: max abs error / max |ref| = {max_rel:.3e} > {max_tol}"


@dataclass(frozen=True)
class Comparison:
    """One result of a run beside the float64 reference's: ``name`` is "out" or "grad <arg>"."""
    name: str
    actual: torch.Tensor
    expected: torch.Tensor

    def errors(self):
        return errors(self.actual, self.expected)

    def within_tolerance(self, dtype):
        return within_tolerance(self.actual, self.expected, dtype)


def forward_backward_vs_reference(run, args, *, grad_layout=None, seed=0, **options):
    """Forward and backward of ``run`` beside the float64 reference's, on the same inputs.

    ``run(x, w1, b1, w2, b2, residual, **options)`` is the op under test (e.g.
    ``squeeze_excite`` with a backend). It gets fresh leaves requiring grad; its output is
    back-propagated with a random upstream gradient (``grad_layout`` may restride it), the
    reference's with the same gradient in float64. Returns ``[Comparison]``: the output, then
    the gradient of every argument that is not None, in ``args`` order.
    """
    leaves = {k: None if v is None else v.detach().clone().requires_grad_() for k, v in args.items()}
    out = run(*leaves.values(), **options)
    expected, args64 = reference64(args, **options)
    gen = torch.Generator().manual_seed(seed)
    grad = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    grad = grad.to(device=out.device, dtype=out.dtype)
    if grad_layout is not None:
        grad = grad_layout(grad)
    names = [k for k, v in args.items() if v is not None]
    grads = torch.autograd.grad(out, [leaves[k] for k in names], grad)
    expected_grads = torch.autograd.grad(expected, [args64[k] for k in names], grad.double())
    return [Comparison("out", out, expected)] + [
        Comparison(f"grad {k}", g, e) for k, g, e in zip(names, grads, expected_grads)]
