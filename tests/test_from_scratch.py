"""benchmarks/gpu_from_scratch.sh's CPU dry run (protocol section 4): every method x seed
trained on its schedule and scored, the paired statistics recomputed from the per-run scores,
a missing run named, and a wrong or incomplete METHODS refused before any training."""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_from_scratch.sh"
METHODS = ("teacher_forcing", "word_oracle", "sentence_oracle")
SEEDS = (1, 2, 3)
SPLITS = ("valid", "test2016", "test2017", "mscoco2017")
T_975_2 = 4.302652729911275  # t(0.975, 2): the protocol's 4.303 for 3 seeds
RUNS = {f"{m}-s{s}" for m in METHODS for s in SEEDS}


def script(out: Path, runs: Path, **env: str) -> subprocess.CompletedProcess:
    """The script in its dry-run mode, writing to ``out`` with its runs in ``runs``."""
    env = {**os.environ, "DRY_RUN": "1", "OUT": str(out), "RUNS_DIR": str(runs),
           "PYTHON": sys.executable, **env}
    return subprocess.run(["bash", str(SCRIPT)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600, check=False)


@pytest.fixture(scope="module")
def dry(tmp_path_factory) -> tuple[Path, dict]:
    """(folder holding out/ and runs/, the JSON) of one whole dry run."""
    root = tmp_path_factory.mktemp("from_scratch")
    proc = script(root / "out", root / "runs")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return root, json.loads((root / "out" / "from_scratch.json").read_text())


def or_nmt(epoch: int, mu: float = 15.0) -> float:
    """OR-NMT's p of gold at ``epoch``: mu / (mu + exp(epoch / mu))."""
    return mu / (mu + math.exp(epoch / mu))


def test_every_method_and_seed_is_trained_and_scored(dry):
    root, doc = dry
    assert doc["dry_run"] and doc["complete"] and doc["missing"] == [] and doc["short"] == []
    assert set(doc["runs"]) == RUNS and doc["seeds"] == list(SEEDS)
    planned = doc["setup"]["updates"]
    test_lines = len((root / "runs" / "corpus" / "test2016.en").read_text().splitlines())
    for name, run in doc["runs"].items():
        assert run["updates"] == run["planned_updates"] == planned and planned > 1, name
        assert run["stopped"] == "max_updates" and f"{run['method']}-s{run['seed']}" == name
        assert set(run["scores"]) == set(SPLITS)
        for score in run["scores"].values():
            assert 0 <= score["bleu"] <= 100 and "tok:13a" in score["signature"]
        back = root / "out" / "runs" / name
        assert len((back / "test2016.hyp").read_text().splitlines()) == test_lines
        config = (back / "config.yaml").read_text()
        assert f"name: {run['method']}\n" in config  # strategy.name
        log = [json.loads(x) for x in (back / "log.jsonl").read_text().splitlines()]
        epochs = [r["epoch"] for r in log if r["kind"] == "train"]
        if run["method"] == "teacher_forcing":
            assert "p_gold" not in run["logged"]
        else:  # OR-NMT's decay per epoch, mu = 15, from update 0
            assert "or_nmt_mu: 15" in config and "schedule_unit: epoch" in config
            assert or_nmt(max(epochs)) - 1e-4 <= run["logged"]["p_gold"] <= or_nmt(1) + 1e-4
    assert "sentence_oracle" in doc["methods"] and doc["methods"]["sentence_oracle"][
        "strategy.oracle_beam"] == 4


def test_statistics_come_from_the_per_run_scores(dry):
    _, doc = dry
    stats, runs = doc["statistics"], doc["runs"]
    assert stats["reference"] == "teacher_forcing" and stats["primary"] == "test2016"
    p_values = {}
    for method in METHODS[1:]:
        for split in SPLITS:
            s = stats["intervals"][method][split]
            diffs = [round(runs[f"{method}-s{seed}"]["scores"][split]["bleu"]
                           - runs[f"teacher_forcing-s{seed}"]["scores"][split]["bleu"], 6)
                     for seed in SEEDS]
            assert s["diffs"] == diffs and s["seeds"] == list(SEEDS)
            mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
            half = T_975_2 * sd / math.sqrt(3)
            assert s["mean"] == pytest.approx(mean, abs=1e-9)
            assert s["lo"] == pytest.approx(mean - half, abs=1e-6)
            assert s["hi"] == pytest.approx(mean + half, abs=1e-6)
        p_values[method] = stats["intervals"][method]["test2016"]["p"]
    first, second = sorted(p_values, key=p_values.get)  # Holm over the 2 methods
    holm = {first: min(1.0, 2 * p_values[first])}
    holm[second] = max(holm[first], p_values[second])
    for method, d in stats["decisions"].items():
        s = stats["intervals"][method]["test2016"]
        assert d["p_holm"] == pytest.approx(holm[method], abs=1e-12)
        expected = ("beats" if s["lo"] > 0 and holm[method] < 0.05 else
                    "worse" if s["hi"] < 0 and holm[method] < 0.05 else
                    "no difference detected")
        assert d["decision"] == expected
    assert set(stats["bootstrap"]["per_seed"]["test2016"]) == {str(s) for s in SEEDS}


def test_collect_recomputes_from_edited_runs_and_names_a_missing_one(dry, tmp_path):
    root, doc = dry
    runs = tmp_path / "runs"
    shutil.copytree(root / "runs", runs)
    (runs / "sentence_oracle-s3" / "finetune.json").unlink()
    edited = runs / "teacher_forcing-s1" / "finetune.json"
    record = json.loads(edited.read_text())
    record["scores"]["test2016"]["bleu"] += 1.5
    edited.write_text(json.dumps(record))
    proc = script(tmp_path / "out", runs, COLLECT_ONLY="1")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "missing runs ['sentence_oracle-s3']" in proc.stderr
    new = json.loads((tmp_path / "out" / "from_scratch.json").read_text())
    assert new["missing"] == ["sentence_oracle-s3"] and not new["complete"]
    assert set(new["runs"]) == RUNS - {"sentence_oracle-s3"}
    wo = new["statistics"]["intervals"]["word_oracle"]["test2016"]
    old = doc["statistics"]["intervals"]["word_oracle"]["test2016"]
    assert wo["diffs"][0] == pytest.approx(old["diffs"][0] - 1.5, abs=1e-6)
    assert wo["diffs"][1:] == old["diffs"][1:]
    so = new["statistics"]["intervals"]["sentence_oracle"]["test2016"]
    assert so["n"] == 2 and so["seeds"] == [1, 2]
    # the hypotheses no longer give the edited score: the bootstrap says so
    seed1 = new["statistics"]["bootstrap"]["per_seed"]["test2016"]["1"]
    assert seed1["baseline"]["consistent"] is False


def test_collect_of_an_amendment_decides_in_the_family_fixed_before(dry, tmp_path):
    """Amendment 5: the sentence oracle's runs collected alone (``METHODS``), with the word
    oracle's raw p from the earlier JSON (``FAMILY``) in Holm's family of 2."""
    root, doc = dry
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps(doc))
    proc = script(tmp_path / "out", root / "runs", COLLECT_ONLY="1",
                  METHODS="teacher_forcing,sentence_oracle", FAMILY=str(earlier))
    assert proc.returncode == 0, proc.stderr[-3000:]
    new = json.loads((tmp_path / "out" / "from_scratch.json").read_text())
    stats = new["statistics"]
    assert set(stats["decisions"]) == {"sentence_oracle"} and new["complete"]
    p_wo = doc["statistics"]["decisions"]["word_oracle"]["p"]
    assert stats["family"]["outside"] == {"word_oracle": p_wo}
    p_so = stats["decisions"]["sentence_oracle"]["p"]
    assert p_so == doc["statistics"]["decisions"]["sentence_oracle"]["p"]
    expected = min(1.0, 2 * p_so) if p_so <= p_wo else max(min(1.0, 2 * p_wo), p_so)
    assert stats["decisions"]["sentence_oracle"]["p_holm"] == pytest.approx(expected)
    assert "over the 2 methods (word_oracle at its raw p from" in stats["reading"]


