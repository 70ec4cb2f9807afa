"""What a Bytewax recovery store (``-r DIR``) holds: the book states a resume would use.

Shared by the one-process recovery test and the cluster's restart across hosts, where
each member holds its own partition files (one directory per member).
"""

from __future__ import annotations

import io
import pickle
import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.support.flow import REPO

BOOK_STEP = "orderbook.order_book"
"""The book step's id; Bytewax saves its state under ids nested below it."""


class _Recorder(pickle.Unpickler):
    """Unpickles a saved state while noting every class it names."""

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self.classes: set[str] = set()

    def find_class(self, module: str, name: str):
        self.classes.add(f"{module}.{name}")
        return super().find_class(module, name)


def saved_book_states(*dbs: Path) -> dict[str, set[str]]:
    """Per state key of the book step, the classes its latest saved state names, of
    the epoch a resume would start from: the least committed epoch of every partition
    of ``dbs`` (none when a partition has committed nothing yet)."""
    parts = sorted(p for db in dbs for p in db.glob("*.sqlite3"))
    commits = []
    for part in parts:
        with sqlite3.connect(part) as conn:
            commits.append(
                conn.execute("SELECT MIN(commit_epoch) FROM commits").fetchone()[0]
            )
    if not parts or None in commits:
        return {}
    committed = min(commits)
    states: dict[str, set[str]] = {}
    for part in parts:
        with sqlite3.connect(part) as conn:
            rows = conn.execute(
                "SELECT state_key, ser_change FROM snaps "
                "WHERE (step_id = ? OR step_id LIKE ?) AND snap_epoch <= ? "
                "ORDER BY snap_epoch",
                (BOOK_STEP, BOOK_STEP + ".%", committed),
            ).fetchall()
        for key, blob in rows:
            if blob is not None:
                recorder = _Recorder(blob)
                recorder.load()
                states[key] = recorder.classes
    return states


def state_product(state_key: str) -> str:
    """The product of a book step's state key (``PRODUCT~...``)."""
    return state_key.split("~", 1)[0]


def split_store(folder: Path, members: int) -> list[Path]:
    """A fresh store of one partition per member (``python -m bytewax.recovery``), each
    partition file in a directory of its own (``folder/member<i>``): what each host of a
    cluster holds locally."""
    made = folder / "all"
    made.mkdir(parents=True)
    subprocess.run(
        [sys.executable, "-m", "bytewax.recovery", str(made), str(members)],
        check=True,
        cwd=REPO,
    )
    dirs = []
    for i, part in enumerate(sorted(made.glob("*.sqlite3"))):
        own = folder / f"member{i}"
        own.mkdir()
        part.rename(own / part.name)
        dirs.append(own)
    assert len(dirs) == members, dirs
    return dirs
