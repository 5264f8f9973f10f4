"""benchmarks.data_scale: the targets judged from the figures, the corpus pool option, and a
tiny run end to end (a corpus drawn from Multi30k, prepared and trained for 2 updates)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from benchmarks import data_scale

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _size(pairs: int, rss: int, median: int, startup: float, tree: int, wall: float) -> dict:
    return {"pairs": pairs, "current": {
        "prepare": {"wall_s": wall, "tree_peak_rss_mb": tree},
        "train": {"peak_rss_mb": rss, "tgt_tokens_per_s_median": median, "startup_s": startup}}}


def _doc(last_rss: int, last_median: int, startup: float = 7.0, tree: int = 900,
         wall: float = 300.0) -> dict:
    ref = {"current": {"train": {"peak_rss_mb": 1500, "tgt_tokens_per_s_iqr": [2200, 3400]}}}
    return {"reference": ref, "sizes": [
        _size(10**6, 1520, 2500, 5.0, 800, 40.0),
        _size(10**7, last_rss, last_median, startup, tree, wall)]}


def _met(doc: dict) -> dict[str, bool]:
    return {t["target"].split(" ")[0] + " " + t["target"].split(" ")[1]: t["met"]
            for t in data_scale.targets(doc)}


def test_targets_met_at_their_boundaries():
    found = data_scale.targets(_doc(last_rss=1800, last_median=2200, startup=20.0, tree=1536,
                                    wall=470.0))
    assert [t["met"] for t in found] == [True, True, True, True, True]
    assert found[0]["above_reference_mb"] == 300 and found[1]["medians"] == [2500, 2200]
    assert found[4]["s_per_million"] == [40.0, 47.0]


@pytest.mark.parametrize("change, index", [
    ({"last_rss": 1801}, 0), ({"last_median": 2199}, 1), ({"last_median": 3401}, 1),
    ({"startup": 20.1}, 2), ({"tree": 1537}, 3), ({"wall": 471.0}, 4)])
def test_each_target_fails_just_past_its_bound(change, index):
    args = {"last_rss": 1600, "last_median": 2600, **change}
    found = data_scale.targets(_doc(**args))
    assert [i for i, t in enumerate(found) if not t["met"]] == [index]


def test_corpora_option_checks_its_names(capsys):
    assert data_scale.parse_args(["--work-dir", "w"]).corpora == data_scale.CORPORA
    assert data_scale.parse_args(["--work-dir", "w", "--corpora", "multi30k"]).corpora == (
        "multi30k",)
    with pytest.raises(SystemExit):
        data_scale.parse_args(["--work-dir", "w", "--corpora", "multi30k,wmt99"])
    assert "wmt99" in capsys.readouterr().err


@pytest.mark.data
@pytest.mark.skipif(not (SHARED / "multi30k" / "train.de").is_file(),
                    reason="needs ../shared/data/multi30k")
def test_a_tiny_run_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    tiny = ["--set", "data.vocab_size=300", "--set", "model.d_model=32",
            "--set", "model.ffn_dim=64", "--set", "model.n_heads=2",
            "--set", "model.enc_layers=1", "--set", "model.dec_layers=1",
            "--set", "train.max_tokens=512", "--set", "data.workers=1"]
    code = data_scale.main(["--sizes", "3000", "--updates", "2", "--threads", "1",
                            "--corpora", "multi30k", "--no-reference", "--shared", str(SHARED),
                            "--work-dir", str(tmp_path / "work"), *tiny])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    corpus = tmp_path / "work" / "corpus-3000-multi30k"
    assert len((corpus / "train.de").read_text().splitlines()) == 3000
    assert doc["protocol"]["pool_corpora"] == ["multi30k"]
    assert doc["protocol"]["pool_files"] == [data_scale.relpath(SHARED / "multi30k" / "train.de")]
    (size,) = doc["sizes"]
    assert size["pairs"] == 3000 and size["current"]["prepare"]["pairs_read"] == 3000
    assert size["current"]["train"]["updates"] == 2
    assert size["current"]["train"]["peak_rss_mb"] > 0
    assert "WORK/" in json.dumps(doc) and str(tmp_path) not in json.dumps(doc)
    assert doc["targets"] == data_scale.targets(doc)
