"""The README stays what a new user reads in five minutes, and what it shows runs: every
Python code block executes here (on the CPU), every public name has a docstring, and the
links to the docs resolve."""

import inspect
import os
import re

import pytest
import torch

import senet_kernels
import senet_kernels.models

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
README = os.path.join(ROOT, "README.md")

#: A block preceded by this HTML comment (invisible on GitHub) is not run here; the comment
#: says why, e.g. ``<!-- not run in the tests: needs a GPU -->``.
SKIP_MARK = re.compile(r"<!--\s*not run in the tests:\s*(.+?)\s*-->\s*$")

#: The set-up commands CI runs (.ci/run) and users copy: they must stay exactly these.
SETUP_COMMANDS = (
    "pip install -r requirements-dev.txt && pip install --no-build-isolation -e . "
    "&& python -m senet_kernels bench",
    "pip install -r requirements-dev.txt && pip install --no-build-isolation -e . "
    "&& python -m pytest tests -q",
)


def read_readme():
    with open(README, encoding="utf-8") as f:
        return f.read()


def code_blocks(text, language):
    """[(line number, code, reason to skip or None)] of the fenced blocks in ``language``."""
    blocks, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == f"```{language}":
            start = i + 1
            end = next(j for j in range(start, len(lines)) if lines[j].strip() == "```")
            previous = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            mark = SKIP_MARK.search(previous)
            blocks.append((start + 1, "\n".join(lines[start:end]), mark and mark.group(1)))
            i = end
        i += 1
    return blocks


PYTHON_BLOCKS = code_blocks(read_readme(), "python")


def test_readme_is_short_and_has_its_figure():
    text = read_readme()
    assert len(text.encode("utf-8")) <= 12 * 1024
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", text)
    assert figures, "the README shows no figure"
    for path in figures:
        assert os.path.isfile(os.path.join(ROOT, path)), path


def test_setup_commands_are_unchanged_each_in_its_own_block():
    bash = [code.strip() for _, code, _ in code_blocks(read_readme(), "bash")]
    for command in SETUP_COMMANDS:
        assert command in bash, command


def test_relative_links_resolve():
    for doc in ["README.md", "CHANGELOG.md"] + [
            os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs"))
            if f.endswith(".md")]:
        with open(os.path.join(ROOT, doc), encoding="utf-8") as f:
            text = f.read()
        base = os.path.dirname(os.path.join(ROOT, doc))
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" in target:
                continue
            assert os.path.exists(os.path.join(base, target)), f"{doc}: {target}"


def test_readme_has_python_blocks():
    assert len(PYTHON_BLOCKS) >= 5


@pytest.mark.parametrize("line, code, skip", PYTHON_BLOCKS,
                         ids=[f"line{line}" for line, _, _ in PYTHON_BLOCKS])
def test_readme_python_block_runs(line, code, skip, tmp_path, monkeypatch):
    if skip:
        pytest.skip(skip)
    if "import timm" in code:
        pytest.importorskip("timm")
    if "torch.onnx.export" in code:
        pytest.importorskip("onnxscript")
    monkeypatch.chdir(tmp_path)  # files a block writes (an ONNX model) land here
    torch.manual_seed(0)
    namespace = {"__name__": "__readme__"}
    exec(compile(code, f"README.md:{line}", "exec"), namespace)  # noqa: S102 - the README's own code


def public_objects():
    """(qualified name, object) of senet_kernels.__all__ and of the models' callables."""
    out = [(f"senet_kernels.{name}", getattr(senet_kernels, name))
           for name in senet_kernels.__all__]
    out += [(f"senet_kernels.models.{name}", getattr(senet_kernels.models, name))
            for name in senet_kernels.models.__all__
            if callable(getattr(senet_kernels.models, name))]
    return out


@pytest.mark.parametrize("name, obj", public_objects(), ids=[n for n, _ in public_objects()])
def test_public_name_has_its_own_docstring(name, obj):
    doc = inspect.getdoc(obj) or ""
    # a dataclass's or NamedTuple's generated docstring ("BackendStatus(available: bool,
    # reason: str)") says nothing
    generated = re.fullmatch(rf"{re.escape(getattr(obj, '__name__', ''))}\(.*\)", doc.strip())
    assert doc.strip() and not generated, f"{name} has no docstring of its own"


def test_package_docstring_lists_the_public_names():
    doc = senet_kernels.__doc__
    for name in senet_kernels.__all__:
        assert name in doc, name
    assert "senet_kernels.models" in doc
