"""The embedding space the configured encoder writes and queries read."""

from __future__ import annotations

from visual_search.encoders import Encoder, get_encoder
from visual_search.models import EmbeddingSpace


def current_space_name() -> str:
    """The configured encoder's space name; builds the encoder object, loads no weights."""
    return get_encoder().space


def get_current_space() -> EmbeddingSpace | None:
    return EmbeddingSpace.objects.filter(name=current_space_name()).first()


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
