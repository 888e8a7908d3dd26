"""Which ``configs.Tuning`` a GPU uses: measured choices shipped per GPU model, or a file.

A GPU run measures what the dispatcher cannot know from first principles: which of the
weight-heavy excitation paths is faster, and which tiles keep the reductions at the copy
bandwidth. ``benchmarks/tune.py`` turns those measurements (the sweeps of
``benchmarks/kernel_breakdown.py``) into a JSON file; one per GPU model ships in ``tuned/``,
named after the GPU (``NVIDIA H200`` -> ``tuned/nvidia-h200.json``). A GPU without a file
of its own, and the interpreter, take ``configs.DEFAULT_TUNING``.

``SENET_KERNELS_TUNING`` overrides the lookup for every device of the process: a file's
path (benchmarks/gpu_check.sh runs the tests and the main job with the file it has just
measured), or ``none`` for the defaults (the sweeps measure against them).
"""

import json
import os
import re
from dataclasses import asdict, fields
from pathlib import Path

from . import configs

TUNED_DIR = Path(__file__).with_name("tuned")
_ENV = "SENET_KERNELS_TUNING"
#: Tunings found so far, per device (torch.device): the lookup runs once per device.
_by_device = {}


def file_name(device_name):
    """The shipped file of a GPU model: lower case, runs of other characters as one '-'."""
    return re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-") + ".json"


def from_dict(d):
    """A Tuning from its JSON form (to_dict); raises ValueError on anything else."""
    known = {f.name for f in fields(configs.Tuning)}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"unknown tuning fields {sorted(unknown)}; known: {sorted(known)}")
    kwargs = dict(d)
    for name in ("channels_last_tile", "channels_last_small_map_tile"):
        if name in kwargs:
            kwargs[name] = configs.ReduceTile(**kwargs[name])
    if "squeeze_fc1_tile" in kwargs:
        kwargs["squeeze_fc1_tile"] = configs.SqueezeFc1Tile(**kwargs["squeeze_fc1_tile"])
    return configs.Tuning(**kwargs)


def to_dict(tuning):
    return asdict(tuning)


def changed_fields(tuning):
    """{field: value (JSON form)} of the choices where ``tuning`` differs from the defaults
    (not its ``device`` and ``source``, which say where it was measured)."""
    default = to_dict(configs.DEFAULT_TUNING)
    return {k: v for k, v in to_dict(tuning).items()
            if k not in ("device", "source") and v != default[k]}


def describe(tuning):
    """One line: "defaults", or the GPU it was measured on and how it differs from them."""
    changed = [f"{k} {_short(v)}" for k, v in changed_fields(tuning).items()]
    if not tuning.device:
        return "defaults" if not changed else "custom: " + ", ".join(changed)
    return f"measured on {tuning.device}: " + (", ".join(changed) or "the defaults")


def _short(value):
    if isinstance(value, dict):
        return "(" + " ".join(f"{k}={v}" for k, v in value.items()) + ")"
    return str(value)


def load(path):
    """The Tuning of a JSON file (ValueError naming the file if it is not one)."""
    try:
        return from_dict(json.loads(Path(path).read_text()))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: not a tuning file: {e}") from None


def save(tuning, path):
    Path(path).write_text(json.dumps(to_dict(tuning), indent=2) + "\n")


def shipped():
    """{file name: Tuning} of every file in tuned/ (aot.py compiles what each picks)."""
    return {p.name: load(p) for p in sorted(TUNED_DIR.glob("*.json"))}


def _lookup(device):
    env = os.environ.get(_ENV, "")
    if env.lower() == "none":
        return configs.DEFAULT_TUNING
    if env:
        try:
            return load(env)
        except (OSError, ValueError) as e:
            raise ValueError(f"{_ENV}={env} (a tuning file, or 'none'): {e}") from None
    if device.type != "cuda":
        return configs.DEFAULT_TUNING
    import torch
    path = TUNED_DIR / file_name(torch.cuda.get_device_name(device))
    return load(path) if path.exists() else configs.DEFAULT_TUNING


def for_device(device):
    """The Tuning of ``device`` (a torch.device): the forced one inside
    ``configs.force_tuning``, else looked up once per device."""
    if configs.forced_tuning is not None:
        return configs.forced_tuning
    tuning = _by_device.get(device)
    if tuning is None:
        tuning = _by_device[device] = _lookup(device)
    return tuning
