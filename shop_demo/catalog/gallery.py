"""The shop's gallery of a product, for VISUAL_SEARCH["PRODUCT_IMAGES"]: main image first."""

from collections.abc import Iterator

from django.db.models.fields.files import FieldFile

from shop_demo.catalog.models import Product


def product_images(product: Product) -> Iterator[FieldFile]:
    if product.image:
        yield product.image
    for extra in product.gallery.all():
        yield extra.image
