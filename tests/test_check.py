"""proxyembed.check as a library: tolerances, baseline files, determinism, query->gallery data, comparison rules.

End-to-end CLI behaviour (exit codes, last line, torch blocked) is in test_check_cli.py.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from helpers.bundles import make_tiny_bundle, pattern_image
from proxyembed.check import (
    CheckOptions,
    Tolerances,
    baseline_dict,
    compare,
    evaluate_bundle,
    merged_baseline,
    parse_tolerances,
    read_baseline,
    resolution_notes,
    write_json_atomic,
)
from proxyembed.data.resolve import resolve_eval_data
from proxyembed.data.types import DataSplit, Sample
from proxyembed.runtime.errors import BadInput

SYN = "synthetic:train_classes=2,eval_classes=10,per_class=6,size=40"


@pytest.fixture(autouse=True)
def _no_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # any new 'import torch' in the check path raises


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("lib") / "bundle")


@pytest.fixture(scope="module")
def split() -> DataSplit:
    return resolve_eval_data(SYN)


def test_tolerance_defaults_overrides_and_floors() -> None:
    tol = parse_tolerances(["recall@1=0.5,map@r=3", "all=1.5"], ["recall@1=0.8"])
    assert (tol.limit("recall@1"), tol.limit("map@r"), tol.limit("recall@4")) == (0.5, 3.0, 1.5)
    assert tol.floors == {"recall@1": 0.8}
    default = parse_tolerances()
    assert (default.limit("recall@1"), default.limit("recall@2"), default.limit("r_precision")) == (1.0, 2.0, 2.0)


@pytest.mark.parametrize(
    ("drops", "floors", "message"),
    [
        (["recall@1"], [], "--max-drop 'recall@1' is not METRIC=NUMBER"),
        (["=1"], [], "is not METRIC=NUMBER"),
        (["recall@1=lots"], [], "is not METRIC=NUMBER"),
        (["recall@1=-1"], [], "cannot be negative"),
        ([], ["map@r=95"], "not a fraction between 0 and 1"),
    ],
)
def test_bad_tolerances_are_one_line_errors(drops: list[str], floors: list[str], message: str) -> None:
    with pytest.raises(BadInput, match=message):
        parse_tolerances(drops, floors)


def test_unknown_metric_names_are_refused() -> None:
    with pytest.raises(BadInput, match=r"--min: unknown metric\(s\) \['recall@16'\]"):
        Tolerances(floors={"recall@16": 0.5}).validate(["recall@1", "map@r"])


def test_same_bundle_data_and_settings_give_identical_numbers(bundle: Path, split: DataSplit) -> None:
    opts = CheckOptions(artifact="all", threads=2)
    first, second = evaluate_bundle(bundle, split, SYN, opts), evaluate_bundle(bundle, split, SYN, opts)
    assert {p: r.metrics for p, r in first.artifacts.items()} == {p: r.metrics for p, r in second.artifacts.items()}
    assert first.data == second.data and set(first.artifacts) == {"fp32", "int8"}
    assert first.artifacts["fp32"].metrics["recall@1"] == pytest.approx(0.2)


def test_baseline_round_trip(bundle: Path, split: DataSplit, tmp_path: Path) -> None:
    ev = evaluate_bundle(bundle, split, SYN, CheckOptions(artifact="fp32"))
    path = tmp_path / "b.json"
    write_json_atomic(path, baseline_dict(ev))
    back = read_baseline(path)
    assert back.artifacts["fp32"].metrics == ev.artifacts["fp32"].metrics
    assert back.data == ev.data and back.ks == [1, 2, 4, 8] and back.bundle["manifest_sha256"] == ev.bundle["manifest_sha256"]
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: "{ not json", "cannot read baseline"),
        (lambda d: {**d, "kind": "other"}, "is not a proxyembed check baseline"),
        (lambda d: {**d, "format_version": 99}, "format_version 99 is not supported"),
        (lambda d: {**d, "data": {}}, "missing field 'data.sha256'"),
        (lambda d: {**d, "ks": [1, 0]}, r"ks must list positive integers, got \[1, 0\]"),
        (lambda d: {**d, "ks": ["1"]}, r'"ks\[0\]": "1" is not an integer'),
        (lambda d: {**d, "artifacts": {"fp32": {**d["artifacts"]["fp32"], "threads": "4"}}}, 'fp32.threads": "4" is not an integer or null'),
        (lambda d: {**d, "artifacts": []}, r'"artifacts": \[\] is not an object'),
        (lambda d: {**d, "artifacts": {"fp32": {**d["artifacts"]["fp32"], "metrics": {"recall@1": 85}}}}, "not fractions between 0 and 1"),
    ],
)
def test_malformed_baselines_name_the_file(edit, message: str, bundle: Path, split: DataSplit, tmp_path: Path) -> None:
    good = baseline_dict(evaluate_bundle(bundle, split, SYN, CheckOptions(artifact="fp32")))
    path = tmp_path / "b.json"
    edited = edit(good)
    path.write_text(edited if isinstance(edited, str) else json.dumps(edited))
    with pytest.raises(BadInput, match=message) as err:
        read_baseline(path)
    assert str(path) in err.value.message


def test_atomic_write_keeps_the_old_file_when_serialising_fails(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    path.write_text('{"old": true}')
    with pytest.raises(TypeError):
        write_json_atomic(path, {"bad": object()})
    assert path.read_text() == '{"old": true}' and [p.name for p in tmp_path.iterdir()] == ["b.json"]


def test_query_gallery_data_uses_the_gallery(bundle: Path) -> None:
    colours = ("red", "green", "blue")
    queries = [Sample(np.asarray(pattern_image(c, 0)), i, f"q/{c}") for i, c in enumerate(colours)]
    gallery = [Sample(np.asarray(pattern_image(c, v)), i, f"g/{c}/{v}") for i, c in enumerate(colours) for v in (1, 2)]
    inshop = DataSplit("inshop-like", [], queries, gallery=gallery, class_names=dict(enumerate(colours)), ks=(1, 10))
    ev = evaluate_bundle(bundle, inshop, "inshop-like", CheckOptions(artifact="fp32"))
    assert ev.ks == [1, 10] and ev.data["images"] == 9 and ev.data["queries"] == 3
    assert ev.artifacts["fp32"].metrics == {"recall@1": 1.0, "recall@10": 1.0, "map@r": 1.0, "r_precision": 1.0}


def test_comparison_rules(bundle: Path, split: DataSplit) -> None:
    now = evaluate_bundle(bundle, split, SYN, CheckOptions(artifact="all"))
    fp32 = now.artifacts["fp32"]
    better = replace(fp32, metrics={**fp32.metrics, "recall@1": fp32.metrics["recall@1"] - 0.05})  # the reference was worse
    ref = replace(now, artifacts={"fp32": better})
    results = compare(replace(now, artifacts={"fp32": fp32}), ref, Tolerances(), all_artifacts=False)
    assert [(r.metric, r.status) for r in results[0].rows][:2] == [("recall@1", "improved"), ("recall@2", "pass")]
    with pytest.raises(BadInput, match="the reference has no int8 numbers"):
        compare(now, ref, Tolerances(), all_artifacts=False)
    states = {r.precision: r.state for r in compare(now, ref, Tolerances(), all_artifacts=True)}
    assert states == {"fp32": "compared", "int8": "new"}
    exact = Tolerances(max_drop={"recall@1": 0.0})
    # one point under what this onnxruntime measured (not under a pinned 0.20: another version may measure another)
    worse = replace(now, artifacts={"fp32": replace(fp32, metrics={**fp32.metrics, "recall@1": fp32.metrics["recall@1"] - 0.01})})
    assert compare(worse, replace(now, artifacts={"fp32": fp32}), exact, all_artifacts=False)[0].failures() == [
        "fp32 recall@1 dropped 1.00 points (limit 0.00)"
    ]
    assert compare(worse, replace(now, artifacts={"fp32": fp32}), Tolerances(), all_artifacts=False)[0].failures() == []  # 1.00 <= 1.00


def test_merging_keeps_only_entries_of_the_same_bundle_and_data(bundle: Path, split: DataSplit) -> None:
    both = evaluate_bundle(bundle, split, SYN, CheckOptions(artifact="all"))
    only_int8 = replace(both, artifacts={"int8": both.artifacts["int8"]})
    merged, notes = merged_baseline(only_int8, both)
    assert set(merged.artifacts) == {"fp32", "int8"} and "kept the baseline's fp32" in notes[0]
    other_model = replace(both, bundle={**both.bundle, "manifest_sha256": "0" * 64})
    merged, notes = merged_baseline(only_int8, other_model)
    assert set(merged.artifacts) == {"int8"} and "dropped the old baseline's fp32" in notes[0]


def test_resolution_note_when_one_query_exceeds_the_limit(bundle: Path, split: DataSplit) -> None:
    ev = evaluate_bundle(bundle, split, SYN, CheckOptions(artifact="fp32"))
    (note,) = resolution_notes(ev, Tolerances())
    assert "1.67 points here (60 queries)" in note and "recall@1" in note and "recall@2" not in note
    assert resolution_notes(ev, parse_tolerances(["all=2"])) == []
