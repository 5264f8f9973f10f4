"""One benchmark sitting: the peers' harness and gapless's own benchmarks, strictly one after
the other on the same machine, written as one JSON document with every ratio between them.

Training throughput, the harness's protocol (4096-token batches, 20 warm-up + 100 measured
updates logged every 10, 2 threads): ``train_bench_fairseq.sh``, ``train_bench_onmt.sh`` and
``benchmarks.train_speed`` in fp32 and in bf16. Decoding ``fixed30`` (min = max = 30 pieces,
beam 5, 64 sentences per batch, test2016): ``decode_bench_fairseq.sh`` and
``decode_bench_onmt.sh`` on their first training run's checkpoint,
``decode_bench_ctranslate2.sh fairseq`` (that fairseq checkpoint converted as the harness does,
CTranslate2's compute type as the harness runs it) and ``benchmarks.decode_speed`` in fp32 and
bf16 on gapless's fp32 model of the training phase. Every figure carries its precision; the
ratios are to fairseq (training) and to CTranslate2 (decoding), from this sitting's figures only.
JoeyNMT is left out (its decoding alone takes most of an hour under this protocol).

The peers need the harness's venvs and prepared data under ``$BENCH_WORK`` (its
``setup_venvs.sh common fairseq onmt ct2`` and ``prepare.sh``); a peer whose venv is missing is
skipped with a message. Paths in the JSON are relative to the repository or start with
``BENCH_WORK/``.

    python -m benchmarks.sitting --out docs/bench/sitting.json        # the full sitting
    python -m benchmarks.sitting --out runs/sitting_dry.json --dry-run  # tiny sizes, end to end
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import REPO, finish, machine, relpath, rotated, say

PEERS = ("fairseq", "onmt", "ctranslate2")
TOOLKITS = (*PEERS, "gapless")
NEEDS = {"fairseq": ("common", "fairseq"), "onmt": ("common", "onmt"),
         "ctranslate2": ("common", "fairseq", "ct2")}  # venvs (conversion runs in fairseq's)
NAMES = {"fairseq": "fairseq", "onmt": "OpenNMT-py", "ctranslate2": "CTranslate2",
         "gapless_fp32": "gapless fp32", "gapless_bf16": "gapless bf16"}
DISTS = {"fairseq": ("fairseq", "fairseq_fixed"), "onmt": ("onmt", "OpenNMT_py"),
         "ct2": ("ct2", "ctranslate2")}  # venv, dist-info name
TRAIN_KEYS = ("fairseq", "onmt", "gapless_fp32", "gapless_bf16")
DECODE_KEYS = ("fairseq", "onmt", "ctranslate2", "gapless_fp32", "gapless_bf16")
FIXED = 30
# the harness's knobs in a dry run: a few updates on the first sentences of every split
DRY_ENV = {"BENCH_UPDATES": "4", "BENCH_WARMUP_UPDATES": "2", "BENCH_LOG_INTERVAL": "1"}
DRY_HEAD, DRY_TRAIN_HEAD = 64, 2000
DRY_TRAIN = ["--corpus", "synthetic", "--updates", "2", "--warmup-updates", "2",
             "--log-every", "1", "--d-model", "32", "--heads", "2", "--ffn", "64",
             "--layers", "1", "--vocab-size", "120", "--max-tokens", "512"]  # the tiny preset's
DRY_DECODE = ["--max-sentences", "16"]
# wall seconds of each step at the full protocol, for the --help estimate: the peers' from the
# harness's RESULTS.md (whole 120-update runs, decode commands), gapless's from its s/update
ESTIMATE_S = {"train_fairseq": 185, "train_onmt": 226, "train_gapless_fp32": 200,
              "train_gapless_bf16": 130, "decode_fairseq": 30, "decode_onmt": 30,
              "decode_ctranslate2": 35, "decode_gapless_fp32": 25, "decode_gapless_bf16": 20}
ONE_OFF_S = 90  # fairseq-preprocess and gapless's prepare of Multi30k, first sitting only
LEFT_OUT = {"joeynmt": "left out: its fixed30 decoding alone takes about 40 minutes on this "
                       "machine (harness README: JoeyNMT is ~85 % of the decoding phase)"}


def estimate() -> str:
    per_rep = sum(ESTIMATE_S.values())
    return (f"Duration of the full sitting: about {round((per_rep + ONE_OFF_S) / 60)} minutes at "
            f"--reps 1, about {round(per_rep / 60)} more per further rep. --dry-run: a few "
            "minutes with the peers (OpenNMT-py fills its example bucket first), under a "
            "minute without.")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=estimate())
    p.add_argument("--out", required=True, help="the JSON document (the table goes to stdout)")
    p.add_argument("--reps", type=int, default=1, help="repetitions of every measurement")
    p.add_argument("--dry-run", action="store_true",
                   help="tiny sizes end to end: a check of the plumbing, not a measurement")
    p.add_argument("--toolkits", default=",".join(TOOLKITS), help="comma-separated subset")
    p.add_argument("--harness", default=os.environ.get("BENCH_HARNESS",
                                                      str(REPO.parent / "shared/bench/peers")))
    p.add_argument("--bench-work", default=os.environ.get("BENCH_WORK") or os.path.join(
        os.environ.get("TMPDIR", "/tmp"), "gapless-peers"), help="the harness's BENCH_WORK")
    p.add_argument("--work-dir", default="runs/bench_sitting",
                   help="gapless's prepared data and runs")
    args = p.parse_args(argv)
    unknown = set(args.toolkits.split(",")) - set(TOOLKITS)
    if unknown or args.reps < 1:
        p.error(f"unknown toolkits {sorted(unknown)}" if unknown else "--reps must be >= 1")
    return args


@dataclasses.dataclass
class Sitting:
    """Where everything goes, and the record of every step run so far."""

    args: argparse.Namespace
    harness: Path
    bench_work: Path
    data: Path  # the peers' prepared data
    runs: Path  # the peers' runs and every step's log, this sitting only
    work: Path  # gapless's work dir
    steps: list = dataclasses.field(default_factory=list)

    @classmethod
    def create(cls, args) -> Sitting:
        bench_work = Path(args.bench_work).resolve()
        data = bench_work / ("data_sitting_dry" if args.dry_run else "data")
        stamp = time.strftime("%Y%m%d_%H%M%S") + ("_dry" if args.dry_run else "")
        runs = bench_work / "runs" / f"sitting_{stamp}"
        (runs / "logs").mkdir(parents=True, exist_ok=True)
        return cls(args, Path(args.harness).resolve(), bench_work, data, runs,
                   Path(args.work_dir).resolve())

    def symbolic(self, path) -> str:
        """``BENCH_WORK/...``, a path relative to the repository, or ``WORK_DIR/...``."""
        path = Path(path).resolve()
        if path.is_relative_to(REPO):
            return relpath(path)
        for root, name in ((self.bench_work, "BENCH_WORK"), (self.work, "WORK_DIR")):
            if path.is_relative_to(root.resolve()):
                return str(Path(name) / path.relative_to(root.resolve()))
        return relpath(path) if path.is_relative_to(REPO.parent) else f"<outside>/{path.name}"

    def peer_env(self, **extra: str) -> dict:
        """The caller's environment without any harness knob, then this sitting's."""
        drop = ("DATA", "RUNS", "SRC", "TGT", "LR_WARMUP", "CT2_COMPUTE_TYPE")
        env = {k: v for k, v in os.environ.items() if not k.startswith("BENCH_") and k not in drop}
        env.update(BENCH_WORK=str(self.bench_work), DATA=str(self.data), RUNS=str(self.runs))
        return {**env, **(DRY_ENV if self.args.dry_run else {}), **extra}

    def missing(self, toolkit: str) -> str | None:
        """Why a toolkit cannot run here, or None."""
        if toolkit == "gapless":
            return None
        if not (self.harness / "env.sh").is_file():
            return f"peer harness not found at {self.symbolic(self.harness)}"
        absent = [v for v in NEEDS[toolkit]
                  if not (self.bench_work / "venvs" / v / "bin" / "python").exists()]
        if absent:
            return ("venv missing: " + ", ".join(f"BENCH_WORK/venvs/{v}" for v in absent)
                    + f" (the harness's setup_venvs.sh {' '.join(absent)})")
        return None


# -- steps ----------------------------------------------------------------------------------


def cpu_probe() -> tuple[float, float, float]:
    """(monotonic seconds, busy CPU seconds of the whole machine, CPU seconds of this
    process's waited-for descendants)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        busy = (sum(ticks[:3]) + sum(ticks[5:8])) / os.sysconf("SC_CLK_TCK")  # without idle, iowait
    except (OSError, ValueError):
        busy = float("nan")
    return time.monotonic(), busy, ru.ru_utime + ru.ru_stime


def run_step(s: Sitting, name: str, cmd: list[str], env: dict, stdout: Path | None = None) -> dict:
    """Run one step to completion (its output in ``logs/NAME.log``, or stdout in ``stdout``);
    its record: exit code, wall time, load average and other processes' CPU around it."""
    log = s.runs / "logs" / f"{name}.log"
    say("sitting", f"{name} ...")
    load, probe = os.getloadavg()[0], cpu_probe()
    with open(log, "w") as err, open(stdout or os.devnull, "w") as out:
        rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=out if stdout else err,
                            stderr=err, check=False).returncode
    end = cpu_probe()
    wall = end[0] - probe[0]
    other = max(0.0, (end[1] - probe[1]) - (end[2] - probe[2])) / wall if wall > 0 else 0.0
    record = {"step": name, "rc": rc, "wall_s": round(wall, 1), "load_avg_1m_before": load,
              "load_avg_1m_after": os.getloadavg()[0],
              "other_procs_cpu_pct": None if math.isnan(other) else round(100 * other, 1),
              "log": s.symbolic(log)}
    s.steps.append(record)
    if rc:
        tail = log.read_text(errors="replace")[-1500:]
        say("sitting", f"{name} FAILED (exit {rc}); end of {record['log']}:\n{tail}")
    return record


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def prepare_peer_data(s: Sitting) -> None:
    """The harness's prepare.sh, once. The dry run's data: the first ``DRY_TRAIN_HEAD`` pairs of
    each split (OpenNMT-py fills its example bucket from them whatever their number: a tiny
    corpus only means many more passes), then test2016 cut to its first ``DRY_HEAD``."""
    if (s.data / "prepare.json").is_file():
        return
    head = ["--head", str(DRY_TRAIN_HEAD)] if s.args.dry_run else []
    run_step(s, "prepare_peer_data", ["bash", str(s.harness / "prepare.sh"), *head], s.peer_env())
    if s.args.dry_run:
        for path in (s.data / d / f"test.{lang}" for d in ("spm", "raw") for lang in ("de", "en")):
            if path.is_file():
                lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
                path.write_text("".join(lines[:DRY_HEAD]), encoding="utf-8")


