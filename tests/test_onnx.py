"""ONNX export of networks with fused SE blocks, run in ONNX Runtime (CPU).

Every export uses ``torch.onnx.export`` exactly as a user would, with nothing extra: the
package teaches both exporters the op at import (``senet_kernels.onnx_export``). Each test
exports with batch 2 and a dynamic batch dimension, runs the ONNX model in ONNX Runtime on a
fresh batch of 3, and compares it with the PyTorch model on that batch (fp32: max abs error
over max |PyTorch| < 1e-5) and, for single blocks, with the float64 reference.
"""

import io

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from senet_kernels import FusedSEBlock, convert_se_modules, models
from senet_kernels.backends import backend_ops
from senet_kernels.onnx_export import se_forward_decomposition
from senet_kernels.spec import ACTIVATIONS

from cases import assert_close, kernel_backends, make_inputs, reference64

# torch.onnx notes that x's and the residual's batch dimensions share one name, as they should.
pytestmark = pytest.mark.filterwarnings("ignore:# The axis name:UserWarning")

CPU = torch.device("cpu")
#: Backends of the blocks exported here: every kernel backend that runs on this CPU (Triton
#: through the interpreter) and the plain-PyTorch reference.
BACKENDS = kernel_backends(CPU) + ["reference"]
#: The backends besides "auto"'s choice on the CPU (checked on one variant each).
OTHER_BACKENDS = [b for b in BACKENDS if b != "cpu"]
#: What an exported SE block may consist of: standard ONNX ops only.
SE_ONNX_OPS = {"ReduceMean", "GlobalAveragePool", "Flatten", "Gemm", "MatMul", "Transpose",
               "Relu", "Sigmoid", "HardSigmoid", "Mul", "Add", "Unsqueeze", "Reshape", "Cast",
               "Constant", "Min", "Max", "Div", "Clip", "Gelu", "Erf", "Tanh", "HardSwish", "LeakyRelu"}
#: (activation, gate, bias, residual, post_relu): the first four have each value of each
#: option; all six have each pair of values of two options.
VARIANTS = [
    ("relu", "sigmoid", True, False, False),
    ("silu", "hardsigmoid", True, True, True),
    ("relu", "hardsigmoid", False, True, False),
    ("silu", "sigmoid", False, False, True),
    ("relu", "sigmoid", False, True, True),
    ("silu", "hardsigmoid", False, False, False),
]
FP32_TOL = 1e-5


def variant_id(v):
    act, gate, bias, res, post = v
    return f"{act}-{gate}" + "-bias" * bias + "-res" * res + "-relu" * post


