#!/usr/bin/env bash
# The one-call check for a lent GPU (see README): build, test on the GPU, benchmark, record.
#
#   bash benchmarks/gpu_check.sh            # results in benchmarks/results/<date>-<gpu>/ and $OUT
#
# Made for the lent machines: torch 2.11, triton 3.6, nvcc 13.0, no internet (nothing is
# installed from the network; tests that need timm/torchvision are skipped when those are
# missing). Expected to take about 6-7 minutes on an H100. Steps, each timed, each allowed to
# fail without stopping the later ones (the exit status is 1 if any failed):
#   1. build the extension for this GPU only (TORCH_CUDA_ARCH_LIST = its capability)
#   2. the kernel tests on the GPU (Triton, CUDA and C++ CPU backends vs the float64 reference)
#   3. python -m senet_kernels bench --sizes gpu, bf16 and fp32, NCHW and channels_last
#   4. a markdown summary; the short table is printed last
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
  tests/test_extension.py tests/test_triton_dispatch.py tests/test_compile.py
step "kernel bench" python -m senet_kernels bench --sizes gpu --dtype bfloat16 float32 \
  --layout nchw channels_last --min-run-time 0.1 --no-progress \
  --json "$results/kernels.json" --plot "$results/kernels.png"
echo "== model bench: not part of this script yet (the SE-ResNet-50 model benchmark is still to be written)" | tee -a "$log"
step "summary" python - "$results" <<'PY'
import json, sys
from senet_kernels.bench import format_table, summary
results = sys.argv[1]
result = json.load(open(f"{results}/kernels.json"))
with open(f"{results}/summary.md", "w") as f:
    f.write(f"# GPU check, {result['device']}, {result['date']}\n\n")
    f.write("```\n" + summary(result) + "\n```\n\n" + format_table(result) + "\n")
print(summary(result))
PY
if [ -n "${OUT:-}" ]; then
  cp "$results"/* "$OUT"/ 2>/dev/null || true
fi
echo "results in $results (status $status)"
exit $status
