"""Text to batches: checked corpus reading, joint SentencePiece, filters, shards, batching.

``text`` reads plain or gzip files (errors name file and line), ``vocab`` is the SentencePiece
model and its training sample, ``filters`` decides which training pairs are kept, ``encode``
turns text into ids (in ``workers`` processes when asked: fresh interpreters without torch),
``shards`` stores them as memory-mapped flat arrays with the split's length files, ``order``
sorts an epoch's rows by length in pieces, ``batching`` makes token-bucket batches (compact
arrays, not an object per batch) and padded tensors.
"""

from .batching import Batch, collate, pad_rows, pad_sequences, sentence_batches, token_batches
from .filters import DROP_REASONS, FilterReport, PairRules
from .shards import ParallelData, load_split, split_path
from .text import CorpusError, read_lines, read_parallel
from .vocab import BOS, EOS, PAD, UNK, Vocab

__all__ = ["BOS", "DROP_REASONS", "EOS", "PAD", "UNK", "Batch", "CorpusError", "FilterReport",
           "PairRules", "ParallelData", "Vocab", "collate", "load_split", "pad_rows",
           "pad_sequences", "read_lines", "read_parallel", "sentence_batches", "split_path",
           "token_batches"]
