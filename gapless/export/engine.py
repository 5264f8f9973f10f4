"""An exported CTranslate2 model behind the ``gapless.inference.Engine`` protocol, and
``load_engine``, which opens a run (gapless's own search) or an exported directory.

The decode settings map onto ``ctranslate2.Translator.translate_batch`` so that both engines
run the same search (fairseq's): the beam ranks finished hypotheses by log-prob / (n + 1) **
``len_penalty`` with EOS counted (``return_end_token``; EOS is stripped here), continues with
the best ``beam`` non-EOS of the best 2 x beam extensions, and stops a sentence at ``beam``
finished hypotheses (``patience`` 1); batches are gapless's (``batch_size`` sentences of
similar length); ``max_len_a``/``max_len_b`` give each sentence its own limit (CTranslate2
takes one per call: the batch's largest, each hypothesis is cut to its own); ``min_len``
forbids EOS before that many tokens; the source gets EOS; decoding starts from ``<s>``.

What still differs (tests/test_export.py checks equal ids where none of it applies):

* CTranslate2 masks tokens before its log-softmax, gapless after. So greedy search and
  sampling mask ``<pad>``/``<s>`` (the same argmax and sampling distribution, the greedy score
  renormalised), and beam search leaves them to the model (masking would renormalise every
  step and change the ranking): a beam may then keep ``<pad>``/``<s>`` where gapless never
  does (text drops them). EOS masked before ``min_len`` renormalises those first steps.
* at the length limit gapless forces EOS; CTranslate2 decodes on (to the batch's largest
  limit, plus one step) and the hypothesis is cut back to the limit. Greedy keeps the same
  tokens (not the score); a beam that reaches the limit may end differently.
* a step that finishes more hypotheses than the beam still needs: gapless keeps the best of
  them up to ``beam`` (fairseq), CTranslate2 ranks all of them.
* ``len_penalty`` 0: CTranslate2 stops a sentence once its top beam ends (the same best
  hypothesis; the rest of an n-best list may differ).
* an empty source line: CTranslate2 returns an empty translation without decoding; a source
  longer than ``max_positions`` is truncated (gapless refuses it).
"""

from __future__ import annotations

from pathlib import Path

from .. import config as config_mod
from ..config import DecodeConfig
from ..data import BOS, EOS, PAD, Vocab, sentence_batches
from ..decode import Hypothesis
from ..inference import TextEngine, length_limits, load
from .convert import ExportError, require_ctranslate2
from .directory import is_export_dir, read_info

ENGINES = ("auto", "gapless", "ctranslate2")


def _device(ct2, device: str) -> str:
    if device == "auto":
        return "cuda" if ct2.get_cuda_device_count() > 0 else "cpu"
    return device


