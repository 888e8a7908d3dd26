"""Per-GPU tunings (configs.Tuning, tuning.py): their files, which one a device takes, that
the dispatcher follows them, that the op stays right under them, and that the ahead-of-time
compile covers what they pick."""

import json

import pytest
import torch

from senet_kernels.testing import assert_close, forward_backward_vs_reference, make_inputs
from senet_kernels.triton import configs, tuning
from senet_kernels.triton.configs import ReduceTile, SqueezeFc1Tile, Tuning
from senet_kernels.triton.launcher import recording_launches

#: Every choice away from the defaults, each one the sweeps time.
TUNED = Tuning(device="Test GPU", squeeze_fc1_max_pixels=196,
               channels_last_tile=ReduceTile(64, 32, num_stages=3),
               channels_last_small_map_tile=ReduceTile(128, 32, num_stages=3),
               squeeze_fc1_tile=SqueezeFc1Tile(block_c=128), source="a test")


@pytest.fixture
def fresh_lookup(monkeypatch):
    """No tuning found yet for any device, and no SENET_KERNELS_TUNING."""
    monkeypatch.setattr(tuning, "_by_device", {})
    monkeypatch.delenv("SENET_KERNELS_TUNING", raising=False)


def test_file_name_of_a_gpu():
    assert tuning.file_name("NVIDIA H200") == "nvidia-h200.json"
    assert tuning.file_name("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3.json"


def test_save_and_load_round_trip(tmp_path):
    path = tmp_path / "t.json"
    tuning.save(TUNED, path)
    assert tuning.load(path) == TUNED
    assert tuning.load(path) != configs.DEFAULT_TUNING


@pytest.mark.parametrize("change, message", [
    ({"squeeze_fc1_max_pixels": -1}, "squeeze_fc1_max_pixels"),
    ({"squeeze_fc1_max_pixels": "all"}, "squeeze_fc1_max_pixels"),
    ({"channels_last_small_map_tile": {"block_c": 96, "block_hw": 32}}, "not one of the tiles"),
    ({"channels_last_tile": {"block_c": 256, "block_hw": 16}}, "not one of the tiles"),
    ({"squeeze_fc1_tile": {"block_n": 64}}, "not one of the tiles"),
    ({"block_size": 3}, "unknown tuning fields"),
])
def test_bad_files_are_rejected_with_their_name(tmp_path, change, message):
    """Only tiles the GPU sweeps time (and aot.py compiles) may be chosen."""
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({**tuning.to_dict(TUNED), **change}))
    with pytest.raises(ValueError, match=message) as info:
        tuning.load(path)
    assert "bad.json" in str(info.value)


@pytest.mark.device_tuning
def test_a_gpu_takes_its_shipped_file_and_others_the_defaults(fresh_lookup, monkeypatch,
                                                              tmp_path):
    tuning.save(TUNED, tmp_path / "test-gpu.json")
    monkeypatch.setattr(tuning, "TUNED_DIR", tmp_path)
    names = {0: "Test GPU", 1: "Other GPU"}
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: names[device.index])
    assert tuning.for_device(torch.device("cuda", 0)) == TUNED
    assert tuning.for_device(torch.device("cuda", 1)) == configs.DEFAULT_TUNING
    assert tuning.for_device(torch.device("cpu")) == configs.DEFAULT_TUNING
    assert tuning.shipped() == {"test-gpu.json": TUNED}


@pytest.mark.device_tuning
def test_environment_overrides_the_lookup(fresh_lookup, monkeypatch, tmp_path):
    tuning.save(TUNED, tmp_path / "t.json")
    monkeypatch.setenv("SENET_KERNELS_TUNING", str(tmp_path / "t.json"))
    assert tuning.for_device(torch.device("cpu")) == TUNED
    monkeypatch.setattr(tuning, "_by_device", {})
    monkeypatch.setenv("SENET_KERNELS_TUNING", "none")
    assert tuning.for_device(torch.device("cpu")) == configs.DEFAULT_TUNING
    monkeypatch.setattr(tuning, "_by_device", {})
    monkeypatch.setenv("SENET_KERNELS_TUNING", str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="SENET_KERNELS_TUNING=.*missing.json"):
        tuning.for_device(torch.device("cpu"))


def test_shipped_files_load_and_match_their_gpu():
    for name, tuned in tuning.shipped().items():
        assert tuned.device and tuning.file_name(tuned.device) == name, name
        assert tuned.source, f"{name}: say which run measured it"