@pytest.mark.parametrize("methods, message", [
    ("teacher_forcing,word_oracel", "unknown method(s) ['word_oracel']"),
    ("word_oracle,sentence_oracle", "the reference teacher_forcing is missing"),
])
def test_a_wrong_or_incomplete_method_list_fails_before_training(tmp_path, methods, message):
    proc = script(tmp_path / "out", tmp_path / "runs", METHODS=methods)
    assert proc.returncode == 2
    assert message in proc.stderr and "known: teacher_forcing, word_oracle, sentence_oracle" in (
        proc.stderr)
    assert not (tmp_path / "out" / "from_scratch.json").exists()
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["from_scratch.py"]


def test_a_run_cut_short_is_named_first_in_the_report(dry, tmp_path):
    root, _ = dry
    runs = tmp_path / "runs"
    shutil.copytree(root / "runs", runs)
    cut = runs / "sentence_oracle-s2" / "finetune.json"
    record = json.loads(cut.read_text())
    record["updates"] = record["planned_updates"] - 3  # what train.max_minutes leaves
    cut.write_text(json.dumps(record))
    proc = script(tmp_path / "out", runs, COLLECT_ONLY="1")
    assert proc.returncode == 1 and "cut short by train.max_minutes" in proc.stderr
    new = json.loads((tmp_path / "out" / "from_scratch.json").read_text())
    assert new["short"] == ["sentence_oracle-s2"] and not new["complete"]
    md = (tmp_path / "out" / "from_scratch.md").read_text().splitlines()
    assert md[0].startswith("# ") and md[2].startswith("**Not the protocol's result**")
    assert f"sentence_oracle-s2 (updates {record['updates']} of" in md[2]
    assert not (root / "out" / "from_scratch.md").read_text().count("Not the protocol")


