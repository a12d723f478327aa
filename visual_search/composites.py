"""Photo-like training images made from a product's studio shot, for the fine-tuning.

A catalogue's studio shot shows one item on a plain white background; a shopper photographs
the product on a shelf, in a pile, in a hand. Cutting the studio item out of its background
and pasting it on blurred crops of the catalogue's own in-store photos (one large item, a few
on a shelf, or a pile) and training on those composites beside the real photos teaches the
model to see past that gap: offline, studio-only search of products it never learned went
from 0.486 to 0.537 at the app's bonus, and of those it learned from 0.872 to 0.884
(docs/benchmarks.md, "Composites of the studio shots"). Only the products learned from photos
get them: products known by one image, trained on their composites, became "the composite
classes" and their photos were found first less often than without (0.15 against 0.31).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

SIZE = 348  # the in-store photos' usual side; training crops are drawn from it

# A pixel is background when it is this light and this grey, and the light region it lies in
# touches the image's border; most of the border must be background for a cut-out at all.
_LIGHT = 228
_GREY = 25
_LIGHT_BORDER = 0.8


def cut_out(image: Image.Image) -> Image.Image | None:
    """The item of a studio shot as an RGBA image cropped to it, or None where the image has no
    plain light background to cut it from (an in-store photo as the main image, say).

    Light regions that touch the border are the background; the item is then filled between
    its left and right and its top and bottom edges, so that a white panel of a carton that a
    seam joins to the background stays with it (a white strip along its outer edge is lost)."""
    rgb = image.convert("RGB")
    pixels = np.asarray(rgb).astype(np.int16)
    light = (pixels.min(axis=2) > _LIGHT) & (np.ptp(pixels, axis=2) < _GREY)
    border = np.concatenate([light[0], light[-1], light[:, 0], light[:, -1]])
    if border.mean() < _LIGHT_BORDER:
        return None
    regions = Image.fromarray(light.astype(np.uint8) * 255).copy()  # one PIL may write to
    height, width = light.shape
    edge = [(x, y) for x in range(width) for y in (0, height - 1)]
    edge += [(x, y) for y in range(height) for x in (0, width - 1)]
    for point in edge:
        if regions.getpixel(point) == 255:
            ImageDraw.floodfill(regions, point, 128, thresh=0)
    item = np.asarray(regions) != 128
    item = _between_edges(item, axis=0) & _between_edges(item, axis=1)
    if not 0.05 <= item.mean() <= 0.95:
        return None
    alpha = Image.fromarray(item.astype(np.uint8) * 255)
    alpha = alpha.filter(ImageFilter.MinFilter(3)).filter(ImageFilter.GaussianBlur(1))
    rgba = rgb.copy()
    rgba.putalpha(alpha)
    box = alpha.point(lambda value: 255 if value > 20 else 0).getbbox()
    return rgba.crop(box) if box else None


def _between_edges(mask: np.ndarray, axis: int) -> np.ndarray:
    """True between the first and the last True of each line of ``mask`` along ``axis``."""
    place = np.arange(mask.shape[axis]).reshape([-1, 1] if axis == 0 else [1, -1])
    first = np.where(mask, place, mask.shape[axis]).min(axis=axis, keepdims=True)
    last = np.where(mask, place, -1).max(axis=axis, keepdims=True)
    return (place >= first) & (place <= last)


def composite(item: Image.Image, photo: Image.Image, rng: np.random.Generator) -> Image.Image:
    """One SIZE x SIZE composite: a blurred crop of ``photo`` with the cut-out ``item`` on it,
    as a pile of small copies, as one item before others on a shelf, or alone and large."""
    canvas = _background(photo, rng)
    layout = rng.random()
    if layout < 0.35:
        size = SIZE * rng.uniform(0.22, 0.42)
        for _ in range(int(rng.integers(4, 14))):
            pile = _placed(item, size * rng.uniform(0.85, 1.15), 180, rng)
            _paste(canvas, pile, rng.uniform(0, SIZE), rng.uniform(0, SIZE))
        front = _placed(item, size * 1.2, 180, rng)
        _paste(canvas, front, SIZE * rng.uniform(0.3, 0.7), SIZE * rng.uniform(0.3, 0.7))
        return canvas
    if layout < 0.6:
        height = SIZE * rng.uniform(0.5, 0.8)
        for _ in range(int(rng.integers(1, 4))):
            neighbour = _placed(item, height, 5, rng)
            _paste(canvas, neighbour, rng.uniform(0, SIZE), SIZE * rng.uniform(0.4, 0.9))
    front = _placed(item, SIZE * rng.uniform(0.55, 0.95), 15, rng)
    _paste(canvas, front, SIZE * rng.uniform(0.35, 0.65), SIZE * rng.uniform(0.35, 0.65))
    return canvas


def scaled_down(image: Image.Image, side: int = 2 * SIZE) -> Image.Image:
    """A copy at most ``side`` pixels wide and high: cutting out and pasting need no more."""
    smaller = image.copy()
    smaller.thumbnail((side, side))
    return smaller


def composites(
    items: Sequence[Image.Image], photos: Sequence[Image.Image], seed: int = 0
) -> list[Image.Image]:
    """A composite for each item in turn, each on a photo drawn at random from ``photos``."""
    rng = np.random.default_rng(seed)
    return [composite(item, photos[int(rng.integers(len(photos)))], rng) for item in items]


def _background(photo: Image.Image, rng: np.random.Generator) -> Image.Image:
    width, height = photo.size
    share = rng.uniform(0.5, 1.0)
    crop_w, crop_h = max(1, int(width * share)), max(1, int(height * share))
    left = int(rng.integers(0, width - crop_w + 1))
    top = int(rng.integers(0, height - crop_h + 1))
    crop = photo.convert("RGB").crop((left, top, left + crop_w, top + crop_h))
    crop = crop.resize((SIZE, SIZE), Image.Resampling.BICUBIC)
    return crop.filter(ImageFilter.GaussianBlur(rng.uniform(1.5, 4)))


def _placed(item: Image.Image, side: float, spin: float, rng: np.random.Generator) -> Image.Image:
    """The item scaled to ``side`` pixels at its longer side, turned by up to ``spin``
    degrees, in the light of another part of the shop."""
    scale = side / max(item.size)
    size = (max(2, int(item.width * scale)), max(2, int(item.height * scale)))
    turned = item.resize(size, Image.Resampling.BICUBIC).rotate(
        rng.uniform(-spin, spin), resample=Image.Resampling.BICUBIC, expand=True
    )
    lit = ImageEnhance.Brightness(turned.convert("RGB")).enhance(rng.uniform(0.75, 1.1))
    lit.putalpha(turned.getchannel("A"))
    return lit


def _paste(canvas: Image.Image, item: Image.Image, x: float, y: float) -> None:
    canvas.paste(item, (int(x - item.width / 2), int(y - item.height / 2)), item)
