"""The training criterion: encode, ask the strategy for the decoder's input, decode, and the
label-smoothed loss on real target tokens, returned with its logging outputs (fairseq-style)."""

from __future__ import annotations

import time

import torch
from torch import nn

from ..data import PAD, Batch
from ..strategies import Progress, Strategy, TeacherForcing

__all__ = ["Criterion", "label_smoothed_nll"]


class _SmoothedCE(torch.autograd.Function):
    """Label-smoothed cross-entropy with a hand-written backward: one log-softmax pass in the
    logits' dtype, reused in place for the gradient (autograd's log_softmax + gather + mean
    graph keeps more [N,V] tensors).
    loss_i = (1-eps) * -lsm_i[y_i] + eps * -mean_v lsm_i[v]   (Szegedy et al. 2016)
    d loss_i / d x_i = softmax(x_i) - (1-eps) * onehot(y_i) - eps / V.
    The saved log-softmax is overwritten by the backward: call backward once."""

    @staticmethod
    def forward(ctx, logits, target, eps):
        lsm = torch.log_softmax(logits, dim=-1)  # [N,V], logits' dtype (bf16 under autocast)
        nll = -lsm.gather(1, target[:, None]).squeeze(1).float()
        ones = torch.ones(lsm.shape[-1], 1, dtype=lsm.dtype, device=lsm.device)
        smooth = -(lsm @ ones).squeeze(1).float() / lsm.shape[-1]  # the mean as a GEMV
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


class Criterion(nn.Module):
    """The training step's forward. Wrapped in DDP as a whole so gradient hooks see every
    parameter use. ``forward`` returns ``(loss, sample_size, logging_output)``: the summed loss
    (to backpropagate), the number of target tokens, and what the trainer sums up and logs:
    ``loss`` and ``nll`` (detached sums) and ``strategy_time`` (the strategy's share: seconds,
    or a pair of CUDA events so the step never waits for the device; absent for teacher
    forcing) and the figures of the strategy's ``extra_loss`` (e.g. ``mrt_risk``)."""

    def __init__(self, model, strategy: Strategy, eps: float):
        super().__init__()
        self.model, self.strategy, self.eps = model, strategy, eps

    def forward(self, batch: Batch, progress: Progress,
                src_padded: bool = True) -> tuple[torch.Tensor, int, dict]:
        """``src_padded=False``: the caller saw on the host that ``batch.src`` has no PAD, so
        attention runs without a source key mask (``Transformer.encode``)."""
        memory, src_mask = self.model.encode(batch.src, src_padded)
        tgt_mask = batch.tgt_out.ne(PAD)  # from gold lengths, never from mixed inputs
        # the cross-attention K/V of memory, once: a two-pass strategy's first pass reuses them
        cross = self.model.cross_cache(memory)
        logging: dict = {}
        inputs, extra_loss = self._inputs(batch, memory, src_mask, progress, cross, logging)
        hidden = self.model.decode_hidden(inputs, memory, src_mask, tgt_mask,
                                          cache=[dict(c) for c in cross])  # [B,T,D]
        logits = self.model.project(hidden[tgt_mask])  # [N,V]: only real target tokens
        target = batch.tgt_out[tgt_mask]
        loss, nll = label_smoothed_nll(logits, target, self.eps)
        for weight, extra in self.strategy.extra_hidden():  # e.g. the first pass (mle_weight)
            loss = loss + weight * label_smoothed_nll(self.model.project(extra[tgt_mask]),
                                                      target, self.eps)[0]
        if extra_loss is not None:  # the strategy's own term (e.g. minimum risk training)
            loss = extra_loss.token_weight * loss + extra_loss.term
            logging.update(extra_loss.figures or {})
        logging.update(loss=loss.detach(), nll=nll)
        return loss, target.numel(), logging  # no int(): a compiled step keeps N symbolic

    def _inputs(self, batch, memory, src_mask, progress, cross, logging: dict):
        """(the strategy's decoder inputs, its ``extra_loss``); their time goes into
        ``logging`` (not for teacher forcing)."""
        strategy, model = self.strategy, self.model

        def ask():
            inputs = strategy.decoder_inputs(model, batch, memory, src_mask, progress, cross=cross)
            return inputs, strategy.extra_loss(model, batch, memory, src_mask, cross)

        if isinstance(self.strategy, TeacherForcing):
            return ask()
        if memory.is_cuda:
            start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
            start.record()
            inputs = ask()
            end.record()
            logging["strategy_time"] = (start, end)
            return inputs
        start_s = time.perf_counter()
        inputs = ask()
        logging["strategy_time"] = time.perf_counter() - start_s
        return inputs
