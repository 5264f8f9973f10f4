"""Streaming prepare and sharded, memory-mapped data: the same batches as before, exact resume
across shards, old run directories, the opt-in filters, worker processes, gzip input."""

from __future__ import annotations

import contextlib
import gzip
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from gapless import config as config_mod
from gapless.checkpoint import RunDir
from gapless.corpora import synthetic_pair
from gapless.data import (
    BOS,
    DROP_REASONS,
    EOS,
    CorpusError,
    ParallelData,
    Vocab,
    collate,
    load_split,
    pad_sequences,
    read_lines,
    token_batches,
)
from gapless.data import encode as encode_mod
from gapless.data.filters import SeenHashes
from gapless.data.order import length_order
from gapless.data.text import line_chunks, scan
from gapless.data.vocab import sample_indices
from gapless.prepare import prepare
from gapless.training import train

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


@pytest.fixture(autouse=True)
def _keep_thread_count():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _pairs(n: int, seed: int = 7) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [synthetic_pair(rng) for _ in range(n)]


def _corpus(folder: Path, train: list[tuple[str, str]], gz: bool = False) -> Path:
    folder.mkdir(parents=True)
    for split, pairs in (("train", train), ("valid", _pairs(12, 3))):
        for lang, col in (("de", 0), ("en", 1)):
            text = "".join(p[col] + "\n" for p in pairs).encode()
            if gz and split == "train":
                (folder / f"{split}.{lang}.gz").write_bytes(gzip.compress(text))
            else:
                (folder / f"{split}.{lang}").write_bytes(text)
    return folder


def _cfg(corpus: Path, **over):
    base = {"data.corpus": str(corpus), "data.vocab_size": 60, "data.workers": 0,
            "train.device": "cpu", "train.dtype": "fp32", "train.threads": 1,
            "train.valid_every": 1000, "train.save_every": 1000, "train.log_every": 5,
            "train.valid_max_sentences": 4, "decode.beam": 1, "train.max_tokens": 300}
    return config_mod.load(TINY, {**base, **over})


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# ----------------------------------------------------------------------------------------------
# batching: the same batches as the per-sentence loop it replaces


def loop_token_batches(src_lens, tgt_lens, max_tokens, seed, epoch):
    """The batching before the numpy version, kept verbatim as the reference."""
    rng = np.random.default_rng([seed, epoch])
    order = np.lexsort((rng.random(len(src_lens)), src_lens, tgt_lens))
    batches, start, longest = [], 0, 0
    for pos, i in enumerate(order):
        length = max(src_lens[i], tgt_lens[i])
        if pos > start and max(longest, length) * (pos - start + 1) > max_tokens:
            batches.append(order[start:pos])
            start, longest = pos, 0
        longest = max(longest, length)
    if start < len(order):
        batches.append(order[start:])
    perm = rng.permutation(len(batches))
    return [batches[i] for i in perm]


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("max_tokens", [1, 9, 64, 300, 4096])
def test_token_batches_equal_the_loop_version(seed, max_tokens):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 2500))
    src, tgt = rng.integers(1, 80, n), rng.integers(1, 80, n)
    if seed == 3:
        src[::11] = 5000  # longer than the budget: alone in its batch
    for epoch in (1, 2):
        got = token_batches(src, tgt, max_tokens, seed, epoch)
        want = loop_token_batches(src, tgt, max_tokens, seed, epoch)
        assert [b.tolist() for b in got] == [b.tolist() for b in want]


def test_length_order_is_lexsort_whatever_the_lengths():
    rng = np.random.default_rng(0)
    src, tgt = rng.integers(0, 30, 3000), rng.integers(0, 30, 3000)
    noise = rng.random(3000)
    noise[100:110] = noise[5]  # ties in the noise: position decides, as in lexsort
    for s, t in ((src, tgt), (src * 5000, tgt)):  # 16-bit radix sorts, and the fallback
        assert (length_order(s, t, noise) == np.lexsort((noise, s, t))).all()
    assert token_batches(np.zeros(0, np.int64), np.zeros(0, np.int64), 10, 1, 1) == []