def test_the_cpu_setup_is_the_gpu_setup_made_resumable(tmp_path):
    """Amendment 5: ``CPU=1`` changes only the device, the time cap (none) and the checkpoint
    interval (every 100 updates, so a stopped call resumes); the recipe is the GPU's."""
    setups = {}
    for mode, env in (("gpu", {}), ("cpu", {"CPU": "1"})):
        proc = script(tmp_path / mode, tmp_path / f"runs_{mode}", DRY_RUN="0",
                      COLLECT_ONLY="1", **env)
        assert proc.returncode == 1, proc.stderr[-2000:]  # no runs: all missing
        setups[mode] = json.loads((tmp_path / mode / "from_scratch.json").read_text())["setup"]
    gpu, cpu = setups["gpu"], setups["cpu"]
    changed = {k for k in gpu["common"].keys() | cpu["common"].keys()
               if gpu["common"].get(k) != cpu["common"].get(k)}
    assert changed == {"train.max_minutes", "train.save_every", "train.device"}
    assert cpu["common"]["train.max_minutes"] == 0 and cpu["common"]["train.save_every"] == 100
    assert cpu["device"] == "cpu" and gpu["device"] == "auto"
    assert {k: v for k, v in cpu.items() if k not in ("common", "device")} == \
        {k: v for k, v in gpu.items() if k not in ("common", "device")}


def test_two_cpu_lanes_run_on_one_thread_each(tmp_path):
    """Amendment 7: ``CPU=1 LANES=2`` adds ``train.threads 1`` and nothing else."""
    setups = {}
    for lanes in ("1", "2"):
        proc = script(tmp_path / lanes, tmp_path / f"runs_{lanes}", DRY_RUN="0", CPU="1",
                      COLLECT_ONLY="1", LANES=lanes)
        assert proc.returncode == 1, proc.stderr[-2000:]
        setups[lanes] = json.loads((tmp_path / lanes / "from_scratch.json").read_text())["setup"]
    one, two = setups["1"]["common"], setups["2"]["common"]
    assert "train.threads" not in one and two.pop("train.threads") == 1 and one == two


def test_a_run_another_lane_holds_is_not_trained_again(tmp_path):
    """Lanes share one queue: a run whose lock is held elsewhere is skipped, the rest trained."""
    import fcntl

    runs = tmp_path / "runs"
    runs.mkdir()
    with open(runs / "word_oracle-s2.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # "another lane" trains it
        proc = script(tmp_path / "out", runs, METHODS="teacher_forcing,word_oracle")
    assert proc.returncode == 1  # the held run is missing from the report
    doc = json.loads((tmp_path / "out" / "from_scratch.json").read_text())
    assert doc["missing"] == ["word_oracle-s2"] and not (runs / "word_oracle-s2").exists()
    assert set(doc["runs"]) == {f"{m}-s{s}" for m in ("teacher_forcing", "word_oracle")
                                for s in SEEDS} - {"word_oracle-s2"}


def test_committed_runs_restored_on_a_new_machine_are_not_trained_again(dry, tmp_path):
    """Amendment 7: finished runs exported by ``experiments/evidence.py`` (small files and the
    hypotheses' tarball) and copied back into an empty ``RUNS_DIR`` are skipped by a full
    call, and the statistics are the original ones."""
    root, doc = dry
    stage, evidence = tmp_path / "stage", tmp_path / "evidence"  # the dry configs name root
    shutil.copytree(root / "runs", stage)  # (absolute corpus paths, refused by evidence.py)
    subprocess.run([sys.executable, "experiments/evidence.py", str(stage), str(evidence),
                    "--hyps", "--finished"], cwd=REPO, check=True, capture_output=True)
    assert not list(evidence.rglob("*.hyp")) and (evidence / "hyps.tar.xz").is_file()
    runs = tmp_path / "runs"
    runs.mkdir()
    for name in RUNS:
        shutil.copytree(evidence / name, runs / name)
    subprocess.run(["tar", "xJf", str(evidence / "hyps.tar.xz"), "-C", str(runs)], check=True)
    proc = script(tmp_path / "out", runs)  # not COLLECT_ONLY: it would train what is missing
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in RUNS:  # nothing trained: no checkpoints, no copied corpus
        assert not (runs / name / "checkpoints").exists() and not (runs / name / "data").exists()
    new = json.loads((tmp_path / "out" / "from_scratch.json").read_text())
    assert new["statistics"]["intervals"] == doc["statistics"]["intervals"]
    assert new["statistics"]["bootstrap"] == doc["statistics"]["bootstrap"]
