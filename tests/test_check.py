"""The correctness check's cases and report (senet_kernels/check.py)."""

import torch

from senet_kernels import check


def test_shards_cover_every_case_once():
    total = len(check.cases())
    assert total == 60
    covered = sorted(i for shard in range(4) for i in range(shard, total, 4))
    assert covered == list(range(total))


def test_report_counts_failures_and_names_them():
    results = {"reference": [(1, 1e-6, ""), (0, 2e-6, "out: rel 1.00e-01, max 1.00e+00")]}
    failures, lines = check.report(results)
    assert failures == 1
    assert lines[0].startswith("check reference ") and "1/2 cases within tolerance" in lines[0]
    assert "worst relative error 2.00e-06" in lines[0]
    shape, act, gate, tail, dtype, cl = check.cases()[0]
    assert lines[1] == (f"  FAILED {shape} {act}/{gate} tail={tail} {dtype} channels_last={cl}: "
                        "out: rel 1.00e-01, max 1.00e+00")


def test_one_case_of_the_reference_passes():
    index, worst, failing = check.check_case("reference", torch.device("cpu"), 5)
    assert index == 5 and failing == "" and worst < 1e-2
