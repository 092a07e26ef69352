"""WebDataset shards: written from a folder or list with a manifest, checked, streamed per rank and worker,
and under two gloo processes every training image seen exactly once per epoch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers.bundles import write_class_images
from proxyembed.cli import app
from proxyembed.data import resolve_data
from proxyembed.data.shard_dataset import ShardDataset, deal, shard_loader
from proxyembed.data.shards import expand
from proxyembed.runtime.errors import BadInput, IntegrityError

pytest.importorskip("webdataset", reason="webdataset is not installed (pip install 'proxyembed[shards]')")

SYN = "synthetic:train_classes=8,eval_classes=6,per_class=8,size=40"  # 64 training, 48 evaluation images
PATTERN = "train-{000000..000003}.tar"
TIMEOUT_S = 300


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "syn"
    res = CliRunner().invoke(app, ["data", SYN, "--to-shards", str(out), "--shard-size", "16"])
    assert res.exit_code == 0, res.output
    return out


def test_manifest_counts_classes_and_checksums(shards: Path) -> None:
    manifest = json.loads((shards / "manifest.json").read_text())
    train, ev = manifest["splits"]["train"], manifest["splits"]["eval"]
    assert [s["count"] for s in train["shards"]] == [16] * 4 and [s["count"] for s in ev["shards"]] == [16] * 3
    assert sum(train["per_class"].values()) == 64 and len(train["per_class"]) == 8 and len(ev["per_class"]) == 6
    assert "checksum" in manifest and sorted(p.name for p in shards.iterdir()) == sorted(
        ["manifest.json"] + [s["file"] for s in train["shards"] + ev["shards"]])


def test_shards_hold_the_same_data_as_their_source(shards: Path) -> None:
    source, streamed = resolve_data(SYN), resolve_data(str(shards / PATTERN))
    assert streamed.train == [] and streamed.stream.images == 64
    assert streamed.fingerprint()["sha256"] == source.fingerprint()["sha256"]  # same eval keys and class names
    names = {k: v for k, v in streamed.class_names.items()}
    fitted = streamed.stream.sampled(limit=1000)
    assert Counter(names[s.label] for s in fitted) == Counter(source.class_names[s.label] for s in source.train)


def test_folder_and_list_to_shards_keep_metadata(tmp_path: Path) -> None:
    write_class_images(tmp_path / "imgs", ("red", "green", "blue", "yellow"), per_class=3)
    lines = [json.dumps({"path": str(p), "label": p.parent.name, "split": "eval" if p.parent.name in ("red", "green") else "train", "sku": p.stem})
             for p in sorted((tmp_path / "imgs").rglob("*.png"))]
    (tmp_path / "l.jsonl").write_text("\n".join(lines))
    res = CliRunner().invoke(app, ["data", str(tmp_path / "l.jsonl"), "--to-shards", str(tmp_path / "sh"), "--shard-size", "4"])
    assert res.exit_code == 0, res.output
    import tarfile

    with tarfile.open(tmp_path / "sh" / "train-000000.tar") as tar:
        meta = json.loads(tar.extractfile(next(m for m in tar.getmembers() if m.name.endswith(".json"))).read())
    assert meta["split"] == "train" and meta["sku"] == Path(meta["key"]).stem and meta["label"] in ("blue", "yellow")
    res = CliRunner().invoke(app, ["data", str(tmp_path / "imgs"), "--to-shards", str(tmp_path / "sh")])
    assert res.exit_code == 2 and "not an empty folder" in res.output  # --force to replace


def test_damaged_or_unlisted_shards_are_refused(tmp_path: Path, shards: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    with open(copy / "train-000001.tar", "r+b") as fh:
        fh.seek(600)
        fh.write(b"XXXX")
    with pytest.raises(IntegrityError, match="train-000001.tar does not match its manifest"):
        resolve_data(str(copy / PATTERN))
    with pytest.raises(BadInput, match="is not a training shard"):
        resolve_data(str(shards / "eval-{000000..000001}.tar"))
    (copy / "train-000001.tar").unlink()
    with pytest.raises(BadInput, match="train-000001.tar does not exist"):
        resolve_data(str(copy / PATTERN))
    (copy / "manifest.json").unlink()
    res = CliRunner().invoke(app, ["train", "--data", str(copy / PATTERN), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "no manifest.json beside the shards" in res.output


def test_dealing_gives_every_shard_to_one_reader() -> None:
    for world, workers in ((1, 1), (2, 1), (2, 3), (3, 2)):
        for epoch in (1, 2):
            dealt = [i for r in range(world) for w in range(workers) for i in deal(10, 7, epoch, r, world, w, workers)]
            assert sorted(dealt) == list(range(10))
    assert deal(10, 7, 1, 0, 2) != deal(10, 7, 2, 0, 2)  # reshuffled each epoch
    assert expand("a/s-{000..002}.tar") == ["a/s-000.tar", "a/s-001.tar", "a/s-002.tar"]


def test_single_process_epoch_streams_every_image_once_and_refuses_balanced(shards: Path) -> None:
    stream = resolve_data(str(shards / PATTERN)).stream
    dataset = ShardDataset(stream, transform=lambda img: 0, seed=0, buffer=8)
    seen = []
    dataset._item = lambda record: (seen.append(record[0]) or 0, record[2])  # type: ignore[method-assign]
    batches = list(shard_loader(dataset, 16, "random", 1, workers=0, pin_memory=False))
    assert len(batches) == 4 and len(seen) == len(set(seen)) == 64
    with pytest.raises(BadInput, match="--sampler balanced"):
        shard_loader(dataset, 16, "balanced", 1, workers=0, pin_memory=False)


def test_a_run_from_shards_keeps_its_last_epoch_and_refuses_validation_classes(tmp_path: Path, shards: Path) -> None:
    """Streamed shards do not list their classes up front, so no validation classes can be held out: the default
    (--val-fraction 0) trains and keeps the last epoch in best.pt; --val-fraction is refused before anything is written."""
    from proxyembed.training.checkpoint import load_checkpoint
    from proxyembed.training.config import resolve_config
    from proxyembed.training.trainer import train

    settings = dict(data=str(shards / PATTERN), epochs=2, batch_size=16, image_size=32, embedding_dim=16, whiten=0.0, channels_last=False)
    result = train(resolve_config(settings), tmp_path / "run")
    assert result.best_epoch == 2 == load_checkpoint(tmp_path / "run").epoch and result.best == result.final
    with pytest.raises(BadInput, match="--val-fraction needs the training classes listed up front"):
        train(resolve_config({**settings, "val_fraction": 0.25}), tmp_path / "val")
    assert not (tmp_path / "val").exists()


RANK_SCRIPT = """
import os, sys
from pathlib import Path

