"""What one logging interval adds up from the criterion's logging outputs."""

from __future__ import annotations

import time

import torch

__all__ = ["Interval"]


class Interval:
    """Sums over the updates since the last log record: loss and NLL (device tensors, read
    once at the log), target tokens, the strategy's time, the last lr and gradient norm."""

    def __init__(self):
        self.loss: torch.Tensor | float = 0.0
        self.nll: torch.Tensor | float = 0.0
        self.tokens = self.updates = 0
        self.strategy_s = 0.0
        self.events: list = []  # CUDA (start, end) event pairs, read at the log
        self.lr, self.grad_norm = 0.0, None
        self.start = time.perf_counter()

    def add(self, logging_output: dict) -> None:
        """One micro-batch's logging output (``gapless.training.criterion.Criterion``)."""
        self.loss += logging_output["loss"]  # a tensor: no device sync per step
        self.nll += logging_output["nll"]
        spent = logging_output.get("strategy_time")
        if isinstance(spent, tuple):
            self.events.append(spent)
        elif spent is not None:
            self.strategy_s += spent

    def close_update(self, tokens: int, lr: float, grad_norm) -> None:
        self.tokens += tokens
        self.updates += 1
        self.lr, self.grad_norm = lr, grad_norm

    def restart_clock(self) -> None:
        """Time spent since (validation, a checkpoint) is not training throughput."""
        self.start = time.perf_counter()

    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def rates(self, world: int, seconds: float) -> dict:
        """Per-token loss and NLL of this rank, lr, group tokens/s, s/update."""
        local_tokens = self.tokens / world
        return {"loss": round(float(self.loss) / local_tokens, 4),
                "nll": round(float(self.nll) / local_tokens, 4),
                "lr": self.lr, "tgt_tokens_per_s": round(self.tokens / seconds, 1),
                "s_per_update": round(seconds / self.updates, 4)}

    def grad_norm_entry(self) -> dict:
        return {} if self.grad_norm is None else {"grad_norm": round(float(self.grad_norm), 3)}

    def strategy_cost(self, seconds: float) -> dict:
        """The strategy's seconds per update in its ``decoder_inputs`` call (first pass,
        oracle search) and their share of the step's wall time; empty when nothing was timed
        (teacher forcing). The backward through the strategy's inputs (soft mixtures) is not
        in it: the step-time ratio to teacher forcing is ``benchmarks/strategy_speed``'s."""
        spent = self.strategy_s
        if self.events:
            self.events[-1][1].synchronize()
            spent += sum(a.elapsed_time(b) for a, b in self.events) / 1000
        elif not self.strategy_s:
            return {}
        if not self.updates:
            return {}
        return {"strategy_s_per_update": round(spent / self.updates, 4),
                "strategy_share": round(spent / max(seconds, 1e-9), 3)}
