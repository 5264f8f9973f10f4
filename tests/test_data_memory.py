"""Data at scale without per-pair memory: the epoch order and batches in compact arrays (equal to
the lexsort / loop versions), memory-mapped int32 length files, pages handed back after reading,
128-bit duplicate hashes, encoding workers that do not import torch."""

from __future__ import annotations

import gc
import json
import random
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from test_shards import loop_token_batches  # the per-sentence loop: the reference

from gapless import config as config_mod
from gapless.corpora import synthetic_pair
from gapless.data import collate, load_split, token_batches
from gapless.data import order as order_mod
from gapless.data import workers as workers_mod
from gapless.data.batching import Batches
from gapless.data.filters import PairRules, SeenHashes, pair_hashes
from gapless.data.order import NoiseStream, length_order
from gapless.data.workers import WorkerPool
from gapless.prepare import prepare

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


@pytest.mark.parametrize("coarse", [2.0**32, 16.0])
def test_order_in_pieces_equals_the_lexsort(monkeypatch, coarse):
    """Small pieces (many groups of buckets, buckets split over pieces) and, with a coarse noise
    key of 4 bits, ties there on almost every row: broken on the full noise, drawn again."""
    monkeypatch.setattr(order_mod, "PIECE", 97)
    monkeypatch.setattr(order_mod, "COARSE", coarse)
    rng = np.random.default_rng(5)
    n = 5000
    src, tgt = rng.integers(1, 6, n).astype(np.int32), rng.integers(1, 4, n).astype(np.int32)
    src[::7] = 40  # one large bucket and lengths that skip values
    noise = rng.random(n)
    noise[100:400] = noise[3]  # equal noise: position decides
    assert (length_order(src, tgt, noise) == np.lexsort((noise, src, tgt))).all()
    stream = NoiseStream(4, 2)
    got = length_order(src, tgt, stream)
    assert (got == np.lexsort((np.random.default_rng([4, 2]).random(n), src, tgt))).all()
    assert stream.rng.random() == np.random.default_rng([4, 2]).random(n + 1)[-1]
    for max_tokens in (7, 64, 2048):
        want = loop_token_batches(src, tgt, max_tokens, 4, 2)
        assert token_batches(src, tgt, max_tokens, 4, 2) == want


def test_batches_are_compact_arrays_not_objects_per_batch_or_sentence(monkeypatch):
    """The batcher's peak memory is a few bytes per pair: the row order (int32) and a 32-bit
    noise key, not the lexsort's float and int64 temporaries or a Python object per row."""
    monkeypatch.setattr(order_mod, "PIECE", 1 << 14)
    n = 1_000_000
    rng = np.random.default_rng(1)
    src, tgt = rng.integers(3, 60, n).astype(np.int32), rng.integers(3, 60, n).astype(np.int32)
    tracemalloc.start()
    batches = token_batches(src, tgt, 2048, 1, 1)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert isinstance(batches, Batches) and batches.order.dtype == np.int32
    assert batches.order.nbytes + batches.bounds.nbytes + batches.visit.nbytes < 5 * n
    assert peak < 10 * n + (4 << 20), peak
    assert batches[3].base is batches.order  # a view, made when asked for
    assert sorted(np.concatenate(list(batches)).tolist()) == list(range(n))


def _corpus(folder: Path, n: int) -> Path:
    rng = random.Random(3)
    pairs = [synthetic_pair(rng) for _ in range(n)]
    folder.mkdir(parents=True)
    for split, part in (("train", pairs), ("valid", pairs[:12])):
        for lang, col in (("de", 0), ("en", 1)):
            (folder / f"{split}.{lang}").write_text("".join(p[col] + "\n" for p in part))
    return folder


def _cfg(corpus: Path, **over):
    base = {"data.corpus": str(corpus), "data.vocab_size": 60, "data.workers": 0,
            "data.shard_pairs": 70, "train.device": "cpu"}
    return config_mod.load(TINY, {**base, **over})


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("memory") / "run"
    prepare(_cfg(_corpus(run.parent / "corpus", 300)), run)
    return run


def _mapped(array: np.ndarray) -> bool:
    return isinstance(array, np.memmap) and not array.flags.owndata


