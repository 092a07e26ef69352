"""``proxyembed embed --engine ray``: a corpus embedded by a Ray cluster into resumable shard files.

The driver lists the images (the sorted list ``proxyembed embed`` uses), plans fixed-size shards
(:mod:`proxyembed.scale.plan`) and hands Ray Data the rows of the unfinished ones. A read step loads each
file's bytes (Ray Data fuses it into the actors); a fixed pool of :class:`ShardEncoder` actors, one ONNX Runtime session each, decodes,
preprocesses and encodes them with the runtime's own :class:`~proxyembed.runtime.Preprocessor` and
:class:`~proxyembed.runtime.Encoder`, so every vector equals the single-process one. Ray returns rows in
any order; the driver files each under its shard and writes a shard, in the
:mod:`proxyembed.runtime.embeddings` format, as soon as its last row arrives. Only unfinished shards are
held in memory, and the rows go in list order, so that is a few shards at a time.

Images and the bundle must be readable at the same absolute path on every node (a shared filesystem);
the shards are written by the driver, under ``out`` on its machine.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from proxyembed.extras import require_extras
from proxyembed.runtime.corpus import decode_or_error, encode_readable, encoder_source
from proxyembed.runtime.embeddings import EmbeddingWriter, recorded_progress
from proxyembed.runtime.encoder import PrecisionChoice
from proxyembed.runtime.errors import BadInput
from proxyembed.runtime.progress import ProgressArg, progress_callback

from .plan import DEFAULT_SHARD_SIZE, SHARD_PATTERN, Shard, plan_shards, size_actors


@dataclass
class RayEmbedReport:
    """What :func:`embed_ray` did: shards written or found finished, rows, and every unreadable image."""

    out: Path
    rows: int
    shards: int
    shards_resumed: int
    embedded: int
    actors: int
    threads_per_worker: int
    source: dict[str, Any]
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (id, why), over all shards

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (``proxyembed embed --json``)."""
        return {
            "out": str(self.out), "rows": self.rows, "shards": self.shards, "shards_resumed": self.shards_resumed,
            "embedded": self.embedded, "actors": self.actors, "threads_per_worker": self.threads_per_worker,
            "skipped": len(self.unreadable), "unreadable": [{"id": i, "reason": why} for i, why in self.unreadable],
            "source": self.source,
        }


class ShardEncoder:
    """A Ray Data map class: one ONNX Runtime session per actor, with as many threads as the actor's CPUs.

    Takes batches of ``{"row", "data", "error"}`` (file bytes, or why they could not be read) and returns
    ``{"row", "vector", "error"}``; an image that cannot be decoded keeps a zero vector and says why.
    ``artifact`` is the file the driver's encoder chose, so every actor runs the same model whatever its machine.
    """

    def __init__(self, bundle: str, artifact: str, threads: int) -> None:
        from proxyembed.runtime import Encoder

        self.encoder = Encoder(bundle, device="cpu", threads=threads, artifact=artifact)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        errors = list(batch["error"])
        decoded: list[np.ndarray | BadInput] = [
            BadInput(errors[i]) if errors[i] else decode_or_error(self.encoder.preprocessor, bytes(data)) for i, data in enumerate(batch["data"])
        ]
        errors = [x.message if isinstance(x, BadInput) else "" for x in decoded]
        vectors = encode_readable(self.encoder.encode_batch, self.encoder.dim, decoded)
        return {"row": batch["row"], "vector": vectors, "error": np.array(errors, dtype=object)}


def _read_files(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray Data read step: each path's bytes, or empty bytes and the reason (a vanished or unreadable file)."""
    data, errors = [], []
    for path in batch["path"]:
        try:
            with open(path, "rb") as fh:
                data.append(fh.read())
            errors.append("")
        except OSError as exc:
            data.append(b"")
            errors.append(f"cannot read {path}: {exc.strerror or exc}")
    return {"row": batch["row"], "data": np.array(data, dtype=object), "error": np.array(errors, dtype=object)}


def embed_ray(
    bundle: str | Path,
    images: str | Path,
    out: str | Path,
    *,
    address: str | None = None,
    concurrency: int | None = None,
    threads_per_worker: int = 1,
    shard_size: int = DEFAULT_SHARD_SIZE,
    batch_size: int = 64,
    precision: PrecisionChoice = "auto",
    progress: ProgressArg = False,
) -> RayEmbedReport:
    """Embed every image under ``images`` with ``bundle`` on Ray into shard files under the folder ``out``.

    ``address``: a running cluster (``"auto"`` finds the one ``ray start`` runs on this node, ``"HOST:6379"``
    names one); None joins the Ray already initialised in this process, or starts a local one and stops it
    after. ``concurrency`` encoder actors of ``threads_per_worker`` CPUs each (default: as many as fit with
    one CPU of the cluster left over, see :func:`~proxyembed.scale.plan.size_actors`). A rerun skips shards
    already finished; ``proxyembed index --from-embeddings out`` merges the shards into a gallery.
    """
    require_extras("proxyembed embed --engine ray", "ray")
    from proxyembed.runtime import Encoder
    from proxyembed.runtime.images import list_images

    out = Path(out)
    if out.suffix == ".npy" or (out.exists() and not out.is_dir()):
        raise BadInput(f"--out {out} must be a folder with --engine ray (it gets one .npy per shard)", hint="e.g. --out embeddings/photos")
    if batch_size < 1:
        raise BadInput(f"--batch-size must be at least 1, got {batch_size}")
    items = list_images(Path(images))
    encoder = Encoder(bundle, precision=precision, device="cpu", threads=1, warmup=False)
    source = encoder_source(encoder)
    shards = plan_shards(len(items), shard_size, out)
    _refuse_other_shards(out, shards)
    unreadable: list[tuple[str, str]] = []
    pending = []
    for shard in shards:
        info = recorded_progress(shard.path, items[shard.start : shard.stop], encoder.dim, source, (shard.index, shard.count))
        if info is not None and info["done"] == shard.rows:
            unreadable += [(items[shard.start + i]["id"], f"unreadable, recorded in {shard.path.name}") for i in info["skipped"]]
            continue
        if info is None and shard.path.exists():  # written over once its rows arrive: only ever our own unfinished shard
            raise BadInput(f"{shard.path} exists and is not a proxyembed embeddings file", hint="use a new --out folder")
        pending.append(shard)

    import ray

    started = _connect(ray, address)
    try:
        largest_node = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]), default=0)
        actors = size_actors(ray.cluster_resources().get("CPU", 0), largest_node, concurrency, threads_per_worker)
        if pending:
            run = _ShardJob(items, pending, shard_size, encoder.dim, source)
            with progress_callback(progress, sum(s.rows for s in pending), "embedding") as advance:
                run.execute(ray, encoder, actors, threads_per_worker, batch_size, advance)
            unreadable += run.unreadable
    finally:
        if started:
            ray.shutdown()
    return RayEmbedReport(
        out, len(items), len(shards), len(shards) - len(pending), sum(s.rows for s in pending), actors, threads_per_worker, source,
        sorted(unreadable),
    )


