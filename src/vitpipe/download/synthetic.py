"""The embedded synthetic butterfly set: procedurally drawn, deterministic, offline.

Each class is a species with its own wing shape (fore/hindwing proportions, tails, scalloped
edges) and colour pattern (base colour, bands, spots, eye-spots, veins, stripes), drawn mirror-
symmetric around a body. Every image varies pose, wing opening, scale, position, background,
colour and noise. Species come in pairs that share a base colour and differ only in shape or
pattern, so colour alone does not name the class, and backgrounds are drawn independently of it.

Each image has its own random stream seeded from ``(seed, split, class, index)``: changing how
many images one split holds never changes the images of another.
"""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from vitpipe.data.index import SPLITS
from vitpipe.data.pools import pool_context
from vitpipe.params import SyntheticParams

logger = logging.getLogger(__name__)

_JPEG = {"quality": 90, "subsampling": 0, "optimize": False}  # fixed: same bytes every run

Color = tuple[int, int, int]
COLORS: dict[str, Color] = {
    "azure": (40, 100, 205), "amber": (230, 125, 30), "lemon": (240, 210, 60),
    "crimson": (195, 35, 45), "jade": (50, 160, 95), "violet": (120, 60, 165),
    "ivory": (236, 234, 220), "umber": (130, 85, 50), "sable": (35, 32, 38),
    "white": (245, 245, 240), "black": (20, 18, 22), "gold": (250, 200, 40),
    "orange": (240, 120, 20), "red": (210, 30, 30), "sky": (120, 190, 240),
}


@dataclass(frozen=True)
class Wing:
    """One wing as a superellipse from the body: lengths are fractions of the half-canvas."""

    length: float
    width: float  # width / length
    angle: float  # degrees from the +x axis, negative points up
    exponent: float  # < 2 pointed, 2 elliptic, > 2 boxy


@dataclass(frozen=True)
class Shape:
    """A species' wing outline."""

    fore: Wing
    hind: Wing
    tail: float = 0.0  # tail length as a fraction of the hindwing length
    scallop: float = 0.0  # depth of the wavy outer edge


SHAPES: dict[str, Shape] = {
    "swallowtail": Shape(Wing(0.88, 0.45, -30, 1.6), Wing(0.62, 0.8, 52, 2.0), tail=0.45, scallop=0.06),
    "round": Shape(Wing(0.76, 0.75, -38, 2.4), Wing(0.6, 0.95, 38, 2.4)),
    "long": Shape(Wing(0.96, 0.34, -20, 2.0), Wing(0.58, 0.55, 28, 2.0)),
    "broad": Shape(Wing(0.9, 0.6, -32, 1.7), Wing(0.64, 0.9, 42, 2.2)),
    "angular": Shape(Wing(0.82, 0.6, -40, 1.3), Wing(0.6, 0.85, 46, 1.5), tail=0.12, scallop=0.12),
}


@dataclass(frozen=True)
class Species:
    """One class: name, colours (keys of :data:`COLORS`), shape and pattern."""

    name: str
    base: str
    accent: str
    margin: str
    shape: str
    pattern: str  # plain | band | eyes | spots | veins | stripes | tip


# Order matters: the first n are the n classes. Neighbours share a base colour.
SPECIES: tuple[Species, ...] = (
    Species("AZURE SWALLOWTAIL", "azure", "white", "black", "swallowtail", "band"),
    Species("AZURE PEACOCK", "azure", "gold", "black", "swallowtail", "eyes"),
    Species("AMBER MONARCH", "amber", "white", "black", "broad", "veins"),
    Species("AMBER CHECKERSPOT", "amber", "white", "black", "round", "spots"),
    Species("LEMON SULPHUR", "lemon", "orange", "umber", "round", "plain"),
    Species("LEMON ZEBRA", "lemon", "black", "black", "long", "stripes"),
    Species("CRIMSON LONGWING", "crimson", "gold", "black", "long", "band"),
    Species("CRIMSON JEZEBEL", "crimson", "white", "black", "round", "spots"),
    Species("JADE SWALLOWTAIL", "jade", "black", "black", "swallowtail", "band"),
    Species("JADE LACEWING", "jade", "black", "black", "long", "veins"),
    Species("VIOLET EMPEROR", "violet", "gold", "black", "broad", "eyes"),
    Species("VIOLET HAIRSTREAK", "violet", "white", "black", "swallowtail", "plain"),
    Species("IVORY PARNASSIAN", "ivory", "red", "black", "round", "eyes"),
    Species("IVORY ZEBRA", "ivory", "black", "black", "long", "stripes"),
    Species("UMBER BUCKEYE", "umber", "gold", "black", "angular", "eyes"),
    Species("UMBER COMMA", "umber", "orange", "sable", "angular", "plain"),
    Species("SABLE ADMIRAL", "sable", "red", "black", "angular", "band"),
    Species("SABLE SWALLOWTAIL", "sable", "white", "black", "swallowtail", "spots"),
    Species("CORAL TIP", "ivory", "orange", "black", "round", "tip"),
    Species("AMBER DAGGERWING", "amber", "black", "black", "swallowtail", "stripes"),
    Species("LEMON TIGER", "lemon", "black", "black", "swallowtail", "stripes"),
    Species("AZURE MORPHO", "azure", "sky", "black", "broad", "plain"),
    Species("CRIMSON PEACOCK", "crimson", "gold", "black", "angular", "eyes"),
    Species("JADE PEACOCK", "jade", "gold", "black", "round", "eyes"),
    Species("VIOLET LONGWING", "violet", "white", "black", "long", "spots"),
    Species("UMBER SKIPPER", "umber", "white", "black", "broad", "veins"),
)


