"""WebDataset tar shards: ``proxyembed data SRC --to-shards OUT`` writes them, ``--data 'OUT/train-{000000..000009}.tar'`` reads them.

Written shards (``OUT/train-NNNNNN.tar``, ``OUT/eval-NNNNNN.tar``) hold, per image, the original file bytes
(``KEY.jpg``, ``KEY.png``, ...), its class index (``KEY.cls``) and ``KEY.json`` (class name, source key, split
and the list file's metadata); training images in a seeded random order so a streaming shuffle buffer mixes
classes, evaluation images in the source's order. Beside
them, the sealed ``manifest.json`` lists the classes, and per split each shard's image count and sha256 and
the images per class. The folder is built staged and swapped into place (:func:`~proxyembed.runtime.files.staged_dir`).

Reading: the pattern (brace ranges, local paths or any URL WebDataset's ``gopen`` opens) names training shards;
the manifest is read beside the first one (same folder or URL prefix). Every shard must be in it; local shards
are checked against their sha256 before training starts (one read of the data). The evaluation split is the
manifest's eval shards, read into memory once (evaluation needs random access), unless ``--eval-data`` gives
other data. Training streams (:mod:`.shard_dataset`); labels come from ``cls``, else from ``json``'s label.
"""

from __future__ import annotations

import io
import json
import random
import tarfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from proxyembed.runtime.errors import BadInput, IntegrityError
from proxyembed.runtime.files import read_json_object, sha256_file, staged_dir, write_sealed_json
from proxyembed.runtime.images import IMAGE_EXTENSIONS

from .types import DataSplit, Sample, with_eval_split

MANIFEST_NAME = "manifest.json"
FORMAT = "proxyembed-shards/1"
_IMAGE_EXTS = {e.lstrip(".") for e in IMAGE_EXTENSIONS}


def is_shard_spec(spec: str) -> bool:
    """Whether ``--data`` names tar shards (a path, pattern or URL ending in ``.tar``)."""
    return spec.strip().lower().endswith(".tar")


def _webdataset() -> Any:
    try:
        import webdataset
    except ImportError:
        raise BadInput("--data *.tar: reading and writing shards needs webdataset", hint='pip install "proxyembed[shards]"') from None
    return webdataset


def expand(spec: str) -> list[str]:
    """The shard URLs of a brace pattern (``train-{000000..000009}.tar``), in order."""
    _webdataset()  # braceexpand comes with it
    from braceexpand import braceexpand

    return list(braceexpand(spec.strip()))


def _beside(url: str, name: str) -> str:
    """The URL or path of file ``name`` in the same folder as ``url``."""
    head, sep, _ = url.rpartition("/")
    return f"{head}{sep}{name}" if sep else name


