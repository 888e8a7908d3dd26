"""pytest-benchmark suite of the SE op, kept out of the default test run (tests/ only):

    python -m pytest benchmarks -q --benchmark-only [--benchmark-json out.json]

One benchmark per (implementation, SE-ResNet-50 stage, pass): every kernel backend that
serves the device here (C++ "cpu" on the CPU; "triton" and "cuda" on a GPU), eager PyTorch (the
SE block as timm runs it) and torch.compile of it. Batch 8 on the CPU, 64 on a GPU; fp32 on the CPU, bf16 channels_last on a GPU.
"""

import pytest
import torch

from senet_kernels.baselines import eager_se
from senet_kernels.bench import (allow_recompiles, backend_fn, compiled_baseline, make_step,
                                 timed_backends)
from senet_kernels.testing import make_inputs

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ON_GPU = DEVICE.type == "cuda"
STAGES = [(256, 56), (512, 28), (1024, 14), (2048, 7)]
IMPLS = timed_backends(DEVICE) + ["eager", "compile"]
allow_recompiles()  # one compiled function serves every case
_compiled = compiled_baseline()


def _impl(name):
    if name == "eager":
        return eager_se
    if name == "compile":
        return _compiled
    return backend_fn(name)


@pytest.mark.parametrize("pass_name", ["fwd", "res_relu_fwd", "fwd_bwd"])
@pytest.mark.parametrize("stage", STAGES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("impl", IMPLS)
def test_se_block(benchmark, impl, stage, pass_name):
    c, hw = stage
    inputs = make_inputs(64 if ON_GPU else 8, c, hw, hw, c // 16,
                         dtype=torch.bfloat16 if ON_GPU else torch.float32,
                         channels_last=ON_GPU, residual=True, device=DEVICE, seed=c, draw_on_device=True)
    tensors = [inputs[k] for k in ("x", "w1", "b1", "w2", "b2", "residual")]
    backward = pass_name == "fwd_bwd"
    if backward:
        tensors = [t.requires_grad_() for t in tensors]
    step = make_step(_impl(impl), tensors, "relu", pass_name != "fwd", backward)
    step()  # warm-up, compilation

    def run():
        step()
        if ON_GPU:
            torch.cuda.synchronize()

    benchmark(run)
