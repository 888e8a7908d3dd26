"""``python -m senet_kernels train`` on the CPU: DDP over gloo (torchrun, 2 processes) against
one process, exact resume, errors before training, a failing rank.

The runs are tiny (timm's 100k-parameter ``test_efficientnet`` with its SE blocks fused, 32 px
synthetic images, 4 steps over 2 epochs of 3 steps, warm-up and a step decay inside, so
the learning rate changes every step and an epoch boundary is crossed).
"""

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch

from senet_kernels.__main__ import main
from senet_kernels.train import checkpoint as ckpt
from senet_kernels.train import data, parse_args
from senet_kernels.train.config import DistEnv, check_args
from senet_kernels.train.loop import FAIL_AT_ENV
from senet_kernels.train.schedule import LRFactor

RUN = ["--synthetic", "--model", "test_efficientnet", "--image-size", "32", "--num-classes", "5",
       "--synthetic-size", "24", "--epochs", "2", "--warmup-epochs", "1", "--lr-step-epochs",
       "1", "--workers", "0", "--no-progress"]
TIMEOUT = 180
# RUN trains a timm model; the ImageFolder data path needs torchvision and Pillow (all three
# are in requirements-dev.txt; a bare torch install skips these tests, saying why).
needs_timm = pytest.mark.skipif(importlib.util.find_spec("timm") is None,
                                reason="timm is not installed (requirements-dev.txt)")
needs_image_folder = pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is None or importlib.util.find_spec("PIL") is None,
    reason="torchvision and Pillow are not installed (requirements-dev.txt)")
# run() is wrapped by torchrun's @record, which cannot enable faulthandler on captured stderr.
pytestmark = pytest.mark.filterwarnings("ignore:Unable to enable fault handler")


