"""Atomic writes, staged folders, hashing and strict JSON reads: the "fail loudly, lose nothing" file
handling every stage shares.

A file is written beside its target, fsynced, and renamed over it (then its folder is fsynced), so a
crash or a power loss leaves the old file or the new one, never half of either; a folder (bundle,
gallery) is built in a staged folder beside its target and swapped in the same way (:class:`StagedDir`,
:func:`staged_dir`); each staged folder has a lock file beside it that its writer holds, so the folders
a killed writer leaves can be told from a running writer's and removed (:func:`remove_abandoned_staging`).
Files get the mode the umask gives a new file (``mkstemp``'s 0600 would stop another user serving a
gallery). JSON read back from a proxyembed artifact is checked to be an object, and a broken file is an
:class:`IntegrityError`.

A *sealed* JSON file (``gallery.json``, ``index.json``, ``manifest.json``) ends with a ``"checksum"``
field: the sha256 of every byte before it. The file that carries the other files' checksums is thus
checked itself, and any single-byte change to it — even one JSON would parse the same — is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from .errors import BadInput, IntegrityError
from .schema import Schema, validate


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks so large engines and checkpoints do not fill memory."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _umask() -> int:
    """The process umask: from /proc on Linux (thread-safe), else by setting it and putting it back at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's or a folder's contents (a folder: its entries) to disk; a no-op where folders cannot be opened."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if Path(path).is_dir() and hasattr(os, "O_DIRECTORY") else 0)
    try:
        fd = os.open(path, flags)
    except (IsADirectoryError, PermissionError):  # Windows cannot open folders
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: str | os.PathLike) -> None:
    """fsync every file and folder under ``folder`` (before renaming a staged folder into place)."""
    for root, _dirs, files in os.walk(folder):
        for name in files:
            fsync_path(Path(root) / name)
        fsync_path(root)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` for a temp file beside ``path``, then fsync and rename it to ``path``; clean up on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | os.PathLike, payload: dict[str, Any], indent: int = 2) -> None:
    """Write ``payload`` as JSON atomically; an unserialisable payload fails before any file is touched."""
    atomic_write_text(path, json.dumps(payload, indent=indent) + "\n")


def _new_holder(target: Path, suffix: str) -> tuple[Path, int]:
    """A new hidden folder beside ``target`` (``.tmp``: a version being built; ``.old``: the previous one, moved aside).

    Each such folder has a lock file beside it, made first and locked (``flock``) for as long as the
    writer keeps the returned descriptor open: the operating system drops the lock when the writer
    dies, however it dies, so a later open can prove the folder abandoned (:func:`remove_abandoned_staging`).
    The folder is beside ``target``, on the same filesystem, so the final rename is atomic.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, lock = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".lock", dir=target.parent)
    try:
        _lock(fd)
        folder = Path(lock[: -len(".lock")] + suffix)
        folder.mkdir(mode=0o777 & ~_umask())
    except BaseException:
        os.unlink(lock)
        os.close(fd)
        raise
    return folder, fd


def _lock(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # Windows: no flock, so no folder is ever proven abandoned there
        return
    fcntl.flock(fd, fcntl.LOCK_EX)  # a file just made: nobody else holds it


def _release(folder: Path, fd: int) -> None:
    """The writer is done with ``folder`` (renamed or deleted): remove its lock file, then let the lock go."""
    try:
        os.unlink(_lock_file(folder))
    except FileNotFoundError:
        pass
    finally:
        os.close(fd)


def _lock_file(folder: Path) -> Path:
    return folder.with_name(folder.name.rsplit(".", 1)[0] + ".lock")


def _lock_state(folder: Path) -> str:
    """``"held"`` (its writer runs), ``"free"`` (its writer is gone: proven abandoned) or ``"none"`` (no lock file)."""
    try:
        import fcntl
    except ImportError:
        return "held" if _lock_file(folder).exists() else "none"
    try:
        fd = os.open(_lock_file(folder), os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return "none"
    except OSError:
        return "held"  # unreadable: not proven
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return "held"
    finally:
        os.close(fd)  # also lets go of the lock just taken
    return "free"


def remove_abandoned_staging(target: str | os.PathLike) -> list[Path]:
    """Delete the hidden ``.tmp`` and ``.old`` folders beside ``target`` that writers killed mid-save left behind.

    Each can hold a whole copy of ``target`` (``kill -9`` during a save leaves one every time). Only
    those proven abandoned are removed: their lock file exists and no process holds its lock. A folder
    without a lock file (made by an older proxyembed) is left alone. Returns the folders removed.
    """
    target = Path(target)
    if not target.parent.is_dir():
        return []
    removed = []
    for holder in sorted(target.parent.glob(f".{target.name}.*.tmp")) + sorted(target.parent.glob(f".{target.name}.*.old")):
        if holder.is_dir() and _lock_state(holder) == "free":
            shutil.rmtree(holder, ignore_errors=True)
            _lock_file(holder).unlink(missing_ok=True)
            removed.append(holder)
    for lock in target.parent.glob(f".{target.name}.*.lock"):  # a writer killed before or after its folder existed
        stem = lock.name[: -len(".lock")]
        if not any((lock.parent / (stem + s)).exists() for s in (".tmp", ".old")) and _lock_state(lock.with_suffix(".tmp")) == "free":
            lock.unlink(missing_ok=True)
    return removed


def _swap_dir_into_place(new: Path, target: Path) -> None:
    """Rename folder ``new`` to ``target``; an old ``target`` is moved aside first and deleted only afterwards.

    Everything in ``new`` is fsynced before the rename and the parent folder after it, so a power loss
    leaves the old folder or the complete new one.
    """
    fsync_tree(new)
    if not target.exists():
        os.replace(new, target)
        fsync_path(target.parent)
        return
    old, lock = _new_holder(target, ".old")
    try:
        os.replace(target, old / target.name)
        try:
            os.replace(new, target)
            fsync_path(target.parent)
        except BaseException:
            os.replace(old / target.name, target)
            raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
        _release(old, lock)


def restore_interrupted_swap(target: str | os.PathLike) -> bool:
    """Put back the previous version of folder ``target`` when a swap was killed between its two renames.

    :func:`_swap_dir_into_place` moves the old folder aside before renaming the new one into place; a
    process killed (``kill -9``, power loss) in between leaves no ``target``, only the complete old
    version inside a hidden ``.old`` sibling. Its writer never reported success, so the old version is
    the last committed state. Returns whether a folder was restored; an existing ``target`` is left alone,
    and so is a holder whose writer is still alive (it is between its two renames right now).
    """
    target = Path(target)
    if target.exists() or not target.parent.is_dir():
        return False
    # The newest swap's holder: its mtime is that of the rename into it (an older holder whose clean-up
    # was cut short still has its folder, partly deleted, but was last changed at an earlier swap).
    aside = sorted(
        (p for p in target.parent.glob(f".{target.name}.*.old") if (p / target.name).is_dir()),
        key=lambda p: p.stat().st_mtime_ns,
    )
    if not aside or _lock_state(aside[-1]) == "held":
        return False
    os.replace(aside[-1] / target.name, target)
    fsync_path(target.parent)
    for leftover in target.parent.glob(f".{target.name}.*.old"):
        if _lock_state(leftover) != "held":
            shutil.rmtree(leftover, ignore_errors=True)
            _lock_file(leftover).unlink(missing_ok=True)
    return True


class StagedDir:
    """A hidden folder beside ``target`` to build a new version of it in, then swap into place.

    :meth:`commit` moves the folder to ``target`` (see :func:`_swap_dir_into_place`); leaving the
    ``with`` block without a commit, normally or by an exception, deletes the staged folder, so neither
    a failure nor an abandoned build ever leaves half a folder at ``target`` or touches the old one.
    """

    def __init__(self, target: str | os.PathLike) -> None:
        self.target = Path(target)
        self.path, lock = _new_holder(self.target, ".tmp")
        self._lock: int | None = lock

    def __enter__(self) -> StagedDir:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        shutil.rmtree(self.path, ignore_errors=True)  # gone already after a commit
        if self._lock is not None:
            _release(self.path, self._lock)
            self._lock = None

    def commit(self) -> Path:
        """fsync the staged folder and swap it into ``target``; returns ``target``."""
        _swap_dir_into_place(self.path, self.target)
        return self.target


@contextmanager
def staged_dir(target: str | os.PathLike) -> Iterator[Path]:
    """The staged folder of :class:`StagedDir` for the block to fill, committed to ``target`` when the block completes."""
    with StagedDir(target) as stage:
        yield stage.path
        stage.commit()


SEAL_KEY = "checksum"
_SEAL_PREFIX = f'"{SEAL_KEY}": "'


def sealed_json(payload: dict[str, Any], indent: int = 2) -> str:
    """``payload`` as JSON text ending in a ``"checksum"`` field: the sha256 of every byte before it."""
    body = {k: v for k, v in payload.items() if k != SEAL_KEY}
    text = json.dumps(body, indent=indent, allow_nan=False)
    head = text[:-1].rstrip() + ("," if body else "") + "\n" + " " * indent
    return f"{head}{_SEAL_PREFIX}{hashlib.sha256(head.encode()).hexdigest()}\"\n}}\n"


def check_seal(raw: bytes, path: Path, *, hint: str) -> None:
    """Refuse (:class:`IntegrityError`) the bytes of a sealed JSON file whose checksum does not match."""
    at = raw.rfind(_SEAL_PREFIX.encode())
    digest = raw[at + len(_SEAL_PREFIX) : at + len(_SEAL_PREFIX) + 64] if at >= 0 else b""
    if at < 0 or raw[at + len(_SEAL_PREFIX) + 64 :] != b'"\n}\n':
        raise IntegrityError(f"{path} has no valid '{SEAL_KEY}' field (altered, truncated, or written by an older proxyembed)", hint=hint)
    if hashlib.sha256(raw[:at]).hexdigest().encode() != digest:
        raise IntegrityError(f"{path} was altered: its bytes do not match its own '{SEAL_KEY}'", hint=hint)


def write_sealed_json(path: str | os.PathLike, payload: dict[str, Any], indent: int = 2) -> None:
    """Write ``payload`` as sealed JSON (see :func:`sealed_json`) atomically."""
    atomic_write_text(path, sealed_json(payload, indent))


def read_json_object(
    path: Path,
    *,
    missing: str,
    hint: str,
    broken_hint: str,
    fields: Schema,
    sealed: bool = False,
) -> dict[str, Any]:
    """A JSON object from ``path`` holding ``fields`` (a :mod:`.schema` table: field -> type, nested table or Field).

    :class:`BadInput` (``missing``, ``hint``) if the file is absent; :class:`IntegrityError`
    (``broken_hint``) if it is not valid JSON, not an object, lacks a field or holds a wrong one, or
    (``sealed``) does not match its own checksum. The returned dict has no ``checksum`` key.
    """
    try:
        raw = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise BadInput(missing, hint=hint) from exc
    except IsADirectoryError as exc:
        raise IntegrityError(f"{path} is a folder, not a file", hint=broken_hint) from exc
    if sealed:
        check_seal(raw, path, hint=broken_hint)
    try:
        data = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"{path} is not valid JSON: {exc}", hint=broken_hint) from exc
    if not isinstance(data, dict):
        raise IntegrityError(f"{path} is not a JSON object with the fields {', '.join(fields)}", hint=broken_hint)
    data.pop(SEAL_KEY, None)
    validate(data, fields, where=str(path), error=IntegrityError, hint=broken_hint)
    return data
