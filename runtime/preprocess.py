"""The evaluation transform, defined once and torch-free.

Training-time evaluation, export validation, int8 calibration and the runtime all call
:class:`Preprocessor`, so an exported model sees exactly the pixels the PyTorch model was judged on
(docs/architecture.md: one preprocessing, everywhere). The spec travels in checkpoints and bundle manifests.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import BadInput
from .schema import Field, validate

ImageLike = str | os.PathLike | bytes | Image.Image | np.ndarray
T = TypeVar("T")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


Fit = Literal["center_crop", "squash", "letterbox"]
FITS: tuple[str, ...] = get_args(Fit)
DEFAULT_FIT: Fit = "squash"
"""The fit of a spec that names none, and so of a new run on data without its own (``TrainConfig.eval_fit``).

Chosen on held-out training classes of real photos (docs/defaults.md): it never cuts the object off and,
unlike letterbox, spends every pixel on the image (+1.6 R@1 over letterbox, 4 seeds)."""
Decode = Literal["full", "reduced"]
DECODES: tuple[str, ...] = get_args(Decode)
DEFAULT_DECODE: Decode = "reduced"
"""What new specs and runs record (``TrainConfig.decode``); a spec stored without the field reads as ``full``, what it
was made with. Reduced is safe as a default: it keeps :data:`DRAFT_MARGIN` times the pixels the fit needs (0.13
Recall@1 points on 2 MP photos, benchmarks/results/decode_speed.md), export judges it against full decoding and
falls back to full where it costs more than its limit, and photos too small to scale are read in full anyway."""
# The formats read, with the file suffix each is kept under: those of runtime.images.IMAGE_EXTENSIONS (Pillow's
# JPEG reader also opens the MPO files many cameras write, and reports them as MPO). Pillow would open dozens
# more, some through outside programs (EPS runs Ghostscript).
FORMAT_SUFFIX = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "TIFF": ".tif", "BMP": ".bmp"}
READ_FORMATS = tuple(f for f in FORMAT_SUFFIX if f != "MPO")
# An image whose sides are further apart than this is refused: it holds nothing to search by, and a
# centre-crop fit would scale its short side up, so a 1x200000 PNG of 469 bytes became 14400x14400000.
MAX_ASPECT_RATIO = 64
# A reduced decode keeps at least this many times the pixels the fit needs along each side, so the final
# resize still averages several decoded pixels into each model pixel (benchmarks/results/decode_speed.md).
DRAFT_MARGIN = 2


@dataclass(frozen=True)
class PreprocessSpec:
    """How an image becomes a ``crop`` x ``crop`` model input, then scaled to [0, 1] and normalised.

    ``fit`` says how the image is made square:

    - ``center_crop``: resize the shorter side to ``resize``, cut the centre ``crop`` x ``crop`` (the
      ImageNet habit; it cuts the edges off objects that fill the frame);
    - ``squash``: resize the whole image to ``crop`` x ``crop``, changing its aspect ratio, cutting nothing;
    - ``letterbox``: resize the longer side to ``crop`` and pad to the square with the mean colour (which
      normalises to zero), keeping both the whole image and its aspect ratio.

    ``resize`` only matters for ``center_crop``. Output layout is NCHW float32 in RGB order. The default
    fit is :data:`DEFAULT_FIT`, the training default too; a spec stored without a fit reads as ``center_crop``.

    ``decode`` says how a JPEG file is read: ``full`` decodes every pixel; ``reduced`` lets the JPEG
    decoder scale by 1/2, 1/4 or 1/8 while it decodes (its DCT scaling, Pillow's ``draft``) as long as
    the result keeps :data:`DRAFT_MARGIN` times what the fit needs, which makes camera-size photos several
    times faster to read. Other formats, and images already in memory, are always read in full.
    Manifests and checkpoints written before the field existed read as ``full``.
    """

    resize: int = 256
    crop: int = 224
    fit: Fit = DEFAULT_FIT
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: Literal["bilinear", "bicubic", "nearest"] = "bilinear"
    color: Literal["RGB"] = "RGB"
    layout: Literal["NCHW"] = "NCHW"
    dtype: Literal["float32"] = field(default="float32")
    decode: Decode = DEFAULT_DECODE

    def __post_init__(self) -> None:
        if self.fit not in FITS:
            raise BadInput(f"preprocessing: unknown fit '{self.fit}'", hint=f"use one of {list(FITS)}")
        if self.crop <= 0 or self.resize < self.crop:
            raise BadInput(
                f"preprocessing: resize={self.resize} and crop={self.crop} are inconsistent",
                hint="use crop > 0 and resize >= crop",
            )
        if self.decode not in DECODES:
            raise BadInput(f"preprocessing: unknown decode '{self.decode}'", hint=f"use one of {list(DECODES)}")
        if self.interpolation not in _RESAMPLE:
            raise BadInput(
                f"preprocessing: unknown interpolation '{self.interpolation}'",
                hint=f"use one of {sorted(_RESAMPLE)}",
            )
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise BadInput("preprocessing: mean and std need three values each, std > 0")

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form, as stored in checkpoints and manifests."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str = "preprocessing spec") -> PreprocessSpec:
        """Inverse of :meth:`to_dict`, checked against :data:`SPEC_SCHEMA`; ``where`` names the file in errors.

        Unknown keys are an error, so a typo never passes silently; a wrongly typed value is refused in
        one line, never a TypeError from the constructor.
        """
        validate(d, SPEC_SCHEMA, where=where)
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise BadInput(f"{where}: unknown keys {sorted(unknown)}")
        # Specs written before a field existed mean what was done then: full decoding, and (before the fit
        # was a choice) the centre crop, whatever today's defaults are.
        d = {"decode": "full", "fit": "center_crop", **d}
        for key in ("mean", "std"):
            if key in d:
                d[key] = tuple(float(v) for v in d[key])
        return cls(**d)


def _three(values: list[Any]) -> str | None:
    return None if len(values) == 3 else f"needs three values (one per channel), got {len(values)}"


def _spec_schema() -> dict[str, Field]:
    """:data:`SPEC_SCHEMA`, read from the dataclass's own annotations so the two cannot drift apart."""
    schema: dict[str, Field] = {}
    for name, annotation in get_type_hints(PreprocessSpec).items():
        if get_origin(annotation) is tuple:
            schema[name] = Field(list, required=False, items=float, rule=_three)
        else:
            schema[name] = Field(annotation, required=False)
    return schema


SPEC_SCHEMA = _spec_schema()
"""What :meth:`PreprocessSpec.from_dict` accepts: every field may be absent (older specs lack some); JSON has
no tuples, so ``mean`` and ``std`` are lists of three numbers."""


def describe(src: ImageLike) -> str:
    """A short name for an image source, for error messages."""
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    if isinstance(src, bytes):
        return f"<{len(src)} bytes>"
    if isinstance(src, np.ndarray):
        return f"<array {src.shape} {src.dtype}>"
    return f"<{type(src).__name__}>"


def check_image_size(size: tuple[int, int], src: ImageLike) -> None:
    """Refuse (:class:`BadInput`) an image size that is not worth decoding: over Pillow's pixel limit, or absurdly thin.

    Pillow only warns between one and two times ``Image.MAX_IMAGE_PIXELS``; here that is refused too,
    and so is an aspect ratio beyond :data:`MAX_ASPECT_RATIO`. Called on the header, before any pixel
    is decoded, so a hostile file costs microseconds.
    """
    w, h = size
    if w < 1 or h < 1:
        raise BadInput(f"image {describe(src)} is {w}x{h} pixels: it has no pixels", hint="is it a valid image file?")
    if w * h > Image.MAX_IMAGE_PIXELS:
        raise BadInput(
            f"image {describe(src)} is too large to decode safely: {w}x{h} is over {Image.MAX_IMAGE_PIXELS} pixels",
            hint="downscale it first",
        )
    if max(w, h) > MAX_ASPECT_RATIO * min(w, h):
        raise BadInput(
            f"image {describe(src)} is {w}x{h} pixels: sides more than {MAX_ASPECT_RATIO}:1 apart are refused",
            hint="crop it to the part worth searching by",
        )


def read_header(src: str | os.PathLike | bytes) -> tuple[str, tuple[int, int]]:
    """An image file's format (Pillow's name, e.g. ``"PNG"``) and size from its header, nothing decoded.

    The size is checked by :func:`check_image_size`, so a caller can budget the decode before it starts.
    """
    with _reading(src), Image.open(io.BytesIO(src) if isinstance(src, bytes) else Path(src), formats=READ_FORMATS) as img:
        fmt, size = str(img.format), img.size
    check_image_size(size, src)
    return fmt, size


def load_image(src: ImageLike, draft: Callable[[tuple[int, int]], tuple[int, int] | None] | None = None) -> Image.Image:
    """Open any supported image source as an RGB PIL image, EXIF orientation applied.

    Grey, RGBA (composited on white) and palette images become RGB. Raises :class:`BadInput`
    naming the source when it cannot be read. ``draft(size)`` may return the smallest size a JPEG
    file needs to be decoded at; the decoder then scales down by 1/2, 1/4 or 1/8 while keeping at least
    that size (see :class:`PreprocessSpec`'s ``decode``).
    """
    if isinstance(src, np.ndarray):
        check_image_size((src.shape[1], src.shape[0]) if src.ndim >= 2 else (0, 0), src)
        return _array_to_pil(src)
    with _reading(src):
        if isinstance(src, Image.Image):
            img = src
        elif isinstance(src, bytes):
            img = Image.open(io.BytesIO(src), formats=READ_FORMATS)
        elif isinstance(src, (str, os.PathLike)):
            img = Image.open(Path(src), formats=READ_FORMATS)
        else:
            raise BadInput(f"unsupported image type {type(src).__name__}", hint="pass a path, bytes, a PIL image or a uint8 HxWxC array")
        check_image_size(img.size, src)
        if draft is not None and img.format == "JPEG" and not isinstance(src, Image.Image):
            wanted = draft(img.size)
            if wanted is not None:
                img.draft(img.mode, wanted)
        img.load()
        if isinstance(src, Image.Image):
            img = ImageOps.exif_transpose(img)  # a copy: the caller's image is left as it was
        else:
            ImageOps.exif_transpose(img, in_place=True)  # no copy of an image just decoded: half the peak memory
    return _to_rgb(img)


@contextmanager
def _reading(src: ImageLike) -> Iterator[None]:
    """Turn what Pillow raises for a missing, oversized or broken image into one :class:`BadInput` naming ``src``."""
    try:
        yield
    except FileNotFoundError as exc:
        raise BadInput(f"image not found: {describe(src)}") from exc
    except Image.DecompressionBombError as exc:
        raise BadInput(f"image {describe(src)} is too large to decode safely: {exc}", hint="downscale it first") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise BadInput(f"cannot read image {describe(src)}: {exc.__class__.__name__}", hint="is it a valid image file?") from exc


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16"):
        # 16-bit greyscale (PNG, TIFF): Pillow's own conversion clips every value above 255 to white, so the
        # full 0..65535 range is scaled to 0..255 here (v / 257, rounded).
        wide = np.asarray(img).astype(np.uint32)
        return Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8), "L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img, mask=img.getchannel("A"))
        return background
    return img.convert("RGB")


