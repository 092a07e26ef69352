"""A bundle folder opened and verified: the manifest parsed, every model file present and unaltered.

Verification happens once, at load, so a truncated download or a hand-edited model fails with an error
naming the file before any inference runs (docs/architecture.md: damaged input is refused, never used).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .errors import BadInput, IntegrityError
from .files import SEAL_KEY, check_seal, sha256_file
from .manifest import MANIFEST_NAME, Artifact, Manifest


class Bundle:
    """An exported model folder whose manifest and artifact checksums have been verified.

    Use :meth:`load`; the constructor takes already-verified parts.
    """

    def __init__(self, path: Path, manifest: Manifest, manifest_sha256: str) -> None:
        self.path = path
        self.manifest = manifest
        self.manifest_sha256 = manifest_sha256

    @classmethod
    def load(cls, path: str | Path, *, verify: bool = True) -> Bundle:
        """Read ``path/manifest.json`` and check every artifact (and its data files) against its sha256.

        ``verify=False`` skips the hashing (only existence is checked), for callers that just verified.
        Raises :class:`BadInput` for a missing or malformed manifest and :class:`IntegrityError` for a
        model file that is missing or does not match its recorded checksum.
        """
        path = Path(path).resolve()
        if not path.is_dir():
            raise BadInput(f"bundle folder not found: {path}", hint="pass the folder written by `proxyembed export`")
        manifest_file = path / MANIFEST_NAME
        try:
            raw = manifest_file.read_bytes()
        except FileNotFoundError as exc:
            raise BadInput(
                f"{manifest_file} is missing", hint="is this a bundle folder from `proxyembed export`?"
            ) from exc
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BadInput(f"{manifest_file} is not valid JSON: {exc}", hint="re-export the bundle") from exc
        check_seal(raw, manifest_file, hint="copy the bundle again, or re-export it")
        if isinstance(data, dict):
            data.pop(SEAL_KEY, None)
        manifest = Manifest.from_dict(data, source=str(manifest_file))
        for artifact in manifest.artifacts:
            _check_file(path, artifact.file, artifact.sha256, verify)
            for name, digest in artifact.data_files.items():
                _check_file(path, name, digest, verify)
        return cls(path, manifest, hashlib.sha256(raw).hexdigest())

    @property
    def dim(self) -> int:
        return self.manifest.embedding_dim

    @property
    def signature(self) -> dict[str, Any]:
        """What a gallery records to recognise the model that embedded it."""
        return {"manifest_sha256": self.manifest_sha256, "dim": self.dim}

    def artifact_path(self, artifact: Artifact) -> Path:
        """Absolute path of one of this bundle's artifacts."""
        return self.path / artifact.file

    def __repr__(self) -> str:
        arts = ", ".join(f"{a.format}/{a.precision}" for a in self.manifest.artifacts)
        return f"Bundle({str(self.path)!r}, dim={self.dim}, artifacts=[{arts}])"


def _check_file(root: Path, name: str, digest: str, verify: bool) -> None:
    file = (root / name).resolve()
    if not file.is_relative_to(root):  # a symlink pointing out of the folder
        raise BadInput(f"bundle file '{name}' resolves outside the bundle folder {root}")
    if not file.is_file():
        raise IntegrityError(f"bundle file missing: {file}", hint="copy the whole bundle folder, or re-export it")
    if verify and sha256_file(file) != digest:
        raise IntegrityError(
            f"bundle file altered or truncated: {file} does not match the sha256 in {MANIFEST_NAME}",
            hint="copy the bundle again, or re-export it",
        )
