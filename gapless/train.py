"""``gapless train``: one flat loop. batches -> strategy -> model -> loss -> step.

Written for ``torchrun`` from the start: an *update group* is ``accum x world`` micro-batches
drawn in a fixed order from (seed, epoch); rank r takes micro-batches r, r+world, ...; the loss
is normalised by the target tokens of the whole group, so 2 ranks x 1 micro-batch give the same
update as 1 rank x 2 micro-batches. Only rank 0 writes. Checkpoints hold the position in the
epoch, the RNG states and the optimizer, so a killed run resumes to the same result.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from . import config as config_mod
from .checkpoint import RunDir
from .config import Config
from .data import PAD, collate, token_batches
from .inference import Translator
from .model import Transformer
from .runtime import autocast, resolve_device
from .metrics import corpus_scores
from .prepare import prepare
from .runtime import release_free_memory
from .strategies import Progress, Strategy, TeacherForcing, build_strategy

log = logging.getLogger(__name__)


class _SmoothedCE(torch.autograd.Function):
    """Label-smoothed cross-entropy with a hand-written backward: one log-softmax pass in the
    logits' dtype, reused in place for the gradient (on CPU autograd's log_softmax + gather +
    mean graph cost ~7x more, measured in /tmp/ce2.py-style micro-benchmarks).
    loss_i = (1-eps) * -lsm_i[y_i] + eps * -mean_v lsm_i[v]   (Szegedy et al. 2016)
    d loss_i / d x_i = softmax(x_i) - (1-eps) * onehot(y_i) - eps / V.
    The saved log-softmax is overwritten by the backward: call backward once."""

    @staticmethod
    def forward(ctx, logits, target, eps):
        lsm = torch.log_softmax(logits, dim=-1)  # [N,V], logits' dtype (bf16 under autocast)
        nll = -lsm.gather(1, target[:, None]).squeeze(1).float()
        ones = torch.ones(lsm.shape[-1], 1, dtype=lsm.dtype, device=lsm.device)
        smooth = -(lsm @ ones).squeeze(1).float() / lsm.shape[-1]  # mean via GEMV: fast on CPU
        ctx.save_for_backward(lsm, target)
        ctx.eps = eps
        return ((1 - eps) * nll + eps * smooth).sum(), nll.sum()

    @staticmethod
    def backward(ctx, grad_loss, grad_nll):
        lsm, target = ctx.saved_tensors
        grad = lsm.exp_()  # softmax, in place
        grad.sub_(ctx.eps / lsm.shape[-1])
        rows = torch.arange(len(target), device=target.device)
        grad[rows, target] -= 1 - ctx.eps
        grad.mul_(grad_loss.to(grad.dtype))
        return grad, None, None


def label_smoothed_nll(
    logits: torch.Tensor, target: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed label-smoothed CE, summed NLL) over real targets. logits [N,V], target [N]."""
    loss, nll = _SmoothedCE.apply(logits, target, eps)
    return loss, nll.detach()


class LossModule(nn.Module):
    """The training step's forward: encode, ask the strategy, decode, loss on real tokens.
    Wrapped in DDP as a whole so gradient hooks see every parameter use."""

    def __init__(self, model, strategy: Strategy, eps: float):
        super().__init__()
        self.model, self.strategy, self.eps = model, strategy, eps
        self.strategy_seconds = 0.0  # wall time inside decoder_inputs (first pass, oracle)
        self._events: list = []  # CUDA (start, end) event pairs, read at the next log

    def forward(self, batch, progress: Progress) -> tuple[torch.Tensor, torch.Tensor]:
        memory, src_mask = self.model.encode(batch.src)
        tgt_mask = batch.tgt_out.ne(PAD)  # from gold lengths, never from mixed inputs
        # the cross-attention K/V of memory, once: a two-pass strategy's first pass reuses them
        cross = self.model.cross_cache(memory)
        inputs = self._timed_inputs(batch, memory, src_mask, progress, cross)
        hidden = self.model.decode_hidden(inputs, memory, src_mask, tgt_mask,
                                          cache=[dict(c) for c in cross])  # [B,T,D]
        logits = self.model.project(hidden[tgt_mask])  # [N,V]: only real target tokens
        loss, nll = label_smoothed_nll(logits, batch.tgt_out[tgt_mask], self.eps)
        for weight, extra in self.strategy.extra_hidden():  # e.g. the first pass (mle_weight)
            extra_logits = self.model.project(extra[tgt_mask])
            loss = loss + weight * label_smoothed_nll(extra_logits, batch.tgt_out[tgt_mask],
                                                      self.eps)[0]
        return loss, nll

    def _timed_inputs(self, batch, memory, src_mask, progress, cross):
        """The strategy's decoder inputs, its time added up (not for teacher forcing; on CUDA
        with events, so the step never waits for the device)."""
        ask = functools.partial(self.strategy.decoder_inputs, cross=cross)
        if isinstance(self.strategy, TeacherForcing):
            return ask(self.model, batch, memory, src_mask, progress)
        if memory.is_cuda:
            start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
            start.record()
            inputs = ask(self.model, batch, memory, src_mask, progress)
            end.record()
            self._events.append((start, end))
            return inputs
        start = time.perf_counter()
        inputs = ask(self.model, batch, memory, src_mask, progress)
        self.strategy_seconds += time.perf_counter() - start
        return inputs


