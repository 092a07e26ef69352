"""The decoded-image cache: the pixels it keeps, when it refuses a stored copy, and how training and evaluation use it."""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from proxyembed.data import resolve_data
from proxyembed.data.image_cache import (
    CacheView,
    choose_where,
    fingerprint,
    key_name,
    open_cache,
    ram_budget,
    train_side,
)
from proxyembed.data.torch_dataset import TrainDataset, train_transform
from proxyembed.data.types import Sample
from proxyembed.runtime.errors import BadInput
from proxyembed.runtime.preprocess import Preprocessor, PreprocessSpec, load_image
from proxyembed.training.config import resolve_config
from proxyembed.training.trainer import train

SPEC = PreprocessSpec(resize=37, crop=32, fit="squash", decode="full")
# Mean absolute difference, in 0-255 levels, between a reduced and a full decode of the same photo after the
# view's resize: DCT scaling is a different low-pass filter, not another picture (measured about 1 here).
REDUCED_TOLERANCE = 3.0


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes of 5 JPEGs at 400x300 (large enough for reduced decoding at 32 px), one of them a broken file."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for c in range(3):
        (root / f"class{c}").mkdir()
        for i in range(5):
            img = Image.new("RGB", (400, 300), tuple(int(v) for v in rng.integers(60, 200, 3)))
            x, y = (int(v) for v in rng.integers(10, 200, 2))
            ImageDraw.Draw(img).ellipse((x, y, x + 150, y + 90), fill=(40 * c, 200 - 50 * c, 90))
            img.save(root / f"class{c}" / f"{i}.jpg", quality=90)
    return root


def samples_of(root: Path) -> list[Sample]:
    files = sorted(root.rglob("*.jpg"))
    return [Sample(str(p), int(p.parent.name[-1]), str(p.relative_to(root))) for p in files]


def test_square_view_is_the_evaluation_input_and_side_view_the_decoded_photo(folder: Path) -> None:
    samples = samples_of(folder)
    pre = Preprocessor(SPEC)
    square, _ = open_cache(samples, CacheView(SPEC), "ram")
    side, _ = open_cache(samples, CacheView(SPEC, 46), "ram")
    for i, s in enumerate(samples):
        assert np.array_equal(square[i], np.asarray(pre.square(pre.decode(s.source))))
        full = load_image(s.source).resize((61, 46), Image.BILINEAR)  # 400x300 with the shorter side at 46
        assert np.array_equal(side[i], np.asarray(full))


def test_reduced_decoding_stays_within_the_stated_tolerance(folder: Path) -> None:
    samples = samples_of(folder)
    reduced = PreprocessSpec(resize=37, crop=32, fit="squash", decode="reduced")
    for view_full, view_reduced in ((CacheView(SPEC), CacheView(reduced)), (CacheView(SPEC, 46), CacheView(reduced, 46))):
        a, _ = open_cache(samples, view_full, "ram")
        b, _ = open_cache(samples, view_reduced, "ram")
        diffs = [np.abs(a[i].astype(float) - b[i].astype(float)).mean() for i in range(len(samples))]
        assert all(a[i].shape == b[i].shape for i in range(len(samples)))
        assert 0 < max(diffs) <= REDUCED_TOLERANCE  # a different decode, and close to the full one


def test_train_side_covers_the_smallest_crop_up_to_twice_the_input() -> None:
    assert train_side(64, (0.5, 1.0)) == 91  # 64 / sqrt(0.5): the smallest light crop is 64 px wide
    assert train_side(64, (1.0, 1.0)) == 64
    assert train_side(64, (0.08, 1.0)) == 128  # capped at 2x


