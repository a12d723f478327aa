"""The HNSW index of each embedding space, and of each large segment (segments.py).

The vector column has no fixed dimension (spaces differ), so each space gets a partial
expression index ``USING hnsw ((embedding::halfvec(N)) halfvec_cosine_ops) WHERE space_id =
'<space>'``; queries.py repeats the same cast and predicate so the planner can use it. A
segment's index adds ``AND segment = '<value>'`` to that predicate.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from django.db import DatabaseError, connection, models, transaction

from visual_search.conf import vs_settings
from visual_search.models import EmbeddingSpace, EmbeddingStatus, ProductEmbedding

TABLE = ProductEmbedding._meta.db_table

logger = logging.getLogger(__name__)


def index_name(space: str, segment: str | None = None) -> str:
    """The space's index, or (with ``segment``) the index of one value of SEGMENTS["FIELD"]."""
    if segment is not None:
        return f"{segment_index_prefix(space)}{hashlib.sha1(segment.encode()).hexdigest()[:12]}"
    slug = re.sub(r"[^a-z0-9]+", "_", space.lower()).strip("_")[:30]
    return f"vs_hnsw_{slug}_{hashlib.sha1(space.encode()).hexdigest()[:8]}"


def segment_index_prefix(space: str) -> str:
    return f"vs_seg_{hashlib.sha1(space.encode()).hexdigest()[:8]}_"


def quoted_table_and_pk(model: type[models.Model]) -> tuple[str, str]:
    """The product table and its key column, quoted for the raw SQL that joins them."""
    return connection.ops.quote_name(model._meta.db_table), quoted_column(model._meta.pk)


def quoted_column(field: models.Field) -> str:
    if field.column is None:  # only a concrete field has a column
        raise ValueError(f"{field} has no database column.")
    return connection.ops.quote_name(field.column)


def vector_expression(dimension: int) -> str:
    return f"(embedding::halfvec({int(dimension)}))"


def _quote_literal(value: str) -> str:
    """An escape-string literal: safe whatever standard_conforming_strings says (a segment
    value may come from an API query parameter)."""
    if "\x00" in value:
        raise ValueError("PostgreSQL text cannot hold NUL characters")
    return "E'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def index_predicate(space: str, segment: str | None = None) -> str:
    # Literals, not parameters: a partial index is only used when the query's predicate
    # provably implies it, which the planner checks on constants.
    predicate = (
        f"space_id = {_quote_literal(space)} AND status = {_quote_literal(EmbeddingStatus.READY)}"
    )
    if segment is not None:
        predicate += f" AND segment = {_quote_literal(segment)}"
    return predicate


@dataclass
class IndexState:
    name: str
    exists: bool
    valid: bool
    size_bytes: int


def index_state(space: str, segment: str | None = None) -> IndexState:
    name = index_name(space, segment)
    found = _states("c.relname = %s", name)
    return found[0] if found else IndexState(name, False, False, 0)


def segment_indexes(space: str) -> list[IndexState]:
    """The space's segment indexes, an invalid leftover of an interrupted build included."""
    return _states("starts_with(c.relname, %s)", segment_index_prefix(space))


def _states(condition: str, value: str) -> list[IndexState]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, i.indisvalid, pg_relation_size(c.oid) FROM pg_class c "
            f"JOIN pg_index i ON i.indexrelid = c.oid WHERE {condition}",
            [value],
        )
        return [IndexState(name, True, valid, int(size)) for name, valid, size in cursor.fetchall()]


def ensure_index(
    space: EmbeddingSpace,
    *,
    rebuild: bool = False,
    segment: str | None = None,
    on_wait: Callable[[], None] | None = None,
) -> float:
    """Create (or rebuild) the space's HNSW index, or one segment's; returns the seconds it
    took (0 when there was nothing to do, or another session was building it).

    Outside a transaction it is built CONCURRENTLY, so writes go on meanwhile; an invalid
    index left by an interrupted concurrent build is dropped and built again. One session at
    a time builds an index: without that, a worker embedding new products would see the
    index missing for the instant a rebuild swaps it, and drop the rebuild's new index.
    ``on_wait`` is called once when a rebuild has to wait for another session's build.
    """
    state = index_state(space.name, segment)
    if state.exists and state.valid and not rebuild:
        return 0.0
    predicate = index_predicate(space.name, segment)
    if connection.in_atomic_block:
        # Inside a caller's transaction: no CONCURRENTLY, and a failure (e.g. pending
        # deferred-constraint triggers) must not break the caller's work.
        try:
            with transaction.atomic():
                if not _advisory(state.name, "pg_try_advisory_xact_lock"):
                    return 0.0
                return _build_unless_valid(space, segment, predicate, rebuild, concurrently="")
        except DatabaseError as exc:
            logger.warning("HNSW index for %s not built inside a transaction: %s", space.name, exc)
            return 0.0
    with build_lock(state.name, wait=rebuild, on_wait=on_wait) as held:
        if not held:
            return 0.0
        return _build_unless_valid(space, segment, predicate, rebuild, concurrently="CONCURRENTLY")