# -- training ---------------------------------------------------------------------------------


def train_peer(s: Sitting, peer: str, rep: int) -> dict:
    """One harness training run; its figures from ``train_summary.json``."""
    run = s.runs / peer / f"train_r{rep}"
    rec = run_step(s, f"train_{peer}_r{rep}",
                   ["bash", str(s.harness / f"train_bench_{peer}.sh"), str(run)], s.peer_env())
    summary = read_json(run / "train_summary.json") if rec["rc"] == 0 else None
    if not summary or summary.get("toolkit_tok_s_median") is None:
        return {"error": f"no figure (exit {rec['rc']}; {rec['log']})"}
    return {"tgt_tok_s": summary["toolkit_tok_s_median"],
            "tgt_tok_s_min": summary["toolkit_tok_s_min"],
            "tgt_tok_s_max": summary["toolkit_tok_s_max"],
            "harness_clock_tgt_tok_s": summary["harness_tok_s_median"],
            "s_per_update": summary["harness_s_per_update_median"],
            "real_tgt_tokens_per_update": summary["tgt_tok_per_update_mean"],
            "measured_intervals": summary["n_intervals_measured"],
            "peak_rss_mb": summary["ru_maxrss_mb"], "run": s.symbolic(run)}


def gapless_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}


def train_gapless(s: Sitting, dtype: str, rep: int) -> dict:
    """``benchmarks.train_speed`` for one dtype in its own process; its figures."""
    out = s.runs / "logs" / f"train_gapless_{dtype}_r{rep}.json"
    cmd = [sys.executable, "-m", "benchmarks.train_speed", "--dtypes", dtype,
           "--work-dir", str(s.work), *(DRY_TRAIN if s.args.dry_run else [])]
    rec = run_step(s, f"train_gapless_{dtype}_r{rep}", cmd, gapless_env(), stdout=out)
    doc = read_json(out) if rec["rc"] == 0 else None
    if not doc:
        return {"error": f"no figure (exit {rec['rc']}; {rec['log']})"}
    r = doc["gapless"][dtype]
    return {"tgt_tok_s": r["tgt_tok_s_median"], "tgt_tok_s_min": r["tgt_tok_s_min"],
            "tgt_tok_s_max": r["tgt_tok_s_max"], "s_per_update": r["s_per_update_median"],
            "real_tgt_tokens_per_update": r["real_tgt_tokens_per_update"],
            "measured_intervals": r["measured_intervals"], "peak_rss_mb": r["peak_rss_mb"],
            "corpus": doc["protocol"]["corpus"], "comparable": doc["comparable"],
            "json": s.symbolic(out)}


