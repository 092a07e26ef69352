"""The convergence benchmark's speed-up: epochs and seconds to reach triplet's final Recall@1, per seed."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.benchmarks import benchmark_module

convergence = benchmark_module("convergence")
caltech_folders, speedups = convergence.caltech_folders, convergence.speedups


def _run(loss: str, seed: int, recalls: list[float], seconds: float) -> dict:
    epochs = [{"epoch": 0, "recall@1": recalls[0], "train_s": 0.0}]
    epochs += [{"epoch": e, "recall@1": r, "train_s": seconds} for e, r in enumerate(recalls[1:], 1)]
    return {"loss": loss, "seed": seed, "epochs": epochs}


def test_speedup_is_triplet_epochs_over_the_loss_epochs() -> None:
    runs = [
        _run("triplet", 0, [0.1, 0.2, 0.3, 0.4, 0.5], 1.0),  # reaches its final 0.5 at epoch 4
        _run("triplet", 1, [0.1, 0.3, 0.6, 0.5, 0.6], 1.0),  # final 0.6, first reached at epoch 2
        _run("proxy", 0, [0.1, 0.5, 0.5, 0.5, 0.5], 2.0),  # epoch 1: 4x in epochs, 4 s / 2 s = 2x in seconds
        _run("proxy", 1, [0.1, 0.2, 0.7, 0.7, 0.7], 2.0),  # epoch 2: 1x in epochs, 2 s / 4 s = 0.5x
        _run("slow", 0, [0.1, 0.1, 0.1, 0.1, 0.1], 1.0),
        _run("slow", 1, [0.1, 0.1, 0.1, 0.1, 0.6], 1.0),  # epoch 4: 0.5x
    ]
    ups = speedups(runs)
    assert ups["triplet"]["epochs"] == (1.0, 0.0) and ups["triplet"]["reached"] == 2
    assert ups["proxy"]["epochs"][0] == pytest.approx(2.5) and ups["proxy"]["seconds"][0] == pytest.approx(1.25)
    assert ups["proxy"]["epochs"][1] == pytest.approx(2.1213203, rel=1e-6)  # stdev of (4, 1)
    assert ups["slow"]["reached"] == 1 and ups["slow"]["seeds"] == 2 and ups["slow"]["epochs"] == (0.5, 0.0)


def test_caltech_folders_follow_the_split_and_cap(tmp_path: Path) -> None:
    root = tmp_path / "caltech"
    for name, count in (("ant", 5), ("bee", 2), ("cat", 4)):
        (root / "images" / name).mkdir(parents=True)
        for i in range(count):
            (root / "images" / name / f"image_{i:04d}.jpg").write_bytes(b"x")
    (root / "train_classes.txt").write_text("ant\nbee\n")
    (root / "eval_classes.txt").write_text("cat\n")
    train, evaluation = caltech_folders(root, tmp_path / "out", per_class=3)
    assert sorted(p.name for p in Path(train, "ant").iterdir()) == ["image_0000.jpg", "image_0001.jpg", "image_0002.jpg"]
    assert len(list(Path(train, "bee").iterdir())) == 2 and sorted(p.name for p in Path(evaluation).iterdir()) == ["cat"]
    assert Path(train, "ant", "image_0000.jpg").resolve() == root / "images" / "ant" / "image_0000.jpg"
