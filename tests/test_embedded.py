"""The embedded PostgreSQL the demo, the tests and the benchmarks start from PyPI packages."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import psycopg

from visual_search import embedded


def test_a_server_stopped_in_this_process_starts_again():
    # scale.py --shared-buffers restarts the server in one process; pgserver hands back its
    # object for the folder as it was, stopped.
    folder = Path(tempfile.mkdtemp(prefix="vs-embedded-"))
    folder.chmod(0o777)  # as root, pgserver runs postgres as its own user
    try:
        url = embedded.start_postgres(folder)
        with psycopg.connect(url) as conn:
            conn.execute("CREATE TABLE kept (n int); INSERT INTO kept VALUES (7)")
        embedded.stop_postgres(folder)
        assert not (folder / "postgres" / "postmaster.pid").exists()
        with psycopg.connect(embedded.start_postgres(folder)) as conn:
            assert conn.execute("SELECT n FROM kept").fetchone() == (7,)
    finally:
        embedded.stop_postgres(folder)
        shutil.rmtree(folder, ignore_errors=True)