def _build_unless_valid(
    space: EmbeddingSpace, segment: str | None, predicate: str, rebuild: bool, *, concurrently: str
) -> float:
    # Read again under the lock: as its last holder left it.
    state = index_state(space.name, segment)
    if state.exists and state.valid and not rebuild:
        return 0.0
    return _build(space, state, predicate, concurrently=concurrently)


def build_lock_key(name: str) -> int:
    """The advisory lock key of an index's builds: a signed 64-bit hash of its name."""
    return int.from_bytes(hashlib.sha1(f"visual_search:{name}".encode()).digest()[:8], signed=True)


def _advisory(name: str, function: str) -> bool:
    """Call one of PostgreSQL's advisory lock functions on the index's build lock."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {function}(%s)", [build_lock_key(name)])
        return bool(cursor.fetchone()[0])


@contextmanager
def build_lock(
    name: str,
    *,
    wait: bool,
    on_wait: Callable[[], None] | None = None,
    poll_seconds: float = 0.5,
) -> Iterator[bool]:
    """Hold the session-level advisory lock of an index's builds; yields whether it is held.

    Waiting polls instead of blocking in ``pg_advisory_lock``: a session blocked there holds
    a snapshot, which the holder's CREATE INDEX CONCURRENTLY would wait for in turn.
    """
    held = _advisory(name, "pg_try_advisory_lock")
    if wait and not held and on_wait is not None:
        on_wait()
    while wait and not held:
        time.sleep(poll_seconds)
        held = _advisory(name, "pg_try_advisory_lock")
    try:
        yield held
    finally:
        if held:
            try:
                _advisory(name, "pg_advisory_unlock")
            except DatabaseError:  # a lost connection took its lock with it
                logger.warning("Could not release the build lock of %s", name, exc_info=True)


def drop_index(name: str) -> None:
    concurrently = "" if connection.in_atomic_block else "CONCURRENTLY"
    with connection.cursor() as cursor:
        cursor.execute(f'DROP INDEX {concurrently} IF EXISTS "{name}"')


def drop_space_indexes(space: str) -> None:
    """Drop a deleted space's HNSW index and its segment indexes. Left behind, each
    re-adaptation would keep its predecessor's index (as large as the space)."""
    for name in [index_name(space)] + [state.name for state in segment_indexes(space)]:
        drop_index(name)


def _build(space: EmbeddingSpace, state: IndexState, predicate: str, *, concurrently: str) -> float:
    """Build under a temporary name, then swap: queries keep their index during a rebuild
    (an invalid leftover is dropped first, it serves no query)."""
    hnsw = vs_settings.HNSW
    started = time.monotonic()
    building = f"{state.name}_new"
    with connection.cursor() as cursor:
        if state.exists and not state.valid:
            cursor.execute(f'DROP INDEX {concurrently} IF EXISTS "{state.name}"')
        cursor.execute(f'DROP INDEX {concurrently} IF EXISTS "{building}"')
        cursor.execute(
            "SELECT set_config('maintenance_work_mem', %s, false)",
            [str(hnsw["MAINTENANCE_WORK_MEM"])],
        )
        cursor.execute(
            f'CREATE INDEX {concurrently} "{building}" ON {TABLE} '
            f"USING hnsw ({vector_expression(space.known_dimension)} halfvec_cosine_ops) "
            f"WITH (m = {int(hnsw['M'])}, ef_construction = {int(hnsw['EF_CONSTRUCTION'])}) "
            f"WHERE {predicate}"
        )
        cursor.execute("RESET maintenance_work_mem")
        if state.exists and state.valid:
            cursor.execute(f'DROP INDEX {concurrently} IF EXISTS "{state.name}"')
        cursor.execute(f'ALTER INDEX "{building}" RENAME TO "{state.name}"')
    return time.monotonic() - started