@dataclass
class ShardSet:
    """The training shards of a ``--data`` pattern: URLs, image counts, and the class index of each class name."""

    urls: list[str]
    counts: list[int]
    labels: dict[str, int]  # class name -> label (the manifest's class index)
    per_class: dict[int, int]  # label -> training images, over all the manifest's training shards
    shards_in_manifest: int
    _fit: list[Sample] | None = field(default=None, repr=False)

    @property
    def images(self) -> int:
        return sum(self.counts)

    def records(self, urls: Sequence[str]) -> Iterator[tuple[str, bytes, int]]:
        """(key, encoded image, label) of every sample of ``urls``, streamed in shard order."""
        yield from _records(urls, self.labels)

    def sampled(self, limit: int) -> list[Sample]:
        """An even stride of at most ``limit`` training images, held in memory (read once: what ``--whiten`` fits on),
        checking every shard's image count against the manifest on the way."""
        if self._fit is None:
            step = -(-self.images // limit)
            picked: list[Sample] = []
            seen: Counter[int] = Counter()
            for url, expected in zip(self.urls, self.counts, strict=True):
                n = 0
                for key, data, label in self.records([url]):
                    if n % step == 0:
                        picked.append(Sample(data, label, key))
                    seen[label] += 1
                    n += 1
                if n != expected:
                    raise IntegrityError(f"shard {url} holds {n} images, its manifest says {expected}", hint="rewrite the shards")
            if len(self.urls) == self.shards_in_manifest and dict(seen) != self.per_class:
                raise IntegrityError("the training shards' images per class differ from their manifest's", hint="rewrite the shards")
            self._fit = picked
        return self._fit


def _records(urls: Sequence[str], labels: dict[str, int]) -> Iterator[tuple[str, bytes, int]]:
    wds = _webdataset()
    for sample in wds.tariterators.tarfile_samples([{"url": u} for u in urls]):
        where = f"{sample['__url__']}#{sample['__key__']}"
        meta = json.loads(sample["json"]) if "json" in sample else {}
        image = next((sample[k] for k in sample if k in _IMAGE_EXTS), None)
        if image is None:
            raise IntegrityError(f"{where}: no image member ({', '.join(sorted(_IMAGE_EXTS))})", hint="each sample needs an image and a cls or json")
        # the source's own key when the writer kept it: the evaluation fingerprint then matches the folder or list it came from
        yield str(meta.get("key", where)), image, _label(sample, meta, labels, where)


def _label(sample: dict[str, Any], meta: dict[str, Any], labels: dict[str, int], key: str) -> int:
    """The class index of a sample: its ``cls`` member, else its ``json`` member's ``label`` (a class name)."""
    if "cls" in sample:
        return int(sample["cls"])
    if "label" in meta:
        name = meta["label"]
        if str(name) in labels:
            return labels[str(name)]
        raise IntegrityError(f"{key}: label {name!r} is not a class of the manifest", hint="rewrite the shards with proxyembed data --to-shards")
    raise IntegrityError(f"{key}: no cls or json member to read the label from", hint="rewrite the shards with proxyembed data --to-shards")


# -- writing -------------------------------------------------------------------------------------------


def _encoded(sample: Sample) -> tuple[bytes, str]:
    """The image bytes to store and their extension: a file's own bytes, an in-memory array as PNG."""
    if isinstance(sample.source, np.ndarray):
        buf = io.BytesIO()
        Image.fromarray(sample.source).save(buf, format="PNG")
        return buf.getvalue(), "png"
    if isinstance(sample.source, bytes):
        return sample.source, "jpg"
    path = Path(str(sample.source))
    return path.read_bytes(), path.suffix.lower().lstrip(".")


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o444
    tar.addfile(info, io.BytesIO(data))


def write_shards(split: DataSplit, out: Path, shard_size: int, *, seed: int = 0, advance: Callable[[int], None] = lambda n: None) -> dict[str, Any]:
    """Write ``split`` as shards of ``shard_size`` images and a manifest into folder ``out`` (staged, swapped in); returns the manifest."""
    if shard_size < 1:
        raise BadInput(f"--shard-size must be positive, got {shard_size}")
    names = sorted({split.class_names.get(s.label, str(s.label)) for s in split.train + split.eval})
    index = {name: i for i, name in enumerate(names)}
    manifest: dict[str, Any] = {"format": FORMAT, "source": split.name, "classes": names, "splits": {}}
    with staged_dir(out) as stage:
        for part, samples in (("train", split.train), ("eval", split.eval)):
            order = list(samples)
            if part == "train":  # mixed for the streaming shuffle buffer; eval keeps the source's order (and so its fingerprint)
                random.Random(seed).shuffle(order)
            shards, per_class = [], Counter()
            for first in range(0, len(order), shard_size):
                file = f"{part}-{first // shard_size:06d}.tar"
                with tarfile.open(stage / file, "w", format=tarfile.USTAR_FORMAT) as tar:
                    for n, s in enumerate(order[first : first + shard_size], first):
                        name = split.class_names.get(s.label, str(s.label))
                        data, ext = _encoded(s)
                        key = f"{n:09d}"
                        _add(tar, f"{key}.{ext}", data)
                        _add(tar, f"{key}.cls", str(index[name]).encode())
                        _add(tar, f"{key}.json", json.dumps({"label": name, "key": s.key, "split": part, **(s.meta or {})}).encode())
                        per_class[name] += 1
                        advance(1)
                shards.append({"file": file, "count": len(order[first : first + shard_size]), "sha256": sha256_file(stage / file)})
            manifest["splits"][part] = {"shards": shards, "images": len(order), "per_class": dict(sorted(per_class.items()))}
        write_sealed_json(stage / MANIFEST_NAME, manifest)
    return manifest


# -- reading -------------------------------------------------------------------------------------------


def read_manifest(url: str) -> dict[str, Any]:
    """The sealed manifest at ``url`` (a local path or any URL WebDataset opens)."""
    hint = "shards need the manifest.json that `proxyembed data SRC --to-shards OUT` writes beside them"
    if "://" not in url and not url.startswith("pipe:"):
        data = read_json_object(Path(url), missing=f"--data: no {MANIFEST_NAME} beside the shards ({url})", hint=hint,
                                broken_hint="rewrite the shards", fields={"format": str, "classes": list, "splits": dict}, sealed=True)
    else:
        try:
            with _webdataset().gopen(url) as fh:
                data = json.loads(fh.read())
        except Exception as exc:  # noqa: BLE001 - any opener's failure is the same user error
            raise BadInput(f"--data: cannot read {url} ({type(exc).__name__}: {exc})", hint=hint) from None
    if data.get("format") != FORMAT:
        raise BadInput(f"{url}: format {data.get('format')!r} is not {FORMAT}", hint="rewrite the shards with this proxyembed")
    return data


def _eval_samples(manifest: dict[str, Any], base: str, labels: dict[str, int]) -> list[Sample]:
    """The manifest's evaluation shards read into memory, each shard's count checked."""
    samples = []
    for shard in manifest["splits"].get("eval", {}).get("shards", []):
        url = _beside(base, shard["file"])
        got = [Sample(data, label, key) for key, data, label in _records([url], labels)]
        if len(got) != shard["count"]:
            raise IntegrityError(f"shard {url} holds {len(got)} images, its manifest says {shard['count']}", hint="rewrite the shards")
        samples += got
    return samples


def shard_split(spec: str, *, eval_split: DataSplit | None = None) -> DataSplit:
    """The zero-shot split of a shard pattern: training streamed from its shards, evaluation from the manifest's eval shards
    (or ``eval_split``, from ``--eval-data``)."""
    urls = expand(spec)
    manifest = read_manifest(_beside(urls[0], MANIFEST_NAME))
    labels = {name: i for i, name in enumerate(manifest["classes"])}
    known = {s["file"]: s for s in manifest["splits"].get("train", {}).get("shards", [])}
    counts = []
    for url in urls:
        shard = known.get(url.rpartition("/")[2])
        if shard is None:
            raise BadInput(f"--data: {url} is not a training shard of its manifest", hint=f"its training shards: {', '.join(sorted(known)[:3])} ...")
        local = Path(url.removeprefix("file:"))
        if "://" not in url and not url.startswith("pipe:"):
            if not local.is_file():
                raise BadInput(f"--data: shard {url} does not exist", hint="check the brace range against the files")
            if sha256_file(local) != shard["sha256"]:
                raise IntegrityError(f"shard {url} does not match its manifest's sha256 (damaged or replaced)", hint="rewrite the shards")
        counts.append(int(shard["count"]))
    train_names = manifest["splits"]["train"]["per_class"]
    per_class = {labels[name]: int(n) for name, n in train_names.items()}
    names = {i: name for name, i in labels.items()}
    stream = ShardSet(urls, counts, labels, per_class, len(known))
    if eval_split is not None:
        return with_eval_split(spec, [], names, eval_split, trained=train_names, stream=stream)
    return DataSplit(name=spec, train=[], eval=_eval_samples(manifest, urls[0], labels), class_names=names, stream=stream)