def test_seen_hashes_match_a_set():
    rng = np.random.default_rng(1)
    seen, reference = SeenHashes(), set()
    for _ in range(40):
        chunk = rng.integers(0, 3000, int(rng.integers(0, 200))).astype(np.uint64)
        want = []
        for h in chunk.tolist():
            want.append(h not in reference)
            reference.add(h)
        assert seen.first_seen(chunk).tolist() == want
    assert len(seen) == len(reference)


# ----------------------------------------------------------------------------------------------
# reading as a stream


def test_scan_and_chunks(tmp_path):
    a, b = tmp_path / "a.de", tmp_path / "b.en.gz"
    a.write_bytes("\ufeff  \nzwei\r\ndrei".encode())
    b.write_bytes(gzip.compress(b"one\ntwo\nthree\n"))
    assert scan(a) == (3, True) and scan(b) == (3, True)
    assert read_lines(a) == ["  ", "zwei", "drei"] and read_lines(b) == ["one", "two", "three"]
    chunks = list(line_chunks((a, b), 2))
    assert [(start, src, tgt) for start, src, tgt in chunks] == [
        (1, [b"  ", b"zwei\r"], [b"one", b"two"]), (3, [b"drei"], [b"three"])]
    b.write_bytes(gzip.compress(b"one\n"))
    with pytest.raises(CorpusError, match="differ in length from line 2"):
        list(line_chunks((a, b), 2))


def test_sample_indices_are_uniform_distinct_and_fixed_by_the_seed():
    assert sample_indices(10, 10, 1) is None
    got = sample_indices(10_000, 3000, 1, block=1000)
    assert len(got) == len(set(got.tolist())) == 3000 and (np.diff(got) > 0).all()
    assert 0 <= got[0] and got[-1] < 10_000 and (sample_indices(10_000, 3000, 1, 1000) == got).all()
    assert 200 < np.sum(got < 1000) < 400  # each block gets its share


# ----------------------------------------------------------------------------------------------
# prepare: shards, workers, gzip, SentencePiece input, old run directories


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return _corpus(tmp_path_factory.mktemp("shards") / "corpus", _pairs(300))


def test_sharded_data_gives_the_same_batches_as_one_shard(corpus, tmp_path):
    one = prepare(_cfg(corpus), tmp_path / "one").train
    many = prepare(_cfg(corpus, **{"data.shard_pairs": 37}), tmp_path / "many").train
    assert len(one.shards) == 1 and len(many.shards) == 9 and len(many.shards[-1]) == 300 - 8 * 37
    assert (one.src_lens == many.src_lens).all() and (one.tgt_lens == many.tgt_lens).all()
    index = json.loads((tmp_path / "many" / "data" / "train" / "index.json").read_text())
    assert index["pairs"] == 300 and [s["pairs"] for s in index["shards"]][:2] == [37, 37]
    for idx in token_batches(one.src_lens, one.tgt_lens, 300, 1, 1)[:6]:
        a, b = collate(one, idx), collate(many, idx)
        for name in ("src", "tgt_in", "tgt_out", "index"):
            assert torch.equal(getattr(a, name), getattr(b, name))
        # and what collating sentence by sentence gave
        tgt = [many.tgt[i] for i in idx]
        assert torch.equal(a.src, pad_sequences([many.src[i] for i in idx], suffix=EOS))
        assert torch.equal(a.tgt_in, pad_sequences(tgt, prefix=BOS))
        assert torch.equal(a.tgt_out, pad_sequences(tgt, suffix=EOS))


