"""Data layouts, the built-in synthetic set, samplers and the bad inputs of the data stage."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from proxyembed.data import resolve_data, resolve_eval_data
from proxyembed.data.write_folders import write_split
from proxyembed.runtime.errors import BadInput
from proxyembed.runtime.images import list_images

TINY = "synthetic:train_classes=3,eval_classes=4,per_class=3,size=40"


def _png(path: Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 16), colour).save(path)


def _folder(root: Path, classes: int, per_class: int) -> Path:
    for c in range(classes):
        for i in range(per_class):
            _png(root / f"class{c:02d}" / f"{i}.png", (c * 20, i * 30, 100))
    return root


def test_synthetic_is_deterministic_and_zero_shot() -> None:
    a, b = resolve_data(TINY), resolve_data(TINY)
    assert all(np.array_equal(x.source, y.source) for x, y in zip(a.train + a.eval, b.train + b.eval, strict=True))
    other = resolve_data(TINY.replace("train_classes", "seed=1,train_classes"))
    assert not np.array_equal(a.eval[0].source, other.eval[0].source)
    assert {s.label for s in a.train}.isdisjoint({s.label for s in a.eval})
    assert len({s.label for s in a.eval}) == 4 and len(a.train) == 9
    assert a.eval[0].source.shape == (40, 40, 3) and a.eval[0].source.dtype == np.uint8
    assert a.fingerprint() == b.fingerprint() != other.fingerprint()


def test_synthetic_default_size_meets_the_zero_shot_protocol() -> None:
    from proxyembed.data.synthetic import SyntheticConfig

    cfg = SyntheticConfig()
    assert cfg.train_classes >= 100 and cfg.eval_classes >= 100


def test_synthetic_images_of_a_class_vary() -> None:
    split = resolve_data(TINY)
    first = [s.source.astype(float) for s in split.eval if s.label == split.eval[0].label]
    assert np.abs(first[0] - first[1]).mean() > 10


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("synthetic:classes=3", "--data 'classes=3': unknown key 'classes'"),
        ("synthetic:seed=x", "--data 'seed=x' is not KEY=INTEGER: cannot read 'x'"),
        ("synthetic:seed", "--data 'seed' is not KEY=INTEGER"),
        ("synthetic:per_class=1", "--data synthetic: need >= 2 classes per split, >= 2 images per class and size >= 32"),
    ],
)
def test_bad_synthetic_options(spec: str, message: str) -> None:
    with pytest.raises(BadInput) as err:
        resolve_data(spec)
    assert err.value.message == message


def test_the_synthetic_options_hint_is_a_spec_that_works() -> None:
    """The example every refusal shows must itself be accepted (it once named a 'classes' key that does not exist)."""
    with pytest.raises(BadInput) as err:
        resolve_data("synthetic:classes=3")
    example = err.value.hint.rsplit("e.g. --data ", 1)[1]
    assert example == "synthetic:seed=1,train_classes=50"
    assert len({s.label for s in resolve_data(example).train}) == 50


def test_folder_split_by_class(tmp_path: Path) -> None:
    split = resolve_data(str(_folder(tmp_path / "d", 6, 3)))
    train_names = {split.class_names[s.label] for s in split.train}
    eval_names = {split.class_names[s.label] for s in split.eval}
    assert train_names == {"class00", "class01", "class02"}
    assert eval_names == {"class03", "class04", "class05"}
    assert len(split.eval) == 9 and not split.warnings


def test_separate_eval_folder(tmp_path: Path) -> None:
    _folder(tmp_path / "train", 3, 2)
    ev = tmp_path / "eval"
    for c in range(3):
        for i in range(2):
            _png(ev / f"new{c}" / f"{i}.png", (0, 0, c * 50))
    split = resolve_data(str(tmp_path / "train"), eval_data=str(ev))
    assert {split.class_names[s.label] for s in split.eval} == {"new0", "new1", "new2"}
    assert len(split.train) == 6


def test_overlapping_eval_folder_is_refused(tmp_path: Path) -> None:
    _folder(tmp_path / "a", 3, 2)
    _folder(tmp_path / "b", 3, 2)
    with pytest.raises(BadInput, match="zero-shot"):
        resolve_data(str(tmp_path / "a"), eval_data=str(tmp_path / "b"))


def test_bad_files_are_skipped_and_counted(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", 6, 3)
    (root / "class00" / "broken.png").write_bytes(b"not an image")
    (root / "class05" / "1.png").write_bytes(b"\x89PNG truncated")
    (root / "class05" / "2.png").unlink()  # eval class left with one readable image
    (root / "empty").mkdir()
    split = resolve_data(str(root))
    text = " ".join(split.warnings)
    assert "skipped 2 unreadable" in text and "broken.png" in text
    assert "no readable image" in text and "empty" in text
    assert "single image" in text and "class05" in text
    assert all("broken" not in s.key for s in split.train)
    assert "class05" not in {split.class_names[s.label] for s in split.eval}


def test_training_data_and_index_list_the_same_images(tmp_path: Path) -> None:
    """One lister: hidden files and folders are left out, and other extensions, for training data and index alike."""
    root = _folder(tmp_path / "d", 4, 2)
    _png(root / "class00" / "._0.png", (1, 2, 3))  # a macOS resource-fork companion
    _png(root / "class01" / ".thumbs" / "0.png", (1, 2, 3))
    _png(root / "class02" / "sub" / "9.PNG", (9, 9, 9))
    (root / "class03" / "notes.txt").write_text("not an image")
    split = resolve_eval_data(str(root))
    listed = [item["id"] for item in list_images(root)]
    assert listed == sorted(s.key for s in split.eval) == sorted(listed)
    assert "class02/sub/9.PNG" in listed and not [k for k in listed if "/." in k or k.endswith(".txt")]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing", "does not exist"),
        (lambda p: (p / "f.txt").write_text("x") and p / "f.txt", "is a file"),
        (lambda p: (p / "flat").mkdir() or p / "flat", "no class subfolders"),
        (lambda p: _folder(p / "few", 3, 2), "at least 4"),
    ],
)
def test_bad_data_roots(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(BadInput, match=message):
        resolve_data(str(make(tmp_path)))


def test_eval_only_folder_uses_every_class(tmp_path: Path) -> None:
    split = resolve_eval_data(str(_folder(tmp_path / "d", 3, 2)))
    assert not split.train and len({s.label for s in split.eval}) == 3


def test_written_synthetic_folder_reads_back(tmp_path: Path) -> None:
    split = resolve_data(TINY)
    assert write_split(split, tmp_path / "out") == len(split.train) + len(split.eval)
    back = resolve_eval_data(str(tmp_path / "out" / "eval"))
    assert len(back.eval) == len(split.eval)
    assert Counter(s.label for s in back.eval).most_common(1)[0][1] == 3


def test_balanced_sampler_draws_p_classes_of_k() -> None:
    from proxyembed.data.torch_dataset import BalancedSampler

    labels = [c for c in range(10) for _ in range(5)] + [10, 10]  # class 10 has only 2 images
    sampler = BalancedSampler(labels, batch_size=12, samples_per_class=4, seed=0)
    batches = list(sampler)
    assert len(batches) == len(labels) // 12
    for batch in batches:
        counts = Counter(labels[i] for i in batch)
        assert len(counts) == 3 and set(counts.values()) == {4}
    sampler.set_epoch(1)
    assert list(sampler) != batches
    with pytest.raises(BadInput, match="classes"):
        BalancedSampler(labels, batch_size=48, samples_per_class=4)


def test_train_dataset_replaces_an_image_that_breaks_mid_run(tmp_path: Path) -> None:
    from proxyembed.data.torch_dataset import TrainDataset, train_transform
    from proxyembed.runtime.preprocess import PreprocessSpec

    split = resolve_data(str(_folder(tmp_path / "d", 4, 3)))
    ds = TrainDataset(split.train, train_transform(PreprocessSpec(resize=16, crop=16)))
    Path(split.train[0].source).write_bytes(b"broken after the scan")
    x, y = ds[0]
    assert x.shape == (3, 16, 16) and y == ds.labels[0]
    assert len(ds.failures) >= 1 and "cannot read" in ds.failures[0]