def class_names(n: int) -> list[str]:
    """The names of the first ``n`` synthetic species (1 to 26), uppercase like the real dataset."""
    if not 1 <= n <= len(SPECIES):
        raise ValueError(f"the synthetic set has 1 to {len(SPECIES)} classes, asked for {n}")
    return [s.name for s in SPECIES[:n]]


def _jitter(rng: np.random.Generator, colors: list[Color]) -> list[Color]:
    """Applies one random per-channel gain and brightness to all of a species' colours."""
    gain = np.clip(rng.normal(1.0, 0.07, 3), 0.8, 1.2) * rng.uniform(0.8, 1.12)
    return [tuple(int(v) for v in np.clip(np.array(c) * gain, 0, 255)) for c in colors]


def _outline(center: tuple[float, float], a: float, b: float, angle: float, exponent: float,
             scallop: float = 0.0, points: int = 56) -> list[tuple[float, float]]:
    """Points of a rotated superellipse with semi-axes ``a``, ``b``; scallops wave its outer end.

    Plain ``math`` (not numpy's vectorised, CPU-dependent sin/cos) keeps the points bit-identical.
    """
    r, e, out = math.radians(angle), 2 / exponent, []
    for i in range(points):
        t = 2 * math.pi * i / points
        cos, sin = math.cos(t), math.sin(t)
        wave = 1.0 - scallop * (0.5 + 0.5 * math.cos(9 * t)) * max(cos, 0.0)
        x = wave * a * math.copysign(abs(cos) ** e, cos)
        y = wave * b * math.copysign(abs(sin) ** e, sin)
        out.append((center[0] + x * math.cos(r) - y * math.sin(r), center[1] + x * math.sin(r) + y * math.cos(r)))
    return out


class _WingFrame:
    """Maps wing coordinates (u: 0 at the body to 1 at the edge, v: -1..1 across) to pixels."""

    def __init__(self, root: tuple[float, float], length: float, width: float, angle: float) -> None:
        self.a, self.b, self.r = length / 2, length * width / 2, math.radians(angle)
        self.c = (root[0] + self.a * 0.92 * math.cos(self.r), root[1] + self.a * 0.92 * math.sin(self.r))

    def __call__(self, u: float, v: float) -> tuple[float, float]:
        x, y = (2 * u - 1) * self.a, v * self.b
        return (self.c[0] + x * math.cos(self.r) - y * math.sin(self.r),
                self.c[1] + x * math.sin(self.r) + y * math.cos(self.r))


def _pattern(draw: ImageDraw.ImageDraw, at: _WingFrame, pattern: str, fore: bool,
             accent: Color, margin: Color, rng: np.random.Generator) -> None:
    """Draws one wing's pattern elements in wing coordinates (clipped to the wing later)."""
    px = at.a  # one wing coordinate unit in pixels, roughly
    j = rng.uniform(-0.04, 0.04)

    def dot(u: float, v: float, r: float, fill: Color) -> None:
        x, y = at(u, v)
        draw.ellipse((x - r * px, y - r * px, x + r * px, y + r * px), fill=fill)

    if pattern == "band" and fore:
        draw.line([at(0.58 + j, -1.2), at(0.52 + j, 1.2)], fill=accent, width=max(1, int(0.32 * px)))
    elif pattern == "eyes":
        u, r = (0.6 + j, 0.22) if not fore else (0.74 + j, 0.14)
        for scale, fill in ((1.0, margin), (0.72, accent), (0.38, margin)):
            dot(u, 0.05, r * scale, fill)
    elif pattern == "spots":
        for v in np.linspace(-0.7, 0.7, 4 if fore else 3):
            dot(0.84 + j, float(v), 0.07, accent)
    elif pattern == "veins":
        for v in np.linspace(-0.85, 0.85, 5):
            draw.line([at(0.05, 0.0), at(1.0, float(v))], fill=margin, width=max(1, int(0.05 * px)))
    elif pattern == "stripes":
        for v in (-0.55, 0.0, 0.55):
            draw.line([at(0.1, v + j), at(1.0, v + j)], fill=accent, width=max(1, int(0.14 * px)))
    elif pattern == "tip" and fore:
        dot(0.9 + j, 0.0, 0.38, accent)