def build_optimizer(model: nn.Module, t) -> torch.optim.Adam:
    """Adam (Kingma & Ba 2015) with ``t``'s lr, betas, eps and weight decay. Fused (one kernel
    for all tensors per step) where every parameter lives on a device with a fused kernel (CPU
    since PyTorch 2.4, CUDA): on CPU the default implementation loops over the ~100 tensors
    with ~6 ops each (3x the time of the fused step on the benchmark model,
    ``benchmarks/cpu_tweaks.py --only adam``). The same update to float rounding; the state
    dict is the same, so checkpoints move between the two."""
    params = list(model.parameters())
    fused = all(p.device.type in ("cpu", "cuda") for p in params) or None  # None: the default
    return torch.optim.Adam(params, lr=t.lr, betas=tuple(t.betas), eps=t.adam_eps,
                            weight_decay=t.weight_decay, fused=fused)


def inverse_sqrt(update: int, peak: float, warmup: int) -> float:
    """Linear warm-up to ``peak``, then peak * sqrt(warmup / update) (Vaswani et al. 5.3)."""
    update = max(update, 1)
    if warmup <= 0:
        return peak
    return peak * min(update / warmup, math.sqrt(warmup / update))


@dataclass
class TrainState:
    update: int = 0
    epoch: int = 1
    group_in_epoch: int = 0  # next update group of this epoch
    elapsed_s: float = 0.0  # training wall-clock, summed over resumes
    tokens: int = 0
    best_bleu: float = -1.0
    best_update: int = 0
    bad_validations: int = 0
    stopped: str = ""
    extra: dict = field(default_factory=dict)


class Distributed:
    """Rank / world size from torchrun's environment; a no-op for one process."""

    def __init__(self, device: torch.device):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device_type = device.type  # NCCL only moves CUDA tensors
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def broadcast_flag(self, flag: bool) -> bool:
        if self.world == 1:
            return flag
        t = torch.tensor([int(flag)], device=self.device_type)  # cuda: the current device
        dist.broadcast(t, 0)
        return bool(t.item())


def _set_seed(seed: int) -> None:
    import random

    random.seed(seed)
    torch.manual_seed(seed)


def validate(
    cfg: Config, model, prep, device, max_sentences: int | None = None
) -> dict:
    """Validation loss (teacher forcing, whatever the training strategy) and BLEU of decoded
    outputs."""
    loss_module = LossModule(model, TeacherForcing(cfg.strategy), cfg.train.label_smoothing)
    model.eval()
    data = prep.valid
    n = len(data) if not max_sentences else min(len(data), max_sentences)
    total, nll_sum, ntok = 0.0, 0.0, 0
    with torch.no_grad(), autocast(device, cfg.train.dtype):
        sub_lens = (data.src_lens[:n], data.tgt_lens[:n])
        for idx in token_batches(*sub_lens, cfg.train.max_tokens, 0, 0):
            batch = collate(data, idx).to(device)
            loss, nll = loss_module(batch, Progress(0, 0))
            total += float(loss)
            nll_sum += float(nll)
            ntok += batch.n_tokens
    translator = Translator(model, prep.vocab, cfg.decode, device, cfg.train.dtype)
    hyps = translator.translate_ids([s.tolist() for s in data.src[:n]], beam=cfg.train.valid_beam)
    score = corpus_scores(prep.vocab.decode(hyps), prep.valid_ref[:n])
    model.train()
    return {
        "valid_loss": round(total / ntok, 4),
        "valid_nll": round(nll_sum / ntok, 4),
        "valid_ppl": round(math.exp(min(nll_sum / ntok, 50)), 2),
        "valid_bleu": score.bleu,
        "valid_chrf": score.chrf,
        "valid_sentences": n,
        "bleu_signature": score.bleu_signature,
    }


