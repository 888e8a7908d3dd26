"""benchmarks/gpu_check.sh runs only on a lent GPU: what can be checked of it without one."""

import re
import shlex
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def test_the_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_every_file_it_names_exists():
    """The test files it runs and the scripts it calls (a renamed one would fail a GPU run)."""
    text = SCRIPT.read_text()
    named = set(re.findall(r"\b((?:tests|benchmarks)/[\w/]+\.(?:py|sh))\b", text))
    assert {"tests/test_tuning.py", "benchmarks/tune.py", "benchmarks/kernel_breakdown.py"} <= named
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, missing


def test_later_steps_run_with_the_measured_tuning():
    """The tuning step comes before the tests and the main job, which see its file."""
    text = SCRIPT.read_text()
    tune = text.index("python benchmarks/tune.py --measure")
    export = text.index('export SENET_KERNELS_TUNING="$PWD/$tuning_file"')
    assert tune < export < text.index('pytest_step "tests: triton')
    assert export < text.index('step "main job: bench --sizes gpu"')


def _command_after(text, step, start):
    """The arguments after ``start`` in the command of the step named ``step``, to the end of
    its continued line."""
    rest = text[text.index(f'step "{step}"'):]
    rest = rest[rest.index(start) + len(start):]
    parts = []
    for line in rest.splitlines():
        parts.append(line.rstrip().rstrip("\\"))
        if not line.rstrip().endswith("\\"):
            break
    return shlex.split(" ".join(parts))


def test_the_main_job_and_model_bench_options_parse():
    """The options the GPU run gives the main job (the BatchNorm cases' budget) and the model
    bench (torch.compile inference rows) are ones they accept."""
    import sys

    from senet_kernels.__main__ import build_parser

    text = SCRIPT.read_text()
    bench = build_parser().parse_args(
        ["bench"] + _command_after(text, "main job: bench --sizes gpu",
                                   "python -m senet_kernels bench"))
    assert bench.sizes == "gpu" and bench.budget == 75 and bench.passes is None
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import model_bench
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    models = model_bench.parse_args(_command_after(text, "model bench",
                                                   "python benchmarks/model_bench.py"))
    assert models.compile == ["inference"] and models.cuda_graphs and models.batch == 128
    # both time the BatchNorm + SE op's Triton kernels, off by default until a GPU run
    for name in ("main job: bench --sizes gpu", "model bench"):
        line = text[text.index(f'step "{name}"'):].splitlines()[0]
        assert "SENET_KERNELS_TRITON_BN=1" in line, line
