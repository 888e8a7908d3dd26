"""benchmarks/plot_results.py draws what the benchmarks' JSON says: run on small results
written here, it writes a valid PNG whose bars carry those numbers."""

import json
import os
import struct
import sys

import pytest

pytest.importorskip("matplotlib")

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))
import plot_results  # noqa: E402

REPO = os.path.join(os.path.dirname(__file__), os.pardir)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def model_row(network, variant, mode, ms, overhead=None):
    row = dict(network=network, variant=variant, mode=mode, ms=ms, host_ms=None,
               images_per_s=8 / ms * 1e3, peak_mib=None)
    if overhead is not None:
        row["se_overhead"] = overhead
    return row


def models_result():
    """A model_bench.py result in its JSON form: two SE networks beside resnet50, one
    network without an SE overhead (not drawn)."""
    rows = [model_row("resnet50", "eager", "inference", 10.0),
            model_row("resnet50", "eager", "train_step", 30.0),
            model_row("timm seresnet50", "eager", "inference", 13.7, 0.37),
            model_row("timm seresnet50", "eager", "train_step", 36.3, 0.21),
            model_row("se_resnet50 [cpu]", "eager", "inference", 10.3, 0.03),
            model_row("se_resnet50 [cpu]", "eager", "train_step", 33.9, 0.13),
            model_row("timm efficientnet_b0", "eager", "inference", 5.0)]
    return {"device": "Test GPU", "date": "2026-01-02", "torch": "2.99", "batch": 8,
            "image": 64, "dtype": "float32", "channels_last": False, "rounds": 1, "rows": rows}


def kernel_row(backend, c, hw, pass_name, speedup):
    return {"backend": backend, "shape": [4, c, hw, hw], "rd_channels": c // 16,
            "family": "se_resnet50", "dtype": "float32", "layout": "nchw", "pass": pass_name,
            "median_ms": 1.0 / speedup, "gpu_ms": None, "speedup_vs_eager": speedup,
            "speedup_vs_compile": None, "gbps": 1.0, "floor_fraction": 0.5}


def kernels_result():
    """A main-job result in its JSON form: two shapes, two passes, eager + one backend."""
    rows = []
    for c, hw in ((64, 16), (256, 4)):
        for pass_name, speedup in (("fwd", 1.7), ("fwd_bwd", 2.9)):
            rows.append(kernel_row("eager", c, hw, pass_name, 1.0))
            rows.append(kernel_row("cpu", c, hw, pass_name, speedup * c / 64))
    return {"device": "CPU test", "date": "2026-01-02", "versions": {"torch": "2.99"},
            "sizes": "cpu", "backends": ["cpu"], "rows": rows}


def png_size(path):
    """(width, height) from a PNG file's IHDR chunk; fails on anything but a PNG."""
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == PNG_SIGNATURE, "not a PNG file"
    assert head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def bar_widths(ax):
    return [patch.get_width() for patch in ax.patches]


def test_command_line_writes_a_png_of_the_model_results(tmp_path):
    src = tmp_path / "models.json"
    src.write_text(json.dumps(models_result()))
    out = tmp_path / "fig.png"
    plot_results.main(["--models", str(src), "--out", str(out)])
    width, height = png_size(out)
    assert 600 <= width <= 2000 and 200 <= height <= 1500
    import matplotlib.image
    pixels = matplotlib.image.imread(str(out))
    assert pixels.shape[:2] == (height, width)
    assert pixels.std() > 0.05  # something is drawn, not a blank canvas


def test_model_figure_draws_each_se_overhead_as_a_labelled_bar():
    fig = plot_results.draw(models=models_result())
    try:
        (ax,) = fig.axes
        # bars per mode in order: inference (timm, ours), then training step (timm, ours)
        assert bar_widths(ax) == pytest.approx([37.0, 3.0, 21.0, 13.0])
        ticks = [t.get_text() for t in ax.get_yticklabels()]
        assert ticks == ["timm seresnet50, eager SE", "our se_resnet50 (cpu)"]
        texts = {t.get_text() for t in ax.texts}
        assert {"+37.0%", "+3.0%", "+21.0%", "+13.0%"} <= texts
        assert "Test GPU" in ax.get_title() and "batch 8" in ax.get_title()
        assert [t.get_text() for t in ax.get_legend().get_texts()] == [
            "inference", "training step"]
    finally:
        import matplotlib.pyplot as plt
        plt.close(fig)


