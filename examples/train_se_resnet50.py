"""SE-ResNet-50 with fused SE blocks: inference and a few training steps on synthetic data.

Runs the same network twice, with the fused SE kernels (backend "auto": the C++ kernels on
CPU, Triton on a GPU) and with the eager PyTorch reference, and prints images/s for both.
On a GPU it trains in bfloat16 autocast with channels_last tensors, as one would there.

    python examples/train_se_resnet50.py                      # CPU: batch 8, 64x64, 3 steps
    python examples/train_se_resnet50.py --batch-size 64 --image-size 224 --steps 20

The data are random images with random labels: the point is the speed and that training
runs, not what it learns. Needs tqdm (``pip install tqdm``) besides this package.
"""

import argparse
import copy
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from senet_kernels.backends import resolve_backend
from senet_kernels.models import se_resnet50


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=64, help="square inputs, >= 32")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per measurement")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device):
    # bfloat16 autocast on the GPU (no loss scaling needed); plain float32 on the CPU.
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def images_per_second(step, steps, batch_size, device, description):
    """Run ``step`` once untimed (first-call costs: kernel compilation, allocator warm-up),
    then ``steps`` times under a progress bar; returns the timed throughput."""
    step()
    synchronize(device)
    start = time.perf_counter()
    for _ in tqdm(range(steps), desc=description, unit="step", leave=False):
        step()
    synchronize(device)
    return steps * batch_size / (time.perf_counter() - start)


def measure(model, images, labels, args, device, name):
    """(inference images/s, training images/s) of ``model``; trains it in place."""
    def infer():
        with torch.inference_mode(), autocast(device):
            model(images)

    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = []

    def train():
        optimizer.zero_grad(set_to_none=True)
        with autocast(device):
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())

    model.eval()
    inference = images_per_second(infer, args.steps, args.batch_size, device,
                                  f"{name} inference")
    model.train()
    training = images_per_second(train, args.steps, args.batch_size, device,
                                 f"{name} training")
    return inference, training, losses


def main():
    args = parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(args.seed)
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    images = images.contiguous(memory_format=memory_format)
    labels = torch.randint(0, args.classes, (args.batch_size,), device=device)

    fused = se_resnet50(num_classes=args.classes).to(device, memory_format=memory_format)
    # The reference starts from the same weights, so both train the same network.
    reference = copy.deepcopy(fused).set_backend("reference")
    fused_backend = resolve_backend("auto", images)

    with torch.no_grad():
        fused.eval(), reference.eval()
        difference = (fused(images) - reference(images)).abs().max().item()

    results = {}
    for name, model in ((f"fused ({fused_backend})", fused), ("reference", reference)):
        results[name] = measure(model, images, labels, args, device, name)

    print(f"SE-ResNet-50 on {device} ({torch.get_num_threads()} CPU threads), batch "
          f"{args.batch_size}, {args.image_size}x{args.image_size}, {args.steps} timed steps"
          + (", bf16 autocast, channels_last" if device.type == "cuda" else ", float32"))
    print(f"max |fused - reference| logits before training: {difference:.3g}")
    print(f"{'SE backend':<20} {'inference images/s':>20} {'training images/s':>20}  "
          "losses (warm-up step first)")
    for name, (inference, training, losses) in results.items():
        print(f"{name:<20} {inference:>20.1f} {training:>20.1f}  "
              + " ".join(f"{loss:.3f}" for loss in losses))
    (fused_inf, fused_train, _), (ref_inf, ref_train, _) = results.values()
    print(f"{'speed-up':<20} {fused_inf / ref_inf:>19.2f}x {fused_train / ref_train:>19.2f}x")


if __name__ == "__main__":
    main()
