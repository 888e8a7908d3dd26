#!/usr/bin/env bash
# The one-call check for a lent GPU (see docs/verification.md and docs/benchmarks.md): build, test on the GPU, benchmark, record.
#
#   bash benchmarks/gpu_check.sh            # results in benchmarks/results/<date>-<gpu>[-N]/ and $OUT
#
# Made for the lent machines: torch 2.11, triton 3.6, nvcc 13.0, timm, 16 cores, no internet
# (nothing is installed from the network). Each step has its own time limit, so a hung step
# cannot eat the lease, and may fail without stopping the later ones (the exit status is 1 if
# any failed). The whole script keeps to GPU_CHECK_BUDGET seconds (default 360): a step's
# limit is cut to what is left of it (less what the summary needs), and a step with under
# 15 s left is skipped and says so, so the summary is always written and a device command's
# own limit never cuts the run short. GPU_CHECK_SKIP is a bash regular expression: the steps
# whose names match it are skipped (e.g. "model bench|train", to spend a short lease on the
# rest). The steps come in order of what a run must answer:
#   1. build the extension for this GPU only, in the background while this GPU's tuning is
#      measured (triton/tuning.py; benchmarks/tune.py --measure): the reductions' bandwidth
#      with each candidate tile and the squeeze_fc1 tiles, against the defaults, pick the
#      tiles; GPU time per kernel on the weight-heavy shapes, batched and squeeze_fc1 paths,
#      with those tiles, picks the path. The results folder's tuning.json is what every later
#      step runs with (SENET_KERNELS_TUNING): copied to senet_kernels/triton/tuned/<gpu>.json,
#      it is what this GPU model ships with.
#   2. the Triton tests (pytest -n 12; each failure logged as it happens)
#   3. one rejected extension call per device, each in its own process (its checks crashed)
#   4. the main job, python -m senet_kernels bench --sizes gpu, cold (its wall time is recorded),
#      the BatchNorm + SE cases included
#   5. benchmarks/model_bench.py: networks at batch 128, bf16, channels_last, CUDA graphs too,
#      then torch.compile inference of ResNet-50 and timm seresnet50 as is and converted
#   6. the CUDA extension's tests and the rest
#   7. the batched path with the FC1 GEMM split 1-16 ways (kernel_breakdown.py --sweep-k-splits)
#   8. benchmarks/host_overhead.py, benchmarks/model_host_profile.py, benchmarks/excitation_paths.py,
#      benchmarks/train_throughput.sh (the train command under torchrun on one GPU)
#   9. summary.md; the short summary is printed last
# At most 8 files are written to the results folder (and copied to $OUT): the main job's plot
# is not among them (senet_kernels.bench.plot draws it from kernels.json on any machine).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
# The benchmark scripts import the package; from the source tree, so that they still run when
# the editable install (it builds the extension) failed.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1 | tr -c 'A-Za-z0-9\n' '-' | tr -s '-')
# A fresh folder per run: an earlier run's folder of the same day and GPU gets a -2, -3, ...
# sibling, so that no file of that run (a step skipped this time) passes for this one's.
base="benchmarks/results/$(date +%Y-%m-%d)-${gpu}"
results=$base
run=1
while [ -e "$results" ]; do run=$((run + 1)); results="$base-$run"; done
mkdir -p "$results"
log="$results/gpu_check.log"
: > "$log"
status=0
declare -A took
budget=${GPU_CHECK_BUDGET:-360}
skipped=()
summary_reserve=20  # the summary step's own limit
# A step's processes carry GPU_CHECK_STEP=<tag> in their environment, and whatever still
# carries it when the step ends is killed: timeout signals the step's process group, and a
# process that left it (a daemon, a crashed test's helper) would otherwise run on beside the
# next step's timings.
stop_leftovers() {  # stop_leftovers TAG NAME
  local pids
  pids=$(grep -l -a "GPU_CHECK_STEP=$1" /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3)
  if [ -n "$pids" ]; then
    echo "== $2: stopping $(echo $pids | wc -w) leftover process(es)" | tee -a "$log"
    kill -9 $pids 2>/dev/null || true
    sleep 1
  fi
}
skip_step() {  # skip_step NAME WHY: log and record a step that does not run
  echo "== $1: SKIPPED ($2)" | tee -a "$log"
  skipped+=("$1")
  took[$1]=0
}
step() {  # step NAME LIMIT_SECONDS COMMAND...: run with a time limit, time and log it
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  if [ -n "${GPU_CHECK_SKIP:-}" ] && [[ "$name" =~ $GPU_CHECK_SKIP ]]; then
    skip_step "$name" "matches GPU_CHECK_SKIP"
    return
  fi
  if [ "$name" != "summary" ]; then
    local left=$((budget - SECONDS - summary_reserve))
    if [ "$left" -lt 15 ]; then
      skip_step "$name" "${left}s left of the ${budget}s budget"
      return
    fi
    [ "$left" -lt "$limit" ] && limit=$left
  fi
  echo "== $name (limit ${limit}s)" | tee -a "$log"
  local tag="gpu_check_step_${SECONDS}_$RANDOM"
  if GPU_CHECK_STEP="$tag" timeout "$limit" "$@" 2>&1 | tee -a "$log"; then
    echo "== $name: ok ($((SECONDS - start)) s)" | tee -a "$log"
  else
    echo "== $name: FAILED ($((SECONDS - start)) s)" | tee -a "$log"
    status=1
  fi
  stop_leftovers "$tag" "$name"
  took[$name]=$((SECONDS - start))
  if [ -n "${OUT:-}" ]; then cp "$results"/* "$OUT"/ 2>/dev/null || true; fi  # each step's files, at once
}

cap=$(python -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
step "versions" 30 python -c "import torch, triton, platform; print('torch', torch.__version__, 'triton', triton.__version__, 'python', platform.python_version(), 'gpu', torch.cuda.get_device_name())"

build_log=$(mktemp)
build_start=$SECONDS
# pip as `python -m pip`: the `pip` on the H200's PATH is the system's, whose build subprocess
# has no torch (two runs failed so). If the editable install fails anyway, build in place with
# setup.py: PYTHONPATH (above) makes the in-place extension importable.
( TORCH_CUDA_ARCH_LIST="$cap" MAX_JOBS=16 timeout 150 \
    python -m pip install --no-build-isolation --no-deps -e . > "$build_log" 2>&1
  rc=$?
  if [ $rc != 0 ]; then
    echo "== pip install -e . failed (rc $rc); python setup.py build_ext --inplace" >> "$build_log"
    TORCH_CUDA_ARCH_LIST="$cap" MAX_JOBS=16 timeout 150 \
      python setup.py build_ext --inplace >> "$build_log" 2>&1
    rc2=$?
    [ $rc2 != 0 ] && rc=$rc2 || rc="0 (pip failed with $rc; setup.py build_ext --inplace worked)"
  fi
  echo "$rc" > "$build_log.rc" ) &
build_pid=$!

# This GPU's tuning (benchmarks/tune.py --measure), while the extension builds: the
# reduction-tile and squeeze_fc1-tile sweeps against the defaults (kernel_breakdown.py
# --sweep-reduce-tiles, --sweep-squeeze-fc1), then each kernel's GPU time on the
# weight-heavy shapes, batched (c_to_r split over K and not) and squeeze_fc1, with the tiles
# just chosen (kernel_breakdown.py; its last lines: squeeze_fc1 against batched), then the
# map size up to which squeeze_fc1 is taken. It writes the tiles as soon as it has them.
# 8 processes first compile the kernels of the sweeps' 83 jobs (tile x shape) into Triton's
# cache: compiled one after another, at ~1-2 s each, they would take most of the step's limit
# (an estimate; the split of this step's time is in the log).
tuning_file="$results/tuning.json"
step "tune: sweeps and kernel breakdown" 240 python benchmarks/tune.py --measure --batch 256 \
  --calls 10 --warm-workers 8 --out "$tuning_file"
if [ -f "$tuning_file" ]; then
  export SENET_KERNELS_TUNING="$PWD/$tuning_file"
  echo "== every later step runs with $tuning_file:" | tee -a "$log"
  python -c "import sys; from senet_kernels.triton import tuning; print(tuning.describe(tuning.load(sys.argv[1])))" \
    "$tuning_file" 2>&1 | tee -a "$log"
else
  echo "== no tuning measured: later steps run with the shipped one or the defaults" | tee -a "$log"
fi

# The GPU-relevant test files. Not the hypothesis property test: on a GPU each of its
# examples compiles kernels of its own, and the Triton step ran past 150 s with it.
tests="tests/test_correctness.py tests/test_gradcheck_opcheck.py tests/test_call_paths.py tests/test_triton_dispatch.py tests/test_compile.py tests/test_validation.py tests/test_nan_semantics.py tests/test_double_backward.py tests/test_threads.py tests/test_variant_codes.py tests/test_residual_tail.py tests/test_dot_precision.py tests/test_squeeze_fc1.py tests/test_tuning.py tests/test_func_transforms.py tests/test_bn_triton.py tests/test_bn_properties.py"
# -v with the PASSED lines dropped: a failure is logged as it happens, so a step cut by its
# limit still names its failures (pytest's own summary comes only at the end). A worker that
# crashes is restarted at most twice.
pytest_step() {  # pytest_step NAME LIMIT ENV-ASSIGNMENT-OR-EMPTY PYTEST-ARGS...
  local name=$1 limit=$2 assign=$3; shift 3
  step "$name" "$limit" env ${assign:+"$assign"} bash -c 'python -m pytest -v -n 12 -p no:cacheprovider --max-worker-restart=2 -rfE "$@" 2>&1 | grep -v -E " PASSED |PytestBenchmarkWarning|warner\(" ; exit ${PIPESTATUS[0]}' pytest "$@"
}
# the extension stays unloaded here: it appears mid-run, and test collection must not change
pytest_step "tests: triton (while the extension builds)" 150 SENET_KERNELS_DISABLE_EXTENSION=1 \
  $tests -k "triton and not aot"
wait "$build_pid"
echo "== build (sm ${cap}): rc $(cat "$build_log.rc") after $((SECONDS - build_start)) s" | tee -a "$log"
if [ "$(cut -c1 "$build_log.rc")" = 0 ]; then
  if grep -q "^== pip install -e . failed" "$build_log"; then  # keep the story of pip's failure
    grep -n -B 3 -A 12 -E "error:|Error|FAILED" "$build_log" | head -n 80 | tee -a "$log"
  fi
  tail -n 3 "$build_log" | tee -a "$log"
else  # the whole story of a failed build: its error lines with context, and the end
  status=1
  grep -n -B 3 -A 12 -E "error|Error|FAILED" "$build_log" | head -n 150 | tee -a "$log"
  tail -n 20 "$build_log" | tee -a "$log"
fi
# The extension's argument checks crashed the test processes on an H200 (segmentation faults
# where they raise): one rejected call per device, each in its own process, and the C++
# runtime the extension links to.
step "extension: a rejected argument on cpu, then cuda" 40 python - <<'PY'
import glob, subprocess, sys
code = """
import sys, torch
from senet_kernels.backends import load_extension
module, why = load_extension()
print("extension:", why or "loaded", flush=True)
dev = sys.argv[1]
x = torch.randn(2, 6, 3, 4, device=dev)
w1, w2 = torch.randn(3, 6, device=dev), torch.randn(6, 3, device=dev)
try:
    torch.ops.senet_kernels.se_forward_ext(x[0], w1, None, w2, None, None, "relu", "sigmoid", False)
    print(dev, "no error raised")
except Exception as e:
    print(dev, "raised", type(e).__name__, str(e).splitlines()[0][:120])
"""
for dev in ("cpu", "cuda"):
    r = subprocess.run([sys.executable, "-X", "faulthandler", "-c", code, dev],
                       capture_output=True, text=True)
    print(f"{dev}: exit {r.returncode}\n{r.stdout.strip()}\n{r.stderr.strip()[-800:]}", flush=True)
# The cause on the H200: CXX is a g++ wrapper whose library path has only libstdc++.a, so
# the extension carried a static C++ runtime of its own (setup.py now links the shared one).
for so in glob.glob("senet_kernels/_C*.so"):
    r = subprocess.run(["bash", "-c", f"echo CXX=$CXX; readelf -d {so} | grep -o 'libstdc++[^]]*'; "
                                      f"nm -D --defined-only {so} | grep -c __cxa_throw"],
                       capture_output=True, text=True)
    print(so, "(CXX, the libstdc++ it needs, how many __cxa_throw it defines: 0 wanted)\n" + r.stdout)
PY
# The main job as a user's first run: empty Triton and Inductor caches (the steps above
# compiled some of the same kernels), so its wall time includes every compilation; its
# summary names the cases it left untimed. Its 40 SE cases come first, then 16 BatchNorm +
# SE cases (SE-ResNet's bn3 absorbed into the fused op; 4 more compile groups for the
# workers): for those, a 75 s budget instead of the default 50 s and a limit 25 s longer,
# at most 25 s more of this run. SENET_KERNELS_TRITON_BN=1: the BatchNorm + SE op's Triton
# kernels, which backend="auto" leaves off until a GPU run has passed their tests (the test
# step above), run in the bn_fused rows here and in the converted models below
# (senet_kernels/bn_functional.py, TRITON_BN_BY_DEFAULT).
bench_start=$SECONDS
step "main job: bench --sizes gpu" 145 env SENET_KERNELS_TRITON_BN=1 TRITON_CACHE_DIR="$(mktemp -d)" \
  TORCHINDUCTOR_CACHE_DIR="$(mktemp -d)" python -m senet_kernels bench --sizes gpu \
  --dtype bfloat16 --layout channels_last nchw --budget 75 --no-progress \
  --json "$results/kernels.json"
echo "== main job wall time: $((SECONDS - bench_start)) s" | tee -a "$log"
# The model bench (the headline: SE overhead in whole networks; measured in two runs
# already, so after the never-finished main job) before the extension's tests, on an
# otherwise idle machine (the main job's workers are gone). Since the BatchNorm rows, it
# also times timm seresnet50 converted with fuse_bn=False and ResNet-50 with conv + BN
# folded (inference), then, last, torch.compile inference of ResNet-50 and timm seresnet50
# as is and converted (Inductor compiles each for tens of seconds; rows reach the JSON one
# by one, so the limit cuts those first): the limit is 60 s longer, at most 60 s more.
step "model bench" 210 env SENET_KERNELS_TRITON_BN=1 python benchmarks/model_bench.py --batch 128 \
  --dtype bfloat16 --channels-last \
  --cuda-graphs --compile inference --min-run-time 0.3 --json "$results/models.json"
pytest_step "tests: cuda extension and the rest" 120 "" $tests tests/test_extension.py \
  tests/test_extension_checks.py tests/test_modules.py -k "not triton and not aot"
# The FC1 GEMM split 1-16 ways (the dispatcher picks at most 8): the batched path's other
# lever on the 2048x7x7 forward.
step "K-split sweep" 45 python benchmarks/kernel_breakdown.py --batch 256 --calls 10 \
  --sweep-k-splits
step "host overhead" 60 python benchmarks/host_overhead.py --calls 200 --repeats 5 --json "$results/host_overhead.json"
# Why converted EfficientNet-B0 was slower in eager mode (host time in its SE modules, launches,
# waits for the GPU); the log keeps it.
step "model host profile" 45 python benchmarks/model_host_profile.py --model efficientnet_b0 \
  --batch 128 --backend triton --calls 5
# Where the traffic model's choice matters (C >= 512 and EfficientNet-B0's late SE), channels_last
# (the whole table did not fit in 90 s cold); rows reach the JSON one by one.
step "excitation paths" 90 python benchmarks/excitation_paths.py --batch 256 --rep-ms 5 \
  --layout channels_last --channels 512 1024 2048 240 672 1152 --json "$results/excitation_paths.json"
step "train throughput (DDP, 1 GPU)" 150 bash benchmarks/train_throughput.sh "$results/train.json"

step "summary" 30 python - "$results" "$log" <<'PY'
import json, os, re, sys
import torch
sys.path.insert(0, ".")
from senet_kernels.bench import format_table, summary
results, log = sys.argv[1], sys.argv[2]
lines = open(log, errors="replace").read().splitlines()
# each step's outcome and the tests that failed, named once each (the log has the details)
steps = [l[m.start():] for l in lines
         for m in [re.search(r"== ([^=]*(: ok \(|: FAILED \(|: SKIPPED|wall time:)|build \()", l)] if m]
failed = sorted({m.group(1) for l in lines
                 for m in [re.search(r"FAILED (tests/[^\[\s]+(\[([^\[\]]|\[[^\[\]]*\])*\])?)", l)] if m})
parts = ["\n".join(steps)]
if failed:
    parts.append(f"{len(failed)} failed tests:\n" + "\n".join(failed))
def load(name):
    path = os.path.join(results, name)
    return json.load(open(path)) if os.path.exists(path) else None
from senet_kernels.triton import tuning
if os.path.exists(os.path.join(results, "tuning.json")):
    parts.append("tuning measured (tuning.json): "
                 + tuning.describe(tuning.load(os.path.join(results, "tuning.json"))))
kernels = load("kernels.json")
if kernels:
    parts.append("kernel bench (wall-time speedups, GPU-time floor fractions):\n" + summary(kernels))
models = load("models.json")
if models:
    parts.append("\n".join(f"{r['network']:>40} {r['variant']:>10} {r['mode']:>10}: {r['ms']:8.2f} ms "
                           f"{r['images_per_s']:7.0f} img/s"
                           + (f" host {r['host_ms']:6.2f} ms" if r.get("host_ms") is not None else "")
                           + (f"  SE overhead {r['se_overhead']:+.1%}" if r.get("se_overhead") is not None else "")
                           for r in models["rows"]))
host = load("host_overhead.json")
if host:
    parts.append("\n".join(f"host time {r['impl']:>7} {r['pass_name']:>8}: {r['host_us']:7.1f} us "
                           f"({r['host_vs_eager']:.2f}x eager), GPU {r.get('gpu_us', 0):.1f} us"
                           for r in host["rows"]))
train = load("train.json")
if train:
    parts.append("\n".join(f"train {r['run']:>20}: {r['images_per_s']:7.0f} img/s" for r in train["rows"]))
paths = load("excitation_paths.json")
if paths:
    worst = max(paths["rows"], key=lambda r: r["pick_vs_best"])
    parts.append(f"traffic model: worst pick {worst['pick_vs_best']:.2f}x the best path "
                 f"({worst['family']} {worst['shape']} {worst['layout']} {worst['pass_name']})")
text = "\n\n".join(parts)
with open(os.path.join(results, "summary.md"), "w") as f:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    f.write(f"# GPU check, {device}, torch {torch.__version__}\n\n")
    f.write("```\n" + text + "\n```\n\n")
    if kernels:
        f.write(format_table(kernels) + "\n")
print(text)
PY
for name in "${!took[@]}"; do echo "step time: $name ${took[$name]} s"; done | tee -a "$log"
[ ${#skipped[@]} -gt 0 ] && echo "skipped (time budget or GPU_CHECK_SKIP): ${skipped[*]}" | tee -a "$log"
if [ -n "${OUT:-}" ]; then
  cp "$results"/* "$OUT"/ 2>/dev/null || true
fi
echo "results in $results (status $status)"
exit $status
