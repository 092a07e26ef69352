"""Bundle loading: every way a bundle folder can be wrong gives one clear error naming the problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.bundles import make_tiny_bundle
from proxyembed.runtime import BadInput, Bundle, IntegrityError
from proxyembed.runtime.files import sealed_json
from proxyembed.runtime.manifest import MANIFEST_NAME


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    return make_tiny_bundle(tmp_path / "bundle", with_int8=False)


def _edit_manifest(bundle_dir: Path, edit) -> None:
    path = bundle_dir / MANIFEST_NAME
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(sealed_json(data))


def test_valid_bundle_loads_with_signature(bundle_dir: Path) -> None:
    bundle = Bundle.load(bundle_dir)
    assert bundle.dim == 16 and bundle.path == bundle_dir.resolve()
    assert bundle.signature == {"manifest_sha256": bundle.manifest_sha256, "dim": 16}
    assert len(bundle.manifest_sha256) == 64
    assert bundle.artifact_path(bundle.manifest.artifacts[0]).is_file()


def test_different_models_have_different_signatures(tmp_path: Path) -> None:
    a = Bundle.load(make_tiny_bundle(tmp_path / "a", with_int8=False, seed=0))
    b = Bundle.load(make_tiny_bundle(tmp_path / "b", with_int8=False, seed=1))
    assert a.signature != b.signature


def test_missing_folder_and_manifest(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="bundle folder not found"):
        Bundle.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInput, match="manifest.json is missing"):
        Bundle.load(tmp_path / "empty")


def test_manifest_not_json(bundle_dir: Path) -> None:
    (bundle_dir / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(BadInput, match="not valid JSON"):
        Bundle.load(bundle_dir)


def test_unsupported_format_version(bundle_dir: Path) -> None:
    _edit_manifest(bundle_dir, lambda d: d.update(format_version=99))
    with pytest.raises(BadInput, match="format_version 99 is not supported"):
        Bundle.load(bundle_dir)


def test_missing_field_is_named(bundle_dir: Path) -> None:
    _edit_manifest(bundle_dir, lambda d: d["embedding"].pop("dim"))
    with pytest.raises(BadInput, match="missing field 'embedding.dim'"):
        Bundle.load(bundle_dir)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["embedding"].update(dim=0), "embedding.dim must be positive, got 0"),
        (lambda d: d["embedding"].update(metric="l2"), '"embedding.metric": "l2" is not one of "cosine"'),
        (lambda d: d["artifacts"][0].update(format="tflite"), '"artifacts[0].format": "tflite" is not one of "onnx", "tensorrt"'),
        (lambda d: d["artifacts"][0].update(target="tpu"), '"artifacts[0].target": "tpu" is not one of "any", "cpu", "gpu"'),
        (lambda d: d["artifacts"][0].update(sha256=None), '"artifacts[0].sha256": null is not a string'),
        (lambda d: d.update(artifacts=[]), "artifacts is empty: the bundle lists no artifacts"),
        (lambda d: d["input"].update(crop="224"), '"input.crop": "224" is not an integer'),
        (lambda d: d["input"].update(mean=["x", 0.5, 0.5]), '"input.mean[0]": "x" is not a number'),
        (lambda d: d["input"].update(std=[0.2, 0.2]), "input.std needs three values (one per channel), got 2"),
        (lambda d: d["input"].update(fit="stretch"), '"input.fit": "stretch" is not one of "center_crop", "squash", "letterbox"'),
        (lambda d: d["input"].update(cropp=224), "input: unknown keys ['cropp']"),
    ],
)
def test_wrong_manifest_fields_name_the_field_and_the_value(bundle_dir: Path, edit, message: str) -> None:
    _edit_manifest(bundle_dir, edit)
    with pytest.raises(BadInput) as err:
        Bundle.load(bundle_dir)
    assert err.value.message == f"{bundle_dir / MANIFEST_NAME}: {message}"


@pytest.mark.parametrize("bad", ["../model.onnx", "/etc/passwd", "sub\\..\\x.onnx"])
def test_artifact_path_escaping_the_folder(bundle_dir: Path, bad: str) -> None:
    _edit_manifest(bundle_dir, lambda d: d["artifacts"][0].update(file=bad))
    with pytest.raises(BadInput, match="outside the bundle folder"):
        Bundle.load(bundle_dir)


def test_symlink_leaving_the_folder_is_refused(bundle_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.onnx"
    (bundle_dir / "model.onnx").rename(outside)
    (bundle_dir / "model.onnx").symlink_to(outside)
    with pytest.raises(BadInput, match="resolves outside"):
        Bundle.load(bundle_dir)


def test_missing_model_file(bundle_dir: Path) -> None:
    (bundle_dir / "model.onnx").unlink()
    with pytest.raises(IntegrityError, match="bundle file missing: .*model.onnx"):
        Bundle.load(bundle_dir)


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_altered_model_file(bundle_dir: Path, damage: str) -> None:
    model = bundle_dir / "model.onnx"
    data = bytearray(model.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        data = data[: len(data) // 2]
    model.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="altered or truncated: .*model.onnx"):
        Bundle.load(bundle_dir)
    assert Bundle.load(bundle_dir, verify=False).dim == 16  # existence-only check skips the hash


def test_data_files_are_checked_too(bundle_dir: Path) -> None:
    (bundle_dir / "model.onnx.data").write_bytes(b"weights")
    _edit_manifest(bundle_dir, lambda d: d["artifacts"][0].update(data_files={"model.onnx.data": "0" * 64}))
    with pytest.raises(IntegrityError, match="model.onnx.data"):
        Bundle.load(bundle_dir)
