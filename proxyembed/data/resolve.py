"""Turning a ``--data`` value into a zero-shot split of training and evaluation classes.

Accepted values:

- ``synthetic`` or ``synthetic:key=value,...`` (seed, train_classes, eval_classes, per_class, size): the built-in data;
- a folder with one subfolder per class: classes are sorted by name and split into training and
  evaluation halves (``--eval-data`` gives the evaluation classes as a separate folder instead);
- a ``.csv`` or ``.jsonl`` list of path, label and optional split (:mod:`.listfile`);
- WebDataset tar shards written by ``proxyembed data --to-shards``, as a brace pattern or URL (:mod:`.shards`);
- a benchmark root (CUB-200-2011, Cars196, Stanford Online Products, In-Shop), recognised by its files.
"""

from __future__ import annotations

import os
from pathlib import Path

from proxyembed.runtime.errors import BadInput
from proxyembed.runtime.options import parse_key_values

from .listfile import is_list_file
from .shards import is_shard_spec
from .types import DataSplit


def resolve_data(spec: str, *, eval_data: str | os.PathLike | None = None, eval_fraction: float = 0.5) -> DataSplit:
    """Build the zero-shot split named by ``spec`` (see the module docstring)."""
    spec = str(spec)
    if spec == "synthetic" or spec.startswith("synthetic:"):
        from .synthetic import SYNTHETIC_OPTIONS, SyntheticConfig, synthetic_split

        example = "synthetic:seed=1,train_classes=50"
        opts = parse_key_values([spec.partition(":")[2]], "--data", example=example, convert=int, keys=SYNTHETIC_OPTIONS, form="KEY=INTEGER")
        return synthetic_split(SyntheticConfig.from_options(opts))
    if is_shard_spec(spec):
        from .shards import shard_split

        return shard_split(spec, eval_split=resolve_eval_data(str(eval_data)) if eval_data is not None else None)
    if is_list_file(spec):
        from .listfile import list_split

        evaluated = resolve_eval_data(str(eval_data)) if eval_data is not None else None
        return list_split(Path(spec).expanduser(), eval_split=evaluated, eval_fraction=eval_fraction)
    root = Path(spec).expanduser()
    if not root.exists():
        raise BadInput(f"--data: '{spec}' does not exist", hint="give 'synthetic' or a folder with one subfolder per class")
    if not root.is_dir():
        raise BadInput(f"--data: '{spec}' is a file, not a folder", hint="give a folder with one subfolder per class")
    from .benchmarks import detect_benchmark

    bench = detect_benchmark(root)
    if bench is not None:
        if eval_data is not None:
            raise BadInput(f"--eval-data is not used with the {bench.__name__} benchmark, which defines its own split")
        return bench(root)
    from .folder import folder_split

    return folder_split(root, eval_root=Path(eval_data) if eval_data else None, eval_fraction=eval_fraction)


def resolve_eval_data(spec: str) -> DataSplit:
    """Evaluation data only (for ``check`` and ``index``): a folder means all of its classes are evaluated."""
    spec = str(spec)
    root = Path(spec).expanduser()
    if is_list_file(spec):
        from .listfile import list_split

        return list_split(root, eval_only=True)
    if spec == "synthetic" or spec.startswith("synthetic:") or not root.is_dir():
        return resolve_data(spec)
    from .benchmarks import detect_benchmark

    if detect_benchmark(root) is not None:
        return resolve_data(spec)
    from .folder import folder_split

    return folder_split(root, eval_root=root, eval_only=True)

