"""Real photos keep the defaults honest: a CI-sized run on a subset of Caltech-101 (../shared/data/caltech101)
must clearly beat the untrained network on unseen classes, and (``-m slow``) must not fall behind the
hand-written pytorch-metric-learning loop of benchmarks/reference_pml.py.

The subset is symlinked into a temporary folder: classes of the suggested train / eval split (the data's
README), a fixed number of images each.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from proxyembed.training.config import resolve_config
from proxyembed.training.trainer import train

CALTECH = Path(__file__).resolve().parents[2] / "shared" / "data" / "caltech101"

pytestmark = pytest.mark.skipif(not (CALTECH / "images").is_dir(), reason=f"real data not found at {CALTECH}")


def _subset(root: Path, part: str, classes: int, per_class: int) -> Path:
    """The first ``classes`` classes of the ``part`` ("train" / "eval") half, ``per_class`` images each, as symlinks."""
    for name in (CALTECH / f"{part}_classes.txt").read_text().split()[:classes]:
        (root / part / name).mkdir(parents=True)
        for img in sorted((CALTECH / "images" / name).glob("*.jpg"))[:per_class]:
            (root / part / name / img.name).symlink_to(img)
    return root / part


@pytest.mark.heavy  # six epochs of a resnet18 on 2,000 photos: about a minute
def test_default_training_learns_on_real_photos(tmp_path: Path) -> None:
    # From scratch a resnet18 needs some 10k image-steps before unseen classes gain clearly (about a minute here).
    train_dir, eval_dir = _subset(tmp_path, "train", 50, 40), _subset(tmp_path, "eval", 20, 30)
    cfg = resolve_config({"data": str(train_dir), "eval_data": str(eval_dir), "image_size": 64, "epochs": 6, "eval_untrained": True})
    result = train(cfg, tmp_path / "run")
    gain = result.final["recall@1"] - result.initial["recall@1"]
    assert gain > 0.05, f"Recall@1 on unseen classes {result.initial['recall@1']:.3f} -> {result.final['recall@1']:.3f}"


@pytest.mark.slow
def test_defaults_do_not_fall_behind_the_reference_loop(tmp_path: Path) -> None:
    pytest.importorskip("pytorch_metric_learning", reason='the reference loop needs pip install -e ".[bench]"')
    from helpers.benchmarks import benchmark_module
    from proxyembed.data import resolve_data

    reference_pml = benchmark_module("reference_pml")
    proxyembed_run, reference_run = reference_pml.proxyembed_run, reference_pml.reference_run

    train_dir, eval_dir = _subset(tmp_path, "train", 50, 40), _subset(tmp_path, "eval", 30, 40)
    split = resolve_data(str(train_dir), eval_data=str(eval_dir))
    for loss in ("proxy_anchor", "proxy_nca"):
        ref = reference_run(split, 64, loss, seed=0, epochs=4, batch=32, dim=64, backbone="resnet18")
        ours = proxyembed_run(str(train_dir), 64, loss, 0, 4, 32, 64, "resnet18", {"eval_data": str(eval_dir)}, val=False)
        assert ours["metrics"]["recall@1"] >= ref["metrics"]["recall@1"] - 0.01, (loss, ours["metrics"], ref["metrics"])
