"""Dynamic batching for the service: concurrent requests' images share one inference call.

Request threads decode and preprocess their own image (Pillow releases the GIL, so that runs in
parallel), then hand the array to the encoder threads. Each takes whatever has queued up while its
previous call ran, up to ``max_batch``, and runs it as one batch. No request waits for others to
arrive: at low load a batch is a single image, sent at once; under load the batches grow by
themselves, and a batch of N costs less than N calls of one. Several encoder threads, each calling
ONNX Runtime with one intra-op thread, use the cores with less CPU per image than one call spread
over all cores (ONNX Runtime's spinning worker threads cost 1.9 ms of CPU per 128 px int8 query on
2 cores: benchmarks/results/serve_load.md).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np

_STOP = object()


class EncodeBatcher:
    """Runs ``encode_batch`` (float32 NCHW -> (N, D)) on ``workers`` threads over the arrays that :meth:`encode` queues."""

    def __init__(self, encode_batch: Callable[[np.ndarray], np.ndarray], max_batch: int = 32, workers: int = 1) -> None:
        if max_batch < 1 or workers < 1:
            raise ValueError(f"max_batch and workers must be positive, got {max_batch} and {workers}")
        self._encode_batch, self.max_batch = encode_batch, max_batch
        self._queue: queue.SimpleQueue[tuple[np.ndarray, Future[np.ndarray]] | object] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._run, name=f"proxyembed-encode-{i}", daemon=True) for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def encode(self, chws: np.ndarray) -> np.ndarray:
        """The (N, D) embeddings of preprocessed NCHW images; blocks until their batches have run (re-raises an error)."""
        futures: list[Future[np.ndarray]] = []
        for chw in chws:
            futures.append(Future())
            self._queue.put((chw, futures[-1]))
        return np.stack([f.result() for f in futures])

    def close(self) -> None:
        """Finish the queued work and stop the encoder threads."""
        for _ in self._threads:
            self._queue.put(_STOP)
        for thread in self._threads:
            thread.join(timeout=60)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            stop = False
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)
            arrays = [a for a, _ in batch]  # type: ignore[misc]
            futures = [f for _, f in batch]  # type: ignore[misc]
            try:
                vectors = self._encode_batch(np.stack(arrays))
            except Exception as exc:  # handed to every waiting request; the thread keeps serving
                for f in futures:
                    f.set_exception(exc)
            else:
                for f, v in zip(futures, vectors, strict=True):
                    f.set_result(v)
            if stop:
                return
