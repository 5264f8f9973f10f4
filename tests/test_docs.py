"""Committed evidence names no folder of the machine that made it: reports, JSON and the
README use paths relative to the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ABSOLUTE = re.compile(r"(?<![\w.])/(?:work|root|home|tmp|Users|mnt)/[\w.-]+")
FILES = sorted(p for p in [ROOT / "README.md", *(ROOT / "docs").rglob("*")]
               if p.suffix in (".md", ".json", ".yaml", ".jsonl", ".txt"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_absolute_machine_paths(path):
    found = sorted(set(ABSOLUTE.findall(path.read_text(encoding="utf-8"))))
    assert not found, f"{path.relative_to(ROOT)} names machine paths: {found[:5]}"


def test_the_pattern_catches_and_spares():
    assert ABSOLUTE.findall('"run": "/work/runs/x"') == ["/work/runs"]
    assert not ABSOLUTE.findall("see ../shared/data/multi30k and docs/runs/x, a/tmp/b")


EVIDENCE = re.compile(r"docs/(?:runs|bench|gpu|results)/[\w./-]*\w")


@pytest.mark.parametrize("path", [p for p in FILES if p.suffix == ".md"],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_cited_evidence_exists(path):
    """Every docs/runs, docs/bench, docs/gpu, docs/results path a page cites is in the tree
    (a fresh clone runs this: what was never committed fails here)."""
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"git show \w+:\S+", "", text)  # history, cited by commit
    cited = {m.rstrip(".") for m in EVIDENCE.findall(text) if "NAME" not in m and "*" not in m}
    missing = sorted(c for c in cited if not (ROOT / c).exists()
                     and not any(ROOT.glob(c + "*")))
    assert not missing, f"{path.relative_to(ROOT)} cites missing evidence: {missing}"
