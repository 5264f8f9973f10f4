#!/usr/bin/env bash
# Protocol section 4 (docs/protocols/powered_comparison.md), one call on a lent GPU: teacher
# forcing, the word oracle and the sentence oracle trained from update 0 on OR-NMT's schedule
# (mu = 15 per epoch), seeds 1-3 each, all 9 at once; each run's last checkpoint scored at beam
# 5 on valid, test2016, test2017, mscoco2017; one JSON with the runs and section 2's statistics
# (paired t-interval and test per method vs teacher forcing, Holm, decision on test2016,
# sacreBLEU's paired bootstrap per seed), from experiments/finetune.py's analysis.
#
# Budget, fixed before any run: 1,300 updates of 4,096 tokens per run (~10 Multi30k epochs, so
# p of gold goes 0.93 -> 0.89). Why: it is the 20-minute CPU budget in data seen (the sweep's
# s20 runs: 1,300 x 4,096 ~ 2,600 x 2,048) and fits one call well under 10 minutes: on
# 2026-11-28 13 such trainings at once took ~125 s each (docs/gpu/); the sentence oracle's
# search (beam 4, one decoder step per target position, host syncs every step) is taken as 2-4x
# a teacher-forced update, ~2-4 min; plus ~1 min preparing and ~1 min scoring. Recipe: the
# multi30k_de_en preset (peers' size, pre-norm, dropout 0.2) with the sweep's settings for that
# budget (s20_pre_lr2e3_w500_d2: lr 2e-3, warm-up 500). All runs share one prepared corpus and
# vocabulary: seed i of every method has the same data order and initial weights.
# Safety: train.max_minutes 5.5 caps every training; a run it cuts short is named in the JSON
# ("short") and makes the exit status 1: it is not the protocol's run.
#
# Usage (device machine, repo root): GAPLESS_DATA=DIR OUT=DIR bash benchmarks/gpu_from_scratch.sh
# CPU dry run (tiny model, generated corpus, a few updates; tests/test_from_scratch.py):
#   DRY_RUN=1 OUT=DIR RUNS_DIR=DIR PYTHON=.venv/bin/python bash benchmarks/gpu_from_scratch.sh
# Options: METHODS=teacher_forcing,word_oracle (a subset; teacher forcing is required),
# LANES=N (processes at once; default all runs, 2 in a dry run), COLLECT_ONLY=1 (no training:
# rewrite the JSON from the runs in RUNS_DIR), MAX_MINUTES (the safety cap, default 5.5: raise
# it when fewer runs share the call, e.g. only the sentence oracle's). A finished run
# (finetune.json) is not retrained.
# FAMILY=JSON (with COLLECT_ONLY): an earlier from_scratch.json whose methods not run here join
# Holm's family at their raw p (experiments/finetune.py --family).
# CPU=1: the same setup on the CPU (protocol amendment 5): no time cap, a checkpoint every 100
# updates (a stopped call resumes each run where it was), one run at a time (LANES 1); with
# LANES=2 (amendment 7) two at a time of 1 thread each (THREADS, train.threads).
# Lanes take runs from one queue (seed 1's methods first): a lane claims the next run no other
# lane holds (a lock file per run in RUNS_DIR), so runs of unequal cost keep every lane busy.
# Output: $OUT/from_scratch.json, from_scratch.md, tails.txt, gpu.txt; runs/NAME/ (hypotheses, log).
source "$(dirname "$0")/gpu_common.sh"
PY=${PYTHON:-python3}
DRY_RUN=${DRY_RUN:-0}
METHODS=${METHODS:-teacher_forcing,word_oracle,sentence_oracle}
export DRY_RUN METHODS
[ "$DRY_RUN" = 1 ] && export OMP_NUM_THREADS=1  # several tiny processes on a small CPU
START=$SECONDS
DRIVER=$R/from_scratch.py
cat > "$DRIVER" <<'PY'
"""Driver of gpu_from_scratch.sh: check, prepare, train RUN..., collect (see the script)."""
import contextlib
import fcntl
import functools
import importlib.util
import json
import os
import random
import shutil
import statistics
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