def test_kernel_figure_has_a_panel_per_pass_with_each_shapes_speedup(tmp_path):
    fig = plot_results.draw(kernels=kernels_result())
    try:
        assert len(fig.axes) == 2
        fwd, fwd_bwd = fig.axes
        assert [p.get_height() for p in fwd.patches] == pytest.approx([1.7, 6.8])
        assert [p.get_height() for p in fwd_bwd.patches] == pytest.approx([2.9, 11.6])
        assert "forward + backward" in fwd_bwd.get_title()
        assert [t.get_text() for t in fwd.get_xticklabels()] == [
            "SE-R50\n64x16x16", "SE-R50\n256x4x4"]
        out = tmp_path / "kernels.png"
        plot_results.save(fig, str(out))
        assert png_size(out)[0] > 0
    finally:
        import matplotlib.pyplot as plt
        plt.close("all")


def test_batchnorm_passes_get_panels_of_their_own_implementations():
    """With the main job's BatchNorm + SE rows: a panel per pass, each with the bars of the
    implementations timed in that pass only (no empty bars of the other passes')."""
    result = kernels_result()
    for c, hw in ((64, 16), (256, 4)):
        result["rows"].append(kernel_row("eager", c, hw, "bn_fwd_bwd", 1.0))
        result["rows"].append(kernel_row("bn_fused", c, hw, "bn_fwd_bwd", 3.0 * c / 64))
        result["rows"].append(kernel_row("bn+cpu", c, hw, "bn_fwd_bwd", 1.5))
    fig = plot_results.draw(kernels=result)
    try:
        assert len(fig.axes) == 3
        fwd, _, bn = fig.axes
        assert [p.get_height() for p in fwd.patches] == pytest.approx([1.7, 6.8])
        assert [p.get_height() for p in bn.patches] == pytest.approx([3.0, 12.0, 1.5, 1.5])
        assert [t.get_text() for t in bn.get_legend().get_texts()] == ["bn_fused", "bn+cpu"]
        assert "BatchNorm" in bn.get_title()
    finally:
        import matplotlib.pyplot as plt
        plt.close("all")


def test_network_labels():
    assert plot_results.network_label("timm seresnet50 [triton, SE only]") == (
        "timm seresnet50, SE modules fused alone (triton)")
    assert plot_results.network_label("timm seresnet50 [cuda]") == (
        "timm seresnet50, convert_se_modules (cuda)")
    assert plot_results.network_label("se_resnet50 [triton]") == "our se_resnet50 (triton)"
    assert plot_results.network_label("resnet50") == "resnet50"
    assert plot_results.network_label("timm seresnet50 [cpu, fuse_bn=False]") == (
        "timm seresnet50, convert_se_modules, BatchNorm not absorbed (cpu)")
    assert plot_results.network_label("resnet50 [conv+BN folded]") == (
        "resnet50, conv+BN folded")


def test_results_without_rows_to_draw_are_refused():
    with pytest.raises(ValueError, match="models"):
        plot_results.draw()
    result = models_result()
    result["rows"] = [r for r in result["rows"] if "se_overhead" not in r]
    with pytest.raises(ValueError, match="SE overhead"):
        plot_results.draw(models=result)


def test_the_readme_figure_is_the_headline_runs():
    """The committed figure is what the command under it draws from the committed run
    (same size; the pixels may differ with the matplotlib version)."""
    headline = os.path.join(REPO, "benchmarks", "results", "2026-11-28-NVIDIA-H200-3",
                            "models.json")
    committed = os.path.join(REPO, "docs", "images", "h200_se_overhead.png")
    fig = plot_results.draw(models=plot_results.load(headline))
    try:
        labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
        assert "timm seresnet50, convert_se_modules (triton)" in labels
        assert png_size(committed) == tuple(
            round(v * 100) for v in fig.get_size_inches())
    finally:
        import matplotlib.pyplot as plt
        plt.close(fig)
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    assert "docs/images/h200_se_overhead.png" in readme
    assert ("python benchmarks/plot_results.py --models "
            "benchmarks/results/2026-11-28-NVIDIA-H200-3/models.json "
            "--out docs/images/h200_se_overhead.png") in readme