import proxyembed.data.shard_dataset as sd
from proxyembed.cli import main

log = Path(sys.argv[1]) / f"rank{os.environ['RANK']}.txt"
item = sd.ShardDataset._item

def record(self, rec):
    with open(log, "a") as fh:
        fh.write(f"{self.epoch}\\t{rec[0]}\\n")
    return item(self, rec)

sd.ShardDataset._item = record
sys.argv = ["proxyembed", "train", *sys.argv[2:]]
main()
"""


@pytest.mark.heavy  # two training processes under gloo
def test_two_gloo_processes_see_every_training_image_exactly_once_per_epoch(tmp_path: Path, shards: Path) -> None:
    """4 shards of 16 over 2 ranks with batch 8: 2 shards, 4 steps per rank per epoch, nothing left over."""
    from helpers.servers import free_port

    script = tmp_path / "rank.py"
    script.write_text(textwrap.dedent(RANK_SCRIPT))
    args = ["--data", str(shards / PATTERN), "--out", str(tmp_path / "run"), "--epochs", "2", "--batch-size", "8", "--image-size", "32",
            "--embedding-dim", "16", "--whiten", "0", "--device", "cpu"]
    base = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}
    procs = []
    try:
        for r in range(2):
            env = {**base, "RANK": str(r), "LOCAL_RANK": str(r)}
            procs.append(subprocess.Popen([sys.executable, str(script), str(tmp_path), *args], env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        results = [(p.wait(timeout=TIMEOUT_S), p.stderr.read()) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [code for code, _ in results] == [0, 0], results
    keys = {r: [line.split("\t") for line in (tmp_path / f"rank{r}.txt").read_text().splitlines()] for r in range(2)}
    everything = {s.key for s in resolve_data(SYN).train}
    for epoch in ("1", "2"):
        per_rank = [[k for e, k in keys[r] if e == epoch] for r in range(2)]
        assert [len(p) for p in per_rank] == [32, 32]
        assert not set(per_rank[0]) & set(per_rank[1])
        assert sorted(per_rank[0] + per_rank[1]) == sorted(everything)
    assert len(json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])) > 3


def test_eval_data_beside_shards_keeps_each_rows_metadata(tmp_path: Path, shards: Path) -> None:
    write_class_images(tmp_path / "imgs", ("red", "green"), per_class=3)
    lines = [json.dumps({"path": str(p), "label": p.parent.name, "sku": f"S-{p.stem}"}) for p in sorted((tmp_path / "imgs").rglob("*.png"))]
    (tmp_path / "unseen.jsonl").write_text("\n".join(lines) + "\n")
    data = resolve_data(str(shards / PATTERN), eval_data=str(tmp_path / "unseen.jsonl"))
    assert [s.meta for s in data.eval] == [{"sku": f"S-{Path(str(s.source)).stem}"} for s in data.eval]  # the list and shards merge alike
    assert {data.class_names[s.label] for s in data.eval} == {"red", "green"} and data.stream.images == 64
    assert min(s.label for s in data.eval) > max(data.stream.per_class)  # unseen labels follow every training label
