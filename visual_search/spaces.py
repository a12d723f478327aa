"""The embedding space the configured encoder writes and queries read."""

from __future__ import annotations

from visual_search.encoders import Encoder, get_encoder
from visual_search.models import EmbeddingSpace


def current_space_name() -> str:
    """The configured encoder's space name; builds the encoder object, loads no weights."""
    return get_encoder().space


# A space's dimension never changes once known, so its row is kept per process: queries
# then cost no extra round trip. Rows still without a dimension are read again each time.
_known: dict[str, EmbeddingSpace] = {}


def get_current_space() -> EmbeddingSpace | None:
    name = current_space_name()
    space = _known.get(name)
    if space is None:
        space = EmbeddingSpace.objects.filter(name=name).first()
        if space is not None and space.dimension is not None:
            _known[name] = space
    return space


def forget_spaces() -> None:
    _known.clear()
    from django.core.cache import caches

    from visual_search.conf import vs_settings

    try:
        base = current_space_name()
        caches[vs_settings.CACHE["ALIAS"]].delete(f"{_ACTIVE_KEY}:{base}")
    except Exception:  # the cache is an optimisation; the database is the truth
        pass


# Which derived space is active is read from the database at most every ACTIVE_TTL seconds
# per process (through the Django cache): switching is one transaction, and every process
# follows within that time (at once with a shared cache, which forget_spaces() clears).
_ACTIVE_KEY = "visual_search:active-space"
ACTIVE_TTL = 30


def query_space() -> EmbeddingSpace | None:
    """The space queries run in: the active space adapted from the current one, else it."""
    from django.core.cache import caches

    from visual_search.conf import vs_settings

    base = get_current_space()
    if base is None:
        return None
    cache = caches[vs_settings.CACHE["ALIAS"]]
    key = f"{_ACTIVE_KEY}:{base.name}"
    name = cache.get(key)
    if name is None:
        row = base.derived.filter(is_active=True).first()
        name = row.name if row else ""
        if row is not None:
            _known[row.name] = row
        cache.set(key, name, ACTIVE_TTL)
    if not name:
        return base
    space = _known.get(name) or EmbeddingSpace.objects.filter(name=name).first()
    if space is None:
        return base
    _known[name] = space
    return space


def ensure_current_space(encoder: Encoder | None = None, *, with_dimension: bool) -> EmbeddingSpace:
    """The current space's row, created if missing; ``with_dimension`` loads the encoder."""
    encoder = encoder or get_encoder()
    space, _ = EmbeddingSpace.objects.get_or_create(
        name=encoder.space, defaults={"encoder": encoder.describe()}
    )
    if with_dimension and space.dimension is None:
        space.dimension = encoder.dimension
        space.save(update_fields=["dimension"])
    return space
