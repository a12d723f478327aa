"""More vectors for each image of a product an adapted model did not learn.

A product the fine-tuned model never learned (one studio image, or added since the adaptation)
is known by one vector per image, on the far side of the gap between a studio shot and a
shopper's photo that the model learned to bridge only for the products it learned. A few
plain variants of each such image, stored as more rows of it in the adapted space (a product
scores by its best row), widen the target a photo can hit. Measured on the grocery photos
(docs/benchmarks.md, "Variants of the images of products it did not learn"): with the bonus
(unlearned.py), new products were found first 0.311 -> 0.361 of the time for about half a
point of the learned products' R@1; random training crops did about as well, and a mean of the
variants as one vector gained nothing. Deterministic variants are kept: a product saved twice
gets the same vectors.

The learned products get none: their photos already pull together, and every extra row costs
an encoding when the image is saved and a row in the index.
"""

from __future__ import annotations

from collections.abc import Sequence

from django.utils.translation import gettext_lazy as _
from PIL import Image, ImageOps

from visual_search.conf import vs_settings

# An image's variants, stored as its rows 1, 2, 3 (0 is the image as it is).
VARIANTS = (_("mirrored"), _("centre crop"), _("centre crop, mirrored"))
# The share of the width and of the height the centre crop keeps.
CENTRE = 0.8


def enabled() -> bool:
    return bool(vs_settings.ADAPTATION["UNLEARNED_VARIANTS"])


def variant_pictures(picture: Image.Image) -> list[Image.Image]:
    """The picture's variants, in the order of ``VARIANTS``."""
    width, height = picture.size
    margin_x, margin_y = round(width * (1 - CENTRE) / 2), round(height * (1 - CENTRE) / 2)
    centre = picture.crop((margin_x, margin_y, width - margin_x, height - margin_y))
    return [ImageOps.mirror(picture), centre, ImageOps.mirror(centre)]


def all_variants(pictures: Sequence[Image.Image]) -> list[Image.Image]:
    """Each picture's variants, picture after picture (``len(VARIANTS)`` each)."""
    return [variant for picture in pictures for variant in variant_pictures(picture)]
