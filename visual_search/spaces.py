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
