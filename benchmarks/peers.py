"""The peer toolkits' figures on this machine, copied from ../shared/bench/peers/RESULTS.md
(measured 2026-11-28: 2-vCPU AMD EPYC VM, torch 2.13.0+cpu, OMP_NUM_THREADS=2, fp32; Multi30k
De->En, joint SentencePiece BPE 8k, Transformer 3+3 x 256, 4 heads, FFN 1024, ~7.58 M parameters).
Constants only: the benchmarks print them next to gapless's own figures for comparison."""

SOURCE = "../shared/bench/peers/RESULTS.md (protocol: ../shared/bench/peers/README.md)"

# Training throughput: 120 updates = 20 warm-up + 100 measured, logged every 10; 4096-token
# batches (each toolkit's own definition); target tokens/s per interval. Two runs per peer.
TRAIN = {
    "source": SOURCE,
    "dtype": "fp32",
    "threads": 2,
    "runs": {
        "fairseq": {
            "version": "fairseq-fixed 0.12.3.1", "norm": "post",
            "tgt_tok_s_median": [2347, 2267], "tgt_tok_s_min": [2080, 2080],
            "tgt_tok_s_max": [2483, 2342], "s_per_update": [1.48, 1.52],
            "real_tgt_tokens_per_update": 3396, "peak_rss_mb": [1596, 1611],
        },
        "opennmt-py": {
            "version": "3.5.1", "norm": "pre",
            "tgt_tok_s_median": [2281, 2280], "tgt_tok_s_min": [2102, 1960],
            "tgt_tok_s_max": [2325, 2385], "s_per_update": [1.64, 1.63],
            "real_tgt_tokens_per_update": 3713, "peak_rss_mb": [3601, 3575],
        },
        "joeynmt": {
            "version": "2.3.0", "norm": "pre",
            "tgt_tok_s_median": [871, 914], "tgt_tok_s_min": [829, 848],
            "tgt_tok_s_max": [948, 986], "s_per_update": [1.99, 1.90],
            "real_tgt_tokens_per_update": 1735,  # ~1,730 / ~1,740 (no length bucketing)
            "peak_rss_mb": [2298, 2288],
        },
    },
}  # fmt: skip

# Decoding test2016 (1,000 sentences), beam 5, 64 sentences per batch, 2 threads; sentences/s of
# the toolkit's decode loop, run 1 / run 2 (one run for "default").
DECODE = {
    "source": SOURCE,
    "beam": 5,
    "batch_size": 64,
    "threads": 2,
    # min = max = 30 pieces: equal work whatever the model, so comparable for any gapless model
    "fixed30": {
        "model": "barely trained (120 updates); output length forced to 30 pieces",
        "sent_s": {
            "fairseq": [45.7, 43.7], "ctranslate2(fairseq)": [77.2, 71.3],
            "opennmt-py": [43.1, 47.0], "ctranslate2(opennmt-py)": [79.8, 74.5],
            "joeynmt": [4.37, 4.35],
        },
        "mean_hyp_pieces": 30.0,
    },
    # each toolkit's own default maximum length, on a barely trained (degenerate) model
    "default_barely_trained": {
        "model": "barely trained (120 updates): speed mostly reflects output length",
        "sent_s": {
            "fairseq": [96.2], "ctranslate2(fairseq)": [200.1], "opennmt-py": [59.2],
            "ctranslate2(opennmt-py)": [329.6], "joeynmt": [1.8],
        },
        "mean_hyp_pieces": {
            "fairseq": 8.0, "ctranslate2(fairseq)": 8.0, "opennmt-py": 0.0,
            "ctranslate2(opennmt-py)": 5.7, "joeynmt": 5.5,
        },
    },
    # the realistic comparison for `default`: a trained model (fairseq, 30 min of CPU training)
    "default_trained": {
        "model": "fairseq quality run: 30 min CPU training, test2016 BLEU 36.15",
        "sent_s": {"fairseq": [99.0, 100.0], "ctranslate2(fairseq)": [176.9, 183.2]},
        "mean_hyp_pieces": 12.2,
        "bleu": 36.15,
    },
}  # fmt: skip
