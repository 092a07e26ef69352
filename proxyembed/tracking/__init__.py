"""Experiment tracking (``--log tensorboard|mlflow|wandb``): the training run, its export and its checks, side by side
in a team's tracker. Torch-free, so ``proxyembed check --log`` stays torch-free; each back-end's package is
imported only when asked for. See :mod:`.fanout` for the interface the commands call.
"""

from .base import Tracker, TrackerName
from .fanout import Tracking, connect, reopen, tracking
from .record import RECORD_NAME, read_record

__all__ = ["RECORD_NAME", "Tracker", "TrackerName", "Tracking", "connect", "read_record", "reopen", "tracking"]
