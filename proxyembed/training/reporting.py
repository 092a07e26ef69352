"""Training progress: the epoch vocabulary the trainer speaks, said through the runtime's one progress protocol.

:class:`TrainingReporter` turns the trainer's hooks (an epoch phase begins, an epoch ends with its record)
into :class:`~proxyembed.runtime.progress.Reporter` calls; the runtime's
:class:`~proxyembed.runtime.progress.RichReporter` draws them (a bar per epoch phase with the loss and
images/s, one summary line per epoch) for ``proxyembed train`` and ``proxyembed.train(..., progress=True)``.
Export reports through the same protocol, so there is one reporter to draw both.
"""

from __future__ import annotations

from typing import Any

from proxyembed.runtime.progress import LineKind, Reporter


class TrainingReporter:
    """The trainer's progress hooks over a :class:`Reporter` (the default says nothing: library use, tests)."""

    def __init__(self, shown: Reporter | None = None) -> None:
        self.shown = shown or Reporter()

    def log(self, message: str, *, kind: LineKind = "info") -> None:
        """A line of information (rich markup allowed)."""
        self.shown.log(message, kind=kind)

    def epoch_start(self, epoch: int, steps: int, phase: str) -> None:
        """A phase (``train`` or ``eval``) of an epoch begins with ``steps`` units of work (epoch 0: the untrained network)."""
        label = f"epoch {epoch} {phase}" if epoch else ("untrained eval" if phase == "eval" else phase)
        self.shown.phase(label, steps)

    def advance(self, n: int, **fields: float) -> None:
        """``n`` more units done; ``fields`` such as loss and images/s for display."""
        self.shown.advance(n, **fields)

    def epoch_end(self, record: dict[str, Any]) -> None:
        """An epoch's metrics.jsonl record, as one summary line."""
        parts = [f"epoch {record['epoch']:>3}"]
        if record.get("loss") is not None:
            parts.append(f"loss {record['loss']:.4f}")
        parts += [f"{k} {v:.4f}" for k, v in record.items() if k.startswith(("recall@", "map@r", "nmi"))]
        parts.append(f"{record['time_s']:.1f}s")
        self.shown.log("  ".join(parts))