def test_configs_follow_the_tuning():
    assert configs.reduce_tile(True, 49, TUNED) == TUNED.channels_last_small_map_tile
    assert configs.reduce_tile(True, 196, TUNED) == TUNED.channels_last_small_map_tile
    assert configs.reduce_tile(True, 197, TUNED) == TUNED.channels_last_tile
    assert configs.reduce_tile(False, 49, TUNED) == configs.NCHW_TILE  # NCHW is not tuned
    assert configs.reduce_tile(True, 49) == configs.CHANNELS_LAST_TILE
    bf16 = 2
    assert configs.excitation_path(256, 2048, 128, 49, bf16, bf16, TUNED) == "squeeze_fc1"
    assert configs.excitation_path(256, 1024, 64, 196, bf16, bf16, TUNED) == "squeeze_fc1"
    assert configs.excitation_path(256, 1024, 256, 400, bf16, bf16, TUNED) == "batched"
    assert configs.excitation_path(256, 2048, 128, 49, bf16, bf16) == "batched"
    assert configs.excitation_path(256, 256, 16, 3136, bf16, bf16, TUNED) == "per_sample"
    assert configs.squeeze_fc1_tile(49, bf16, TUNED).block_c == 128


def test_tests_run_with_the_defaults(device):
    """(conftest.default_tuning) whatever GPU they run on."""
    assert tuning.for_device(device) == configs.DEFAULT_TUNING


@pytest.mark.device_tuning
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=lambda d: str(d).removeprefix("torch."))
def test_triton_op_is_right_with_the_devices_tuning(device, poison, dtype, channels_last):
    """Forward and backward with the tuning the device really uses (on a lent GPU,
    benchmarks/gpu_check.sh sets SENET_KERNELS_TUNING to the one it has just measured): a
    weight-heavy shape, and light ones on a small map and past TUNED_SMALL_MAP_PIXELS."""
    assert configs.forced_tuning is None
    used = tuning.for_device(device)
    for n, c, h, cr in ((3, 160, 4, 40), (2, 8, 12, 2), (2, 8, 15, 2)):
        args = make_inputs(n, c, h, h, cr, dtype=dtype, channels_last=channels_last,
                           residual=True, device=device, seed=c + h)
        with recording_launches() as launches:
            _check_against_reference(args, dtype, f" {n}x{c}x{h}x{h}")
        if c == 160:  # the weight-heavy shape takes the tuning's path
            assert bool(_launched("se_squeeze_fc1_fwd", launches)) == (
                h * h <= used.squeeze_fc1_max_pixels), used


def _check_against_reference(args, dtype, where=""):
    """Output and every gradient (a seeded upstream gradient) of the Triton backend with the
    SE-ResNet tail against the float64 reference's."""
    from senet_kernels import squeeze_excite
    run = lambda *a, **k: squeeze_excite(*a, backend="triton", **k)
    for result in forward_backward_vs_reference(run, args, post_relu=True):
        assert_close(result.actual, result.expected, dtype, result.name + where)


def _launched(kernel_name, launches):
    return [l for l in launches if l.kernel.__name__ == kernel_name]


def test_dispatcher_follows_the_tuning_and_stays_right(device, poison):
    """A weight-heavy shape takes the tuned path and tile; a light one on a small map the
    tuned reduction tile; forward and backward match the float64 reference."""
    heavy = make_inputs(3, 160, 4, 4, 40, channels_last=True, residual=True, device=device,
                        seed=1)
    light = make_inputs(2, 8, 12, 12, 2, channels_last=True, residual=True, device=device,
                        seed=2)
    with configs.force_tuning(TUNED), recording_launches() as launches:
        for args in (heavy, light):
            _check_against_reference(args, torch.float32)
    fc1 = _launched("se_squeeze_fc1_fwd", launches)
    assert len(fc1) == 1 and fc1[0].constexprs["BLOCK_C"] == 128
    assert len(_launched("se_squeeze_fc2_bwd", launches)) == 1
    squeeze = _launched("se_squeeze_excite_fwd", launches)  # the light shape's only
    assert len(squeeze) == 1
    assert (squeeze[0].constexprs["BLOCK_C"], squeeze[0].constexprs["REDUCE_STAGES"]) == (128, 3)


def test_aot_records_what_a_shipped_tuning_picks(monkeypatch):
    """A shipped file's choices join the ahead-of-time compile in every dtype: its tiles on
    small maps and past TUNED_SMALL_MAP_PIXELS."""
    from senet_kernels.triton import aot
    monkeypatch.setattr(tuning, "shipped", lambda: {"test-gpu.json": TUNED})
    launches, _ = aot._record_cases()
    tiles = {(l.constexprs["BLOCK_C"], l.constexprs["REDUCE_STAGES"], l.args["x_ptr"].dtype)
             for l in _launched("se_squeeze_excite_fwd", launches)
             if l.constexprs["CHANNELS_LAST"]}
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        assert (128, 3, dtype) in tiles  # small maps
        assert (64, 3, dtype) in tiles   # the large map
    fc1_blocks = {l.constexprs["BLOCK_C"] for l in _launched("se_squeeze_fc1_fwd", launches)}
    assert fc1_blocks == {128}


def test_describe_names_what_differs_from_the_defaults():
    assert tuning.describe(configs.DEFAULT_TUNING) == "defaults"
    line = tuning.describe(TUNED)
    assert line.startswith("measured on Test GPU: squeeze_fc1_max_pixels 196, ")
    assert "squeeze_fc1_tile (block_n=16 block_c=128" in line
    assert tuning.describe(configs.Tuning(device="X")) == "measured on X: the defaults"