def _butterfly(rng: np.random.Generator, species: Species, canvas: int) -> Image.Image:
    """An RGBA butterfly, upright and fully open, centred on a ``canvas`` square."""
    base, accent, margin = _jitter(rng, [COLORS[species.base], COLORS[species.accent], COLORS[species.margin]])
    shape, half_size, mid = SHAPES[species.shape], canvas / 2, canvas / 2
    half = Image.new("RGBA", (canvas, canvas), (0, 0, 0, 0))
    for wing, root_y, fore in ((shape.hind, mid * 1.04, False), (shape.fore, mid * 0.97, True)):
        length = wing.length * half_size * rng.uniform(0.95, 1.05)
        angle = wing.angle + rng.uniform(-4, 4)
        frame = _WingFrame((mid, root_y), length, wing.width, angle)
        poly = _outline(frame.c, frame.a, frame.b, angle, wing.exponent, shape.scallop)
        layer = Image.new("RGBA", (canvas, canvas), base + (255,))
        draw = ImageDraw.Draw(layer)
        _pattern(draw, frame, species.pattern, fore, accent, margin, rng)
        mask = Image.new("L", (canvas, canvas), 0)
        ImageDraw.Draw(mask).polygon(poly, fill=255)
        half.paste(layer, (0, 0), mask)
        edge = ImageDraw.Draw(half)
        if not fore and shape.tail > 0:
            end, r = frame(1.0 + shape.tail, 0.75), 0.045 * length  # a club-tipped tail
            edge.line([frame(0.8, 0.5), end], fill=margin + (255,), width=max(2, int(0.06 * length)))
            edge.ellipse((end[0] - r, end[1] - r, end[0] + r, end[1] + r), fill=margin + (255,))
        edge.line(poly + poly[:1], fill=margin + (255,), width=max(2, int(0.045 * length)), joint="curve")
    half.paste((0, 0, 0, 0), (0, 0, int(mid), canvas))  # keep the right half only, then mirror it
    full = Image.alpha_composite(half, half.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    _body(ImageDraw.Draw(full), mid, canvas)
    return full


def _body(draw: ImageDraw.ImageDraw, mid: float, canvas: int) -> None:
    """Thorax, abdomen, head and antennae along the vertical centre line."""
    w, dark = canvas * 0.035, (25, 22, 20, 255)
    draw.ellipse((mid - w, mid - canvas * 0.16, mid + w, mid + canvas * 0.24), fill=dark)
    draw.ellipse((mid - w * 1.2, mid - canvas * 0.2, mid + w * 1.2, mid - canvas * 0.13), fill=dark)
    for side in (-1, 1):
        tip = (mid + side * canvas * 0.12, mid - canvas * 0.38)
        draw.line([(mid, mid - canvas * 0.18), tip], fill=dark, width=max(1, int(canvas * 0.008)))
        draw.ellipse((tip[0] - w * 0.5, tip[1] - w * 0.5, tip[0] + w * 0.5, tip[1] + w * 0.5), fill=dark)


def _random_color(rng: np.random.Generator) -> np.ndarray:
    """Mostly foliage, earth and sky tones, sometimes any colour (so none is tied to a class)."""
    tones = np.array([(70, 120, 50), (110, 150, 70), (40, 80, 40), (120, 95, 70), (170, 150, 120),
                      (150, 190, 220), (90, 90, 90), (200, 200, 190)], dtype=float)
    if rng.random() < 0.3:
        return rng.uniform(0, 255, 3)
    return np.clip(tones[rng.integers(len(tones))] + rng.normal(0, 20, 3), 0, 255)


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """A gradient with blurred blobs and leaves, and sometimes sharp twigs and flowers."""
    c1, c2 = _random_color(rng), _random_color(rng)
    r = float(rng.uniform(0, 2 * math.pi))
    ramp = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    t = np.clip(0.5 + ramp[None, :] * math.cos(r) + ramp[:, None] * math.sin(r), 0, 1)[..., None]  # (H, W, 1)
    img = Image.fromarray((c1.astype(np.float32) * (1 - t) + c2.astype(np.float32) * t).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(3, 9)):
        color = tuple(int(v) for v in _random_color(rng))
        center = tuple(rng.uniform(0, size, 2).tolist())
        a, b = size * rng.uniform(0.08, 0.3), size * rng.uniform(0.04, 0.15)
        draw.polygon(_outline(center, a, b, rng.uniform(0, 360), rng.uniform(1.2, 2.5)), fill=color)
    img = img.filter(ImageFilter.GaussianBlur(size * rng.uniform(0.015, 0.05)))
    if rng.random() < 0.4:
        draw = ImageDraw.Draw(img)
        for _ in range(rng.integers(1, 4)):
            p, q = rng.uniform(-0.1, 1.1, 2) * size, rng.uniform(-0.1, 1.1, 2) * size
            draw.line([tuple(p), tuple(q)], fill=(90, 65, 40), width=max(1, int(size * 0.015)))
        for _ in range(rng.integers(0, 5)):
            x, y, rad = *(rng.uniform(0, size, 2)), size * rng.uniform(0.01, 0.03)
            draw.ellipse((x - rad, y - rad, x + rad, y + rad), fill=tuple(int(v) for v in rng.uniform(0, 255, 3)))
    return img


def render(rng: np.random.Generator, species: Species, size: int) -> Image.Image:
    """One RGB ``size`` x ``size`` image of ``species`` in a random pose on a random background."""
    img = _background(rng, size)
    # Butterfly canvas side in the output: a close-up, as in field photos, where the wings fill
    # much of the frame (wings may be cropped). Smaller butterflies leave the class to a few
    # pixels that a randomly initialised backbone hardly sees.
    span = int(size * rng.uniform(1.1, 1.6))
    fly = _butterfly(rng, species, 2 * span if span <= 320 else span)  # 2x, downsampled below: anti-aliased
    opening = rng.uniform(0.55, 1.0)  # wings partly closed: a horizontal squash
    fly = fly.resize((max(2, int(span * opening)), span), Image.Resampling.BILINEAR, reducing_gap=2.0)
    angle = rng.uniform(-180, 180) if rng.random() < 0.2 else rng.uniform(-60, 60)
    fly = fly.rotate(angle, Image.Resampling.BICUBIC, expand=True)
    shift = rng.uniform(-0.18, 0.18, 2) * size
    x, y = int((size - fly.width) / 2 + shift[0]), int((size - fly.height) / 2 + shift[1])
    img.paste(fly, (x, y), fly)  # the alpha channel is the mask; parts may fall outside the frame
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.0)))
    noise = rng.standard_normal((size, size, 3), dtype=np.float32) * rng.uniform(2, 8)
    arr = np.asarray(img, dtype=np.float32) * rng.uniform(0.85, 1.15) + noise  # lighting and sensor noise
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def _draw(job: tuple[Path, int, int, str, int, int, int]) -> None:
    """Draws and writes one image: ``(dest, seed, split position, split, class position, index, size)``."""
    dest, seed, split_id, split, class_id, index, size = job
    species = SPECIES[class_id]
    rng = np.random.default_rng([seed, split_id, class_id, index])
    jpeg = io.BytesIO()  # Pillow's encoder writes to a file descriptor and ignores a short write
    render(rng, species, size).save(jpeg, "JPEG", **_JPEG)
    (dest / split / species.name / f"{index:04d}.jpg").write_bytes(jpeg.getvalue())  # a full disk raises here


