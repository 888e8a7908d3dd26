"""``python -m senet_kernels train`` on what users get wrong or what breaks under it: an
output directory that cannot be written or that another run uses, non-finite float options,
checkpoints that cannot be read or do not fit, corrupt image files, a one-class dataset.

Each is either one ``error:`` line and exit status 2 before any model is built (or, for
checks that need the model, before training starts), or a handled condition that keeps the
run and its checkpoints. The runs are test_train.py's tiny ones (at most one step here).
"""

import errno
import os
import signal
import subprocess
import sys
import types

import pytest
import torch

from senet_kernels.__main__ import main
from senet_kernels.train import checkpoint as ckpt
from senet_kernels.train import config, data, output
from senet_kernels.train.config import DistEnv

from test_train import (RUN, needs_image_folder, needs_timm, no_process_group,  # noqa: F401
                        read_log)

pytestmark = pytest.mark.filterwarnings("ignore:Unable to enable fault handler")
PREFIX = "python -m senet_kernels train: error: "


def error_line(capsys):
    """The command's stderr, checked to be exactly one error line (no traceback)."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(PREFIX), err
    return lines[0]


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if training starts (the set-up before it, model included, may run)."""
    import senet_kernels.train as train_pkg

    def forbidden(*args, **kwargs):
        raise AssertionError("training started despite a bad option")
    monkeypatch.setattr(train_pkg, "_train", forbidden)


@pytest.fixture(scope="module")
def one_step_run(tmp_path_factory):
    """A one-step run of RUN (5 classes, SGD, batch 4); its output directory."""
    out = tmp_path_factory.mktemp("one_step")
    with torch.random.fork_rng(devices=[]):
        assert main(["train", *RUN, "--batch-size", "4", "--max-steps", "1",
                     "--output", str(out)]) == 0
    return out


# --- the output directory -------------------------------------------------------------------

def test_output_naming_a_file_is_refused_before_the_model_is_built(no_process_group, capsys,
                                                                    tmp_path):
    # Used to build the model, then fail with a FileExistsError traceback.
    existing = tmp_path / "results.txt"
    existing.write_text("not a directory")
    assert main(["train", "--synthetic", "--output", str(existing)]) == 2
    assert "is a file, not a directory" in error_line(capsys)
    assert existing.read_text() == "not a directory"


def test_output_that_cannot_be_created_is_refused(no_process_group, capsys, tmp_path):
    # A directory below a regular file cannot be created, by root either (unlike a chmod'ed
    # directory, see below): the creation half of the writability check.
    (tmp_path / "file").write_text("")
    assert main(["train", "--synthetic", "--output", str(tmp_path / "file" / "run")]) == 2
    assert "cannot create the directory" in error_line(capsys)


def test_read_only_output_is_refused_before_the_model_is_built(no_process_group, capsys,
                                                               tmp_path, monkeypatch):
    # Used to train a whole epoch, then die writing log.jsonl. A read-only file system
    # cannot be mounted here, and the tests run as root, for whom chmod does not stop
    # writes: the file creation that probes the directory fails as on a read-only mount.
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))
    monkeypatch.setattr(output, "tempfile", types.SimpleNamespace(mkstemp=read_only))
    assert main(["train", "--synthetic", "--output", str(tmp_path)]) == 2
    line = error_line(capsys)
    assert "is not writable" in line and os.strerror(errno.EROFS) in line


def test_output_without_write_permission_is_refused(no_process_group, capsys, tmp_path):
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        if os.access(read_only, os.W_OK):  # root: permissions are not enforced
            pytest.skip("running as root, chmod does not stop writes (the monkeypatched "
                        "test above checks the same path)")
        assert main(["train", "--synthetic", "--output", str(read_only)]) == 2
        assert "is not writable" in error_line(capsys)
    finally:
        read_only.chmod(0o755)


# A process that holds the lock as a second run would: flock on DIR/.lock, its pid inside.
LOCK_HOLDER = """
import fcntl, os, sys, time
fd = os.open(os.path.join(sys.argv[1], ".lock"), os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
os.ftruncate(fd, 0); os.write(fd, str(os.getpid()).encode())
print("locked", flush=True)
time.sleep(60)
"""


