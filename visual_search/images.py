"""Turning untrusted image bytes into RGB pictures the encoder can use, or a clear error."""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from django.utils.translation import gettext
from PIL import Image, ImageOps, UnidentifiedImageError

from visual_search.conf import vs_settings
from visual_search.exceptions import UnusableImage

ImageSource = bytes | str | os.PathLike | IO[bytes] | Image.Image
Box = Sequence[float]

# Decode large JPEGs at a reduced scale (Image.draft): at least this many pixels on the
# short side survive, enough for the encoder's 224-256 px input and for a crop box.
DRAFT_MIN_SIDE = 512

# EXIF orientations that swap width and height.
_TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}


def read_bytes(source: Any, max_bytes: int | None = None) -> bytes:
    """Read at most ``max_bytes`` (default: the IMAGE.MAX_BYTES setting) from a source."""
    limit = vs_settings.IMAGE["MAX_BYTES"] if max_bytes is None else max_bytes
    if isinstance(source, bytes):
        data = source
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            size = path.stat().st_size
        except FileNotFoundError as exc:
            raise UnusableImage(
                gettext("Image file not found: %(name)s") % {"name": path}, "not_found"
            ) from exc
        if size > limit:
            raise UnusableImage(_too_large(size, limit), "too_large")
        data = path.read_bytes()
    else:
        try:
            data = _read_file(source, limit)
        except FileNotFoundError as exc:
            # A field whose file is gone from storage: as permanent as a missing path. Other
            # errors (a storage that does not answer) propagate, and the task tries again.
            name = getattr(source, "name", None) or type(source).__name__
            raise UnusableImage(
                gettext("Image file not found: %(name)s") % {"name": name}, "not_found"
            ) from exc
    if len(data) > limit:
        raise UnusableImage(_too_large(len(data), limit), "too_large")
    if not data:
        raise UnusableImage(gettext("The image file is empty (0 bytes)."), "empty")
    return data


def _read_file(source: Any, limit: int) -> bytes:
    # A Django FieldFile opens its storage file on the first attribute it proxies, ``read``
    # included: even the hasattr below can raise FileNotFoundError.
    if not hasattr(source, "read"):
        raise UnusableImage(
            gettext("Cannot read an image from %(type)s") % {"type": type(source).__name__},
            "unreadable",
        )
    if hasattr(source, "open") and getattr(source, "closed", False):
        source.open("rb")
    if hasattr(source, "seek"):
        source.seek(0)
    return source.read(limit + 1)


def _too_large(size: int, limit: int) -> str:
    return gettext("The image is too large: %(size)d bytes, the limit is %(limit)d bytes.") % {
        "size": size,
        "limit": limit,
    }


def _corrupt(exc: Exception) -> UnusableImage:
    return UnusableImage(
        gettext("The image is corrupt or truncated: %(error)s") % {"error": exc}, "corrupt"
    )


def load_image(source: ImageSource, *, box: Box | None = None) -> Image.Image:
    """Decode ``source`` to an RGB image, EXIF orientation applied, optionally cropped.

    ``box`` is (left, top, right, bottom) in pixels of the image as displayed (after EXIF
    orientation, before any reduced-scale decoding). Raises UnusableImage for anything that
    cannot be used; never returns a half-decoded picture.
    """
    if isinstance(source, Image.Image):
        image = source
        image.load()
        scale = 1.0
    else:
        image, scale = _decode(read_bytes(source))
    image = _to_rgb(image)
    if box is not None:
        image = image.crop(_scaled_box(box, image.size, scale))
    return image


def _decode(data: bytes) -> tuple[Image.Image, float]:
    Image.init()  # register every plugin, so that the allowlist below can name any of them
    formats = [f.upper() for f in vs_settings.IMAGE["FORMATS"] if f.upper() in Image.OPEN]
    try:
        with warnings.catch_warnings():
            # Keep Pillow's decompression-bomb limit, and treat its warning zone as an error.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data), formats=formats)
            full_size = _oriented_size(image)
            if image.format == "JPEG" and min(image.size) > 2 * DRAFT_MIN_SIDE:
                ratio = DRAFT_MIN_SIDE / min(image.size)
                image.draft("RGB", (int(image.width * ratio), int(image.height * ratio)))
            image.load()
            image = ImageOps.exif_transpose(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UnusableImage(
            gettext("The image has too many pixels (decompression bomb): %(error)s")
            % {"error": exc},
            "decompression_bomb",
        ) from exc
    except UnidentifiedImageError as exc:
        raise UnusableImage(
            gettext("The file is not an image in an accepted format (%(formats)s).")
            % {"formats": ", ".join(formats)},
            "not_an_image",
        ) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise _corrupt(exc) from exc
    return image, image.width / full_size[0]


def displayed_size(data: bytes) -> tuple[int, int]:
    """Width and height of encoded image bytes as displayed (EXIF orientation applied): the
    pixels a crop box is given in, whatever scale ``load_image`` decodes at."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return _oriented_size(image)
    except (UnidentifiedImageError, OSError) as exc:
        raise _corrupt(exc) from exc


def _oriented_size(image: Image.Image) -> tuple[int, int]:
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block is not worth refusing the image for
        orientation = 1
    w, h = image.size
    return (h, w) if orientation in _TRANSPOSED_ORIENTATIONS else (w, h)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Palette, alpha, CMYK, grayscale and 16/32-bit images to 8-bit RGB."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        import numpy as np

        array = np.asarray(image, dtype=np.float64)
        top = float(np.max(array)) or 1.0
        gray = Image.fromarray((array / top * 255.0).clip(0, 255).astype("uint8"), "L")
        return gray.convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _scaled_box(box: Box, size: tuple[int, int], scale: float) -> tuple[int, int, int, int]:
    try:
        left, top, right, bottom = (float(v) * scale for v in box)
    except (TypeError, ValueError) as exc:
        raise UnusableImage(
            gettext("The crop box must be four numbers: left, top, right, bottom."), "bad_box"
        ) from exc
    width, height = size
    left, top = max(0.0, left), max(0.0, top)
    right, bottom = min(float(width), right), min(float(height), bottom)
    if right - left < 1 or bottom - top < 1:
        raise UnusableImage(
            gettext("The crop box %(box)s is empty or outside the image (%(width)dx%(height)d px).")
            % {"box": tuple(box), "width": width, "height": height},
            "bad_box",
        )
    return round(left), round(top), round(right), round(bottom)
