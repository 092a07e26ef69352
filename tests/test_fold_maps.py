"""benchmarks/fold_maps.py: the maps it scores are the trainer's own (a map that keeps every direction is the
within-class whitening rotated, so it scores the same), and its report pairs each training variant with the defaults'
run of the same fold and seed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers.benchmarks import benchmark_module

fold_maps = benchmark_module("fold_maps")


def _embeddings(seed: int, dim: int = 8) -> dict[str, np.ndarray]:
    """Train and validation head outputs of 6 classes x 12 images each, clustered around class centres."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for split, offset in (("train", 0), ("val", 100)):
        y = np.repeat(np.arange(6) + offset, 12)
        centres = rng.normal(size=(6, dim)) * 2
        z = centres[y - offset] + rng.normal(size=(len(y), dim)) * rng.uniform(0.2, 2.0, size=dim)
        out |= {f"{split}_y": y, f"{split}_head_64": z, f"{split}_feat_64": z, f"{split}_stages_64": z}
    return out


def test_maps_keeping_every_direction_score_as_the_whitening_they_rotate() -> None:
    """On 8-d embeddings both the head's LDA and the default map (to 128-d, here all 8 directions: the 5 of the class
    means, 3 random) are the within-class whitening rotated, so they rank exactly as it does."""
    emb = _embeddings(0)
    names = (fold_maps.DEFAULT_MAP, fold_maps.HEAD_MAP, "head, LDA to 128-d (whitening 2)", "head, LDA to 32-d (whitening 2)")
    scores = fold_maps.map_scores(emb, 64, names)
    for name in names:
        assert scores[name] == pytest.approx(scores[fold_maps.HEAD_MAP]), name
    unmapped = fold_maps.map_scores(emb, 64, ("head, no map",))["head, no map"]
    assert scores[fold_maps.HEAD_MAP] != unmapped  # the whitening changed the ranking of these anisotropic clusters


def test_report_pairs_each_variant_with_the_defaults_of_the_same_fold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written: dict[str, object] = {}
    monkeypatch.setattr(fold_maps, "write_results", lambda name, data, md: written.update(name=name, data=data, md=md))
    runs = tmp_path / "runs"
    embeddings = {"base_f0_s0": _embeddings(0), "base_f1_s0": _embeddings(1), "ema_f0_s0": _embeddings(2)}
    for name, fold, r1, over in (("base_f0_s0", 0, 0.50, {}), ("base_f1_s0", 1, 0.40, {}), ("ema_f0_s0", 0, 0.53, {"ema_decay": 0.9})):
        d = runs / name
        d.mkdir(parents=True)
        np.savez(d / "emb.npz", **embeddings[name])
        final = {"val/recall@1": r1, "val/map@r": r1 / 4}  # what the run recorded, under its own day's map: not read
        (d / "result.json").write_text(json.dumps({"fold": fold, "seed": 0, "size": 64, "overrides": over, "final": final, "wall_s": 1.0}))
    fold_maps.report(runs, "t", ["report", str(runs)])
    levers = {row["variant"]: row for row in written["data"]["levers"]}  # type: ignore[index]
    ema = levers['ema {"ema_decay": 0.9}']
    assert ema["runs"] == 1 and ema["pairs"] == [[0, 0]]  # fold 1 has no ema run: not paired
    # the lever is scored under today's default map, refitted on each run's stored features
    refit = {n: fold_maps.map_scores(embeddings[n], 64, (fold_maps.DEFAULT_MAP,))[fold_maps.DEFAULT_MAP] for n in ("base_f0_s0", "ema_f0_s0")}
    assert (ema["d_r1"], ema["d_map"]) == pytest.approx(tuple(100 * np.subtract(refit["ema_f0_s0"], refit["base_f0_s0"])))
    assert refit["ema_f0_s0"] != refit["base_f0_s0"]  # the two runs' features differ, so the check above is not 0 == 0
    assert levers["base (the defaults)"]["runs"] == 2
    maps = {row["variant"] for row in written["data"]["maps"]}  # type: ignore[index]
    assert f"ema: {fold_maps.DEFAULT_MAP}" in maps and f"ema: {fold_maps.HEAD_MAP}" in maps and "head, LDA to 64-d (whitening 2)" in maps
    assert "batch 64 (the base runs')" in written["md"]  # runs that do not record their batch ran at the old pinned 64
    for name in ("base_f0_s0", "base_f1_s0"):  # the same runs as written today, at the default batch they record
        record = json.loads((runs / name / "result.json").read_text())
        (runs / name / "result.json").write_text(json.dumps({**record, "batch": 32}))
    fold_maps.report(runs, "t", ["report", str(runs)])
    assert "batch 32 (the base runs')" in written["md"]
