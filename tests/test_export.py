"""``gapless export --format ctranslate2`` and the CTranslate2 engine: the exported model
computes gapless's model and searches as gapless does (equal ids), refusals, ``--force``,
the missing package, engine detection, evaluate on an exported directory."""

from __future__ import annotations

import json
import random
import shutil
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("ctranslate2")

from gapless import config as config_mod
from gapless.checkpoint import RunDir
from gapless.cli import main
from gapless.corpora import synthetic_pair
from gapless.data import EOS
from gapless.evaluate import evaluate
from gapless.export import CTranslate2Engine, ExportError, export, load_engine
from gapless.inference import Translator, length_limits, load
from gapless.model import Transformer
from gapless.prepare import prepare
from gapless.training import train


def _sources(n: int, seed: int = 11) -> list[str]:
    rng = random.Random(seed)
    return [synthetic_pair(rng)[0] for _ in range(n)]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A prepared tiny run (SentencePiece, config; no weights) on a generated corpus."""
    work = tmp_path_factory.mktemp("export")
    corpus = work / "corpus"
    corpus.mkdir()
    rng = random.Random(7)
    for split, n in {"train": 300, "valid": 20, "test2016": 20}.items():
        pairs = [synthetic_pair(rng) for _ in range(n)]
        for lang, col in (("de", 0), ("en", 1)):
            (corpus / f"{split}.{lang}").write_text("".join(p[col] + "\n" for p in pairs),
                                                    encoding="utf-8")
    prepare(config_mod.load("tiny", {"data.corpus": str(corpus)}), work / "base")
    return work / "base"


@pytest.fixture(scope="module")
def trained(base, tmp_path_factory) -> Path:
    """The tiny preset trained for 150 updates at fp32: short, not degenerate."""
    run = tmp_path_factory.mktemp("trained") / "run"
    shutil.copytree(base, run)
    over = {"train.device": "cpu", "train.dtype": "fp32", "train.threads": 1,
            "train.max_updates": 150, "train.valid_every": 150, "train.save_every": 150,
            "train.valid_max_sentences": 5, "train.log_every": 150}
    train(config_mod.load(run / "config.yaml", over), run)
    return run


def random_run(base: Path, dest: Path, seed: int = 0, **overrides) -> Path:
    """``base`` with model ``overrides`` and random weights (norm gains and biases moved off
    1 and 0, so a wrongly placed norm shows)."""
    shutil.copytree(base, dest)
    cfg = config_mod.load(dest / "config.yaml", {f"model.{k}": v for k, v in overrides.items()})
    config_mod.save(cfg, dest / "config.yaml")
    torch.manual_seed(seed)
    model = Transformer(cfg.model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    RunDir(dest).save(model, None, {"update": 0}, tags=("last", "best"))
    return dest


def engines(run: Path, out: Path, **kw) -> tuple[Translator, CTranslate2Engine]:
    export(run, out, **kw)
    return load(run, device="cpu"), load_engine(out, device="cpu", threads=1)


def test_trained_model_gives_the_same_ids_greedy_and_beam(trained, tmp_path):
    gap, ct2 = engines(trained, tmp_path / "ct2")
    src = gap.vocab.encode(_sources(50))
    limits = length_limits([len(s) for s in src], gap.decode_cfg, gap.model.cfg.max_positions)
    for beam in (1, 4):
        ours, theirs = gap.translate_nbest(src, beam=beam), ct2.translate_nbest(src, beam=beam)
        assert [h[0].tokens for h in theirs] == [h[0].tokens for h in ours], beam
        for a, b, limit in zip(ours, theirs, limits):
            if len(a[0].tokens) < limit:  # at the limit the two score the end differently
                assert abs(a[0].score - b[0].score) < 0.05
                assert abs(a[0].log_prob - b[0].log_prob) < 0.05 * (len(a[0].tokens) + 1)


def test_the_engine_protocol_and_nbest(trained, tmp_path):
    gap, ct2 = engines(trained, tmp_path / "ct2")
    lines = _sources(4, seed=3)
    assert ct2.translate(lines, beam=4) == gap.translate(lines, beam=4)
    for ours, theirs in zip(gap.translate_text(lines, beam=4, nbest=3),
                            ct2.translate_text(lines, beam=4, nbest=3)):
        assert [t.text for t in theirs] == [t.text for t in ours]
        assert [t.tokens for t in theirs] == [t.tokens for t in ours]
    described = ct2.describe()
    assert described["engine"] == ct2.name == "ctranslate2"
    assert described["checkpoint"] == gap.describe()["checkpoint"]
    assert ct2.max_source_tokens == gap.max_source_tokens
    sampled = ct2.translate(lines, sampling={"temperature": 1.0, "top_k": 5, "top_p": 1.0})
    assert len(sampled) == len(lines)


VARIANTS = {
    "post": {},
    "pre": {"norm_position": "pre"},
    "learned": {"positions": "learned"},
    "untied": {"tie_output": False, "tie_encoder_decoder": False},
    "gelu_unscaled": {"activation": "gelu", "embed_scale": "none", "score": "none"},
    "rms_pre": {"norm": "rms", "norm_position": "pre"},
    "projections": {"projections": "shared_qk", "head_dim": 8},
    "identity_qkv": {"projections": "none", "positions": "learned"},
}


@pytest.mark.parametrize("name", VARIANTS)
def test_every_expressible_switch_computes_the_same_model(base, tmp_path, name):
    run = random_run(base, tmp_path / "run", **VARIANTS[name])
    gap, ct2 = engines(run, tmp_path / "ct2")
    src = gap.vocab.encode(_sources(4, seed=5))
    hyps = gap.translate_ids(src, beam=1, max_len_a=0.0, max_len_b=12)
    assert ct2.translate_ids(src, beam=1, max_len_a=0.0, max_len_b=12) == hyps
    # teacher-forced log-probs of gapless's own output: the same function, not only the argmax
    scored = ct2.translator.score_batch([[ct2.pieces[t] for t in s] for s in src],
                                        [[ct2.pieces[t] for t in h] for h in hyps])
    with torch.no_grad():
        for s, h, res in zip(src, hyps, scored):
            logits = gap.model(torch.tensor([s + [EOS]]), torch.tensor([[2] + h]))
            lp = torch.log_softmax(logits.float(), -1)[0]
            gold = lp.gather(1, torch.tensor(h + [EOS])[:, None]).squeeze(1)
            assert torch.allclose(gold, torch.tensor(res.log_probs), atol=1e-4)


def test_unsupported_switches_are_refused_all_at_once_before_writing(base, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(base, run)
    cfg = config_mod.load(run / "config.yaml", {"model.norm": "batch", "model.score": "qk_norm"})
    config_mod.save(cfg, run / "config.yaml")
    out = tmp_path / "out"
    with pytest.raises(ExportError) as err:
        export(run, out, quantization="int4")
    message = str(err.value)
    for switch in ("model.norm=batch", "model.score=qk_norm", "int4"):
        assert switch in message
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_force_replaces_a_non_empty_directory_and_only_then(base, tmp_path):
    run = random_run(base, tmp_path / "run")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty"):
        export(run, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    with pytest.raises(ExportError, match="the run itself"):
        export(run, run, force=True)
    export(run, out, force=True, quantization="int8")
    names = {p.name for p in out.iterdir()}
    assert "keep.txt" not in names and {"model.bin", "spm.model", "gapless_export.json"} <= names
    info = json.loads((out / "gapless_export.json").read_text())
    assert info["quantization"] == "int8" and info["checkpoint"] == "step_00000000"
    assert info["config"]["model"]["d_model"] == 32 and info["ctranslate2_version"]
    assert load_engine(out, device="cpu", threads=1).translate(["Ein Hund."], beam=2)
    export(tmp_path / "run", tmp_path / "empty_ok")  # a fresh directory needs no --force


def test_without_ctranslate2_one_line_says_what_to_install(base, tmp_path, monkeypatch,
                                                           capsys):
    run = random_run(base, tmp_path / "run")
    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # import ctranslate2 -> ImportError
    with pytest.raises(ExportError, match=r"pip install 'gapless\[export\]'"):
        export(run, tmp_path / "out")
    assert main(["export", str(run), "--format", "ctranslate2", "--out",
                 str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install" in err
    assert not (tmp_path / "out").exists()


def test_engine_detection_and_the_command_line(trained, tmp_path, capsys):
    out = tmp_path / "ct2"
    assert main(["export", str(trained), "--format", "ctranslate2", "--out", str(out)]) == 0
    assert isinstance(load_engine(out, device="cpu"), CTranslate2Engine)
    assert isinstance(load_engine(trained, device="cpu"), Translator)
    with pytest.raises(ExportError, match="--engine ctranslate2"):
        load_engine(out, "gapless")
    with pytest.raises(FileNotFoundError):
        load_engine(trained, "ctranslate2")
    src = tmp_path / "in.txt"
    src.write_text("\n".join(_sources(5, seed=2)) + "\n")
    outputs = {}
    for name, args in (("auto", [str(out)]), ("forced", [str(out), "--engine", "ctranslate2"]),
                       ("gapless", [str(trained)])):
        dest = tmp_path / f"{name}.txt"
        assert main(["translate", *args, "--input", str(src), "--output", str(dest),
                     "--beam", "4", "--device", "cpu"]) == 0
        outputs[name] = dest.read_text()
    assert outputs["auto"] == outputs["forced"] == outputs["gapless"]


def test_evaluate_reports_the_same_bleu_and_the_export_records_it(trained, tmp_path, capsys):
    ours = evaluate(trained, "test2016", device="cpu", beam=4)
    out = tmp_path / "ct2"
    export(trained, out)
    info = json.loads((out / "gapless_export.json").read_text())
    assert info["scores"][0]["split"] == "test2016" and info["scores"][0]["bleu"] == ours["bleu"]
    assert info["scores"][0]["same_checkpoint"] is True
    engine = load_engine(out, device="cpu", threads=1)
    theirs = evaluate(out, "test2016", translator=engine, beam=4)
    assert theirs.keys() == ours.keys() and theirs["engine"] == "ctranslate2"
    for key in ("bleu", "chrf", "bleu_signature", "sentences", "checkpoint"):
        assert theirs[key] == ours[key], key
    assert (out / "eval" / "test2016.json").is_file() and (out / "eval" / "test2016.hyp").is_file()
    assert main(["evaluate", str(out), "--beam", "4", "--device", "cpu"]) == 0
    assert f"test2016: BLEU {ours['bleu']:.2f}" in capsys.readouterr().out


def test_several_workers_give_the_same_hypotheses_in_input_order(base, tmp_path):
    """``inter_threads`` 2 queues every batch at once; the answers equal one worker's."""
    out = export(random_run(base, tmp_path / "run"), tmp_path / "ct2")
    one = CTranslate2Engine(out, "cpu", threads=1)
    two = CTranslate2Engine(out, "cpu", threads=1, inter_threads=2)
    src = one.vocab.encode(_sources(23, seed=5))
    for beam in (1, 3):
        ours = one.translate_nbest(src, beam=beam, batch_size=4, nbest=2 if beam > 1 else 1)
        theirs = two.translate_nbest(src, beam=beam, batch_size=4, nbest=2 if beam > 1 else 1)
        assert [[h.tokens for h in x] for x in theirs] == [[h.tokens for h in x] for x in ours]
    assert two.describe()["inter_threads"] == 2 and one.describe()["inter_threads"] == 1


