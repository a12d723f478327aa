"""A grocery shop built on visual_search the way any shop would use it."""

from shop_demo.celery import app as celery_app

__all__ = ["celery_app"]
