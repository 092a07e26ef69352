"""The built-in synthetic dataset: procedurally drawn objects, deterministic from a seed.

Each class is an *object*: a main shape with a fill pattern and two colours, plus a small satellite
shape at a fixed angle around it. Images of a class vary in pose (rotation), scale, position, colour
(brightness and hue jitter), background, clutter (distractor shapes) and pixel noise, so the class is
not readable from any single low-level cue: an untrained network retrieves poorly, a trained one well.
Classes ``0 .. train_classes-1`` train, the next ``eval_classes`` are held out (zero-shot).
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, fields

import numpy as np
from PIL import Image, ImageDraw

from proxyembed.runtime.errors import BadInput
from proxyembed.runtime.preprocess import PreprocessSpec

from .types import DataSplit, Sample

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "hexagon", "diamond", "arrow", "crescent")
PATTERNS = ("solid", "stripes", "checker", "dots", "half")


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and seed of the built-in dataset. ``size`` is the side of the generated images in pixels."""

    seed: int = 0
    train_classes: int = 100
    eval_classes: int = 100
    per_class: int = 24
    size: int = 72

    @classmethod
    def from_options(cls, opts: dict[str, int]) -> SyntheticConfig:
        """The config of ``--data synthetic:KEY=VALUE,...`` (parsed by the one ``KEY=VALUE`` parser, keys :data:`SYNTHETIC_OPTIONS`)."""
        cfg = cls(**opts)
        if min(cfg.train_classes, cfg.eval_classes) < 2 or cfg.per_class < 2 or cfg.size < 32:
            raise BadInput("--data synthetic: need >= 2 classes per split, >= 2 images per class and size >= 32")
        return cfg


SYNTHETIC_OPTIONS: tuple[str, ...] = tuple(f.name for f in fields(SyntheticConfig))
"""The keys ``--data synthetic:KEY=VALUE`` accepts: the config's fields."""


@dataclass(frozen=True)
class _ClassSpec:
    shape: str
    pattern: str
    hue: float
    hue2: float
    satellite: str
    sat_angle: float


def _class_specs(n: int, seed: int) -> list[_ClassSpec]:
    rng = np.random.default_rng([seed, 7919])
    specs: list[_ClassSpec] = []
    seen: set[tuple] = set()
    while len(specs) < n:
        spec = _ClassSpec(
            shape=SHAPES[rng.integers(len(SHAPES))],
            pattern=PATTERNS[rng.integers(len(PATTERNS))],
            hue=float(rng.integers(12)) / 12,
            hue2=float(rng.integers(12)) / 12,
            satellite=SHAPES[rng.integers(len(SHAPES))],
            sat_angle=float(rng.integers(8)) * math.pi / 4,
        )
        key = (spec.shape, spec.pattern, spec.hue, spec.hue2, spec.satellite, spec.sat_angle)
        if key not in seen and spec.hue != spec.hue2:
            seen.add(key)
            specs.append(spec)
    return specs


def _polygon(shape: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]] | None:
    def ring(n: int, radii: list[float], offset: float = 0.0) -> list[tuple[float, float]]:
        pts = []
        for i in range(n * len(radii)):
            a = rot + offset + 2 * math.pi * i / (n * len(radii))
            rr = r * radii[i % len(radii)]
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        return pts

    if shape == "square":
        return ring(4, [1.0], math.pi / 4)
    if shape == "triangle":
        return ring(3, [1.0])
    if shape == "star":
        return ring(5, [1.0, 0.45])
    if shape == "hexagon":
        return ring(6, [1.0])
    if shape == "diamond":
        return ring(2, [1.0, 0.55])
    if shape == "cross":
        return _cross(cx, cy, r, rot)
    if shape == "arrow":
        pts = [(1.0, 0.0), (0.1, 0.8), (0.1, 0.35), (-0.9, 0.35), (-0.9, -0.35), (0.1, -0.35), (0.1, -0.8)]
        c, s = math.cos(rot), math.sin(rot)
        return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts]
    return None


def _cross(cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    w = 0.33
    pts = [(w, 1), (w, w), (1, w), (1, -w), (w, -w), (w, -1), (-w, -1), (-w, -w), (-1, -w), (-1, w), (-w, w), (-w, 1)]
    c, s = math.cos(rot), math.sin(rot)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts]


