"""benchmarks/host_overhead.py on the CPU: every implementation timed in both passes, with
the Triton launches stubbed, and printed."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import host_overhead  # noqa: E402


def test_rows_cover_every_implementation_and_pass():
    from senet_kernels import available_backends
    result = host_overhead.run(calls=3, repeats=1)
    expected = {"eager"} | {n for n in ("triton", "cpu") if available_backends()[n].available}
    for pass_name in ("fwd", "fwd_bwd"):
        rows = [r for r in result["rows"] if r["pass_name"] == pass_name]
        assert {r["impl"] for r in rows} == expected
        for r in rows:
            assert r["host_us"] > 0 and r["wall_us"] >= r["host_us"] * 0.5
            assert r["stubbed"] == (r["impl"] == "triton")
            assert "gpu_us" not in r  # no GPU: no profiled kernel time
        eager = next(r for r in rows if r["impl"] == "eager")
        assert eager["host_vs_eager"] == pytest.approx(1.0)
    text = host_overhead.format_rows(result)
    assert text.count("(launches stubbed)") == ("triton" in expected) * 2