def training_phase(s: Sitting, wanted: set[str]) -> dict[str, list]:
    """Every training run, rep by rep (who goes first rotates between reps)."""
    runs: dict[str, list] = {k: [] for k in TRAIN_KEYS}
    for rep in range(1, s.args.reps + 1):
        for key in rotated(list(TRAIN_KEYS), rep - 1):
            toolkit, _, dtype = key.partition("_")
            if toolkit not in wanted:
                continue
            runs[key].append(train_gapless(s, dtype, rep) if dtype else train_peer(s, key, rep))
    return runs


# -- decoding ---------------------------------------------------------------------------------


def checkpoint(s: Sitting, peer: str) -> Path:
    """The checkpoint of a peer's first training run (the harness decodes that one)."""
    run = s.runs / peer / "train_r1"
    if peer == "fairseq":
        return run / "ckpt" / "checkpoint_last.pt"
    return run / f"model_step_{s.peer_env().get('BENCH_UPDATES', '120')}.pt"


def decode_peer(s: Sitting, peer: str, rep: int) -> dict:
    """One harness ``fixed30`` decoding run; its figures from ``decode_summary.json``."""
    source = "fairseq" if peer == "ctranslate2" else peer
    ckpt = checkpoint(s, source)
    if not ckpt.is_file():
        return {"error": f"no checkpoint of {source}'s training run 1 ({s.symbolic(ckpt)})"}
    out = s.runs / peer / f"decode_fixed{FIXED}_r{rep}"
    script = s.harness / f"decode_bench_{peer}.sh"
    cmd = ["bash", str(script), *(["fairseq"] if peer == "ctranslate2" else []), str(ckpt), str(out)]
    rec = run_step(s, f"decode_{peer}_r{rep}", cmd,
                   s.peer_env(BENCH_DECODE_FIXEDLEN=str(FIXED)))
    summary = read_json(out / "decode_summary.json") if rec["rc"] == 0 else None
    if not summary or not summary.get("internal_sent_s"):
        return {"error": f"no figure (exit {rec['rc']}; {rec['log']})"}
    figure = {"sent_s": summary["internal_sent_s"], "e2e_sent_s": summary["e2e_sent_s"],
              "timer": summary["internal_source"], "sentences": summary["n_sentences"],
              "mean_hyp_pieces": summary["hyp_pieces_mean"],
              "peak_rss_mb": summary["ru_maxrss_mb"], "run": s.symbolic(out)}
    if peer == "ctranslate2":
        figure["compute_type"] = summary.get("ct2_compute_type")
    return figure


