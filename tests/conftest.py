"""Fixtures: real photos, products of whichever model the settings name, a real Celery worker."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.db import connection

from visual_search import embedded
from visual_search.models_registry import get_product_model

REPO = Path(__file__).resolve().parent.parent
GROCERY = Path(
    os.environ.get("VISUAL_SEARCH_GROCERY_DIR", REPO.parent / "shared" / "data" / "grocery")
)


def grocery_photos(split: str, fine_class: str) -> list[Path]:
    """In-store photos of one product class, from the split's listing, in order."""
    listing = GROCERY / f"{split}.txt"
    if not listing.exists():
        raise FileNotFoundError(
            f"{listing} is missing: set VISUAL_SEARCH_GROCERY_DIR to the grocery data folder."
        )
    photos = []
    for line in listing.read_text().splitlines():
        path = line.split(",")[0].strip()
        if f"/{fine_class}/" in path:
            photos.append(GROCERY / path)
    assert photos, f"no {split} photos of {fine_class}"
    return photos


def grocery_studio_image(fine_class: str) -> Path:
    """The studio ("iconic") image of one product class, from classes.csv."""
    for line in (GROCERY / "classes.csv").read_text().splitlines()[1:]:
        name, *_, iconic, _ = line.split(",")
        if name == fine_class:
            return GROCERY / iconic.lstrip("/")
    raise LookupError(f"no product class {fine_class!r} in classes.csv")


@pytest.fixture
def studio_image() -> Callable[[str], Path]:
    return grocery_studio_image


@pytest.fixture
def photos() -> Callable[[str, str], list[Path]]:
    return grocery_photos


ProductFactory = Callable[..., Any]


@pytest.fixture
def make_product(db: None) -> ProductFactory:
    """Create a product of the configured model with a main photo (and gallery photos)."""
    model = get_product_model()

    def make(
        name: str, photo: Path | bytes | None, *, gallery: list[Path] = (), **fields: Any
    ) -> Any:
        content = photo.read_bytes() if isinstance(photo, Path) else photo
        filename = f"{name.lower().replace(' ', '-')}.jpg"
        category = fields.pop("category", None)
        if model._meta.label == "thirdparty.Product":
            product = model(title=name, **fields)
            if content is not None:
                product.photo.save(filename, ContentFile(content), save=False)
            product.save()
            return product
        from shop_demo.catalog.models import Category, ProductImage

        if isinstance(category, str):
            category, _ = Category.objects.get_or_create(name=category, slug=category.lower())
        product = model(
            name=name, slug=f"{filename[:-4]}-{model.objects.count()}", category=category, **fields
        )
        if content is not None:
            product.image.save(filename, ContentFile(content), save=False)
        product.save()
        for index, extra in enumerate(gallery):
            image = ProductImage(product=product, position=index)
            image.image.save(f"{filename[:-4]}-{index}.jpg", ContentFile(extra.read_bytes()))
        return product

    return make


@pytest.fixture(scope="session")
def celery_worker(
    django_db_setup: None, django_db_blocker: Any, tmp_path_factory: Any
) -> Iterator[Path]:
    """A real `celery worker` process (prefork, one child) on the test database and Redis."""
    from django.conf import settings

    with django_db_blocker.unblock():
        url = embedded.url_from_config(connection.settings_dict)
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": os.environ["DJANGO_SETTINGS_MODULE"],
        "DATABASE_URL": url,
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "VISUAL_SEARCH_TEST_MEDIA": str(settings.MEDIA_ROOT),
    }
    with open(log, "wb") as out:
        process = subprocess.Popen(
            embedded.worker_command(
                "shop_demo",
                "--without-heartbeat",
                "--hostname=vs-test@%h",
                "--purge",
                loglevel="INFO",
            ),
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 120
    while b" ready." not in log.read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail("The Celery worker did not start:\n" + log.read_text()[-4000:])
        time.sleep(0.2)
    yield log
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture
def broker_down() -> Iterator[None]:
    """The Celery app pointed at a broker that is not there, for the test's duration."""
    from shop_demo.celery import app

    original = app.conf.broker_url
    app.conf.broker_url = "redis+socket:///nonexistent/redis.sock"
    app._pool = None
    app.amqp._producer_pool = None
    yield
    app.conf.broker_url = original
    app._pool = None
    app.amqp._producer_pool = None


def wait_for(
    predicate: Callable[[], Any],
    *,
    timeout: float = 120,
    what: str = "condition",
    log: Path | None = None,
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    detail = "\n" + log.read_text()[-4000:] if log else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}{detail}")


def jpeg_bytes(
    size: tuple[int, int] = (64, 48), color: tuple[int, int, int] = (200, 30, 30), **save: Any
) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "JPEG", **save)
    return buffer.getvalue()


def synthetic_catalogue(
    n_products: int, n_clusters: int, dim: int, *, categories: int = 0, seed: int = 7
) -> tuple[Any, list[Any], Any, Any, Any]:
    """Products with clustered synthetic vectors (no encoder) and the space's index; with
    ``categories`` (shop model only), product i is in category ``c{i % categories}``."""
    import numpy as np

    from visual_search.encoders import get_encoder
    from visual_search.indexing import ensure_index
    from visual_search.models import EmbeddingSpace, EmbeddingStatus, ProductEmbedding

    model = get_product_model()
    if model._meta.label == "thirdparty.Product":
        model.objects.bulk_create(model(title=f"p{i}") for i in range(n_products))
    else:
        from shop_demo.catalog.models import Category

        made = Category.objects.bulk_create(
            Category(name=f"c{i}", slug=f"c{i}") for i in range(categories)
        )
        model.objects.bulk_create(
            model(name=f"p{i}", slug=f"p{i}", category=made[i % categories] if made else None)
            for i in range(n_products)
        )
    pks = list(model.objects.order_by("pk").values_list("pk", flat=True))
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dim))
    vectors = centres[rng.integers(0, n_clusters, n_products)] + 0.6 * rng.normal(
        size=(n_products, dim)
    )
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float16)
    space = EmbeddingSpace.objects.create(name=get_encoder().space, dimension=dim)
    ProductEmbedding.objects.bulk_create(
        [
            ProductEmbedding(
                product_id=pk,
                space=space,
                image_key="main",
                embedding=v.tolist(),
                status=EmbeddingStatus.READY,
                content_hash="x",
            )
            for pk, v in zip(pks, vectors, strict=True)
        ],
        batch_size=500,
    )
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # CREATE INDEX refuses pending triggers
    ensure_index(space)
    return space, pks, vectors.astype(np.float32), centres, rng


@pytest.fixture
def catalogue(make_product, photos):
    """Four real products, each with a train photo; embedded synchronously."""
    categories = {
        "Banana": "fruit",
        "Kiwi": "fruit",
        "Lemon": "fruit",
        "Arla-Standard-Milk": "dairy",
    }
    made = {
        name: make_product(name, photos("train", name)[0], category=category)
        for name, category in categories.items()
    }
    from visual_search import services

    services.embed_many([p.pk for p in made.values()])
    return made


@pytest.fixture(autouse=True)
def _fresh_space_caches():
    """Each test's database starts over, so must the per-process knowledge of its spaces."""
    from django.core.cache import cache

    from visual_search.spaces import forget_spaces

    cache.clear()
    forget_spaces()
    yield
    forget_spaces()