def test_ct2_speed_thread_layouts():
    from benchmarks.ct2_speed import layout_name, parse_engines, parse_layouts

    assert parse_layouts("", 2) == [(1, 2)]
    assert parse_layouts("1x2, 2X1", 2) == [(1, 2), (2, 1)]
    for bad in ("2", "0x2", "ax1"):
        with pytest.raises(SystemExit):
            parse_layouts(bad, 2)
    assert layout_name((2, 1)) == "2x1"
    assert parse_engines("ct2_int8, gapless_bf16,ct2_int8") == ["ct2_int8", "gapless_bf16"]
    for bad in ("", "ct2_int4"):
        with pytest.raises(SystemExit):
            parse_engines(bad)


def test_ct2_speed_shares_sentences_by_length_and_merges_them_back():
    from benchmarks.ct2_speed import merge, round_order, shards

    lengths = [5, 1, 9, 3, 3, 7, 2]
    assert shards(lengths, 1) == [list(range(7))]  # one worker: all, in input order
    two = shards(lengths, 2)  # by length 1 6 3 4 0 5 2, dealt in turn, each in input order
    assert two == [[0, 1, 2, 3], [4, 5, 6]]
    assert merge(two, [[f"s{i}" for i in s] for s in two], 7) == [f"s{i}" for i in range(7)]
    for bad in ([[0, 1, 2, 3], [3, 5, 6]], [[0, 1, 2], [4, 5, 6]]):  # twice / missing
        with pytest.raises(ValueError):
            merge(bad, [[0] * len(s) for s in bad], 7)
    assert round_order("abc", 0) == list("abc") and round_order("abc", 1) == list("cba")


