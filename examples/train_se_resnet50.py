"""SE-ResNet-50 training steps on synthetic data, fused SE kernels beside the eager reference.

A thin wrapper of the training command (``python -m senet_kernels train``, the package
``senet_kernels.train``): it trains the same network from the same weights on the same
synthetic images twice, with the fused SE kernels (backend "auto": the C++ kernels on the
CPU, Triton on a GPU) and with the eager PyTorch reference, and prints the training images/s
of both. The first epoch (``--steps`` steps) warms up; the second is timed. On a GPU the
command trains in bfloat16 autocast with channels_last tensors.

    python examples/train_se_resnet50.py                      # CPU: batch 8, 64x64, 3 steps
    python examples/train_se_resnet50.py --batch-size 64 --image-size 224 --steps 20

For real training (ImageFolder data, many GPUs, checkpoints) use the command itself, see
docs/training.md.
"""

import argparse
import tempfile

import torch

from senet_kernels.backends import resolve_backend
from senet_kernels.train import parse_args as parse_train_args
from senet_kernels.train import train


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="se_resnet50")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=64, help="square inputs, >= 32")
    parser.add_argument("--steps", type=int, default=3, help="warm-up steps, then timed steps")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def train_twice(args, backend):
    """(log entry of the warm-up epoch, of the timed epoch) of one backend's run."""
    with tempfile.TemporaryDirectory() as output:
        argv = ["--synthetic", "--model", args.model, "--backend", backend,
                "--num-classes", str(args.classes), "--image-size", str(args.image_size),
                "--batch-size", str(args.batch_size),
                "--synthetic-size", str(args.batch_size * args.steps), "--epochs", "2",
                "--seed", str(args.seed), "--workers", "0", "--output", output]
        if args.device:
            argv += ["--device", args.device]
        return train(parse_train_args(argv))


def main():
    args = parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    fused = resolve_backend("auto", torch.empty(0, device=device))
    results = {f"fused ({fused})": train_twice(args, "auto"),
               "reference": train_twice(args, "reference")}
    print(f"{args.model} training on {device}, batch {args.batch_size}, "
          f"{args.image_size}x{args.image_size}, {args.steps} warm-up + {args.steps} timed steps")
    print(f"{'SE backend':<20} {'training images/s':>20}  mean loss (warm-up, timed epoch)")
    for name, (warm, timed) in results.items():
        print(f"{name:<20} {timed['images_per_s']:>20.1f}  {warm['loss']:.4f} {timed['loss']:.4f}")
    (_, fused_timed), (_, reference_timed) = results.values()
    speed_up = fused_timed["images_per_s"] / reference_timed["images_per_s"]
    print(f"{'speed-up':<20} {speed_up:>19.2f}x")


if __name__ == "__main__":
    main()
