"""benchmarks/reference_pml.py --combine: runs split over processes (by loss, size or seed) make one table,
with the seeds of the same data, size and loss pooled into one row and a seed that appears twice refused."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import reference_pml  # noqa: E402


def _run(r1: float, mapr: float) -> dict[str, Any]:
    return {"metrics": {"recall@1": r1, "map@r": mapr}, "wall_s": 10.0, "train_images_per_s": 5.0}


def _part(tmp: Path, name: str, seeds: list[int], size: int, ours: list[float]) -> None:
    row = {
        "dataset": "caltech101", "size": size, "loss": "proxy_anchor", "seeds": seeds,
        "runs": {"reference": [_run(0.30, 0.07) for _ in seeds], "proxyembed": [_run(v, 0.09) for v in ours]},
    }
    args = {"seeds": seeds, "backbone": "resnet18", "epochs": 8, "batch": 64, "dim": 128, "per_class": 60}
    info = {"cpu": "cpu", "cores": 2, "memory_gib": 1, "python": "3", "versions": {}}
    (tmp / f"{name}.json").write_text(json.dumps({"machine": info, "args": args, "argv": [name], "results": [row]}))


@pytest.fixture
def results_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(reference_pml, "RESULTS", tmp_path)
    write = reference_pml.write_results
    monkeypatch.setattr(reference_pml, "write_results", lambda name, data, md: write(name, data, md, out=tmp_path))
    return tmp_path


def test_combine_pools_seeds_of_one_setting(results_dir: Path) -> None:
    _part(results_dir, "a", [0], 128, [0.40])
    _part(results_dir, "b", [1, 2], 128, [0.36, 0.38])
    _part(results_dir, "c", [0], 64, [0.50])
    reference_pml.main(["--combine", "a", "b", "c", "--name", "all"])
    rows = json.loads((results_dir / "all.json").read_text())["results"]
    assert [(r["size"], r["seeds"]) for r in rows] == [(128, [0, 1, 2]), (64, [0])]
    assert rows[0]["proxyembed"]["recall@1"]["mean"] == pytest.approx(0.38)
    assert rows[0]["proxyembed"]["recall@1"]["std"] == pytest.approx(0.02)
    md = (results_dir / "all.md").read_text()
    assert "| caltech101 | 128 | proxy_anchor | 0, 1, 2 | 30.0 ± 0.0 | 38.0 ± 2.0 | +8.0 |" in md
    assert "| caltech101 | 64 | proxy_anchor | 0 | 30.0 | 50.0 | +20.0 |" in md  # one seed: no spread to show


def test_combine_refuses_a_seed_twice(results_dir: Path) -> None:
    _part(results_dir, "a", [0, 1], 128, [0.40, 0.41])
    _part(results_dir, "b", [1], 128, [0.36])
    with pytest.raises(SystemExit, match=r"seeds \[1\]"):
        reference_pml.main(["--combine", "a", "b", "--name", "all"])
    assert not (results_dir / "all.json").exists()
