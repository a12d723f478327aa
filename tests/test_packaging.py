"""The wheel a shop installs holds the whole app: templates, static files, migrations, the
py.typed marker (so the shop's type checker reads the app's hints) and the license, not just
its modules."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_holds_every_file_of_the_app(tmp_path):
    # Built from a copy of what the Dockerfile copies to install the package: a checkout's
    # build/ and egg-info/ would remember files from earlier builds.
    tree = tmp_path / "tree"
    shutil.copytree(
        ROOT / "visual_search",
        tree / "visual_search",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, tree / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(tree)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = tmp_path.glob("*.whl")
    packaged = set(zipfile.ZipFile(wheel).namelist())
    source = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "visual_search").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert {"visual_search/py.typed", "visual_search/migrations/0001_initial.py"} <= source
    assert any(name.startswith("visual_search/templates/") for name in source)
    assert any(name.startswith("visual_search/static/") for name in source)
    assert source - packaged == set()
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in packaged)
