"""Settings for mypy's Django plugin (pyproject.toml): the demo shop's apps, which the plugin
only imports. Unlike tests.settings, importing them starts no embedded database or broker."""

SECRET_KEY = "type-checking"
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "rest_framework",
    "shop_demo.catalog",
    "visual_search",
]
DATABASES = {"default": {"ENGINE": "django.db.backends.postgresql", "NAME": "unused"}}
VISUAL_SEARCH_PRODUCT_MODEL = "catalog.Product"