def rel_err(actual, expected):
    """max|actual - expected| / max|expected|, in float64."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    return float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-300))


def make_block(activation, gate, bias, post_relu, backend, c=24, cr=6, dtype=torch.float32):
    """A FusedSEBlock with well-scaled random weights (those of testing.make_inputs)."""
    block = FusedSEBlock(c, rd_channels=cr, bias=bias, activation=activation, gate=gate,
                         post_relu=post_relu, backend=backend, dtype=dtype).eval()
    weights = make_inputs(1, c, 1, 1, cr, dtype=dtype, bias=bias, seed=7)
    with torch.no_grad():
        block.fc1.weight.copy_(weights["w1"])
        block.fc2.weight.copy_(weights["w2"])
        if bias:
            block.fc1.bias.copy_(weights["b1"])
            block.fc2.bias.copy_(weights["b2"])
    return block


def block_inputs(n, residual, dtype=torch.float32, seed=0):
    args = make_inputs(n, 24, 5, 7, 6, dtype=dtype, residual=residual, seed=seed)
    return (args["x"],) + ((args["residual"],) if residual else ())


def export_dynamo(model, args, **kwargs):
    """torch.onnx.export (the torch.export-based exporter) with a dynamic batch dimension."""
    batch = torch.export.Dim("batch")
    program = torch.onnx.export(model, args, dynamic_shapes=tuple({0: batch} for _ in args),
                                dynamo=True, verbose=False, **kwargs)
    return program.model_proto


def export_torchscript(model, args, opset_version=None):
    """torch.onnx.export with the TorchScript exporter (dynamo=False), dynamic batch."""
    names = [f"input{i}" for i in range(len(args))]
    buffer = io.BytesIO()
    torch.onnx.export(model, args, buffer, dynamo=False, input_names=names,
                      output_names=["out"], dynamic_axes={n: {0: "batch"} for n in names + ["out"]},
                      opset_version=opset_version)
    return onnx.load_from_string(buffer.getvalue())


def run_onnx(proto, args):
    """The model's first output in ONNX Runtime (CPU) on args."""
    onnx.checker.check_model(proto)
    session = onnxruntime.InferenceSession(proto.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    feeds = {i.name: a.numpy() for i, a in zip(session.get_inputs(), args)}
    assert len(feeds) == len(args)
    return torch.from_numpy(session.run(None, feeds)[0])


def assert_standard_onnx(proto, allowed_ops=None):
    """Only standard-domain ops (no senet_kernels or other custom domain), no local functions."""
    domains = {n.domain for n in proto.graph.node} | {o.domain for o in proto.opset_import}
    assert domains <= {"", "ai.onnx"}, f"non-standard ONNX domains: {domains}"
    assert not proto.functions, [f.name for f in proto.functions]
    ops = {n.op_type for n in proto.graph.node}
    assert not any("se_forward" in op for op in ops), ops
    if allowed_ops is not None:
        assert ops <= allowed_ops, f"unexpected ops {ops - allowed_ops}"
    return ops


def check_block_export(proto, block, dtype=torch.float32, residual=False):
    """Run the exported block with batch 3; compare with PyTorch and the float64 reference."""
    ops = assert_standard_onnx(proto, SE_ONNX_OPS)
    args = block_inputs(3, residual, dtype, seed=11)
    actual = run_onnx(proto, args)
    with torch.no_grad():
        expected = block(*args)
    assert actual.dtype == dtype and actual.shape == expected.shape
    err = rel_err(actual, expected)
    print(f"ONNX Runtime vs PyTorch: {err:.2e}")
    if dtype == torch.float32:
        assert err < FP32_TOL
    weights = {"x": args[0], "w1": block.fc1.weight, "b1": block.fc1.bias,
               "w2": block.fc2.weight, "b2": block.fc2.bias,
               "residual": args[1] if residual else None}
    ref, _ = reference64(weights, activation=block.activation, gate=block.gate,
                         post_relu=block.post_relu)
    assert_close(actual, ref, dtype, "ONNX Runtime vs float64 reference")
    return ops


# --- The decomposition the exporter uses is the op -----------------------------------------

@pytest.mark.parametrize("backend", kernel_backends(CPU))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
@pytest.mark.parametrize("variant", VARIANTS[:2], ids=variant_id)
def test_decomposition_matches_op(backend, dtype, variant):
    """All four outputs (out, pooled, hidden, scale): same shapes and dtypes, same values."""
    act, gate, bias, residual, post_relu = variant
    a = make_inputs(2, 24, 5, 7, 6, dtype=dtype, bias=bias, residual=residual, seed=3)
    args = (a["x"], a["w1"], a["b1"], a["w2"], a["b2"], a["residual"], act, gate, post_relu)
    expected = backend_ops(backend).forward(*args)
    actual = se_forward_decomposition(*args)
    tol_dtype = dtype if dtype != torch.float16 else torch.float32  # the vectors are float32
    for name, e, o in zip(("out", "pooled", "hidden", "scale"), expected, actual):
        assert o.shape == e.shape and o.dtype == e.dtype, name
        assert_close(o, e.double(), dtype if name == "out" else tol_dtype, name)


# --- Single blocks ---------------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS[:4], ids=variant_id)
def test_block_variants(variant):
    act, gate, bias, residual, post_relu = variant
    block = make_block(act, gate, bias, post_relu, "auto")
    proto = export_dynamo(block, block_inputs(2, residual))
    ops = check_block_export(proto, block, residual=residual)
    assert ("HardSigmoid" in ops) == (gate == "hardsigmoid")
    assert ("Gemm" in ops) or ("MatMul" in ops)


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_block_other_backends(backend):
    """The variants above run on backend "auto" (the C++ CPU kernels when built); the op of
    each other backend exports the same way."""
    block = make_block("silu", "hardsigmoid", True, True, backend)
    proto = export_dynamo(block, block_inputs(2, True))
    check_block_export(proto, block, residual=True)


def test_block_float16():
    """Half inputs: computed in float32 between Casts, the output rounded once to float16."""
    block = make_block("relu", "sigmoid", True, True, "auto", dtype=torch.float16)
    proto = export_dynamo(block, block_inputs(2, True, torch.float16))
    ops = check_block_export(proto, block, torch.float16, residual=True)
    assert "Cast" in ops


def test_user_translation_takes_precedence():
    """A custom_translation_table entry for the op is used instead of our decomposition."""
    from onnxscript import opset18 as op

    def se_as_identity(x, w1, b1, w2, b2, residual, activation, gate, post_relu):
        return op.Identity(x), op.Identity(x), op.Identity(x), op.Identity(x)

    block = make_block("relu", "sigmoid", True, False, "auto")
    target = backend_ops("cpu").forward
    program = torch.onnx.export(block, block_inputs(2, False), dynamo=True, verbose=False,
                                custom_translation_table={target: se_as_identity})
    ops = {n.op_type for n in program.model_proto.graph.node}
    assert "Identity" in ops and "Sigmoid" not in ops, ops


# --- torch.export ------------------------------------------------------------------------------

def test_torch_export_keeps_fused_op():
    """torch.export.export still captures (and runs) the fused op; the ONNX exporter also
    accepts its ExportedProgram."""
    block = make_block("silu", "sigmoid", True, True, "auto")
    batch = torch.export.Dim("batch")
    ep = torch.export.export(block, block_inputs(2, True), dynamic_shapes=({0: batch}, {0: batch}))
    fused = backend_ops("cpu").forward
    for program in (ep, ep.run_decompositions()):
        targets = {n.target for n in program.graph.nodes if n.op == "call_function"}
        assert fused in targets, targets
    args = block_inputs(3, True, seed=5)
    with torch.no_grad():
        assert torch.equal(ep.module()(*args), block(*args))
    proto = torch.onnx.export(ep, verbose=False).model_proto
    check_block_export(proto, block, residual=True)


# --- The TorchScript exporter (dynamo=False) -----------------------------------------------

#: Every variant on "auto"'s backend, one on each other backend.
TORCHSCRIPT_CASES = [("auto", v) for v in VARIANTS] + [(b, VARIANTS[1]) for b in OTHER_BACKENDS]


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("backend,variant", TORCHSCRIPT_CASES,
                         ids=lambda p: p if isinstance(p, str) else variant_id(p))
def test_torchscript_exporter(backend, variant):
    """The symbolic registered for the TorchScript exporter. Triton: the eager fast path
    called its kernels past the tracer, which recorded no SE op (the export failed)."""
    act, gate, bias, residual, post_relu = variant
    block = make_block(act, gate, bias, post_relu, backend)
    proto = export_torchscript(block, block_inputs(2, residual))
    check_block_export(proto, block, residual=residual)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("opset", [None, 11, 18])
@pytest.mark.parametrize("param_dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("variant", VARIANTS[:3], ids=variant_id)
def test_torchscript_exporter_float64(variant, param_dtype, opset):
    """float64 inputs (beside float32 or float64 parameters): the exported model runs in ONNX
    Runtime, which has no double GlobalAveragePool or HardSigmoid on the CPU, and parameters
    are cast to the input's precision (the model failed to run before)."""
    act, gate, bias, residual, post_relu = variant
    block = make_block(act, gate, bias, post_relu, "auto", dtype=param_dtype)
    proto = export_torchscript(block, block_inputs(2, residual, torch.float64),
                               opset_version=opset)
    check_block_export(proto, block, torch.float64, residual=residual)


#: The activations besides ReLU and SiLU (VARIANTS): GELU (both forms), hardswish, leaky_relu.
OTHER_ACTIVATIONS = [a for a in ACTIVATIONS if a not in ("relu", "silu")]


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
@pytest.mark.parametrize("activation", OTHER_ACTIVATIONS)
def test_other_activations(activation, exporter):
    """Each exporter's form of the other activations: the dynamo exporter's Gelu / HardSwish,
    the TorchScript symbolic's opset-11 forms (Erf, Tanh, x * HardSigmoid)."""
    block = make_block(activation, "sigmoid", True, True, "auto")
    args = block_inputs(2, True)
    export = export_dynamo if exporter == "dynamo" else export_torchscript
    check_block_export(export(block, args), block, residual=True)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_exporter_float64_hardswish():
    """hardswish in float64: its hard-sigmoid takes the Min / Max / Div form too."""
    block = make_block("hardswish", "hardsigmoid", True, False, "auto", dtype=torch.float64)
    proto = export_torchscript(block, block_inputs(2, False, torch.float64))
    check_block_export(proto, block, torch.float64, residual=False)


# --- Whole networks ------------------------------------------------------------------------

def check_network(model, shape):
    """Export with batch 2, run with batch 3: ONNX Runtime vs PyTorch, fp32."""
    gen = torch.Generator().manual_seed(0)
    proto = export_dynamo(model, (torch.randn(2, *shape, generator=gen),))
    assert_standard_onnx(proto)
    x = torch.randn(3, *shape, generator=gen)
    actual = run_onnx(proto, (x,))
    with torch.no_grad():
        expected = model(x)
    err = rel_err(actual, expected)
    print(f"ONNX Runtime vs PyTorch: {err:.2e}")
    assert err < FP32_TOL


def count_fused(model):
    return sum(isinstance(m, FusedSEBlock) for m in model.modules())


def test_se_resnet18():
    """Our SE-ResNet: every SE fused with its residual add and ReLU."""
    torch.manual_seed(0)
    model = models.se_resnet18().eval()
    assert count_fused(model) == 8
    check_network(model, (3, 32, 32))


def test_timm_seresnet18_converted():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("seresnet18", pretrained=False).eval()
    assert convert_se_modules(model) == 8
    check_network(model, (3, 32, 32))


def test_torchvision_mobilenet_v3_small_converted():
    """torchvision's SqueezeExcitation: ReLU activation and hardsigmoid gate."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(weights=None).eval()
    assert convert_se_modules(model) == 9
    check_network(model, (3, 64, 64))


@pytest.mark.parametrize("activation", ["relu", "hardswish"])
@pytest.mark.parametrize("param_dtype", [torch.float32, torch.float64])
def test_dynamo_exporter_float64_hardsigmoid(activation, param_dtype):
    """The default exporter with a float64 input and the hard-sigmoid gate: ONNX Runtime has
    no double HardSigmoid on the CPU, so float64 graphs compute it as the reference does,
    (z + 3).clamp(0, 6) / 6 (the model failed to load before)."""
    block = make_block(activation, "hardsigmoid", True, True, "auto", dtype=param_dtype)
    args = block_inputs(2, True, torch.float64)
    check_block_export(export_dynamo(block, args), block, torch.float64, residual=True)