def _check_same_model(cfg: Config, base: Path) -> None:
    """Fine-tuning needs the base's architecture (dropout may differ): list every mismatch."""
    base_cfg = config_mod.load(base / "config.yaml")
    diff = [f"model.{k}: {v!r} here, {getattr(base_cfg.model, k)!r} in {base}"
            for k, v in cfg.model.__dict__.items()
            if k not in ("dropout", "vocab_size") and v != getattr(base_cfg.model, k)]
    if diff:
        raise config_mod.ConfigError("--init-from needs the same model:\n  " + "\n  ".join(diff))


def train(
    cfg: Config, run_dir: str | Path, init_from: str | Path | None = None,
    init_optimizer: bool = False,
) -> TrainState:
    """Train (or resume) the run in ``run_dir``; returns the final state. ``init_from``: start
    from that run's best weights and its vocabulary (fine-tuning), with a fresh optimizer
    unless ``init_optimizer``; the schedule counter starts at update 0, and the log says so."""
    t = cfg.train
    device = resolve_device(t.device)
    if t.threads:
        torch.set_num_threads(t.threads)
    ddp = Distributed(device)
    if device.type == "cuda" and ddp.world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    run = RunDir(run_dir)
    if init_from is not None:
        _check_same_model(cfg, Path(init_from))
    if ddp.main:
        prep = prepare(cfg, run_dir, vocab_from=init_from)
    ddp.barrier()
    if not ddp.main:
        prep = prepare(cfg, run_dir, vocab_from=init_from)  # reads what rank 0 wrote
    cfg.model.vocab_size = len(prep.vocab)
    if ddp.main:
        config_mod.save(cfg, run.config)

    _set_seed(t.seed)
    model = Transformer(cfg.model).to(device)
    init_record = None
    if init_from is not None:
        weights = RunDir(init_from).load_weights(model, "best")
        base_update = json.loads((weights / "state.json").read_text())["update"]
        init_record = {"kind": "init", "update": 0, "init_from": str(init_from),
                       "checkpoint": weights.name, "base_update": base_update,
                       "optimizer": "fresh", "schedule_starts_at": {"update": 0, "epoch": 1}}
    if ddp.world > 1:  # same initial weights on every rank, but each rank its own dropout masks
        torch.manual_seed(t.seed + ddp.rank)
    strategy = build_strategy(cfg.strategy)
    loss_module = LossModule(model, strategy, t.label_smoothing)
    optimizer = build_optimizer(model, t)
    if init_record is not None and init_optimizer:
        RunDir(init_from).load_optimizer(optimizer, "best")
        init_record["optimizer"] = f"restored from {init_record['checkpoint']}"
    state = TrainState()
    saved = run.load_training_state(model, optimizer)
    if saved is not None:
        state = TrainState(**saved)
        strategy.load_state_dict(state.extra.get("strategy", {}))
        if ddp.main:
            run.truncate_log(state.update)
            log.info("resumed from update %d (epoch %d)", state.update, state.epoch)
        elif not run.restore_rank_rng(ddp.rank, state.update):
            log.warning("rank %d: no RNG state saved for update %d; dropout masks will differ "
                        "from the uninterrupted run", ddp.rank, state.update)
        if state.update >= t.max_updates:  # a finished run: no further step
            state.stopped = state.stopped or "max_updates"
        elif t.max_minutes > 0 and state.elapsed_s >= t.max_minutes * 60:
            state.stopped = state.stopped or "max_minutes"
    elif ddp.main:
        run.truncate_log(-1)  # a start over: records of a run killed before its first save go
    if saved is None and init_record is not None and ddp.main:
        # the decay counter restarts with the fine-tune: said, not silent (methods.md 4.4)
        run.append_log(init_record)
        log.info("fine-tuning from %s (%s, base update %d), optimizer %s; schedules count "
                 "from update 0, epoch 1", init_from, init_record["checkpoint"],
                 init_record["base_update"], init_record["optimizer"])
    step_module: nn.Module = loss_module
    if ddp.world > 1:
        step_module = nn.parallel.DistributedDataParallel(loss_module)

    data = prep.train
    group_size = t.accum * ddp.world
    bar = None
    if ddp.main and t.progress:
        from tqdm.auto import tqdm

        total = None if t.max_minutes > 0 else t.max_updates  # a time budget: no update-count ETA
        bar = tqdm(total=total, initial=state.update, unit="upd", dynamic_ncols=True)
    interval = {"tokens": 0, "loss": 0.0, "nll": 0.0, "start": time.perf_counter(), "updates": 0}
    run_start = time.perf_counter() - state.elapsed_s
    model.train()

    while not state.stopped:
        batches = token_batches(data.src_lens, data.tgt_lens, t.max_tokens, t.seed, state.epoch)
        n_groups = len(batches) // group_size if ddp.world > 1 else math.ceil(
            len(batches) / group_size)
        for g in range(state.group_in_epoch, n_groups):
            group = batches[g * group_size : (g + 1) * group_size]
            mine = group[ddp.rank :: ddp.world]
            group_tokens = sum(int(data.tgt_lens[idx].sum()) for idx in group)
            lr = inverse_sqrt(state.update + 1, t.lr, t.warmup)
            for pg in optimizer.param_groups:
                pg["lr"] = lr
            progress = Progress(state.update, state.epoch)
            for k, idx in enumerate(mine):
                batch = collate(data, idx).to(device)
                sync = contextlib.nullcontext()
                if ddp.world > 1 and k < len(mine) - 1:
                    sync = step_module.no_sync()
                with sync:
                    with autocast(device, t.dtype):
                        loss, nll = step_module(batch, progress)
                    # DDP averages gradients over ranks: scale so the update is sum / group tokens
                    (loss * ddp.world / group_tokens).backward()
                interval["loss"] += loss.detach()  # a tensor: no device sync per step
                interval["nll"] += nll
            grad_norm = (
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.clip_norm)
                if t.clip_norm > 0 else None
            )
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            state.update += 1
            state.group_in_epoch = g + 1
            state.tokens += group_tokens
            interval["tokens"] += group_tokens
            interval["updates"] += 1
            state.elapsed_s = time.perf_counter() - run_start
            if bar is not None:
                bar.update(1)

            if state.update % t.log_every == 0:  # every rank: the timing state is reset
                secs = time.perf_counter() - interval["start"]
                cost = _strategy_cost(loss_module, secs, interval["updates"])
            if state.update % t.log_every == 0 and ddp.main:
                local_tokens = interval["tokens"] / ddp.world
                record = {
                    "kind": "train", "update": state.update, "epoch": state.epoch,
                    "loss": round(float(interval["loss"]) / local_tokens, 4),
                    "nll": round(float(interval["nll"]) / local_tokens, 4),
                    "lr": lr, "tgt_tokens_per_s": round(interval["tokens"] / secs, 1),
                    "s_per_update": round(secs / interval["updates"], 4),
                    "elapsed_s": round(state.elapsed_s, 1),
                    **({"grad_norm": round(float(grad_norm), 3)} if grad_norm is not None else {}),
                    **strategy.stats(),
                    **cost,
                }
                run.append_log(record)
                if bar is not None:
                    bar.set_postfix(loss=record["loss"], tok_s=int(record["tgt_tokens_per_s"]))
            if state.update % t.log_every == 0:
                interval = {"tokens": 0, "loss": 0.0, "nll": 0.0, "start": time.perf_counter(),
                            "updates": 0}
                release_free_memory()  # inside the next interval's timing: its cost counts

            out_of_time = t.max_minutes > 0 and state.elapsed_s >= t.max_minutes * 60
            out_of_time = ddp.broadcast_flag(out_of_time)
            last = state.update >= t.max_updates or out_of_time
            if state.update % t.valid_every == 0 or last:
                _validate_and_save(cfg, run, model, optimizer, strategy, prep, device, state,
                                   ddp)
                interval["start"] = time.perf_counter()  # validation is not training throughput
                if ddp.broadcast_flag(bool(state.stopped)):
                    state.stopped = "early_stop"
            elif state.update % t.save_every == 0:
                _checkpoint(run, model, optimizer, strategy, state, ("last",), t, ddp)
            if state.update >= t.max_updates:
                state.stopped = "max_updates"
            elif out_of_time:
                state.stopped = "max_minutes"
            if state.stopped:
                break
        else:
            state.epoch += 1
            state.group_in_epoch = 0
            if state.epoch > t.max_epochs:
                state.stopped = "max_epochs"
                _checkpoint(run, model, optimizer, strategy, state, ("last",), t, ddp)
    if bar is not None:
        bar.close()
    if ddp.main:
        run.append_log({"kind": "end", "update": state.update, "stopped": state.stopped,
                        "elapsed_s": round(state.elapsed_s, 1), "best_bleu": state.best_bleu,
                        "best_update": state.best_update})
    ddp.barrier()
    return state