def _array_to_pil(arr: np.ndarray) -> Image.Image:
    if arr.dtype != np.uint8:
        raise BadInput(f"image arrays must be uint8, got {arr.dtype}", hint="convert with arr.astype(np.uint8) after scaling to 0..255")
    if arr.ndim == 2:
        return Image.fromarray(arr, "L").convert("RGB")
    if arr.ndim == 3 and arr.shape[2] in (1, 3, 4):
        if arr.shape[2] == 1:
            return Image.fromarray(arr[:, :, 0], "L").convert("RGB")
        return _to_rgb(Image.fromarray(arr, "RGB" if arr.shape[2] == 3 else "RGBA"))
    raise BadInput(f"image arrays must be HxW or HxWxC with C in 1/3/4, got shape {arr.shape}")


class Preprocessor:
    """Turns images into the model's input batch according to a :class:`PreprocessSpec`."""

    def __init__(self, spec: PreprocessSpec) -> None:
        self.spec = spec
        self._mean = np.asarray(spec.mean, dtype=np.float32).reshape(3, 1, 1)
        self._inv_std = (1.0 / np.asarray(spec.std, dtype=np.float32)).reshape(3, 1, 1)

    def square(self, img: Image.Image) -> Image.Image:
        """The ``crop`` x ``crop`` RGB image the model sees, before normalisation (see :class:`PreprocessSpec`)."""
        s = self.spec
        w, h = img.size
        resample = _RESAMPLE[s.interpolation]
        if s.fit == "squash":
            return img if (w, h) == (s.crop, s.crop) else img.resize((s.crop, s.crop), resample)
        if s.fit == "letterbox":
            scale = s.crop / max(w, h)
            new = (max(1, min(s.crop, round(w * scale))), max(1, min(s.crop, round(h * scale))))
            if new != (w, h):
                img = img.resize(new, resample)
            canvas = Image.new("RGB", (s.crop, s.crop), tuple(round(255 * m) for m in s.mean))
            canvas.paste(img, ((s.crop - new[0]) // 2, (s.crop - new[1]) // 2))
            return canvas
        scale = s.resize / min(w, h)
        new = (max(s.crop, round(w * scale)), max(s.crop, round(h * scale)))
        if new != (w, h):
            img = img.resize(new, resample)
        left = (new[0] - s.crop) // 2
        top = (new[1] - s.crop) // 2
        return img.crop((left, top, left + s.crop, top + s.crop))

    def normalise(self, img: Image.Image) -> np.ndarray:
        """An RGB image as a normalised float32 CHW array."""
        chw = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) * (1.0 / 255.0)
        return (chw - self._mean) * self._inv_std

    def decode(self, src: ImageLike) -> Image.Image:
        """Read ``src`` as the RGB image :meth:`square` starts from (the decode stage, timed apart by the service)."""
        return load_image(src, self._draft_size if self.spec.decode == "reduced" else None)

    def reduces(self, src: ImageLike) -> bool:
        """Whether :meth:`decode` reads this file at a reduced size (reads the header only; unreadable: False)."""
        if self.spec.decode != "reduced" or not isinstance(src, (str, os.PathLike, bytes)):
            return False
        try:
            with Image.open(io.BytesIO(src) if isinstance(src, bytes) else Path(src)) as img:
                full = img.size
                wanted = self._draft_size(full) if img.format == "JPEG" else None
                if wanted is None:
                    return False
                img.draft(img.mode, wanted)  # sets the decoded size without decoding
                return img.size != full
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            return False

    def _draft_size(self, size: tuple[int, int]) -> tuple[int, int] | None:
        """The size a reduced decode must keep for this fit (:data:`DRAFT_MARGIN` times its need), or None to decode in full.

        Each fit's need is symmetric in width and height, so an EXIF rotation applied after decoding
        changes nothing here.
        """
        w, h = size
        s = self.spec
        if s.fit == "squash":
            side = DRAFT_MARGIN * s.crop
            return (min(w, side), min(h, side)) if w >= 2 * side or h >= 2 * side else None
        scale = DRAFT_MARGIN * (s.resize / min(w, h) if s.fit == "center_crop" else s.crop / max(w, h))
        return (math.ceil(w * scale), math.ceil(h * scale)) if scale <= 0.5 else None

    def image(self, src: ImageLike) -> np.ndarray:
        """One image as a float32 CHW array."""
        return self.normalise(self.square(self.decode(src)))

    def __call__(self, images: Sequence[ImageLike] | ImageLike) -> np.ndarray:
        """A float32 NCHW batch; a single image gives a batch of one."""
        if isinstance(images, (str, os.PathLike, bytes, Image.Image)) or (
            isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim in (2, 3)
        ):
            images = [images]
        return np.stack([self.image(src) for src in images]) if len(images) else np.zeros(
            (0, 3, self.spec.crop, self.spec.crop), np.float32
        )

    def batches(self, images: Iterable[ImageLike], batch_size: int, *, workers: int | None = None) -> Iterator[np.ndarray]:
        """Yield NCHW batches of at most ``batch_size`` images, in order, streaming over ``images``.

        Decoding runs on a small thread pool, one batch ahead of the caller (see :func:`map_in_chunks`).
        """
        for chunk in map_in_chunks(self.image, images, batch_size, workers=workers):
            yield np.stack(chunk)


def map_in_chunks(fn: Callable[[ImageLike], T], images: Iterable[ImageLike], size: int, *, workers: int | None = None) -> Iterator[list[T]]:
    """``fn`` over ``images`` on ``workers`` threads, yielded as in-order lists of ``size`` results.

    Default workers: up to 4 (0 or 1 runs inline). Pillow releases the GIL while decoding and resizing,
    and the next chunk is submitted before the current one is handed over, so decoding overlaps the
    caller's inference instead of waiting for it. At most two chunks are in memory; ``images`` may be
    a generator over millions of files. An exception from ``fn`` is raised when its chunk is reached.
    """
    if size <= 0:
        raise BadInput(f"batch_size must be positive, got {size}")
    workers = min(4, os.cpu_count() or 1) if workers is None else workers
    chunks = _chunks(images, size)
    if workers <= 1:
        for chunk in chunks:
            yield [fn(src) for src in chunk]
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="proxyembed-decode") as pool:
        ahead: list[Future[T]] | None = None
        for chunk in chunks:
            submitted = [pool.submit(fn, src) for src in chunk]
            if ahead is not None:
                yield [f.result() for f in ahead]
            ahead = submitted
        if ahead is not None:
            yield [f.result() for f in ahead]


def _chunks(images: Iterable[ImageLike], size: int) -> Iterator[list[ImageLike]]:
    chunk: list[ImageLike] = []
    for src in images:
        chunk.append(src)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
