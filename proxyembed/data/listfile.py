"""Datasets listed in a file: ``--data list.csv`` or ``--data list.jsonl``.

Each row names an image (``path``, relative to the list file's folder or absolute) and its class (``label``);
an optional ``split`` (``train`` or ``eval``) places it, otherwise classes are split into training and
evaluation halves as for a folder (:func:`.folder.split_by_class`). Other columns are kept as the sample's
metadata. A CSV has a header row; a JSONL file holds one JSON object a line.

Rows are checked before training starts: a missing file, an empty label, a duplicate path, a ``split`` other
than train/eval, or a class in both splits is a one-line error naming the file and its line. Files that exist
but do not decode are skipped with a counted warning, as in a folder.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from proxyembed.runtime.errors import BadInput

from .folder import drop_singletons, readable, split_by_class
from .types import DataSplit, Sample, with_eval_split

LIST_SUFFIXES = (".csv", ".jsonl")
SPLITS = ("train", "eval")


def is_list_file(spec: str) -> bool:
    """Whether ``--data`` names a list file (by its suffix)."""
    return spec.lower().endswith(LIST_SUFFIXES)


def _rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) of a CSV (after its header) or a JSONL file."""
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            if path.suffix.lower() == ".csv":
                reader = csv.DictReader(fh)
                for row in reader:
                    if None in row:
                        raise BadInput(f"{path}:{reader.line_num}: more cells than the header has columns", hint="quote values that hold commas")
                    yield reader.line_num, dict(row)
                return
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise BadInput(f"{path}:{n}: not JSON ({exc.msg})", hint="one JSON object per line") from None
                if not isinstance(row, dict):
                    raise BadInput(f"{path}:{n}: not a JSON object", hint='e.g. {"path": "img/1.jpg", "label": "cat"}')
                yield n, row
    except UnicodeDecodeError:
        raise BadInput(f"{path} is not UTF-8 text", hint="save the list as UTF-8 CSV or JSONL") from None
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise BadInput(f"--data: list file '{path}' does not exist", hint="give a .csv or .jsonl list of path,label[,split]") from None


class _Entry:
    """One checked row: the image file, its class, its split (or None) and its metadata."""

    __slots__ = ("path", "key", "label", "split", "meta")

    def __init__(self, path: Path, key: str, label: str, split: str | None, meta: dict[str, Any]) -> None:
        self.path, self.key, self.label, self.split, self.meta = path, key, label, split, meta


def read_list(path: Path) -> list[_Entry]:
    """The rows of list file ``path``, checked (see the module docstring)."""
    base = path.parent
    entries: list[_Entry] = []
    seen: dict[Path, int] = {}
    has_split: bool | None = None
    for line, row in _rows(path):
        where = f"{path}:{line}"
        raw_path, label = row.get("path"), row.get("label")
        if not isinstance(raw_path, str) or not raw_path.strip():
            raise BadInput(f"{where}: no 'path'", hint="every row needs the image's path (relative to the list or absolute) and its label")
        if label is None or not str(label).strip():
            raise BadInput(f"{where}: empty label for '{raw_path}'", hint="give every image its class label")
        file = (base / raw_path).resolve()
        if not file.is_file():
            raise BadInput(f"{where}: '{raw_path}' does not exist", hint=f"paths are relative to {base} unless absolute")
        if file in seen:
            raise BadInput(f"{where}: '{raw_path}' is listed again (first at line {seen[file]})", hint="list each image once")
        seen[file] = line
        split = row.get("split")
        split = None if split is None or str(split).strip() == "" else str(split).strip().lower()
        if split is not None and split not in SPLITS:
            raise BadInput(f"{where}: split '{row['split']}' is not train or eval", hint="leave split out to split by class")
        if has_split is None:
            has_split = split is not None
        elif has_split != (split is not None):
            raise BadInput(f"{where}: some rows give a split and others do not", hint="give every row train or eval, or none of them")
        meta = {k: v for k, v in row.items() if k not in ("path", "label", "split")}
        entries.append(_Entry(file, raw_path, str(label).strip(), split, meta))
    if not entries:
        raise BadInput(f"{path} lists no images", hint="rows of path,label[,split]")
    return entries


def _classes(entries: list[_Entry], warnings: list[str], path: Path) -> dict[str, list[_Entry]]:
    """Readable entries grouped by class; unreadable ones skipped with one counted warning."""
    out: dict[str, list[_Entry]] = {}
    bad = []
    for e in entries:
        if readable(e.path):
            out.setdefault(e.label, []).append(e)
        else:
            bad.append(e.key)
    if bad:
        warnings.append(f"skipped {len(bad)} unreadable image(s) listed in {path}: {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}")
    return out


def _samples(classes: dict[str, list[_Entry]], first_label: int) -> tuple[list[Sample], dict[int, str]]:
    samples, names = [], {}
    for i, (name, entries) in enumerate(sorted(classes.items())):
        names[first_label + i] = name
        samples.extend(Sample(str(e.path), first_label + i, e.key, e.meta or None) for e in entries)
    return samples, names


def list_split(path: Path, *, eval_split: DataSplit | None = None, eval_fraction: float = 0.5, eval_only: bool = False) -> DataSplit:
    """The zero-shot split of list file ``path``: its ``split`` column, or its classes split in halves.

    ``eval_only`` (``check``, ``index``): every evaluation row (all rows when there is no ``split``) as evaluation
    data. ``eval_split`` (``--eval-data``): every row trains and ``eval_split``'s classes are evaluated.
    """
    warnings: list[str] = []
    entries = read_list(path)
    if eval_only:
        ev = drop_singletons(_classes([e for e in entries if e.split != "train"], warnings, path), path, warnings)
        samples, names = _samples(ev, 0)
        return DataSplit(name=str(path), train=[], eval=samples, class_names=names, warnings=warnings)
    if eval_split is not None:
        train, names = _samples(_classes(entries, warnings, path), 0)
        return with_eval_split(str(path), train, names, eval_split, warnings=warnings)
    if entries[0].split is None:
        train_classes, eval_classes = split_by_class(_classes(entries, warnings, path), eval_fraction, f"list '{path}'")
    else:
        train_classes = _classes([e for e in entries if e.split == "train"], warnings, path)
        eval_classes = _classes([e for e in entries if e.split == "eval"], warnings, path)
        both = sorted(set(train_classes) & set(eval_classes))
        if both:
            raise BadInput(f"{path}: classes {both[:5]} are in both splits", hint="evaluation classes must be unseen in training (zero-shot)")
    eval_classes = drop_singletons(eval_classes, path, warnings)
    train, names = _samples(train_classes, 0)
    ev, ev_names = _samples(eval_classes, len(names))
    return DataSplit(name=str(path), train=train, eval=ev, class_names={**names, **ev_names}, warnings=warnings)