def test_workers_write_the_same_shards_as_one_process(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(encode_mod, "CHUNK_PAIRS", 23)  # many chunks over both workers
    over = {"data.shard_pairs": 50, "data.dedup": True}
    runs = {w: tmp_path / f"w{w}" for w in (0, 2)}
    reports = [prepare(_cfg(corpus, **over, **{"data.workers": w}), run).report["train"]
               for w, run in runs.items()]
    assert reports[0] == reports[1] and reports[0]["dropped"]["duplicate"] > 0
    assert _files(runs[0] / "data" / "train") == _files(runs[2] / "data" / "train")


def test_gzip_training_files(corpus, tmp_path):
    gz = _corpus(tmp_path / "gz", _pairs(300), gz=True)
    plain = prepare(_cfg(corpus), tmp_path / "plain")
    zipped = prepare(_cfg(gz), tmp_path / "zipped")
    assert zipped.report["train_files"][0].endswith("train.de.gz")
    assert (tmp_path / "plain/spm.vocab").read_bytes() == (tmp_path / "zipped/spm.vocab").read_bytes()
    assert _files(tmp_path / "plain/data/train") == _files(tmp_path / "zipped/data/train")
    assert plain.report["train"] == zipped.report["train"]


def test_sentencepiece_input_is_unchanged_below_the_sample(tmp_path, monkeypatch):
    """A corpus under data.spm_sample: SentencePiece reads what it read before (every non-blank
    line, source then target) with the same settings, so the model is byte-identical."""
    pairs = _pairs(200)
    pairs[5] = ("  ", "blank source")
    corpus = _corpus(tmp_path / "corpus", pairs)
    fixed = tmp_path / "spm_tmp"
    fixed.mkdir()
    joint = fixed / "joint.txt"  # the earlier code: all lines in memory, blank ones left out
    lines = read_lines(corpus / "train.de") + read_lines(corpus / "train.en")
    joint.write_text("".join(x + "\n" for x in lines if x.strip()), encoding="utf-8")
    run = RunDir(tmp_path / "run")
    Vocab.train([joint], run.spm_prefix, 60, "bpe", 1.0, seed=1)
    before = run.spm_model.read_bytes()
    monkeypatch.setattr("tempfile.TemporaryDirectory", lambda: contextlib.nullcontext(str(fixed)))
    prepare(_cfg(corpus), run.path, force=True)
    assert run.spm_model.read_bytes() == before
    sampled = prepare(_cfg(corpus, **{"data.spm_sample": 150}), tmp_path / "sampled")
    assert sampled.report["key"]["spm_sample"] == 150 and len(sampled.vocab) > 20


def test_errors_name_file_and_line_from_worker_processes(tmp_path, monkeypatch):
    monkeypatch.setattr(encode_mod, "CHUNK_PAIRS", 5)
    pairs = _pairs(60)
    pairs[16] = (pairs[16][0], "  ")
    corpus = _corpus(tmp_path / "corpus", pairs)
    cfg = _cfg(corpus, **{"data.workers": 2, "data.bad_pairs": "error"})
    with pytest.raises(CorpusError, match=rf"^{corpus / 'train.en'}:17: empty line \(set data"):
        prepare(cfg, tmp_path / "run")
    assert not list((tmp_path / "run" / "data").iterdir())  # no half-written split
    raw = (corpus / "train.de").read_bytes().split(b"\n")
    raw[39] += b" \xff"
    (corpus / "train.de").write_bytes(b"\n".join(raw))
    with pytest.raises(CorpusError, match=rf"^{corpus / 'train.de'}:40: invalid UTF-8"):
        prepare(_cfg(corpus, **{"data.workers": 2}), tmp_path / "run")


def _write_old_format(data: ParallelData, path: Path) -> None:
    """``ParallelData.save`` as it was before shards: one safetensors file."""
    from safetensors.numpy import save_file

    def flat(seqs):
        offsets = np.cumsum([0] + [len(s) for s in seqs]).astype(np.int64)
        joined = np.concatenate(seqs) if seqs else np.zeros(0, np.int32)
        return joined.astype(np.int32), offsets

    s, so = flat(list(data.src))
    t, to = flat(list(data.tgt))
    save_file({"src": s, "src_offsets": so, "tgt": t, "tgt_offsets": to}, str(path))


def test_a_run_prepared_before_shards_still_loads_and_trains(corpus, tmp_path):
    cfg = _cfg(corpus, **{"train.max_updates": 3})
    new = prepare(cfg, tmp_path / "new")
    old = RunDir(tmp_path / "old")
    shutil.copytree(tmp_path / "new", old.path)
    report = json.loads((old.data / "prepare.json").read_text())
    for split in ("train", "valid"):
        _write_old_format(getattr(new, split), old.data / f"{split}.safetensors")
        shutil.rmtree(old.data / split)
    report.pop("train_shards")
    (old.data / "prepare.json").write_text(json.dumps(report))
    again = prepare(cfg, old.path)  # same settings: reused, read from the old files
    assert again.report == report and not (old.data / "train").exists()
    assert (again.train.src_lens == new.train.src_lens).all() and len(again.valid) == 12
    idx = np.arange(0, 300, 7)
    assert torch.equal(collate(again.train, idx).tgt_out, collate(new.train, idx).tgt_out)
    assert train(cfg, old.path).update == 3
    changed = prepare(_cfg(corpus, **{"data.drop_identical": True}), old.path)
    assert changed.report["key"]["drop_identical"] is True
    assert (old.data / "train" / "index.json").is_file()
    assert not (old.data / "train.safetensors").exists()
    assert load_split(old.data, "valid").src_lens.tolist() == new.valid.src_lens.tolist()


# ----------------------------------------------------------------------------------------------
# the opt-in filters


def _expected_drops(pairs: list[tuple[str, str]], vocab: Vocab) -> dict[str, list[int]]:
    """Per filter: the line numbers it drops, computed here pair by pair."""
    seen, duplicate = set(), []
    for number, pair in enumerate(pairs, 1):
        if pair in seen:
            duplicate.append(number)
        seen.add(pair)
    lens = [(len(vocab.encode([s])[0]), len(vocab.encode([t])[0])) for s, t in pairs]
    return {"duplicate": duplicate,
            "identical": [n for n, (s, t) in enumerate(pairs, 1) if s.strip() == t.strip()],
            "ratio": [n for n, (a, b) in enumerate(lens, 1) if max(a, b) > 3.0 * min(a, b)]}


def test_each_filter_is_off_by_default_and_counted_when_on(tmp_path):
    pairs = _pairs(120)
    pairs[10] = pairs[3]  # exact duplicates
    pairs[50] = pairs[3]
    pairs[20] = ("Ein Hund.", "Ein Hund. ")  # source equals target
    pairs[30] = ("Ein Hund.", " ".join(["the big dog runs"] * 3))  # far longer target
    corpus = _corpus(tmp_path / "corpus", pairs)
    default = prepare(_cfg(corpus), tmp_path / "default")
    assert default.report["train"]["kept"] == 120 and "dedup" not in default.report["key"]
    assert "repeating" not in default.report["train_summary"]
    expected = _expected_drops(pairs, default.vocab)
    assert 11 in expected["duplicate"] and 51 in expected["duplicate"]
    assert expected["identical"] == [21] and 31 in expected["ratio"]
    for setting, value, reason in (("dedup", True, "duplicate"),
                                   ("drop_identical", True, "identical"),
                                   ("max_len_ratio", 3.0, "ratio")):
        report = prepare(_cfg(corpus, **{f"data.{setting}": value}), tmp_path / setting).report
        dropped, lines = report["train"]["dropped"], expected[reason]
        assert dropped[reason] == sum(dropped.values()) == len(lines), (setting, dropped)
        assert report["train"]["kept"] == 120 - len(lines)
        assert report["train"]["first_dropped"].startswith(f"{corpus / 'train.de'}:{lines[0]}: ")
        assert f"{len(lines)} {DROP_REASONS[reason]}" in report["train_summary"]
        assert report["key"][setting] == value


def test_filter_settings_are_range_checked():
    with pytest.raises(config_mod.ConfigError) as err:
        config_mod.from_dict({}, {"data.workers": -1, "data.max_len_ratio": 0.5,
                                  "data.shard_pairs": 0, "data.spm_sample": 0})
    for name in ("workers", "max_len_ratio", "shard_pairs", "spm_sample"):
        assert f"data.{name}" in str(err.value)
    assert config_mod.from_dict({}, {"data.workers": None}).data.workers is None


# ----------------------------------------------------------------------------------------------
# exact resume across shards


def _weights(run: Path) -> dict:
    return load_file(str(RunDir(run).pointer("last") / "model.safetensors"))


def test_resume_across_shard_boundaries_is_exact(corpus, tmp_path):
    over = {"data.shard_pairs": 40, "model.dropout": 0.1, "train.save_every": 6}
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(_cfg(corpus, **over, **{"train.max_updates": 12}), straight)
    assert train(_cfg(corpus, **over, **{"train.max_updates": 7}), resumed).update == 7
    assert train(_cfg(corpus, **over, **{"train.max_updates": 12}), resumed).update == 12
    assert len(load_split(RunDir(resumed).data, "train").shards) == 8
    a, b = _weights(straight), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
