"""The GPU training and decoding path measured alone; prints one JSON document.

Training: Transformer-base (d_model 512, 8 heads, FFN 2048, 6+6) and Transformer-big (1024,
16, 4096, 6+6) of Vaswani et al., joint 32k vocabulary, all embeddings tied, on synthetic
Multi30k-sized batches (random ids, sentence lengths drawn like Multi30k's, length-bucketed by
``gapless.data.token_batches``) of 8k and 25k tokens, bf16 autocast, eager and
``train.compile``. Each step is the trainer's: host batch pinned and copied without blocking
(``gapless.training.fastpath``), source padding checked on the host, ``Criterion`` under
autocast, backward of the per-token loss, fused Adam. Per row: target tokens/s, model FLOPs
utilisation and peak memory.

MFU = counted FLOPs per target token x target tokens/s / the device's bf16 dense peak. The FLOPs
are the matrix products of forward + backward (``torch.utils.flop_counter.FlopCounterMode``,
attention included, causal counted in full) counted once on every batch of the timed cycle
with the eager step; the timed steps go round that cycle, so the ratio holds exactly. The peak
comes from ``PEAK_TFLOPS`` by device name, or ``--peak-tflops``.

Decoding: beam 5 with the base model's random weights cast to bf16, ``min_len = max_len``
(``fixed30``, as the peers' protocol) so every sentence costs the same, batches of 64 and 256
sentences, through ``gapless.inference.Translator.translate_ids``.

    python -m benchmarks.gpu_speed > gpu_speed.json           # on a GPU (benchmarks/gpu_speed.sh)
    python -m benchmarks.gpu_speed --dry-run --peak-tflops 1  # seconds on a CPU, tiny sizes
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import emit, finish, machine, peak_rss_mb, say
from gapless.config import DecodeConfig, ModelConfig, StrategyConfig, TrainConfig
from gapless.data import BOS, EOS, PAD, Batch, pad_sequences, token_batches
from gapless.inference import Translator
from gapless.model import Transformer, count_parameters
from gapless.runtime import autocast
from gapless.strategies import Progress, TeacherForcing
from gapless.training.criterion import Criterion
from gapless.training.fastpath import compile_step, src_padded, to_device
from gapless.training.optim import build_optimizer

# bf16 dense tensor-core peak, TFLOP/s (vendor datasheets, without sparsity); the first name
# contained in torch.cuda.get_device_name() wins, so the more specific names come first
PEAK_TFLOPS = {
    "GH200": 989, "H200": 989, "H100 PCIe": 756, "H100 NVL": 835, "H100": 989, "H800": 989,
    "B200": 2250, "A100": 312, "A800": 312, "L40S": 362, "L40": 181, "L4": 121, "A10G": 70,
    "A10": 125, "RTX 4090": 165, "RTX 3090": 71, "A6000": 155, "V100": None, "T4": None,
}
SIZES = {
    "base": {"d_model": 512, "n_heads": 8, "ffn_dim": 2048, "enc_layers": 6, "dec_layers": 6},
    "big": {"d_model": 1024, "n_heads": 16, "ffn_dim": 4096, "enc_layers": 6, "dec_layers": 6},
    "dry": {"d_model": 32, "n_heads": 2, "ffn_dim": 64, "enc_layers": 1, "dec_layers": 1},
}
# Multi30k De->En pieces per sentence under a joint subword vocabulary: log-normal lengths
# (median and spread of the source), the target a noisy multiple of the source
LENGTHS = {"src_median": 13.0, "src_sigma": 0.35, "tgt_ratio_low": 0.8, "tgt_ratio_high": 1.2,
           "min": 3, "max": 60}
DRY = {"device": "cpu", "dtype": "fp32", "sizes": "dry", "tokens": "300,600", "compile": "off",
       "vocab": 256, "cycle": 2, "steps": 2, "decode_batches": "4,8", "decode_len": 5,
       "decode_sentences": 16, "threads": 1}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true",
                   help="CPU, d_model 32, fp32, a few steps: checks the script, measures nothing")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"))
    p.add_argument("--sizes", default="base,big", help=f"comma-separated: {','.join(SIZES)}")
    p.add_argument("--tokens", default="8000,25000", help="batch sizes, train.max_tokens")
    p.add_argument("--compile", default="off,on", help="off,on: eager and train.compile")
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--cycle", type=int, default=8, help="distinct batches the steps go round")
    p.add_argument("--steps", type=int, default=40, help="timed steps (after one warm-up cycle)")
    p.add_argument("--decode-batches", default="64,256", help="sentences per search batch")
    p.add_argument("--decode-len", type=int, default=30, help="min = max output pieces")
    p.add_argument("--decode-sentences", type=int, default=1024)
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's bf16 dense peak (default: PEAK_TFLOPS by device name)")
    p.add_argument("--budget-s", type=float, default=480,
                   help="start no further row after this many seconds (rows left: skipped)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default="", help="also write the JSON here, after every row")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    if p.parse_known_args(argv)[0].dry_run:  # its sizes, except where given on the command line
        p.set_defaults(**DRY)
    return p.parse_args(argv)


def device_peak(device: torch.device, given: float | None) -> tuple[float | None, str]:
    """(bf16 dense peak TFLOP/s, where it came from)."""
    if given is not None:
        return given, "--peak-tflops"
    if device.type != "cuda":
        return None, "unknown: not a CUDA device (give --peak-tflops)"
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_TFLOPS.items():
        if key in name:
            return tflops, f"PEAK_TFLOPS[{key!r}] ({name})"
    return None, f"unknown device {name!r} (give --peak-tflops)"


# -- synthetic data -------------------------------------------------------------------------


def sentence_lengths(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(source, target) pieces per sentence, without EOS / BOS (``LENGTHS``)."""
    c = LENGTHS
    src = np.exp(rng.normal(np.log(c["src_median"]), c["src_sigma"], n))
    tgt = src * rng.uniform(c["tgt_ratio_low"], c["tgt_ratio_high"], n)
    return (np.clip(np.rint(src), c["min"], c["max"]).astype(np.int64),
            np.clip(np.rint(tgt), c["min"], c["max"]).astype(np.int64))