def test_training_lengths_and_offsets_are_memory_mapped_int32(prepared):
    data = load_split(prepared / "data", "train")
    assert len(data.shards) == 5
    for lens, side in ((data.src_lens, "src_offsets"), (data.tgt_lens, "tgt_offsets")):
        assert _mapped(lens) and lens.dtype == np.int32 and len(lens) == 300
        offsets = [getattr(s, side) for s in data.shards]
        assert all(_mapped(o) for o in offsets)
        assert lens.tolist() == np.concatenate([np.diff(o) + 1 for o in offsets]).tolist()


def test_a_split_written_before_the_length_files_still_loads(prepared, tmp_path):
    import shutil

    old = tmp_path / "train"
    shutil.copytree(prepared / "data" / "train", old)
    index = json.loads((old / "index.json").read_text())
    del index["lengths"]
    (old / "index.json").write_text(json.dumps(index))
    for name in ("src_lens.npy", "tgt_lens.npy"):
        (old / name).unlink()
    new, again = load_split(prepared / "data", "train"), load_split(tmp_path, "train")
    assert again.src_lens.dtype == np.int32
    assert (again.src_lens == new.src_lens).all() and (again.tgt_lens == new.tgt_lens).all()


def _resident_kb(path: Path) -> int:
    """Resident kB of this process' mappings of ``path`` (Linux /proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if "-" in line.split(" ", 1)[0] and len(line.split()) >= 5:
            inside = line.split()[-1] == str(path)
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="Linux /proc")
def test_reading_batches_hands_the_mapped_pages_back(prepared):
    gc.collect()  # the maps of earlier tests' data (a ParallelData is in a reference cycle)
    data = load_split(prepared / "data", "train")
    batches = token_batches(data.src_lens, data.tgt_lens, 200, 1, 1)
    lens_file = prepared / "data" / "train" / "src_lens.npy"
    tokens_file = prepared / "data" / "train" / "shard-00000.src.npy"
    assert _resident_kb(lens_file) == 0  # read whole by the batcher, then unmapped
    batch = collate(data, np.arange(300))
    assert batch.src.shape[0] == 300 and _resident_kb(tokens_file) == 0
    assert len(batches) > 3


def test_duplicates_are_counted_exactly_with_128_bit_hashes(tmp_path):
    pairs = [(f"satz {i % 40}", f"sentence {i % 40}") for i in range(200)]
    hashes = pair_hashes([s.encode() for s, _ in pairs], [t.encode() for _, t in pairs])
    assert hashes.dtype == np.dtype("S16") and len(set(hashes.tolist())) == 40
    seen = SeenHashes()
    new = np.concatenate([seen.first_seen(hashes[a: a + 30]) for a in range(0, 200, 30)])
    assert new.tolist() == [i < 40 for i in range(200)] and len(seen) == 40


def test_encoding_workers_do_not_import_torch():
    """A worker registers the packages without running ``gapless/__init__`` (torch, the
    model), then imports what encoding needs."""
    boot = workers_mod.BOOT.replace(
        "from gapless.data.workers import serve\nserve()",
        "import json, gapless.data.encode, gapless.data.vocab, gapless.data.workers\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', "
        "'gapless'))))")
    out = subprocess.run([sys.executable, "-c", boot, str(workers_mod.PACKAGE)],
                         capture_output=True, text=True, check=True).stdout
    loaded = json.loads(out)
    assert "gapless.data.encode" in loaded and not any(m.startswith("torch") for m in loaded)
    assert "gapless.model" not in loaded


def test_workers_give_results_in_order_and_a_dead_one_is_an_error(prepared):
    rules = PairRules(1000)
    tasks = [(i + 1, [" ".join(["ein Hund"] * (i + 1)).encode()], [b"a dog"]) for i in range(7)]
    with WorkerPool(2, "gapless.data.encode", (str(prepared / "spm.model"), rules)) as pool:
        results = list(pool.map(iter(tasks)))
        lengths = [int(r.src_lens[0]) for r in results]
        assert [r.n for r in results] == [1] * 7 and lengths == sorted(set(lengths))
        pool.procs[1].kill()
        pool.procs[1].wait()
        with pytest.raises(RuntimeError, match="a worker process ended"):
            list(pool.map(iter(tasks)))