R = Path(sys.argv[1])  # gapless is imported where needed: "check" stays instant
SEEDS = [1, 2, 3]
SPLITS = ["valid", "test2016", "test2017", "mscoco2017"]
OR_NMT = {"strategy.schedule": "or_nmt", "strategy.schedule_unit": "epoch",
          "strategy.or_nmt_mu": 15}
KNOWN = {"teacher_forcing": {"strategy.name": "teacher_forcing"},
         "word_oracle": {"strategy.name": "word_oracle", **OR_NMT},
         "sentence_oracle": {"strategy.name": "sentence_oracle", **OR_NMT,
                             "strategy.oracle_beam": 4, "strategy.oracle_refresh": 0}}
REFERENCE = "teacher_forcing"
RUN = {"train.progress": False, "train.valid_every": 100000, "train.save_every": 100000,
       "train.keep_last": 1, "train.log_every": 50}


@dataclass(frozen=True)
class Setup:
    """Everything a run depends on besides its method and seed."""

    preset: str
    updates: int
    common: dict = field(default_factory=dict)
    device: str = "auto"
    eval_dtype: str = "fp32"
    beam: int = 5


CAP = float(os.environ.get("MAX_MINUTES", "5.5"))  # the safety cap; the budget is the updates
GPU = Setup("multi30k_de_en", 1300, {
    **RUN, "train.max_updates": 1300, "train.max_minutes": CAP, "train.max_tokens": 4096,
    "train.lr": 2e-3, "train.warmup": 500})
DRY = Setup("tiny", 8, {
    **RUN, "train.max_updates": 8, "train.max_minutes": 0, "train.lr": 1e-2, "train.warmup": 2,
    "train.log_every": 2, "train.valid_max_sentences": 6, "train.threads": 1,
    "train.device": "cpu", "train.dtype": "fp32", "data.workers": 0,
    "data.corpus": str(R / "corpus"), "data.test_splits": SPLITS[1:]}, device="cpu")
THREADS = int(os.environ.get("THREADS", "0"))  # amendment 7: 2 lanes of 1 thread on 2 vCPUs
CPU = Setup("multi30k_de_en", 1300, {  # amendment 5: the GPU's setup, no time cap, resumable
    **GPU.common, "train.max_minutes": 0, "train.save_every": 100, "train.device": "cpu",
    **({"train.threads": THREADS} if THREADS else {})}, device="cpu")
SETUP = (DRY if os.environ.get("DRY_RUN") == "1" else
         CPU if os.environ.get("CPU") == "1" else GPU)


def methods() -> list[str]:
    """The chosen methods in METHODS (known, teacher forcing among them), or exit 2."""
    chosen = [m.strip() for m in os.environ.get("METHODS", "").split(",") if m.strip()]
    unknown = [m for m in chosen if m not in KNOWN]
    if unknown or REFERENCE not in chosen or len(set(chosen)) != len(chosen):
        why = (f"unknown method(s) {unknown}" if unknown else
               f"the reference {REFERENCE} is missing" if REFERENCE not in chosen
               else "a method is named twice")
        sys.exit(f"gpu_from_scratch: METHODS={','.join(chosen)}: {why} "
                 f"(known: {', '.join(KNOWN)}; {REFERENCE} is required)")
    return [m for m in KNOWN if m in chosen]


def write_corpus(folder: Path) -> None:
    """The dry run's corpus: the synthetic grammar with every split the script scores."""
    from gapless.corpora import synthetic_pair

    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)
    for split, n in [("train", 240)] + [(s, 12) for s in SPLITS]:
        pairs = [synthetic_pair(rng) for _ in range(n)]
        for lang, col in (("de", 0), ("en", 1)):
            (folder / f"{split}.{lang}").write_text("".join(p[col] + "\n" for p in pairs))


def prepared() -> None:
    """One SentencePiece model and encoded corpus for every run (``R/_prepared``)."""
    from gapless import config as config_mod
    from gapless.prepare import prepare

    if SETUP is DRY:
        write_corpus(R / "corpus")
    prepare(config_mod.load(SETUP.preset, SETUP.common), R / "_prepared")


