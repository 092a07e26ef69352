"""Reduced JPEG decoding (``PreprocessSpec.decode="reduced"``): used where it pays, exact elsewhere, and recorded.

Test images are drawn here: smooth gradients with shapes, saved as JPEG at camera-like sizes.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from proxyembed.runtime import BadInput
from proxyembed.runtime.manifest import Artifact, Manifest
from proxyembed.runtime.preprocess import DRAFT_MARGIN, Preprocessor, PreprocessSpec


def photo(w: int, h: int, fmt: str = "JPEG", exif_orientation: int | None = None) -> bytes:
    x = np.linspace(0, 1, w)[None, :, None]
    y = np.linspace(0, 1, h)[:, None, None]
    arr = (255 * np.concatenate([x * np.ones_like(y), y * np.ones_like(x), (x + y) / 2], axis=2)).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    draw = ImageDraw.Draw(img)
    draw.ellipse((w // 5, h // 5, w // 2, h // 2), fill=(200, 30, 40))
    draw.rectangle((w // 2, h // 2, 4 * w // 5, 9 * h // 10), fill=(20, 40, 180))
    buf = io.BytesIO()
    kwargs = {"quality": 92} if fmt == "JPEG" else {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif.tobytes()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def spec(decode: str, fit: str = "squash") -> PreprocessSpec:
    return PreprocessSpec(resize=36, crop=32, fit=fit, decode=decode)  # type: ignore[arg-type]


@pytest.mark.parametrize("fit", ["squash", "center_crop", "letterbox"])
def test_a_large_jpeg_is_decoded_small_and_preprocesses_alike(fit: str) -> None:
    data = photo(2000, 1500)
    full, reduced = Preprocessor(spec("full", fit)), Preprocessor(spec("reduced", fit))
    assert full.decode(data).size == (2000, 1500)
    w, h = reduced.decode(data).size
    assert (w, h) == (250, 188)  # 1/8: the largest scale that keeps DRAFT_MARGIN x what the fit needs
    need = {"squash": min(w, h), "center_crop": min(w, h) / 36 * 32, "letterbox": max(w, h)}[fit]
    assert need >= DRAFT_MARGIN * 32
    diff = np.abs(full.image(data) - reduced.image(data))
    assert diff.mean() < 0.02 and diff.max() < 0.3  # normalised units: a std of the channel is 1.0


def test_the_reduction_stops_at_the_margin() -> None:
    data = photo(600, 400)
    # squash to 64 px needs 128 px a side after the margin: 1/2 gives 300x200, 1/4 would give 150x100 (< 2 x 128)
    assert Preprocessor(PreprocessSpec(resize=64, crop=64, fit="squash", decode="reduced")).decode(data).size == (300, 200)
    # a 1.9x image is read in full
    assert Preprocessor(PreprocessSpec(resize=64, crop=64, fit="squash", decode="reduced")).decode(photo(240, 240)).size == (240, 240)


def test_other_formats_and_images_in_memory_are_read_in_full() -> None:
    pre = Preprocessor(spec("reduced"))
    assert pre.decode(photo(1200, 900, fmt="PNG")).size == (1200, 900)
    assert pre.decode(Image.open(io.BytesIO(photo(1200, 900)))).size == (1200, 900)
    arr = np.zeros((900, 1200, 3), np.uint8)
    assert pre.decode(arr).size == (1200, 900)


def test_exif_rotation_still_applies(tmp_path: object) -> None:
    data = photo(1600, 1200, exif_orientation=6)  # stored landscape, shown portrait
    assert Preprocessor(spec("full")).decode(data).size == (1200, 1600)
    assert Preprocessor(spec("reduced")).decode(data).size == (150, 200)


def test_the_choice_travels_and_old_specs_read_as_full() -> None:
    reduced = spec("reduced")
    assert reduced.to_dict()["decode"] == "reduced"
    assert PreprocessSpec.from_dict(reduced.to_dict()) == reduced
    old = {k: v for k, v in reduced.to_dict().items() if k != "decode"}  # a checkpoint or manifest from before
    assert PreprocessSpec.from_dict(old).decode == "full"
    with pytest.raises(BadInput, match="unknown decode"):
        PreprocessSpec(decode="fast")  # type: ignore[arg-type]
    manifest = Manifest(embedding_dim=8, preprocess=reduced, artifacts=[Artifact("model.onnx", "onnx", "fp32", "0" * 64)])
    payload = manifest.to_dict()
    payload["input"].pop("decode")
    assert Manifest.from_dict(payload).preprocess.decode == "full"


def test_reduces_says_which_files_decode_smaller(tmp_path: object) -> None:
    pre = Preprocessor(spec("reduced"))
    assert pre.reduces(photo(2000, 1500)) and not pre.reduces(photo(100, 80))
    assert not pre.reduces(photo(2000, 1500, fmt="PNG")) and not pre.reduces(b"not an image")
    assert not Preprocessor(spec("full")).reduces(photo(2000, 1500))


def test_a_run_records_its_decoding_in_the_spec_it_evaluates_and_exports_with() -> None:
    from proxyembed.training.config import TrainConfig
    from proxyembed.training.eval_preprocess import eval_spec

    assert TrainConfig().decode == "reduced" and PreprocessSpec().decode == "reduced"  # one default (docs/defaults.md)
    assert eval_spec(TrainConfig(decode="reduced", image_size=32), None).decode == "reduced"
    # the same for the fit: a run on a folder (no spec of its own) squares images as PreprocessSpec() does
    assert eval_spec(TrainConfig(image_size=32), None).fit == PreprocessSpec().fit == "squash"
    assert TrainConfig.from_dict({"decode": "reduced"}).decode == "reduced"
    with pytest.raises(BadInput, match="decode"):
        TrainConfig.from_dict({"decode": "fast"})
