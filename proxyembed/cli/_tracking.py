"""``--log`` on ``export`` and ``check``: the tracker runs a training run dir records, reopened.

Its own module, not :mod:`._common`: the tracking package reads run dirs (``proxyembed.training.run_dir``),
which ``proxyembed serve`` may not import.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from proxyembed.tracking import Tracking


@contextmanager
def reopened_tracking(run_dir: Path | None, out: Console) -> Iterator[Tracking]:
    """The tracker runs ``run_dir`` records, reopened, warnings printed to ``out``; nothing tracked for None."""
    from proxyembed.tracking import Tracking, reopen  # only when a command runs: --help stays light

    if run_dir is None:
        yield Tracking()
        return
    with reopen(run_dir, warn=lambda msg: out.print(f"[yellow]warning:[/] {escape(msg)}", highlight=False)) as session:
        yield session
