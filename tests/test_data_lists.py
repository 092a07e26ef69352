"""``--data list.csv`` / ``list.jsonl``: the same split as a folder, a split column, metadata, and one-line errors with the line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers.bundles import write_class_images
from proxyembed.cli import app
from proxyembed.data import resolve_data, resolve_eval_data
from proxyembed.data.write_folders import write_split
from proxyembed.runtime.errors import BadInput

COLOURS = ("red", "green", "blue", "yellow", "cyan", "purple")


def _csv(path: Path, rows: list[dict], fields: list[str]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    write_class_images(tmp_path / "imgs", COLOURS, per_class=3)
    return tmp_path / "imgs"


def test_csv_without_split_is_the_folder_split(folder: Path) -> None:
    rows = [{"path": p.relative_to(folder).as_posix(), "label": p.parent.name} for p in sorted(folder.rglob("*.png"))]
    listed = resolve_data(str(_csv(folder / "list.csv", rows, ["path", "label"])))
    walked = resolve_data(str(folder))
    assert listed.class_names == walked.class_names
    assert [(s.key, s.label) for s in listed.train] == [(s.key, s.label) for s in walked.train]
    assert listed.fingerprint()["sha256"] == walked.fingerprint()["sha256"]  # check compares like with like
    assert all(Path(str(s.source)).is_file() for s in listed.train + listed.eval)


def test_jsonl_split_column_absolute_paths_and_metadata(folder: Path, tmp_path: Path) -> None:
    lines = []
    for p in sorted(folder.rglob("*.png")):
        split = "eval" if p.parent.name in ("cyan", "purple") else "train"
        lines.append(json.dumps({"path": str(p), "label": p.parent.name, "split": split, "sku": f"S-{p.stem}"}))
    (tmp_path / "l.jsonl").write_text("\n".join(lines) + "\n")
    data = resolve_data(str(tmp_path / "l.jsonl"))
    assert sorted(data.class_names[s.label] for s in data.eval)[::3] == ["cyan", "purple"]
    assert {data.class_names[s.label] for s in data.train} == {"red", "green", "blue", "yellow"}
    assert data.train[0].meta == {"sku": f"S-{Path(data.train[0].key).stem}"}
    only_eval = resolve_eval_data(str(tmp_path / "l.jsonl"))  # check / index: the evaluation rows
    assert len(only_eval.eval) == 6 and not only_eval.train


def test_list_with_eval_data_trains_on_every_row(folder: Path, tmp_path: Path) -> None:
    rows = [{"path": str(p), "label": p.parent.name} for p in sorted(folder.rglob("*.png")) if p.parent.name in COLOURS[2:]]
    write_class_images(tmp_path / "unseen", ("red", "green"), per_class=3)
    data = resolve_data(str(_csv(tmp_path / "t.csv", rows, ["path", "label"])), eval_data=str(tmp_path / "unseen"))
    assert len(data.train) == 12 and {data.class_names[s.label] for s in data.eval} == {"red", "green"}
    assert not {s.label for s in data.train} & {s.label for s in data.eval}


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"path": "red/red_0.png", "label": "red"}, {"path": "red/nope.png", "label": "red"}], "list.csv:3: 'red/nope.png' does not exist"),
        ([{"path": "red/red_0.png", "label": "red"}, {"path": "red/red_1.png", "label": " "}], "list.csv:3: empty label"),
        ([{"path": "red/red_0.png", "label": "red"}, {"path": "./red/red_0.png", "label": "red"}], "listed again (first at line 2)"),
        ([{"path": "red/red_0.png", "label": "red", "split": "test"}], "list.csv:2: split 'test' is not train or eval"),
        ([{"path": "red/red_0.png", "label": "red", "split": "train"}, {"path": "red/red_1.png", "label": "red", "split": ""}],
         "some rows give a split"),
    ],
)
def test_bad_rows_are_one_line_errors_with_the_line(folder: Path, rows: list[dict], message: str) -> None:
    path = _csv(folder / "list.csv", rows, ["path", "label", "split"] if "split" in rows[0] else ["path", "label"])
    with pytest.raises(BadInput, match="list.csv"):
        resolve_data(str(path))
    res = CliRunner().invoke(app, ["train", "--data", str(path), "--out", str(folder / "run")])
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split()) and "Traceback" not in res.output


def test_missing_list_file_and_bad_jsonl_exit_2(tmp_path: Path) -> None:
    (tmp_path / "bad.jsonl").write_text('{"path": "a.png", "label": "x"}\n[1, 2]\n')
    for spec, message in ((str(tmp_path / "none.csv"), "does not exist"), (str(tmp_path / "bad.jsonl"), "bad.jsonl:1: 'a.png' does not exist")):
        res = CliRunner().invoke(app, ["train", "--data", spec, "--out", str(tmp_path / "run")])
        assert res.exit_code == 2 and message in " ".join(res.output.split()), res.output


def test_train_from_a_csv_list(tmp_path: Path) -> None:
    write_split(resolve_data("synthetic:train_classes=8,eval_classes=6,per_class=6,size=40"), tmp_path / "syn")
    rows = [{"path": p.relative_to(tmp_path).as_posix(), "label": p.parent.name, "split": p.parent.parent.name}
            for p in sorted((tmp_path / "syn").rglob("*.png"))]
    path = _csv(tmp_path / "syn.csv", rows, ["path", "label", "split"])
    args = ["train", "--data", str(path), "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "16", "--image-size", "32",
            "--embedding-dim", "16", "--whiten", "0", "--json"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["data"] == str(path)