def generate(dest: Path, params: SyntheticParams, *, seed: int, processes: int = 1) -> None:
    """Writes ``dest/{train,valid,test}/<CLASS NAME>/<NNNN>.jpg``; ``dest`` must exist and be empty.

    The same ``params`` and ``seed`` give byte-identical files, drawn in one process or in ``processes``
    (each image is seeded by its own place); the caller makes ``dest`` atomic.
    """
    dest = Path(dest)
    if any(dest.iterdir()):
        raise ValueError(f"{dest} must be an empty directory")
    counts = {"train": params.train_per_class, "valid": params.valid_per_class, "test": params.test_per_class}
    jobs = []
    for split_id, split in enumerate(SPLITS):  # a split's position seeds its images
        for class_id, species in enumerate(SPECIES[:params.classes]):
            (dest / split / species.name).mkdir(parents=True)
            jobs += [(dest, seed, split_id, split, class_id, index, params.image_size) for index in range(counts[split])]
    if processes > 1:
        with pool_context().Pool(processes) as pool:
            pool.map(_draw, jobs, chunksize=16)
    else:
        for job in jobs:
            _draw(job)
    logger.info("synthetic: wrote %d images of %d classes at %d px to %s (per class: train %d, valid %d, test %d)",
                params.classes * sum(counts.values()), params.classes, params.image_size, dest,
                counts["train"], counts["valid"], counts["test"])