def decode_gapless(s: Sitting, dtype: str, rep: int) -> dict:
    """``benchmarks.decode_speed`` (beam 5, fixed30, KV cache) for one dtype; its figures."""
    run = s.work / "fp32"
    if not (run / "checkpoints").is_dir():
        return {"error": f"no gapless fp32 training run ({s.symbolic(run)})"}
    out = s.runs / "logs" / f"decode_gapless_{dtype}_r{rep}.json"
    cmd = [sys.executable, "-m", "benchmarks.decode_speed", "--run", str(run),
           "--checkpoint", "last", "--beams", "5", "--modes", f"fixed{FIXED}", "--cache", "on",
           "--dtypes", dtype, *(DRY_DECODE if s.args.dry_run else [])]
    rec = run_step(s, f"decode_gapless_{dtype}_r{rep}", cmd, gapless_env(), stdout=out)
    doc = read_json(out) if rec["rc"] == 0 else None
    if not doc:
        return {"error": f"no figure (exit {rec['rc']}; {rec['log']})"}
    r = doc["gapless"][0]
    return {"sent_s": r["sent_s"], "timer": doc["protocol"]["sent_s"],
            "sentences": r["sentences"], "mean_hyp_pieces": r["mean_hyp_pieces"],
            "peak_rss_mb": doc["machine"]["peak_rss_mb"], "json": s.symbolic(out)}


