"""The bundle manifest: the single source of truth about an exported model (docs/architecture.md, "Bundle").

Written by ``proxyembed export``, read by the runtime, ``index``, ``search`` and ``check``. Parsing is
strict (:data:`MANIFEST_SCHEMA`, checked by :mod:`.schema`): a missing field, a wrong type or an artifact
path leaving the bundle folder is a :class:`~proxyembed.runtime.errors.BadInput` naming the field, never
a KeyError later.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath
from typing import Any, Literal, get_args, get_type_hints

from .errors import BadInput
from .files import sealed_json
from .preprocess import SPEC_SCHEMA, PreprocessSpec
from .schema import Field, validate

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"

Precision = Literal["fp32", "fp16", "int8"]
ArtifactFormat = Literal["onnx", "tensorrt"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
FORMATS: tuple[str, ...] = get_args(ArtifactFormat)


Target = Literal["any", "cpu", "gpu"]
"""The hardware an artifact is made for: ``any`` (portable ONNX), ``cpu`` or ``gpu``; the one spelling export and the runtime use."""


@dataclass
class Artifact:
    """One model file of the bundle.

    ``target`` is ``"any"`` (portable ONNX), ``"cpu"`` (an ONNX file tuned for CPU execution, e.g. uint8
    activations) or ``"gpu"``; a TensorRT engine also records ``device`` (GPU name, compute capability,
    TensorRT version), since an engine only runs where it was built. ``data_files`` lists external-data
    files that belong to the model (each hashed too). ``validation`` holds this artifact's numbers
    (see :class:`Manifest`), ``details`` free-form facts such as quantization settings.
    """

    file: str
    format: ArtifactFormat
    precision: Precision
    sha256: str
    target: Target = "any"
    device: dict[str, Any] | None = None
    data_files: dict[str, str] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """Whether export validation accepted this artifact (unvalidated counts as not passed)."""
        return bool(self.validation.get("passed", False))


@dataclass
class Manifest:
    """Everything a consumer needs to use the bundle's models correctly.

    ``validation`` layout: ``{"data": {...}, "reference": {metric: value}, "thresholds": {precision:
    points}, "k": [...]}``; per-artifact numbers live on each :class:`Artifact`.
    """

    embedding_dim: int
    preprocess: PreprocessSpec
    artifacts: list[Artifact]
    input_name: str = "images"
    output_name: str = "embeddings"
    metric: Literal["cosine"] = "cosine"
    normalized: bool = True
    format_version: int = FORMAT_VERSION
    proxyembed_version: str = ""
    created: str = ""
    source: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON layout of ``manifest.json``."""
        return {
            "format_version": self.format_version,
            "proxyembed_version": self.proxyembed_version,
            "created": self.created,
            "source": self.source,
            "embedding": {"dim": self.embedding_dim, "metric": self.metric, "normalized": self.normalized},
            "input": {"name": self.input_name, **self.preprocess.to_dict()},
            "output": {"name": self.output_name},
            "artifacts": [asdict(a) for a in self.artifacts],
            "validation": self.validation,
        }

    def dumps(self) -> str:
        """The sealed text of ``manifest.json``: its last field is the sha256 of the bytes before it."""
        return sealed_json(self.to_dict())

    def artifact(self, precision: str, fmt: str = "onnx", target: str | None = None) -> Artifact | None:
        """The first artifact with this precision and format (and target, when given), if any."""
        for a in self.artifacts:
            if a.precision == precision and a.format == fmt and (target is None or a.target == target):
                return a
        return None

    @classmethod
    def from_dict(cls, d: Any, source: str = MANIFEST_NAME) -> Manifest:
        """Validate (:data:`MANIFEST_SCHEMA`) and parse a manifest; ``source`` names the file in errors."""
        validate(d, {"format_version": int}, where=source, hint=_REEXPORT)
        if d["format_version"] != FORMAT_VERSION:
            raise BadInput(
                f"{source}: bundle format_version {d['format_version']} is not supported (this proxyembed reads {FORMAT_VERSION})",
                hint="re-export the bundle with this version of proxyembed, or upgrade proxyembed",
            )
        validate(d, MANIFEST_SCHEMA, where=source, hint=_REEXPORT)
        emb, inp = d["embedding"], dict(d["input"])
        input_name = inp.pop("name")
        spec = PreprocessSpec.from_dict(inp, where=f"{source}: input")
        artifacts = [
            Artifact(
                file=a["file"],
                format=a["format"],
                precision=a["precision"],
                sha256=a["sha256"],
                target=a.get("target", "any"),
                device=a.get("device"),
                data_files=dict(a.get("data_files") or {}),
                validation=dict(a.get("validation") or {}),
                details=dict(a.get("details") or {}),
            )
            for a in d["artifacts"]
        ]
        return cls(
            embedding_dim=emb["dim"],
            preprocess=spec,
            artifacts=artifacts,
            input_name=input_name,
            output_name=d["output"]["name"],
            metric=emb["metric"],
            normalized=emb.get("normalized", True),
            format_version=d["format_version"],
            proxyembed_version=d.get("proxyembed_version", ""),
            created=d.get("created", ""),
            source=dict(d.get("source") or {}),
            validation=dict(d.get("validation") or {}),
        )


def _inside_bundle(name: str) -> str | None:
    """Why an artifact path leaves the bundle folder (absolute, ``..``, a backslash, empty), or None."""
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or "\\" in name or not name:
        return f"'{name}' points outside the bundle folder (artifact paths must be plain relative names)"
    return None


def _data_files_inside(files: dict[str, Any] | None) -> str | None:
    return next((why for why in map(_inside_bundle, files or {}) if why), None)


_REEXPORT = "re-export the bundle with `proxyembed export`"
_ARTIFACT_TYPES = get_type_hints(Artifact)
MANIFEST_SCHEMA: dict[str, Any] = {
    "format_version": int,
    "embedding": {
        "dim": Field(int, rule=lambda dim: None if dim > 0 else f"must be positive, got {dim}"),
        "metric": get_type_hints(Manifest)["metric"],
        "normalized": Field(bool, required=False),
    },
    "input": {"name": str, **SPEC_SCHEMA},
    "output": {"name": str},
    "artifacts": Field(
        list,
        items={
            "file": Field(str, rule=_inside_bundle),
            "format": _ARTIFACT_TYPES["format"],
            "precision": _ARTIFACT_TYPES["precision"],
            "sha256": str,
            "target": Field(_ARTIFACT_TYPES["target"], required=False),
            "device": Field((dict, None), required=False),
            "data_files": Field((dict, None), required=False, items=str, rule=_data_files_inside),
            "validation": Field((dict, None), required=False),
            "details": Field((dict, None), required=False),
        },
        rule=lambda arts: None if arts else "is empty: the bundle lists no artifacts",
    ),
    "proxyembed_version": Field(str, required=False),
    "created": Field(str, required=False),
    "source": Field((dict, None), required=False),
    "validation": Field((dict, None), required=False),
}
"""What :meth:`Manifest.from_dict` accepts: every field a consumer reads, with its type and rules."""
