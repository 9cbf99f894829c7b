"""Stage a running experiment folder for a commit without stopping its search.

The tables and checkpoints are replaced atomically by the search, so their
current files are consistent; study.db is a live SQLite database, so a
snapshot taken with SQLite's online backup API is staged in its place (the
working file is not touched). Usage:

    python scripts/commit_experiment.py results/compression-paper-w8/grid [...]
    git commit -m "..."
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

SKIP = {"search.lock"}


def stage(exp_dir: Path) -> None:
    # first the files the search deleted since the last commit (an ended trial's checkpoint);
    # this stages the live study.db too, which the snapshot below replaces
    subprocess.run(["git", "add", "-u", str(exp_dir)], check=True)
    for path in sorted(exp_dir.rglob("*")):
        if not path.is_file() or "ray" in path.relative_to(exp_dir).parts or path.name in SKIP:
            continue
        if path.name.startswith(".") and path.suffix == ".tmp":
            continue  # an atomic write in flight
        if path.name == "study.db":
            with tempfile.TemporaryDirectory() as d:
                copy = Path(d) / "study.db"
                with sqlite3.connect(path) as live, sqlite3.connect(copy) as snap:
                    live.backup(snap)
                blob = subprocess.run(["git", "hash-object", "-w", str(copy)], check=True, capture_output=True,
                                      text=True).stdout.strip()
            subprocess.run(["git", "update-index", "--add", "--cacheinfo", f"100644,{blob},{path}"], check=True)
        else:
            subprocess.run(["git", "add", "-f", str(path)], check=True)


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        stage(Path(arg))
