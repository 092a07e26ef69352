"""Preprocessing as a choice: the three ways to square an image, the augmentation presets, and the promise
that a run's choice reaches export and the runtime unchanged (a no-crop, grayscale-trained bundle embeds
like its PyTorch model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from proxyembed.data.torch_dataset import AUGMENT_PRESETS, normalize_batch, train_transform
from proxyembed.runtime.errors import BadInput
from proxyembed.runtime.preprocess import Preprocessor, PreprocessSpec
from proxyembed.training.config import TrainConfig, resolve_config


def _wide_image() -> Image.Image:
    """40 x 20: left quarter red, right quarter blue, middle green, so crops are visible in the output."""
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :10] = (255, 0, 0)
    arr[:, 10:30] = (0, 255, 0)
    arr[:, 30:] = (0, 0, 255)
    return Image.fromarray(arr)


def _pixels(spec: PreprocessSpec) -> np.ndarray:
    return np.asarray(Preprocessor(spec).square(_wide_image()))


def test_center_crop_cuts_the_sides_squash_and_letterbox_keep_them() -> None:
    crop = _pixels(PreprocessSpec(resize=20, crop=20, fit="center_crop"))
    squash = _pixels(PreprocessSpec(resize=20, crop=20, fit="squash"))
    letter = _pixels(PreprocessSpec(resize=20, crop=20, fit="letterbox"))
    assert crop.shape == squash.shape == letter.shape == (20, 20, 3)
    # centre crop of a 40x20 image at 20 keeps columns 10..29: all green, the red and blue ends are gone
    assert crop[:, :, 0].max() == 0 and crop[:, :, 2].max() == 0
    # squash keeps both ends, squeezed: red on the left, blue on the right, over the full height
    assert squash[:, 1, 0].min() > 200 and squash[:, -2, 2].min() > 200
    # letterbox keeps the aspect ratio: the image fills rows 5..14, above and below is the mean colour
    mean_rgb = [round(255 * m) for m in PreprocessSpec().mean]
    assert (letter[0] == mean_rgb).all() and (letter[-1] == mean_rgb).all()
    assert letter[10, 1, 0] > 200 and letter[10, -2, 2] > 200


def test_letterbox_padding_normalises_to_zero() -> None:
    spec = PreprocessSpec(resize=16, crop=16, fit="letterbox")
    x = Preprocessor(spec).image(np.full((4, 16, 3), 255, np.uint8))
    assert np.abs(x[:, 0, :]).max() < 0.01  # the top row is padding: mean colour -> ~0 after normalisation
    assert x[:, 8, :].min() > 1.0  # a white row in the middle


def test_unknown_fit_is_refused_and_old_specs_default_to_center_crop() -> None:
    with pytest.raises(BadInput, match="unknown fit"):
        PreprocessSpec(fit="stretch")  # type: ignore[arg-type]
    old = PreprocessSpec(resize=40, crop=32).to_dict()
    old.pop("fit")
    assert PreprocessSpec.from_dict(old).fit == "center_crop"
    assert PreprocessSpec.from_dict(PreprocessSpec(fit="squash").to_dict()).fit == "squash"


def test_a_wrongly_typed_spec_is_one_line_naming_where_it_came_from() -> None:
    """A checkpoint's or manifest's spec is JSON-like data: a bad value is refused by the schema, never a TypeError or ValueError."""
    good = PreprocessSpec(resize=40, crop=32).to_dict()
    for edit, message in (
        ({"resize": 40.5}, 'run/best.pt: preprocess: "resize": 40.5 is not an integer'),
        ({"mean": [0.5, "x", 0.5]}, 'run/best.pt: preprocess: "mean[1]": "x" is not a number'),
        ({"interpolation": "lanczos"}, 'run/best.pt: preprocess: "interpolation": "lanczos" is not one of "bilinear", "bicubic", "nearest"'),
    ):
        with pytest.raises(BadInput) as err:
            PreprocessSpec.from_dict({**good, **edit}, where="run/best.pt: preprocess")
        assert err.value.message == message
    with pytest.raises(BadInput) as err:
        PreprocessSpec.from_dict([good])
    assert err.value.message.startswith("preprocessing spec: ") and err.value.message.endswith("is not an object")


@pytest.mark.parametrize("fit", ["center_crop", "squash", "letterbox"])
def test_augment_none_trains_on_exactly_the_evaluation_pixels(fit: str) -> None:
    spec = PreprocessSpec(resize=24, crop=20, fit=fit)  # type: ignore[arg-type]
    img = _wide_image()
    expected = Preprocessor(spec).image(img)
    got = train_transform(spec, "none")(img)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.uint8  # batches stay uint8 until the device
    np.testing.assert_allclose(normalize_batch(got[None], spec)[0].numpy(), expected, atol=1e-6)


@pytest.mark.parametrize("scale", [(0.08, 1.0), (0.5, 1.0), (1.0, 1.0)])
def test_the_crop_and_flip_are_torchvisions_pixel_for_pixel(scale: tuple[float, float]) -> None:
    """One PIL resize over the crop box draws the random numbers torchvision's v2 transforms draw and gives their pixels."""
    from torchvision.transforms import v2

    spec = PreprocessSpec(resize=24, crop=24)
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8))
    ours = train_transform(spec, "standard", crop_scale=scale)
    theirs = v2.Compose([v2.RandomResizedCrop(24, scale=scale, interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
                         v2.RandomHorizontalFlip(), v2.PILToTensor()])
    torch.manual_seed(3)
    got = [ours(img) for _ in range(30)]
    torch.manual_seed(3)
    want = [theirs(img) for _ in range(30)]
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    as_float = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(spec.mean), list(spec.std))])
    assert torch.equal(normalize_batch(torch.stack(got), spec), torch.stack([as_float(a) for a in got]))  # the same floats too
    if scale[0] < 1:  # (1, 1) on a wide image falls back to the same centre crop every time
        assert len({a.sum().item() for a in got}) > 20  # 30 different crops, not one


