"""benchmarks/reference_pml.py --combine: runs split over processes (by loss, size or seed) make one table,
with the seeds of the same data, size and loss pooled into one row and a seed that appears twice refused;
tuning runs pooled over folds and paired with the defaults; --fold validates on the chosen fifth of the
training classes and leaves the unseen half alone."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import reference_pml  # noqa: E402

from proxyembed.data import resolve_data  # noqa: E402
from proxyembed.data.types import hold_out_classes  # noqa: E402


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
    _part(results_dir, "d", [1], 64, [0.40])
    reference_pml.main(["--combine", "all", "d", "--name", "more"])  # a combined file combined again with a new seed
    more = (results_dir / "more.md").read_text()
    assert "| caltech101 | 64 | proxy_anchor | 0, 1 | 30.0 ± 0.0 | 45.0 ± 7.1 | +15.0 |" in more
    assert all(f"`python benchmarks/reference_pml.py {name}`" in more for name in "abcd")
    assert json.loads((results_dir / "more.json").read_text())["parts"] == ["a", "b", "c", "d"]  # the runs' files, not "all"


def test_combine_refuses_a_seed_twice(results_dir: Path) -> None:
    _part(results_dir, "a", [0, 1], 128, [0.40, 0.41])
    _part(results_dir, "b", [1], 128, [0.36])
    with pytest.raises(SystemExit, match=r"seeds \[1\]"):
        reference_pml.main(["--combine", "a", "b", "--name", "all"])
    assert not (results_dir / "all.json").exists()


def test_fold_holds_out_its_fifth_of_the_training_classes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    src = tmp_path / "caltech"
    train, unseen = [f"a{i:02d}" for i in range(10)], [f"b{i:02d}" for i in range(10)]
    for name in train + unseen:
        (src / "images" / name).mkdir(parents=True)
        for j in range(3):
            Image.new("RGB", (8, 8), (j, 0, 0)).save(src / "images" / name / f"{j}.jpg")
    (src / "train_classes.txt").write_text("\n".join(train))
    (src / "eval_classes.txt").write_text("\n".join(unseen))
    monkeypatch.setattr(reference_pml, "CALTECH", src)
    for fold in range(reference_pml.FOLDS):
        split = resolve_data(str(reference_pml.caltech_subset(tmp_path / f"fold{fold}", per_class=2, fold=fold)))
        rest, held = hold_out_classes(split.train, reference_pml.VAL_FRACTION)
        names = {part: sorted({split.class_names[s.label].split("_", 1)[1] for s in samples}) for part, samples in
                 (("held", held), ("rest", rest), ("eval", split.eval))}
        assert names["held"] == train[2 * fold : 2 * fold + 2]
        assert sorted(names["rest"] + names["held"]) == train
        assert names["eval"] == unseen
        assert len(split.train) == 2 * len(train)  # the per-class cap still applies
    with pytest.raises(SystemExit, match="--fold 5"):
        reference_pml.caltech_subset(tmp_path / "bad", per_class=2, fold=5)
    with pytest.raises(SystemExit) as exit_info:  # a fold means nothing outside tuning on Caltech-101
        reference_pml.main(["--fold", "1", "--datasets", "synthetic", "--tune", ""])
    assert exit_info.value.code == 2


def _tune_part(tmp: Path, name: str, variant: str, fold: int, r1: list[float]) -> None:
    runs = [{**_run(v, 0.1), "seed": seed, "fold": fold} for seed, v in enumerate(r1)]
    row = {"variant": variant, "dataset": "caltech101", "size": 64, "loss": "proxy_anchor", "runs": runs}
    info = {"cpu": "cpu", "cores": 2, "memory_gib": 1, "python": "3", "versions": {}}
    argv = ["--fold", str(fold), "--tune", variant, "--name", name]
    (tmp / f"{name}.json").write_text(json.dumps({"machine": info, "args": {}, "argv": argv, "results": [row]}))


def test_combine_tune_pairs_each_variant_with_the_defaults(results_dir: Path) -> None:
    _tune_part(results_dir, "base0", "", 0, [0.50, 0.60])
    _tune_part(results_dir, "base1", "", 1, [0.40])
    _tune_part(results_dir, "max0", "pool=max", 0, [0.52, 0.63])
    _tune_part(results_dir, "max1", "pool=max", 1, [0.44])
    reference_pml.main(["--combine", "base0", "base1", "max0", "max1", "--name", "cv"])
    md = (results_dir / "cv.md").read_text()
    assert "| the defaults | caltech101 | 64 | proxy_anchor | 3 | 50.0 | 10.0 |  |  |" in md
    # paired differences +2, +3, +4: mean +3.0, standard error 1/sqrt(3)
    assert "| `pool=max` | caltech101 | 64 | proxy_anchor | 3 | 53.0 | 10.0 | +3.0 ± 0.6 (3) | +0.0 ± 0.0 (3) |" in md
    assert "`python benchmarks/reference_pml.py --fold 1 --tune '' --name base1`" in md  # pasteable: the empty variant quoted
    _tune_part(results_dir, "base2", "", 2, [0.30])
    reference_pml.main(["--combine", "cv", "base2", "--name", "cv_more"])  # a pooled file pooled again with a new run
    more = (results_dir / "cv_more.md").read_text()
    assert "| the defaults | caltech101 | 64 | proxy_anchor | 4 | 45.0 |" in more
    assert "--name base1`" in more and "--name base2`" in more  # every run's command survives the second combine
    assert json.loads((results_dir / "cv_more.json").read_text())["parts"] == ["base0", "base1", "max0", "max1", "base2"]
    _tune_part(results_dir, "max3", "pool=max", 3, [0.30])  # before the defaults of its fold: still listed after them
    reference_pml.main(["--combine", "max3", "cv_more", "--name", "cv_order"])
    table = [line.split(" | ")[0] for line in (results_dir / "cv_order.md").read_text().splitlines() if "| caltech101 |" in line]
    assert table == ["| the defaults", "| `pool=max`"]
    old = json.loads((results_dir / "base0.json").read_text())  # written before runs carried their seed and fold
    for run in old["results"][0]["runs"]:
        del run["seed"], run["fold"]
    (results_dir / "old.json").write_text(json.dumps({**old, "args": {"seeds": [0, 1]}}))
    reference_pml.main(["--combine", "old", "--name", "cv_old"])
    assert "| the defaults | caltech101 | 64 | proxy_anchor | 2 | 55.0 |" in (results_dir / "cv_old.md").read_text()
    _tune_part(results_dir, "again", "pool=max", 1, [0.45])
    with pytest.raises(SystemExit, match="seed 0 fold 1"):
        reference_pml.main(["--combine", "max1", "again", "--name", "cv2"])


def test_the_reference_loop_repeats_itself_for_a_seed() -> None:
    pytest.importorskip("pytorch_metric_learning", reason='the reference loop needs pip install -e ".[bench]"')
    import numpy as np

    split = resolve_data("synthetic:train_classes=6,eval_classes=6,per_class=8,size=40")
    runs = []
    for noise in (1, 2):  # numpy's global state differs before each run, as in two processes
        np.random.seed(noise)
        runs.append(reference_pml.reference_run(split, 32, "proxy_anchor", seed=3, epochs=1, batch=16, dim=16, backbone="resnet18"))
    assert runs[0]["metrics"] == runs[1]["metrics"]
