"""What a distributed embedding job does before it starts: which shards exist, and how many actors fit.

Shards are fixed-size runs of the sorted image list (:func:`proxyembed.runtime.images.list_images`), so
the same corpus and ``shard_size`` always give the same shards and a rerun can tell from their files
which are finished. Ray Data returns rows in any order; rows carry their position in the list, and the
shard a row belongs to is ``row // shard_size``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from proxyembed.runtime.errors import BadInput

SHARD_PATTERN = "shard-{:05d}.npy"
DEFAULT_SHARD_SIZE = 10_000  # ~20 MB of 512-d float32 a shard: a kill loses at most that much work per shard in flight


@dataclass(frozen=True)
class Shard:
    """Rows ``start:stop`` of the image list, written to ``path`` as shard ``index`` of ``count``."""

    index: int
    count: int
    start: int
    stop: int
    path: Path

    @property
    def rows(self) -> int:
        """How many images the shard holds."""
        return self.stop - self.start


def plan_shards(total: int, shard_size: int, out: Path) -> list[Shard]:
    """Split ``total`` images into shards of ``shard_size`` (the last one shorter), files named by index under ``out``."""
    if shard_size < 1:
        raise BadInput(f"--shard-size must be at least 1, got {shard_size}")
    count = -(-total // shard_size)
    return [
        Shard(i, count, i * shard_size, min(total, (i + 1) * shard_size), out / SHARD_PATTERN.format(i))
        for i in range(count)
    ]


def size_actors(cluster_cpus: float, largest_node_cpus: float, concurrency: int | None, threads_per_worker: int) -> int:
    """How many encoder actors to run: ``concurrency``, or as many as fit with one CPU of the cluster left over.

    An actor asking for more CPUs than any one node has is never scheduled, and Ray waits for it forever
    without an error (measured: Ray 2.60, one 3-CPU actor on 2 CPUs). Actors holding every CPU leave
    none for the driver, which files the returned rows and writes the shards, nor for Ray Data's tasks
    when it does not fuse the file reads into the actors. Both are refused before anything starts.
    """
    if threads_per_worker < 1:
        raise BadInput(f"--threads-per-worker must be at least 1, got {threads_per_worker}")
    if concurrency is not None and concurrency < 1:
        raise BadInput(f"--concurrency must be at least 1, got {concurrency}")
    cpus, spare = int(cluster_cpus), int(cluster_cpus) - 1
    if threads_per_worker > min(largest_node_cpus, spare):
        raise BadInput(
            f"--threads-per-worker {threads_per_worker} does not fit: the Ray cluster has {cpus} CPU(s), at most "
            f"{int(largest_node_cpus)} on one node, and one is left for the driver and reading files; Ray would wait forever",
            hint=f"use --threads-per-worker {max(1, min(int(largest_node_cpus), spare))} or less, or add nodes (ray start --address ...)",
        )
    if concurrency is None:
        return spare // threads_per_worker
    if concurrency * threads_per_worker > spare:
        raise BadInput(
            f"--concurrency {concurrency} x --threads-per-worker {threads_per_worker} = {concurrency * threads_per_worker} CPUs "
            f"of the cluster's {cpus} leaves none for the driver and reading files, so Ray Data would stall",
            hint=f"use at most {spare // threads_per_worker} actors of {threads_per_worker} thread(s), or leave --concurrency out",
        )
    return concurrency
