"""Encoder: which artifact it picks and says it picked, and what its embeddings look like."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from helpers.bundles import COLOURS, make_tiny_bundle, pattern_image
from proxyembed.runtime import BadInput, Bundle, Encoder, IntegrityError, Preprocessor
from proxyembed.runtime import backends as backends_mod
from proxyembed.runtime.files import sha256_file, write_sealed_json
from proxyembed.runtime.manifest import MANIFEST_NAME, Artifact


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("enc") / "bundle")


@pytest.fixture(scope="module")
def images() -> list:
    return [pattern_image(c, v) for c in COLOURS for v in range(3)]


def test_auto_on_cpu_prefers_validated_int8(bundle_dir: Path) -> None:
    enc = Encoder(bundle_dir)
    assert (enc.precision, enc.provider, enc.artifact.file) == ("int8", "CPUExecutionProvider", "model_int8.onnx")
    assert "int8" in enc.describe() and "validated" in enc.describe() and "CPUExecutionProvider" in enc.describe()


def test_auto_skips_int8_that_failed_validation(tmp_path: Path) -> None:
    enc = Encoder(make_tiny_bundle(tmp_path / "b", int8_passed=False))
    assert enc.precision == "fp32"


def test_explicit_unvalidated_precision_warns(tmp_path: Path) -> None:
    path = make_tiny_bundle(tmp_path / "b", int8_passed=False)
    with pytest.warns(UserWarning, match="model_int8.onnx"):
        enc = Encoder(path, precision="int8")
    assert enc.precision == "int8" and "NOT validated" in enc.describe()


def test_no_validated_artifact_is_a_clear_error(tmp_path: Path) -> None:
    path = make_tiny_bundle(tmp_path / "b", with_int8=False, fp32_passed=False)
    with pytest.raises(BadInput, match="no validated ONNX artifact"):
        Encoder(path)


def test_missing_precision_and_bad_options(bundle_dir: Path) -> None:
    with pytest.raises(BadInput, match="no fp16 ONNX artifact"):
        Encoder(bundle_dir, precision="fp16")
    with pytest.raises(BadInput, match="unknown precision"):
        Encoder(bundle_dir, precision="fp64")  # type: ignore[arg-type]
    with pytest.raises(BadInput, match="unknown device"):
        Encoder(bundle_dir, device="tpu")  # type: ignore[arg-type]
    with pytest.raises(BadInput, match="no artifact 'nope.onnx'"):
        Encoder(bundle_dir, artifact="nope.onnx")


def test_cuda_without_gpu_provider_is_refused(bundle_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends_mod, "ort_gpu_providers", lambda input_name, crop: [])
    with pytest.raises(BadInput, match="device='cuda'"):
        Encoder(bundle_dir, device="cuda")


def test_engine_for_another_gpu_is_skipped_by_auto_and_refused_explicitly(tmp_path: Path) -> None:
    path = make_tiny_bundle(tmp_path / "b", with_int8=False)
    (path / "model.plan").write_bytes(b"not really an engine")
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    engine = Artifact(
        file="model.plan", format="tensorrt", precision="fp16", sha256=sha256_file(path / "model.plan"), target="gpu",
        device={"gpu_name": "NVIDIA A100", "compute_capability": "8.0", "tensorrt_version": "10.0.1"},
        validation={"passed": True},
    )  # fmt: skip
    manifest["artifacts"].insert(0, asdict(engine))
    write_sealed_json(path / MANIFEST_NAME, manifest)
    enc = Encoder(path)
    assert enc.precision == "fp32"
    assert any("model.plan" in s for s in enc.skipped)
    with pytest.raises(BadInput, match="TensorRT engine model.plan cannot run here"):
        Encoder(path, artifact="model.plan")


def test_engine_mismatch_reasons() -> None:
    rec = {"gpu_name": "NVIDIA A100", "compute_capability": "8.0", "tensorrt_version": "10.3.0"}
    here = {"gpu_name": "NVIDIA A100", "compute_capability": "8.0"}
    assert backends_mod.engine_mismatch(rec, here, "10.3.0") is None
    assert "compute_capability" in backends_mod.engine_mismatch(rec, {**here, "compute_capability": "9.0"}, "10.3.0")
    assert "TensorRT" in backends_mod.engine_mismatch(rec, here, "10.4.0")
    assert "no CUDA GPU" in backends_mod.engine_mismatch(rec, None, "10.3.0")
    assert "not installed" in backends_mod.engine_mismatch(rec, here, None)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_output_is_normalised_and_batch_size_invariant(bundle_dir: Path, images: list, precision: str) -> None:
    enc = Encoder(bundle_dir, precision=precision)  # type: ignore[arg-type]
    full = enc.encode(images, batch_size=32)
    assert full.shape == (len(images), 16) and full.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(full, axis=1), 1.0, atol=1e-5)
    for bs in (1, 5):
        np.testing.assert_allclose(enc.encode(images, batch_size=bs), full, atol=1e-5)


def test_embeddings_separate_classes(bundle_dir: Path, images: list) -> None:
    emb = Encoder(bundle_dir, precision="fp32").encode(images)
    sims = emb @ emb.T
    cls = np.repeat(np.arange(len(COLOURS)), 3)
    same = cls[:, None] == cls[None, :]
    off_diag = ~np.eye(len(cls), dtype=bool)
    assert sims[same & off_diag].min() > sims[~same].max()


def test_int8_agrees_with_fp32(bundle_dir: Path, images: list) -> None:
    a = Encoder(bundle_dir, precision="fp32").encode(images)
    b = Encoder(bundle_dir, precision="int8").encode(images)
    assert (a * b).sum(axis=1).min() > 0.99


def test_single_image_and_encode_batch(bundle_dir: Path, images: list) -> None:
    enc = Encoder(Bundle.load(bundle_dir), precision="fp32", threads=1)
    one = enc.encode(images[0])
    assert one.shape == (1, 16)
    batch = Preprocessor(enc.bundle.manifest.preprocess)(images[:2])
    np.testing.assert_allclose(enc.encode_batch(batch)[0], one[0], atol=1e-6)
    assert enc.encode([]).shape == (0, 16)
    with pytest.raises(BadInput, match="expects shape"):
        enc.encode_batch(np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(BadInput, match="threads must be positive"):
        Encoder(bundle_dir, threads=0)


def test_corrupt_image_is_named(bundle_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    with pytest.raises(BadInput, match="bad.png"):
        Encoder(bundle_dir).encode([bad])


def test_wrong_output_dim_is_caught_at_warmup(tmp_path: Path) -> None:
    path = make_tiny_bundle(tmp_path / "b", with_int8=False)
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    manifest["embedding"]["dim"] = 32
    write_sealed_json(path / MANIFEST_NAME, manifest)  # a consistent manifest that lies about the model
    with pytest.raises(IntegrityError, match="manifest says dim 32"):
        Encoder(path)