def _strategy_cost(loss_module: LossModule, seconds: float, updates: int) -> dict:
    """The strategy's share of the interval: its seconds per update and the step time relative
    to the same step without it (a teacher-forcing step), ``step / (step - strategy)``."""
    spent, loss_module.strategy_seconds = loss_module.strategy_seconds, 0.0
    if loss_module._events:
        loss_module._events[-1][1].synchronize()
        spent += sum(a.elapsed_time(b) for a, b in loss_module._events) / 1000
        loss_module._events = []
    if isinstance(loss_module.strategy, TeacherForcing) or not updates:
        return {}
    rest = max(seconds - spent, 1e-9)
    return {"strategy_s_per_update": round(spent / updates, 4),
            "step_vs_tf": round(seconds / rest, 3)}


def _state_dict(state: TrainState, strategy: Strategy) -> dict:
    """What state.json holds: the loop's counters plus the strategy's state (oracle cache)."""
    extra = {**state.extra, "strategy": strategy.state_dict()}
    return {**state.__dict__, "extra": extra}


def _checkpoint(run, model, optimizer, strategy, state, tags, t, ddp) -> None:
    """Rank 0 writes the checkpoint; every other rank first writes its own RNG state, so a
    resumed DDP run draws the same dropout masks on every rank."""
    if not ddp.main:
        run.save_rank_rng(ddp.rank, state.update)
    ddp.barrier()
    if ddp.main:
        run.save(model, optimizer, _state_dict(state, strategy), tuple(tags), t.keep_last)
    ddp.barrier()


