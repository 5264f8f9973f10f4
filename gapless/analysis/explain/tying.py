"""Claim 7.6: sharing embeddings cuts parameters and speeds convergence."""

from __future__ import annotations

import statistics
from dataclasses import asdict
from pathlib import Path

from ...checkpoint import RunDir
from ...config import ModelConfig
from ...model import Transformer, count_parameters
from ..figures import finish, pyplot, save
from .core import Claim, Context, Measured, prose, rounded, tiny, train_seeds, valid_curve


def embedding_parameter_counts(cfg: ModelConfig) -> dict[str, int]:
    """Exact parameter counts of the model under the four tying choices."""
    counts = {}
    for name, (enc_dec, output) in TYINGS.items():
        c = ModelConfig(**{**asdict(cfg), "tie_encoder_decoder": enc_dec, "tie_output": output})
        counts[name] = count_parameters(Transformer(c))
    return counts


TYINGS = {"untied": (False, False), "tie_encoder_decoder": (True, False),
          "tie_output": (False, True), "tie_both": (True, True)}


class Tying(Claim):
    id = "tying"
    uses_run = True
    statement = prose("""
        Sharing embeddings (encoder/decoder, and with the output layer) cuts parameters and
        speeds convergence.""")
    rule = prose("""
        held if: tying the encoder/decoder tables and the output layer removes exactly V x D
        parameters each (2 V x D together) and, after the same number of updates on the
        synthetic corpus, the fully tied tiny model has the lower validation NLL for every
        training seed""")

    def measure(self, ctx: Context) -> Measured:
        if ctx.run is not None:
            cfg = RunDir(ctx.run).load_config().model
            where = f"the architecture of {ctx.run}"
        else:
            cfg = ModelConfig(d_model=256, n_heads=4, ffn_dim=1024, enc_layers=3, dec_layers=3,
                              vocab_size=8000)
            where = "the peer model size (preset multi30k_de_en, V=8000)"
        counts = embedding_parameter_counts(cfg)
        runs = {name: train_seeds(ctx, tie_encoder_decoder=TYINGS[name][0],
                                  tie_output=TYINGS[name][1]) for name in ("tie_both", "untied")}
        numbers = {
            "vocab": cfg.vocab_size, "d_model": cfg.d_model, "params": counts,
            "params_saved": {k: counts["untied"] - v for k, v in counts.items()},
            "updates": ctx.pick(200, 60),
            "final_valid_nll": {f"{k} seed {seed}": r[-1]["valid_nll"]
                                for k, by_seed in runs.items() for seed, r in by_seed.items()},
            "mean_valid_nll_over_curve": {
                f"{k} seed {seed}": rounded(statistics.mean(x["valid_nll"] for x in r))
                for k, by_seed in runs.items() for seed, r in by_seed.items()},
        }
        curves = {f"{k} seed {seed}": valid_curve(r) for k, by_seed in runs.items()
                  for seed, r in by_seed.items()}
        return Measured(numbers, {"valid": curves}, f"parameter counts for {where}; training: "
                        f"tiny models (preset tiny, V={tiny()['data']['vocab_size']}, "
                        f"d_model 32), {numbers['updates']} updates on the synthetic corpus, "
                        f"training seeds {', '.join(runs['untied'])}")

    def checks(self, n: dict) -> dict[str, bool]:
        vd, saved = n["vocab"] * n["d_model"], n["params_saved"]
        return {
            "tying removes exactly V x D per shared table":
                saved["tie_encoder_decoder"] == vd and saved["tie_output"] == vd
                and saved["tie_both"] == 2 * vd,
            "tied model converges faster (every seed)": all(
                nll < n["final_valid_nll"][key.replace("tie_both", "untied")]
                for key, nll in n["final_valid_nll"].items() if key.startswith("tie_both")),
        }

    def plot(self, m: Measured, path: Path) -> None:
        plt = pyplot()
        n = m.numbers
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        names = list(n["params"])
        axes[0].bar(names, [n["params"][k] / 1e6 for k in names], color="C0",
                    label=f"V={n['vocab']}, D={n['d_model']}")
        axes[0].set(ylabel="parameters (millions)", title="Parameters by tying choice")
        axes[0].tick_params(axis="x", labelrotation=15)
        for name, curve in m.series["valid"].items():
            axes[1].plot(curve["update"], curve["valid_nll"], marker="o", label=name,
                         color="C0" if name.startswith("tie_both") else "C3",
                         ls="--" if name.endswith("2") else "-")
        axes[1].set(xlabel="update", ylabel="validation NLL (nats/token)",
                    title="Tiny models on the synthetic corpus")
        for ax in axes:
            finish(ax)
        save(fig, path)
