"""``proxyembed export`` as a plain function: checkpoint -> artifacts -> validation -> bundle.

Order matters for "fail loudly, lose nothing": every cheap check on user input (``--out``, the
checkpoint, the data, the calibration images) runs before the first artifact is written, and all
artifacts are written into the bundle writer's temp folder, which only a commit moves to ``--out``.

Exit 1 keeps what passed: artifacts over their Recall@1 limit are refused,
i.e. deleted from the temp folder and listed under ``validation.refused`` in the manifest with their
numbers; the bundle is still written with the artifacts that passed, because each of them was validated
on its own and the bundle stays consistent. A TensorRT engine that fails to build (or to load) is refused
the same way, with TensorRT's reason in place of numbers, and the export goes on with the others. :meth:`ExportResult.raise_if_refused` then raises
:class:`CheckFailed` (exit 1) naming each refused artifact, its drop and what to try. If the fp32 ONNX
itself is refused (or fails numerical parity) nothing is written: a bundle without its reference-grade
model is not worth shipping.

Reduced JPEG decoding is judged like an artifact (:func:`.validate.check_decode`), but failing its limit
refuses nothing: the bundle falls back to full decoding, its artifacts are validated again with it, and
a note (and ``validation.decode.fallback`` in the manifest) says so.

This module orchestrates only: its settings are :class:`~.options.ExportOptions`, its progress goes to
the runtime's :class:`~proxyembed.runtime.progress.Reporter` (silent unless the caller passes a drawing
one), its scores come from :mod:`.validate` and its words (table, advice) from :mod:`.report`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from proxyembed._version import __version__
from proxyembed.data.types import DataSplit
from proxyembed.runtime.errors import BadInput, CheckFailed
from proxyembed.runtime.evaluation import EncodeBatch
from proxyembed.runtime.files import sha256_file
from proxyembed.runtime.manifest import Artifact, Manifest
from proxyembed.runtime.metrics import GATE_METRIC
from proxyembed.runtime.preprocess import Preprocessor, PreprocessSpec
from proxyembed.runtime.progress import Reporter

from .bundle_writer import BundleWriter, check_out_path
from .int8 import calibration_batch
from .onnx_export import INPUT_NAME, OUTPUT_NAME
from .options import ExportOptions
from .parity import ParityResult
from .report import refusal_advice
from .validate import Candidate, DecodeCheck, Score, ValidationReport, check_decode, score_artifacts, served

FP32, FP16 = "model.onnx", "model_fp16.onnx"
INT8 = {"cpu": "model_int8_cpu.onnx", "gpu": "model_int8_gpu.onnx"}
ENGINE = "engine_{precision}.plan"
PARITY_IMAGES = 8


@dataclass(frozen=True)
class BuildFailure:
    """An artifact that could not be built, refused with its reason (e.g. TensorRT's parser error)."""

    file: str
    precision: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """The entry under the manifest's ``validation.refused``."""
        return {"file": self.file, "precision": self.precision, "target": "gpu", "passed": False, "reason": self.reason}


@dataclass
class ExportResult:
    """What the export produced; ``bundle`` is None when nothing was written (fp32 refused)."""

    bundle: Path | None
    report: ValidationReport
    parity: ParityResult
    artifacts: list[Artifact]
    refused: list[Score]
    notes: list[str]
    failed: list[BuildFailure] = field(default_factory=list)
    decode: DecodeCheck | None = None

    def summary(self) -> dict[str, Any]:
        """Plain-data form (``export --json``): the bundle, what it holds, what was refused and why."""
        return {
            "bundle": None if self.bundle is None else str(self.bundle),
            "artifacts": [{"file": a.file, "format": a.format, "precision": a.precision, "target": a.target, "validation": a.validation}
                          for a in self.artifacts],
            "refused": [s.to_dict() for s in self.refused],
            "decode": None if self.decode is None else self.decode.to_dict(),
            "notes": self.notes,
        }

    def raise_if_refused(self) -> None:
        """Raise :class:`CheckFailed` (exit 1) naming every refused artifact, its drop or failure, and what to try."""
        if not self.refused and not self.failed:
            return
        parts = [f"{s.file} ({s.precision}) lost {s.drop[GATE_METRIC]:.2f} points of {GATE_METRIC} (limit {s.threshold:g})" for s in self.refused]
        parts += [f"{f.file} ({f.precision}) did not build: {f.reason}" for f in self.failed]
        where = f"bundle written to {self.bundle} without it" if self.bundle else "no bundle written"
        raise CheckFailed(f"refused {'; '.join(parts)}; {where}", hint=refusal_advice({s.precision for s in self.refused}, bool(self.failed)))


def export_run(opts: ExportOptions, reporter: Reporter | None = None) -> ExportResult:
    """Export, validate and write the bundle (see the module docstring for the failure semantics)."""
    from proxyembed.training.checkpoint import load_checkpoint
    from proxyembed.training.inference import checkpoint_data, torch_encode_batch

    from . import tensorrt

    rep = reporter or Reporter()
    opts.out = Path(opts.out)
    check_out_path(opts.out, opts.force)
    notes: list[str] = []
    trt_skip = tensorrt.unavailable_reason() if opts.tensorrt else None
    if trt_skip:
        notes.append(f"TensorRT: skipped, {trt_skip}; the ONNX artifacts are exported")
        rep.log(notes[-1], kind="note")

    ckpt = load_checkpoint(opts.run)
    data = checkpoint_data(ckpt, opts.data)
    rep.log(f"data: {data.name}", kind="step")
    spec = ckpt.preprocess if opts.decode is None else replace(ckpt.preprocess, decode=opts.decode)
    calibration = None
    if opts.int8:
        rep.log(f"int8: preparing {opts.calibration_size} calibration images from the training classes", kind="step")
        calibration = calibration_batch(data.train, spec, opts.calibration_size)
    model = ckpt.build_model()
    mc = ckpt.model_config
    reference = torch_encode_batch(model)

    with BundleWriter(opts.out, force=opts.force) as writer:
        parity, candidates, artifacts, failed = _write_artifacts(
            opts, writer.dir, _Inputs(model, mc.backbone, spec, data, calibration, reference), rep, export_engines=opts.tensorrt and not trt_skip
        )
        rep.log(f"validating {len(candidates)} artifact(s) on {len(data.eval) + len(data.gallery or [])} evaluation images", kind="step")
        rep.phase("validating", len(data.eval) + len(data.gallery or []))
        report = score_artifacts(data, spec, reference, candidates, opts.max_drop, batch_size=opts.batch_size, on_batch=rep.advance)
        decode = _check_decode(opts, data, spec, reference, report, rep)
        if decode is not None and not decode.passed:
            spec = replace(spec, decode="full")
            notes.append(f"reduced JPEG decoding lost {decode.drop[GATE_METRIC]:.2f} points of {GATE_METRIC} against full decoding "
                         f"(limit {decode.threshold:g}): the bundle records full decoding, its artifacts validated again with it")
            rep.log(notes[-1], kind="note")
            rep.phase("validating", len(data.eval) + len(data.gallery or []))
            report = score_artifacts(data, spec, reference, candidates, opts.max_drop, batch_size=opts.batch_size, on_batch=rep.advance)
        refused = [s for s in report.scores if not s.passed]
        kept: list[Artifact] = []
        for score in report.scores:
            art = artifacts[score.file]
            if score.passed:
                art.sha256 = sha256_file(writer.dir / art.file)
                art.validation = score.to_dict()
                kept.append(art)
            else:
                writer.discard(art.file)
        bundle = None
        if FP32 in {a.file for a in kept}:
            manifest = Manifest(
                embedding_dim=mc.embedding_dim,
                preprocess=spec,
                artifacts=kept,
                input_name=INPUT_NAME,
                output_name=OUTPUT_NAME,
                proxyembed_version=__version__,
                created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                source={"checkpoint": str(ckpt.path), "sha256": ckpt.sha256(), "backbone": mc.backbone, "epoch": ckpt.epoch,
                        "pool": mc.pool},
                validation={**report.section(opts.max_drop, extra_refused=[f.to_dict() for f in failed]),
                            **({"decode": decode.to_dict()} if decode is not None else {})},
            )
            bundle = writer.commit(manifest)
    return ExportResult(bundle=bundle, report=report, parity=parity, artifacts=kept, refused=refused, notes=notes, failed=failed,
                        decode=decode)


def _check_decode(opts: ExportOptions, data: DataSplit, spec: PreprocessSpec, reference: EncodeBatch, report: ValidationReport,
                  rep: Reporter) -> DecodeCheck | None:
    """With reduced decoding, the reference's Recall@1 drop against full decoding (None with full decoding)."""
    if spec.decode != "reduced":
        return None
    rep.log("decoding: reduced JPEG decoding against full decoding, with the PyTorch model", kind="step")
    rep.phase("decoding", len(data.eval) + len(data.gallery or []))
    decode = check_decode(data, spec, reference, report.reference, opts.max_drop["decode"], batch_size=opts.batch_size, on_batch=rep.advance)
    rep.log(f"reduced decoding: {decode.reduced_images} of {decode.images} evaluation images read smaller, "
            f"Recall@1 drop {decode.drop[GATE_METRIC]:.2f} points (limit {decode.threshold:g})", kind="note")
    return decode


@dataclass(frozen=True)
class _Inputs:
    """What the artifacts are made from: the eval-mode model and the data that checks and calibrates it."""

    model: Any
    backbone: str
    spec: PreprocessSpec
    data: DataSplit
    calibration: np.ndarray | None
    reference: EncodeBatch


def _write_artifacts(
    opts: ExportOptions, out_dir: Path, src: _Inputs, rep: Reporter, *, export_engines: bool
) -> tuple[ParityResult, list[Candidate], dict[str, Artifact], list[BuildFailure]]:
    """Write every requested artifact into ``out_dir``; returns (parity, candidates, artifacts by file, engines that failed)."""
    from . import tensorrt
    from .fp16 import convert_fp16
    from .int8 import quantize_int8
    from .onnx_export import export_onnx
    from .parity import check_parity, require_parity

    rep.log(f"ONNX fp32: exporting {src.backbone} (opset {opts.opset}, dynamic batch)", kind="step")
    export_onnx(src.model, out_dir / FP32, crop=src.spec.crop, backbone=src.backbone, opset=opts.opset)
    real = Preprocessor(src.spec)([s.source for s in src.data.eval[:PARITY_IMAGES]])
    parity = check_parity(src.reference, served(out_dir / FP32), real)
    require_parity(parity, f"{FP32} on ONNX Runtime")
    rep.log(f"parity with PyTorch: max |diff| {parity.max_abs_diff:.1e} at batch 1 and 8, real and random images", kind="note")
    artifacts = {FP32: Artifact(FP32, "onnx", "fp32", "", details={"opset": opts.opset, "parity_max_abs_diff": parity.diffs})}
    onnx_for = {"fp32": FP32}
    if opts.fp16:
        rep.log("fp16: converting (inputs/outputs and head + L2 normalisation kept fp32)", kind="step")
        kept = convert_fp16(out_dir / FP32, out_dir / FP16)
        artifacts[FP16] = Artifact(FP16, "onnx", "fp16", "", details={"fp32_nodes": kept})
        onnx_for["fp16"] = FP16
        rep.log("fp16 is for GPUs (ONNX Runtime CUDA / TensorRT): on a CPU it is validated here but runs slower than fp32", kind="note")
    if src.calibration is not None:
        for target in ("cpu", "gpu"):
            what = "uint8 activations, fast on x86 CPUs" if target == "cpu" else "symmetric int8, for TensorRT"
            rep.log(f"int8 ({target}): {opts.int8_options.method} calibration on {len(src.calibration)} training images, {what}", kind="step")
            kept = quantize_int8(out_dir / FP32, out_dir / INT8[target], src.calibration, target, opts.int8_options)
            details = {**opts.int8_options.details(target), "calibration_images": len(src.calibration), "float_nodes": kept}
            artifacts[INT8[target]] = Artifact(INT8[target], "onnx", "int8", "", target=target, details=details)
        onnx_for["int8"] = INT8["gpu"]
    candidates = [Candidate(f, a.precision, a.target, served(out_dir / f)) for f, a in artifacts.items()]
    failed: list[BuildFailure] = []
    if export_engines:
        for precision, source in onnx_for.items():
            engine = ENGINE.format(precision=precision)
            rep.log(f"TensorRT {precision}: building from {source} (batch {opts.profile.min}/{opts.profile.opt}/{opts.profile.max})", kind="step")
            try:
                device = tensorrt.build_engine(out_dir / source, out_dir / engine, precision, opts.profile, src.spec.crop)
                encode = served(out_dir / engine, "tensorrt")
            except (BadInput, RuntimeError) as exc:  # build_engine raises BadInput; the TensorRT bindings RuntimeError
                (out_dir / engine).unlink(missing_ok=True)
                failed.append(BuildFailure(engine, precision, str(exc).splitlines()[0]))
                rep.log(f"TensorRT {precision}: refused, {failed[-1].reason}", kind="note")
                continue
            artifacts[engine] = Artifact(engine, "tensorrt", precision, "", target="gpu", device=device,
                                         details={"source": source, "profile": asdict(opts.profile)})
            candidates.append(Candidate(engine, precision, "gpu", encode))
    return parity, candidates, artifacts, failed
