"""Test settings where the products are the third-party app's (UUID keys, one image field)."""

from tests.settings import *  # noqa: F403

VISUAL_SEARCH_PRODUCT_MODEL = "thirdparty.Product"
VISUAL_SEARCH = {**VISUAL_SEARCH, "PRODUCT_IMAGES": "photo", "IMAGE_MODELS": {}}  # noqa: F405
