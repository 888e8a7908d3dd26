"""How many of timm's SE architectures ``convert_se_modules`` converts, by family.

Every architecture of ``timm.list_models()`` is built on the meta device (no memory, no
weights: only the module tree matters) and scanned for SE modules, recognized here by class
name alone (``SE_CLASS_NAMES``), independently of the conversion code. Then
``convert_se_modules`` runs on it and the SE modules left are counted. An architecture is
"all" when every SE module was converted, "some" when part, "none" when none was.

    python benchmarks/timm_coverage.py [--filter 'seresnet*'] [--json out.json]

About 1,300 architectures take a few minutes on 2 CPU cores.
"""

import argparse
import collections
import fnmatch
import json
import re
import sys
import time
import warnings

import torch

#: Class names of timm's SE modules (timm.layers.squeeze_excite, the EfficientNet blocks,
#: the legacy senet, hgnet): what counts as an SE module in the scan.
SE_CLASS_NAMES = {"SEModule", "SqueezeExcite", "EffectiveSEModule", "EseModule",
                  "SqueezeExciteCl"}


#: Name prefixes that are not a family of their own (TensorFlow ports, timm's legacy ports,
#: test models, ESE-VoVNet): the family is the prefix with the next word.
_PREFIXES = {"tf", "legacy", "test", "ese"}


def family(arch):
    """The family of an architecture: its first word without the size suffix
    ("seresnet50" -> "seresnet", "efficientnetv2_rw_s" -> "efficientnetv2",
    "tf_efficientnet_b0" -> "tf_efficientnet")."""
    words = arch.split("_")
    head = words[:2] if words[0] in _PREFIXES and len(words) > 1 else words[:1]
    return "_".join(re.sub(r"(?<![v\d])\d+[a-z]*$", "", w) or w for w in head)


def se_modules(model):
    return [m for m in model.modules()
            if type(m).__name__ in SE_CLASS_NAMES and type(m).__module__.startswith("timm.")]


def scan(arch):
    """(SE modules before, SE modules left after conversion) of one architecture, or None
    when it cannot be built on the meta device."""
    import timm
    from senet_kernels import convert_se_modules
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = timm.create_model(arch, pretrained=False)
    except Exception:  # noqa: BLE001 -- a model that needs real tensors at init
        return None
    before = len(se_modules(model))
    if before == 0:
        return 0, 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        convert_se_modules(model, backend="reference")
    return before, len(se_modules(model))


def table(results):
    """A Markdown table of {arch: (SE modules, SE modules left)} by family."""
    by_family = collections.defaultdict(collections.Counter)
    for arch, (before, left) in results.items():
        state = "all" if left == 0 else ("none" if left == before else "some")
        by_family[family(arch)][state] += 1
    lines = ["| family | SE archs | all converted | some | none |", "|---|---|---|---|---|"]
    total = collections.Counter()
    for name in sorted(by_family):
        counts = by_family[name]
        total.update(counts)
        lines.append(f"| {name} | {sum(counts.values())} | {counts['all']} | {counts['some']} "
                     f"| {counts['none']} |")
    lines.append(f"| **total** | {sum(total.values())} | {total['all']} | {total['some']} | "
                 f"{total['none']} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filter", default="*", help="fnmatch pattern of architectures")
    parser.add_argument("--json", help="write the per-architecture results here")
    args = parser.parse_args(argv)
    import timm
    archs = [a for a in timm.list_models() if fnmatch.fnmatch(a, args.filter)]
    start = time.perf_counter()
    results, failed = {}, []
    for arch in archs:
        result = scan(arch)
        if result is None:
            failed.append(arch)
        elif result[0]:
            results[arch] = result
    print(f"timm {timm.__version__}: {len(archs)} architectures, {len(results)} with SE modules, "
          f"{len(failed)} not buildable on the meta device, "
          f"{time.perf_counter() - start:.0f} s")
    print(table(results))
    if failed:
        print("not buildable on the meta device:", ", ".join(failed), file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"timm": timm.__version__, "results": results, "failed": failed}, f,
                      indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
