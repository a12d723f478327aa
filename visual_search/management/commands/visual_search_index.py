from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from visual_search.conf import vs_settings
from visual_search.indexing import drop_index, ensure_index, index_state
from visual_search.models import EmbeddingSpace
from visual_search.segments import ensure_segment_indexes, stale_segments, sync_segments
from visual_search.spaces import current_space_name

# Above this share of a space's rows moving to another segment, its index is built anew.
REBUILD_SHARE = 0.2


class Command(BaseCommand):
    help = (
        "Create (or --rebuild) the HNSW index of an embedding space, and one per value of "
        "SEGMENTS['FIELD'] with at least SEGMENTS['MIN_ROWS'] images, concurrently."
    )
    requires_migrations_checks = True  # warn before a missing table fails the command

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--space", help="Embedding space (default: the configured encoder's).")
        parser.add_argument("--rebuild", action="store_true", help="Drop and build them again.")

    def handle(self, *args: Any, space: str | None, rebuild: bool, **options: Any) -> None:
        name = space or current_space_name()
        row = EmbeddingSpace.objects.filter(name=name).first()
        if row is None or row.dimension is None:
            raise CommandError(f"Space {name!r} has no embeddings yet; nothing to index.")
        self._sync_segments(row)
        self._space_index(row, rebuild)
        field = vs_settings.SEGMENTS["FIELD"]
        built = ensure_segment_indexes(row, rebuild=rebuild, progress=self._segment_progress)
        if field:
            self.stdout.write(
                self.style.SUCCESS(
                    f"{len(built)} values of {field!r} have an index of their own (at least "
                    f"{vs_settings.SEGMENTS['MIN_ROWS']} images each)."
                )
            )

    def _sync_segments(self, row: EmbeddingSpace) -> None:
        stale = stale_segments(row)
        if not stale:
            return
        state = index_state(row.name)
        if stale > row.embeddings.count() * REBUILD_SHARE and state.exists:
            # Each moved row would enter the graph again, one insert at a time: slower than
            # building it anew, and it would leave as many dead entries.
            self.stdout.write(
                f"{stale} embeddings change segment: dropping {state.name} while they move "
                "(queries scan exactly meanwhile), then building it again."
            )
            drop_index(state.name)
        moved = sync_segments(row)
        self.stdout.write(f"Moved {moved} embeddings to their product's current segment.")

    def _space_index(self, row: EmbeddingSpace, rebuild: bool) -> None:
        state = index_state(row.name)
        if state.exists and state.valid and not rebuild:
            self.stdout.write(
                f"Index {state.name} already exists and is valid ({state.size_bytes // 1024} kB)."
            )
            return
        hnsw = vs_settings.HNSW
        self.stdout.write(
            f"Building {state.name} concurrently (m={hnsw['M']}, ef_construction="
            f"{hnsw['EF_CONSTRUCTION']}, maintenance_work_mem={hnsw['MAINTENANCE_WORK_MEM']})..."
        )
        seconds = ensure_index(
            row,
            rebuild=True,
            on_wait=lambda: self.stdout.write(
                "Another session is building this index; waiting for it to finish..."
            ),
        )
        state = index_state(row.name)
        if not state.valid:
            raise CommandError(f"The index {state.name} was not built correctly; run again.")
        self.stdout.write(
            self.style.SUCCESS(
                f"Built {state.name} in {seconds:.2f} s ({state.size_bytes // 1024} kB)."
            )
        )

    def _segment_progress(self, value: str, rows: int, seconds: float) -> None:
        done = f"built in {seconds:.2f} s" if seconds else "already valid"
        self.stdout.write(f"  segment {value!r} ({rows} images): {done}", ending="\n")
        self.stdout.flush()
