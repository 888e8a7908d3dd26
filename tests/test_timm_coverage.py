"""benchmarks/timm_coverage.py: the scan that counts timm's SE architectures converted."""

import os
import sys

import pytest

pytest.importorskip("timm")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import timm_coverage  # noqa: E402


@pytest.mark.parametrize("arch, family", [
    ("seresnet50", "seresnet"), ("efficientnetv2_rw_s", "efficientnetv2"),
    ("tf_efficientnet_b0", "tf_efficientnet"), ("legacy_seresnet18", "legacy_seresnet"),
    ("sehalonet33ts", "sehalonet"), ("ese_vovnet19b_dw", "ese_vovnet"), ("resnet50d", "resnet")])
def test_family(arch, family):
    assert timm_coverage.family(arch) == family


def test_scan_counts_the_se_modules_left():
    # legacy_seresnet18: 8 SE modules, all converted; ese_vovnet19b_dw: 4 Effective SE
    # modules, all converted (single FC); resnet18: no SE module.
    assert timm_coverage.scan("legacy_seresnet18") == (8, 0)
    assert timm_coverage.scan("ese_vovnet19b_dw") == (4, 0)
    assert timm_coverage.scan("resnet18") == (0, 0)
    table = timm_coverage.table({"legacy_seresnet18": (8, 0), "ese_vovnet19b_dw": (4, 4),
                                 "legacy_seresnet34": (16, 3)})
    assert "| legacy_seresnet | 2 | 1 | 1 | 0 |" in table
    assert "| ese_vovnet | 1 | 0 | 0 | 1 |" in table
    assert table.splitlines()[-1] == "| **total** | 3 | 1 | 1 | 1 |"
