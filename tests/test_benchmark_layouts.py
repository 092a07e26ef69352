"""Benchmark layouts (CUB-200-2011, Cars196, SOP, In-Shop) are recognised and split on the zero-shot protocol.

Each test builds a tiny fake copy of a benchmark's files (a few classes on each side of the split, 4x4
images) so the loaders' parsing, class split, labels and bad-input messages are checked without the data.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from proxyembed.data import benchmarks
from proxyembed.data.resolve import resolve_data
from proxyembed.data.types import DataSplit, Sample
from proxyembed.runtime.errors import BadInput

scipy_io = pytest.importorskip("scipy.io")


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


PNG = _png_bytes()


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(PNG)


# --- fake layouts -------------------------------------------------------------------------------------

CUB_CLASSES = (1, 2, 3, 101, 102, 200)
CARS_CLASSES = (1, 2, 98, 99, 150, 196)


def make_cub(parent: Path, per_class: int = 2) -> Path:
    """A CUB_200_2011 folder under ``parent``; returns the CUB_200_2011 folder."""
    root = parent / "CUB_200_2011"
    images, labels, split = [], [], []
    i = 0
    for c in CUB_CLASSES:
        for k in range(per_class):
            i += 1
            rel = f"{c:03d}.Bird_{c}/Bird_{c}_{k}.jpg"
            _image(root / "images" / rel)
            images.append(f"{i} {rel}")
            labels.append(f"{i} {c}")
            split.append(f"{i} {k % 2}")
    (root / "images.txt").write_text("\n".join(images) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (root / "train_test_split.txt").write_text("\n".join(split) + "\n")
    return root


def _cars_records(classes: tuple[int, ...], per_class: int) -> list[tuple[str, int]]:
    rows, i = [], 0
    for c in classes:
        for _ in range(per_class):
            i += 1
            rows.append((f"car_ims/{i:06d}.jpg", c))
    return rows


def write_cars_mat(path: Path, rows: list[tuple[str, int]], column: bool = False) -> None:
    """``cars_annos.mat`` with the official field names, as a 1xN (or Nx1) struct array."""
    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    ann = np.zeros((len(rows), 1) if column else (1, len(rows)), dtype=[(f, "O") for f in fields])
    flat = ann.reshape(-1)
    for j, (rel, c) in enumerate(rows):
        flat[j] = (rel, 1, 2, 30, 40, c, j % 2)
    scipy_io.savemat(str(path), {"annotations": ann, "class_names": np.array([f"Car {c}" for c in range(1, 197)])})


def make_cars(root: Path, per_class: int = 2, column: bool = False) -> Path:
    rows = _cars_records(CARS_CLASSES, per_class)
    for rel, _ in rows:
        _image(root / rel)
    write_cars_mat(root / "cars_annos.mat", rows, column)
    return root


SOP_TRAIN = (1, 2, 3)
SOP_TEST = (11319, 11320, 11321)


def make_sop(root: Path, per_class: int = 2) -> Path:
    i = 0
    for name, classes in (("Ebay_train.txt", SOP_TRAIN), ("Ebay_test.txt", SOP_TEST)):
        lines = ["image_id class_id super_class_id path"]
        for c in classes:
            for k in range(per_class):
                i += 1
                rel = f"bicycle_final/{c}_{k}.JPG"
                _image(root / rel)
                lines.append(f"{i} {c} 1 {rel}")
        (root / name).write_text("\n".join(lines) + "\n")
    return root


INSHOP_TRAIN = ("id_00000001", "id_00000002", "id_00000003")
INSHOP_TEST = ("id_00000004", "id_00000005", "id_00000006")


def make_inshop(root: Path, image_dir: str = "Img/img") -> Path:
    """In-Shop with two train images per train item and one query + two gallery images per test item.

    ``image_dir`` is where the listed ``img/...`` paths really live (the official zip gives ``Img/img``).
    """
    rows = []
    for item in INSHOP_TRAIN:
        rows += [(f"img/MEN/Denim/{item}/0{k}_1_front.jpg", item, "train") for k in (1, 2)]
    for item in INSHOP_TEST:
        rows.append((f"img/WOMEN/Dresses/{item}/01_1_front.jpg", item, "query"))
        rows += [(f"img/WOMEN/Dresses/{item}/0{k}_2_side.jpg", item, "gallery") for k in (2, 3)]
    for rel, _, _ in rows:
        _image(root / image_dir / rel.partition("/")[2])
    lines = [str(len(rows)), "image_name item_id evaluation_status"] + [f"{r}   {i} {s}" for r, i, s in rows]
    (root / "Eval").mkdir(parents=True, exist_ok=True)
    (root / "Eval" / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return root


# --- helpers ------------------------------------------------------------------------------------------


def classes_of(samples: list[Sample], split: DataSplit) -> set[str]:
    return {split.class_names[s.label] for s in samples}


def check_labels(split: DataSplit) -> None:
    """Contiguous labels, training classes first, train and evaluation classes disjoint, files exist."""
    train = {s.label for s in split.train}
    ev = {s.label for s in split.eval} | {s.label for s in split.gallery or []}
    assert train == set(range(len(train)))
    assert ev == set(range(len(train), len(train) + len(ev)))
    assert set(split.class_names) == train | ev
    for s in split.train + split.eval + (split.gallery or []):
        assert Path(s.source).is_absolute() and Path(s.source).is_file()
        assert not Path(s.key).is_absolute()
    assert split.preprocess is None


# --- recognition and splits ---------------------------------------------------------------------------


@pytest.mark.parametrize("use_parent", [False, True])
def test_cub(tmp_path: Path, use_parent: bool) -> None:
    inner = make_cub(tmp_path)
    root = tmp_path if use_parent else inner
    assert benchmarks.detect_benchmark(root) is benchmarks.cub200
    split = benchmarks.cub200(root)
    check_labels(split)
    assert (split.name, split.ks, split.gallery, split.warnings) == ("cub200", (1, 2, 4, 8), None, [])
    assert classes_of(split.train, split) == {"1", "2", "3"}
    assert classes_of(split.eval, split) == {"101", "102", "200"}
    assert [split.class_names[i] for i in range(6)] == ["1", "2", "3", "101", "102", "200"]
    assert len(split.train) == 6 and len(split.eval) == 6
    assert split.eval[0].key == "images/101.Bird_101/Bird_101_0.jpg"
    assert resolve_data(str(root)) == split
    assert split.fingerprint() == benchmarks.cub200(inner if use_parent else tmp_path).fingerprint()


@pytest.mark.parametrize("column", [False, True])
def test_cars(tmp_path: Path, column: bool) -> None:
    root = make_cars(tmp_path, column=column)
    assert benchmarks.detect_benchmark(root) is benchmarks.cars196
    split = benchmarks.cars196(root)
    check_labels(split)
    assert (split.name, split.ks, split.gallery, split.warnings) == ("cars196", (1, 2, 4, 8), None, [])
    assert classes_of(split.train, split) == {"1", "2", "98"}
    assert classes_of(split.eval, split) == {"99", "150", "196"}
    assert len(split.train) == 6 and len(split.eval) == 6
    assert split.train[0].key == "car_ims/000001.jpg"
    assert resolve_data(str(root)) == split


@pytest.mark.parametrize("squeeze_me", [False, True])
def test_cars_annotations_either_squeeze_convention(tmp_path: Path, squeeze_me: bool) -> None:
    rows = _cars_records((5, 120), 2)
    for n in (1, len(rows)):  # a single record squeezes to a 0-d array
        path = tmp_path / f"annos{n}.mat"
        write_cars_mat(path, rows[:n])
        mat = scipy_io.loadmat(str(path), squeeze_me=squeeze_me)
        assert benchmarks.cars_annotations(mat, path) == rows[:n]


def test_sop(tmp_path: Path) -> None:
    root = make_sop(tmp_path)
    assert benchmarks.detect_benchmark(root) is benchmarks.sop
    split = benchmarks.sop(root)
    check_labels(split)
    assert (split.name, split.ks, split.gallery, split.warnings) == ("sop", (1, 10, 100, 1000), None, [])
    assert classes_of(split.train, split) == {"1", "2", "3"}
    assert classes_of(split.eval, split) == {"11319", "11320", "11321"}
    assert len(split.train) == 6 and len(split.eval) == 6
    assert split.train[0].key == "bicycle_final/1_0.JPG"
    assert resolve_data(str(root)) == split


@pytest.mark.parametrize("image_dir", ["Img/img", "img", "Img"])
def test_inshop_query_gallery(tmp_path: Path, image_dir: str) -> None:
    root = make_inshop(tmp_path, image_dir)
    assert benchmarks.detect_benchmark(root) is benchmarks.inshop
    split = benchmarks.inshop(root)
    check_labels(split)
    assert (split.name, split.ks, split.warnings) == ("inshop", (1, 10, 20, 30, 40), [])
    assert split.gallery is not None
    assert (len(split.train), len(split.eval), len(split.gallery)) == (6, 3, 6)
    assert classes_of(split.train, split) == set(INSHOP_TRAIN)
    assert classes_of(split.eval, split) == classes_of(split.gallery, split) == set(INSHOP_TEST)
    assert {Path(s.key).name for s in split.eval} == {"01_1_front.jpg"}
    assert split.eval[0].key == f"{image_dir}/WOMEN/Dresses/id_00000004/01_1_front.jpg"
    assert resolve_data(str(root)) == split


def test_class_folders_are_not_a_benchmark(tmp_path: Path) -> None:
    for c in ("cat", "dog", "images", "img"):
        _image(tmp_path / c / "a.png")
    assert benchmarks.detect_benchmark(tmp_path) is None


def test_benchmark_rejects_eval_data(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="the sop benchmark"):
        resolve_data(str(make_sop(tmp_path / "sop")), eval_data=tmp_path)


# --- missing images -----------------------------------------------------------------------------------


def test_missing_images_are_skipped_with_a_warning(tmp_path: Path) -> None:
    root = make_sop(tmp_path, per_class=3)
    (root / "bicycle_final/1_0.JPG").unlink()
    (root / "bicycle_final/11319_0.JPG").unlink()
    split = benchmarks.sop(root)
    assert (len(split.train), len(split.eval)) == (8, 8)
    assert len(split.warnings) == 1 and "skipped 2 image(s)" in split.warnings[0]
    assert "Ebay_test.txt" in split.warnings[0]


def test_evaluation_class_left_with_one_image_is_dropped(tmp_path: Path) -> None:
    root = make_cars(tmp_path)
    (root / "car_ims/000011.jpg").unlink()  # class 196 keeps one image
    split = benchmarks.cars196(root)
    check_labels(split)
    assert classes_of(split.eval, split) == {"99", "150"}
    assert any("single image" in w and "196" in w for w in split.warnings)


def test_query_without_gallery_is_dropped(tmp_path: Path) -> None:
    root = make_inshop(tmp_path)
    for k in (2, 3):
        (root / f"Img/img/WOMEN/Dresses/id_00000006/0{k}_2_side.jpg").unlink()
    split = benchmarks.inshop(root)
    assert classes_of(split.eval, split) == {"id_00000004", "id_00000005"}
    assert any("no gallery image" in w and "id_00000006" in w for w in split.warnings)


@pytest.mark.parametrize(
    ("make", "images"),
    [(make_cub, "CUB_200_2011/images"), (make_cars, "car_ims"), (make_sop, "bicycle_final"), (make_inshop, "Img")],
)
def test_most_images_missing_is_bad_input(tmp_path: Path, make: Callable[[Path], Path], images: str) -> None:
    make(tmp_path)
    for p in [p for p in (tmp_path / images).rglob("*") if p.is_file()]:
        p.unlink()
    with pytest.raises(BadInput, match="missing") as exc:
        resolve_data(str(tmp_path))
    assert "\n" not in str(exc.value)


# --- malformed annotation files -----------------------------------------------------------------------


def _cub_drop_labels(root: Path) -> str:
    (root / "CUB_200_2011/image_class_labels.txt").unlink()
    return "image_class_labels.txt"


def _cub_bad_line(root: Path) -> str:
    with (root / "CUB_200_2011/images.txt").open("a") as f:
        f.write("13\n")
    return "images.txt' line 13"


def _cub_bad_class(root: Path) -> str:
    (root / "CUB_200_2011/image_class_labels.txt").write_text("1 250\n")
    return "image_class_labels.txt' line 1"


def _cub_unlabelled(root: Path) -> str:
    (root / "CUB_200_2011/image_class_labels.txt").write_text("1 1\n")
    return "image_class_labels.txt"


def _cars_no_mat(root: Path) -> str:
    (root / "cars_annos.mat").unlink()
    return "cars_annos.mat"


def _cars_corrupt_mat(root: Path) -> str:
    (root / "cars_annos.mat").write_bytes(b"MATLAB 5.0 MAT-file, truncated" + b"\0" * 40)
    return "cars_annos.mat"


def _cars_wrong_fields(root: Path) -> str:
    scipy_io.savemat(str(root / "cars_annos.mat"), {"annotations": np.zeros((1, 3))})
    return "cars_annos.mat"


def _cars_bad_class(root: Path) -> str:
    write_cars_mat(root / "cars_annos.mat", [("car_ims/000001.jpg", 1), ("car_ims/000002.jpg", 0)])
    return "cars_annos.mat' annotation 2"


def _cars_nan_class(root: Path) -> str:
    write_cars_mat(root / "cars_annos.mat", [("car_ims/000001.jpg", float("nan"))])
    return "cars_annos.mat' annotation 1"


def _sop_no_test(root: Path) -> str:
    (root / "Ebay_test.txt").unlink()
    return "Ebay_test.txt"


def _sop_bad_header(root: Path) -> str:
    path = root / "Ebay_train.txt"
    path.write_text(path.read_text().replace("super_class_id ", ""))
    return "Ebay_train.txt"


def _sop_bad_line(root: Path) -> str:
    with (root / "Ebay_test.txt").open("a") as f:
        f.write("99 x 1 bicycle_final/x.JPG\n")
    return "Ebay_test.txt' line 8"


def _sop_shared_class(root: Path) -> str:
    with (root / "Ebay_test.txt").open("a") as f:
        f.write("99 1 1 bicycle_final/1_0.JPG\n")
    return "Ebay_test.txt"


def _inshop_no_partition(root: Path) -> str:
    (root / "Eval/list_eval_partition.txt").unlink()
    return "list_eval_partition.txt"


def _inshop_no_count(root: Path) -> str:
    path = root / "Eval/list_eval_partition.txt"
    path.write_text("\n".join(path.read_text().splitlines()[1:]))
    return "list_eval_partition.txt"


def _inshop_wrong_count(root: Path) -> str:
    path = root / "Eval/list_eval_partition.txt"
    path.write_text("\n".join(path.read_text().splitlines()[:-1]))
    return "list_eval_partition.txt"


def _inshop_bad_status(root: Path) -> str:
    path = root / "Eval/list_eval_partition.txt"
    path.write_text(path.read_text().replace("gallery", "test", 1))
    return "list_eval_partition.txt' line"


@pytest.mark.parametrize(
    ("make", "corrupt"),
    [
        (make_cub, _cub_drop_labels),
        (make_cub, _cub_bad_line),
        (make_cub, _cub_bad_class),
        (make_cub, _cub_unlabelled),
        (make_cars, _cars_no_mat),
        (make_cars, _cars_corrupt_mat),
        (make_cars, _cars_wrong_fields),
        (make_cars, _cars_bad_class),
        (make_cars, _cars_nan_class),
        (make_sop, _sop_no_test),
        (make_sop, _sop_bad_header),
        (make_sop, _sop_bad_line),
        (make_sop, _sop_shared_class),
        (make_inshop, _inshop_no_partition),
        (make_inshop, _inshop_no_count),
        (make_inshop, _inshop_wrong_count),
        (make_inshop, _inshop_bad_status),
    ],
    ids=lambda f: f.__name__,
)
def test_bad_annotation_file_is_one_line_bad_input(
    tmp_path: Path, make: Callable[[Path], Path], corrupt: Callable[[Path], str]
) -> None:
    make(tmp_path)
    named = corrupt(tmp_path)
    with pytest.raises(BadInput) as exc:
        resolve_data(str(tmp_path))
    assert named in str(exc.value)
    assert exc.value.hint and "\n" not in str(exc.value)
