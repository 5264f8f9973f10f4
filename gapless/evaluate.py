"""Translate files and streams with a trained run, score against references, write hypotheses."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterable
from pathlib import Path

import torch

from . import config as config_mod
from .checkpoint import RunDir, atomic_write_text
from .config import Config, DataConfig, DecodeConfig
from .corpora import split_paths
from .data import EOS, Vocab, pad_sequences, read_lines, read_parallel, sentence_batches
from .decode import ModelStepper, beam_search, greedy_search, make_sampler
from .metrics import corpus_scores
from .model import Transformer
from .packing import pack_linears
from .runtime import tune_malloc


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device, dtype: str):
    """bf16 autocast (fp32 master weights) on CPU and GPU, or nothing for fp32."""
    if dtype == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def build_model(cfg: Config) -> Transformer:
    return Transformer(cfg.model)


class Translator:
    """A trained model + its SentencePiece model, ready to translate text."""

    def __init__(self, model: Transformer, vocab: Vocab, decode: DecodeConfig, device, dtype="fp32"):
        self.model = model.to(device).eval()
        self.vocab, self.decode_cfg, self.device = vocab, decode, device
        # bf16 on fp32 weights (validation during training): autocast; a model cast to bf16 by
        # ``load`` runs natively, without autocast re-casting every weight at every step
        weights_fp32 = next(model.parameters()).dtype == torch.float32
        self.dtype = dtype if weights_fp32 else "fp32"

    def translate_ids(
        self,
        src: list[list[int]],
        beam: int | None = None,
        len_penalty: float | None = None,
        max_len_a: float | None = None,
        max_len_b: int | None = None,
        min_len: int | None = None,
        batch_size: int | None = None,
        sampling: dict | None = None,
    ) -> list[list[int]]:
        """Token ids (without EOS) -> best hypothesis ids, in input order."""
        d = self.decode_cfg
        beam = d.beam if beam is None else beam
        lp = d.len_penalty if len_penalty is None else len_penalty
        a = d.max_len_a if max_len_a is None else max_len_a
        b = d.max_len_b if max_len_b is None else max_len_b
        min_len = d.min_len if min_len is None else min_len
        limit = self.model.cfg.max_positions - 1
        out: list[list[int] | None] = [None] * len(src)
        was_training = self.model.training
        self.model.eval()
        try:
            for idx in sentence_batches([len(s) for s in src], batch_size or d.batch_size):
                seqs = [src[i] for i in idx]
                src_t = pad_sequences(seqs, suffix=EOS).to(self.device)
                max_len = torch.tensor(
                    [min(int(a * (len(s) + 1) + b), limit) for s in seqs], device=self.device
                )
                with torch.no_grad(), autocast(self.device, self.dtype):
                    hyps = self._search(src_t, beam, max_len, min_len, lp, sampling)
                for i, h in zip(idx, hyps):
                    out[int(i)] = h
        finally:
            self.model.train(was_training)
        return out  # type: ignore[return-value]

    def _search(self, src, beam, max_len, min_len, lp, sampling):
        n = src.shape[0]
        if sampling is not None:
            stepper = ModelStepper(self.model, src)
            sampler = make_sampler(**sampling)
            hyps = greedy_search(stepper, n, max_len, min_len, sampler, device=self.device)
            return [h.tokens for h in hyps]
        if beam == 1:
            hyps = greedy_search(ModelStepper(self.model, src), n, max_len, min_len,
                                 device=self.device)
            return [h.tokens for h in hyps]
        stepper = ModelStepper(self.model, src, repeat=beam)
        nbest = beam_search(stepper, n, beam, max_len, min_len, lp, device=self.device)
        return [h[0].tokens if h else [] for h in nbest]

    def translate(self, lines: list[str], **kwargs) -> list[str]:
        """Raw sentences -> detokenised translations (same order)."""
        ids = self.translate_ids(self.vocab.encode(list(lines)), **kwargs)
        return self.vocab.decode(ids)

    def translate_stream(self, lines: Iterable[str], chunk: int = 1000, **kwargs):
        """Yield translations of a (possibly endless) line stream, ``chunk`` lines at a time."""
        buf: list[str] = []
        for line in lines:
            buf.append(line.rstrip("\n"))
            if len(buf) >= chunk:
                yield from self.translate(buf, **kwargs)
                buf = []
        if buf:
            yield from self.translate(buf, **kwargs)


def load(run_dir: str | Path, checkpoint: str = "best", device: str = "auto",
         dtype: str = "fp32", pack: bool = True) -> Translator:
    """``from gapless import load; load("runs/NAME").translate(["Ein Hund läuft."], beam=5)``.
    ``pack``: on CPU, linear weights prepacked for oneDNN once (``gapless/packing.py``)."""
    run = RunDir(run_dir)
    if not run.config.is_file():
        raise FileNotFoundError(f"{run.path}: not a run directory (no config.yaml)")
    cfg = config_mod.load(run.config)
    tune_malloc()  # inference: large freed tensors stay in the heap (gapless/runtime.py)
    model = build_model(cfg)
    run.load_weights(model, checkpoint)
    if dtype == "bf16":  # inference only: bf16 weights and activations, log-probs in fp32
        model = model.to(torch.bfloat16)
    device = resolve_device(device)
    if pack and device.type == "cpu":
        pack_linears(model)
    return Translator(model, Vocab(run.spm_model), cfg.decode, device, dtype)


def score_split(
    translator: Translator, data: DataConfig, split: str, **decode_kwargs
) -> tuple[dict, list[str]]:
    """Translate ``split`` of corpus ``data.corpus`` (or ``CORPUS:SPLIT``) and score it against
    the raw references: (result with BLEU, chrF, signatures and speed; hypotheses)."""
    corpus, _, name = split.rpartition(":")
    src_path, ref_path = split_paths(corpus or data.corpus, name, data.src_lang, data.tgt_lang,
                                     data.data_dir, data.download)
    src, ref = read_parallel(src_path, ref_path)
    start = time.perf_counter()
    hyps = translator.translate(src, **decode_kwargs)
    seconds = time.perf_counter() - start
    result = {
        "split": split,
        "source": str(src_path),
        "reference": str(ref_path),
        "sentences": len(src),
        "decode_seconds": round(seconds, 3),
        "sentences_per_second": round(len(src) / seconds, 2),
        **corpus_scores(hyps, ref).to_dict(),
    }
    return result, hyps


def evaluate(
    run_dir: str | Path, split: str, checkpoint: str = "best", device: str = "auto",
    dtype: str = "fp32", translator: Translator | None = None, **decode_kwargs,
) -> dict:
    """Translate a split of the run's corpus, score BLEU + chrF (with signatures) against the raw
    references, and write ``eval/<split>.hyp`` and ``eval/<split>.json``. ``split`` may name
    another corpus as ``CORPUS:SPLIT`` (e.g. ``multi30k:test2016`` for a model fine-tuned on
    another domain). ``translator``: an already loaded model (several splits, one load)."""
    run = RunDir(run_dir)
    translator = translator or load(run_dir, checkpoint, device, dtype)
    cfg = config_mod.load(run.config)
    result, hyps = score_split(translator, cfg.data, split, **decode_kwargs)
    result["decode"] = {**cfg.decode.__dict__, **decode_kwargs}
    name = result["split"] = split.replace(":", ".")  # the file name
    run.eval.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run.eval / f"{name}.hyp", "".join(h + "\n" for h in hyps))
    atomic_write_text(run.eval / f"{name}.json", json.dumps(result, indent=1))
    return result


def translate_file(translator: Translator, path: str | Path, **kwargs) -> list[str]:
    return translator.translate(read_lines(path), **kwargs)