def test_ct2_speed_workers_start_together_or_stop_when_one_failed(tmp_path):
    from benchmarks.ct2_speed import wait_for_all

    (tmp_path / "ready.1").touch()  # the other worker is ready: no wait
    wait_for_all(tmp_path, 0, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ready.0", "ready.1"]
    (tmp_path / "ready.1").unlink()
    (tmp_path / "abort").touch()  # the other one failed (the parent says so)
    with pytest.raises(SystemExit, match="another worker failed"):
        wait_for_all(tmp_path, 0, 2)


def test_ct2_speed_measures_each_engine_and_layout_in_its_own_processes(base, tmp_path):
    """gapless 2x1: two worker processes, each half of the sentences, merged back in input
    order (greedy, one sentence per batch: the same hypotheses as one process); CTranslate2
    in a process of its own per measurement, never the test's."""
    import os

    from benchmarks.common import split_lines
    from benchmarks.ct2_speed import parse_args, run_benchmark

    run = random_run(base, tmp_path / "run")
    args = parse_args([str(run), "--beam", "1", "--batch-size", "1", "--threads", "1",
                       "--layouts", "1x1,2x1", "--engines", "gapless_bf16,ct2_int8",
                       "--pause", "0"])
    doc, found = run_benchmark(args)
    rows = {(r["engine"], r["layout"]): r for r in doc["results"]}
    assert sorted(rows) == [("ct2_int8", "1x1"), ("ct2_int8", "2x1"),
                            ("gapless_bf16", "1x1"), ("gapless_bf16", "2x1")]
    assert rows[("gapless_bf16", "2x1")]["processes"] == 2
    assert rows[("gapless_bf16", "2x1")]["worker_sentences"] == [10, 10]
    assert rows[("ct2_int8", "2x1")]["processes"] == 1
    assert rows[("gapless_bf16", "1x1")]["processes"] == 1
    pids = [w["pid"] for runs in found.values() for r in runs for w in r["workers"]]
    assert len(set(pids)) == len(pids) == 5 and os.getpid() not in pids
    gapless = load(run, device="cpu", dtype="bf16")
    ours = gapless.translate(split_lines(run, "test2016")[0], beam=1, batch_size=1)
    assert len(set(ours)) >= 10  # the order is visible
    assert found[("gapless_bf16", "1x1")][0]["texts"] == ours
    assert found[("gapless_bf16", "2x1")][0]["texts"] == ours
    assert found[("ct2_int8", "2x1")][0]["texts"] == found[("ct2_int8", "1x1")][0]["texts"]
    same = doc["identical_hypotheses"]
    assert same["gapless_bf16_2x1_vs_1x1"] == same["ct2_int8_2x1_vs_1x1"] == 1.0
    best = doc["best_layout_of_each_engine"]
    assert set(best["layouts"]) == {"gapless_bf16", "ct2_int8"}
    assert "int8_over_gapless_bf16" in best
    assert "int8_over_gapless_bf16" in doc["same_layout"]["2x1"]
    assert not doc["run"].startswith("/") and str(tmp_path) not in json.dumps(doc["protocol"])
