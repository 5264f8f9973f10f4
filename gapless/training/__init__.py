"""Training: the Trainer (fit / one update / validation / checkpoint) and its criterion."""

from ..train import train

__all__ = ["train"]
