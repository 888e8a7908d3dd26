"""The output directory (``--output``): checked writable and locked for one run, before any
model is built.

Without the check a read-only or mistyped directory would fail only when the first epoch's
log line or checkpoint is written, losing that epoch; without the lock two runs given the
same directory would overwrite each other's checkpoints. The lock is ``flock`` on
``DIR/.lock`` (holding the owner's process id, for the message of a second run): the
operating system releases it when the process ends, however it ends, so a crashed run
never leaves a stale lock behind.
"""

import os
import tempfile

try:
    import fcntl
except ImportError:  # not on Windows: the directory is checked, not locked
    fcntl = None

LOCK_NAME = ".lock"
#: Files a run appends to rather than replaces: they must be writable themselves.
APPENDED = ("log.jsonl",)


class OutputLock:
    """The lock on an output directory, held until ``release`` (or the process's end)."""

    def __init__(self, path, fd):
        self.path, self._fd = path, fd

    def release(self):
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def _reason(error):
    return error.strerror or str(error)


def check_writable(path):
    """Create directory ``path`` if needed and check that files can be created in it (a
    file is created and removed) and that the files a run appends to can be written.

    Raises ValueError naming ``--output`` and the reason (an existing file, a read-only file
    system, no permission, ...).
    """
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"--output {path!r} is a file, not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--output {path!r}: cannot create the directory: {_reason(e)}") from None
    try:
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-test-")
        os.close(fd)
        os.remove(probe)
        for name in APPENDED:
            existing = os.path.join(path, name)
            if os.path.exists(existing):
                with open(existing, "a"):
                    pass
    except OSError as e:
        raise ValueError(f"--output {path!r} is not writable: {_reason(e)}") from None


def lock(path):
    """Lock directory ``path`` (which must exist) for this process; returns an
    ``OutputLock``. Raises ValueError at once, without waiting, when another process holds
    it."""
    lock_path = os.path.join(path, LOCK_NAME)
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise ValueError(f"--output {path!r} is not writable: {_reason(e)}") from None
    if fcntl is None:
        return OutputLock(lock_path, fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # BlockingIOError: held by another process (or another open of ours)
        owner = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise ValueError(f"--output {path!r} is in use by another run (pid {owner}); give "
                         "another directory or wait for that run to end") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return OutputLock(lock_path, fd)


def claim(path):
    """``check_writable`` then ``lock``: the directory, ready and this run's alone."""
    check_writable(path)
    return lock(path)
