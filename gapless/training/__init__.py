"""Training: the Trainer (fit / one update / validation / checkpoint) and its criterion."""

from .criterion import Criterion, label_smoothed_nll
from .optim import build_optimizer, inverse_sqrt
from .trainer import Trainer, TrainState, train

__all__ = ["Criterion", "TrainState", "Trainer", "build_optimizer", "inverse_sqrt",
           "label_smoothed_nll", "train"]