def synthetic_batches(max_tokens: int, count: int, vocab: int, seed: int) -> list[Batch]:
    """``count`` length-bucketed host batches of random ids under ``max_tokens``, drawn from
    the whole length range (token_batches shuffles the batch order)."""
    rng = np.random.default_rng(seed)
    n = max(4 * count * max_tokens // 12, 64)  # sentences enough for ``count`` full batches
    src_lens, tgt_lens = sentence_lengths(n, rng)
    out = []
    full = [idx for idx in token_batches(src_lens, tgt_lens, max_tokens, seed, 1)
            if len(idx) * (max(src_lens[idx].max(), tgt_lens[idx].max()) + 1) > max_tokens // 2]
    for idx in full[:count]:  # not the last, part-filled batch of a length
        src = [rng.integers(4, vocab, src_lens[i]) for i in idx]
        tgt = [rng.integers(4, vocab, tgt_lens[i]) for i in idx]
        out.append(Batch(pad_sequences(src, suffix=EOS), pad_sequences(tgt, prefix=BOS),
                         pad_sequences(tgt, suffix=EOS), torch.as_tensor(idx)))
    return out


def target_tokens(batch: Batch) -> int:
    return int(batch.tgt_out.ne(PAD).sum())


# -- training -------------------------------------------------------------------------------


@dataclasses.dataclass
class Setup:
    """One model size on the device: its model, fused Adam, and the settings of the run."""

    name: str
    model: Transformer
    optimizer: torch.optim.Optimizer
    device: torch.device
    dtype: str
    steps: dict = dataclasses.field(default_factory=dict)  # compiled? -> its step module

    def step(self, compiled: bool):
        """The training step module, one per mode: compiled once, reused for every batch
        size (its shapes are dynamic)."""
        if compiled not in self.steps:
            self.steps[compiled] = compile_step(criterion(self), compiled)
        return self.steps[compiled]


def build(name: str, args, device: torch.device) -> Setup:
    torch.manual_seed(args.seed)
    cfg = ModelConfig(**SIZES[name], vocab_size=args.vocab, max_positions=256)
    model = Transformer(cfg).to(device).train()
    optimizer = build_optimizer(model, TrainConfig(lr=1e-4))  # fused where the device has it
    return Setup(name, model, optimizer, device, args.dtype)


def criterion(setup: Setup) -> Criterion:
    return Criterion(setup.model, TeacherForcing(StrategyConfig()), 0.1)


def train_step(setup: Setup, step, batch: Batch, tokens: int) -> None:
    """The trainer's step on one host batch (``Trainer.train_update`` without its records)."""
    padded = src_padded(batch)
    batch = to_device(batch, setup.device)
    with autocast(setup.device, setup.dtype):
        loss, _, _ = step(batch, Progress(0, 1), padded)
    (loss / tokens).backward()
    setup.optimizer.step()
    setup.optimizer.zero_grad(set_to_none=True)


def counted_flops(setup: Setup, batches: list[Batch]) -> list[int]:
    """Matrix-product FLOPs of forward + backward of the eager step, per batch."""
    from torch.utils.flop_counter import FlopCounterMode

    step, out = criterion(setup), []
    for batch in batches:
        padded, moved = src_padded(batch), to_device(batch, setup.device)
        with FlopCounterMode(display=False) as counter:
            with autocast(setup.device, setup.dtype):
                loss, _, _ = step(moved, Progress(0, 1), padded)
            loss.backward()
        setup.optimizer.zero_grad(set_to_none=True)
        out.append(int(counter.get_total_flops()))
    return out


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)}
    return {"peak_memory_gib": None, "peak_rss_mb": peak_rss_mb()}


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def measure_training(setup: Setup, max_tokens: int, compiled: bool, args, peak) -> dict:
    """One row: a warm-up cycle (compilation included), then ``args.steps`` timed steps."""
    batches = synthetic_batches(max_tokens, args.cycle, args.vocab, args.seed)
    tokens = [target_tokens(b) for b in batches]
    flops = counted_flops(setup, batches)
    step = setup.step(compiled)
    reset_peak(setup.device)
    start = time.perf_counter()
    for batch, n in zip(batches, tokens):
        train_step(setup, step, batch, n)
    synchronize(setup.device)
    warmup_s = time.perf_counter() - start
    order = [i % len(batches) for i in range(args.steps)]
    start = time.perf_counter()
    for i in order:
        train_step(setup, step, batches[i], tokens[i])
    synchronize(setup.device)
    seconds = time.perf_counter() - start
    timed_tokens = sum(tokens[i] for i in order)
    flop_per_token = sum(flops) / sum(tokens)
    tok_s = timed_tokens / seconds
    achieved = flop_per_token * tok_s / 1e12
    return {"model": setup.name, "max_tokens": max_tokens, "compile": compiled,
            "dtype": setup.dtype, "parameters": count_parameters(setup.model),
            "batches_in_cycle": len(batches), "steps": args.steps,
            "sentences_per_step": round(sum(len(b.index) for b in batches) / len(batches), 1),
            "tgt_tokens_per_step": round(sum(tokens) / len(tokens), 1),
            "tgt_tokens_per_s": round(tok_s, 1), "s_per_step": round(seconds / args.steps, 5),
            "warmup_s": round(warmup_s, 2),
            "gflop_per_step": round(sum(flops) / len(flops) / 1e9, 3),
            "flop_per_tgt_token": round(flop_per_token), "cycle_flops": flops,
            "cycle_tgt_tokens": tokens, "achieved_tflops": float(f"{achieved:.4g}"),
            "mfu": None if not peak else float(f"{achieved / peak:.4g}"),
            **peak_memory(setup.device)}


