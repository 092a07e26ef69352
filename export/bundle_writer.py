"""Writing a bundle folder atomically: all of it appears at ``--out``, or none of it does.

Files are written into a staged folder next to ``--out`` (:class:`~proxyembed.runtime.files.StagedDir`:
same parent, so the final ``rename`` is atomic on one filesystem). :meth:`BundleWriter.commit` writes ``manifest.json`` last and renames the
folder into place; an existing bundle is replaced only with ``force``, by moving it aside first and
deleting it after the new one is in place. Any exception before the commit removes the temp folder,
so a failed export never leaves a half-written bundle and never touches the previous one
(docs/architecture.md: every file written atomically and checksummed).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import TracebackType

from proxyembed.runtime.errors import BadInput
from proxyembed.runtime.files import StagedDir, atomic_write_text
from proxyembed.runtime.manifest import MANIFEST_NAME, Manifest


def check_out_path(out: Path, force: bool) -> None:
    """Refuse an ``--out`` that is a file, or an existing folder without ``force`` (before any work)."""
    if out.is_file() or (out.exists() and not out.is_dir()):
        raise BadInput(f"--out '{out}' is a file, not a bundle folder", hint="give a folder path such as bundles/NAME")
    if out.exists() and not force:
        raise BadInput(f"--out '{out}' already exists", hint="pass --force to replace it, or choose another --out")
    if out.parent.exists() and not out.parent.is_dir():
        raise BadInput(f"--out '{out}': parent '{out.parent}' is a file")


class BundleWriter:
    """A context manager owning the temp folder; ``dir`` is where artifacts are written."""

    def __init__(self, out: Path, *, force: bool) -> None:
        self.out = Path(out)
        self.force = force
        check_out_path(self.out, force)
        self._stage = StagedDir(self.out)
        self.dir = self._stage.path

    def __enter__(self) -> BundleWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stage.__exit__(exc_type, exc, tb)

    def discard(self, name: str) -> None:
        """Delete a file written into the temp folder (a refused artifact) so it is not shipped."""
        (self.dir / name).unlink(missing_ok=True)

    def commit(self, manifest: Manifest) -> Path:
        """Write the manifest and move the folder to ``out``; returns ``out``."""
        listed = {a.file for a in manifest.artifacts} | {f for a in manifest.artifacts for f in a.data_files}
        for stray in [p for p in self.dir.iterdir() if p.name not in listed]:
            if stray.is_dir():
                shutil.rmtree(stray)
            else:
                stray.unlink()
        atomic_write_text(self.dir / MANIFEST_NAME, manifest.dumps())
        check_out_path(self.out, self.force)  # something may have appeared at --out during the export
        return self._stage.commit()
