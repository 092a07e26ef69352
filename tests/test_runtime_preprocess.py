"""The torch-free evaluation transform: input kinds, colour modes, EXIF orientation, corrupt files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.bundles import pattern_image
from proxyembed.runtime import BadInput, Preprocessor, PreprocessSpec, load_image

SPEC = PreprocessSpec(resize=36, crop=32)


def _asymmetric(w: int = 60, h: int = 40) -> Image.Image:
    """An image whose orientation is visible: a red left half, a blue right half, a green top strip."""
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2] = (255, 0, 0)
    arr[:, w // 2 :] = (0, 0, 255)
    arr[:4] = (0, 255, 0)
    return Image.fromarray(arr)


def test_all_input_kinds_give_the_same_batch(tmp_path: Path) -> None:
    img = pattern_image("red", 1)
    path = tmp_path / "x.png"
    img.save(path)
    pre = Preprocessor(SPEC)
    ref = pre(img)
    for src in (path, str(path), path.read_bytes(), np.asarray(img)):
        np.testing.assert_array_equal(pre(src), ref)
    assert ref.shape == (1, 3, 32, 32) and ref.dtype == np.float32


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = _asymmetric()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif, quality=95)
    loaded = load_image(buf.getvalue())
    assert loaded.size == (40, 60)  # width and height swapped
    expected = img.transpose(Image.Transpose.ROTATE_270)
    diff = np.abs(np.asarray(loaded, np.int16) - np.asarray(expected, np.int16)).mean()
    assert diff < 8  # JPEG noise only


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA", "I;16"])
def test_colour_modes_become_rgb(mode: str) -> None:
    base = _asymmetric()
    img = base.convert(mode) if mode != "I;16" else base.convert("L").convert("I;16")
    out = load_image(img)
    assert out.mode == "RGB" and out.size == base.size


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_grey_is_scaled_to_8_bits(fmt: str) -> None:
    """The full 16-bit range maps onto 0..255 (v / 257, rounded), read from memory and from a file alike."""
    values = [0, 128, 129, 1000, 32767, 32768, 65278, 65535]
    img = Image.new("I;16", (len(values), 1))
    for x, v in enumerate(values):
        img.putpixel((x, 0), v)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    expected = [0, 0, 1, 4, 127, 128, 254, 255]  # 128 / 257 = 0.498, 129 / 257 = 0.502, 1000 / 257 = 3.89, 65278 / 257 = 254.0
    for src in (img, buf.getvalue()):
        out = np.asarray(load_image(src))
        assert out.shape == (1, len(values), 3)
        assert out[0].tolist() == [[e, e, e] for e in expected]


def test_rgba_transparency_is_composited_on_white() -> None:
    arr = np.zeros((8, 8, 4), np.uint8)  # fully transparent black
    out = np.asarray(load_image(arr))
    assert (out == 255).all()


def test_grey_array_and_rgb_of_same_values_match() -> None:
    grey = np.full((40, 40), 100, np.uint8)
    pre = Preprocessor(SPEC)
    np.testing.assert_array_equal(pre(grey), pre(np.stack([grey] * 3, axis=2)))


def test_normalisation_matches_formula() -> None:
    arr = np.full((32, 32, 3), (255, 128, 0), np.uint8)
    out = Preprocessor(PreprocessSpec(resize=32, crop=32))(arr)[0]
    expected = (np.array([255, 128, 0]) / 255.0 - np.array(SPEC.mean)) / np.array(SPEC.std)
    np.testing.assert_allclose(out[:, 5, 5], expected, rtol=1e-5)


def test_resize_then_centre_crop_keeps_the_centre() -> None:
    arr = np.zeros((100, 200, 3), np.uint8)
    arr[:, 75:125] = 255  # a white band in the middle third
    out = Preprocessor(PreprocessSpec(resize=32, crop=32, mean=(0, 0, 0), std=(1, 1, 1)))(arr)[0]
    assert out[:, :, 16].min() > 0.9 and out[:, :, 0].max() < 0.1


def test_corrupt_file_is_bad_input_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(BadInput, match="broken.jpg"):
        Preprocessor(SPEC)(bad)
    with pytest.raises(BadInput, match="image not found"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(BadInput, match="uint8"):
        load_image(np.zeros((4, 4, 3), np.float32))


def test_batches_split_and_reject_bad_size() -> None:
    imgs = [pattern_image("blue", i) for i in range(5)]
    pre = Preprocessor(SPEC)
    assert [b.shape[0] for b in pre.batches(imgs, 2)] == [2, 2, 1]
    with pytest.raises(BadInput, match="batch_size"):
        list(pre.batches(imgs, 0))
