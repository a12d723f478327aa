"""Segments: one product field (``SEGMENTS["FIELD"]``) whose values get HNSW indexes of their own.

pgvector applies a shop's filter after the index scan: to find 10 products of a category that
holds 1.6 % of a million, the scan walks thousands of rows of other categories (55-69 ms
here). A partial index per value holds only that value's rows, so the search costs what it
costs in a catalogue of that value's size (docs/benchmarks.md). An index predicate can only
name its own table, hence the copy of the value on each embedding row
(``ProductEmbedding.segment``), kept in step by product saves (signals.py) and by
``sync_segments`` (the ``visual_search_index`` command) after bulk updates that send no signal.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from django.db import connection, models
from django.db.models import ForeignObjectRel
from django.db.models.expressions import Col
from django.db.models.lookups import Exact
from django.db.models.sql.where import AND

from visual_search.conf import vs_settings
from visual_search.indexing import (
    TABLE,
    drop_index,
    ensure_index,
    index_name,
    quoted_column,
    quoted_table_and_pk,
    segment_indexes,
)
from visual_search.models import EmbeddingSpace, EmbeddingStatus, ProductEmbedding
from visual_search.models_registry import get_product_model

# Field types whose values read the same in Python (``segment_text``) and as SQL ``::text``.
TEXT_STABLE_FIELDS = (
    models.CharField,
    models.IntegerField,
    models.BooleanField,
    models.UUIDField,
    models.AutoField,
    models.BigAutoField,
    models.SmallAutoField,
)


def segment_field() -> models.Field | None:
    name = vs_settings.SEGMENTS["FIELD"]
    # A concrete field: system check E014 (field_problem) refuses anything else.
    return cast(models.Field, get_product_model()._meta.get_field(name)) if name else None


def field_problem(field: models.Field | ForeignObjectRel) -> str | None:
    """Why ``field`` cannot be the segment field, or None (system check E014)."""
    if (
        isinstance(field, ForeignObjectRel)
        or not field.concrete
        or field.many_to_many
        or field.one_to_many
    ):
        return "must be a concrete field of the product model (not a reverse or many-to-many)"
    stored = cast(models.ForeignKey, field).target_field if field.is_relation else field
    if not isinstance(stored, TEXT_STABLE_FIELDS):
        return (
            "must be a text, integer, boolean or UUID field, or a foreign key to a model whose "
            f"primary key is one ({type(stored).__name__} is not)"
        )
    return None


def segment_text(value: Any) -> str:
    """The stored form of a value; matches PostgreSQL's ``value::text`` for the allowed types."""
    if value is None:
        return ""
    if isinstance(value, models.Model):
        value = value.pk
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def segment_of(product: models.Model) -> str:
    field = segment_field()
    return "" if field is None else segment_text(getattr(product, field.attname))


def update_product_segment(product: models.Model) -> int:
    """Move a saved product's rows (in every space) to its current value; returns rows moved."""
    if segment_field() is None:
        return 0
    value = segment_of(product)
    return (
        ProductEmbedding.objects.filter(product_id=product.pk)
        .exclude(segment=value)
        .update(segment=value)
    )


def sync_segments(space: EmbeddingSpace) -> int:
    """Copy each product's value onto the space's rows where it differs, in one statement:
    after the setting is turned on or changed, or after ``QuerySet.update()`` moved products
    without sending signals. Returns the rows changed.

    Each moved row enters the space's HNSW index again (the column is in the indexes'
    predicates, so the update cannot be HOT): for many rows, drop that index first and build
    it after, as the ``visual_search_index`` command does."""
    value, source, condition = _stale_rows(segment_field())
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {TABLE} e SET segment = {value} {'FROM ' + source if source else ''} "
            f"WHERE e.space_id = %s AND {condition}",
            [space.name],
        )
        return cursor.rowcount


def stale_segments(space: EmbeddingSpace) -> int:
    """How many of the space's rows ``sync_segments`` would move."""
    _, source, condition = _stale_rows(segment_field())
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT count(*) FROM {TABLE} e {', ' + source if source else ''} "
            f"WHERE e.space_id = %s AND {condition}",
            [space.name],
        )
        return int(cursor.fetchone()[0])


def _stale_rows(field: models.Field | None) -> tuple[str, str, str]:
    """(the right value, the table it comes from, the condition) for rows ``e`` whose segment
    is not their product's."""
    if field is None:
        return "''", "", "e.segment <> ''"
    product_table, product_pk = quoted_table_and_pk(get_product_model())
    value = f"coalesce(p.{quoted_column(field)}::text, '')"
    return (
        value,
        f"{product_table} p",
        f"p.{product_pk} = e.product_id AND e.segment IS DISTINCT FROM {value}",
    )


def segment_sizes(space: EmbeddingSpace) -> dict[str, int]:
    """Ready images per value."""
    rows = (
        ProductEmbedding.objects.filter(space=space, status=EmbeddingStatus.READY)
        .exclude(segment="")
        .values_list("segment")
        .annotate(n=models.Count("id"))
    )
    return dict(rows)


def ensure_segment_indexes(
    space: EmbeddingSpace,
    *,
    rebuild: bool = False,
    progress: Callable[[str, int, float], None] | None = None,
) -> dict[str, float]:
    """Give every value with at least MIN_ROWS ready images its index (``rebuild``: build them
    all again) and drop the indexes of values that fell below it. Returns the seconds each
    build took; ``progress(value, rows, seconds)`` is called after each one."""
    minimum = int(vs_settings.SEGMENTS["MIN_ROWS"])
    wanted = {value: rows for value, rows in segment_sizes(space).items() if rows >= minimum}
    keep = {index_name(space.name, value) for value in wanted}
    for index in segment_indexes(space.name):
        if index.name not in keep:
            drop_index(index.name)
    built = {}
    for value, rows in sorted(wanted.items(), key=lambda item: -item[1]):
        built[value] = ensure_index(space, rebuild=rebuild, segment=value)
        if progress is not None:
            progress(value, rows, built[value])
    if wanted:
        # The planner picks a value's index over the space's from the column's statistics;
        # rows just moved or loaded may have none yet.
        with connection.cursor() as cursor:
            cursor.execute(f"ANALYZE {TABLE}")
    return built


def queryset_segment(queryset: models.QuerySet) -> tuple[str | None, bool]:
    """The value a queryset pins the segment field to (``filter(category=c)``), if any, and
    whether that is its only condition (then the search needs no other filter)."""
    field = segment_field()
    where = queryset.query.where
    if field is None or where.negated or where.connector != AND:
        return None, False
    pinned = [
        child.rhs
        for child in where.children
        if isinstance(child, Exact)
        and isinstance(child.lhs, Col)
        and child.lhs.target == field
        and child.rhs is not None
        and not hasattr(child.rhs, "resolve_expression")
    ]
    value = segment_text(pinned[0]) if pinned else "\x00"
    if "\x00" in value:  # nothing pinned, or a value PostgreSQL text cannot hold
        return None, False
    return value, len(where.children) == 1 and not queryset.query.is_sliced
