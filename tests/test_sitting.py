"""benchmarks.sitting's dry run: gapless's tiny train_speed and decode_speed end to end, next to
a stand-in peer harness (shell scripts that write the harness's summary files with known
figures), so the JSON's shape, precision labels, skips and ratios are checked; and the real
harness's peers skipped with a message when $BENCH_WORK has no venvs (as in CI)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ABSOLUTE = re.compile(r'"/|/(?:work|root|home|tmp|Users)/')
FAIRSEQ_TOK_S, FAIRSEQ_SENT_S, CT2_SENT_S = 2000.0, 40.0, 80.0

TRAIN = {"toolkit_tok_s_median": FAIRSEQ_TOK_S, "toolkit_tok_s_min": 1.0,
         "toolkit_tok_s_max": 9999.0, "harness_tok_s_median": 1.0,
         "harness_s_per_update_median": 1.0, "tgt_tok_per_update_mean": 1.0,
         "n_intervals_measured": 2, "ru_maxrss_mb": 1.0}
DECODE = {"e2e_sent_s": 1.0, "internal_source": "t", "n_sentences": 64, "hyp_pieces_mean": 30.0,
          "ru_maxrss_mb": 1.0}


def writes(check: str, out: str, name: str, summary: dict) -> str:
    """A stand-in harness script: ``check`` (the knobs the sitting must pass, else exit 3),
    then ``summary`` written as ``out/name``."""
    return (f'{check} || exit 3\nmkdir -p "{out}" && cat > "{out}/{name}" <<\'EOF\'\n'
            f"{json.dumps(summary)}\nEOF\n")


FAKE = {
    "env.sh": "",
    "prepare.sh": 'mkdir -p "$DATA" && echo "{}" > "$DATA/prepare.json"\n',
    "train_bench_fairseq.sh": 'mkdir -p "$1/ckpt" && touch "$1/ckpt/checkpoint_last.pt"\n'
    + writes('[ "$BENCH_UPDATES" = 4 ]', "$1", "train_summary.json", TRAIN),
    "decode_bench_fairseq.sh": writes('[ "$BENCH_DECODE_FIXEDLEN" = 30 ] && [ -f "$1" ]', "$2",
                                      "decode_summary.json",
                                      {**DECODE, "internal_sent_s": FAIRSEQ_SENT_S}),
    "decode_bench_ctranslate2.sh": writes(
        '[ "$BENCH_DECODE_FIXEDLEN" = 30 ] && [ "$1" = fairseq ] && [ -f "$2" ]', "$3",
        "decode_summary.json",
        {**DECODE, "internal_sent_s": CT2_SENT_S, "ct2_compute_type": "float32"}),
}


def sitting(tmp: Path, *args: str) -> tuple[dict, str]:
    """Run the dry run with $BENCH_WORK under ``tmp``; (the JSON document, stdout)."""
    env = {**os.environ, "BENCH_WORK": str(tmp / "bench_work")}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.sitting", "--out", str(tmp / "sitting.json"),
         "--dry-run", "--work-dir", str(tmp / "gapless"), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((tmp / "sitting.json").read_text()), proc.stdout + proc.stderr


def fake_harness(tmp: Path) -> Path:
    """A stand-in harness, and venvs for fairseq and CTranslate2 only (OpenNMT-py's missing)."""
    harness = tmp / "harness"
    harness.mkdir()
    for name, text in FAKE.items():
        (harness / name).write_text(text)
    for venv in ("common", "fairseq", "ct2"):
        python = tmp / "bench_work" / "venvs" / venv / "bin" / "python"
        python.parent.mkdir(parents=True)
        python.touch()
    return harness


@pytest.fixture(scope="module")
def dry(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sitting")
    return sitting(tmp, "--harness", str(fake_harness(tmp)))


def test_every_figure_is_there_with_its_precision(dry):
    doc, _ = dry
    assert doc["dry_run"] and doc["reps"] == 1 and "joeynmt" in doc["left_out"]
    train, decode = doc["training"], doc["decoding"]
    assert train["fairseq"]["figure"] == FAIRSEQ_TOK_S
    assert decode["fairseq"]["figure"] == FAIRSEQ_SENT_S
    assert decode["ctranslate2"]["figure"] == CT2_SENT_S
    assert decode["ctranslate2"]["precision"].startswith("float32")
    for phase in (train, decode):
        assert phase["fairseq"]["precision"] == phase["gapless_fp32"]["precision"] == "fp32"
        assert phase["gapless_fp32"]["figure"] > 0 and phase["gapless_bf16"]["figure"] > 0
        assert phase["gapless_bf16"]["precision"].startswith("bf16")
        assert phase["gapless_fp32"]["runs"][0]["json"].startswith("BENCH_WORK/")
    assert train["gapless_fp32"]["runs"][0]["corpus"] == "synthetic"
    assert decode["gapless_bf16"]["runs"][0]["mean_hyp_pieces"] == 30.0  # fixed30


def test_a_peer_without_its_venv_is_skipped_with_a_message(dry):
    doc, output = dry
    for phase in ("training", "decoding"):
        onmt = doc[phase]["onmt"]
        assert onmt["figure"] is None and "BENCH_WORK/venvs/onmt" in onmt["skipped"]
    assert "skipping onmt: venv missing" in output
    assert not any(s["step"].endswith("onmt_r1") for s in doc["steps"])


def test_ratios_are_the_figures_quotients(dry):
    doc, _ = dry
    ratios = doc["ratios"]
    for phase, base in (("training", "fairseq"), ("decoding", "ctranslate2")):
        found = doc[phase]
        assert ratios["base"][phase] == base and ratios[phase][base] == 1.0
        for key, ratio in ratios[phase].items():
            if found[key]["figure"] is None:
                assert ratio is None
            else:
                assert ratio == pytest.approx(found[key]["figure"] / found[base]["figure"],
                                              abs=1e-4), key
        bf16 = ratios["gapless_bf16_to_fp32"][phase]
        assert bf16 == pytest.approx(
            found["gapless_bf16"]["figure"] / found["gapless_fp32"]["figure"], abs=1e-4)
    assert ratios["training"]["gapless_fp32"] != ratios["training"]["gapless_bf16"]


def test_steps_run_in_order_and_the_document_holds_no_absolute_path(dry, tmp_path):
    doc, output = dry
    names = [s["step"] for s in doc["steps"]]
    assert names == ["prepare_peer_data", "train_fairseq_r1", "train_gapless_fp32_r1",
                     "train_gapless_bf16_r1", "decode_fairseq_r1", "decode_ctranslate2_r1",
                     "decode_gapless_fp32_r1", "decode_gapless_bf16_r1"]
    for step in doc["steps"]:
        assert step["rc"] == 0 and step["wall_s"] >= 0 and step["load_avg_1m_before"] >= 0
    assert doc["machine"]["gapless_commit"] and len(doc["machine"]["load_avg_after"]) == 3
    assert not ABSOLUTE.search(json.dumps(doc))
    rows = [r for r in doc["table_markdown"].splitlines()
            if r.startswith(("| training", "| decoding"))]
    assert len(rows) == 2 and doc["table_markdown"] in output
    for row in rows:
        for cell in row.strip("|").split("|")[1:]:
            assert re.search(r"fp32|bf16|float32|inference only", cell), cell


def test_peers_are_skipped_without_their_venvs(tmp_path):
    doc, output = sitting(tmp_path, "--toolkits", "fairseq,onmt,ctranslate2")
    for toolkit in ("fairseq", "onmt", "ctranslate2"):
        why = doc["decoding"][toolkit]["skipped"]
        assert "venv missing" in why or "harness not found" in why
        assert f"skipping {toolkit}" in output
    assert doc["steps"] == [] and "gapless_fp32" not in doc["training"]
    assert all(r is None for r in doc["ratios"]["decoding"].values())


def test_help_gives_the_duration():
    proc = subprocess.run([sys.executable, "-m", "benchmarks.sitting", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0 and "minutes at --reps 1" in proc.stdout


def test_each_rep_runs_every_step_once_more(tmp_path):
    doc, _ = sitting(tmp_path, "--harness", str(fake_harness(tmp_path)), "--reps", "2",
                     "--toolkits", "fairseq,ctranslate2")
    assert len(doc["training"]["fairseq"]["runs"]) == 2
    assert len(doc["decoding"]["ctranslate2"]["runs"]) == 2
    assert doc["training"]["fairseq"]["figure"] == FAIRSEQ_TOK_S
    assert [s["step"] for s in doc["steps"]][1:] == [
        "train_fairseq_r1", "train_fairseq_r2", "decode_fairseq_r1", "decode_ctranslate2_r1",
        "decode_fairseq_r2", "decode_ctranslate2_r2"]
    assert doc["ratios"]["decoding"]["fairseq"] == FAIRSEQ_SENT_S / CT2_SENT_S
