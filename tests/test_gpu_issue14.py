"""benchmarks/gpu_issue14.sh on the CPU: the from-scratch dry run beside a tiny claims spec, every
finished run's small files packed into evidence.tar.gz (no weights, no encoded data), the
reports in summary.txt; a missing base refused before anything starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_issue14.sh"


def _run(tmp: Path, **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DRY_RUN": "1", "OUT": str(tmp / "out"), "RUNS_DIR": str(tmp / "runs"),
           "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(["bash", str(SCRIPT)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900, check=False)


def _tiny_claims_spec(tmp: Path) -> Path:
    """The shipped claims spec on the tiny preset and a generated corpus, 4 updates a run."""
    from gapless.corpora import write_synthetic

    corpus = write_synthetic(tmp / "corpus", (("train", 200), ("valid", 10), ("test2016", 10)))
    data = yaml.safe_load((REPO / "configs/claims/layernorm_tying.yaml").read_text())
    data.update(preset="tiny", splits=["valid", "test2016"], eval_dtype="fp32", common={
        "train.max_updates": 4, "train.max_minutes": 0, "train.lr": 1e-2, "train.warmup": 2,
        "train.threads": 1, "train.dtype": "fp32", "train.valid_max_sentences": 5,
        "train.device": "cpu", "data.corpus": str(corpus), "data.test_splits": ["test2016"],
        "data.workers": 0})
    spec = tmp / "claims.yaml"
    spec.write_text(yaml.safe_dump(data))
    return spec


def test_claims_beside_the_dry_run_packed_without_weights(tmp_path):
    proc = _run(tmp_path, SKIP="hard", CLAIMS_SPEC=str(_tiny_claims_spec(tmp_path)),
                DEADLINE="600")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = tmp_path / "out"
    with tarfile.open(out / "evidence.tar.gz") as tar:
        names = {m.name.removeprefix("./") for m in tar.getmembers() if m.isfile()}
        claim = json.load(tar.extractfile("./claims/tying-untied-s2/claim.json"))
    runs = [f"{c}-{a}-s{s}" for c, arms in (("layernorm", ("layer", "batch")),
                                            ("tying", ("tied", "untied")))
            for a in arms for s in (1, 2)]
    for run in runs:
        assert {f"claims/{run}/claim.json", f"claims/{run}/config.yaml",
                f"claims/{run}/eval/valid.json"} <= names, run
    assert claim["updates"] == 4 and claim["arm"] == "untied" and claim["seed"] == 2
    assert "scratch_out/from_scratch.json" in names and "claims/report.json" in names
    assert not [n for n in names if n.endswith((".safetensors", "spm.model"))
                or "/checkpoints/" in n or "/data/" in n or "_prepared" in n]
    summary = (out / "summary.txt").read_text()
    assert "== from scratch (rc 0)" in summary and "== hard protocol" not in summary
    assert "## layernorm: **" in summary and "## tying: **" in summary
    assert "Provisional" not in summary  # every claims run finished before the deadline


def test_a_missing_base_is_refused_before_anything_starts(tmp_path):
    proc = _run(tmp_path, SKIP="claims", BASE=str(tmp_path / "no_such_run"))
    assert proc.returncode == 2 and "is not a folder" in proc.stderr
    assert not (tmp_path / "runs" / "scratch").exists()


def test_resume_from_an_earlier_call_trains_nothing_finished(tmp_path):
    spec = str(_tiny_claims_spec(tmp_path))
    first = _run(tmp_path / "a", SKIP="hard", CLAIMS_SPEC=spec, DEADLINE="600")
    assert first.returncode == 0, first.stderr[-2000:]
    log = tmp_path / "a" / "runs" / "claims" / "tying-tied-s1" / "log.jsonl"
    record = tmp_path / "a" / "runs" / "scratch" / "sentence_oracle-s2" / "finetune.json"
    record.unlink()  # one run of the earlier call that did not finish
    second = _run(tmp_path / "b", SKIP="hard", CLAIMS_SPEC=spec, DEADLINE="600",
                  RESUME_FROM=str(tmp_path / "a" / "runs"))
    assert second.returncode == 0, second.stderr[-2000:]
    runs = tmp_path / "b" / "runs"
    assert (runs / "claims" / "tying-tied-s1" / "log.jsonl").read_text() == log.read_text()
    lanes = "".join(p.read_text() for p in (runs / "scratch").glob("lane*.out"))
    assert '"run": "sentence_oracle-s2"' in lanes  # retrained: its record was missing
    assert lanes.count('"run": ') == 1  # and nothing else
    assert json.loads((runs / "scratch" / "sentence_oracle-s2" / "finetune.json").read_text())[
        "updates"] > 0
    bad = _run(tmp_path / "c", SKIP="hard,claims", RESUME_FROM=str(tmp_path / "nowhere"))
    assert bad.returncode == 2 and "RESUME_FROM" in bad.stderr
