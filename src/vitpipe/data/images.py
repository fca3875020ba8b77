"""Opening one image file as RGB, the same way in every stage, predict included."""

from __future__ import annotations

import contextlib
import io
import logging
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
# Long side / short side. The eval transform resizes the SHORT side to the model's input (256 for
# 224), so a 6000x1 strip of 100 bytes would become 1,536,000 x 256 pixels (GBs): Pillow's
# decompression-bomb guard counts the file's pixels, not the resized ones. Panoramas stay far below.
MAX_ASPECT_RATIO = 20

logger = logging.getLogger(__name__)

# Pillow warns about an image over Image.MAX_IMAGE_PIXELS (89 Mpx) in two raw lines on stderr, from any
# thread or worker, and refuses one over twice that (a BadImageError here). vitpipe says it in one log
# line naming the file instead (:func:`_note_large`), once per file and process.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
_noted: set[str] = set()
_noted_lock = threading.Lock()

class BadImageError(ValueError):
    """The file is not a decodable image; the message says why in a few words."""


def check_shape(width: int, height: int) -> None:
    """Refuses an image so thin that resizing its short side to the model's input would explode.

    Raises:
        BadImageError: the sides' ratio is over :data:`MAX_ASPECT_RATIO`.
    """
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise BadImageError(f"{width}x{height} pixels, sides in a ratio over {MAX_ASPECT_RATIO}:1 (resizing its "
                            f"short side to the model's input would blow it up); crop it")


def _note_large(name: str, width: int, height: int) -> None:
    """Logs, once per ``name``, an image Pillow would have warned about (still decoded: under twice the limit)."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is None or width * height <= limit:
        return
    with _noted_lock:
        if name in _noted:
            return
        _noted.add(name)
    logger.warning("%s: %d x %d pixels (%.0f Mpx), over Pillow's decompression-bomb warning limit of %.0f Mpx; "
                   "decoded anyway (about %.0f MB of memory). Shrink it if that is not what you meant.", name,
                   width, height, width * height / 1e6, limit / 1e6, width * height * 3 / 1e6)


def is_image_file(path: Path) -> bool:
    """True for a file whose suffix is one of :data:`IMAGE_SUFFIXES` (case-insensitive)."""
    return path.suffix.lower() in IMAGE_SUFFIXES


def to_rgb(img: Image.Image) -> Image.Image:
    """Converts any Pillow mode to 8-bit RGB, honouring EXIF rotation and transparency.

    CMYK, grayscale (L, LA, 1), palette (P, with or without transparency), RGBA, 16-bit and
    32-bit integer (I;16, I) and float (F) images are all accepted. Transparent pixels become white.
    """
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        if img.mode == "F":
            top = max(float(arr.max()), 1.0)
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB") if img.mode != "RGB" else img


@dataclass(frozen=True)
class ImageInfo:
    """What a file held before :func:`to_rgb`: Pillow mode, EXIF orientation (1 = none) and final size."""

    mode: str
    orientation: int
    width: int
    height: int


@contextlib.contextmanager
def _bad_image_reasons() -> Iterator[None]:
    """Turns Pillow's many decode failures into one :class:`BadImageError` with a short reason."""
    try:
        yield
    except BadImageError:
        raise
    except UnidentifiedImageError:
        raise BadImageError("not an image Pillow can identify") from None
    except Image.DecompressionBombError:  # Pillow's guard against decompression bombs (>179 Mpx)
        raise BadImageError("too many pixels (possible decompression bomb)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BadImageError(f"undecodable ({text})") from None


def load_rgb(path: Path) -> Image.Image:
    """Opens, fully decodes and converts one image.

    Raises:
        BadImageError: zero bytes, not an image, truncated or otherwise undecodable.
    """
    path = Path(path)
    with _bad_image_reasons():
        if path.stat().st_size == 0:
            raise BadImageError("zero bytes")
        with Image.open(path) as img:
            check_shape(*img.size)  # before decoding: the header says it
            _note_large(str(path), *img.size)
            img.load()  # decode now: truncation surfaces here, not in a loader worker
            return to_rgb(img)


def decode_rgb(data: bytes, name: str = "an image") -> tuple[Image.Image, ImageInfo]:
    """Decodes image file bytes exactly as :func:`load_rgb` does, and says what they held
    (``name``: the file, for the log).

    Raises:
        BadImageError: as :func:`load_rgb`.
    """
    with _bad_image_reasons():
        if not data:
            raise BadImageError("zero bytes")
        with Image.open(io.BytesIO(data)) as img:
            check_shape(*img.size)
            _note_large(name, *img.size)
            img.load()
            mode, orientation = img.mode, img.getexif().get(0x0112, 1)
            rgb = to_rgb(img)
    orientation = orientation if isinstance(orientation, int) else 1
    return rgb, ImageInfo(mode=mode, orientation=orientation, width=rgb.width, height=rgb.height)
