"""CPU benchmark: the C++ CPU backend vs eager PyTorch vs torch.compile (inductor, CPU).

    python benchmarks/cpu_bench.py [--json PATH] [--plot PATH] [--min-run-time S]

The same as ``python -m senet_kernels bench --sizes cpu --skip-check``: SE-ResNet-50 stage
shapes (and EfficientNet-B0 SE shapes) at batch 8, fp32, NCHW and channels_last; plain SE
forward, SE + residual + ReLU forward, forward + backward. See senet_kernels/bench.py.
"""

import sys

from senet_kernels.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--sizes", "cpu", "--skip-check", *sys.argv[1:]]))