def _validate_and_save(cfg, run, model, optimizer, strategy, prep, device, state, ddp):
    t = cfg.train
    tags = ["last"]
    if not ddp.main:
        run.save_rank_rng(ddp.rank, state.update)
    if ddp.main:
        start = time.perf_counter()
        result = validate(cfg, model, prep, device, t.valid_max_sentences or None)
        result["valid_seconds"] = round(time.perf_counter() - start, 1)
        if result["valid_bleu"] > state.best_bleu:
            state.best_bleu, state.best_update = result["valid_bleu"], state.update
            state.bad_validations = 0
            tags.append("best")
        else:
            state.bad_validations += 1
            if t.patience and state.bad_validations >= t.patience:
                state.stopped = "early_stop"
        run.append_log({"kind": "valid", "update": state.update, "epoch": state.epoch,
                        "elapsed_s": round(state.elapsed_s, 1), **result})
        log.info("update %d: valid BLEU %.2f (best %.2f @ %d)", state.update,
                 result["valid_bleu"], state.best_bleu, state.best_update)
        run.save(model, optimizer, _state_dict(state, strategy), tuple(tags), t.keep_last)
    ddp.barrier()


def loss_of_batch(model, batch, eps: float = 0.0) -> float:
    """Teacher-forced mean loss per target token of one batch (tests, diagnostics)."""
    logits = model(batch.src, batch.tgt_in)
    return float(F.cross_entropy(logits.transpose(1, 2).float(), batch.tgt_out, ignore_index=PAD,
                                 label_smoothing=eps))
