"""The training-curve PNG of a run dir: loss and retrieval metrics per epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from proxyembed.runtime.files import atomic_write


def plot_curves(history: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Draw loss (left) and Recall@K / MAP@R (right) against epoch; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    trained = [h for h in history if h.get("loss") is not None]
    if trained:
        ax_loss.plot([h["epoch"] for h in trained], [h["loss"] for h in trained], "o-", color="tab:red")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss")
    ax_loss.grid(alpha=0.3)
    evaluated = [h for h in history if "recall@1" in h]
    keys = [k for k in (evaluated[0] if evaluated else {}) if k.startswith("recall@")][:3] + ["map@r"]
    for key in keys:
        pts = [(h["epoch"], h[key]) for h in evaluated if key in h]
        if pts:
            ax_m.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=key)
    ax_m.set(xlabel="epoch", ylabel="held-out classes", title="retrieval (unseen classes)", ylim=(0, 1))
    ax_m.grid(alpha=0.3)
    if keys and evaluated:
        ax_m.legend(loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)
