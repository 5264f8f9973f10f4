"""Shared test setup: slow tests opt-in, 1 torch thread, a tiny parallel corpus fixture."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch

from gapless.corpora import synthetic_pair

torch.set_num_threads(1)  # tiny test models: one thread is several times faster than two on a
# busy 2-core machine (the threads spin against each other)

SLOW = os.environ.get("GAPLESS_SLOW") == "1"


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: long tests, run with GAPLESS_SLOW=1 (not in the default suite)"
    )


def pytest_collection_modifyitems(config, items):
    if SLOW:
        return
    skip = pytest.mark.skip(reason="slow test: run with GAPLESS_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


TINY_SIZES = {"train": 300, "valid": 20, "test2016": 20}


@pytest.fixture
def tiny_corpus(tmp_path) -> Path:
    """A small De->En corpus directory (``<split>.de`` / ``<split>.en`` for train, valid and
    test2016) drawn from the synthetic grammar; use it as ``data.corpus``."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    rng = random.Random(7)
    for split, n in TINY_SIZES.items():
        pairs = [synthetic_pair(rng) for _ in range(n)]
        for lang, col in (("de", 0), ("en", 1)):
            (folder / f"{split}.{lang}").write_text(
                "".join(p[col] + "\n" for p in pairs), encoding="utf-8"
            )
    return folder
