"""Shared test setup: slow tests opt-in, 1 torch thread, a tiny parallel corpus fixture, a
builder of tiny random-init translators."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch

from gapless import config as config_mod
from gapless.config import DecodeConfig
from gapless.corpora import synthetic_pair
from gapless.data import Vocab
from gapless.inference import Translator
from gapless.model import Transformer

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


@pytest.fixture(scope="session")
def tiny_translator(tmp_path_factory):
    """A builder of random-init tiny Transformers (seed 0, so equal calls give equal weights)
    with one SentencePiece model of the synthetic corpus: ``tiny_translator(beam=2,
    max_len_b=5)`` -> a CPU ``Translator`` whose decode settings are those keywords."""
    folder = tmp_path_factory.mktemp("spm")
    rng = random.Random(7)
    text = "".join(f"{de}\n{en}\n" for de, en in (synthetic_pair(rng) for _ in range(300)))
    (folder / "train.txt").write_text(text, encoding="utf-8")
    vocab = Vocab.train([folder / "train.txt"], folder / "spm", 120, "bpe", 1.0)
    cfg = config_mod.load("tiny", {"model.vocab_size": len(vocab)})

    def build(**decode) -> Translator:
        torch.manual_seed(0)
        return Translator(Transformer(cfg.model), vocab, DecodeConfig(**decode),
                          torch.device("cpu"))

    return build
