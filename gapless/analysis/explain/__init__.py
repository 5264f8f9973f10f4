"""``gapless explain``: the notes' Transformer claims (methods.md 7) as experiments, one claim
per module.

Each ``Claim`` measures numbers (small random tensors where the claim is arithmetic, a trained
run or tiny training runs on the generated ``synthetic`` corpus where it is about training),
decides by a stated rule whether the claim held, and draws one figure. ``explain`` runs a
selection and writes ``explain.json``, ``explain.md`` and ``<claim>.png`` into the output
directory (default: ``RUN/explain`` with ``--run``, else ``docs/explain``). Everything runs on
the CPU.
"""

from .core import Claim, Context, Measured, Result, attention_probs, attention_scores
from .heads import head_statistics
from .layernorm import sentence_output
from .no_projection import diagonal_dominance, equal_norm_tokens
from .run import CLAIMS, DEFAULT_OUT, default_out, explain, format_result, run_claim
from .scaling import score_variance, softmax_saturation
from .tying import TYINGS, embedding_parameter_counts

__all__ = [
    "CLAIMS", "DEFAULT_OUT", "TYINGS", "Claim", "Context", "Measured", "Result",
    "attention_probs", "attention_scores", "default_out", "diagonal_dominance",
    "embedding_parameter_counts", "equal_norm_tokens", "explain", "format_result",
    "head_statistics", "run_claim", "score_variance", "sentence_output", "softmax_saturation",
]