class CTranslate2Engine(TextEngine):
    """An exported directory (``gapless export``) run by ``ctranslate2.Translator``, with the
    run's SentencePiece model and decode settings."""

    name = "ctranslate2"

    def __init__(self, path: str | Path, device: str = "auto", compute_type: str = "default",
                 threads: int = 0, inter_threads: int = 1):
        ct2 = require_ctranslate2()
        self.path = Path(path)
        if not is_export_dir(self.path):
            raise FileNotFoundError(f"{self.path}: not an exported CTranslate2 model "
                                    "(model.bin + gapless_export.json; see gapless export)")
        self.info = read_info(self.path)
        self.cfg = config_mod.from_dict(self.info["config"])
        self.decode_cfg = self.cfg.decode
        self.vocab = Vocab(self.path / "spm.model")
        self.pieces = [self.vocab.sp.id_to_piece(i) for i in range(len(self.vocab))]
        self.ids = {p: i for i, p in enumerate(self.pieces)}
        self.inter_threads, self.intra_threads = max(int(inter_threads), 1), threads
        self.translator = ct2.Translator(str(self.path), device=_device(ct2, device),
                                         compute_type=compute_type,
                                         inter_threads=self.inter_threads,
                                         intra_threads=threads)

    @property
    def max_source_tokens(self) -> int:
        return self.cfg.model.max_positions - 1

    def _options(self, settings: DecodeConfig, sampling: dict | None) -> dict:
        """``translate_batch`` keywords for ``settings`` (all but the length limit)."""
        beam = 1 if sampling is not None else max(settings.beam, 1)
        options = {"beam_size": beam, "patience": 1.0, "return_scores": True,
                   "return_end_token": True, "min_decoding_length": settings.min_len,
                   "max_input_length": self.cfg.model.max_positions,
                   # greedy: the score is the mean log-prob per token, EOS included
                   "length_penalty": settings.len_penalty if beam > 1 else 1.0,
                   "num_hypotheses": min(max(settings.nbest, 1), beam)}
        if beam == 1:  # the same argmax / sampling distribution with the tokens masked
            options["suppress_sequences"] = [[self.pieces[PAD]], [self.pieces[BOS]]]
        if sampling is not None:
            options.update(sampling_temperature=sampling.get("temperature", 1.0),
                           sampling_topk=sampling.get("top_k", 0),
                           sampling_topp=sampling.get("top_p", 1.0))
        return options

    def _hypothesis(self, tokens: list[str], score: float, limit: int, lp: float) -> Hypothesis:
        ids = [self.ids[t] for t in tokens]
        length = len(ids)  # what CTranslate2 normalised by
        if ids and ids[-1] == EOS:
            ids = ids[:-1]
        del ids[limit:]  # the step past the limit (where gapless forces EOS)
        return Hypothesis(ids, score, score * max(length, 1) ** lp)

    def translate_nbest(self, src: list[list[int]], sampling: dict | None = None,
                        **overrides) -> list[list[Hypothesis]]:
        """Token ids (without EOS) -> each sentence's ``nbest`` hypotheses, best first."""
        settings = self.settings(**overrides)
        options = self._options(settings, sampling)
        limits = length_limits([len(s) for s in src], settings, self.cfg.model.max_positions)
        out: list[list[Hypothesis]] = [[] for _ in src]
        # with several workers (inter_threads) every batch is queued at once and the workers
        # take them in turn; their results come back in input order either way
        queued = self.inter_threads > 1
        calls = []
        for index in sentence_batches([len(s) for s in src], settings.batch_size):
            batch = [[self.pieces[t] for t in src[i]] for i in index]
            longest = max(limits[i] for i in index)  # one limit per call: each is cut to its own
            calls.append((index, self.translator.translate_batch(
                batch, max_decoding_length=longest + 1, asynchronous=queued, **options)))
        for index, results in calls:
            for i, res in zip(index, results):
                res = res.result() if queued else res
                out[i] = [self._hypothesis(h, s, limits[i], options["length_penalty"])
                          for h, s in zip(res.hypotheses, res.scores)]
        return out

    def describe(self) -> dict:
        t = self.translator
        return {"engine": self.name, "device": t.device, "dtype": t.compute_type,
                "inter_threads": t.num_translators, "intra_threads": self.intra_threads,
                "quantization": self.info.get("quantization"), "export": str(self.path),
                "run": self.info.get("run"), "name": self.cfg.name,
                "checkpoint": self.info.get("checkpoint"), "config": self.info["config"]}


def load_engine(path: str | Path, engine: str = "auto", checkpoint: str = "best",
                device: str = "auto", dtype: str = "fp32", threads: int = 0):
    """A loaded model behind the Engine protocol: ``gapless.inference.load`` for a run, a
    ``CTranslate2Engine`` for an exported directory (``engine="auto"`` tells them apart).
    ``dtype`` bf16 asks CTranslate2 for bfloat16 compute; fp32 keeps the exported type."""
    if engine not in ENGINES:
        raise ExportError(f"engine {engine!r} is not one of {', '.join(ENGINES)}")
    exported = is_export_dir(path)
    if engine == "gapless" and exported:
        raise ExportError(f"{path} is an exported CTranslate2 model: use --engine ctranslate2")
    if engine == "gapless" or (engine == "auto" and not exported):
        return load(path, checkpoint, device, dtype)
    compute_type = "bfloat16" if dtype == "bf16" else "default"
    return CTranslate2Engine(path, device, compute_type, threads)


def engine_config(engine) -> config_mod.Config:
    """The run config behind a loaded engine (its ``describe()``)."""
    return config_mod.from_dict(engine.describe()["config"])