def _rgb(hue: float, sat: float, val: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(hue % 1.0, min(max(sat, 0), 1), min(max(val, 0), 1))
    return int(r * 255), int(g * 255), int(b * 255)


def _shape_mask(shape: str, size: int, cx: float, cy: float, r: float, rot: float) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(mask)
    poly = _polygon(shape, cx, cy, r, rot)
    if poly is not None:
        d.polygon(poly, fill=255)
    elif shape == "circle":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif shape == "ring":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        d.ellipse((cx - r * 0.55, cy - r * 0.55, cx + r * 0.55, cy + r * 0.55), fill=0)
    elif shape == "crescent":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        ox, oy = cx + 0.45 * r * math.cos(rot), cy + 0.45 * r * math.sin(rot)
        d.ellipse((ox - r * 0.85, oy - r * 0.85, ox + r * 0.85, oy + r * 0.85), fill=0)
    return mask


def _pattern(pattern: str, size: int, c1: tuple, c2: tuple, rot: float, period: float) -> Image.Image:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    u = xx * math.cos(rot) + yy * math.sin(rot)
    v = -xx * math.sin(rot) + yy * math.cos(rot)
    if pattern == "solid":
        sel = np.zeros_like(u, dtype=bool)
    elif pattern == "stripes":
        sel = (u // period) % 2 == 0
    elif pattern == "checker":
        sel = ((u // period) + (v // period)) % 2 == 0
    elif pattern == "dots":
        sel = ((u % period - period / 2) ** 2 + (v % period - period / 2) ** 2) < (period / 3.2) ** 2
    else:  # half: two-tone split through the centre
        sel = u - (size / 2) * (math.cos(rot) + math.sin(rot)) > 0
    out = np.empty((size, size, 3), np.uint8)
    out[:] = c1
    out[sel] = c2
    return Image.fromarray(out, "RGB")


def render(spec: _ClassSpec, size: int, rng: np.random.Generator) -> np.ndarray:
    """Draw one image of a class as uint8 HxWx3, at 2x then downsampled for smooth edges."""
    big = size * 2
    # background: a random two-colour gradient
    b1 = np.array(_rgb(rng.random(), rng.uniform(0, 0.5), rng.uniform(0.3, 0.95)), np.float32)
    b2 = np.array(_rgb(rng.random(), rng.uniform(0, 0.5), rng.uniform(0.3, 0.95)), np.float32)
    t = np.linspace(0, 1, big, dtype=np.float32)
    grad = t[:, None, None] * b1 + (1 - t[:, None, None]) * b2
    canvas = Image.fromarray(np.broadcast_to(grad, (big, big, 3)).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(canvas)
    # clutter behind the object
    for _ in range(rng.integers(1, 4)):
        cr = big * rng.uniform(0.05, 0.14)
        cx, cy = rng.uniform(0, big, 2)
        m = _shape_mask(SHAPES[rng.integers(len(SHAPES))], big, cx, cy, cr, rng.uniform(0, 2 * math.pi))
        canvas.paste(_rgb(rng.random(), rng.uniform(0.3, 1), rng.uniform(0.3, 1)), mask=m)
    # the object: pose, scale, position and colour jitter
    rot = rng.uniform(0, 2 * math.pi)
    r = big * rng.uniform(0.22, 0.34)
    cx = big / 2 + rng.uniform(-0.12, 0.12) * big
    cy = big / 2 + rng.uniform(-0.12, 0.12) * big
    val = rng.uniform(0.65, 1.0)
    sat = rng.uniform(0.6, 1.0)
    c1 = _rgb(spec.hue + rng.normal(0, 0.02), sat, val)
    c2 = _rgb(spec.hue2 + rng.normal(0, 0.02), sat, val * rng.uniform(0.8, 1.0))
    body = _pattern(spec.pattern, big, c1, c2, rot, period=max(4.0, r / 2.5))
    canvas.paste(body, mask=_shape_mask(spec.shape, big, cx, cy, r, rot))
    sa = rot + spec.sat_angle
    sx, sy = cx + 1.35 * r * math.cos(sa), cy + 1.35 * r * math.sin(sa)
    canvas.paste(c2, mask=_shape_mask(spec.satellite, big, sx, sy, r * 0.42, rot))
    # occluding clutter in front, sometimes
    if rng.random() < 0.3:
        cr = big * rng.uniform(0.04, 0.08)
        ox, oy = rng.uniform(0, big, 2)
        draw.ellipse((ox - cr, oy - cr, ox + cr, oy + cr), fill=_rgb(rng.random(), 0.5, rng.uniform(0.2, 0.9)))
    img = np.asarray(canvas.resize((size, size), Image.BILINEAR), dtype=np.float32)
    img += rng.normal(0, rng.uniform(2, 10), img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _class_name(s: _ClassSpec) -> str:
    """A readable, unique folder name for a class: shape-pattern-hue-hue2-satellite-angle."""
    return f"{s.shape}-{s.pattern}-{int(s.hue * 12)}-{int(s.hue2 * 12)}-{s.satellite}-{round(s.sat_angle / (math.pi / 4))}"


def synthetic_split(cfg: SyntheticConfig = SyntheticConfig()) -> DataSplit:
    """Generate the dataset in memory (a few seconds for the default 4,800 images)."""
    n_classes = cfg.train_classes + cfg.eval_classes
    specs = _class_specs(n_classes, cfg.seed)
    samples: list[Sample] = []
    for label, spec in enumerate(specs):
        for i in range(cfg.per_class):
            rng = np.random.default_rng([cfg.seed, label, i])
            samples.append(Sample(render(spec, cfg.size, rng), label, f"synthetic/{label:04d}/{i:03d}"))
    names = {label: _class_name(s) for label, s in enumerate(specs)}
    crop = cfg.size - cfg.size // 9
    return DataSplit(
        name=f"synthetic(seed={cfg.seed},size={cfg.size})",
        train=[s for s in samples if s.label < cfg.train_classes],
        eval=[s for s in samples if s.label >= cfg.train_classes],
        class_names=names,
        preprocess=PreprocessSpec(resize=cfg.size, crop=crop, fit="center_crop"),  # the shapes sit centred, with a margin
    )
