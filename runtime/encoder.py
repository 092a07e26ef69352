"""Images in, L2-normalised float32 embeddings out: the bundle's best validated model for this machine.

``Encoder(bundle)`` picks, in order: a native TensorRT engine built for this exact GPU and TensorRT
version; ONNX Runtime on its TensorRT / CUDA providers (fp16 preferred); the CPU (a validated int8 model
when the bundle has one, else fp32). ``auto`` only considers artifacts whose export validation passed
(docs/architecture.md: an artifact over the allowed drop is never silently used); naming a precision may select an
unvalidated one, with a warning. Preprocessing is the manifest's, through :class:`Preprocessor`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence, Sized
from pathlib import Path
from typing import Literal, get_args

import numpy as np
from PIL import Image

from . import backends
from .bundle import Bundle
from .errors import BadInput, IntegrityError
from .manifest import Artifact, Precision
from .preprocess import ImageLike, Preprocessor
from .progress import ProgressArg, progress_callback

PrecisionChoice = Literal["auto", Precision]
DeviceChoice = Literal["auto", "cpu", "cuda"]
"""Where models run; ``proxyembed train``, ``eval`` and ``check`` take the same choice."""
DEVICES: tuple[str, ...] = get_args(DeviceChoice)

_GPU_ORDER = ("fp16", "fp32", "int8")  # fp16 is what a GPU is fast at; int8 last: it needs a GPU-targeted Q/DQ file
_CPU_ORDER = ("int8", "fp32", "fp16")  # x86 ORT has no fp16 convolution kernels: fp16 runs through casts, slowest (export/fp16.py)
_TARGET_RANK = {"gpu": {"gpu": 0, "any": 1}, "cpu": {"cpu": 0, "any": 1}}


class Encoder:
    """Embeds images with one of a bundle's artifacts; says which one in :meth:`describe`.

    ``bundle`` is a folder path or a loaded :class:`Bundle`. ``precision`` and ``device`` narrow the choice
    described above (``check`` evaluates each precision this way). ``artifact`` names one file of the bundle
    and skips the choice: the Ray actors of ``embed --engine ray`` pass the file the driver's encoder chose,
    so every actor runs the same model; a ``precision`` that contradicts the file is refused. Export
    validation does not build an encoder: it opens each file with :func:`backends.open_backend`, the call
    the encoder makes. ``threads`` sets ONNX Runtime's intra-op thread count (default: all cores).
    ``warmup`` embeds one blank image at once, which also checks the model's output against the manifest's dim.
    """

    def __init__(
        self,
        bundle: str | Path | Bundle,
        precision: PrecisionChoice = "auto",
        device: DeviceChoice = "auto",
        *,
        threads: int | None = None,
        artifact: str | None = None,
        warmup: bool = True,
    ) -> None:
        if precision not in get_args(PrecisionChoice):
            raise BadInput(f"unknown precision '{precision}'", hint=f"use one of {', '.join(get_args(PrecisionChoice))}")
        if device not in DEVICES:
            raise BadInput(f"unknown device '{device}'", hint=f"use one of {', '.join(DEVICES)}")
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
        manifest = self.bundle.manifest
        self.dim = manifest.embedding_dim
        self.preprocessor = Preprocessor(manifest.preprocess)
        self.threads = threads
        self.skipped: list[str] = []  # why better-ranked backends were passed over, for diagnostics
        self.artifact, self._backend = self._select(precision, device, artifact)
        self.precision: str = self.artifact.precision
        self.provider: str = self._backend.provider
        if warmup:
            self._warmup()

    # -- selection ---------------------------------------------------------------------------------

    def _select(self, precision: str, device: str, file: str | None) -> tuple[Artifact, backends.Backend]:
        arts = self.bundle.manifest.artifacts
        if file is not None:
            chosen = [a for a in arts if a.file == file]
            if not chosen:
                raise BadInput(f"the bundle has no artifact '{file}'", hint=f"choose one of {[a.file for a in arts]}")
            art = chosen[0]
            if precision not in ("auto", art.precision):
                raise BadInput(f"artifact '{file}' is {art.precision}, not {precision}", hint="pass one or the other")
            self._warn_unvalidated(art)
            if art.format == "tensorrt":
                return art, self._tensorrt(art, strict=True)
            return art, self._onnx(
                art, gpu=device != "cpu" and bool(self._gpu_providers()), strict=device == "cuda"
            )
        if device != "cpu":
            picked = self._select_gpu(precision, strict=device == "cuda")
            if picked is not None:
                return picked
        return self._select_cpu(precision)

    def _candidates(self, precision: str, order: Sequence[str], fmt: str, targets: dict[str, int]) -> list[Artifact]:
        """Artifacts of ``fmt`` runnable on a target, best first; auto keeps only validated ones."""
        precisions = order if precision == "auto" else (precision,)
        found = [
            a
            for a in self.bundle.manifest.artifacts
            if a.format == fmt
            and a.precision in precisions
            and a.target in targets
            and (precision != "auto" or a.passed)
        ]
        return sorted(found, key=lambda a: (precisions.index(a.precision), not a.passed, targets[a.target]))

    def _select_gpu(self, precision: str, strict: bool) -> tuple[Artifact, backends.Backend] | None:
        gpu, trt_version = backends.gpu_info(), backends.tensorrt_version()
        engines = self._candidates(precision, _GPU_ORDER, "tensorrt", {"gpu": 0, "any": 1})
        for art in engines:
            why = backends.engine_mismatch(art.device, gpu, trt_version)
            if why is None:
                self._warn_unvalidated(art)
                return art, self._tensorrt(art, strict=strict)
            self.skipped.append(f"{art.file}: {why}")
        onnx = self._candidates(precision, _GPU_ORDER, "onnx", _TARGET_RANK["gpu"])
        if not self._gpu_providers():
            why = backends.gpu_install_problem() or "onnxruntime offers no CUDA/TensorRT provider"
            if strict:
                raise BadInput(f"device='cuda' but {why}", hint='pip install "proxyembed[gpu]"')
            self.skipped.append(f"ONNX Runtime GPU: {why}")
            return None
        if not onnx:
            if strict:
                raise BadInput(
                    f"no{'' if precision == 'auto' else ' ' + precision} artifact of this bundle runs on a GPU "
                    f"(skipped: {self.skipped})"
                )
            return None
        art = onnx[0]
        self._warn_unvalidated(art)
        backend = self._onnx(art, gpu=True, strict=strict)
        if backend.provider == "CPUExecutionProvider":  # onnxruntime-gpu installed but no usable GPU
            self.skipped.append(f"{art.file}: ONNX Runtime fell back to the CPU")
            return None
        return art, backend

    def _select_cpu(self, precision: str) -> tuple[Artifact, backends.Backend]:
        onnx = self._candidates(precision, _CPU_ORDER, "onnx", _TARGET_RANK["cpu"])
        if not onnx:
            if precision == "auto":
                raise BadInput(
                    f"bundle {self.bundle.path} has no validated ONNX artifact for the CPU",
                    hint="pass precision='fp32' (--precision fp32) to use an unvalidated one, or re-export it",
                )
            raise BadInput(
                f"bundle {self.bundle.path} has no {precision} ONNX artifact for the CPU",
                hint=f"available: {[f'{a.format}/{a.precision}/{a.target}' for a in self.bundle.manifest.artifacts]}",
            )
        art = onnx[0]
        self._warn_unvalidated(art)
        return art, self._onnx(art, gpu=False, strict=False)

    def _onnx(self, art: Artifact, *, gpu: bool, strict: bool) -> backends.Backend:
        backend = self._open(art, threads=self.threads, providers=self._gpu_providers() if gpu else None)
        if strict and backend.provider == "CPUExecutionProvider":
            raise BadInput(
                "device='cuda' but ONNX Runtime could not use a GPU here",
                hint="check the CUDA driver, or use device='auto'",
            )
        return backend

    def _open(self, art: Artifact, *, threads: int | None = None, providers: list[object] | None = None) -> backends.Backend:
        manifest = self.bundle.manifest
        return backends.open_backend(self.bundle.artifact_path(art), art.format, input_name=manifest.input_name,
                                     output_name=manifest.output_name, threads=threads, providers=providers)

    def _gpu_providers(self) -> list[object]:
        manifest = self.bundle.manifest
        return backends.ort_gpu_providers(manifest.input_name, manifest.preprocess.crop)

    def _tensorrt(self, art: Artifact, *, strict: bool) -> backends.Backend:
        why = backends.engine_mismatch(art.device, backends.gpu_info(), backends.tensorrt_version())
        if why is not None:
            raise BadInput(
                f"TensorRT engine {art.file} cannot run here: {why}",
                hint="rebuild it on this machine with `proxyembed export`, or use the bundle's ONNX artifact",
            )
        return self._open(art)

    @staticmethod
    def _warn_unvalidated(art: Artifact) -> None:
        if not art.passed:
            warnings.warn(
                f"using {art.file} ({art.precision}), whose export validation did not pass or was not run", stacklevel=4
            )

    def _warmup(self) -> None:
        crop = self.bundle.manifest.preprocess.crop
        out = self.encode_batch(np.zeros((1, 3, crop, crop), np.float32))
        if out.shape != (1, self.dim):
            raise IntegrityError(
                f"{self.artifact.file} outputs shape {out.shape[1:]}, the manifest says dim {self.dim}"
            )

    # -- inference ---------------------------------------------------------------------------------

    def describe(self) -> str:
        """One line: backend, precision, model file, validation state, threads, dim."""
        state = "validated" if self.artifact.passed else "NOT validated"
        threads = f", {self.threads} threads" if self.threads else ""
        return f"{self.provider}, {self.precision} ({self.artifact.file}, {state}){threads}, dim {self.dim}"

    def encode_batch(self, batch: np.ndarray) -> np.ndarray:
        """Embed an already-preprocessed float32 NCHW batch; returns (N, D) float32, L2-normalised."""
        crop = self.bundle.manifest.preprocess.crop
        if batch.ndim != 4 or batch.shape[1:] != (3, crop, crop):
            raise BadInput(f"encode_batch expects shape (N, 3, {crop}, {crop}), got {batch.shape}")
        if len(batch) == 0:
            return np.zeros((0, self.dim), np.float32)
        return backends.embed_batch(self._backend, batch)

    def encode(
        self,
        images: Iterable[ImageLike] | ImageLike,
        batch_size: int = 32,
        *,
        progress: ProgressArg = False,
        workers: int | None = None,
    ) -> np.ndarray:
        """Embed images (paths, bytes, PIL images or uint8 HxWxC arrays, mixed freely): float32 (N, D), L2-normalised.

        A single image gives a (1, D) array. Images are decoded on ``workers`` threads (default up to 4)
        while the model runs; ``progress=True`` shows a bar on stderr, a callable gets ``n`` per batch.
        An unreadable image raises :class:`BadInput` naming it.
        """
        if is_single_image(images):
            images = [images]
        total = len(images) if isinstance(images, Sized) else None
        outs = []
        with progress_callback(progress, total, "encoding") as advance:
            for batch in self.preprocessor.batches(images, batch_size, workers=workers):  # type: ignore[arg-type]
                outs.append(self.encode_batch(batch))
                if advance is not None:
                    advance(len(batch))
        return np.concatenate(outs) if outs else np.zeros((0, self.dim), np.float32)

    def __repr__(self) -> str:
        return f"Encoder({self.describe()})"


def is_single_image(x: object) -> bool:
    """Whether ``x`` is one image (as opposed to a sequence of them)."""
    return isinstance(x, (str, os.PathLike, bytes, Image.Image)) or (isinstance(x, np.ndarray) and x.ndim in (2, 3))