@pytest.mark.skipif(output.fcntl is None, reason="no fcntl (flock) on this platform")
def test_a_second_run_on_one_output_fails_at_once_and_after_a_crash_runs(
        no_process_group, capsys, tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        assert main(["train", "--synthetic", "--output", str(tmp_path)]) == 2
        assert f"is in use by another run (pid {holder.pid})" in error_line(capsys)
    finally:
        holder.kill()  # a crash: the operating system drops its lock
        holder.wait()
    assert holder.returncode == -signal.SIGKILL
    lock = output.claim(str(tmp_path))  # free again, no stale lock
    lock.release()


@needs_timm
def test_the_lock_is_released_when_a_run_ends(one_step_run, tmp_path):
    # The fixture's run has ended: its directory can be claimed (the lock file is left).
    assert (one_step_run / output.LOCK_NAME).exists()
    output.claim(str(one_step_run)).release()


def _tiny_training_state():
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    args = types.SimpleNamespace(global_batch=4, model="linear")
    return dict(model=model, optimizer=optimizer, scheduler=scheduler,
                epoch_stats=torch.zeros(4, dtype=torch.float64), args=args, env=DistEnv(),
                device=torch.device("cpu"))


def test_checkpoint_writers_in_one_directory_do_not_take_each_others_file(tmp_path,
                                                                          monkeypatch):
    # Two writers of checkpoint-last.pt, the second writing while the first is between its
    # write and its rename: with one fixed temporary name the second renamed the first's
    # file away and the first failed with FileNotFoundError, its training lost.
    path = str(tmp_path / "checkpoint-last.pt")
    state = _tiny_training_state()
    real_save = torch.save
    interleaved = []

    def save_then_let_another_writer_in(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        if not interleaved:
            interleaved.append(f)
            ckpt.save(path, step=2, **state)
    monkeypatch.setattr(torch, "save", save_then_let_another_writer_in)
    ckpt.save(path, step=1, **state)
    assert interleaved and interleaved[0] != path
    assert ckpt.load(path)["step"] == 1  # the last rename wins, a whole file
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-last.pt"]  # no temporary file left


def test_a_failed_checkpoint_write_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "checkpoint-last.pt")
    state = _tiny_training_state()
    ckpt.save(path, step=1, keep_as=str(tmp_path / "checkpoint-step1.pt"), **state)

    def disk_full(obj, f, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError):
        ckpt.save(path, step=2, **state)
    assert ckpt.load(path)["step"] == 1
    assert ckpt.load(str(tmp_path / "checkpoint-step1.pt"))["step"] == 1
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-last.pt", "checkpoint-step1.pt"]


# --- float options --------------------------------------------------------------------------

def test_every_float_option_is_checked_finite():
    import argparse

    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    floats = {a.dest for a in parser._actions if a.type is float}
    assert floats == set(config.FLOAT_OPTIONS)


# --- checkpoints to resume ------------------------------------------------------------------

def _damaged_checkpoints(folder):
    whole = folder / "whole.pt"
    torch.save({"format": ckpt.FORMAT, "model": {"w": torch.randn(1000)}}, whole)
    raw = whole.read_bytes()
    files = {"truncated": raw[:len(raw) // 2], "empty": b"",
             "random": torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                     dtype=torch.uint8).numpy().tobytes(),
             "pickle cut short": raw[:100]}
    paths = {}
    for name, content in files.items():
        paths[name] = folder / f"{name.replace(' ', '_')}.pt"
        paths[name].write_bytes(content)
    return paths


@pytest.mark.parametrize("damage", ["truncated", "empty", "random", "pickle cut short"])
def test_unreadable_checkpoint_is_one_error_line(damage, no_process_group, capsys, tmp_path):
    # Used to be raw RuntimeError / UnpicklingError / EOFError tracebacks.
    path = _damaged_checkpoints(tmp_path)[damage]
    assert main(["train", "--synthetic", "--output", str(tmp_path / "out"),
                 "--resume", str(path)]) == 2
    line = error_line(capsys)
    assert f"--resume {str(path)!r} is not a readable checkpoint" in line


def test_unreadable_auto_resume_checkpoint_is_one_error_line(no_process_group, capsys,
                                                             tmp_path):
    (tmp_path / "checkpoint-last.pt").write_bytes(b"\x00" * 10)
    assert main(["train", "--synthetic", "--output", str(tmp_path), "--resume", "auto"]) == 2
    assert "checkpoint-last.pt' is not a readable checkpoint" in error_line(capsys)


@needs_timm
def test_resume_with_another_number_of_classes_is_one_error_line(one_step_run, no_training,
                                                                 capsys, tmp_path):
    # Used to fail in load_state_dict, a size-mismatch traceback after the whole set-up.
    argv = [a if a != "5" else "7" for a in RUN]  # --num-classes 7
    assert argv != RUN
    assert main(["train", *argv, "--batch-size", "4", "--output", str(tmp_path),
                 "--resume", str(one_step_run / "checkpoint-last.pt")]) == 2
    line = error_line(capsys)
    assert "[5, " in line and "[7, " in line and "--num-classes" in line


@needs_timm
def test_resume_with_another_optimizer_is_one_error_line(one_step_run, no_process_group,
                                                         capsys, tmp_path):
    # Used to fail in AdamW's load_state_dict (KeyError 'step') after the whole set-up.
    assert main(["train", *RUN, "--batch-size", "4", "--optimizer", "adamw",
                 "--output", str(tmp_path),
                 "--resume", str(one_step_run / "checkpoint-last.pt")]) == 2
    assert "the checkpoint's optimizer is sgd, not --optimizer adamw" in error_line(capsys)


# --- image data -----------------------------------------------------------------------------

def _image_folder(root, classes, count, seed=0):
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    for label in classes:
        folder = root / label
        folder.mkdir(parents=True)
        for i in range(count):
            pixels = torch.randint(0, 256, (40, 40, 3), generator=g, dtype=torch.uint8)
            Image.fromarray(pixels.numpy()).save(folder / f"{i}.jpg")


@needs_image_folder
def test_one_class_image_folder_is_refused(no_process_group, capsys, tmp_path):
    # Used to train to loss 0 without a word.
    _image_folder(tmp_path / "data", ["cat"], 4)
    assert main(["train", "--data", str(tmp_path / "data"), "--num-classes", "3",
                 "--output", str(tmp_path / "out")]) == 2
    assert "has 1 class folder (cat); a classifier needs at least 2" in error_line(capsys)


@needs_timm
@needs_image_folder
def test_corrupt_images_are_skipped_with_a_warning_and_counted(tmp_path, capsys):
    # Used to abort the epoch with PIL's traceback, no checkpoint written.
    _image_folder(tmp_path / "data" / "train", ["a", "b"], 3)
    _image_folder(tmp_path / "data" / "val", ["a", "b"], 1, seed=1)
    train_b = tmp_path / "data" / "train" / "b"
    (train_b / "3.jpg").write_bytes((train_b / "0.jpg").read_bytes())  # 4 in b, 3 + 1 in a
    garbage = tmp_path / "data" / "train" / "a" / "garbage.jpg"
    garbage.write_bytes(torch.randint(0, 256, (500,), generator=torch.Generator().manual_seed(2),
                                      dtype=torch.uint8).numpy().tobytes())
    whole = (tmp_path / "data" / "val" / "b" / "0.jpg").read_bytes()
    truncated = tmp_path / "data" / "val" / "b" / "truncated.jpg"
    truncated.write_bytes(whole[:len(whole) // 2])
    out = tmp_path / "out"
    # 8 training images, batch 4: both steps of the epoch read every image, the corrupt one
    # included.
    with torch.random.fork_rng(devices=[]):
        assert main(["train", "--data", str(tmp_path / "data"), "--model", "test_efficientnet",
                     "--image-size", "32", "--batch-size", "4", "--epochs", "1", "--workers",
                     "0", "--no-progress", "--output", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"warning: skipping an unreadable image: {garbage}" in err
    assert f"warning: skipping an unreadable image: {truncated}" in err
    (entry,) = read_log(out / "log.jsonl")
    assert entry["complete"] and entry["steps"] == 2
    assert entry["skipped_images"] == 1 and entry["val_skipped_images"] == 1
    assert ckpt.load(str(out / "checkpoint-last.pt"))["step"] == 2


class _FakeImages:
    """Items (index, index % 2) whose files ``bad`` cannot be read."""

    root = "fake"
    classes = ["even", "odd"]

    def __init__(self, size, bad):
        self.size, self.bad = size, set(bad)

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        if index in self.bad:
            raise data.UnreadableImage(f"{index}.jpg", OSError("cannot identify image file"))
        return index, index % 2


def test_skip_unreadable_takes_the_next_readable_item_and_gives_up_on_a_broken_dataset(capsys):
    images = data.SkipUnreadable(_FakeImages(5, bad={1, 2, 4}))
    assert [images[i] for i in range(5)] == [(0, 0, 0), (3, 1, 2), (3, 1, 1), (3, 1, 0),
                                             (0, 0, 1)]  # around the end
    assert "4.jpg: OSError: cannot identify image file" in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="unreadable images in a row"):
        data.SkipUnreadable(_FakeImages(3, bad={0, 1, 2}))[1]