def fused_kernels(setup: Setup, args) -> dict | None:
    """Whether a training step's attention runs on the fused kernels alone: with a source
    without padding, on the flash kernel only; with padding, without the math fallback. None
    off CUDA."""
    if setup.device.type != "cuda":
        return None
    from torch.nn.attention import SDPBackend, sdpa_kernel

    fused = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
             SDPBackend.CUDNN_ATTENTION]
    batch = synthetic_batches(2000, 1, args.vocab, args.seed)[0]
    dense = dataclasses.replace(batch, src=torch.randint(4, args.vocab, batch.src.shape))
    out = {}
    for name, sample, backends in (("dense_source_flash_only", dense, [fused[0]]),
                                   ("padded_source_fused_only", batch, fused)):
        try:
            with sdpa_kernel(backends):
                train_step(setup, criterion(setup), sample, target_tokens(sample))
            out[name] = True
        except RuntimeError as exc:
            out[name] = f"no: {str(exc).splitlines()[0][:200]}"
    return out


# -- decoding -------------------------------------------------------------------------------


def measure_decoding(setup: Setup, batch_size: int, args) -> dict:
    """Beam 5, ``args.decode_len`` pieces per sentence, the model's weights in the run's
    dtype (as ``gapless.load(dtype=...)``), one untimed batch first."""
    rng = np.random.default_rng(args.seed)
    src_lens, _ = sentence_lengths(args.decode_sentences, rng)
    src = [rng.integers(4, args.vocab, n).tolist() for n in src_lens]
    model = setup.model
    if setup.dtype == "bf16":
        model = Transformer(model.cfg).to(setup.device, torch.bfloat16)
        model.load_state_dict(setup.model.state_dict())
    translator = Translator(model, None, DecodeConfig(), setup.device, setup.dtype)
    fixed = {"beam": 5, "batch_size": batch_size, "min_len": args.decode_len,
             "max_len_a": 0.0, "max_len_b": args.decode_len}
    translator.translate_ids(src[:batch_size], **fixed)
    reset_peak(setup.device)
    synchronize(setup.device)
    start = time.perf_counter()
    hyps = translator.translate_ids(src, **fixed)
    synchronize(setup.device)
    seconds = time.perf_counter() - start
    setup.model.train()
    return {"model": setup.name, "beam": 5, "batch_size": batch_size, "sentences": len(src),
            "pieces_per_sentence": round(sum(map(len, hyps)) / len(hyps), 2),
            "seconds": round(seconds, 3), "sentences_per_s": round(len(src) / seconds, 1),
            "dtype": setup.dtype, **peak_memory(setup.device)}


