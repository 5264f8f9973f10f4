"""Training throughput of ``gapless train`` under the peers' protocol; prints one JSON document.

Protocol (../shared/bench/peers/README.md): Multi30k De->En prepared by gapless (joint
SentencePiece BPE 8000), Transformer 3+3, d_model 256, 4 heads, FFN 1024, dropout 0.1, label
smoothing 0.1, Adam(0.9, 0.98), inverse-sqrt LR (warm-up 4000, peak 5e-4), no clipping, 4096-token
batches, 20 warm-up + 100 measured updates logged every 10, 2 threads. Without Multi30k the
generated ``synthetic`` corpus is used (and the JSON says so).

Each dtype (fp32, bf16) runs in its own fresh process that calls ``gapless.training.train``
(validation and checkpoints pushed past the last update). Figures per dtype come from that
run's ``log.jsonl``: target tokens/s per interval (median/min/max of the intervals after the
warm-up updates), seconds per update, real target tokens per update, and the process's peak RSS.

    python -m benchmarks.train_speed                     # the full protocol
    python -m benchmarks.train_speed --corpus synthetic --updates 3 --warmup-updates 1 \
        --log-every 1 --d-model 32 --heads 2 --ffn 64 --layers 1 --vocab-size 120   # smoke run
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from pathlib import Path

from benchmarks import peers
from benchmarks.common import child_json, emit, finish, machine, peak_rss_mb, relpath, reply, say

PRESET = "multi30k_de_en"  # the peers' model size and data
# the peers' training protocol on top of the preset (gapless's own recipe differs)
PROTOCOL = {
    "model.dropout": 0.1, "model.norm_position": "post",
    "train.seed": 1, "train.accum": 1, "train.label_smoothing": 0.1, "train.clip_norm": 0.0,
    "train.max_minutes": 0.0,
    # no validation or checkpoint inside the measured updates; one of each at the end
    "train.valid_every": 10**9, "train.save_every": 10**9, "train.valid_max_sentences": 1,
    "train.keep_last": 1, "train.progress": False,
}  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--corpus",
        default="auto",
        help="auto (multi30k when found, else synthetic) | multi30k | synthetic | DIR",
    )
    p.add_argument("--src", default="de")
    p.add_argument("--tgt", default="en")
    p.add_argument(
        "--work-dir",
        default="runs/bench_train",
        help="prepared data and one run directory per dtype (replaced each time)",
    )
    p.add_argument("--dtypes", default="fp32,bf16", help="comma-separated: fp32,bf16")
    p.add_argument("--updates", type=int, default=100, help="measured updates")
    p.add_argument("--warmup-updates", type=int, default=20, help="updates before measuring")
    p.add_argument("--log-every", type=int, default=10, help="updates per measured interval")
    p.add_argument("--max-tokens", type=int, default=4096)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--ffn", type=int, default=1024)
    p.add_argument("--layers", type=int, default=3, help="encoder and decoder layers each")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--lr-warmup", type=int, default=4000)
    p.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra dotted config override, e.g. model.norm_position=pre (repeatable)",
    )
    p.add_argument("--child", help=argparse.SUPPRESS)  # internal: one measured run (run dir)
    args = p.parse_args(argv)
    if args.warmup_updates % args.log_every:
        p.error("--warmup-updates must be a multiple of --log-every (whole intervals only)")
    return args


def choose_corpus(args) -> tuple[str, str]:
    from gapless import corpora

    if args.corpus != "auto":
        return args.corpus, "chosen with --corpus"
    splits = ("train", "valid")
    if all(corpora.corpus_available("multi30k", s, args.src, args.tgt) for s in splits):
        path, _ = corpora.split_paths("multi30k", "train", args.src, args.tgt, download=False)
        return "multi30k", f"found at {relpath(path.parent)}"
    return "synthetic", "Multi30k not found locally: the generated corpus instead (not comparable)"


def build_config(args, corpus: str, dtype: str):
    """The preset with the protocol, the command line's sizes and ``--override`` on top."""
    from gapless import presets

    layers = args.layers
    overrides = {
        **PROTOCOL, "name": f"bench_train_{dtype}",
        "model.d_model": args.d_model, "model.n_heads": args.heads, "model.ffn_dim": args.ffn,
        "model.enc_layers": layers, "model.dec_layers": layers,
        "data.corpus": corpus, "data.src_lang": args.src, "data.tgt_lang": args.tgt,
        "data.vocab_size": args.vocab_size,
        "train.max_tokens": args.max_tokens, "train.lr": args.lr, "train.warmup": args.lr_warmup,
        "train.max_updates": args.warmup_updates + args.updates, "train.log_every": args.log_every,
        "train.dtype": dtype, "train.device": args.device, "train.threads": args.threads,
        **dict(o.split("=", 1) for o in args.override),
    }  # fmt: skip
    return presets.load(PRESET, overrides)


