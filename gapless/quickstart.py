"""``gapless quickstart``: train a small model for a few minutes, score it, translate examples.

Corpus: Multi30k De->En when its files are found locally (``data.data_dir``, ``$GAPLESS_DATA``,
``../shared/data``, the download cache) or can be downloaded; otherwise the generated
``synthetic`` corpus (gapless.corpora), which needs neither data nor internet. The choice and its
reason are printed first. ``--data.corpus NAME`` (an override) skips the choice.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import textwrap
from pathlib import Path

from . import config as config_mod
from . import corpora
from .config import Config, ConfigError
from .data import CorpusError

# the presets (gapless/presets/) the quickstart trains, per corpus; test2016 only
PRESETS = {"multi30k": "multi30k_de_en", "synthetic": "quickstart_synthetic"}
QUICKSTART = {"name": "quickstart", "data.test_splits": ["test2016"]}

MULTI30K_EXAMPLES = [
    "Ein Hund läuft durch den Schnee.",
    "Zwei Männer spielen Fußball auf einer Wiese.",
    "Eine Frau mit einem roten Hut sitzt auf einer Bank.",
]

NEEDED_SPLITS = ("train", "valid", "test2016")
MARKER = "quickstart.json"  # marks a run directory as the quickstart's own (safe to replace)


def _say(text: str = "") -> None:
    print(text, flush=True)


def _banner(text: str, width: int = 100) -> None:
    lines = [
        w
        for s in text.splitlines()
        for w in textwrap.wrap(s, width, subsequent_indent="       ") or [""]
    ]
    rule = "=" * max(len(s) for s in lines)
    _say("\n".join(["", rule, *lines, rule]))


def _explicit_corpus(overrides) -> str | None:
    """The value of a ``data.corpus`` override, if one is given."""
    problems: list[str] = []
    pairs = config_mod._parse_overrides(overrides, problems)  # errors surface in from_dict
    found = [v for k, v in pairs if k == "data.corpus"]
    return str(found[-1]) if found else None


def choose_corpus(data_dir: str | None = None, download: bool = True) -> tuple[str, str]:
    """("multi30k" | "synthetic", reason). Tries a download only when Multi30k is not local."""
    if all(corpora.corpus_available("multi30k", s, "de", "en", data_dir) for s in NEEDED_SPLITS):
        path, _ = corpora.split_paths("multi30k", "train", "de", "en", data_dir, download=False)
        return "multi30k", f"Multi30k found at {path.parent}"
    looked = ", ".join(str(d / "multi30k") for d in corpora.data_dirs(data_dir))
    if not download:
        return "synthetic", f"Multi30k not found (looked in {looked}); downloads are off"
    _say(
        f"Multi30k not found locally (looked in {looked}); trying to download it into "
        f"{corpora.cache_dir() / 'multi30k'} ..."
    )
    try:
        for split in NEEDED_SPLITS:
            corpora.split_paths("multi30k", split, "de", "en", data_dir, download=True)
    except CorpusError as exc:
        return "synthetic", (
            f"Multi30k is neither local (looked in {looked}) nor downloadable ({exc})"
        )
    return "multi30k", f"Multi30k downloaded into {corpora.cache_dir() / 'multi30k'}"


def build_config(corpus: str, minutes: float, overrides=None) -> Config:
    """The quickstart config for ``corpus`` with ``train.max_minutes = minutes``, then overrides."""
    preset = PRESETS.get(corpus, PRESETS["multi30k"])
    fixed = {**QUICKSTART, "data.corpus": corpus, "train.max_minutes": float(minutes)}
    cfg = config_mod.load_preset(preset, fixed)  # then the user's overrides on top
    return config_mod.from_dict(config_mod.to_dict(cfg), overrides)


def _prepare_run_dir(run_dir: Path) -> None:
    """Start fresh: replace an earlier quickstart run, never someone else's run directory."""
    if not run_dir.exists():
        return
    if (run_dir / MARKER).is_file():
        _say(f"replacing the earlier quickstart run in {run_dir}")
        shutil.rmtree(run_dir)
    elif any(run_dir.iterdir()):
        raise ConfigError(
            f"{run_dir} exists and is not a quickstart run directory: "
            "pass --run-dir with a new or empty directory"
        )


