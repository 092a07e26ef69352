"""`proxyembed embed --engine ray`: Ray Data in local mode against the single-process `proxyembed embed`.

One Ray session for the module (starting Ray takes seconds): two CPUs, no dashboard, so one encoder
actor and one CPU left for the read tasks, the smallest setting that does not stall.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from helpers.bundles import make_tiny_bundle, write_class_images
from proxyembed.cli import app
from proxyembed.runtime import BadInput, Retriever
from proxyembed.runtime.embeddings import read_embeddings
from proxyembed.scale import plan_shards, size_actors

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install \"proxyembed[ray]\")")

runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def ray_session() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:  # the variable is this module's only (the fixture is module-scoped)
        mp.setenv("RAY_DISABLE_USAGE_STATS", os.environ.get("RAY_DISABLE_USAGE_STATS", "1"))
        ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False, _node_ip_address="127.0.0.1")
        yield
        ray.shutdown()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("ray") / "bundle", with_int8=False)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ray") / "imgs"
    write_class_images(root, ("red", "green", "blue", "yellow"), per_class=3)
    (root / "red" / "broken.png").write_bytes(b"not a png")
    return root


def _embed(*args: str):
    return runner.invoke(app, ["embed", *args])


def test_shards_hold_the_single_process_vectors_and_list_the_corrupt_file(bundle: Path, images: Path, tmp_path: Path) -> None:
    local, out = tmp_path / "local.npy", tmp_path / "ray"
    assert _embed(str(bundle), str(images), "--out", str(local)).exit_code == 0
    res = _embed(str(bundle), str(images), "--out", str(out), "--engine", "ray", "--shard-size", "5", "--batch-size", "3", "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert (summary["rows"], summary["shards"], summary["shards_resumed"], summary["actors"]) == (13, 3, 0, 1)
    assert [u["id"] for u in summary["unreadable"]] == ["red/broken.png"] and "cannot read image" in summary["unreadable"][0]["reason"]

    expected = read_embeddings(local)
    parts = [read_embeddings(p) for p in sorted(out.glob("*.npy"))]
    assert [len(p.items) for p in parts] == [5, 5, 3]
    np.testing.assert_allclose(np.concatenate([p.vectors for p in parts]), expected.vectors, atol=1e-6, rtol=0)
    assert [it for p in parts for it in p.items] == expected.items  # ids and metadata as the local path gives them
    broken = next(i for i, it in enumerate(expected.items) if it["id"] == "red/broken.png")
    assert parts[broken // 5].info["skipped"] == [broken % 5]


def test_a_rerun_skips_finished_shards_and_redoes_a_lost_one(bundle: Path, images: Path, tmp_path: Path) -> None:
    from proxyembed import embed_ray

    out = tmp_path / "ray"
    first = embed_ray(bundle, images, out, shard_size=4)
    assert (first.shards, first.shards_resumed, first.embedded) == (4, 0, 13)
    kept = (out / "shard-00000.npy").stat().st_mtime_ns
    for suffix in (".npy", ".json", ".items.jsonl"):
        (out / f"shard-00002{suffix}").unlink()
    second = embed_ray(bundle, images, out, shard_size=4)
    assert (second.shards_resumed, second.embedded) == (3, 4)
    assert (out / "shard-00000.npy").stat().st_mtime_ns == kept
    assert first.unreadable == [("red/broken.png", "cannot read image <9 bytes>: UnidentifiedImageError")]
    assert second.unreadable == [("red/broken.png", "unreadable, recorded in shard-00001.npy")]  # a finished shard keeps its count
    assert embed_ray(bundle, images, out, shard_size=4).embedded == 0
    # another shard size would mix rows of two plans
    res = _embed(str(bundle), str(images), "--out", str(out), "--engine", "ray", "--shard-size", "5")
    assert res.exit_code == 2 and "holds shard-00003.npy, not a shard of this job" in res.output


def test_the_shard_folder_merges_into_a_gallery_that_finds_each_image_first(bundle: Path, images: Path, tmp_path: Path) -> None:
    out, gallery = tmp_path / "ray", tmp_path / "gallery"
    assert _embed(str(bundle), str(images), "--out", str(out), "--engine", "ray", "--shard-size", "6").exit_code == 0
    res = runner.invoke(app, ["index", str(bundle), "--from-embeddings", str(out), "--out", str(gallery), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert (summary["added"], [s["id"] for s in summary["skipped"]]) == (12, ["red/broken.png"])
    retriever = Retriever.load(gallery)
    for query in ("green/green_1.png", "yellow/yellow_2.png"):
        assert retriever.search(images / query, k=1)[0].id == query


def test_settings_that_would_stall_or_do_not_apply_exit_2(bundle: Path, images: Path, tmp_path: Path) -> None:
    ray_args = [str(bundle), str(images), "--out", str(tmp_path / "ray"), "--engine", "ray"]
    res = _embed(*ray_args, "--concurrency", "2")
    assert res.exit_code == 2 and "leaves none for the driver and reading files" in res.output and "at most 1 actors" in res.output
    res = _embed(*ray_args, "--threads-per-worker", "2")
    assert res.exit_code == 2 and "--threads-per-worker 2 does not fit" in res.output and "Ray would wait forever" in res.output
    res = _embed(*ray_args, "--shard", "0/2")
    assert res.exit_code == 2 and "--shard do(es) not apply to --engine ray" in res.output
    res = _embed(str(bundle), str(images), "--out", str(tmp_path / "e.npy"), "--concurrency", "1")
    assert res.exit_code == 2 and "add --engine ray" in res.output
    res = _embed(str(bundle), str(images), "--out", str(tmp_path / "e.npy"), "--engine", "ray")
    assert res.exit_code == 2 and "must be a folder" in res.output
    assert not list(tmp_path.glob("ray/*"))


def test_without_ray_the_engine_names_the_extra(bundle: Path, images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    res = _embed(str(bundle), str(images), "--out", str(tmp_path / "ray"), "--engine", "ray")
    assert res.exit_code == 2 and 'pip install "proxyembed[ray]"' in res.output


def test_plan_and_sizing() -> None:
    shards = plan_shards(10, 4, Path("out"))
    assert [(s.start, s.stop, s.path.name) for s in shards] == [(0, 4, "shard-00000.npy"), (4, 8, "shard-00001.npy"), (8, 10, "shard-00002.npy")]
    assert plan_shards(0, 4, Path("out")) == []
    assert size_actors(16, 16, None, 1) == 15 and size_actors(16, 16, None, 4) == 3 and size_actors(16, 16, 5, 3) == 5
    # four 8-CPU nodes: 31 CPUs to spare, but a 12-thread actor fits on no node
    assert size_actors(32, 8, None, 8) == 3
    with pytest.raises(BadInput, match="at most 8 on one node"):
        size_actors(32, 8, 1, 12)


def test_ray_is_imported_only_by_the_ray_engine(tmp_path: Path) -> None:
    code = "import sys, proxyembed, proxyembed.cli.embed; proxyembed.embed_ray; print('ray' in sys.modules, 'torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False False"