def brief(result: dict) -> dict:
    return {"bleu": result["bleu"], "chrf": result["chrf"], "signature": result["bleu_signature"]}


def train_one(name: str) -> None:
    """Train METHOD-sSEED from scratch and score its last checkpoint; cached (finetune.json,
    experiments/finetune.py's record, so its analysis reads these runs)."""
    from gapless import config as config_mod
    from gapless.checkpoint import RunDir, atomic_write_text
    from gapless.evaluate import evaluate
    from gapless.inference import load
    from gapless.training import train

    method, seed = name.rsplit("-s", 1)
    run_dir = R / name
    done = run_dir / "finetune.json"
    if done.is_file():
        return
    (run_dir / "error.txt").unlink(missing_ok=True)  # an earlier attempt's
    if not (run_dir / "data").is_dir():
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.copytree(R / "_prepared" / "data", run_dir / "data")
        for f in ("spm.model", "spm.vocab"):
            shutil.copy2(R / "_prepared" / f, run_dir / f)
    cfg = config_mod.load(SETUP.preset, {**SETUP.common, **KNOWN[method], "train.seed": seed})
    cfg.name = f"from-scratch-{name}"
    start = time.perf_counter()
    state = train(cfg, run_dir)
    train_s = time.perf_counter() - start
    translator = load(run_dir, "last", SETUP.device, SETUP.eval_dtype)
    scores = {s: brief(evaluate(run_dir, s, translator=translator, beam=SETUP.beam))
              for s in SPLITS}
    log = RunDir(run_dir).read_log()
    records = [r for r in log if r["kind"] == "train"]
    logged = {k: round(statistics.fmean(r[k] for r in records if r.get(k) is not None), 4)
              for k in finetune().LOGGED if any(r.get(k) is not None for r in records)}
    valid = [r for r in log if r["kind"] == "valid"]
    result = {"method": method, "seed": int(seed), "updates": state.update,
              "planned_updates": SETUP.updates, "stopped": state.stopped,
              "train_seconds": round(train_s, 1), "valid_bleu": valid[-1]["valid_bleu"],
              "scores": scores, "logged": logged}
    atomic_write_text(done, json.dumps(result, indent=1))
    print(json.dumps({"run": name, "updates": state.update,
                      "bleu": {s: v["bleu"] for s, v in scores.items()}}), flush=True)


