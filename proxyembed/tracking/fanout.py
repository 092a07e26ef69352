"""The one interface the trainer, ``export`` and ``check`` call: every ``--log`` back-end at once, failures contained.

A back-end that cannot start is a :class:`BadInput` before any training (exit 2). One that fails later is
a warning through ``warn`` and is switched off for the rest of the command: training goes on, and
``metrics.jsonl`` keeps every number.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from proxyembed.runtime.errors import BadInput, ProxyEmbedError
from proxyembed.training.run_dir import read_history

from .base import Tracker, TrackerName
from .record import read_record, write_record

_TIMES = "time/"


def connect(name: str, *, mlflow_uri: str | None = None) -> Tracker:
    """The back-end ``name``, its package imported and its server (if any) reached: :class:`BadInput` otherwise."""
    if name == "tensorboard":
        from .tensorboard import TensorBoardTracker

        return TensorBoardTracker()
    if name == "mlflow":
        from .mlflow import MlflowTracker

        return MlflowTracker(mlflow_uri)
    if name == "wandb":
        from .wandb import WandbTracker

        return WandbTracker()
    raise BadInput(f"--log '{name}' is not a tracker", hint="choose tensorboard, mlflow or wandb")


class Tracking:
    """The trackers of one command. Empty (every call a no-op) without ``--log`` and on ranks other than 0."""

    def __init__(self, trackers: Sequence[Tracker] = (), warn: Callable[[str], None] = lambda _: None) -> None:
        self.trackers = list(trackers)
        self.warn = warn
        self.step = 0  # where export and check reports go on the step axis: the run's last epoch (see reopen)

    def __bool__(self) -> bool:
        return bool(self.trackers)

    def _each(self, what: str, call: Callable[[Tracker], Any]) -> None:
        for tracker in list(self.trackers):
            try:
                call(tracker)
            except Exception as exc:  # noqa: BLE001 - any failure of a tracker must not stop training
                self.trackers.remove(tracker)
                first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
                self.warn(f"--log {tracker.name} failed while {what} ({type(exc).__name__}: {first}); it is off for the rest of this "
                          "command, and the run dir keeps every number")

    def start(self, run_dir: Path, params: Mapping[str, Any]) -> None:
        """Open every back-end's run for ``run_dir`` (reopening the runs its record names) and record them there.

        Failing here is still "at start": a :class:`BadInput`, exit 2, before any epoch.
        """
        previous = read_record(run_dir)
        record = dict(previous)
        for tracker in self.trackers:
            try:
                record[tracker.name] = tracker.start(run_dir, params, previous.get(tracker.name))
            except ProxyEmbedError:
                raise
            except Exception as exc:
                first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
                raise BadInput(f"--log {tracker.name}: could not start a run ({type(exc).__name__}: {first})",
                               hint="check the tracker's settings, or train without --log") from None
        if self.trackers:
            write_record(run_dir, record)

    def log_step(self, step: int, loss: float, lrs: Mapping[str, float]) -> None:
        """One training step's loss and the learning rate of each parameter group (global step count)."""
        metrics = {"train/loss": loss, **{f"lr/{k}": v for k, v in lrs.items()}}
        self._each("logging a step", lambda t: t.log_metrics(metrics, step))

    def log_epoch(self, record: Mapping[str, Any], times: Mapping[str, float], curves: Path | None) -> None:
        """An epoch's metrics.jsonl record (epoch 0: the untrained network), its stage times and the curves so far."""
        epoch = int(record["epoch"])
        metrics = {("epoch/" + k if k in ("loss", "lr") else k): float(v) for k, v in record.items()
                   if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        metrics.update({_TIMES + k: v for k, v in times.items()})
        self._each(f"logging epoch {epoch}", lambda t: t.log_metrics(metrics, epoch))
        self._each(f"logging epoch {epoch}", lambda t: t.flush())
        if curves is not None and curves.is_file():
            self._each("logging the curves", lambda t: t.log_image("training_curves", curves, epoch))

    def log_artifact(self, path: Path, folder: str) -> None:
        """Keep ``path`` with the run (MLflow, W&B)."""
        if path.is_file():
            self._each(f"uploading {path.name}", lambda t: t.log_artifact(path, folder))

    def log_report(self, stage: str, rows: list[dict[str, Any]], metrics: Mapping[str, float], verdict: str) -> None:
        """A later stage's results on the training run: its table, headline numbers and verdict (``export``, ``check``)."""
        self._each(f"logging the {stage} table", lambda t: t.log_table(f"{stage}/validation", rows, self.step))
        self._each(f"logging the {stage} numbers", lambda t: t.log_metrics({f"{stage}/{k}": v for k, v in metrics.items()}, self.step))
        self._each(f"logging the {stage} verdict", lambda t: t.log_tags({f"{stage}.verdict": verdict}))

    def close(self, ok: bool) -> None:
        """End every run (finished, or failed when the command raised)."""
        self._each("closing", lambda t: t.close("finished" if ok else "failed"))
        self.trackers = []


@contextmanager
def tracking(names: Sequence[TrackerName], *, warn: Callable[[str], None], mlflow_uri: str | None = None) -> Iterator[Tracking]:
    """The trackers ``names`` connected (an error now if one is missing or unreachable), closed when the block ends."""
    session = Tracking([connect(n, mlflow_uri=mlflow_uri) for n in dict.fromkeys(names)], warn)
    ok = False
    try:
        yield session
        ok = True
    finally:
        session.close(ok)


@contextmanager
def reopen(run_dir: Path, *, warn: Callable[[str], None]) -> Iterator[Tracking]:
    """The tracker runs ``run_dir`` records (``export --log``, ``check --log``); :class:`BadInput` when it records none."""
    if not Path(run_dir).is_dir():
        raise BadInput(f"--log: '{run_dir}' is not a run dir", hint="give the run dir written by `proxyembed train --log ...`")
    record = read_record(run_dir)
    if not record:
        raise BadInput(f"--log: '{run_dir}' was not trained with --log, so it has no tracker run to add to",
                       hint="train with --log tensorboard|mlflow|wandb, or leave out --log")
    uri = record.get("mlflow", {}).get("tracking_uri")
    session = Tracking([connect(n, mlflow_uri=uri) for n in record], warn)
    try:
        session.start(run_dir, {})
        session.step = max((int(h["epoch"]) for h in read_history(run_dir)), default=0)
        yield session
    finally:
        session.close(True)  # the training run finished; a failed export or check says so in its verdict, not in the run's status