def decoding_phase(s: Sitting, wanted: set[str]) -> dict[str, list]:
    runs: dict[str, list] = {k: [] for k in DECODE_KEYS}
    for rep in range(1, s.args.reps + 1):
        for key in DECODE_KEYS:
            toolkit, _, dtype = key.partition("_")
            if toolkit in wanted:
                runs[key].append(decode_gapless(s, dtype, rep) if dtype
                                 else decode_peer(s, key, rep))
    return runs


# -- the document -----------------------------------------------------------------------------


def precision(key: str, runs: list, phase: str) -> str:
    if key == "gapless_bf16":
        return "bf16 autocast" if phase == "training" else "bf16 weights"
    if key == "ctranslate2":
        types = sorted({r["compute_type"] for r in runs if r.get("compute_type")})
        return "/".join(types or ["default"]) + " (compute_type 'default', as the harness runs it)"
    return "fp32"


def entries(runs: dict[str, list], unit: str, phase: str, skipped: dict) -> dict:
    """Per toolkit: precision, every run's figures, and the figure = the median of the runs'."""
    out = {}
    for key, rs in runs.items():
        toolkit = key.partition("_")[0]
        if toolkit in skipped:
            out[key] = {"precision": precision(key, [], phase), "figure": None,
                        "skipped": skipped[toolkit]}
            continue
        if not rs:
            continue
        good = [r[unit] for r in rs if r.get(unit) is not None]
        out[key] = {"precision": precision(key, rs, phase),
                    "figure": round(statistics.median(good), 2) if good else None, "runs": rs}
    return out


def ratios(found: dict, base: str) -> dict:
    """Each figure / the base's figure (None where either is missing)."""
    b = (found.get(base) or {}).get("figure")
    return {k: round(e["figure"] / b, 4) if b and e.get("figure") else None
            for k, e in found.items()}


def bf16_to_fp32(found: dict):
    pair = {k: found[k] for k in ("gapless_fp32", "gapless_bf16") if k in found}
    return ratios(pair, "gapless_fp32").get("gapless_bf16")


def cell(entry: dict | None, ratio, fmt: str) -> str:
    if entry is None:
        return "not run"
    if entry.get("figure") is None:
        return f"not run ({entry['precision']})"
    times = f", ×{ratio:.2f}" if ratio is not None else ""
    return f"{entry['figure']:{fmt}} ({entry['precision'].split(' (')[0]}{times})"


def table(doc: dict) -> str:
    head = "| | " + " | ".join(NAMES[k] for k in DECODE_KEYS) + " |"
    rows = [head, "|---" * (len(DECODE_KEYS) + 1) + "|"]
    decoding = f"decoding fixed{FIXED} beam 5, sent/s (× CTranslate2)"
    for phase, label, fmt in (("training", "training, target tok/s (× fairseq)", ",.0f"),
                              ("decoding", decoding, ".1f")):
        found, ratio = doc[phase], doc["ratios"][phase]
        cells = ["– (inference only)" if (phase, k) == ("training", "ctranslate2")
                 else cell(found.get(k), ratio.get(k), fmt) for k in DECODE_KEYS]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def peer_versions(s: Sitting) -> dict:
    """Each peer venv's toolkit version, read from its installed dist-info."""
    found = {}
    for venv, dist in DISTS.values():
        hits = sorted((s.bench_work / "venvs" / venv).glob(f"lib/python*/site-packages/{dist}-*"))
        if hits:
            found[dist] = hits[0].name.removesuffix(".dist-info").split("-", 1)[1]
    return found