def _examples(corpus: str) -> tuple[list[str], list[str] | None]:
    if corpus == "synthetic":
        rng = random.Random(2024)  # new draws from the grammar (not the corpus seed)
        pairs = [corpora.synthetic_pair(rng) for _ in range(3)]
        return [p[0] for p in pairs], [p[1] for p in pairs]
    return list(MULTI30K_EXAMPLES), None


def _announce(cfg: Config, corpus: str, reason: str, run_dir: Path) -> None:
    """The banner: which corpus and why, the model, the budget."""
    what = {
        "multi30k": "Multi30k De->En (29,000 training pairs of image captions)",
        "synthetic": "the GENERATED 'synthetic' De->En corpus (a toy grammar, not real data: "
        "BLEU on it says nothing about real translation quality)",
    }.get(corpus, f"corpus {corpus!r}")
    m = cfg.model
    _banner(
        f"gapless quickstart: corpus = {what}\n"
        f"  why: {reason}\n"
        f"  model: Transformer {m.enc_layers}+{m.dec_layers} layers, d_model {m.d_model}, "
        f"{m.n_heads} heads, FFN {m.ffn_dim}; vocab {cfg.data.vocab_size}; "
        f"dtype {cfg.train.dtype}\n"
        f"  training for {cfg.train.max_minutes:g} minutes into {run_dir}"
    )


def _show_examples(corpus: str, run_dir: Path) -> tuple[list[str], list[str]]:
    """Translate the example sentences with beam 5 and print them."""
    from .inference import load

    sources, references = _examples(corpus)
    hyps = load(run_dir).translate(sources, beam=5)
    _say("\nexamples (beam 5):")
    for i, (src, hyp) in enumerate(zip(sources, hyps)):
        _say(f"  {src} -> {hyp}")
        if references is not None:
            _say(f"      (the grammar's translation: {references[i]})")
    return sources, hyps


def quickstart(minutes: float = 10, run_dir=None, overrides=None) -> dict:
    """Train for ``minutes`` on Multi30k De->En (or the generated corpus), evaluate test2016 with
    beam 5, translate three examples. Returns a summary dict (also written to quickstart.json)."""
    from .evaluate import evaluate
    from .training import train

    run_dir = Path(run_dir) if run_dir else Path("runs") / "quickstart"
    explicit = _explicit_corpus(overrides)
    probe = config_mod.from_dict(None, overrides)  # validates overrides before any work
    if explicit is not None:
        corpus, reason = explicit, "chosen with --data.corpus"
    else:
        corpus, reason = choose_corpus(probe.data.data_dir, probe.data.download)
    cfg = build_config(corpus, minutes, overrides)

    _prepare_run_dir(run_dir)  # before any work: refuses a directory that is not ours
    _announce(cfg, corpus, reason, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / MARKER).write_text(json.dumps({"corpus": corpus, "reason": reason}))

    state = train(cfg, run_dir)
    _say(
        f"\ntrained {state.update} updates in {state.elapsed_s / 60:.1f} min "
        f"(stopped: {state.stopped}); best valid BLEU {state.best_bleu:.2f} "
        f"at update {state.best_update}"
    )

    split = "test2016"
    _say(f"\nevaluating {split} with beam 5 ...")
    result = evaluate(run_dir, split, beam=5)
    _say(
        f"{split}: BLEU {result['bleu']:.2f}  chrF {result['chrf']:.2f}  "
        f"({result['sentences']} sentences, {result['sentences_per_second']} sent/s)"
    )
    _say(f"  {result['bleu_signature']}")
    _say(f"  hypotheses: {run_dir / 'eval' / (split + '.hyp')}")

    sources, hyps = _show_examples(corpus, run_dir)

    summary = {
        "corpus": corpus,
        "reason": reason,
        "run_dir": str(run_dir),
        "updates": state.update,
        "minutes": round(state.elapsed_s / 60, 2),
        "best_valid_bleu": state.best_bleu,
        split: {k: result[k] for k in ("bleu", "chrf", "bleu_signature", "sentences")},
        "examples": [{"source": s, "translation": h} for s, h in zip(sources, hyps)],
    }
    (run_dir / MARKER).write_text(json.dumps(summary, indent=1, ensure_ascii=False))
    _say(
        f"\nnext: gapless translate {run_dir} --beam 5 < input.de    "
        f"(or: from gapless import load; load({str(run_dir)!r}).translate([...]))"
        f"\nserve it (a web page and an HTTP API): gapless serve {run_dir} --port 8080"
    )
    sys.stdout.flush()
    return summary
