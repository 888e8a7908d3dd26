#!/usr/bin/env bash
# Training throughput of the train command on one GPU, under torchrun (DDP, NCCL): timm's
# seresnet50 with its own SE modules (--backend eager), the same model with fused SE blocks,
# and our se_resnet50 (SE + residual + ReLU fused). Synthetic 224 px images, batch 128, bf16
# autocast, channels_last (the GPU defaults). Three epochs of 8 steps; the last epoch's
# images/s counts (the first ones compile kernels and warm up cuDNN).
#
#   bash benchmarks/train_throughput.sh OUT.json      # GPU only; about 1-2 minutes
set -euo pipefail
out=${1:?usage: train_throughput.sh OUT.json}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
for run in "seresnet50 eager" "seresnet50 auto" "se_resnet50 auto"; do
  set -- $run
  torchrun --standalone --nproc_per_node=1 -m senet_kernels train --synthetic --model "$1" \
    --backend "$2" --num-classes 1000 --batch-size 128 --synthetic-size 1024 --epochs 3 \
    --workers 8 --no-eval --no-progress --output "$dir/$1-$2"
done
python - "$dir" "$out" <<'PY'
import json, os, sys
runs, out = sys.argv[1:]
rows = []
for name in sorted(os.listdir(runs)):
    with open(os.path.join(runs, name, "log.jsonl")) as f:
        last = [json.loads(line) for line in f][-1]
    rows.append({"run": name, "images_per_s": last["images_per_s"], "epoch": last["epoch"]})
    print(f"train {name:>20}: {last['images_per_s']:7.0f} img/s (epoch {last['epoch']})")
with open(out, "w") as f:
    json.dump({"rows": rows}, f, indent=1)
PY
