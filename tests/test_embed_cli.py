"""`proxyembed embed`: shards, resume after a kill, unreadable files, and merging parts with index --from-embeddings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from helpers.bundles import make_tiny_bundle, write_class_images
from proxyembed.cli import app
from proxyembed.runtime import Encoder, Retriever
from proxyembed.runtime.embeddings import EmbeddingWriter, read_embeddings, shard_slice

runner = CliRunner()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("embed") / "bundle", with_int8=False)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    write_class_images(root, ("red", "green", "blue", "yellow"), per_class=3)
    (root / "red" / "broken.png").write_bytes(b"not a png")
    return root


def _embed(bundle: Path, images: Path, out: Path, *extra: str):
    return runner.invoke(app, ["embed", str(bundle), str(images), "--out", str(out), "--batch-size", "2", *extra])


def test_shard_slices_cover_every_row_once() -> None:
    for total in (0, 1, 7, 13):
        for n in (1, 2, 3, 5):
            rows = [r for i in range(n) for r in range(total)[shard_slice(total, (i, n))]]
            assert rows == list(range(total))


def test_shards_merge_into_the_gallery_that_index_builds(bundle: Path, images: Path, tmp_path: Path) -> None:
    parts = [tmp_path / "emb" / f"part{i}.npy" for i in range(3)]
    for i, part in enumerate(parts):
        res = _embed(bundle, images, part, "--shard", f"{i}/3", "--json")
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["rows"] in (4, 5)
    loaded = [read_embeddings(p) for p in parts]
    assert sum(len(e.items) for e in loaded) == 13 and sum(len(e.info["skipped"]) for e in loaded) == 1
    # rows are the encoder's own embeddings of those files
    first = loaded[0]
    vectors, items = next(first.readable_chunks())
    expected = Encoder(bundle).encode([it["metadata"]["path"] for it in items])
    np.testing.assert_allclose(vectors, expected, atol=1e-5)

    merged, direct = tmp_path / "merged", tmp_path / "direct"
    from_parts = [arg for p in parts for arg in ("--from-embeddings", str(p))]
    res = runner.invoke(app, ["index", str(bundle), "--out", str(merged), *from_parts, "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert (summary["added"], summary["count"], [s["id"] for s in summary["skipped"]]) == (12, 12, ["red/broken.png"])
    assert runner.invoke(app, ["index", str(bundle), str(images), "--out", str(direct)]).exit_code == 0
    query = images / "green" / "green_1.png"
    a, b = Retriever.load(merged).search(query, k=5), Retriever.load(direct).search(query, k=5)
    assert [h.id for h in a] == [h.id for h in b] and a[0].id == "green/green_1.png"
    assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-5)


def test_a_killed_run_resumes_where_it_stopped(bundle: Path, images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "all.npy"
    real_write, calls = EmbeddingWriter.write, []

    def dies_after_two_batches(self: EmbeddingWriter, vectors: np.ndarray, skipped=()) -> None:
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(len(vectors))
        real_write(self, vectors, skipped)

    monkeypatch.setattr(EmbeddingWriter, "write", dies_after_two_batches)
    res = _embed(bundle, images, out)
    assert res.exit_code == 130
    monkeypatch.setattr(EmbeddingWriter, "write", real_write)
    res = runner.invoke(app, ["index", str(bundle), "--from-embeddings", str(out), "--out", str(tmp_path / "gal")])
    assert res.exit_code == 2 and "unfinished (4 of 13 rows)" in res.output
    res = _embed(bundle, images, out)
    assert res.exit_code == 0 and "resumed at row 4" in res.output
    fresh = tmp_path / "fresh.npy"
    assert _embed(bundle, images, fresh).exit_code == 0
    np.testing.assert_array_equal(read_embeddings(out).vectors, read_embeddings(fresh).vectors)
    # resuming with other settings would mix rows that do not belong together
    res = _embed(bundle, images, out, "--shard", "1/2")
    assert res.exit_code == 2 and "started with other count, shard, items_sha256" in res.output


def test_parts_from_another_bundle_are_refused(bundle: Path, images: Path, tmp_path: Path) -> None:
    other = make_tiny_bundle(tmp_path / "other", with_int8=False, seed=1)
    out = tmp_path / "other.npy"
    assert _embed(other, images, out).exit_code == 0
    res = runner.invoke(app, ["index", str(bundle), "--from-embeddings", str(out), "--out", str(tmp_path / "gal")])
    assert res.exit_code == 2 and "was embedded by another model" in res.output
    assert not (tmp_path / "gal").exists()


def test_bad_arguments_exit_2(bundle: Path, images: Path, tmp_path: Path) -> None:
    assert "--shard '2/2' is not i/n" in _embed(bundle, images, tmp_path / "e.npy", "--shard", "2/2").output
    assert "must end in .npy" in _embed(bundle, images, tmp_path / "e.parquet").output
    res = runner.invoke(app, ["index", str(bundle), str(images), "--from-embeddings", "x.npy", "--out", str(tmp_path / "g")])
    assert res.exit_code == 2 and "either IMAGES or --from-embeddings" in res.output
    (tmp_path / "taken.npy").write_bytes(b"mine")
    res = _embed(bundle, images, tmp_path / "taken.npy")
    assert res.exit_code == 2 and "is not a proxyembed embeddings file" in res.output
    assert (tmp_path / "taken.npy").read_bytes() == b"mine"


def test_a_folder_of_parts_merges_like_the_parts_listed(bundle: Path, images: Path, tmp_path: Path) -> None:
    for i in range(2):
        assert _embed(bundle, images, tmp_path / "emb" / f"part{i}.npy", "--shard", f"{i}/2").exit_code == 0
    res = runner.invoke(app, ["index", str(bundle), "--from-embeddings", str(tmp_path / "emb"), "--out", str(tmp_path / "gal"), "--json"])
    assert res.exit_code == 0, res.output
    assert (json.loads(res.stdout)["added"], len(Retriever.load(tmp_path / "gal"))) == (12, 12)
    (tmp_path / "empty").mkdir()
    res = runner.invoke(app, ["index", str(bundle), "--from-embeddings", str(tmp_path / "empty"), "--out", str(tmp_path / "gal2")])
    assert res.exit_code == 2 and "holds no .npy embeddings files" in res.output
