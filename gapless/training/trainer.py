"""``gapless train``: the Trainer object. batches -> strategy -> model -> loss -> update.

Written for ``torchrun``: an *update group* is ``accum x world`` micro-batches drawn in a fixed
order from (seed, epoch); rank r takes micro-batches r, r+world, ...; the loss is normalised
by the target tokens of the whole group, so 2 ranks x 1 micro-batch give the same update as
1 rank x 2 micro-batches. Only rank 0 writes. Checkpoints hold the position in the epoch, the
RNG states and the optimizer, so a killed run resumes to the same result.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import config as config_mod
from ..checkpoint import RunDir
from ..config import Config
from ..data import collate, token_batches
from ..model import Transformer
from ..prepare import Prepared, prepare
from ..runlock import RunLock
from ..runtime import autocast, release_free_memory, resolve_device
from ..strategies import Progress, build_strategy
from ..verify import CheckpointError
from .criterion import Criterion
from .distributed import Distributed, training_device
from .fastpath import compile_step, src_padded, to_device
from .optim import build_optimizer, inverse_sqrt, set_lr
from .stats import Interval
from .validation import validate

log = logging.getLogger(__name__)

__all__ = ["NonFiniteLoss", "TrainState", "Trainer", "train"]


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


def _check_same_model(cfg: Config, base: Path) -> None:
    """Fine-tuning needs the base's architecture (dropout may differ): list every mismatch."""
    base_cfg = RunDir(base).load_config()
    diff = [f"model.{k}: {v!r} here, {getattr(base_cfg.model, k)!r} in {base}"
            for k, v in cfg.model.__dict__.items()
            if k not in ("dropout", "vocab_size") and v != getattr(base_cfg.model, k)]
    if diff:
        raise config_mod.ConfigError("--init-from needs the same model:\n  " + "\n  ".join(diff))


class NonFiniteLoss(RuntimeError):
    """Training met a NaN or inf loss under ``train.nonfinite: stop``."""