def protocol(s: Sitting) -> dict:
    env = s.peer_env()
    updates = int(env.get("BENCH_UPDATES", 120))
    warmup = int(env.get("BENCH_WARMUP_UPDATES", 20))
    return {
        "training": {"updates": updates, "warmup_updates": warmup,
                     "log_interval": int(env.get("BENCH_LOG_INTERVAL", 10)),
                     "max_tokens": 4096, "threads": 2,
                     "gapless": "benchmarks.train_speed" + (" with the tiny preset's sizes, "
                                "synthetic corpus" if s.args.dry_run else ", Multi30k De->En"),
                     "figure": "median over the measured intervals of target tokens/s (peers: "
                               "the toolkit's own figure as the harness's parse_train.py reads "
                               "it; gapless: its log.jsonl); with --reps > 1 the median of the "
                               "runs' figures"},
        "decoding": {"mode": f"fixed{FIXED}", "min_len": FIXED, "max_len": FIXED, "beam": 5,
                     "batch_sentences": 64, "split": "test2016", "threads": 2,
                     "sentences": "all" if not s.args.dry_run else
                                  f"peers the first {DRY_HEAD} (training: {DRY_TRAIN_HEAD} "
                                  f"pairs), gapless the first {DRY_DECODE[1]}",
                     "figure": "sentences/s of the decoding loop: the peers' own timers "
                               "(harness decode_summary.json internal_sent_s), gapless "
                               "encode + search + decode after loading and one warm-up batch",
                     "gapless_model": "gapless's fp32 run of the last training rep, checkpoint "
                                      "last; the peers decode their training run 1"},
    }  # fmt: skip


def document(s: Sitting, info: dict, train: dict, decode: dict) -> dict:
    found_t, found_d = train, decode
    doc = {
        "benchmark": "sitting", "dry_run": s.args.dry_run, "reps": s.args.reps,
        "note": "one sitting, strictly sequential; compare figures within this document only",
        "protocol": protocol(s), "machine": info,
        "paths": {"harness": s.symbolic(s.harness), "peer_data": s.symbolic(s.data),
                  "peer_runs_and_logs": s.symbolic(s.runs), "gapless_work": s.symbolic(s.work)},
        "peer_versions": peer_versions(s), "left_out": LEFT_OUT,
        "training": found_t, "decoding": found_d,
        "ratios": {"training": ratios(found_t, "fairseq"),
                   "decoding": ratios(found_d, "ctranslate2"),
                   "base": {"training": "fairseq", "decoding": "ctranslate2"},
                   "gapless_bf16_to_fp32": {"training": bf16_to_fp32(found_t),
                                            "decoding": bf16_to_fp32(found_d)}},
        "steps": s.steps,
    }  # fmt: skip
    doc["table_markdown"] = table(doc)
    return doc


def main(argv=None) -> int:
    args = parse_args(argv)
    s = Sitting.create(args)
    wanted = set(args.toolkits.split(","))
    skipped = {t: why for t in sorted(wanted) if (why := s.missing(t))}
    for toolkit, why in skipped.items():
        say("sitting", f"skipping {toolkit}: {why}")
    wanted -= set(skipped)
    info = machine(2)
    info["load_avg_before"] = list(os.getloadavg())
    if wanted & set(PEERS):
        prepare_peer_data(s)
    train = entries(training_phase(s, wanted), "tgt_tok_s", "training", skipped)
    decode = entries(decoding_phase(s, wanted), "sent_s", "decoding", skipped)
    info["load_avg_after"] = list(os.getloadavg())
    doc = document(s, finish(info), train, decode)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(doc["table_markdown"])
    say("sitting", f"wrote {args.out}; logs in {doc['paths']['peer_runs_and_logs']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
