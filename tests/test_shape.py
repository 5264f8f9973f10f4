"""The package stays easy to live in: short functions, short modules, short parameter lists,
and no speed stories in code (figures live in docs/benchmarks.md)."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gapless"
MAX_FUNCTION_LINES, MAX_MODULE_LINES, MAX_PARAMETERS = 60, 500, 7
SOURCES = sorted(PACKAGE.rglob("*.py"))

# a speed, a memory size, a ratio of speeds, or when / where something was measured
STORY = re.compile(
    r"\d[\d.]*\s*(?:ms|µs|us|sec|seconds|s/update|s/step|sentences/s|sent/s|tok/s|tokens/s|"
    r"it/s|GB|MB|KB|GiB|MiB|KiB)\b"
    r"|[~≈]\s*\d[\d.]*\s*x\b|\b\d[\d.]*x (?:faster|slower|the time|more|less)\b"
    r"|\bmeasured (?:in|at)\b|\bbenchmarked\b|/tmp/|\bsession \d|\b20\d\d-\d\d-\d\d\b"
    r"|\d[\d.]*\s*->\s*\d[\d.]*\s*->|\d[\d.]*\s*% of (?:a|the)\b",
    re.IGNORECASE,
)


def _rel(path: Path) -> str:
    return str(path.relative_to(PACKAGE.parent))


def shape_problems(path: Path) -> list[str]:
    """Functions over MAX_FUNCTION_LINES lines or MAX_PARAMETERS parameters (self / cls not
    counted); the module over MAX_MODULE_LINES lines."""
    source = path.read_text(encoding="utf-8")
    problems = []
    if len(source.splitlines()) > MAX_MODULE_LINES:
        problems.append(f"{_rel(path)}: {len(source.splitlines())} lines")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - node.lineno + 1
            args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            params = [a.arg for a in args if a.arg not in ("self", "cls")]
            if lines > MAX_FUNCTION_LINES or len(params) > MAX_PARAMETERS:
                problems.append(f"{_rel(path)}:{node.lineno} {node.name}: {lines} lines, "
                                f"{len(params)} parameters")
    return problems


def prose(source: str) -> list[tuple[int, str]]:
    """(line, text) of every comment and docstring of a module."""
    found = [(tok.start[0], tok.string) for tok in
             tokenize.generate_tokens(io.StringIO(source).readline)
             if tok.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                start = node.body[0].lineno
                found += [(start + i, line) for i, line in enumerate(doc.splitlines())]
    return found


@pytest.mark.parametrize("path", SOURCES, ids=_rel)
def test_functions_modules_and_parameter_lists_stay_short(path):
    assert not shape_problems(path)


@pytest.mark.parametrize("path", SOURCES, ids=_rel)
def test_no_speed_or_memory_stories_in_docstrings_and_comments(path):
    stories = [f"{_rel(path)}:{line}: {text.strip()}"
               for line, text in prose(path.read_text(encoding="utf-8")) if STORY.search(text)]
    assert not stories, "figures belong in docs/benchmarks.md:\n" + "\n".join(stories)


@pytest.mark.parametrize("path", SOURCES, ids=_rel)
def test_every_module_opens_with_a_sentence_saying_its_job(path):
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    assert doc and doc.strip(), f"{_rel(path)}: no module docstring"


def test_the_checks_can_fail(tmp_path):
    """The checkers themselves: a long function, many parameters and stories are all caught."""
    body = "\n".join(f"    x{i} = {i}" for i in range(61))
    src = PACKAGE / "_shape_probe.py"
    try:
        src.write_text('"""A module."""\n\n\ndef long(a, b, c, d, e, f, g, h):\n' + body + "\n")
        assert shape_problems(src) == ["gapless/_shape_probe.py:4 long: 62 lines, 8 parameters"]
    finally:
        src.unlink()
    for story in ("# 3.5 GB peak", "# ~7x faster", '"""151 -> 134 -> 119 sentences/s"""',
                  "# measured in /tmp/x.py", "# 12 ms per call", "# tensors up to 32 MiB",
                  "~16% of a training step"):
        assert STORY.search(story), story
    for fine in ("# [B,T,D] hidden states", "# the 2x2 block", "# p = 0.5 at update 400",
                 "# Vaswani et al. 2017, sec. 5.4", "# a result measured with these settings"):
        assert not STORY.search(fine), fine
