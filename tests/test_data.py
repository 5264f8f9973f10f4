"""gapless.data (and the data side of prepare / corpora): checked reading, filtering, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gapless import config as config_mod
from gapless.corpora import split_paths
from gapless.data import (
    BOS,
    EOS,
    PAD,
    UNK,
    CorpusError,
    ParallelData,
    Vocab,
    collate,
    pad_sequences,
    read_lines,
    read_parallel,
    token_batches,
)
from gapless.prepare import prepare

DE = [
    "Ein Mann läuft im Park.",
    "Eine Frau sitzt am Strand.",
    "Zwei Hunde spielen im Schnee.",
    "Ein Kind lacht in der Stadt.",
    "Der Arbeiter wartet vor einem Haus.",
    "Die Musikerin tanzt auf einer Bühne.",
    "Ein alter Mann steht im Wasser.",
    "Drei Frauen arbeiten neben dem Fluss.",
]
EN = [
    "A man runs in the park.",
    "A woman sits on the beach.",
    "Two dogs play in the snow.",
    "A child laughs in the city.",
    "The worker waits in front of a house.",
    "The musician dances on a stage.",
    "An old man stands in the water.",
    "Three women work next to the river.",
]


def write(path, lines) -> None:
    path.write_text("".join(x + "\n" for x in lines), encoding="utf-8")


@pytest.fixture(scope="module")
def vocab(tmp_path_factory) -> Vocab:
    d = tmp_path_factory.mktemp("spm")
    write(d / "text.txt", DE * 4 + EN * 4)
    return Vocab.train([d / "text.txt"], d / "spm", 80, "bpe", 1.0)


# ----------------------------------------------------------------------------------------------
# reading: errors name file and line


def test_read_lines_strips_line_ends_and_keeps_other_separators(tmp_path):
    p = tmp_path / "a.txt"
    # \r\n endings, no final newline, and a U+2028 inside a line that must not split it
    p.write_bytes("eins\r\nzwei\u2028drei\nvier".encode())
    assert read_lines(p) == ["eins", "zwei\u2028drei", "vier"]


def test_missing_file_is_named(tmp_path):
    with pytest.raises(CorpusError, match=r"nope\.de.*not found"):
        read_lines(tmp_path / "nope.de")
    write(tmp_path / "x.en", ["a"])
    with pytest.raises(CorpusError, match=r"nope\.de"):
        read_parallel(tmp_path / "nope.de", tmp_path / "x.en")


def test_invalid_utf8_names_file_and_line(tmp_path):
    p = tmp_path / "bad.de"
    p.write_bytes(b"gut\nauch gut\nkaputt \xff\xfe hier\n")
    with pytest.raises(CorpusError, match=r"bad\.de:3: invalid UTF-8"):
        read_lines(p)


def test_line_count_mismatch_names_both_files(tmp_path):
    write(tmp_path / "train.de", DE)
    write(tmp_path / "train.en", EN[:-1])
    with pytest.raises(CorpusError) as err:
        read_parallel(tmp_path / "train.de", tmp_path / "train.en")
    msg = str(err.value)
    assert "train.de" in msg and "train.en" in msg
    assert str(len(DE)) in msg and str(len(EN) - 1) in msg


# ----------------------------------------------------------------------------------------------
# filtering: bad_pairs=error names file:line, bad_pairs=drop counts


def test_from_text_error_on_empty_line(vocab):
    src, tgt = DE[:], EN[:]
    tgt[4] = "   "
    with pytest.raises(CorpusError, match=r"^t\.en:5: empty line"):
        ParallelData.from_text(vocab, src, tgt, 64, "error", names=("s.de", "t.en"))


def test_from_text_error_on_long_line(vocab):
    src, tgt = DE[:], EN[:]
    src[2] = " ".join(DE)  # far more than 30 tokens
    with pytest.raises(CorpusError, match=r"^s\.de:3: \d+ tokens > max_len 30"):
        ParallelData.from_text(vocab, src, tgt, 30, "error", names=("s.de", "t.en"))


def test_from_text_drop_counts(vocab):
    src, tgt = DE[:], EN[:]
    src[1] = ""  # empty (line 2)
    tgt[3] = " ".join(EN)  # too long (line 4)
    src[6] = " ".join(DE)  # too long (line 7)
    data, report = ParallelData.from_text(vocab, src, tgt, 30, "drop", names=("s.de", "t.en"))
    assert (report.read, report.kept, report.dropped["empty"], report.dropped["too_long"]) == (
        8, 5, 1, 2)
    assert report.first_dropped.startswith("s.de:2: empty line")
    assert len(data) == 5
    assert "kept 5 of 8" in report.summary()
    # survivors in order, unchanged
    kept = [i for i in range(8) if i not in (1, 3, 6)]
    assert vocab.decode([s.tolist() for s in data.src]) == [DE[i] for i in kept]


def test_from_text_no_filter_for_evaluation_data(vocab):
    """Evaluation data keeps every line (blank ones too: line alignment); a line it cannot
    encode within data.max_len or one with a NUL byte is an error naming file:line."""
    src, tgt = DE[:], EN[:]
    src[0] = ""
    data, report = ParallelData.from_text(vocab, src, tgt, 30, "error", filter_pairs=False)
    assert len(data) == 8 and report.kept == 8
    tgt[1] = " ".join(EN)
    with pytest.raises(CorpusError, match=r"valid.en:2: \d+ tokens > max_len 30.*data.max_len"):
        ParallelData.from_text(vocab, src, tgt, 30, "drop", names=("valid.de", "valid.en"),
                               filter_pairs=False)
    tgt[1] = "a\x00b"
    with pytest.raises(CorpusError, match="valid.en:2: a NUL byte"):
        ParallelData.from_text(vocab, src, tgt, 30, "drop", names=("valid.de", "valid.en"),
                               filter_pairs=False)


def test_training_pairs_with_a_nul_byte_are_dropped_and_counted(vocab):
    src, tgt = DE[:], EN[:]
    src[3] = "ein\x00hund"
    data, report = ParallelData.from_text(vocab, src, tgt, 30, "drop", names=("t.de", "t.en"))
    assert report.dropped["nul"] == 1 and len(data) == len(DE) - 1 and "t.de:4: a NUL" in report.first_dropped
    assert "1 with a NUL byte" in report.summary()


def test_a_byte_order_mark_is_not_part_of_the_first_line(tmp_path):
    path = tmp_path / "ref.en"
    path.write_bytes("\ufeffA dog runs.\nA cat sits.\n".encode())
    assert read_lines(path) == ["A dog runs.", "A cat sits."]


def test_blank_training_or_validation_splits_get_our_error(tmp_path):
    cfg, corpus = _corpus_cfg(tmp_path, ["", "  "], ["", ""])
    with pytest.raises(CorpusError, match="train.de: the training split has no non-blank line"):
        prepare(cfg, tmp_path / "run")
    write(corpus / "train.de", DE)
    write(corpus / "train.en", EN)
    write(corpus / "valid.de", ["", ""])
    write(corpus / "valid.en", ["", ""])
    with pytest.raises(CorpusError, match="the validation split has no non-blank pair"):
        prepare(cfg, tmp_path / "run")


def test_from_text_nothing_left(vocab):
    with pytest.raises(CorpusError, match="no usable pairs"):
        ParallelData.from_text(vocab, ["", ""], ["a", "b"], 20, "drop", names=("s.de", "t.en"))


def _corpus_cfg(tmp_path, train_de, train_en, **data):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write(corpus / "train.de", train_de)
    write(corpus / "train.en", train_en)
    write(corpus / "valid.de", DE[:3])
    write(corpus / "valid.en", EN[:3])
    overrides = {"data.corpus": str(corpus), "data.vocab_size": 60, "data.max_len": 40}
    overrides.update({f"data.{k}": v for k, v in data.items()})
    return config_mod.from_dict({}, overrides), corpus


def test_prepare_error_names_file_and_line(tmp_path):
    de, en = DE * 3, EN * 3
    en[9] = ""
    cfg, corpus = _corpus_cfg(tmp_path, de, en, bad_pairs="error")
    with pytest.raises(CorpusError, match=rf"{corpus / 'train.en'}:10: empty line"):
        prepare(cfg, tmp_path / "run")


def test_prepare_drop_reports_counts(tmp_path):
    de, en = DE * 3, EN * 3
    en[9] = ""
    de[12] = " ".join(DE)  # > 40 tokens
    de[20] = ""
    cfg, corpus = _corpus_cfg(tmp_path, de, en, bad_pairs="drop")
    prep = prepare(cfg, tmp_path / "run")
    rep = prep.report["train"]
    assert (rep["read"], rep["kept"], rep["dropped"]["empty"], rep["dropped"]["too_long"]) == (
        24, 21, 2, 1)
    assert rep["first_dropped"] == f"{corpus / 'train.en'}:10: empty line"
    assert len(prep.train) == 21 and len(prep.valid) == 3
    # a second prepare reuses the files; a changed data setting prepares again
    again = prepare(cfg, tmp_path / "run")
    assert again.report == prep.report
    cfg.data.max_len = 1000
    changed = prepare(cfg, tmp_path / "run")
    assert changed.report["train"]["dropped"]["too_long"] == 0


def test_prepare_line_mismatch(tmp_path):
    cfg, _ = _corpus_cfg(tmp_path, DE, EN[:5])
    with pytest.raises(CorpusError, match=r"train\.de has 8 lines but .*train\.en has 5"):
        prepare(cfg, tmp_path / "run")


def test_split_paths_unknown_language_split_corpus(tmp_path):
    with pytest.raises(CorpusError, match=r"multi30k: unknown language 'xx' \(has en, de"):
        split_paths("multi30k", "train", "de", "xx", download=False)
    with pytest.raises(CorpusError, match=r"multi30k: unknown split 'dev' \(has train, valid"):
        split_paths("multi30k", "dev", "de", "en", download=False)
    with pytest.raises(CorpusError, match=r"unknown corpus 'nocorpus'"):
        split_paths("nocorpus", "train", "de", "en")
    # a directory corpus gives <split>.<lang> paths
    assert split_paths(str(tmp_path), "train", "de", "en") == (
        tmp_path / "train.de",
        tmp_path / "train.en",
    )


def test_split_paths_not_found_without_download(tmp_path, monkeypatch):
    monkeypatch.setenv("GAPLESS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(CorpusError, match=r"multi30k: files train\.de, train\.en not found"):
        split_paths("multi30k", "train", "de", "en", data_dir=str(tmp_path), download=False)


# ----------------------------------------------------------------------------------------------
# batching


def _lengths(n=500, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(2, 40, n), rng.integers(2, 40, n)


@pytest.mark.parametrize("max_tokens", [40, 100, 1000])
def test_token_batches_cover_and_respect_budget(max_tokens):
    src_lens, tgt_lens = _lengths()
    src_lens[7] = 3000  # longer than any budget: must still appear, alone
    batches = token_batches(src_lens, tgt_lens, max_tokens, seed=3, epoch=1)
    every = np.concatenate(batches)
    assert sorted(every.tolist()) == list(range(len(src_lens)))  # each index exactly once
    for b in batches:
        assert len(b) > 0
        longest = int(np.maximum(src_lens[b], tgt_lens[b]).max())
        assert len(b) == 1 or longest * len(b) <= max_tokens
    assert [b.tolist() for b in batches if 7 in b] == [[7]]


def test_token_batches_fill_greedily():
    # equal lengths: every batch but one holds exactly max_tokens // length sentences
    lens = np.full(100, 10)
    batches = token_batches(lens, lens, 95, seed=1, epoch=1)
    sizes = sorted(len(b) for b in batches)
    assert sizes == [1] + [9] * 11


def test_token_batches_deterministic_per_seed_and_epoch():
    src_lens, tgt_lens = _lengths()

    def run(seed, epoch):
        return [b.tolist() for b in token_batches(src_lens, tgt_lens, 200, seed, epoch)]

    assert run(1, 1) == run(1, 1)
    assert run(1, 1) != run(1, 2)
    assert run(1, 1) != run(2, 1)


def test_token_batches_empty():
    assert token_batches(np.zeros(0, np.int64), np.zeros(0, np.int64), 100, 1, 1) == []


def test_pad_sequences():
    seqs = [np.array([5, 6, 7]), np.array([8]), np.array([], dtype=np.int32)]
    plain = pad_sequences(seqs)
    assert plain.tolist() == [[5, 6, 7], [8, PAD, PAD], [PAD, PAD, PAD]]
    both = pad_sequences(seqs, prefix=BOS, suffix=EOS)
    assert both.tolist() == [
        [BOS, 5, 6, 7, EOS],
        [BOS, 8, EOS, PAD, PAD],
        [BOS, EOS, PAD, PAD, PAD],
    ]
    assert both.dtype == torch.long


def test_collate_shapes(vocab):
    data, _ = ParallelData.from_text(vocab, DE, EN, 64, "error")
    index = np.array([4, 0, 6])
    batch = collate(data, index)
    n_src = max(len(data.src[i]) for i in index) + 1
    n_tgt = max(len(data.tgt[i]) for i in index) + 1
    assert batch.src.shape == (3, n_src)
    assert batch.tgt_in.shape == batch.tgt_out.shape == (3, n_tgt)
    assert batch.index.tolist() == [4, 0, 6]
    assert (batch.tgt_in[:, 0] == BOS).all()
    for row, i in enumerate(index):
        n = len(data.tgt[i])
        assert batch.tgt_out[row, n] == EOS and batch.src[row, len(data.src[i])] == EOS
        assert batch.tgt_in[row, 1 : n + 1].tolist() == batch.tgt_out[row, :n].tolist()
        assert batch.tgt_out[row, :n].tolist() == data.tgt[i].tolist()
        assert (batch.tgt_out[row, n + 1 :] == PAD).all()
    assert batch.n_tokens == sum(len(data.tgt[i]) + 1 for i in index)
    assert data.src_lens.tolist() == [len(s) + 1 for s in data.src]


def test_parallel_data_round_trip(vocab, tmp_path):
    data, _ = ParallelData.from_text(vocab, DE, EN, 64, "error")
    data.save(tmp_path / "d")
    back = ParallelData.load(tmp_path / "d")
    assert len(back) == len(data)
    for a, b in zip([*data.src, *data.tgt], [*back.src, *back.tgt]):
        assert a.tolist() == b.tolist()
    assert (back.src_lens == data.src_lens).all() and (back.tgt_lens == data.tgt_lens).all()
    assert isinstance(back.shards[0].src, np.memmap)  # read from disk as needed
    assert not list(tmp_path.glob(".*"))  # nothing half-written left


def test_vocab_special_ids(vocab, tmp_path):
    sp = vocab.sp
    assert (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) == (PAD, UNK, BOS, EOS)
    ids = vocab.encode(["Ein Mann läuft im Park."])[0]
    assert ids and min(ids) > EOS  # no BOS / EOS added by encode
    assert vocab.decode([[BOS] + ids + [EOS, PAD, PAD]]) == ["Ein Mann läuft im Park."]
    assert len(vocab) <= 80
    assert vocab.encode([]) == [] and vocab.decode([]) == []  # not "" (one empty sequence)
    assert vocab.decode([[], [BOS, EOS]]) == ["", ""]


def test_vocab_rejects_other_special_ids(tmp_path):
    import sentencepiece as spm

    write(tmp_path / "t.txt", DE + EN)
    spm.SentencePieceTrainer.train(
        input=str(tmp_path / "t.txt"),
        model_prefix=str(tmp_path / "m"),
        vocab_size=60,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    with pytest.raises(CorpusError, match=r"m\.model: special ids"):
        Vocab(tmp_path / "m.model")
    with pytest.raises(CorpusError, match="not found"):
        Vocab(tmp_path / "none.model")
