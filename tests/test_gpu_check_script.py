"""benchmarks/gpu_check.sh runs only on a lent GPU: what can be checked of it without one."""

import re
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
