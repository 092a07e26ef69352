"""Decoded images kept for the whole run (and later runs): each image is read once, not once per epoch.

Training decodes every JPEG again in every epoch and every evaluation unless its pixels are kept. An
:class:`ImageCache` holds them as uint8 arrays, in one of two views (:class:`CacheView`):

- the *square* view stores exactly what the evaluation transform feeds the network before normalising
  (``Preprocessor.square`` of ``Preprocessor.decode``), so evaluation from it gives the uncached numbers;
- the *side* view stores the image with its shorter side scaled down to ``side`` (aspect kept, never
  enlarged) for the random-resized-crop augmentation to crop from. :func:`train_side` picks ``side`` so
  that even the smallest crop of the augmentation covers the model's input without enlarging pixels.

A JPEG is decoded with the spec's ``decode`` choice; ``reduced`` lets the decoder scale by 1/2, 1/4 or
1/8 (DCT scaling) down to :data:`~proxyembed.runtime.preprocess.DRAFT_MARGIN` times what the view keeps.

Where the pixels live (:data:`CacheMode`): ``ram`` (arrays in this process, shared with forked DataLoader
workers), ``disk`` (a file under :func:`~proxyembed.runtime.system.user_cache_dir`, memory-mapped
read-only, reused by later runs and by every DDP rank), ``auto`` (a valid disk copy if one exists, else
RAM when the estimate fits :data:`RAM_FRACTION` of the available memory, else disk; always disk under
torchrun, so the ranks decode once between them), ``off`` (decode per use, as before the cache).

A disk cache is ``<key>.bin`` (the pixels, one image after another) and ``<key>.json`` (sealed JSON: the
key, every image's shape, the unreadable images and the sha256 of the ``.bin``). The key is the sha256
of the image list (path, size and mtime of each file; the bytes of in-memory images) and the view; the
header repeats it in full. Both files are written atomically, pixels first, so a crash leaves no header
that matches; a header that does not match its key, its size or its sha256 is rebuilt, never used.

Processes coordinate through ``flock``. A process checks a copy (header and sha256) under a *shared* lock on
``<key>.lock``, so torchrun ranks and concurrent runs verify at the same time, and keeps that lock for as long as
it maps the pixels. Only a missing or damaged copy takes the *exclusive* lock on ``<key>.build``; the builder
checks again once it holds it (another process may have built it meanwhile) and builds; the others wait on that
lock, then find the copy valid and map it. The folder is bounded (:func:`disk_limit`: ``$PROXYEMBED_CACHE_MAX_GB``,
default :data:`DISK_LIMIT_GB` GiB): after each build the least recently used whole entries go until it fits, never
one whose lock another process holds (in use or being built), never the one just built.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal, NamedTuple

import numpy as np
from PIL import Image

from proxyembed.runtime.errors import BadInput, ProxyEmbedError
from proxyembed.runtime.files import atomic_write, read_json_object, sha256_file, write_sealed_json
from proxyembed.runtime.preprocess import DRAFT_MARGIN, Preprocessor, PreprocessSpec, load_image, map_in_chunks
from proxyembed.runtime.system import available_memory, user_cache_dir

from .types import Sample

CacheMode = Literal["auto", "ram", "disk", "off"]
RAM_FRACTION = 0.25
"""``auto`` keeps a cache in RAM when its estimate fits this share of the memory available at start (MemAvailable):
the model, the optimizer, DataLoader workers and the page cache need the rest."""
MAX_SIDE_FACTOR = 2
"""The side view never keeps more than this many times the model input on the shorter side (4x its pixels)."""
ASPECT_ESTIMATE = 4 / 3
"""The longer side assumed per image when sizing a side-view cache before decoding (camera photos are 4:3)."""
DISK_LIMIT_GB = 64.0
"""The disk caches of one folder may take this many GiB (``$PROXYEMBED_CACHE_MAX_GB`` overrides it) before the least
recently used entries are deleted: room for a SOP-size training set at 256 px (29 GiB) and its evaluation images twice over."""
DISK_LIMIT_ENV = "PROXYEMBED_CACHE_MAX_GB"
FORMAT, VERSION = "proxyembed-image-cache", 1
_CHUNK = 64  # images decoded per map_in_chunks step


@dataclass(frozen=True)
class CacheView:
    """What is stored per image: the square model input of ``spec`` (``side`` None), or the image with its
    shorter side at most ``side`` for a random-resized crop. ``spec.decode`` says how JPEGs are read."""

    spec: PreprocessSpec
    side: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec.to_dict(), "side": self.side}

    def pixels(self, src: Any) -> np.ndarray:
        """The uint8 HxWx3 array this view keeps of ``src`` (:class:`BadInput` if it cannot be read)."""
        pre = Preprocessor(self.spec)
        if self.side is None:
            return np.asarray(pre.square(pre.decode(src)), dtype=np.uint8)
        side = self.side
        img = load_image(src, _draft_for(side) if self.spec.decode == "reduced" else None)
        w, h = img.size
        if min(w, h) > side:
            scale = side / min(w, h)
            img = img.resize((max(side, round(w * scale)), max(side, round(h * scale))), Image.Resampling[self.spec.interpolation.upper()])
        return np.asarray(img, dtype=np.uint8)

    def estimate_bytes(self, n: int) -> int:
        """The bytes ``n`` images take, before any is decoded (side view: :data:`ASPECT_ESTIMATE` assumed)."""
        if self.side is None:
            return n * self.spec.crop * self.spec.crop * 3
        return n * self.side * math.ceil(self.side * ASPECT_ESTIMATE) * 3


def _draft_for(side: int) -> Callable[[tuple[int, int]], tuple[int, int] | None]:
    """The JPEG draft size keeping :data:`DRAFT_MARGIN` x ``side`` on the shorter side (None: decode in full)."""

    def draft(size: tuple[int, int]) -> tuple[int, int] | None:
        w, h = size
        scale = DRAFT_MARGIN * side / min(w, h)
        return (math.ceil(w * scale), math.ceil(h * scale)) if scale <= 0.5 else None

    return draft


def train_side(crop: int, crop_scale: tuple[float, float]) -> int:
    """The side view's shorter side for a random-resized crop of ``crop_scale`` of the image area to ``crop`` px.

    A crop of area fraction ``s`` of a square image of side ``L`` is ``sqrt(s) * L`` wide; ``L = crop /
    sqrt(s_min)`` makes the smallest crop still ``crop`` pixels wide, so the augmentation never enlarges
    cached pixels (1.42x the input for the default ``light`` preset's 0.5). Presets down to 0.08 area would ask
    for 3.5x; :data:`MAX_SIDE_FACTOR` caps it at 2x, where the crops under a quarter of the area (a
    minority of draws) are enlarged up to 1.8x.
    """
    return min(MAX_SIDE_FACTOR * crop, math.ceil(crop / math.sqrt(crop_scale[0])))


def source_id(sample: Sample) -> str:
    """How a cache finds a sample: its file path, or its key for an in-memory image."""
    return os.fspath(sample.source) if isinstance(sample.source, (str, os.PathLike)) else sample.key


def fingerprint(samples: Sequence[Sample], view: CacheView) -> dict[str, Any]:
    """The cache key: the sha256 of every image's identity (path, size, mtime; or its bytes) in order, and the view."""
    h = hashlib.sha256()
    for s in samples:
        src = s.source
        if isinstance(src, (str, os.PathLike)):
            try:
                st = os.stat(src)
                h.update(f"{os.fspath(src)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{os.fspath(src)}\tmissing\n".encode())
        else:
            raw = src if isinstance(src, bytes) else np.asarray(src).tobytes()
            h.update(f"{s.key}\t{np.asarray(src).shape if not isinstance(src, bytes) else len(src)}\t".encode())
            h.update(hashlib.sha256(raw).digest())
    return {"format": FORMAT, "version": VERSION, "images": len(samples), "data_sha256": h.hexdigest(), "view": view.to_dict()}


class ImageCache:
    """uint8 images by position in the sample list they were built from; ``cache[i]`` raises the
    :class:`BadInput` the image raised when it was decoded (unreadable images stay unreadable, and the
    message and hint are kept as they were)."""

    def __init__(
        self, ids: list[str], shapes: np.ndarray, failures: dict[int, list[str | None]], store: Any, path: Path | None, lock: BinaryIO | None = None
    ) -> None:
        self.ids = ids
        self.shapes = shapes
        self.failures = failures
        self.path = path  # the .bin of a disk cache; None in RAM
        self._store = store  # RAM: list of arrays; disk: flat read-only memmap (reopened after pickling)
        self._lock = lock  # disk: the open <key>.lock holding a shared flock while the pixels are mapped (dropped when closed)
        sizes = shapes[:, 0].astype(np.int64) * shapes[:, 1] * 3
        self._offsets = np.concatenate([[0], np.cumsum(sizes)])
        self._index = {k: i for i, k in enumerate(ids)}

    @property
    def where(self) -> str:
        return "ram" if self.path is None else "disk"

    @property
    def nbytes(self) -> int:
        return int(self._offsets[-1])

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> np.ndarray:
        if i in self.failures:
            message, hint = self.failures[i]
            raise BadInput(message or "", hint=hint)
        if self.path is None:
            return self._store[i]
        h, w = self.shapes[i]
        return self._store[self._offsets[i] : self._offsets[i + 1]].reshape(h, w, 3)

    def close(self) -> None:
        """Stop using a disk cache: unmap its pixels and drop the shared lock that kept eviction away (RAM: free the arrays)."""
        self._store = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def lookup(self, sample: Sample) -> np.ndarray | None:
        """The pixels of ``sample`` (as ``cache[i]``), or None when it is not in this cache."""
        i = self._index.get(source_id(sample))
        return None if i is None else self[i]

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers under spawn: map the file again, never copy it
        state = dict(self.__dict__)
        state["_lock"] = None  # the creating process holds the entry; workers map it while it does
        if self.path is not None:
            state["_store"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.path is not None:
            self._store = _map(self.path, self.nbytes)


def _map(path: Path, nbytes: int) -> np.ndarray:
    return np.memmap(path, dtype=np.uint8, mode="r", shape=(nbytes,)) if nbytes else np.zeros(0, np.uint8)


@dataclass
class CacheInfo:
    """What :func:`open_cache` did, for the run's log and config.json."""

    mode: str
    where: str
    images: int
    nbytes: int
    path: str | None
    built: bool
    seconds: float
    rebuilt_because: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ram_budget(cache_ram_gb: float | None) -> int:
    """The bytes ``auto`` may keep in RAM: ``cache_ram_gb`` if given, else :data:`RAM_FRACTION` of the available memory."""
    if cache_ram_gb is not None:
        return int(cache_ram_gb * 2**30)
    avail = available_memory()
    return int(RAM_FRACTION * avail) if avail else 0


def choose_where(mode: CacheMode, estimate: int, budget: int, *, shared: bool, on_disk: bool) -> Literal["ram", "disk"]:
    """Where ``mode`` keeps a cache of ``estimate`` bytes: ``auto`` takes a valid disk copy (``on_disk``), else RAM
    within ``budget`` unless several processes (``shared``) want the same pixels, else disk."""
    if mode in ("ram", "disk"):
        return mode
    if mode != "auto":
        raise ValueError(f"no cache location for mode {mode!r}")
    if on_disk or shared or estimate > budget:
        return "disk"
    return "ram"


def open_cache(
    samples: Sequence[Sample],
    view: CacheView,
    mode: CacheMode,
    *,
    folder: Path | None = None,
    budget: int = 0,
    shared: bool = False,
    progress: Callable[[int], None] | None = None,
) -> tuple[ImageCache | None, CacheInfo]:
    """The cache of ``samples`` in ``view`` under ``mode`` (None for ``off``), built if needed, and what was done."""
    t0 = time.perf_counter()
    ids = [source_id(s) for s in samples]
    if mode == "off":
        return None, CacheInfo("off", "off", len(samples), 0, None, False, 0.0)
    key = fingerprint(samples, view)
    folder = Path(folder) if folder is not None else user_cache_dir() / "images"
    base = folder / key_name(key)
    checked: _Checked | None = None
    if mode == "auto" and base.with_suffix(".json").is_file():  # a copy an earlier run left: used when it checks out
        with _cache_errors(folder):
            checked = _check_copy(base, key)
    valid = checked is not None and checked.header is not None
    where = choose_where(mode, view.estimate_bytes(len(samples)), budget, shared=shared, on_disk=valid)
    if where == "ram":
        if checked is not None:
            checked.lock.close()
        shapes, failures, arrays = _decode_all(samples, view, progress)
        cache = ImageCache(ids, shapes, failures, arrays, None)
        return cache, CacheInfo(mode, "ram", len(samples), cache.nbytes, None, True, time.perf_counter() - t0)
    if valid:
        assert checked is not None and checked.header is not None
        lock, header, built, reason = checked.lock, checked.header, False, None
        os.utime(base.with_suffix(".lock"))  # last use, for eviction
    else:
        try:
            limit = disk_limit()  # a bad setting is refused before any decoding
        except BaseException:
            if checked is not None:
                checked.lock.close()
            raise
        with _cache_errors(folder):
            folder.mkdir(parents=True, exist_ok=True)
            lock, header, built, reason = _open_or_build(base, key, samples, view, progress, checked)
            if built:
                evict(folder, limit, keep=base)
    shapes = np.asarray(header["shapes"], dtype=np.int64).reshape(-1, 2)
    failures = {int(k): list(v) for k, v in header["failures"].items()}
    path = base.with_suffix(".bin")
    cache = ImageCache(ids, shapes, failures, _map(path, header["bytes"]), path, lock)
    info = CacheInfo(mode, "disk", len(samples), cache.nbytes, str(path), built, time.perf_counter() - t0, reason)
    return cache, info


@contextmanager
def _cache_errors(folder: Path) -> Iterator[None]:
    """A cache folder that cannot be written or locked is the user's one-line error (which option to change)."""
    try:
        yield
    except OSError as exc:
        hint = "set --cache-dir to a writable folder, or --cache ram/off"
        raise BadInput(f"image cache: cannot write {folder} ({exc.strerror or exc})", hint=hint) from exc


def disk_limit() -> int:
    """The bytes the disk caches of a folder may take: ``$PROXYEMBED_CACHE_MAX_GB`` GiB, else :data:`DISK_LIMIT_GB`."""
    raw = os.environ.get(DISK_LIMIT_ENV, "").strip()
    try:
        gib = float(raw) if raw else DISK_LIMIT_GB
    except ValueError:
        gib = -1.0
    if not gib >= 0:
        raise BadInput(f"${DISK_LIMIT_ENV}={raw!r} is not a size in GiB", hint=f"set it to a number such as 20, or unset it for {DISK_LIMIT_GB:g}")
    return int(gib * 2**30)


def key_name(key: dict[str, Any]) -> str:
    """The file name stem of a cache: a digest of its key."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


def _lock(path: Path, how: int) -> BinaryIO | None:
    """``path`` opened and ``flock``-ed with ``how`` (``LOCK_SH`` / ``LOCK_EX``, blocking unless ``LOCK_NB``), or None when
    ``LOCK_NB`` finds it held. Eviction deletes a lock file while holding it, so a lock taken on a file that is no longer
    at ``path`` protects nothing: it is dropped and taken again on the file there now."""
    import fcntl

    while True:
        fh = open(path, "a+b")  # noqa: SIM115 - the handle is the lock and outlives this function
        try:
            fcntl.flock(fh, how)
        except BlockingIOError:
            fh.close()
            return None
        try:
            current = os.stat(path).st_ino == os.fstat(fh.fileno()).st_ino
        except FileNotFoundError:
            current = False
        if current:
            return fh
        fh.close()


class _Checked(NamedTuple):
    """A shared lock on ``<key>.lock`` and what was found under it: the header of a valid copy, or None and why not."""

    lock: BinaryIO
    header: dict[str, Any] | None
    reason: str | None


def _check_copy(base: Path, key: dict[str, Any]) -> _Checked:
    """Take the shared lock on the copy of ``key`` at ``base`` (many processes at once) and check the copy under it."""
    import fcntl

    lock = _lock(base.with_suffix(".lock"), fcntl.LOCK_SH)
    assert lock is not None  # a blocking lock is always granted
    try:
        return _Checked(lock, *_valid_header(base, key))
    except BaseException:
        lock.close()
        raise


def _identity(base: Path) -> tuple[tuple[int, int, int], ...] | None:
    """Which files sit at ``base`` now (inode, size, mtime of header and pixels): a rebuild renames new ones in."""
    try:
        return tuple((st.st_ino, st.st_size, st.st_mtime_ns) for st in (base.with_suffix(x).stat() for x in (".json", ".bin")))
    except FileNotFoundError:
        return None


def _open_or_build(
    base: Path, key: dict[str, Any], samples: Sequence[Sample], view: CacheView, progress: Callable[[int], None] | None,
    checked: _Checked | None = None,
) -> tuple[BinaryIO, dict[str, Any], bool, str | None]:
    """A shared lock on a valid copy of ``key`` at ``base``, its header, whether this process built it and why it had to.

    ``checked`` is :func:`_check_copy`'s answer when the caller already has it (its lock passes to this function). The
    copy is checked under the shared lock, which this process then keeps while it maps the pixels. A missing or damaged
    copy is built under the exclusive lock on ``<key>.build``: waiting for a builder never waits for the processes that
    merely map a copy. Once that lock is held the copy is checked again only if its files changed meanwhile (another
    process built it), so a damaged copy is hashed once, not once per look. The new files replace the old ones by
    rename, so processes that mapped the old ones keep reading what they mapped.
    """
    import fcntl

    lock, header, reason = checked or _check_copy(base, key)
    try:
        built = False
        if header is None:
            seen = _identity(base)
            build = _lock(base.with_suffix(".build"), fcntl.LOCK_EX)
            try:
                if _identity(base) != seen:
                    header, _ = _valid_header(base, key)
                if header is None:
                    header, built = _build_file(base, key, samples, view, progress), True
            finally:
                assert build is not None
                build.close()
    except BaseException:
        lock.close()
        raise
    os.utime(base.with_suffix(".lock"))  # last use, for eviction
    return lock, header, built, reason


def evict(folder: Path, limit: int, *, keep: Path) -> list[Path]:
    """Delete the least recently used whole cache entries of ``folder`` (last use: the time of their lock file) until the
    entries take at most ``limit`` bytes; never ``keep`` (a ``<key>`` base path) nor an entry whose ``<key>.lock`` another
    process holds (mapping it, or building it). Returns the bases deleted. Header first, so a half-deleted entry never
    looks valid; the lock files last, while still held."""
    import fcntl

    entries: dict[Path, int] = {}
    for f in folder.iterdir():
        if f.suffix in (".bin", ".json") and len(f.stem) == 32:
            try:
                entries[f.with_suffix("")] = entries.get(f.with_suffix(""), 0) + f.stat().st_size
            except FileNotFoundError:  # deleted by another process meanwhile
                continue
    total = sum(entries.values())

    def last_use(base: Path) -> float:
        for suffix in (".lock", ".json", ".bin"):
            try:
                return base.with_suffix(suffix).stat().st_mtime
            except FileNotFoundError:
                continue
        return 0.0

    removed: list[Path] = []
    for base in sorted(entries, key=last_use):
        if total <= limit:
            break
        if base == keep:
            continue
        lock = _lock(base.with_suffix(".lock"), fcntl.LOCK_EX | fcntl.LOCK_NB)
        if lock is None:  # in use or being built
            continue
        try:
            for suffix in (".json", ".bin", ".build", ".lock"):
                base.with_suffix(suffix).unlink(missing_ok=True)
        finally:
            lock.close()
        total -= entries[base]
        removed.append(base)
    return removed


def _read_header(base: Path) -> dict[str, Any]:
    return read_json_object(
        base.with_suffix(".json"), missing="no cache", hint="", broken_hint="", sealed=True,
        fields={"key": dict, "bytes": int, "sha256": str, "shapes": list, "failures": dict},
    )


def _valid_header(base: Path, key: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """The header of a complete, undamaged cache for ``key``, or None and why it must be (re)built."""
    try:
        header = _read_header(base)
    except ProxyEmbedError as exc:
        return None, None if not base.with_suffix(".json").exists() else f"header: {exc}"
    data = base.with_suffix(".bin")
    if header["key"] != key:
        return None, "its key does not match this data and view"
    if len(header["shapes"]) != key["images"] or not data.is_file() or data.stat().st_size != header["bytes"]:
        return None, "its pixel file is missing or has the wrong size"
    if sha256_file(data) != header["sha256"]:
        return None, "its pixel file does not match its sha256"
    return header, None


def _decode_all(
    samples: Sequence[Sample], view: CacheView, progress: Callable[[int], None] | None, sink: Callable[[np.ndarray], None] | None = None
) -> tuple[np.ndarray, dict[int, list[str | None]], list[np.ndarray]]:
    """Decode every sample on a small thread pool (:func:`map_in_chunks`), in order: shapes, failures by
    position, and the arrays (handed to ``sink`` instead of kept, when given)."""

    def one(src: Any) -> np.ndarray | BadInput:
        try:
            return view.pixels(src)
        except BadInput as exc:
            return exc

    shapes = np.zeros((len(samples), 2), np.int64)
    failures: dict[int, list[str | None]] = {}
    arrays: list[np.ndarray] = []
    i = 0
    for chunk in map_in_chunks(one, (s.source for s in samples), _CHUNK):
        for out in chunk:
            if isinstance(out, BadInput):
                failures[i] = [out.message, out.hint]
                out = np.zeros((0, 0, 3), np.uint8)
            shapes[i] = out.shape[:2]
            if sink is None:
                arrays.append(out)
            else:
                sink(out)
            i += 1
        if progress:
            progress(len(chunk))
    return shapes, failures, arrays


def _build_file(
    base: Path, key: dict[str, Any], samples: Sequence[Sample], view: CacheView, progress: Callable[[int], None] | None
) -> dict[str, Any]:
    """Decode ``samples`` into ``<base>.bin`` and seal ``<base>.json`` (both atomic, pixels first); the header."""
    digest = hashlib.sha256()
    done: dict[str, Any] = {}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:

            def sink(arr: np.ndarray) -> None:
                raw = np.ascontiguousarray(arr).tobytes()
                digest.update(raw)
                fh.write(raw)

            done["shapes"], done["failures"], _ = _decode_all(samples, view, progress, sink)
            done["bytes"] = fh.tell()

    base.with_suffix(".json").unlink(missing_ok=True)  # no header may describe the pixels while they change
    atomic_write(base.with_suffix(".bin"), write)
    header = {
        "key": key, "bytes": done["bytes"], "sha256": digest.hexdigest(), "shapes": done["shapes"].tolist(),
        "failures": {str(k): v for k, v in done["failures"].items()},
    }
    write_sealed_json(base.with_suffix(".json"), header)
    return header


def as_image(arr: np.ndarray) -> Image.Image:
    """A cached uint8 HxWx3 array as the RGB PIL image the training transforms take."""
    return Image.fromarray(arr)
