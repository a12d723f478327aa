"""Settings for mypy's Django plugin (pyproject.toml), which only imports the apps: the demo
shop's, with service addresses given so that no embedded database or broker is started."""

import os

os.environ.setdefault("DATABASE_URL", "postgres://type-checking@localhost/unused")
os.environ.setdefault("CELERY_BROKER_URL", "memory://")

from shop_demo.settings import *  # noqa: E402, F403