def test_augment_presets() -> None:
    # (crop scale, flip, colour jitter) of each --augment choice
    assert AUGMENT_PRESETS == {
        "none": (None, False, False),
        "light": ((0.7, 1.0), True, False),
        "standard": ((0.08, 1.0), True, False),
        "strong": ((0.08, 1.0), True, True),
    }
    with pytest.raises(BadInput, match='"none", "light", "standard", "strong"'):  # the config accepts exactly these
        resolve_config({"augment": "heavy"})


@pytest.mark.parametrize("augment", sorted(AUGMENT_PRESETS))
def test_every_preset_gives_the_model_input_size(augment: str) -> None:
    spec = PreprocessSpec(resize=24, crop=20)
    torch.manual_seed(0)
    out = train_transform(spec, augment)(_wide_image())
    assert out.shape == (3, 20, 20)


def test_crop_scale_and_hflip_override_the_preset() -> None:
    spec = PreprocessSpec(resize=20, crop=20, fit="squash")
    flipped = train_transform(spec, "none", hflip=True)
    torch.manual_seed(0)
    outs = {bool((flipped(_wide_image())[0, :, 1] > 0).all()) for _ in range(20)}
    assert outs == {True, False}  # red on the left sometimes, not always: flips happen
    # a square image in four colours: a crop of the whole area is the image itself, i.e. the evaluation pixels
    arr = np.zeros((20, 20, 3), np.uint8)
    arr[:10, :10], arr[:10, 10:], arr[10:, :10], arr[10:, 10:] = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)
    square = Image.fromarray(arr)
    whole = Preprocessor(spec).image(square)
    full = train_transform(spec, "standard", crop_scale=(1.0, 1.0), hflip=False)
    preset = train_transform(spec, "standard", hflip=False)  # the preset's own scale, 0.08..1 of the area
    def model_input(x: torch.Tensor) -> np.ndarray:
        return normalize_batch(x[None], spec)[0].numpy()

    torch.manual_seed(0)
    for _ in range(20):
        np.testing.assert_allclose(model_input(full(square)), whole, atol=1e-6)
    torch.manual_seed(0)
    assert sum(not np.allclose(model_input(preset(square)), whole, atol=1e-6) for _ in range(20)) >= 15  # zooms in nearly every time


def test_config_validates_and_round_trips_the_choices() -> None:
    cfg = resolve_config({"augment": "light", "crop_scale": [0.5, 1], "hflip": False, "eval_fit": "letterbox"})
    assert cfg.crop_scale == (0.5, 1.0)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(BadInput, match="augment"):
        resolve_config({"augment": "heavy"})
    with pytest.raises(BadInput, match="eval.fit"):
        resolve_config({"eval_fit": "crop"})
    with pytest.raises(BadInput, match="--crop-scale"):
        resolve_config({"crop_scale": [0.8, 0.2]})


def _grey_folder(root, classes: int = 8, per_class: int = 6):
    """Non-square single-channel PNGs (scans, characters): class k draws a bar at its own height."""
    rng = np.random.default_rng(0)
    for k in range(classes):
        (root / f"class{k:02d}").mkdir(parents=True)
        for i in range(per_class):
            arr = rng.integers(0, 60, (30, 50), dtype=np.uint8)
            arr[3 * k : 3 * k + 3, 2:48] = 255
            Image.fromarray(arr, "L").save(root / f"class{k:02d}" / f"{i}.png")
    return root


def test_squash_grayscale_run_embeds_identically_in_pytorch_and_the_onnx_runtime(tmp_path) -> None:
    from typer.testing import CliRunner

    from proxyembed.cli import app
    from proxyembed.data import resolve_data
    from proxyembed.runtime import Encoder
    from proxyembed.training.checkpoint import load_checkpoint
    from proxyembed.training.model_eval import embed_samples
    from proxyembed.training.trainer import train

    data = _grey_folder(tmp_path / "grey")
    cfg = resolve_config(
        {"data": str(data), "epochs": 1, "batch_size": 8, "image_size": 32, "embedding_dim": 16, "augment": "none", "eval_fit": "squash"}
    )
    train(cfg, tmp_path / "run")
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt.preprocess.fit == "squash" and ckpt.preprocess.crop == 32
    result = CliRunner().invoke(app, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "bundle")])
    assert result.exit_code == 0, result.output
    encoder = Encoder(tmp_path / "bundle", precision="fp32")
    assert encoder.bundle.manifest.preprocess.fit == "squash"
    samples = resolve_data(str(data)).eval
    reference = embed_samples(ckpt.build_model(), samples, ckpt.preprocess)
    got = encoder.encode([s.source for s in samples])
    assert got.shape == reference.shape
    assert np.abs(got - reference).max() < 1e-4
