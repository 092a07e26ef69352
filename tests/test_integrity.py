"""Nothing silently damaged: every byte of a gallery and a bundle is checked, modes follow the umask,
and a process killed mid-write leaves the previous artifact loadable.

The fuzz tests damage every file of a gallery and of a bundle (bit flips at sampled positions, always
including the first and last byte and the checksum field; truncation; an empty file; deletion; the same
file from another gallery or bundle) and assert a clean refusal: a :class:`ProxyEmbedError` with exit
code 2, and the one-line message at the CLI.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from helpers.bundles import make_tiny_bundle, write_class_images
from proxyembed.cli import app
from proxyembed.runtime import Bundle, Encoder, ProxyEmbedError, Retriever
from proxyembed.runtime.manifest import MANIFEST_NAME
from proxyembed.runtime.retriever import GALLERY_FILE

GALLERY_FILES = (GALLERY_FILE, "index.json", "index.bin")
BUNDLE_FILES = (MANIFEST_NAME, "model.onnx")


def _damaged(raw: bytes, seed: int) -> Iterator[tuple[str, bytes | None]]:
    """(what, new bytes or None for a deleted file) for one file's content."""
    rng = np.random.default_rng(seed)
    tail = max(0, len(raw) - 80)  # a sealed JSON file keeps its checksum in the last 80 bytes
    positions = sorted({0, len(raw) - 1, *rng.integers(0, len(raw), 5).tolist(), *rng.integers(tail, len(raw), 3).tolist()})
    for pos in positions:
        flipped = bytearray(raw)
        flipped[pos] ^= 1 << int(rng.integers(8))
        yield f"bit flip at byte {pos}", bytes(flipped)
    yield "truncated to half", raw[: len(raw) // 2]
    yield "last byte cut", raw[:-1]
    yield "emptied", b""
    yield "deleted", None


def _fuzz(folder: Path, name: str, load) -> None:
    """Damage ``folder/name`` every way :func:`_damaged` knows, asserting ``load()`` refuses each; then restore it."""
    raw = (folder / name).read_bytes()
    for what, content in _damaged(raw, seed=len(name)):
        if content is None:
            (folder / name).unlink()
        else:
            (folder / name).write_bytes(content)
        _assert_refused(load, f"{name} {what}")
        (folder / name).write_bytes(raw)


def _assert_refused(load, what: str) -> None:
    with pytest.raises(ProxyEmbedError) as err:
        load()
    assert err.value.exit_code == 2, f"{what}: {err.value}"
    assert "\n" not in str(err.value), f"{what}: not a one-line message: {err.value}"


@pytest.fixture(scope="module")
def two_galleries(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("integrity")
    bundle = make_tiny_bundle(root / "bundle", with_int8=False)
    galleries = []
    for name, colours in (("a", ("red", "green")), ("b", ("blue", "green"))):
        paths = write_class_images(root / f"imgs_{name}", colours, per_class=3)
        retriever = Retriever(Encoder(bundle))
        retriever.add(paths)
        galleries.append(retriever.save(root / name))
    return bundle, galleries[0], galleries[1]


@pytest.mark.parametrize("name", GALLERY_FILES)
def test_every_damage_to_a_gallery_file_is_refused(two_galleries: tuple[Path, Path, Path], name: str, tmp_path: Path) -> None:
    bundle, source, _ = two_galleries
    gal = Path(shutil.copytree(source, tmp_path / "gal"))
    _fuzz(gal, name, lambda: Retriever.load(gal, bundle))
    assert len(Retriever.load(gal, bundle)) == 6  # restored: loads again


def test_files_swapped_between_galleries_are_refused(two_galleries: tuple[Path, Path, Path], tmp_path: Path) -> None:
    bundle, a, b = two_galleries
    for swapped in [(n,) for n in GALLERY_FILES] + [("index.json", "index.bin"), ("gallery.json", "index.json")]:
        gal = Path(shutil.copytree(a, tmp_path / "-".join(swapped)))
        for name in swapped:
            shutil.copyfile(b / name, gal / name)
        _assert_refused(lambda gal=gal: Retriever.load(gal, bundle), f"swapped {swapped}")


def test_damaged_gallery_is_a_one_line_exit_2_at_the_cli(two_galleries: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, source, _ = two_galleries
    gal = Path(shutil.copytree(source, tmp_path / "gal"))
    raw = bytearray((gal / GALLERY_FILE).read_bytes())
    raw[raw.index(b'"count"') + 1] ^= 0x20  # "Count": JSON that parses, with a changed key
    (gal / GALLERY_FILE).write_bytes(bytes(raw))
    image = next((source.parent / "imgs_a" / "red").iterdir())
    result = CliRunner().invoke(app, ["search", str(gal), str(image)])
    assert result.exit_code == 2 and "gallery.json was altered" in " ".join(result.output.split())


@pytest.fixture(scope="module")
def two_bundles(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("bundles")
    return make_tiny_bundle(root / "a", with_int8=False, seed=0), make_tiny_bundle(root / "b", with_int8=False, seed=1)


@pytest.mark.parametrize("name", BUNDLE_FILES)
def test_every_damage_to_a_bundle_file_is_refused(two_bundles: tuple[Path, Path], name: str, tmp_path: Path) -> None:
    bundle = Path(shutil.copytree(two_bundles[0], tmp_path / "bundle"))
    _fuzz(bundle, name, lambda: Bundle.load(bundle))
    assert Bundle.load(bundle).dim == 16


@pytest.mark.parametrize("name", BUNDLE_FILES)
def test_files_swapped_between_bundles_are_refused(two_bundles: tuple[Path, Path], name: str, tmp_path: Path) -> None:
    a, b = two_bundles
    bundle = Path(shutil.copytree(a, tmp_path / "bundle"))
    shutil.copyfile(b / name, bundle / name)
    _assert_refused(lambda: Bundle.load(bundle), f"swapped {name}")


def test_gallery_files_follow_the_umask(two_galleries: tuple[Path, Path, Path], tmp_path: Path) -> None:
    bundle, source, _ = two_galleries
    old = os.umask(0o027)
    try:
        out = Retriever.load(source, bundle).save(tmp_path / "gal")
    finally:
        os.umask(old)
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in out.iterdir()} == {n: "0o640" for n in GALLERY_FILES}
    assert oct(out.stat().st_mode & 0o777) == "0o750"


def test_bundle_files_follow_the_umask(two_bundles: tuple[Path, Path], tmp_path: Path) -> None:
    from proxyembed.export.bundle_writer import BundleWriter

    manifest = Bundle.load(two_bundles[0]).manifest
    old = os.umask(0o027)
    try:
        with BundleWriter(tmp_path / "b", force=False) as writer:
            shutil.copyfile(two_bundles[0] / "model.onnx", writer.dir / "model.onnx")
            out = writer.commit(manifest)
    finally:
        os.umask(old)
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in out.iterdir()} == {n: "0o640" for n in BUNDLE_FILES}
    assert oct(out.stat().st_mode & 0o777) == "0o750" and Bundle.load(out).dim == 16


def test_a_staged_folder_replaces_its_target_only_when_complete(tmp_path: Path) -> None:
    """staged_dir swaps on success only; a failed or uncommitted build leaves the old folder and no temp folder."""
    from proxyembed.runtime.files import StagedDir, staged_dir

    target = tmp_path / "out"
    with staged_dir(target) as tmp:
        (tmp / "v").write_text("1")
    with pytest.raises(RuntimeError), staged_dir(target) as tmp:
        (tmp / "v").write_text("2")
        raise RuntimeError("failed mid-build")
    with StagedDir(target) as stage:
        (stage.path / "v").write_text("3")  # never committed
    assert (target / "v").read_text() == "1" and [p.name for p in tmp_path.iterdir()] == ["out"]
    with staged_dir(target) as tmp:
        (tmp / "w").write_text("4")
    assert [p.name for p in target.iterdir()] == ["w"] and [p.name for p in tmp_path.iterdir()] == ["out"]


# -- kill -9 mid-write ------------------------------------------------------------------------------


def _kill_when(cmd: list[str], appears: Path, pattern: str, timeout: float = 120.0) -> int | None:
    """Run ``cmd``; SIGKILL it as soon as a file matching ``pattern`` appears in ``appears``. Its exit code, or None if killed."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if any(appears.glob(pattern)):
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return None
            time.sleep(0.002)
        return proc.wait(timeout=1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_kill_during_index_append_keeps_the_previous_gallery(two_galleries: tuple[Path, Path, Path], tmp_path: Path) -> None:
    bundle, source, _ = two_galleries
    gal = Path(shutil.copytree(source, tmp_path / "gal"))
    more = tmp_path / "more"
    write_class_images(more, ("blue", "red", "green"), per_class=40)
    cmd = [sys.executable, "-m", "proxyembed", "index", str(bundle), str(more), "--out", str(gal), "--append"]
    code = _kill_when(cmd, tmp_path, ".gal.*")  # the staged folder: killed while the new gallery is written
    assert code in (None, 0)
    assert len(Retriever.load(gal, bundle)) in (6, 6 + 120)  # the previous gallery, or the finished new one


def test_kill_during_export_keeps_the_previous_bundle(tmp_path: Path) -> None:
    from helpers.checkpoints import make_checkpoint

    run = tmp_path / "run"
    make_checkpoint(run)
    out = make_tiny_bundle(tmp_path / "bundle", with_int8=False)  # the previous bundle that --force replaces
    cmd = [sys.executable, "-m", "proxyembed", "export", str(run), "--out", str(out), "--force"]
    before = Bundle.load(out).manifest_sha256
    code = _kill_when(cmd, tmp_path, ".bundle.*/model.onnx")  # killed while the ONNX file is being written
    assert code is None, "the export finished before it could be killed"
    assert Bundle.load(out).manifest_sha256 == before