def _refuse_other_shards(out: Path, shards: Sequence[Shard]) -> None:
    """Shard files the plan does not name come from another corpus or shard size: never mix them in."""
    if not out.is_dir():
        return
    planned = {s.path.name for s in shards}
    strangers = sorted(p.name for p in out.glob("*.npy") if p.name not in planned)
    if strangers:
        raise BadInput(
            f"{out} holds {strangers[0]}{f' and {len(strangers) - 1} more' if len(strangers) > 1 else ''}, not a shard of this job "
            f"({len(shards)} shard(s) named like {SHARD_PATTERN.format(0)})",
            hint="use a new --out folder, or the --shard-size of the earlier run",
        )


def _connect(ray: Any, address: str | None) -> bool:
    """Join the cluster at ``address``, or the Ray already running in this process, or start a local one; True if started here."""
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    if address is None and ray.is_initialized():
        return False
    try:
        if address is None:  # "local": a new Ray, not one that `ray start` left behind (ray.init() would join that)
            ray.init(address="local", include_dashboard=False, configure_logging=False)
        else:
            ray.init(address=address, configure_logging=False)
    except ConnectionError as exc:
        raise BadInput(f"cannot reach a Ray cluster at --address {address}: {exc}", hint="start one with `ray start --head`") from exc
    return True


class _ShardJob:
    """The rows of the pending shards through Ray Data, filed back into their shards and written as each completes."""

    def __init__(self, items: Sequence[dict[str, Any]], pending: Sequence[Shard], shard_size: int, dim: int, source: dict[str, Any]) -> None:
        self.items, self.pending, self.shard_size, self.dim, self.source = items, {s.index: s for s in pending}, shard_size, dim, source
        self.unreadable: list[tuple[str, str]] = []
        self._vectors: dict[int, np.ndarray] = {}
        self._skipped: dict[int, list[int]] = {}
        self._arrived: dict[int, int] = {}

    def execute(self, ray: Any, encoder: Any, actors: int, threads: int, batch_size: int, advance: Any) -> None:
        rows = [{"row": r, "path": os.path.abspath(self.items[r]["path"])} for s in self.pending.values() for r in range(s.start, s.stop)]
        ray.data.DataContext.get_current().enable_progress_bars = False
        ds = ray.data.from_items(rows, override_num_blocks=min(-(-len(rows) // batch_size), 4096))
        ds = ds.map_batches(_read_files, batch_size=batch_size, num_cpus=1)
        ds = ds.map_batches(
            ShardEncoder,
            fn_constructor_kwargs={"bundle": str(encoder.bundle.path), "artifact": encoder.artifact.file, "threads": threads},
            batch_size=batch_size,
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=threads,
        )
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for row, vector, error in zip(batch["row"].tolist(), batch["vector"], batch["error"], strict=True):
                self._file(int(row), vector, str(error))
            if advance is not None:
                advance(len(batch["row"]))
        if self.pending:  # Ray Data lost rows: a bug, not a user error, and the shards stay unfinished for a rerun
            raise RuntimeError(f"Ray Data returned no rows for shard(s) {sorted(self.pending)}")

    def _file(self, row: int, vector: np.ndarray, error: str) -> None:
        index = row // self.shard_size
        shard = self.pending[index]
        if index not in self._vectors:
            self._vectors[index], self._skipped[index], self._arrived[index] = np.zeros((shard.rows, self.dim), np.float32), [], 0
        offset = row - shard.start
        self._vectors[index][offset] = vector
        if error:
            self._skipped[index].append(offset)
            self.unreadable.append((self.items[row]["id"], error))
        self._arrived[index] += 1
        if self._arrived[index] == shard.rows:
            self._write(shard)

    def _write(self, shard: Shard) -> None:
        items = self.items[shard.start : shard.stop]
        with EmbeddingWriter(shard.path, items, self.dim, self.source, (shard.index, shard.count), overwrite=True) as writer:
            writer.write(self._vectors.pop(shard.index), sorted(self._skipped.pop(shard.index)))
        del self.pending[shard.index], self._arrived[shard.index]
