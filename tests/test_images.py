"""Decoding untrusted images: every kind of picture becomes RGB, everything else a clear error."""

from __future__ import annotations

import io

import numpy as np
import pytest
from django.test import override_settings
from PIL import Image

from tests.conftest import jpeg_bytes
from visual_search.exceptions import UnusableImage
from visual_search.images import DRAFT_MIN_SIDE, load_image


def encode(image: Image.Image, fmt: str, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save)
    return buffer.getvalue()


def test_exif_orientation_is_applied():
    # A 60x20 picture stored landscape, with EXIF orientation 6 (rotate 90 degrees clockwise).
    image = Image.new("RGB", (60, 20), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 10, 20))  # blue band on the stored left edge
    exif = Image.Exif()
    exif[0x0112] = 6
    decoded = load_image(encode(image, "JPEG", exif=exif.tobytes(), quality=95))
    assert decoded.size == (20, 60)
    top = np.asarray(decoded)[2, 10]
    assert top[2] > 150 and top[0] < 100  # the blue band is now on top


@pytest.mark.parametrize(
    "mode,fmt",
    [
        ("P", "PNG"),
        ("RGBA", "PNG"),
        ("LA", "PNG"),
        ("CMYK", "JPEG"),
        ("L", "PNG"),
        ("I;16", "PNG"),
        ("1", "PNG"),
        ("RGBA", "WEBP"),
    ],
)
def test_modes_become_rgb(mode, fmt):
    image = Image.new("RGB", (32, 32), (10, 200, 30)).convert(mode)
    decoded = load_image(encode(image, fmt))
    assert decoded.mode == "RGB"
    assert decoded.size == (32, 32)


def test_transparent_pixels_become_white():
    image = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert np.asarray(load_image(encode(image, "PNG"))).min() == 255


def test_sixteen_bit_keeps_its_contrast():
    array = np.zeros((8, 8), dtype=np.uint16)
    array[:, 4:] = 60000
    decoded = np.asarray(load_image(encode(Image.fromarray(array), "PNG")))
    assert decoded[0, 0, 0] == 0 and decoded[0, 7, 0] == 255


def test_large_jpeg_is_decoded_at_reduced_scale():
    data = jpeg_bytes((4000, 3000), quality=70)
    decoded = load_image(data)
    assert DRAFT_MIN_SIDE <= min(decoded.size) < 3000


def test_box_is_in_full_size_pixels_even_when_drafted():
    image = Image.new("RGB", (4000, 3000), (0, 0, 255))
    image.paste((255, 0, 0), (2000, 0, 4000, 3000))  # right half red
    cropped = load_image(encode(image, "JPEG", quality=90), box=(2100, 100, 3900, 2900))
    pixels = np.asarray(cropped).reshape(-1, 3).mean(axis=0)
    assert pixels[0] > 200 and pixels[2] < 60
    assert cropped.width / cropped.height == pytest.approx(1800 / 2800, rel=0.02)


@pytest.mark.parametrize("box", [(10, 10, 10, 20), (500, 500, 600, 600), ("a", 1, 2, 3)])
def test_bad_box_is_refused(box):
    with pytest.raises(UnusableImage, match="box"):
        load_image(jpeg_bytes((64, 48)), box=box)


def test_zero_bytes():
    with pytest.raises(UnusableImage, match="empty"):
        load_image(b"")


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "photo.jpg"
    path.write_text("this is not a picture")
    with pytest.raises(UnusableImage, match="not an image"):
        load_image(path)


def test_truncated_jpeg():
    data = jpeg_bytes((400, 300))
    with pytest.raises(UnusableImage, match="corrupt or truncated"):
        load_image(data[: len(data) // 2])


def test_decompression_bomb():
    # A tiny PNG whose header claims 20000 x 20000 pixels (Pillow's limit is ~89 million).
    bomb = encode(Image.new("1", (20000, 20000)), "PNG")
    assert len(bomb) < 100_000
    with pytest.raises(UnusableImage, match="decompression bomb"):
        load_image(bomb)


def test_format_outside_the_allowlist():
    with pytest.raises(UnusableImage, match="accepted format"):
        load_image(encode(Image.new("RGB", (8, 8)), "PPM"))


@override_settings(VISUAL_SEARCH={"IMAGE": {"MAX_BYTES": 1000}})
def test_byte_limit(tmp_path):
    data = jpeg_bytes((300, 300), quality=95)
    assert len(data) > 1000
    with pytest.raises(UnusableImage, match="too large"):
        load_image(data)
    path = tmp_path / "big.jpg"
    path.write_bytes(data)
    with pytest.raises(UnusableImage, match="too large"):
        load_image(path)
    with pytest.raises(UnusableImage, match="too large"):
        load_image(io.BytesIO(data))


def test_unusable_image_is_a_value_error():
    assert issubclass(UnusableImage, ValueError)


def test_displayed_size_is_the_box_s_pixels_even_when_decoding_is_smaller():
    """A crop box is in the pixels of the image as displayed; a large JPEG decodes at a reduced
    scale, so code that draws the box must take the size from displayed_size."""
    from visual_search.images import displayed_size

    exif = Image.Exif()
    exif[0x0112] = 6  # stored 2400x1800, displayed 1800x2400
    data = encode(Image.new("RGB", (2400, 1800), (30, 90, 200)), "JPEG", exif=exif.tobytes())
    assert displayed_size(data) == (1800, 2400)
    assert load_image(data).size[0] < 1800
    with pytest.raises(UnusableImage):
        displayed_size(b"not an image")


@pytest.mark.django_db
def test_the_demo_s_search_page_draws_the_box_at_its_place_on_a_large_photo(client):
    data = jpeg_bytes((2400, 1800))
    upload = io.BytesIO(data)
    upload.name = "large.jpg"
    response = client.post("/search/", {"image": upload, "box": "600,0,1800,900"})
    page = response.content.decode()
    assert response.status_code == 200
    assert 'id="searched-box" style="left: 25.0%; top: 0.0%; width: 50.0%; height: 50.0%"' in page
