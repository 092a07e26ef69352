"""benchmarks/reference_pml.py: the augmented reference loop trains on crops (possibly flipped) of what it
preloaded; every side is scored by the same metric function; --combine makes one table from runs split over
processes (by side, loss, size or seed), pools the seeds of the same data, size and loss, refuses a seed of a
side twice and measures the lead against the better reference loop on each metric; tuning runs pooled over
folds and paired with the defaults; --fold validates on the chosen fifth of the training classes and leaves
the unseen half alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from helpers.benchmarks import benchmark_module
from proxyembed.data import resolve_data
from proxyembed.data.types import hold_out_classes
from proxyembed.training.config import TrainConfig

reference_pml = benchmark_module("reference_pml")


def _run(r1: float, mapr: float) -> dict[str, Any]:
    return {"metrics": {"recall@1": r1, "map@r": mapr}, "wall_s": 10.0, "train_images_per_s": 5.0}


def _part(tmp: Path, name: str, seeds: list[int], size: int, ours: list[float], augmented: list[float] | None = None) -> None:
    """A results file as written before the augmented loop existed (runs without their seed), or with ``augmented``
    the augmented loop's R@1 alone, as ``--sides reference_augmented`` writes it."""
    if augmented is None:
        runs = {"reference": [_run(0.30, 0.07) for _ in seeds], "proxyembed": [_run(v, 0.09) for v in ours]}
    else:
        runs = {"reference_augmented": [{**_run(v, 0.08), "seed": s} for s, v in zip(seeds, augmented, strict=True)]}
    row = {"dataset": "caltech101", "size": size, "loss": "proxy_anchor", "seeds": seeds, "runs": runs}
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
    assert "| caltech101 | 128 | proxy_anchor | 0, 1, 2 | 30.0 ± 0.0 | – | 38.0 ± 2.0 | +8.0 | 7.0 ± 0.0 | – | 9.0 ± 0.0 | +2.0 |" in md
    assert "| caltech101 | 64 | proxy_anchor | 0 | 30.0 | – | 50.0 | +20.0 |" in md  # one seed: no spread to show
    _part(results_dir, "d", [1], 64, [0.40])
    reference_pml.main(["--combine", "all", "d", "--name", "more"])  # a combined file combined again with a new seed
    more = (results_dir / "more.md").read_text()
    assert "| caltech101 | 64 | proxy_anchor | 0, 1 | 30.0 ± 0.0 | – | 45.0 ± 7.1 | +15.0 |" in more
    assert all(f"`python benchmarks/reference_pml.py {name}`" in more for name in "abcd")
    assert json.loads((results_dir / "more.json").read_text())["parts"] == ["a", "b", "c", "d"]  # the runs' files, not "all"


def test_combine_refuses_a_seed_twice(results_dir: Path) -> None:
    _part(results_dir, "a", [0, 1], 128, [0.40, 0.41])
    _part(results_dir, "b", [1], 128, [0.36])
    with pytest.raises(SystemExit, match="seed 1 of .*side reference,"):
        reference_pml.main(["--combine", "a", "b", "--name", "all"])
    assert not (results_dir / "all.json").exists()


def test_combine_names_each_sides_seeds_where_they_differ(results_dir: Path) -> None:
    _part(results_dir, "a", [0, 1], 64, [0.40])  # the plain loop ran seeds 0 and 1, proxyembed seed 0 only
    reference_pml.main(["--combine", "a", "--name", "all"])
    md = (results_dir / "all.md").read_text()
    assert "| caltech101 | 64 | proxy_anchor | 0, 1 (proxyembed: 0) | 30.0 ± 0.0 | – | 40.0 | +10.0 |" in md  # no spread of one run


