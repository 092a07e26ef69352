"""The one decode-once embedding loop (runtime/corpus.py) that `embed`, `index` and the Ray actors share."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers.bundles import COLOURS, make_tiny_bundle, pattern_image
from proxyembed.runtime import BadInput, Encoder, Retriever
from proxyembed.runtime.corpus import embed_stream, embed_to_file
from proxyembed.runtime.embeddings import read_embeddings


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Encoder:
    return Encoder(make_tiny_bundle(tmp_path_factory.mktemp("corpus") / "bundle", with_int8=False))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Seven images with an unreadable one at offset 3, so it lands inside the second batch of 2."""
    root = tmp_path_factory.mktemp("images")
    paths = []
    colours = list(COLOURS)
    for i in range(7):
        path = root / f"{i}.png"
        if i == 3:
            path.write_bytes(b"not an image")
        else:
            pattern_image(colours[i % len(colours)], i).save(path)
        paths.append(path)
    return paths


@pytest.mark.parametrize("workers", [0, 3])
def test_stream_keeps_order_and_leaves_unreadable_rows_zero(encoder: Encoder, files: list[Path], workers: int) -> None:
    batches = list(embed_stream(encoder.encode_batch, encoder.dim, encoder.preprocessor, files, 2, workers=workers))
    assert [len(rows) for rows, _ in batches] == [2, 2, 2, 1]
    rows = np.concatenate([r for r, _ in batches])
    (offset, error), = batches[1][1]
    assert offset == 1 and isinstance(error, BadInput) and "3.png" in error.message
    assert not rows[3].any()
    readable = [p for i, p in enumerate(files) if i != 3]
    np.testing.assert_allclose(np.delete(rows, 3, axis=0), encoder.encode(readable), atol=1e-6)


def test_embed_to_file_records_the_unreadable_row(encoder: Encoder, files: list[Path], tmp_path: Path) -> None:
    items = [{"id": p.name, "path": str(p), "metadata": {}} for p in files]
    done = embed_to_file(encoder.encode_batch, encoder.dim, encoder.preprocessor, items, tmp_path / "e.npy", source={"model": "t"},
                         batch_size=2, workers=0)
    assert done == {"rows": 7, "resumed_from": 0, "skipped": 1}
    emb = read_embeddings(tmp_path / "e.npy")
    assert emb.info["skipped"] == [3]
    again = embed_to_file(encoder.encode_batch, encoder.dim, encoder.preprocessor, items, tmp_path / "e.npy", source={"model": "t"})
    assert again["resumed_from"] == 7  # finished: a rerun has nothing left to do


def test_retriever_add_decodes_on_threads_like_inline(encoder: Encoder, files: list[Path]) -> None:
    reports, indexes = [], []
    for workers in (0, 4):
        r = Retriever(encoder)
        reports.append(r.add(files, batch_size=2, skip_unreadable=True, workers=workers))
        indexes.append(r)
    assert [(rep.added, rep.skipped) for rep in reports][0] == (reports[1].added, reports[1].skipped)
    assert reports[0].added == 6 and reports[0].skipped[0][0] == str(files[3])
    for p in files[:3]:
        np.testing.assert_allclose(indexes[0].index.vector(str(p)), indexes[1].index.vector(str(p)), atol=1e-6)