class Trainer:
    """Training state on one object: run, model, optimizer, strategy, state, distributed
    context. ``fit`` trains (or resumes) to the end; ``train_update`` is one update."""

    def __init__(self, cfg: Config, run_dir: str | Path, init_from: str | Path | None = None,
                 init_optimizer: bool = False, restart: bool = False):
        """``init_from``: start from that run's best weights and its vocabulary (fine-tuning),
        with a fresh optimizer unless ``init_optimizer``; schedules count from update 0.
        ``restart``: start over, discarding the run's checkpoints and log."""
        self.cfg, self.t, self.restart = cfg, cfg.train, restart
        device = resolve_device(self.t.device)
        if self.t.threads:
            torch.set_num_threads(self.t.threads)
        self.ddp = Distributed(device)
        self.device = training_device(device, self.ddp)
        self.run = RunDir(run_dir)
        if init_from is not None:
            _check_same_model(cfg, Path(init_from))
        self.prep = self._prepare(init_from)
        random.seed(self.t.seed)
        torch.manual_seed(self.t.seed)
        self.model = Transformer(cfg.model).to(self.device)
        init_record = self._init_weights(init_from) if init_from is not None else None
        if self.ddp.world > 1:  # same initial weights on every rank, its own dropout masks
            torch.manual_seed(self.t.seed + self.ddp.rank)
        self.strategy = build_strategy(cfg.strategy)
        self.criterion = Criterion(self.model, self.strategy, self.t.label_smoothing)
        self.optimizer = build_optimizer(self.model, self.t)
        if init_record is not None and init_optimizer:
            RunDir(init_from).load_optimizer(self.optimizer, "best")
            init_record["optimizer"] = f"restored from {init_record['checkpoint']}"
        self.state = self._resume(init_record)
        self.step_module: nn.Module = self.criterion
        if self.ddp.world > 1:
            self.step_module = nn.parallel.DistributedDataParallel(self.criterion)
        self.step_module = compile_step(self.step_module, self.t.compile)

    # ------------------------------------------------------------------ setup
    def _prepare(self, init_from) -> Prepared:
        """Rank 0 prepares the data; the others then read what it wrote."""
        if self.ddp.main:
            prep = prepare(self.cfg, self.run.path, vocab_from=init_from)
        self.ddp.barrier()
        if not self.ddp.main:
            prep = prepare(self.cfg, self.run.path, vocab_from=init_from)
        self.cfg.model.vocab_size = len(prep.vocab)
        if self.ddp.main:
            config_mod.save(self.cfg, self.run.config)
        return prep

    def _init_weights(self, init_from) -> dict:
        """The base run's best weights; the record the log gets about it."""
        weights = RunDir(init_from).load_weights(self.model, "best")
        base_update = json.loads((weights / "state.json").read_text())["update"]
        return {"kind": "init", "update": 0, "init_from": str(init_from),
                "checkpoint": weights.name, "base_update": base_update,
                "optimizer": "fresh", "schedule_starts_at": {"update": 0, "epoch": 1}}

    def _resume(self, init_record: dict | None) -> TrainState:
        """The state of the last checkpoint (weights, optimizer and RNG restored), or a fresh
        one; the log is cut back to the resumed update."""
        saved = self._saved_state()
        if saved is None:
            if self.ddp.main:
                self.run.truncate_log(-1)  # records of a run killed before its first save go
                if init_record is not None:
                    self._log_init(init_record)
            return TrainState()
        state = TrainState(**saved)
        self.strategy.load_state_dict(state.extra.get("strategy", {}))
        if self.ddp.main:
            self.run.truncate_log(state.update)
            log.info("resumed from update %d (epoch %d)", state.update, state.epoch)
        else:
            self._restore_rank(state.update)
        if state.update >= self.t.max_updates:  # a finished run: no further step
            state.stopped = state.stopped or "max_updates"
        elif self._out_of_time(state):
            state.stopped = state.stopped or "max_minutes"
        return state

    def _saved_state(self) -> dict | None:
        """The last checkpoint's state (weights, optimizer, RNG restored), or None to start
        over: a run without checkpoints, or ``restart``, which says what it discards."""
        if self.restart and self.ddp.main:
            gone = self.run.discard_checkpoints()
            if gone:
                log.warning("--restart: discarded %s", ", ".join(gone))
        self.ddp.barrier()
        try:
            return self.run.load_training_state(self.model, self.optimizer)
        except CheckpointError as exc:
            raise CheckpointError(f"{exc}; no checkpoint of this run can be resumed: "
                                  "--restart starts over, discarding them") from None

    def _restore_rank(self, update: int) -> None:
        """A non-zero rank takes back its own RNG and strategy state (rank 0's came with the
        checkpoint): each rank draws its own dropout masks and caches its own oracles."""
        own = self.run.restore_rank_state(self.ddp.rank, update)
        if own is None:
            log.warning("rank %d: no state saved for update %d; dropout masks and cached "
                        "oracles will differ from the uninterrupted run", self.ddp.rank, update)
            return
        self.strategy.load_state_dict(own)

    def _log_init(self, record: dict) -> None:
        """The decay counter restarts with the fine-tune: said, not silent (methods.md 4.4)."""
        self.run.append_log(record)
        log.info("fine-tuning from %s (%s, base update %d), optimizer %s; schedules count "
                 "from update 0, epoch 1", record["init_from"], record["checkpoint"],
                 record["base_update"], record["optimizer"])

    def _out_of_time(self, state: TrainState) -> bool:
        return self.t.max_minutes > 0 and state.elapsed_s >= self.t.max_minutes * 60

    # ------------------------------------------------------------------ the loop
    def fit(self) -> TrainState:
        """Train until max_updates, max_minutes, max_epochs or early stopping."""
        state = self.state
        self.bar = self._progress_bar()
        self.interval = Interval()
        self.run_start = time.perf_counter() - state.elapsed_s
        self.model.train()
        while not state.stopped:
            self._epoch()
        if self.bar is not None:
            self.bar.close()
        if self.ddp.main:
            self.run.append_log({"kind": "end", "update": state.update, "stopped": state.stopped,
                                 "elapsed_s": round(state.elapsed_s, 1),
                                 "best_bleu": state.best_bleu, "best_update": state.best_update})
        self.ddp.barrier()
        return state

    def _progress_bar(self):
        if not (self.ddp.main and self.t.progress):
            return None
        from tqdm.auto import tqdm

        total = None if self.t.max_minutes > 0 else self.t.max_updates  # a time budget: no ETA
        return tqdm(total=total, initial=self.state.update, unit="upd", dynamic_ncols=True)

    def _epoch(self) -> None:
        """The update groups of the current epoch from where the state stands."""
        state, data = self.state, self.prep.train
        group_size = self.t.accum * self.ddp.world
        batches = token_batches(data.src_lens, data.tgt_lens, self.t.max_tokens, self.t.seed,
                                state.epoch)
        n_groups = (len(batches) // group_size if self.ddp.world > 1
                    else math.ceil(len(batches) / group_size))
        for g in range(state.group_in_epoch, n_groups):
            stepped = self.train_update(batches[g * group_size: (g + 1) * group_size])
            state.group_in_epoch = g + 1
            if not stepped:
                continue
            self._after_update()
            if state.stopped:
                return
        state.epoch += 1
        state.group_in_epoch = 0
        if state.epoch > self.t.max_epochs:
            state.stopped = "max_epochs"
            self.checkpoint(("last",))

    def train_update(self, group: list[np.ndarray]) -> bool:
        """One update from one group of micro-batches (this rank's share of it); False when
        a non-finite loss made it skip (``train.nonfinite: skip``)."""
        state, data, ddp = self.state, self.prep.train, self.ddp
        mine = group[ddp.rank:: ddp.world]
        group_tokens = sum(int(data.tgt_lens[idx].sum()) for idx in group)
        lr = inverse_sqrt(state.update + 1, self.t.lr, self.t.warmup)
        set_lr(self.optimizer, lr)
        progress = Progress(state.update, state.epoch)
        outputs = []
        for k, idx in enumerate(mine):
            batch = collate(data, idx)
            padded = src_padded(batch)  # on the host: no device sync
            batch = to_device(batch, self.device)  # pinned, non-blocking on CUDA
            sync = contextlib.nullcontext()
            if ddp.world > 1 and k < len(mine) - 1:
                sync = self.step_module.no_sync()
            with sync:
                with autocast(self.device, self.t.dtype):
                    loss, _, logging_output = self.step_module(batch, progress, padded)
                # DDP averages gradients over ranks: scale so the update is sum / group tokens
                (loss * ddp.world / group_tokens).backward()
            outputs.append(logging_output)
        if not self._finite(outputs):
            return False
        for logging_output in outputs:
            self.interval.add(logging_output)
        grad_norm = (torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.t.clip_norm)
                     if self.t.clip_norm > 0 else None)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        state.update += 1
        state.tokens += group_tokens
        self.interval.close_update(group_tokens, lr, grad_norm)
        state.elapsed_s = time.perf_counter() - self.run_start
        if self.bar is not None:
            self.bar.update(1)
        return True

    def _finite(self, outputs: list[dict]) -> bool:
        """Whether this update's loss is finite on every rank. If not: stop before any
        checkpoint is written (``train.nonfinite: stop``), or drop the gradients and count
        the skipped update (``skip``, as fairseq does on overflow)."""
        total = float(sum(o["loss"] for o in outputs))  # one device sync per update
        if not self.ddp.any(not math.isfinite(total)):
            return True
        self.optimizer.zero_grad(set_to_none=True)
        if self.t.nonfinite == "stop":
            last = self.run.pointer("last")
            raise NonFiniteLoss(f"non-finite loss at update {self.state.update + 1}: stopped "
                                f"before writing a checkpoint (the last one, {last}, is "
                                "intact); train.nonfinite=skip skips such updates instead")
        skipped = self.state.extra.get("skipped_updates", 0) + 1
        self.state.extra["skipped_updates"] = skipped
        log.warning("non-finite loss at update %d: update skipped (%d so far)",
                    self.state.update + 1, skipped)
        return False

    def _after_update(self) -> None:
        """Logging, validation / checkpoint and the stop conditions after an update."""
        state = self.state
        if state.update % self.t.log_every == 0:
            self._log_interval()
        out_of_time = self.ddp.broadcast_flag(self._out_of_time(state))
        last = state.update >= self.t.max_updates or out_of_time
        if state.update % self.t.valid_every == 0 or last:
            self.validate_and_save()
            self.interval.restart_clock()  # validation is not training throughput
            if self.ddp.broadcast_flag(bool(state.stopped)):
                state.stopped = "early_stop"
        elif state.update % self.t.save_every == 0:
            self.checkpoint(("last",))
        if state.update >= self.t.max_updates:
            state.stopped = "max_updates"
        elif out_of_time:
            state.stopped = "max_minutes"

    def _log_interval(self) -> None:
        """Every rank closes the interval (its timing state resets); rank 0 writes it."""
        interval, state = self.interval, self.state
        seconds = interval.seconds()
        cost = interval.strategy_cost(seconds)
        if self.ddp.main:
            record = {"kind": "train", "update": state.update, "epoch": state.epoch,
                      **interval.rates(self.ddp.world, seconds),
                      "elapsed_s": round(state.elapsed_s, 1), **interval.grad_norm_entry(),
                      **self.strategy.stats(), **cost}
            self.run.append_log(record)
            if self.bar is not None:
                self.bar.set_postfix(loss=record["loss"], tok_s=int(record["tgt_tokens_per_s"]))
        self.interval = Interval()
        release_free_memory()  # inside the next interval's timing: its cost counts

    # ------------------------------------------------------------------ validation, checkpoints
    def validate_and_save(self) -> None:
        """Validate on rank 0, track the best BLEU and early stopping, save ``last`` (and
        ``best``); other ranks save their RNG state."""
        state, t = self.state, self.t
        tags = ["last"]
        if not self.ddp.main:
            self.run.save_rank_state(self.ddp.rank, state.update, self.strategy.state_dict())
        if self.ddp.main:
            start = time.perf_counter()
            result = validate(self.cfg, self.model, self.prep, self.device,
                              t.valid_max_sentences or None)
            result["valid_seconds"] = round(time.perf_counter() - start, 1)
            if result["valid_bleu"] > state.best_bleu:
                state.best_bleu, state.best_update = result["valid_bleu"], state.update
                state.bad_validations = 0
                tags.append("best")
            else:
                state.bad_validations += 1
                if t.patience and state.bad_validations >= t.patience:
                    state.stopped = "early_stop"
            self.run.append_log({"kind": "valid", "update": state.update, "epoch": state.epoch,
                                 "elapsed_s": round(state.elapsed_s, 1), **result})
            log.info("update %d: valid BLEU %.2f (best %.2f @ %d)", state.update,
                     result["valid_bleu"], state.best_bleu, state.best_update)
            self.run.save(self.model, self.optimizer, self.state_dict(), tuple(tags),
                          t.keep_last)
        self.ddp.barrier()

    def checkpoint(self, tags: tuple[str, ...]) -> None:
        """Rank 0 writes the checkpoint; every other rank first writes its own RNG state, so a
        resumed DDP run draws the same dropout masks on every rank."""
        if not self.ddp.main:
            self.run.save_rank_state(self.ddp.rank, self.state.update,
                                     self.strategy.state_dict())
        self.ddp.barrier()
        if self.ddp.main:
            self.run.save(self.model, self.optimizer, self.state_dict(), tags, self.t.keep_last)
        self.ddp.barrier()

    def state_dict(self) -> dict:
        """What state.json holds: the loop's counters plus the strategy's state (oracle cache)."""
        extra = {**self.state.extra, "strategy": self.strategy.state_dict()}
        return {**self.state.__dict__, "extra": extra}


def train(cfg: Config, run_dir: str | Path, init_from: str | Path | None = None,
          init_optimizer: bool = False, restart: bool = False) -> TrainState:
    """Train (or resume) the run in ``run_dir`` under its lock (rank 0 holds it); returns the
    final state (see ``Trainer``)."""
    lock = RunLock(run_dir) if os.environ.get("RANK", "0") == "0" else contextlib.nullcontext()
    with lock:
        return Trainer(cfg, run_dir, init_from, init_optimizer, restart).fit()
