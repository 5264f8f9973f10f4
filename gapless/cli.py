"""Command line: one subcommand = one library function; no logic here.

    gapless prepare   CONFIG [--run-dir DIR] [--section.key VALUE ...]
    gapless train     CONFIG [--run-dir DIR] [--init-from RUN [--init-optimizer]] [--restart]
                      [--key VALUE ...]
    gapless translate RUN [--beam K] [--n-best K] [--input FILE] [--output FILE]  (stdin, stdout)
    gapless evaluate  RUN [--split test2016 ...] [--beam K] [--checkpoint best|last|NAME|DIR]
    gapless average   RUN [--last N | --updates U1,U2,...] [--name averaged]
    gapless export    RUN --format ctranslate2 --out DIR [--quantization int8] [--force]
    gapless quickstart [--minutes M]
    gapless diagnose  RUN [--split S] [--max-sentences N] [--beams 1,4,10,50] [--length-grid]
                      [--protocol]  (= --beams 1,5,10,50,100 --length-grid)
    gapless diagnose  --compare RUN_A RUN_B ... --out DIR
    gapless explain   [CLAIM ...] [--run RUN] [--out DIR] [--quick]
    gapless serve     RUN [--host 127.0.0.1] [--port 8080] [--engine auto|gapless|ctranslate2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from pathlib import Path

from . import config as config_mod
from .config import ConfigError
from .data import CorpusError
from .decode import LENGTH_NORMS
from .runlock import RunLocked
from .textio import LineReport, atomic_output, read_text_lines
from .training.trainer import NonFiniteLoss
from .verify import CheckpointError


def _config(args, overrides) -> tuple[config_mod.Config, Path]:
    cfg = config_mod.load(args.config, overrides)
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / cfg.name
    return cfg, run_dir


def cmd_prepare(args, overrides) -> int:
    from .prepare import prepare

    cfg, run_dir = _config(args, overrides)
    prep = prepare(cfg, run_dir, force=args.force)
    print(json.dumps({"run_dir": str(run_dir), "vocab_size": len(prep.vocab),
                      "train": prep.report["train_summary"],
                      "valid_pairs": prep.report["valid_pairs"]}, indent=1))
    return 0


def cmd_train(args, overrides) -> int:
    from .training import train
    from .training.distributed import shutdown

    cfg, run_dir = _config(args, overrides)
    state = train(cfg, run_dir, init_from=args.init_from, init_optimizer=args.init_optimizer,
                  restart=args.restart)
    shutdown()
    print(json.dumps({"run_dir": str(run_dir), "updates": state.update,
                      "stopped": state.stopped, "best_valid_bleu": state.best_bleu,
                      "minutes": round(state.elapsed_s / 60, 2)}))
    return 0


def cmd_average(args, overrides) -> int:
    from .checkpoint import RunDir

    run = RunDir(args.run)
    updates = [int(u) for u in args.updates.split(",")] if args.updates else None
    chosen = run.choose_steps(args.last, updates)
    out = run.average(chosen, args.name)
    print(json.dumps({"checkpoint": str(out), "averaged": [p.name for p in chosen],
                      "use": f"--checkpoint {args.name}"}))
    return 0


def _decode_kwargs(args) -> dict:
    kw = {k: getattr(args, k) for k in ("beam", "len_penalty", "len_norm", "max_len_a",
                                        "max_len_b", "min_len", "min_len_ratio", "batch_size")
          if getattr(args, k) is not None}
    if getattr(args, "sample", False):
        kw["sampling"] = {"temperature": args.temperature, "top_k": args.top_k,
                          "top_p": args.top_p}
    return kw


def cmd_translate(args, overrides) -> int:
    from .export import load_engine
    from .inference import nbest_lines

    translator = load_engine(args.run, args.engine, args.checkpoint, args.device, args.dtype)
    translator.long_lines = args.long_lines
    kwargs = _decode_kwargs(args)
    if args.n_best > kwargs.get("beam", translator.decode_cfg.beam):
        raise ConfigError(f"--n-best {args.n_best} needs --beam >= {args.n_best}")
    report = LineReport(args.input or "<stdin>")
    with contextlib.ExitStack() as stack:
        raw = stack.enter_context(open(args.input, "rb")) if args.input else sys.stdin.buffer
        src = read_text_lines(raw, report)
        out = stack.enter_context(atomic_output(args.output, sys.stdout))
        if args.n_best > 1:
            out.writelines(nbest_lines(translator, src, args.n_best, **kwargs))
        else:
            out.writelines(hyp + "\n" for hyp in translator.translate_stream(src, **kwargs))
    if report.replaced:
        print(f"gapless: {len(report.replaced)} line(s) could not be read and were translated "
              f"as empty lines (first: line {report.replaced[0][0]})", file=sys.stderr)
    return 0


def cmd_evaluate(args, overrides) -> int:
    from .evaluate import evaluate
    from .export import engine_config, load_engine

    engine = load_engine(args.run, args.engine, args.checkpoint, args.device, args.dtype)
    for split in args.split or engine_config(engine).data.test_splits:
        result = evaluate(args.run, split, args.checkpoint, args.device, args.dtype,
                          translator=engine, **_decode_kwargs(args))
        print(f"{split}: BLEU {result['bleu']:.2f}  chrF {result['chrf']:.2f}  "
              f"({result['sentences']} sentences, {result['sentences_per_second']} sent/s)")
        print(f"  {result['bleu_signature']}")
        print(f"  {result['chrf_signature']}")
    return 0


def cmd_export(args, overrides) -> int:
    from .export import export

    out = export(args.run, args.out, args.checkpoint, args.quantization, args.force)
    print(json.dumps({"export": str(out), "format": args.format,
                      "quantization": args.quantization, "use": f"gapless translate {out}"}))
    return 0


def cmd_diagnose(args, overrides) -> int:
    from .analysis import DiagnoseSettings, compare_report, diagnose_report
    from .analysis.diagnose import diagnose
    from .analysis.exposure import BEAMS, PROTOCOL_BEAMS

    if (args.compare is None) == (args.run is None) or (args.compare and not args.out):
        print("gapless: error: diagnose takes RUN, or --compare RUN ... --out DIR",
              file=sys.stderr)
        return 2
    beams = args.beams or list(PROTOCOL_BEAMS if args.protocol else BEAMS)
    settings = DiagnoseSettings(split=args.split, max_sentences=args.max_sentences,
                                beams=beams, sweep_sentences=args.sweep_sentences,
                                checkpoint=args.checkpoint, device=args.device, dtype=args.dtype,
                                length_grid=args.length_grid or args.protocol)
    if args.compare:
        folders = [diagnose(run, settings, reuse=True) for run in args.compare]
        print(compare_report(folders, args.out))
    else:
        print(diagnose_report(diagnose(args.run, settings)))
    return 0


def cmd_explain(args, overrides) -> int:
    from .analysis.explain import explain

    explain(args.claims, run=args.run, out=args.out, quick=args.quick, echo=print)
    return 0


def cmd_quickstart(args, overrides) -> int:
    from .quickstart import quickstart

    quickstart(minutes=args.minutes, run_dir=args.run_dir, overrides=overrides)
    return 0


def cmd_serve(args, overrides) -> int:
    from . import serve

    settings = serve.ServeSettings(
        host=args.host, port=args.port, max_batch_tokens=args.max_batch_tokens,
        max_wait_ms=args.max_wait_ms, max_sentences=args.max_sentences,
        max_chars=args.max_chars, max_beam=args.max_beam, http=args.http, loop=args.loop)
    serve.serve_run(args.run, settings, checkpoint=args.checkpoint, device=args.device,
                    dtype=args.dtype, engine=args.engine)
    return 0


def _add_serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a run directory (or an exported model, with --engine)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--checkpoint", default="best", help="best | last | a checkpoint directory")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--engine", default="auto", choices=["auto", "gapless", "ctranslate2"])
    p.add_argument("--max-batch-tokens", type=int, default=4096,
                   help="source pieces in one merged search batch")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long a request waits for others to share its batch")
    p.add_argument("--max-sentences", type=int, default=64, help="per request (more: 413)")
    p.add_argument("--max-chars", type=int, default=10000, help="per request (more: 413)")
    p.add_argument("--max-beam", type=int, default=16, help="the largest beam a request may ask")
    p.add_argument("--http", default="auto", choices=["auto", "h11", "httptools"],
                   help="uvicorn's HTTP parser (auto: httptools when installed)")
    p.add_argument("--loop", default="auto", choices=["auto", "asyncio", "uvloop"],
                   help="uvicorn's event loop (auto: uvloop when installed)")
    p.set_defaults(fn=cmd_serve)


def _positive(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _add_decode_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default="best", help="best | last | a checkpoint directory")
    p.add_argument("--beam", type=_positive)
    p.add_argument("--len-penalty", type=float, help="alpha of the beam's length "
                   "normalisation: log-prob / lp(len), lp of --len-norm")
    p.add_argument("--len-norm", choices=list(LENGTH_NORMS),
                   help="fairseq: lp = len**alpha (the default); gnmt: lp = ((5 + len) / 6)**alpha "
                   "(Wu et al. 2016); len counts EOS")
    p.add_argument("--max-len-a", type=float)
    p.add_argument("--max-len-b", type=int)
    p.add_argument("--min-len", type=int)
    p.add_argument("--min-len-ratio", type=float, metavar="R",
                   help="at least ceil(R x source pieces) output tokens (default 0: off)")
    p.add_argument("--batch-size", type=_positive)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--engine", default="auto", choices=["auto", "gapless", "ctranslate2"],
                   help="auto: ctranslate2 for a directory written by gapless export")
    p.add_argument("--sample", action="store_true", help="ancestral sampling instead of search")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)


def _add_run_commands(sub) -> None:
    """prepare, train: a config in, a run directory out."""
    for name, fn, help_ in (("prepare", cmd_prepare, "SentencePiece + checked corpus"),
                            ("train", cmd_train, "train or resume a run")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("config")
        p.add_argument("--run-dir")
        if name == "train":
            p.add_argument("--init-from", help="start from this run's best weights and "
                           "vocabulary (fine-tune; fresh optimizer, schedules from update 0)")
            p.add_argument("--restart", action="store_true",
                           help="start over, discarding the run's checkpoints and log")
            p.add_argument("--init-optimizer", action="store_true",
                           help="with --init-from: also take the base's Adam state")
        else:
            p.add_argument("--force", action="store_true", help="prepare again")
        p.set_defaults(fn=fn)


def _add_model_commands(sub) -> None:
    """translate, average, evaluate: a trained run in."""
    p = sub.add_parser("translate", help="translate stdin or a file")
    p.add_argument("run")
    p.add_argument("--input")
    p.add_argument("--output")
    p.add_argument("--n-best", type=_positive, default=1,
                   help="write the K best hypotheses per line as 'i ||| text ||| score'")
    p.add_argument("--long-lines", choices=["truncate", "empty"], default="truncate",
                   help="a line longer than the model's positions: translate its first pieces "
                   "(default) or output an empty line; either way a warning names the line")
    _add_decode_args(p)
    p.set_defaults(fn=cmd_translate)
    p = sub.add_parser("average", help="average the weights of a run's last checkpoints")
    p.add_argument("run")
    p.add_argument("--last", type=int, default=5, help="the N newest step checkpoints")
    p.add_argument("--updates", help="these updates instead, e.g. 3000,3500,4000")
    p.add_argument("--name", default="averaged",
                   help="the new checkpoint's name (then --checkpoint NAME)")
    p.set_defaults(fn=cmd_average)
    p = sub.add_parser("evaluate", help="sacreBLEU + chrF on corpus splits")
    p.add_argument("run")
    p.add_argument("--split", action="append")
    _add_decode_args(p)
    p.set_defaults(fn=cmd_evaluate)
    p = sub.add_parser("export", help="write a run's checkpoint as a CTranslate2 model")
    p.add_argument("run")
    p.add_argument("--format", default="ctranslate2", choices=["ctranslate2"])
    p.add_argument("--out", required=True, help="the model directory to write")
    p.add_argument("--checkpoint", default="best", help="best | last | a checkpoint directory")
    p.add_argument("--quantization", default="float32",
                   choices=["float32", "bfloat16", "int8", "int8_float32", "int8_bfloat16"])
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    p.set_defaults(fn=cmd_export)


def _add_analysis_commands(sub) -> None:
    """diagnose, explain, quickstart."""
    p = sub.add_parser("diagnose", help="exposure-bias report of a run (or --compare runs)")
    p.add_argument("run", nargs="?")
    p.add_argument("--compare", nargs="+", metavar="RUN", help="several runs on the same plots")
    p.add_argument("--out", help="with --compare: folder of the combined report")
    p.add_argument("--split", default="test2016")
    p.add_argument("--max-sentences", type=int, help="a fixed random subsample of the split")
    p.add_argument("--beams", metavar="1,4,10,50", type=lambda s: [int(b) for b in s.split(",")],
                   help="beam sizes of the sweep (default 1,4,10,50; --protocol: 1,5,10,50,100)")
    p.add_argument("--sweep-sentences", type=int, help="beam sweep on the first N only")
    p.add_argument("--length-grid", action="store_true",
                   help="choose GNMT's length penalty and a minimum length ratio on the valid "
                   "split (grid of docs/protocols/powered_comparison.md section 3), then score "
                   "the default and the chosen settings on --split")
    p.add_argument("--protocol", action="store_true",
                   help="the protocol's section 3: --beams 1,5,10,50,100 --length-grid")
    p.add_argument("--checkpoint", default="best")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.set_defaults(fn=cmd_diagnose)
    p = sub.add_parser("explain", help="the notes' Transformer claims as experiments")
    p.add_argument("claims", nargs="*",
                   help="claim names (default: all; see gapless.analysis.explain)")
    p.add_argument("--run", help="a trained run for the claims about trained models")
    p.add_argument("--out", help="output folder (default: RUN/explain, else docs/explain)")
    p.add_argument("--quick", action="store_true", help="fewer samples and updates")
    p.set_defaults(fn=cmd_explain)
    p = sub.add_parser("quickstart", help="train a small model, evaluate, translate")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--run-dir")
    p.set_defaults(fn=cmd_quickstart)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gapless", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (a bug report wants it)")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run_commands(sub)
    _add_model_commands(sub)
    _add_analysis_commands(sub)
    _add_serve_args(sub.add_parser("serve", help="HTTP translation server and web page"))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if rest and args.command not in ("prepare", "train", "quickstart"):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return args.fn(args, rest)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("gapless: interrupted", file=sys.stderr)
        return 130
    except (ConfigError, CorpusError, FileNotFoundError, CheckpointError, RunLocked,
            NonFiniteLoss) as exc:
        if args.debug:
            raise
        print(f"gapless: error: {exc}", file=sys.stderr)
        return 2