def torchrun(args, extra_env=None, nproc=2):
    """Run ``python -m senet_kernels train ARGS`` under torchrun with ``nproc`` gloo ranks."""
    env = dict(os.environ, TRITON_INTERPRET="1", **(extra_env or {}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "senet_kernels", "train", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT,
                          check=False,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load(path):
    return ckpt.load(str(path))


def read_log(path):
    """The JSON lines of a log.jsonl."""
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """2 gloo ranks x batch 4, 4 uninterrupted steps; its checkpoint and log."""
    out = tmp_path_factory.mktemp("ddp")
    result = torchrun(RUN + ["--batch-size", "4", "--max-steps", "4", "--output", str(out),
                             "--save-every", "2", "--keep-checkpoints"])
    assert result.returncode == 0, result.stdout + result.stderr
    return out


@needs_timm
def test_two_processes_train_what_one_process_trains_with_the_same_global_batch(ddp_run, tmp_path):
    # One process, batch 4 x 2 accumulation steps = the same micro-batches as 2 ranks x 4
    # (BatchNorm statistics are per micro-batch in both; torch's SyncBatchNorm has no CPU
    # path, so this is the reference that matches DDP's per-rank BatchNorm). One thread, as
    # torchrun gives each rank: with 2 threads oneDNN's convolutions sum in another order
    # and 4 steps of this tiny BatchNorm network grow that to ~2e-5.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):  # leave the other tests' random stream
            assert main(["train", *RUN, "--batch-size", "4", "--accum-steps", "2",
                         "--max-steps", "4", "--output", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    ddp, single = load(ddp_run / "checkpoint-last.pt"), load(tmp_path / "checkpoint-last.pt")
    assert ddp["step"] == single["step"] == 4
    assert ddp["world_size"] == 2 and single["world_size"] == 1
    params = [name for name, _ in _named_parameters()]
    worst = max((ddp["model"][n] - single["model"][n]).abs().max().item() for n in params)
    print(f"\nmax |DDP 2 ranks - 1 process| over the parameters after 4 steps: {worst:.3g}")
    assert worst <= 1e-6
    # Training moved the parameters far more than that (the comparison can fail).
    from senet_kernels.train.models import build_model
    torch.manual_seed(0)
    init = build_model("test_efficientnet", 5, "cpu").state_dict()
    moved = max((ddp["model"][n] - init[n]).abs().max().item() for n in params)
    assert moved > 1000 * max(worst, 1e-7)
    # The epoch log is the same too: mean loss and top-1 over the global batch.
    logs = [read_log(d / "log.jsonl") for d in (ddp_run, tmp_path)]
    assert [e["epoch"] for e in logs[0]] == [e["epoch"] for e in logs[1]] == [0, 1]
    for a, b in zip(*logs):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["top1"] == b["top1"] and a["lr"] == b["lr"] and a["steps"] == b["steps"]


def _named_parameters():
    from senet_kernels.train.models import build_model
    return list(build_model("test_efficientnet", 5, "cpu").named_parameters())


@pytest.fixture(scope="module")
def crashed_run(tmp_path_factory):
    """The run of ``ddp_run`` with a checkpoint every 2 steps, rank 1 crashing after step 2."""
    out = tmp_path_factory.mktemp("crash")
    result = torchrun(RUN + ["--batch-size", "4", "--max-steps", "4", "--output", str(out),
                             "--save-every", "2"], extra_env={FAIL_AT_ENV: "1:2"})
    return result, out


@needs_timm
def test_a_failing_rank_fails_the_job_with_its_error(crashed_run):
    result, out = crashed_run
    assert result.returncode != 0
    assert "rank 1 fails after step 2" in result.stdout + result.stderr
    assert not (out / "log.jsonl").exists()  # epoch 0 (3 steps) never finished
    assert load(out / "checkpoint-last.pt")["step"] == 2


@needs_timm
def test_resume_after_a_crash_continues_bit_for_bit(crashed_run, ddp_run, tmp_path):
    # The crashed job's step-2 checkpoint is the uninterrupted run's (--keep-checkpoints).
    crashed = load(crashed_run[1] / "checkpoint-last.pt")
    kept = load(ddp_run / "checkpoint-step2.pt")
    assert crashed["step"] == kept["step"] == 2
    assert all(torch.equal(crashed["model"][k], v) for k, v in kept["model"].items())
    # A new torchrun job resumes it to step 4, across the epoch boundary at step 3 (in a
    # copy of the crashed job's directory, which the failing-rank test also reads).
    out = tmp_path / "crash"
    shutil.copytree(crashed_run[1], out)
    second = torchrun(RUN + ["--batch-size", "4", "--max-steps", "4", "--output", str(out),
                             "--resume", "auto"])
    assert second.returncode == 0, second.stdout + second.stderr
    assert "from step 2" in second.stdout
    resumed, straight = load(out / "checkpoint-last.pt"), load(ddp_run / "checkpoint-last.pt")
    assert resumed["step"] == straight["step"] == 4
    unequal = [k for k, v in straight["model"].items() if not torch.equal(resumed["model"][k], v)]
    assert not unequal, f"not bit-equal after resume: {unequal}"
    momentum = [[s["momentum_buffer"] for s in run["optimizer"]["state"].values()]
                for run in (resumed, straight)]
    assert len(momentum[0]) == len(momentum[1]) > 0
    assert all(torch.equal(a, b) for a, b in zip(*momentum))
    assert resumed["scheduler"] == straight["scheduler"]
    for rank, (a, b) in enumerate(zip(resumed["rng"], straight["rng"])):
        assert torch.equal(a["torch"], b["torch"]), f"rank {rank}'s torch RNG state differs"
    # The partial epoch 1 continued its running statistics from the checkpoint, and the
    # resumed job logged epochs 0 and 1 as the uninterrupted one did.
    assert torch.equal(resumed["epoch_stats"], straight["epoch_stats"])
    logs = [read_log(d / "log.jsonl") for d in (out, ddp_run)]
    assert [(e["epoch"], e["loss"], e["top1"]) for e in logs[0]] == \
        [(e["epoch"], e["loss"], e["top1"]) for e in logs[1]]


@pytest.fixture
def no_process_group(monkeypatch):
    """Fail the test if anything starts a process group or builds a model."""
    import senet_kernels.train as train_pkg

    def forbidden(*args, **kwargs):
        raise AssertionError("training started despite a bad option")
    monkeypatch.setattr(torch.distributed, "init_process_group", forbidden)
    monkeypatch.setattr(train_pkg, "build_model", forbidden)


@pytest.mark.parametrize("argv, message", [
    (["--data", "/no/such/dir"], "--data '/no/such/dir' does not exist"),
    (["--synthetic", "--model", "se_resnet5O"], "--model 'se_resnet5O' is unknown"),
    (["--synthetic", "--model", "seresnet5"], "did you mean"),
    ([], "give exactly one of --data DIR and --synthetic"),
    (["--synthetic", "--batch-size", "0"], "--batch-size must be positive"),
    (["--synthetic", "--synthetic-size", "10", "--batch-size", "8", "--accum-steps", "2"],
     "fewer than one global batch (16"),
    (["--synthetic", "--backend", "cudnn"], "backend must be one of"),
    (["--synthetic", "--backend", "eager", "--model", "se_resnet18"],
     "se_resnet18 is a senet_kernels model"),
    # NaN fails every comparison, so range checks let it through: it trained to NaN.
    (["--synthetic", "--lr", "nan"], "--lr must be a finite number, got nan"),
    (["--synthetic", "--lr", "inf"], "--lr must be a finite number, got inf"),
    (["--synthetic", "--weight-decay", "nan"], "--weight-decay must be a finite number"),
    (["--synthetic", "--warmup-epochs", "nan"], "--warmup-epochs must be a finite number"),
    (["--synthetic", "--momentum=-inf"], "--momentum must be a finite number"),
    (["--synthetic", "--num-classes", "1"], "--num-classes must be at least 2"),
])
def test_bad_options_stop_before_training(argv, message, no_process_group, capsys, tmp_path):
    assert main(["train", *argv, "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "python -m senet_kernels train: error:" in err and message in err


@needs_image_folder
def test_data_dir_without_images_is_a_clear_error(no_process_group, capsys, tmp_path):
    (tmp_path / "train" / "cat").mkdir(parents=True)  # a class folder with no image
    assert main(["train", "--data", str(tmp_path), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "is not a usable ImageFolder tree" in err and "cat" in err


def test_sync_bn_on_cpu_processes_is_refused(no_process_group, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["train", "--synthetic", "--sync-bn", "--device", "cpu",
                 "--output", str(tmp_path)]) == 2
    assert "SyncBatchNorm raises on CPU tensors" in capsys.readouterr().err


@needs_timm
@needs_image_folder
def test_image_folder_training_and_validation(tmp_path):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split, count in (("train", 4), ("val", 2)):
        for label in ("a", "b"):
            folder = tmp_path / "data" / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = torch.randint(0, 256, (40, 40, 3), generator=g, dtype=torch.uint8)
                Image.fromarray(pixels.numpy()).save(folder / f"{i}.png")
    out = tmp_path / "out"
    assert main(["train", "--data", str(tmp_path / "data"), "--model", "test_efficientnet",
                 "--image-size", "32", "--batch-size", "4", "--epochs", "1", "--workers", "0",
                 "--no-progress", "--output", str(out)]) == 0
    (entry,) = read_log(out / "log.jsonl")
    assert entry["epoch"] == 0 and entry["steps"] == 2 and entry["complete"]
    for key in ("loss", "top1", "lr", "images_per_s", "time_s", "val_loss", "val_top1", "val_top5"):
        assert key in entry
    assert entry["val_top5"] == 100.0  # 2 classes: both are in the top 5
    state = load(out / "checkpoint-last.pt")
    assert state["model"]["classifier.weight"].shape[0] == 2  # classes from the folders


def test_step_batches_split_one_global_batch_among_ranks_and_micro_batches():
    def batches(world, accum, rank, start=0):
        sampler = data.StepBatches(40, seed=3, epoch=1, batch_size=2, world_size=world,
                                   rank=rank, accum_steps=accum, start_step=start)
        return [[i for i, _ in b] for b in sampler]

    one = batches(1, 4, 0)                                   # 1 process, 4 micro-batches
    two = [batches(2, 2, r) for r in range(2)]               # 2 ranks, 2 micro-batches each
    four = [batches(4, 1, r) for r in range(4)]              # 4 ranks
    assert len(one) == 5 * 4                                 # 40 // 8 steps of 4 micro-batches
    for step in range(5):
        micro = one[4 * step:4 * step + 4]
        assert micro == [two[k % 2][2 * step + k // 2] for k in range(4)]
        assert micro == [four[k][step] for k in range(4)]
    assert sorted(i for b in one for i in b) == list(range(40))   # a permutation
    assert batches(2, 2, 1, start=3) == two[1][6:]                  # resume at step 3
    assert batches(1, 4, 0) != [[i for i, _ in b] for b in data.StepBatches(
        40, seed=3, epoch=2, batch_size=2, world_size=1, rank=0, accum_steps=4)]  # new epoch


def test_help_documents_the_paper_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for phrase in ("0.6 x batch / 1024", "default: 100", "default: 30", "1e-4", "default: 0.9",
                   "torchrun"):
        assert phrase in text, phrase


@needs_timm
def test_resume_with_another_global_batch_is_refused(ddp_run, no_process_group, capsys, tmp_path):
    assert main(["train", *RUN, "--batch-size", "2", "--output", str(tmp_path),
                 "--resume", str(ddp_run / "checkpoint-last.pt")]) == 2
    assert "the checkpoint's global batch is 8, this run's 2" in capsys.readouterr().err


@needs_timm
def test_adamw_cosine_label_smoothing_in_one_process(tmp_path):
    with torch.random.fork_rng(devices=[]):
        assert main(["train", *RUN, "--batch-size", "4", "--max-steps", "3", "--optimizer",
                     "adamw", "--schedule", "cosine", "--label-smoothing", "0.1",
                     "--warmup-epochs", "0", "--output", str(tmp_path)]) == 0
    state = load(tmp_path / "checkpoint-last.pt")
    assert {"exp_avg", "exp_avg_sq"} <= set(state["optimizer"]["state"][0])
    assert state["optimizer"]["param_groups"][0]["weight_decay"] == 0.05
    # AdamW's default lr scales with the global batch (4 here): 1e-3 x 4 / 1024; after 3 of
    # 2 x 6 = 12 cosine steps it is at (1 + cos(pi x 3 / 12)) / 2 of that.
    peak = 1e-3 * 4 / 1024
    expected = peak * (1 + math.cos(math.pi / 4)) / 2
    assert state["scheduler"]["_last_lr"][0] == pytest.approx(expected)
    (entry,) = read_log(tmp_path / "log.jsonl")
    assert entry["steps"] == 3 and not entry["complete"] and math.isfinite(entry["loss"])


def test_lr_schedule_follows_the_paper_and_the_options():
    paper = LRFactor("step", steps_per_epoch=10, total_steps=1000)
    # 100 epochs of 10 steps: / 10 at epochs 30, 60 and 90.
    assert [paper(s) for s in (0, 299, 300, 599, 600, 899, 900, 999)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    warm = LRFactor("step", steps_per_epoch=10, total_steps=1000, warmup_steps=4)
    assert [warm(s) for s in range(5)] == pytest.approx([0.25, 0.5, 0.75, 1, 1])
    cosine = LRFactor("cosine", steps_per_epoch=10, total_steps=104, warmup_steps=4)
    assert [cosine(s) for s in (3, 4, 54, 104)] == pytest.approx([1, 1, 0.5, 0])


def test_default_lr_scales_with_the_global_batch():
    def lr(argv, world_size):
        args = parse_args(["--synthetic", *argv])
        return check_args(args, DistEnv(world_size=world_size, local_world_size=world_size)).lr

    assert lr([], 8) == pytest.approx(0.6)                               # 8 x 128: the paper's
    assert lr(["--batch-size", "64", "--accum-steps", "2"], 2) == pytest.approx(0.15)  # 256
    assert lr(["--lr", "0.1"], 8) == 0.1


@needs_timm
def test_eager_backend_keeps_timm_se_modules():
    """--backend eager: the unfused baseline (a timm model's own SE modules)."""
    from senet_kernels import FusedSEBlock
    from senet_kernels.train.models import build_model

    eager = build_model("test_efficientnet", 10, backend="eager")
    fused = build_model("test_efficientnet", 10, backend="reference")
    assert not any(isinstance(m, FusedSEBlock) for m in eager.modules())
    assert any(isinstance(m, FusedSEBlock) for m in fused.modules())


SE_RESNET_RUN = ["--synthetic", "--model", "seresnet18", "--image-size", "32", "--num-classes",
                 "5", "--synthetic-size", "8", "--workers", "0", "--no-progress",
                 "--batch-size", "4", "--device", "cpu"]


@needs_timm
def test_log_says_which_batchnorms_the_fused_op_computes(tmp_path, capsys):
    """The line after "training ...": the fused SE blocks, their tails, and the BatchNorms in
    front of them that the fused op computes (on the CPU: all 8 of seresnet18's bn2)."""
    with torch.random.fork_rng(devices=[]):
        assert main(["train", *SE_RESNET_RUN, "--max-steps", "1", "--output",
                     str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    (fused,) = [line for line in lines if line.startswith("fused: ")]
    assert fused == ("fused: 8 SE blocks (backend auto), 8 with their shortcut add + ReLU; "
                     "BatchNorm in front of the SE (8 BatchNorm2d): 8 absorbed into the fused op")


@needs_timm
@pytest.mark.parametrize("model", ["seresnet18", "se_resnet18"])
def test_sync_bn_stays_a_module_in_front_of_the_fused_tail(model, tmp_path):
    """--sync-bn (several processes): the BatchNorms become SyncBatchNorm before the SE
    conversion, which then leaves the one in front of each SE a module in the branch and
    fuses the rest (SE, shortcut add, ReLU); the log line says so. (Converted after the SE
    conversion, as it used to be, timm's blocks kept claiming to absorb it.) Checked on the
    model that prepare builds: SyncBatchNorm trains only on GPUs in a process group, and
    --sync-bn on CPU processes is refused (above); in eval mode it is a BatchNorm, so the
    outputs are those of the one-process model, whose BatchNorms are absorbed."""
    from senet_kernels import FusedResidualBlock
    from senet_kernels.train import _prepare
    from senet_kernels.train.models import fusion_summary

    args = check_args(parse_args([*SE_RESNET_RUN, "--model", model, "--sync-bn", "--output",
                                  str(tmp_path)]), DistEnv())
    models = {}
    for world_size in (1, 2):
        # _prepare: prepare's model building, past its check that refuses CPU processes
        models[world_size] = _prepare(args, DistEnv(world_size=world_size), None).model
    synced = models[2]
    bns = [m for m in synced.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert bns and all(type(bn) is torch.nn.SyncBatchNorm for bn in bns)
    blocks = [m for m in synced.modules() if isinstance(m, FusedResidualBlock)]
    assert len(blocks) == (8 if model == "seresnet18" else 0)
    assert all(b.absorbed_bn is None and "tail: SE + shortcut add + ReLU fused" in repr(b)
               for b in blocks)
    assert fusion_summary(synced, "cpu") == (
        "8 SE blocks (backend auto), 8 with their shortcut add + ReLU; BatchNorm in front of "
        "the SE (8 SyncBatchNorm): 0 absorbed into the fused op; run as modules before it: 8 "
        "(SyncBatchNorm is not nn.BatchNorm2d)")
    assert "8 absorbed into the fused op" in fusion_summary(models[1], "cpu")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out, expected = synced.eval()(x), models[1].eval()(x)
    torch.testing.assert_close(out, expected)
