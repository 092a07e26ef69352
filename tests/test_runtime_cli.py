"""`proxyembed index` and `proxyembed search`: exit codes, messages, skipped files, JSON and grid output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from helpers.bundles import make_tiny_bundle, pattern_image, write_class_images
from proxyembed.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("cli") / "bundle")


@pytest.fixture
def images(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    write_class_images(root, ("red", "green", "blue"), per_class=3)
    return root


def _index(bundle: Path, images: Path, out: Path, *extra: str):
    return runner.invoke(app, ["index", str(bundle), str(images), "--out", str(out), *extra])


def test_index_folder_then_search_json(bundle_dir: Path, images: Path, tmp_path: Path) -> None:
    gal = tmp_path / "gal"
    res = _index(bundle_dir, images, gal, "--batch-size", "4")
    assert res.exit_code == 0, res.output
    assert "indexed 9 image(s), skipped 0" in res.output
    assert "recall@10 1.0000 against exact search (every item is in every answer), ef=64, M=16" in " ".join(res.output.split())
    res = runner.invoke(app, ["search", str(gal), str(images / "green" / "green_1.png"), "-k", "3", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert [r["metadata"]["label"] for r in out[0]["results"]] == ["green"] * 3
    assert out[0]["results"][0] == {**out[0]["results"][0], "rank": 1, "id": "green/green_1.png"}


def test_search_table_and_grid(bundle_dir: Path, images: Path, tmp_path: Path) -> None:
    gal = tmp_path / "gal"
    assert _index(bundle_dir, images, gal).exit_code == 0
    grid = tmp_path / "grid.png"
    res = runner.invoke(app, ["search", str(gal), str(images / "red"), "-k", "2", "--grid", str(grid)])
    assert res.exit_code == 0, res.output
    assert "rank" in res.output and "red/red_0.png" in res.output and "1.0000" in res.output
    with Image.open(grid) as img:
        assert img.size == (3 * 140, 3 * 170)  # 3 query rows x (query + 2 hits), 128 px thumbnails
        colours = {c for _, c in img.convert("RGB").getcolors(maxcolors=1 << 20)}
    assert (0, 128, 0) in colours and (255, 0, 0) not in colours  # every hit has the query's label: green


def test_unreadable_files_are_skipped_counted_and_listed(bundle_dir: Path, images: Path, tmp_path: Path) -> None:
    (images / "red" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (images / "notes.txt").write_text("ignored: not an image extension")
    res = _index(bundle_dir, images, tmp_path / "gal")
    assert res.exit_code == 0, res.output
    assert "skipped 1 unreadable" in res.output and "red/broken.jpg" in res.output
    assert "indexed 9 image(s), skipped 1" in res.output


def test_file_list_with_ids_and_labels(bundle_dir: Path, tmp_path: Path) -> None:
    for name, colour in (("a.png", "red"), ("b.png", "blue")):
        pattern_image(colour).save(tmp_path / name)
    lst = tmp_path / "list.tsv"
    lst.write_text("path\tid\tlabel\tshop\na.png\tsku-1\tred\tnorth\nb.png\tsku-2\tblue\tsouth\n")
    res = _index(bundle_dir, lst, tmp_path / "gal")
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["search", str(tmp_path / "gal"), str(tmp_path / "b.png"), "-k", "1", "--json"])
    hit = json.loads(res.stdout)[0]["results"][0]
    assert hit["id"] == "sku-2" and hit["metadata"]["label"] == "blue" and hit["metadata"]["shop"] == "south"


def test_append_and_existing_gallery(bundle_dir: Path, images: Path, tmp_path: Path) -> None:
    gal = tmp_path / "gal"
    assert _index(bundle_dir, images / "red", gal).exit_code == 0
    res = _index(bundle_dir, images / "blue", gal)
    assert res.exit_code == 2 and "already exists" in res.output and "--append" in res.output
    res = _index(bundle_dir, images / "blue", gal, "--append")
    assert res.exit_code == 0, res.output
    assert json.loads((gal / "gallery.json").read_text())["count"] == 6
    res = _index(bundle_dir, images / "blue", tmp_path / "new", "--append")
    assert res.exit_code == 2 and "no gallery" in res.output


@pytest.mark.parametrize(
    "setup, message",
    [
        ("empty", "no images found"),
        ("all_broken", "none of the 1 images"),
        ("missing", "images not found"),
        ("bad_list", "no 'path' column"),
    ],
)
def test_index_bad_inputs_exit_2(bundle_dir: Path, tmp_path: Path, setup: str, message: str) -> None:
    src = tmp_path / "src"
    if setup == "empty":
        src.mkdir()
    elif setup == "all_broken":
        src.mkdir()
        (src / "x.png").write_bytes(b"nope")
    elif setup == "bad_list":
        src = tmp_path / "list.csv"
        src.write_text("file,label\na.png,x\n")
    res = _index(bundle_dir, src, tmp_path / "gal")
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert not (tmp_path / "gal").exists()


def test_index_missing_or_broken_bundle(bundle_dir: Path, images: Path, tmp_path: Path) -> None:
    res = _index(tmp_path / "no-bundle", images, tmp_path / "gal")
    assert res.exit_code == 2 and "bundle folder not found" in res.output
    broken = make_tiny_bundle(tmp_path / "broken", with_int8=False)
    (broken / "model.onnx").write_bytes(b"tampered")
    res = _index(broken, images, tmp_path / "gal")
    assert res.exit_code == 2 and "altered or truncated" in res.output


def test_search_errors_exit_2(bundle_dir: Path, images: Path, tmp_path: Path) -> None:
    query = str(images / "red" / "red_0.png")
    res = runner.invoke(app, ["search", str(tmp_path / "nothing"), query])
    assert res.exit_code == 2 and "no gallery at" in res.output
    gal = tmp_path / "gal"
    assert _index(bundle_dir, images, gal).exit_code == 0
    other = make_tiny_bundle(tmp_path / "other", with_int8=False, seed=3)
    res = runner.invoke(app, ["search", str(gal), query, "--bundle", str(other)])
    assert res.exit_code == 2 and "built with another model" in res.output
    res = runner.invoke(app, ["search", str(gal), str(tmp_path / "missing.png")])
    assert res.exit_code == 2 and "missing.png" in res.output
    res = runner.invoke(app, ["search", str(gal), query, "-k", "0"])
    assert res.exit_code == 2
    moved = tmp_path / "moved"
    bundle_dir.rename(moved)
    try:
        res = runner.invoke(app, ["search", str(gal), query])
        assert res.exit_code == 2 and "bundle folder not found" in res.output
        assert runner.invoke(app, ["search", str(gal), query, "--bundle", str(moved)]).exit_code == 0
    finally:
        moved.rename(bundle_dir)


@pytest.mark.parametrize("vectors", ["f16", "i8"])
def test_index_quantized_gallery_searches_and_appends(bundle_dir: Path, images: Path, tmp_path: Path, vectors: str) -> None:
    gal = tmp_path / "gal"
    res = _index(bundle_dir, images / "red", gal, "--vectors", vectors, "--json")
    assert res.exit_code == 0, res.output
    index = json.loads(res.stdout)["index"]
    stored = {"f16": 16 * 2, "i8": 16 + 16 // 8}[vectors]  # bytes per 16-d item; i8: codes and residual bits
    assert index["vectors"] == vectors and index["memory_saved_bytes"] == 3 * (16 * 4 - stored)
    assert json.loads((gal / "gallery.json").read_text())["index"]["vectors"] == vectors
    assert _index(bundle_dir, images / "blue", gal, "--append").exit_code == 0  # keeps the gallery's storage
    res = runner.invoke(app, ["search", str(gal), str(images / "blue"), "-k", "1", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert len(rows) == 3 and all("/blue/" in row["results"][0]["metadata"]["path"] for row in rows)  # blue finds blue, not red
    res = _index(bundle_dir, images / "green", gal, "--append", "--vectors", "f32")
    assert res.exit_code == 2 and "stores " + vectors in res.output


def test_index_refuses_a_quantized_gallery_below_the_recall_target(
    bundle_dir: Path, images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gate: recall@10 against exact float32 search below the target exits 1, prints the memory saved, writes nothing."""
    from proxyembed.runtime import index as index_mod

    calibrate = index_mod.Index.calibrate  # an unreachable target stands in for a gallery that loses recall
    monkeypatch.setattr(index_mod.Index, "calibrate", lambda self, **kw: calibrate(self, **{**kw, "target": 1.01, "max_ef": 32, "max_M": 16}))
    res = _index(bundle_dir, images, tmp_path / "gal", "--vectors", "i8")
    assert res.exit_code == 1, res.output
    assert "below the target" in res.output and "MiB saved" in res.output and "--vectors f16" in res.output
    assert not (tmp_path / "gal").exists()
    res = _index(bundle_dir, images, tmp_path / "f32")  # float32 galleries are reported, not refused
    assert res.exit_code == 0 and "below 1.01" in res.output


def test_grid_shows_images_the_gallery_holds(bundle_dir: Path, images: Path, tmp_path: Path) -> None:
    """An item added over HTTP names its image relative to the gallery (``images/NAME``): the grid finds it there."""
    from proxyembed.runtime import Retriever

    gal = tmp_path / "gal"
    assert _index(bundle_dir, images / "red", gal).exit_code == 0
    blue = images / "blue" / "blue_0.png"
    retriever = Retriever.load(gal)
    held = "images/blue.png"
    retriever.add([blue], ids=["held-blue"], metadata=[{"label": "blue", "path": held}])
    retriever.save(gal, new_images={held: blue.read_bytes()})
    assert retriever.image_path({"path": held}) == gal.resolve() / held
    grid = tmp_path / "grid.png"
    res = runner.invoke(app, ["search", str(gal), str(blue), "-k", "1", "--grid", str(grid)])
    assert res.exit_code == 0, res.output
    with Image.open(grid) as img, Image.open(blue) as want:
        hit_tile = img.convert("RGB").getpixel((140 + 6 + 64, 6 + 64))  # centre of the first hit's thumbnail
        assert hit_tile == want.convert("RGB").getpixel((want.width // 2, want.height // 2))  # the held image, not a grey tile