def run_child(run_dir: str) -> dict:
    """One measured run in this (fresh) process: train, then report the log and peak RSS."""
    from gapless.checkpoint import RunDir
    from gapless.training import train

    run = RunDir(run_dir)
    cfg = run.load_config()
    start = time.perf_counter()
    state = train(cfg, run_dir)
    wall = time.perf_counter() - start
    records = [r for r in run.read_log() if r.get("kind") == "train"]
    return {
        "records": records,
        "updates": state.update,
        "wall_s": round(wall, 2),
        "peak_rss_mb": peak_rss_mb(),
    }


def summarise(child: dict, args) -> dict:
    """Per-interval figures of the intervals that start after the warm-up updates."""
    measured = [r for r in child["records"] if r["update"] - args.log_every >= args.warmup_updates]
    if not measured:
        raise RuntimeError("no measured interval in the log (updates too few?)")
    tok_s = [r["tgt_tokens_per_s"] for r in measured]
    s_upd = [r["s_per_update"] for r in measured]
    tokens = [r["tgt_tokens_per_s"] * r["s_per_update"] for r in measured]  # per update
    return {
        "tgt_tok_s_median": round(statistics.median(tok_s), 1),
        "tgt_tok_s_min": min(tok_s),
        "tgt_tok_s_max": max(tok_s),
        "tgt_tok_s_per_interval": tok_s,
        "s_per_update_median": round(statistics.median(s_upd), 4),
        "real_tgt_tokens_per_update": round(statistics.mean(tokens), 1),
        "measured_intervals": len(measured),
        "measured_updates": len(measured) * args.log_every,
        "final_loss": measured[-1]["loss"],
        "peak_rss_mb": child["peak_rss_mb"],
        "run_wall_s": child["wall_s"],
    }


def new_run_dir(run_dir: Path, prep_dir: Path, cfg) -> None:
    """A fresh run directory holding the prepared data and ``cfg``."""
    from gapless import config as config_mod

    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.copytree(prep_dir / "data", run_dir / "data")  # files and shard folders
    for name in ("spm.model", "spm.vocab"):
        shutil.copy2(prep_dir / name, run_dir / name)
    config_mod.save(cfg, run_dir / "config.yaml")


def comparable(args, corpus: str) -> bool:
    """Whether the run follows the peers' exact protocol (else their figures are context)."""
    return (corpus == "multi30k" and (args.src, args.tgt) == ("de", "en")
            and args.vocab_size == 8000 and (args.d_model, args.heads, args.ffn, args.layers)
            == (256, 4, 1024, 3) and args.max_tokens == 4096 and args.updates == 100
            and args.warmup_updates == 20 and args.log_every == 10 and args.threads == 2
            and (args.lr, args.lr_warmup) == (5e-4, 4000) and not args.override
            and args.device == "cpu")  # fmt: skip


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        reply(run_child(args.child))
        return 0

    from gapless.model import Transformer, count_parameters
    from gapless.prepare import prepare

    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    corpus, reason = choose_corpus(args)
    work = Path(args.work_dir)
    prep_dir = work / f"data_{Path(corpus).name}_{args.src}{args.tgt}_{args.vocab_size}"
    info = machine(args.threads)
    say("train_speed", f"corpus {corpus} ({reason}); preparing {prep_dir}")
    cfg = build_config(args, corpus, dtypes[0] if dtypes else "fp32")
    prep = prepare(cfg, prep_dir)  # SentencePiece + encoded corpus, reused when unchanged
    cfg.model.vocab_size = len(prep.vocab)
    n_params = count_parameters(Transformer(cfg.model))

    results = {}
    for dtype in dtypes:
        run_dir = work / dtype
        new_run_dir(run_dir, prep_dir, build_config(args, corpus, dtype))
        env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        say("train_speed", f"{dtype}: {args.warmup_updates}+{args.updates} updates ...")
        child = child_json("benchmarks.train_speed", ["--child", str(run_dir.resolve())], env)
        results[dtype] = summarise(child, args)
        say("train_speed", f"{dtype}: median {results[dtype]['tgt_tok_s_median']} tgt tok/s")

    doc = {
        "benchmark": "train_speed",
        "protocol": {
            "corpus": corpus, "corpus_reason": reason, "src": args.src, "tgt": args.tgt,
            "train_pairs": len(prep.train), "vocab_size": len(prep.vocab),
            "model": {"d_model": args.d_model, "heads": args.heads, "ffn": args.ffn,
                      "enc_layers": args.layers, "dec_layers": args.layers,
                      "norm_position": cfg.model.norm_position, "parameters": n_params},
            "max_tokens": args.max_tokens, "warmup_updates": args.warmup_updates,
            "measured_updates": args.updates, "log_every": args.log_every,
            "lr": args.lr, "lr_warmup": args.lr_warmup, "device": args.device,
            "overrides": args.override,
            "tokens_per_s": "target tokens (incl. EOS, no padding) / interval wall-clock, "
                            "from gapless's own log.jsonl",
        },
        "machine": finish(info),
        "gapless": results,
        "peers": peers.TRAIN,
        "comparable": comparable(args, corpus),
    }  # fmt: skip
    emit(doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
