"""The bundle manifest: the single source of truth about an exported model (docs/architecture.md, "Bundle").

Written by ``proxyembed export``, read by the runtime, ``index``, ``search`` and ``check``. Parsing is
strict: a missing field, a wrong type or an artifact path leaving the bundle folder is a
:class:`~proxyembed.runtime.errors.BadInput` naming the field, never a KeyError later.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath
from typing import Any, Literal, get_args

from .errors import BadInput
from .files import sealed_json
from .preprocess import PreprocessSpec

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
        """Validate and parse a manifest; ``source`` names the file in errors."""
        where = source

        def need(obj: Any, key: str, typ: type | tuple[type, ...], ctx: str) -> Any:
            if not isinstance(obj, dict) or key not in obj:
                raise BadInput(f"{where}: missing field '{ctx}{key}'", hint="re-export the bundle with `proxyembed export`")
            val = obj[key]
            if not isinstance(val, typ) or (isinstance(val, bool) and typ is int):
                raise BadInput(f"{where}: field '{ctx}{key}' has the wrong type ({type(val).__name__})")
            return val

        version = need(d, "format_version", int, "")
        if version != FORMAT_VERSION:
            raise BadInput(
                f"{where}: bundle format_version {version} is not supported (this proxyembed reads {FORMAT_VERSION})",
                hint="re-export the bundle with this version of proxyembed, or upgrade proxyembed",
            )
        emb = need(d, "embedding", dict, "")
        dim = need(emb, "dim", int, "embedding.")
        if dim <= 0:
            raise BadInput(f"{where}: embedding.dim must be positive, got {dim}")
        metric = need(emb, "metric", str, "embedding.")
        if metric != "cosine":
            raise BadInput(f"{where}: embedding.metric '{metric}' is not supported (only 'cosine')")
        inp = dict(need(d, "input", dict, ""))
        input_name = need(inp, "name", str, "input.")
        inp.pop("name")
        try:
            spec = PreprocessSpec.from_dict(inp)
        except TypeError as exc:
            raise BadInput(f"{where}: bad 'input' section: {exc}") from exc
        out = need(d, "output", dict, "")
        arts_raw = need(d, "artifacts", list, "")
        if not arts_raw:
            raise BadInput(f"{where}: the bundle lists no artifacts", hint="re-export the bundle")
        artifacts = []
        for i, a in enumerate(arts_raw):
            ctx = f"artifacts[{i}]."
            fmt = need(a, "format", str, ctx)
            prec = need(a, "precision", str, ctx)
            if fmt not in FORMATS:
                raise BadInput(f"{where}: {ctx}format '{fmt}' is unknown (expected one of {list(FORMATS)})")
            if prec not in PRECISIONS:
                raise BadInput(f"{where}: {ctx}precision '{prec}' is unknown (expected one of {list(PRECISIONS)})")
            data_files = a.get("data_files") or {}
            for name in [need(a, "file", str, ctx), *data_files]:
                _check_inside(name, where, ctx)
            artifacts.append(
                Artifact(
                    file=a["file"],
                    format=fmt,  # type: ignore[arg-type]
                    precision=prec,  # type: ignore[arg-type]
                    sha256=need(a, "sha256", str, ctx),
                    target=a.get("target", "any"),
                    device=a.get("device"),
                    data_files=dict(data_files),
                    validation=dict(a.get("validation") or {}),
                    details=dict(a.get("details") or {}),
                )
            )
        return cls(
            embedding_dim=dim,
            preprocess=spec,
            artifacts=artifacts,
            input_name=input_name,
            output_name=need(out, "name", str, "output."),
            metric="cosine",
            normalized=bool(emb.get("normalized", True)),
            format_version=version,
            proxyembed_version=str(d.get("proxyembed_version", "")),
            created=str(d.get("created", "")),
            source=dict(d.get("source") or {}),
            validation=dict(d.get("validation") or {}),
        )


def _check_inside(name: str, where: str, ctx: str) -> None:
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or "\\" in name or not name:
        raise BadInput(f"{where}: {ctx}file '{name}' points outside the bundle folder", hint="artifact paths must be plain relative names")
