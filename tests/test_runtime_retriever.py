"""Retriever and the gallery folder: round trip, refusing another model, atomic saves, integrity.

The gallery tests run for each vector storage (f32 hnswlib, f16 and i8 usearch): the folder's guarantees
do not depend on it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.bundles import COLOURS, make_tiny_bundle, pattern_image
from proxyembed.runtime import BadInput, Encoder, Index, IntegrityError, Retriever
from proxyembed.runtime.files import sealed_json
from proxyembed.runtime.index import persist as index_files
from proxyembed.runtime.retriever import GALLERY_FILE, read_gallery_info


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("ret") / "bundle", with_int8=False)


@pytest.fixture(params=["f32", "f16", "i8"])
def storage(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def retriever(bundle_dir: Path, storage: str) -> Retriever:
    r = Retriever(Encoder(bundle_dir), Index(16, vectors=storage))
    images = [pattern_image(c, v) for c in COLOURS for v in range(3)]
    ids = [f"{c}/{v}" for c in COLOURS for v in range(3)]
    r.add(images, ids, [{"label": c} for c in COLOURS for _ in range(3)], batch_size=4)
    return r


def test_search_finds_same_class(retriever: Retriever) -> None:
    hits = retriever.search(pattern_image("green", 7), k=3)
    assert [h.metadata["label"] for h in hits] == ["green"] * 3
    many = retriever.search_batch([pattern_image("red", 8), pattern_image("cyan", 9)], k=2)
    assert [[h.metadata["label"] for h in row] for row in many] == [["red", "red"], ["cyan", "cyan"]]
    assert retriever.search_batch([pattern_image("green", 7)], k=3) == [hits]  # one image: the same hits, in a list
    with pytest.raises(BadInput, match="search takes one image"):
        retriever.search([pattern_image("red", 8)], k=2)  # type: ignore[arg-type]
    with pytest.raises(BadInput, match="search_batch takes a sequence"):
        retriever.search_batch(pattern_image("red", 8), k=2)  # type: ignore[arg-type]


def test_search_vector_is_search_without_the_encoder(retriever: Retriever) -> None:
    image = pattern_image("green", 7)
    embedding = retriever.encoder.encode([image])[0]
    assert retriever.search_vector(embedding, k=3) == retriever.search(image, k=3)
    scaled = retriever.search_vector(list(3 * embedding), k=3)  # any length, any sequence: the same items, the same scores
    assert [h.id for h in scaled] == [h.id for h in retriever.search(image, k=3)]
    assert [h.score for h in scaled] == pytest.approx([h.score for h in retriever.search(image, k=3)], abs=1e-5)
    assert [h.metadata["label"] for h in retriever.search_vector(embedding, k=2, filter={"label": "red"})] == ["red", "red"]
    with pytest.raises(BadInput, match=r"search_vector takes one vector of 16 values, got shape \(1, 16\)"):
        retriever.search_vector(embedding[None], k=3)


def test_gallery_round_trip(retriever: Retriever, bundle_dir: Path, tmp_path: Path) -> None:
    out = retriever.save(tmp_path / "gal")
    info = read_gallery_info(out)
    assert info["count"] == 18 and info["bundle"]["dim"] == 16
    assert info["bundle"]["path"] == str(bundle_dir.resolve())
    assert info["bundle"]["manifest_sha256"] == retriever.encoder.bundle.manifest_sha256
    assert info["index"]["vectors"] == retriever.index.vectors
    loaded = Retriever.load(out)  # finds the bundle from gallery.json
    assert loaded.index.vectors == retriever.index.vectors
    query = pattern_image("purple", 11)
    before, after = retriever.search(query, 5), loaded.search(query, 5)
    assert [h.id for h in after] == [h.id for h in before]
    assert [h.score for h in after] == pytest.approx([h.score for h in before])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_gallery_refuses_another_bundle(retriever: Retriever, tmp_path: Path) -> None:
    retriever.save(tmp_path / "gal")
    other = make_tiny_bundle(tmp_path / "other", with_int8=False, seed=1)
    with pytest.raises(BadInput, match="built with another model"):
        Retriever.load(tmp_path / "gal", bundle=other)
    wider = make_tiny_bundle(tmp_path / "wide", dim=24, with_int8=False)
    with pytest.raises(BadInput, match="dim 16.*dim 24"):
        Retriever.load(tmp_path / "gal", bundle=wider)


def test_missing_or_damaged_gallery(retriever: Retriever, tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="no gallery at"):
        Retriever.load(tmp_path / "none")
    out = retriever.save(tmp_path / "gal")
    items = out / "index.json"
    items.write_text(items.read_text().replace('"label": "red"', '"label": "blue"', 1))
    with pytest.raises(IntegrityError, match="index.json was altered"):
        Retriever.load(out)
    (out / GALLERY_FILE).write_text("[]")
    with pytest.raises(IntegrityError, match="no valid 'checksum'"):
        Retriever.load(out)
    (out / GALLERY_FILE).write_text(sealed_json({"bundle": {}}))  # sealed, but not a gallery's fields
    with pytest.raises(IntegrityError, match="format_version"):
        Retriever.load(out)


def test_atomic_overwrite_keeps_old_gallery_on_failure(
    retriever: Retriever, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = retriever.save(tmp_path / "gal")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    retriever.add([pattern_image("red", 20)], ["extra"])

    def crash(*args: object, **kwargs: object) -> str:
        raise OSError("disk full")

    monkeypatch.setattr(index_files, "sha256_file", crash)  # fails in the middle of writing the index
    with pytest.raises(OSError, match="disk full"):
        retriever.save(out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gal"]  # temp folder cleaned up
    monkeypatch.undo()
    retriever.save(out)
    assert read_gallery_info(out)["count"] == 19


def test_save_refuses_to_replace_a_non_gallery_folder(retriever: Retriever, tmp_path: Path) -> None:
    precious = tmp_path / "photos"
    precious.mkdir()
    (precious / "cat.jpg").write_bytes(b"x")
    with pytest.raises(BadInput, match="is not a gallery"):
        retriever.save(precious)
    assert (precious / "cat.jpg").exists()


def test_add_reports_skipped_and_requires_ids(retriever: Retriever, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    good = tmp_path / "good.png"
    pattern_image("blue", 30).save(good)
    with pytest.raises(BadInput, match="bad.jpg"):
        retriever.add([good, bad])
    report = retriever.add([good, bad], skip_unreadable=True)
    assert report.added == 1 and report.skipped[0][0] == str(bad)
    assert str(good) in retriever.index
    with pytest.raises(BadInput, match="ids are required"):
        retriever.add([pattern_image("red")])
    with pytest.raises(BadInput, match="2 images, 1 ids"):
        retriever.add([good, good], ["a"])


def test_gallery_written_by_save_is_json_not_pickle(retriever: Retriever, tmp_path: Path) -> None:
    out = retriever.save(tmp_path / "gal")
    residual = ["index.residual.npy"] if retriever.index.vectors == "i8" else []  # int8's residual bits
    assert sorted(p.name for p in out.iterdir()) == ["gallery.json", "index.bin", "index.json", *residual]
    sidecar = json.loads((out / "index.json").read_text())  # plain JSON: ids and metadata in the order added
    assert sidecar["ids"] == [f"{c}/{v}" for c in COLOURS for v in range(3)]
    assert sidecar["metadata"] == [{"label": c} for c in COLOURS for _ in range(3)]
    assert (sidecar["count"], sidecar["dim"], sidecar["vectors"]) == (18, 16, retriever.index.vectors)
    assert json.loads((out / "gallery.json").read_text())["count"] == 18


def test_add_reports_progress_per_batch(bundle_dir: Path) -> None:
    r = Retriever(Encoder(bundle_dir))
    seen: list[int] = []
    r.add([pattern_image("red", v) for v in range(10)], [f"r{v}" for v in range(10)], batch_size=4, progress=seen.append)
    assert seen == [4, 4, 2]  # images finished by each batch, the contract of every progress= callback


def test_open_gallery_refuses_to_replace_or_invent(bundle_dir: Path, tmp_path: Path) -> None:
    from proxyembed.runtime.retriever import open_gallery

    with pytest.raises(BadInput, match="no gallery at"):
        open_gallery(tmp_path / "gal", bundle_dir, append=True)
    fresh = open_gallery(tmp_path / "gal", bundle_dir, expected=300_000)
    assert len(fresh) == 0 and fresh.index.M == 32  # the expected size picks M
    fresh.add([pattern_image("red", 0)], ["r0"])
    fresh.save(tmp_path / "gal")
    with pytest.raises(BadInput, match="already exists"):
        open_gallery(tmp_path / "gal", bundle_dir)
    assert "r0" in open_gallery(tmp_path / "gal", bundle_dir, append=True).index
    assert len(open_gallery(tmp_path / "gal", bundle_dir, overwrite=True)) == 0


def test_hold_out_rows_calibrate_then_join(bundle_dir: Path, storage: str, tmp_path: Path) -> None:
    """`hold_out` items wait outside the graph until the save has used them as unseen queries, then are searchable."""
    r = Retriever(Encoder(bundle_dir), Index(16, vectors=storage))
    images = [pattern_image(c, v) for c in COLOURS for v in range(4)]
    ids = [f"{c}/{v}" for c in COLOURS for v in range(4)]
    report = r.add(images, ids, batch_size=5, hold_out=6)
    assert report.added == len(ids) and len(r) == len(ids) - 6
    r.save(tmp_path / "gal")
    rec = read_gallery_info(tmp_path / "gal")["recall"]
    assert rec["method"] == "held-out" and rec["queries"] == 6 and len(r) == len(ids) == rec["count"]
    assert sorted(Retriever.load(tmp_path / "gal").index.ids()) == sorted(ids)


def test_open_gallery_keeps_the_storage_on_append(bundle_dir: Path, tmp_path: Path) -> None:
    from proxyembed.runtime.retriever import open_gallery

    r = open_gallery(tmp_path / "gal", bundle_dir, vectors="i8")
    r.add([pattern_image("red", 0)], ["r0"])
    r.save(tmp_path / "gal")
    assert open_gallery(tmp_path / "gal", bundle_dir, append=True).index.vectors == "i8"
    with pytest.raises(BadInput, match="stores i8 vectors, not f16"):
        open_gallery(tmp_path / "gal", bundle_dir, append=True, vectors="f16")
