"""Trainer callbacks: small classes with no-op hooks named for the moment they run.

Every hook takes the trainer first and keyword arguments after (``**kwargs`` swallows what a
callback does not need). Callbacks run in ascending ``order`` (stable), so an
[LRScheduler][tlkit.LRScheduler] steps before a [ModelCheckpoint][tlkit.ModelCheckpoint] saves its
state.
"""

from .base import Callback, TrainerLike
from .ema import EMA
from .history_logger import HistoryLogger
from .model_checkpoint import ModelCheckpoint
from .progress import ProgressBar
from .schedule import LRScheduler
from .stopping import Deadline, EarlyStopping
from .unfreeze import GradualUnfreeze

__all__ = [
    "EMA",
    "Callback",
    "Deadline",
    "EarlyStopping",
    "GradualUnfreeze",
    "HistoryLogger",
    "LRScheduler",
    "ModelCheckpoint",
    "ProgressBar",
    "TrainerLike",
]