@contextlib.contextmanager
def claim(name: str):
    """True while this lane holds NAME's lock, False when another lane does: every lane walks
    the same queue and takes the next free run (the lock goes with the process)."""
    with open(R / f"{name}.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


@functools.lru_cache(maxsize=1)
def finetune():
    """experiments/finetune.py (not a package): its analysis and report."""
    spec = importlib.util.spec_from_file_location("finetune", Path("experiments/finetune.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def collect(out: Path, wall_s: float) -> int:
    """$OUT/from_scratch.json and .md from the finished runs; 1 when a run is missing or was
    cut short (the JSON still written, naming them), else 0."""
    from gapless.checkpoint import atomic_write_text

    ft, chosen = finetune(), methods()
    spec = {"name": "from-scratch-m30k-de-en", "seeds": SEEDS, "splits": SPLITS, "beam": 5,
            "reference": REFERENCE, "primary": "test2016",
            "methods": {m: KNOWN[m] for m in chosen}}
    family = ft.outside_pvalues(Path(os.environ["FAMILY"]), spec) if os.environ.get(
        "FAMILY") else None  # amendment 5: the methods reported elsewhere, in Holm's family
    report, results = ft.analyse(spec, R, family)
    short = [f"{r['method']}-s{r['seed']}" for r in results if r["updates"] < r["planned_updates"]]
    device = "cpu"
    if SETUP.device != "cpu":
        import torch
        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    doc = {"protocol": "docs/protocols/powered_comparison.md, section 4",
           "script": "benchmarks/gpu_from_scratch.sh", "dry_run": SETUP is DRY, "device": device,
           "setup": asdict(SETUP), "methods": spec["methods"], "seeds": SEEDS, "splits": SPLITS,
           "runs": {f"{r['method']}-s{r['seed']}": r for r in results},
           "missing": report["missing"], "short": short, "complete": not (report["missing"]
                                                                          or short),
           "statistics": report, "wall_s": round(wall_s, 1)}
    errors = [str(R / n / "error.txt") for n in report["missing"]
              if (R / n / "error.txt").is_file()]
    problems = ([f"missing runs {report['missing']}"] if report["missing"] else []) + (
        [f"their errors: {', '.join(errors)}"] if errors else []) + (
        [f"cut short by train.max_minutes: {', '.join(short)} (updates "
         f"{', '.join(str(doc['runs'][n]['updates']) for n in short)} of {SETUP.updates})"]
        if short else [])
    md = ft.render(report, ft.table(spec, None, results))
    if problems:  # said first in the report, not only on stderr
        title, _, body = md.partition("\n")
        md = (f"{title}\n\n**Not the protocol's result**: " + "; ".join(problems)
              + ". The figures of those runs are not the protocol's.\n" + body)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "from_scratch.json", json.dumps(doc, indent=1))
    atomic_write_text(out / "from_scratch.md", md)
    print(report["reading"])
    if doc["complete"]:
        return 0
    print("gpu_from_scratch: not the protocol's result: " + "; ".join(problems), file=sys.stderr)
    return 1


if __name__ == "__main__":
    command = sys.argv[2]
    if command == "check":
        print(" ".join(f"{m}-s{s}" for s in SEEDS for m in methods()))
    elif command == "prepare":
        prepared()
    elif command == "train":
        failed = 0
        for name in sys.argv[3:]:
            try:
                with claim(name) as mine:
                    if mine:
                        train_one(name)
            except Exception:  # one failed run must not stop the others of its lane
                failed += 1
                (R / name).mkdir(parents=True, exist_ok=True)
                (R / name / "error.txt").write_text(traceback.format_exc())
                traceback.print_exc()
        sys.exit(1 if failed else 0)
    elif command == "collect":
        sys.exit(collect(Path(sys.argv[3]), float(sys.argv[4])))
    else:
        sys.exit(f"unknown command {command}")
PY
LANES=${LANES:-$([ "$DRY_RUN" = 1 ] && echo 2 || { [ "${CPU:-0}" = 1 ] && echo 1; } || echo 99)}
# amendment 7: CPU lanes share the cores (1 thread each when 2 or more lanes)
[ "${CPU:-0}" = 1 ] && [ "$LANES" -gt 1 ] && export THREADS=${THREADS:-1}
RUNS=$($PY "$DRIVER" "$R" check) || exit 2  # names the unknown method; nothing trained
if [ "${COLLECT_ONLY:-0}" != 1 ]; then
  command -v nvidia-smi > /dev/null && nvidia-smi > "$OUT/gpu.txt" 2>&1
  $PY "$DRIVER" "$R" prepare > "$R/prepare.out" 2>&1 || { tail -n 20 "$R/prepare.out"; exit 1; }
  read -r -a ALL <<< "$RUNS"
  for ((lane = 0; lane < LANES && lane < ${#ALL[@]}; lane++)); do  # one queue, LANES takers
    $PY "$DRIVER" "$R" train "${ALL[@]}" > "$R/lane$lane.out" 2>&1 &
  done
  wait
  tail -n 5 "$R"/lane*.out > "$OUT/tails.txt" 2>&1
fi
$PY "$DRIVER" "$R" collect "$OUT" $((SECONDS - START)); rc=$?
for run in $RUNS; do  # each run's record, log and hypotheses come back too (the bootstrap's input)
  [ -d "$R/$run/eval" ] || continue
  mkdir -p "$OUT/runs/$run" && cp "$R/$run"/eval/*.hyp "$OUT/runs/$run/"
  cp "$R/$run/log.jsonl" "$R/$run/config.yaml" "$OUT/runs/$run/" 2>/dev/null
done
exit $rc