# -- the run --------------------------------------------------------------------------------


def save(doc: dict, args, complete: bool) -> None:
    """The document so far into ``--out`` (replaced whole), so a call cut short by its time
    limit still returns the rows it finished."""
    if args.out:
        doc["complete"] = complete
        partial = Path(args.out + ".partial")
        partial.write_text(json.dumps(doc, indent=1) + "\n")
        partial.replace(args.out)


def guarded(doc: dict, key: str, label: dict, measure, start: float, args) -> None:
    """Append ``measure()``'s row to ``doc[key]``, or why there is none: past ``--budget-s``,
    or its error; then save the document."""
    rows = doc[key]
    if time.perf_counter() - start > args.budget_s:
        rows.append({**label, "skipped": f"past --budget-s {args.budget_s:g}"})
        return
    say("gpu_speed", f"{label} ...")
    try:
        rows.append(measure())
    except Exception as exc:  # noqa: BLE001 - one failed row must not lose the others
        rows.append({**label, "error": f"{type(exc).__name__}: {str(exc)[:500]}"})
    say("gpu_speed", f"{rows[-1]}")
    save(doc, args, False)


def run(args) -> dict:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    peak, peak_source = device_peak(device, args.peak_tflops)
    start = time.perf_counter()
    setups = {name: build(name, args, device) for name in args.sizes.split(",")}
    doc = {"benchmark": "gpu_speed", "dry_run": args.dry_run,
           "machine": machine(torch.get_num_threads()), "device": str(device),
           "peak_tflops_bf16_dense": peak, "peak_source": peak_source,
           "protocol": {"sizes": {n: SIZES[n] for n in setups}, "vocab": args.vocab,
                        "tied_embeddings": True, "lengths": LENGTHS, "dtype": args.dtype,
                        "cycle": args.cycle, "steps": args.steps,
                        "flops": "FlopCounterMode, eager forward + backward, every cycle batch"},
           "fused_kernels": fused_kernels(next(iter(setups.values())), args),
           "train": [], "decode": []}
    for compiled in [m == "on" for m in args.compile.split(",")]:
        for name, setup in setups.items():
            for max_tokens in map(int, args.tokens.split(",")):
                label = {"model": name, "max_tokens": max_tokens, "compile": compiled}
                guarded(doc, "train", label, lambda s=setup, m=max_tokens, c=compiled:
                        measure_training(s, m, c, args, peak), start, args)
        if not compiled:  # decoding after the eager rows, before any compilation
            base = setups.get("base", next(iter(setups.values())))
            for size in map(int, args.decode_batches.split(",")):
                guarded(doc, "decode", {"model": base.name, "batch_size": size},
                        lambda b=base, n=size: measure_decoding(b, n, args), start, args)
    doc["elapsed_s"] = round(time.perf_counter() - start, 1)
    finish(doc)
    save(doc, args, True)
    return doc


def main(argv=None) -> None:
    emit(run(parse_args(argv)))


if __name__ == "__main__":
    main()
