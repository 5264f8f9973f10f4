"""experiments/diagnose_summary.py: section 3's figures over seeds from fake diagnose.json files
(means, the paired t-intervals recomputed by hand, a missing run named, the reading)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from gapless.analysis.paired import paired_interval

ROOT = Path(__file__).resolve().parents[1]
BUCKETS = ("1-10", "11-15", "16-20", "21-30", "31+")


def _module():
    spec = importlib.util.spec_from_file_location("_diagnose_summary",
                                                  ROOT / "experiments/diagnose_summary.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _diag(bleu5: float, drop: float, gap: float, ratio: float, joint_gain: float) -> dict:
    """A diagnose.json with what the summary reads: beam 5 at ``bleu5``, beam 100 at bleu5 +
    drop, the overall gap and each bucket's at ``gap`` (fractions), the joint length choice."""
    beams = [{"beam": b, "bleu": bleu5 + (drop if b == 100 else 0.1 * (b == 1)),
              "length_ratio": ratio - 0.01 * (b == 100),
              "by_bucket": [{"bucket": k, "bleu": bleu5 - i} for i, k in enumerate(BUCKETS)]}
             for b in (1, 5, 100)]
    choice = {"default": 0.0, "len_penalty": 0.05, "min_len_ratio": -0.05, "joint": joint_gain}
    return {"beam_sweep": {"beams": beams},
            "gap": {"gap": gap, "by_bucket": [{"bucket": k, "gap": gap * (i + 1)}
                                              for i, k in enumerate(BUCKETS)]},
            "length_grid": {"choices": [
                {"choice": c, "label": f"{c} setting", "valid": {"bleu": 40.0 + g},
                 "test": {"bleu": bleu5 + g, "length_ratio": ratio + g / 10}}
                for c, g in choice.items()]}}


def _runs(root: Path) -> tuple[Path, Path, dict]:
    values = {("teacher_forcing", 1): (40.0, 0.3, 0.020, 0.960, 0.10),
              ("teacher_forcing", 2): (41.0, 0.1, 0.022, 0.962, 0.00),
              ("teacher_forcing", 3): (40.5, 0.2, 0.021, 0.961, 0.05),
              ("ss_sample", 1): (40.2, -0.9, 0.025, 0.950, 0.30),
              ("ss_sample", 2): (41.1, -1.1, 0.027, 0.951, 0.20)}  # seed 3 not diagnosed
    for (m, s), v in values.items():
        folder = root / "runs" / f"{m}-s{s}" / "diagnose" / "test2016"
        folder.mkdir(parents=True)
        (folder / "diagnose.json").write_text(json.dumps(_diag(*v)))
    (root / "runs" / "ss_sample-s3").mkdir()
    spec = root / "spec.yaml"
    spec.write_text(json.dumps({"methods": {"teacher_forcing": {}, "ss_sample": {}}}))
    return spec, root / "runs", values


def test_means_intervals_and_the_missing_run(tmp_path, monkeypatch):
    ds = _module()
    spec, _, values = _runs(tmp_path)
    monkeypatch.chdir(tmp_path)
    ds.main([str(spec.name), "--runs", "runs", "--seeds", "1,2,3", "--out", "out"])
    doc = json.loads((tmp_path / "out" / "summary.json").read_text())
    md = (tmp_path / "out" / "summary.md").read_text()
    assert doc["missing"] == ["ss_sample-s3"] and "ss_sample-s3" in md
    tf, ss = doc["summary"]["teacher_forcing"], doc["summary"]["ss_sample"]
    assert tf["seeds"] == [1, 2, 3] and ss["seeds"] == [1, 2]
    assert tf["bleu_by_beam"]["5"] == pytest.approx(40.5)
    assert tf["headline"]["beam100_minus_beam5"]["mean"] == pytest.approx(0.2)
    drops = [values["ss_sample", s][1] - values["teacher_forcing", s][1] for s in (1, 2)]
    got = ss["headline"]["beam100_minus_beam5"]["vs_reference"]
    want = paired_interval(drops)
    assert got["n"] == 2 and got["mean"] == pytest.approx(want["mean"])
    assert got["lo"] == pytest.approx(want["lo"]) and got["hi"] == pytest.approx(want["hi"])
    gaps = [100 * (values["ss_sample", s][2] - values["teacher_forcing", s][2]) * 4
            for s in (1, 2)]  # the 21-30 bucket's gap is 4x the overall one here
    assert ss["headline"]["gap_pp_21-30"]["vs_reference"]["mean"] == pytest.approx(
        sum(gaps) / len(gaps), abs=1e-6)
    joint = ss["length_choices"]["joint"]
    assert joint["test_gain"] == pytest.approx(0.25) and joint["labels"] == {
        "1": "joint setting", "2": "joint setting"}
    assert "| ss_sample | 2 |" in md and "## Reading" in md
    assert "the change from beam 5 to beam 100, the 95% interval excludes zero for ss_sample" \
        in doc["reading"]
    assert doc["runs"] == "runs" and "--out out" in doc["command"]


def test_no_diagnosed_run_is_an_error(tmp_path, monkeypatch):
    ds = _module()
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({"methods": {"teacher_forcing": {}, "ss_sample": {}}}))
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        ds.main(["spec.yaml", "--runs", "runs", "--out", "out"])
    assert not (tmp_path / "out").exists()
