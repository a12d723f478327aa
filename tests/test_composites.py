"""Composites of a studio shot: the item cut out of its plain background, pasted on photos."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from visual_search.composites import SIZE, composite, composites, cut_out, scaled_down
from visual_search.images import load_image


def studio_shot() -> Image.Image:
    """A red carton on white with a white panel that a seam joins to the background."""
    picture = Image.new("RGB", (200, 200), "white")
    draw = ImageDraw.Draw(picture)
    draw.rectangle((60, 40, 139, 159), fill=(200, 20, 20))
    draw.rectangle((80, 70, 119, 129), fill=(245, 245, 245))
    draw.rectangle((60, 98, 79, 101), fill=(245, 245, 245))
    return picture


def test_cut_out_keeps_the_item_with_its_white_panel_and_drops_the_background():
    item = cut_out(studio_shot())
    assert item is not None and item.mode == "RGBA"
    assert abs(item.width - 80) <= 3 and abs(item.height - 120) <= 3
    alpha = np.asarray(item.getchannel("A"))
    assert alpha[40, 40] == 255  # the white panel is part of the carton
    assert alpha[item.height // 2 + 30, 10] == 255
    disc = Image.new("RGB", (200, 200), "white")
    ImageDraw.Draw(disc).ellipse((50, 50, 149, 149), fill=(30, 30, 30))
    round_item = cut_out(disc)
    assert round_item is not None
    corners = np.asarray(round_item.getchannel("A"))[[0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners == 0).all()  # the background between the disc and its box is clear


def test_cut_out_refuses_images_without_a_plain_background(photos, studio_image):
    assert cut_out(load_image(photos("train", "Kiwi")[0])) is None  # an in-store photo
    assert cut_out(Image.new("RGB", (100, 100), "white")) is None  # nothing to cut out
    milk = cut_out(load_image(studio_image("Arla-Standard-Milk")))
    assert milk is not None and 0.5 < np.asarray(milk.getchannel("A")).mean() / 255 < 1


def test_composites_paste_the_item_on_the_photos_reproducibly():
    item = cut_out(studio_shot())
    assert item is not None
    blue = Image.new("RGB", (300, 200), (20, 40, 220))
    made = composites([item] * 4, [blue], seed=3)
    assert [picture.size for picture in made] == [(SIZE, SIZE)] * 4
    for picture in made:
        pixels = np.asarray(picture).astype(int)
        red = (pixels[..., 0] > 120) & (pixels[..., 2] < 80)
        assert red.mean() > 0.01 and (pixels[..., 2] > 150).mean() > 0.1  # item and photo
    again = composites([item] * 4, [blue], seed=3)
    assert all(
        np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(made, again, strict=True)
    )
    other = composite(item, blue, np.random.default_rng(4))
    assert not np.array_equal(np.asarray(other), np.asarray(made[0]))


def test_large_pictures_are_scaled_down_before_cutting_and_pasting():
    large = Image.new("RGB", (4000, 2000), "white")
    assert scaled_down(large).size == (2 * SIZE, SIZE)
    assert large.size == (4000, 2000)  # a copy: the caller's picture is left as it is
    assert scaled_down(studio_shot()).size == (200, 200)