def test_a_disk_cache_is_reused_and_a_stale_or_damaged_one_is_rebuilt(folder: Path, tmp_path: Path) -> None:
    samples = samples_of(folder)
    view = CacheView(SPEC, 46)
    first, info = open_cache(samples, view, "disk", folder=tmp_path)
    assert info.built and info.where == "disk" and first is not None
    pixels = [first[i].copy() for i in range(len(samples))]
    again, info = open_cache(samples, view, "disk", folder=tmp_path)
    assert not info.built and again is not None and all(np.array_equal(again[i], pixels[i]) for i in range(len(samples)))
    base = tmp_path / key_name(fingerprint(samples, view))

    raw = bytearray(base.with_suffix(".bin").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    base.with_suffix(".bin").write_bytes(bytes(raw))
    rebuilt, info = open_cache(samples, view, "disk", folder=tmp_path)
    assert info.built and "sha256" in (info.rebuilt_because or "")
    assert rebuilt is not None and all(np.array_equal(rebuilt[i], pixels[i]) for i in range(len(samples)))

    base.with_suffix(".bin").write_bytes(base.with_suffix(".bin").read_bytes()[:-100])
    _, info = open_cache(samples, view, "disk", folder=tmp_path)
    assert info.built and "size" in (info.rebuilt_because or "")


@pytest.mark.parametrize("mode", ["auto", "disk"])
def test_a_damaged_copy_is_hashed_once_before_it_is_rebuilt(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    """A same-size damaged pixel file costs one sha256 pass to find, not one per look (a SOP-size cache hashes for ~20 s)."""
    from proxyembed.data import image_cache

    samples = samples_of(folder)
    view = CacheView(SPEC, 46)
    open_cache(samples, view, "disk", folder=tmp_path)
    base = tmp_path / key_name(fingerprint(samples, view))
    raw = bytearray(base.with_suffix(".bin").read_bytes())
    raw[7] ^= 0xFF
    base.with_suffix(".bin").write_bytes(bytes(raw))
    hashed: list[Path] = []
    real = image_cache.sha256_file
    monkeypatch.setattr(image_cache, "sha256_file", lambda p: hashed.append(Path(p)) or real(p))
    cache, info = open_cache(samples, view, mode, folder=tmp_path, budget=0)  # type: ignore[arg-type]  # auto: no RAM, so disk
    assert info.built and info.where == "disk" and "sha256" in (info.rebuilt_because or "")
    assert [p.suffix for p in hashed] == [".bin"]  # once; the new copy is hashed as it is written
    assert cache is not None and np.array_equal(cache[0], open_cache(samples, view, "ram")[0][0])  # type: ignore[index]

    header = base.with_suffix(".json")
    header.write_text(header.read_text().replace('"bytes": ', '"bytes": 1'))
    _, info = open_cache(samples, view, "disk", folder=tmp_path)
    assert info.built and "header" in (info.rebuilt_because or "")

    other_view = CacheView(SPEC, 40)  # another spec: another file; its header copied over is refused, not used
    other = tmp_path / key_name(fingerprint(samples, other_view))
    for suffix in (".bin", ".json"):
        other.with_suffix(suffix).write_bytes(base.with_suffix(suffix).read_bytes())
    cache, info = open_cache(samples, other_view, "disk", folder=tmp_path)
    assert info.built and "key" in (info.rebuilt_because or "") and cache is not None and cache[0].shape[0] == 40


def test_changed_data_gets_another_key(folder: Path, tmp_path: Path) -> None:
    samples = samples_of(folder)
    view = CacheView(SPEC)
    before = fingerprint(samples, view)
    assert fingerprint(samples[:-1], view) != before
    assert fingerprint(samples, CacheView(PreprocessSpec(resize=37, crop=32, fit="letterbox", decode="full"))) != before
    victim = Path(samples[0].source)
    os.utime(victim, ns=(victim.stat().st_atime_ns, victim.stat().st_mtime_ns + 10**9))
    assert fingerprint(samples, view) != before


def _open_in_child(args: tuple[list[Sample], str]) -> bool:
    samples, folder = args
    _, info = open_cache(samples, CacheView(SPEC, 46), "disk", folder=Path(folder))
    return info.built


def test_processes_sharing_a_cache_build_it_once(folder: Path, tmp_path: Path) -> None:
    samples = samples_of(folder)
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        built = pool.map(_open_in_child, [(samples, str(tmp_path))] * 3)
    assert sorted(built) == [False, False, True]


def test_a_disk_cache_pickles_as_its_path_not_its_pixels(folder: Path, tmp_path: Path) -> None:
    samples = samples_of(folder)
    cache, _ = open_cache(samples, CacheView(SPEC, 46), "disk", folder=tmp_path)
    assert cache is not None
    data = pickle.dumps(cache)
    assert len(data) < cache.nbytes / 4
    assert np.array_equal(pickle.loads(data)[3], cache[3])


def test_auto_sends_a_sop_size_set_at_256px_to_disk() -> None:
    view = CacheView(PreprocessSpec(resize=292, crop=256), train_side(256, (0.5, 1.0)))
    estimate = view.estimate_bytes(60_000)
    assert estimate == 60_000 * 363 * 484 * 3  # 29 GiB: 363 x 484 x 3 bytes an image
    assert choose_where("auto", estimate, ram_budget(8.0), shared=False, on_disk=False) == "disk"
    assert choose_where("auto", view.estimate_bytes(5_000), ram_budget(8.0), shared=False, on_disk=False) == "ram"
    assert choose_where("auto", 1, ram_budget(8.0), shared=True, on_disk=False) == "disk"  # torchrun ranks share one file
    assert choose_where("auto", 1, ram_budget(8.0), shared=False, on_disk=True) == "disk"  # an earlier run's copy
    assert choose_where("ram", estimate, 0, shared=False, on_disk=False) == "ram"


def test_a_broken_image_is_counted_and_replaced_as_without_the_cache(folder: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    for c in folder.iterdir():
        (root / c.name).mkdir(parents=True)
        for f in c.iterdir():
            (root / c.name / f.name).write_bytes(f.read_bytes())
    (root / "class1" / "2.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    samples = samples_of(root)
    broken = next(i for i, s in enumerate(samples) if s.source.endswith("class1/2.jpg"))
    transform = train_transform(SPEC, "none")
    cache, _ = open_cache(samples, CacheView(SPEC), "disk", folder=tmp_path / "cache")
    cached = TrainDataset(samples, train_transform(SPEC, "none", squared=True), cache)
    plain = TrainDataset(samples, transform)
    (x_cached, y_cached), (x_plain, y_plain) = cached[broken], plain[broken]
    assert y_cached == y_plain == plain.labels[broken]
    assert cached.failures == plain.failures and "class1/2.jpg" in plain.failures[0]  # counted alike, the same message
    assert np.array_equal(x_cached.numpy(), x_plain.numpy())  # the same replacement, the same pixels


TRAIN = dict(data="synthetic:train_classes=6,eval_classes=4,per_class=6,size=40", image_size=32, batch_size=16, embedding_dim=16, epochs=1)


def test_training_reuses_its_disk_cache_on_resume_and_evaluates_as_without_it(tmp_path: Path) -> None:
    cache_dir = str(tmp_path / "cache")
    first = train(resolve_config({**TRAIN, "cache": "disk", "cache_dir": cache_dir, "eval_untrained": True}), tmp_path / "run")
    pipeline = json.loads((tmp_path / "run" / "config.json").read_text())["input_pipeline"]
    assert pipeline["cache"]["train"]["built"] and pipeline["cache"]["eval"]["built"]
    assert pipeline["loader"]["num_workers"] == 0 and pipeline["loader"]["persistent_workers"] is False
    train(resolve_config({**TRAIN, "epochs": 2}), tmp_path / "run", resume=True)
    resumed = json.loads((tmp_path / "run" / "config.json").read_text())["input_pipeline"]
    for name in ("train", "eval"):
        assert not resumed["cache"][name]["built"] and resumed["cache"][name]["path"] == pipeline["cache"][name]["path"]
    off = train(resolve_config({**TRAIN, "cache": "off", "eval_untrained": True}), tmp_path / "off")
    assert json.loads((tmp_path / "off" / "config.json").read_text())["input_pipeline"]["cache"] == {"mode": "off"}
    assert off.initial == first.initial  # evaluation from the cache: the uncached numbers


def test_the_run_dir_still_reads_back(tmp_path: Path) -> None:
    from proxyembed import Run

    train(resolve_config({**TRAIN, "cache": "ram"}), tmp_path / "run")
    assert Run(tmp_path / "run").config.cache == "ram"
    assert resolve_data(TRAIN["data"]).train  # the synthetic set itself is untouched by caching


def test_the_whitening_images_of_streamed_shards_are_cached_with_the_evaluation_images(tmp_path: Path) -> None:
    pytest.importorskip("webdataset", reason="webdataset is not installed (pip install 'proxyembed[shards]')")
    from typer.testing import CliRunner

    from proxyembed.cli import app

    res = CliRunner().invoke(app, ["data", TRAIN["data"], "--to-shards", str(tmp_path / "sh"), "--shard-size", "18"])
    assert res.exit_code == 0, res.output
    cfg = resolve_config({**TRAIN, "data": str(tmp_path / "sh" / "train-{000000..000001}.tar"), "cache": "ram", "epochs": 2})
    assert cfg.whiten
    train(cfg, tmp_path / "run")
    cached = json.loads((tmp_path / "run" / "config.json").read_text())["input_pipeline"]["cache"]
    assert "train" not in cached  # streamed: read in shard order, not cached
    assert cached["eval"]["images"] == 4 * 6 + 36  # the unseen classes and the 36 streamed training images the whitening fits on


def _open_and_report(args: tuple[list[Sample], str]) -> tuple[bool, int]:
    samples, folder = args
    cache, info = open_cache(samples, CacheView(SPEC, 46), "disk", folder=Path(folder))
    assert cache is not None
    return info.built, int(cache[0].sum())


def test_a_valid_copy_is_checked_under_a_shared_lock_while_another_process_maps_it(folder: Path, tmp_path: Path) -> None:
    import fcntl

    samples = samples_of(folder)
    held, info = open_cache(samples, CacheView(SPEC, 46), "disk", folder=tmp_path)  # this process keeps it mapped
    assert held is not None and info.built
    with open(tmp_path / (key_name(fingerprint(samples, CacheView(SPEC, 46))) + ".lock"), "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)  # as a process checking or mapping the copy holds it
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            # a second run (or torchrun rank) checks and maps it meanwhile, instead of queueing for an exclusive lock
            built, total = pool.apply_async(_open_and_report, ((samples, str(tmp_path)),)).get(timeout=120)
    assert not built and total == int(held[0].sum())
    held.close()


def test_the_disk_cache_evicts_least_recently_used_entries_never_one_in_use(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    samples = samples_of(folder)
    views = [CacheView(SPEC, side) for side in (40, 46, 52, 58)]
    bases = [tmp_path / key_name(fingerprint(samples, v)) for v in views]
    in_use, _ = open_cache(samples, views[0], "disk", folder=tmp_path)
    unused, _ = open_cache(samples, views[1], "disk", folder=tmp_path)
    assert in_use is not None and unused is not None
    unused.close()

    def entry_bytes(base: Path) -> int:
        return sum(base.with_suffix(x).stat().st_size for x in (".bin", ".json"))

    # room for two entries of the three: the least recently used one nobody maps goes, the older one in use stays
    monkeypatch.setenv("PROXYEMBED_CACHE_MAX_GB", str((entry_bytes(bases[0]) + 2 * entry_bytes(bases[1])) / 2**30))
    newest, info = open_cache(samples, views[2], "disk", folder=tmp_path)
    assert info.built and newest is not None
    assert not bases[1].with_suffix(".json").exists() and not bases[1].with_suffix(".bin").exists()
    assert bases[0].with_suffix(".bin").exists() and int(in_use[3].sum()) > 0  # still mapped, still readable
    _, info = open_cache(samples, views[1], "disk", folder=tmp_path)
    assert info.built  # an evicted entry is simply built again

    in_use.close()
    monkeypatch.setenv("PROXYEMBED_CACHE_MAX_GB", "0")
    latest, _ = open_cache(samples, views[3], "disk", folder=tmp_path)  # over any limit: everything unused goes but this one
    assert latest is not None and bases[3].with_suffix(".bin").exists()
    assert not bases[0].with_suffix(".bin").exists() and bases[2].with_suffix(".bin").exists()  # `newest` is still open
    monkeypatch.setenv("PROXYEMBED_CACHE_MAX_GB", "lots")
    with pytest.raises(BadInput, match="PROXYEMBED_CACHE_MAX_GB"):
        open_cache(samples, CacheView(SPEC, 64), "disk", folder=tmp_path)