def test_combine_refuses_a_missing_or_damaged_file_in_one_line(results_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _part(results_dir, "a", [0], 64, [0.40])
    (results_dir / "cut.json").write_text('{"machine": {"cpu"')  # a file cut short
    for name, says in (("nosuch", "no results file"), ("cut", "is not valid JSON")):
        with pytest.raises(SystemExit) as exit_info:
            reference_pml.main(["--combine", "a", name, "--name", "all"])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and says in err and err.count("\n") == 1
    assert not (results_dir / "all.json").exists()


def test_combine_measures_the_lead_against_the_better_loop_on_each_metric(results_dir: Path) -> None:
    _part(results_dir, "old", [0, 1], 64, [0.40, 0.42])  # plain loop 30.0 / 7.0, proxyembed 41.0 / 9.0
    _part(results_dir, "aug", [0, 1], 64, [], augmented=[0.34, 0.36])  # augmented loop 35.0 / 8.0, run on its own
    reference_pml.main(["--combine", "old", "aug", "--name", "all"])
    row = json.loads((results_dir / "all.json").read_text())["results"][0]
    assert row["better_reference"] == {"recall@1": "reference_augmented", "map@r": "reference_augmented"}
    assert row["lead"] == {"recall@1": pytest.approx(0.06), "map@r": pytest.approx(0.01)}
    assert [r["seed"] for r in row["runs"]["reference_augmented"]] == [0, 1]
    md = (results_dir / "all.md").read_text()
    line = "| 30.0 ± 0.0 | 35.0 ± 1.4 | 41.0 ± 1.4 | +6.0 | 7.0 ± 0.0 | 8.0 ± 0.0 | 9.0 ± 0.0 | +1.0 | 10 | 10 | 10 |"
    assert f"| caltech101 | 64 | proxy_anchor | 0, 1 {line}" in md
    _part(results_dir, "aug_again", [1], 64, [], augmented=[0.50])
    with pytest.raises(SystemExit, match="seed 1 of .*side reference_augmented"):
        reference_pml.main(["--combine", "all", "aug_again", "--name", "twice"])


def test_combine_takes_only_the_named_sides_of_a_file(results_dir: Path) -> None:
    """An older file's reference loops beside newer proxyembed runs: its own proxyembed runs are left out, not pooled."""
    _part(results_dir, "old", [0, 1], 64, [0.40, 0.42])  # plain loop 30.0 / 7.0 and an older proxyembed 41.0
    _part(results_dir, "new", [0, 1], 64, [0.44, 0.46])  # a newer proxyembed 45.0 (and the plain loop again)
    reference_pml.main(["--combine", "old:reference", "new:proxyembed", "--name", "mixed"])
    row = json.loads((results_dir / "mixed.json").read_text())["results"][0]
    assert row["proxyembed"]["recall@1"]["mean"] == pytest.approx(0.45)
    assert row["lead"]["recall@1"] == pytest.approx(0.15)
    assert json.loads((results_dir / "mixed.json").read_text())["parts"] == ["old", "new"]
    with pytest.raises(SystemExit, match="unknown side"):
        reference_pml.main(["--combine", "old:plain", "--name", "bad"])


def test_each_side_keeps_its_own_batch_unless_one_is_pinned(results_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop trains at 64 as users write it, proxyembed at its default; --batch pins both; the table says which ran what."""
    batches: dict[str, list[int | None]] = {"reference": [], "proxyembed": []}

    def fake(side: str, batch: int | None) -> dict[str, Any]:
        batches[side].append(batch)
        return {**_run(0.5, 0.1), "batch": batch or TrainConfig().batch_size}

    monkeypatch.setattr(reference_pml, "reference_run", lambda split, size, loss, seed, epochs, batch, *a, **k: fake("reference", batch))
    monkeypatch.setattr(reference_pml, "proxyembed_run", lambda data, size, loss, seed, epochs, batch, *a, **k: fake("proxyembed", batch))
    common = ["--datasets", "synthetic", "--losses", "proxy_anchor", "--seeds", "0"]
    reference_pml.main([*common, "--name", "own"])
    assert batches == {"reference": [reference_pml.REFERENCE_BATCH] * 2, "proxyembed": [None]}
    default = TrainConfig().batch_size
    assert f"batch {reference_pml.REFERENCE_BATCH} (plain, augmented), {default} (proxyembed)" in (results_dir / "own.md").read_text()
    reference_pml.main([*common, "--batch", "16", "--name", "pinned"])
    assert batches["reference"][2:] == [16, 16] and batches["proxyembed"][1:] == [16]
    assert "epochs, batch 16, " in (results_dir / "pinned.md").read_text()
    _part(results_dir, "old", [0], 64, [0.40])  # written before runs named their batch: the file's --batch (64) holds
    reference_pml.main(["--combine", "old:reference", "own:proxyembed", "--name", "mixed"])
    assert f"batch 64 (plain), {default} (proxyembed)" in (results_dir / "mixed.md").read_text()


def _coordinate_image(height: int, width: int) -> torch.Tensor:
    """Channel 0 the row, channel 1 the column of each pixel, channel 2 noise: every box of it looks different."""
    rows = torch.arange(height, dtype=torch.float32)[:, None].expand(height, width)
    cols = torch.arange(width, dtype=torch.float32)[None, :].expand(height, width)
    return torch.stack([rows, cols, torch.rand(height, width, generator=torch.Generator().manual_seed(0))])


def test_the_augmented_loop_trains_on_resized_crops_possibly_flipped_of_its_images() -> None:
    from torchvision.transforms import functional as tvf

    size = 12
    side = round(reference_pml.PRELOAD * size)  # as the augmented loop preloads
    img = _coordinate_image(side, side)
    torch.manual_seed(0)
    out = reference_pml.augment_batch(img.expand(24, -1, -1, -1), size)
    assert out.shape == (24, 3, size, size)
    # every box of the input, resized by torchvision's own resized_crop: the oracle the outputs are matched against
    boxes = [(t, left, h, w) for h in range(1, side + 1) for w in range(1, side + 1) for t in range(side - h + 1) for left in range(side - w + 1)]
    crops = torch.stack([tvf.resized_crop(img, *box, [size, size], antialias=True) for box in boxes])
    found, flips = [], []
    for o in out:
        flipped = bool(o[1, 0, 0] > o[1, 0, -1])  # the column coordinate runs backwards
        unflipped = o.flip(-1) if flipped else o
        err = (crops - unflipped).abs().flatten(1).max(1).values
        assert err.min() < 1e-4, "an output is no resized crop of the input"
        found.append(boxes[int(err.argmin())])
        flips.append(flipped)
    areas = [h * w / side**2 for _, _, h, w in found]
    assert all(0.2 <= a <= 1.0 for a in areas), areas  # 25-100% of the area, up to rounding the sides to pixels
    assert all(3 / 4 - 0.15 <= w / h <= 4 / 3 + 0.15 for _, _, h, w in found)
    assert min(areas) < 0.7 and len(set(found)) > 12  # real crops, drawn for each image on its own
    assert 4 <= sum(flips) <= 20  # flips about half the time


def test_every_side_is_scored_by_the_same_metric_function(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("pytorch_metric_learning", reason='the reference loop needs pip install -e ".[bench]"')
    import proxyembed.runtime.evaluation as runtime_evaluation
    from proxyembed.runtime import metrics

    # the benchmark's reference sides and proxyembed's evaluation call the one function of the runtime
    assert reference_pml.retrieval_metrics is metrics.retrieval_metrics is runtime_evaluation.retrieval_metrics
    calls: list[dict[str, float]] = []

    def recorded(*args: Any, **kwargs: Any) -> dict[str, float]:
        calls.append(metrics.retrieval_metrics(*args, **kwargs))
        return calls[-1]

    monkeypatch.setattr(reference_pml, "retrieval_metrics", recorded)
    monkeypatch.setattr(runtime_evaluation, "retrieval_metrics", recorded)
    shapes: list[tuple[int, ...]] = []
    augment = reference_pml.augment_batch
    monkeypatch.setattr(reference_pml, "augment_batch", lambda x, size: shapes.append(tuple(x.shape)) or augment(x, size))
    data = "synthetic:train_classes=6,eval_classes=6,per_class=8,size=40"
    split = resolve_data(data)
    for augmented in (False, True):
        run = reference_pml.reference_run(split, 32, "proxy_anchor", 0, 1, 16, 16, "resnet18", augment=augmented)
        assert run["metrics"] is calls[-1]
    assert shapes and all(s[2:] == (40, 40) for s in shapes)  # only the augmented loop, on images preloaded at 1.25 x 32
    before = len(calls)
    ours = reference_pml.proxyembed_run(data, None, "proxy_anchor", 0, 1, 16, 16, "resnet18", {}, val=False)
    assert len(calls) > before
    assert any(all(ours["metrics"][k] == v for k, v in call.items()) for call in calls[before:])


def _fake_caltech(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], list[str]]:
    """A Caltech-101 folder of 10 training and 10 unseen classes, 3 tiny images each, in place of the real one."""
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
    return train, unseen


def test_fold_holds_out_its_fifth_of_the_training_classes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    train, unseen = _fake_caltech(tmp_path, monkeypatch)
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


def test_combine_tune_pairs_a_nested_variant_with_the_nested_defaults(results_dir: Path) -> None:
    _tune_part(results_dir, "base", "", 0, [0.50, 0.60])
    _tune_part(results_dir, "nested", "select_fraction=0", 0, [0.46, 0.56])
    _tune_part(results_dir, "chosen", "select_fraction=0.2", 0, [0.42, 0.54])
    _tune_part(results_dir, "ema", "select_fraction=0,ema_decay=0.98", 0, [0.47, 0.59])
    reference_pml.main(["--combine", "base", "nested", "chosen", "ema", "--name", "cv"])
    md = (results_dir / "cv.md").read_text()
    # select_fraction=0 against the defaults; the other nested variants against select_fraction=0, not the defaults
    assert "| `select_fraction=0` | caltech101 | 64 | proxy_anchor | 2 | 51.0 | 10.0 | -4.0 ± 0.0 (2) |" in md
    assert "| `select_fraction=0.2` | caltech101 | 64 | proxy_anchor | 2 | 48.0 | 10.0 | -3.0 ± 1.0 (2) |" in md
    assert "| `select_fraction=0,ema_decay=0.98` | caltech101 | 64 | proxy_anchor | 2 | 53.0 | 10.0 | +2.0 ± 1.0 (2) |" in md


def test_the_reference_loop_repeats_itself_for_a_seed() -> None:
    pytest.importorskip("pytorch_metric_learning", reason='the reference loop needs pip install -e ".[bench]"')
    import numpy as np

    split = resolve_data("synthetic:train_classes=6,eval_classes=6,per_class=8,size=40")
    runs = []
    for noise in (1, 2):  # numpy's global state differs before each run, as in two processes
        np.random.seed(noise)
        runs.append(reference_pml.reference_run(split, 32, "proxy_anchor", seed=3, epochs=1, batch=16, dim=16, backbone="resnet18"))
    assert runs[0]["metrics"] == runs[1]["metrics"]


def test_select_fraction_chooses_inside_the_rest_and_scores_on_the_fold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--tune select_fraction=F: the run trains on the training classes outside the validation fold, holds F of those
    out to choose best.pt (every epoch evaluated) and is scored on the fold; the unseen classes are not in it."""
    train, unseen = _fake_caltech(tmp_path, monkeypatch)
    split = resolve_data(str(reference_pml.caltech_subset(tmp_path / "fold1", per_class=2, fold=1)))
    nested = resolve_data(reference_pml.nested_list(split, tmp_path))
    names = {part: sorted({nested.class_names[s.label].split("_", 1)[1] for s in samples}) for part, samples in
             (("train", nested.train), ("eval", nested.eval))}
    assert names == {"train": [c for c in train if c not in train[2:4]], "eval": train[2:4]}  # fold 1's two classes scored
    assert len(nested.eval) == 4 and len(nested.train) == 16

    calls: list[tuple[str, dict[str, Any], bool, bool]] = []

    def fake(data: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        overrides = args[7]
        calls.append((data, overrides, kwargs["val"], kwargs.get("chosen", False)))
        return _run(0.5, 0.1)

    monkeypatch.setattr(reference_pml, "proxyembed_run", fake)
    monkeypatch.setattr(reference_pml, "write_results", lambda name, data, md: None)
    reference_pml.main(["--datasets", "caltech101", "--sizes", "32", "--losses", "proxy_anchor", "--seeds", "0", "--per-class", "2",
                        "--fold", "1", "--tune", "select_fraction=0", "--tune", "select_fraction=0.25,pool=max"])
    (base_data, base, base_val, base_chosen), (sel_data, sel, sel_val, sel_chosen) = calls
    assert base_data == sel_data and base_data.endswith("nested.csv") and not base_val and not sel_val
    assert base == {"val_fraction": 0} and not base_chosen  # nothing held out: the last epoch, scored on the fold
    assert sel == {"val_fraction": 0.25, "eval_every": 1, "pool": "max"} and sel_chosen  # best.pt chosen on 2 of the 8 classes
