"""The search's own effect on output length (docs/protocols/powered_comparison.md section 3):
GNMT's length penalty and a minimum length ratio, each chosen on the **valid** split from a
fixed grid, then scored on the test split for the run's default and the chosen settings.

Choosing never sees the test split: ``length_grid`` decodes every grid cell on valid, fixes each
choice from the valid BLEU alone, and only then decodes the test split, for the default and the
chosen settings only. Each choice carries the valid figure that chose it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

GNMT_ALPHAS = (0.6, 0.8, 1.0, 1.2, 1.4)  # the protocol's len_penalty grid (GNMT alpha)
MIN_LEN_RATIOS = (0.0, 0.5, 0.7)  # the protocol's minimum length ratios

# (source lines, **decode settings) -> one output line per source line
Translate = Callable[..., list[str]]

CHOICES = {
    "len_penalty": "GNMT's length penalty alone: the alpha of the grid with the best valid "
    "BLEU, no minimum length",
    "min_len_ratio": "the minimum length ratio alone: the ratio of the grid with the best valid "
    "BLEU, under the run's own length normalisation",
    "joint": "both: the (alpha, ratio) cell of the GNMT grid with the best valid BLEU",
}


@dataclass(frozen=True)
class Split:
    """One split's source lines and raw references (the same order)."""

    name: str
    src: list[str]
    ref: list[str]


@dataclass(frozen=True)
class LengthGrid:
    """The grid the choices are made on: GNMT alphas and minimum length ratios."""

    alphas: Sequence[float] = GNMT_ALPHAS
    ratios: Sequence[float] = MIN_LEN_RATIOS

    def families(self, default: dict) -> dict[str, list[dict]]:
        """Each choice of ``CHOICES`` -> its candidate settings in tie-break order (a tie in
        valid BLEU goes to the first: the smaller alpha, the smaller ratio)."""
        def gnmt(alpha: float, ratio: float) -> dict:
            return {"len_norm": "gnmt", "len_penalty": alpha, "min_len_ratio": ratio}

        return {"len_penalty": [gnmt(a, 0.0) for a in self.alphas],
                "min_len_ratio": [{**default, "min_len_ratio": r} for r in self.ratios],
                "joint": [gnmt(a, r) for a in self.alphas for r in self.ratios]}


def setting_key(setting: dict) -> tuple:
    """A hashable identity of a length setting (len_norm, len_penalty, min_len_ratio)."""
    return (setting["len_norm"], float(setting["len_penalty"]), float(setting["min_len_ratio"]))


def label(setting: dict) -> str:
    """``gnmt alpha=0.6, min ratio 0.5``: a setting as the report names it."""
    return (f"{setting['len_norm']} alpha={setting['len_penalty']:g}, "
            f"min ratio {setting['min_len_ratio']:g}")


def score_lines(hyps: list[str], refs: list[str]) -> dict:
    """sacreBLEU corpus BLEU (the defaults of ``gapless.metrics``), length ratio
    (sys_len / ref_len) and brevity penalty of ``hyps`` against ``refs``."""
    from sacrebleu.metrics import BLEU

    b = BLEU().corpus_score(hyps, [refs])
    return {"bleu": round(b.score, 2), "length_ratio": round(b.sys_len / max(b.ref_len, 1), 4),
            "bp": round(b.bp, 4)}


def choose(candidates: list[dict], valid: dict[tuple, dict]) -> dict:
    """The candidate with the highest valid BLEU (``valid``: setting_key -> scores on the
    valid split, nothing else); the first of a tie."""
    best = max(range(len(candidates)),
               key=lambda i: (valid[setting_key(candidates[i])]["bleu"], -i))
    return candidates[best]


def _unique(settings: list[dict]) -> list[dict]:
    seen: dict[tuple, dict] = {}
    for s in settings:
        seen.setdefault(setting_key(s), s)
    return list(seen.values())


def _scores(translate: Translate, split: Split, settings: list[dict]) -> dict[tuple, dict]:
    """setting_key -> ``score_lines`` of ``split`` decoded with each setting."""
    return {setting_key(s): score_lines(translate(split.src, **s), split.ref) for s in settings}


def length_grid(translate: Translate, valid: Split, test: Split, default: dict,
                grid: LengthGrid = LengthGrid()) -> dict:
    """Decode ``valid`` with every cell of ``grid`` (and the run's ``default`` setting), choose
    each of ``CHOICES`` on the valid BLEU, then decode ``test`` with the default and the chosen
    settings only. Returns the table written to diagnose.json (``length_grid``)."""
    start = time.perf_counter()
    families = grid.families(default)
    cells = _unique([default] + [c for family in families.values() for c in family])
    on_valid = _scores(translate, valid, cells)
    chosen = {name: choose(family, on_valid) for name, family in families.items()}
    on_test = _scores(translate, test, _unique([default, *chosen.values()]))  # after choosing

    def row(choice: str, setting: dict) -> dict:
        key = setting_key(setting)
        return {"choice": choice, "setting": setting, "label": label(setting),
                "valid": on_valid[key], "test": on_test[key]}

    return {
        "valid_split": valid.name, "test_split": test.name,
        "valid_sentences": len(valid.src), "test_sentences": len(test.src),
        "alphas": list(grid.alphas), "ratios": list(grid.ratios),
        "chosen_by": "the highest valid BLEU (ties: the first in grid order)",
        "cells": [{"setting": c, "label": label(c), **on_valid[setting_key(c)]} for c in cells],
        "choices": [row("default", default)] + [row(n, s) for n, s in chosen.items()],
        "seconds": round(time.perf_counter() - start, 1),
    }


# ----------------------------------------------------------------------------------------------
# report tables (rendered by gapless.analysis.report)


def choice_rows(named: list[tuple[str, dict]]) -> list[list]:
    """One row per run and choice: the setting, the valid figures that chose it, the test
    figures. ``named``: (run label, its ``length_grid`` result)."""
    return [[name, c["choice"], c["label"], c["valid"]["bleu"],
             f"{c['valid']['length_ratio']:.3f}", c["test"]["bleu"],
             f"{c['test']['length_ratio']:.3f}", f"{c['test']['bp']:.3f}"]
            for name, grid in named for c in grid["choices"]]


def cell_rows(named: list[tuple[str, dict]]) -> tuple[list[str], list[list]]:
    """The valid grid side by side: one row per setting, one "BLEU (length ratio)" column per
    run. Returns (header, rows)."""
    labels: list[str] = []
    per_run = []
    for _, grid in named:
        cells = {c["label"]: c for c in grid["cells"]}
        labels += [lab for lab in cells if lab not in labels]
        per_run.append(cells)
    rows = [[lab] + [f"{c[lab]['bleu']:.2f} ({c[lab]['length_ratio']:.3f})" if lab in c
                     else None for c in per_run] for lab in labels]
    return ["setting (valid)"] + [name for name, _ in named], rows
