#!/usr/bin/env bash
# The one-call check for a lent GPU (see README): build, test on the GPU, benchmark, record.
#
#   bash benchmarks/gpu_check.sh            # results in benchmarks/results/<date>-<gpu>/ and $OUT
#
# Made for the lent machines: torch 2.11, triton 3.6, nvcc 13.0, no internet (nothing is
# installed from the network; tests that need timm/torchvision are skipped when those are
# missing). Not yet run on a GPU: the time is an estimate, 7-10 minutes on an H100 (most of it
# Triton and inductor compilation), so give it a 10-minute limit. Steps, each timed, each allowed to
# fail without stopping the later ones (the exit status is 1 if any failed):
#   1. build the extension for this GPU only (TORCH_CUDA_ARCH_LIST = its capability)
#   2. the kernel tests on the GPU (Triton, CUDA and C++ CPU backends vs the float64 reference)
#   3. python -m senet_kernels bench --sizes gpu, bf16 and fp32, NCHW and channels_last
#   4. benchmarks/model_bench.py: ResNet-50 vs SE-ResNet-50, batch 128, bf16, channels_last
#   5. a markdown summary; the short table is printed last
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1 | tr -c 'A-Za-z0-9\n' '-' | tr -s '-')
results="benchmarks/results/$(date +%Y-%m-%d)-${gpu}"
mkdir -p "$results"
log="$results/gpu_check.log"
status=0
step() {  # step NAME COMMAND...: run, time and log one step
  local name=$1; shift
  local start=$SECONDS
  echo "== $name" | tee -a "$log"
  if "$@" 2>&1 | tee -a "$log"; then
    echo "== $name: ok ($((SECONDS - start)) s)" | tee -a "$log"
  else
    echo "== $name: FAILED ($((SECONDS - start)) s)" | tee -a "$log"
    status=1
  fi
}

cap=$(python -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
step "versions" python -c "import torch, triton, platform; print('torch', torch.__version__, 'triton', triton.__version__, 'python', platform.python_version(), 'gpu', torch.cuda.get_device_name())"
step "build (sm ${cap})" env TORCH_CUDA_ARCH_LIST="$cap" MAX_JOBS=16 \
  pip install --no-build-isolation --no-deps -e .
step "tests on the GPU" python -m pytest -q -p no:cacheprovider \
  tests/test_correctness.py tests/test_gradcheck_opcheck.py tests/test_validation.py \
  tests/test_extension.py tests/test_triton_dispatch.py tests/test_compile.py \
  -k "not aot_compile"  # the GPU compiles every kernel it runs; no need to compile ahead too
step "kernel bench" python -m senet_kernels bench --sizes gpu --dtype bfloat16 float32 \
  --layout nchw channels_last --min-run-time 0.1 --no-progress \
  --json "$results/kernels.json" --plot "$results/kernels.png"
step "model bench" python benchmarks/model_bench.py --batch 128 --dtype bfloat16 --channels-last \
  --min-run-time 0.3 --json "$results/models.json"
step "summary" python - "$results" <<'PY'
import json, os, sys
from senet_kernels.bench import format_table, summary
results = sys.argv[1]
result = json.load(open(f"{results}/kernels.json"))
models = []
if os.path.exists(f"{results}/models.json"):
    models = [f"{r['mode']:>10} {r['impl']:>14}: SE overhead {r['se_overhead']:+.1%}, "
              f"SE-ResNet-50 {r['images_per_s']:.0f} img/s" for r in json.load(open(f"{results}/models.json"))["rows"]]
with open(f"{results}/summary.md", "w") as f:
    f.write(f"# GPU check, {result['device']}, {result['date']}\n\n")
    f.write("```\n" + summary(result) + "\n" + "\n".join(models) + "\n```\n\n" + format_table(result) + "\n")
print(summary(result))
print("\n".join(models))
PY
if [ -n "${OUT:-}" ]; then
  cp "$results"/* "$OUT"/ 2>/dev/null || true
fi
echo "results in $results (status $status)"
exit $status
