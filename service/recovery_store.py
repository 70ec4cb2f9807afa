"""The recovery store of ``python -m bytewax.run ... -r DIR``, checked before Bytewax opens it.

Bytewax 0.21.1 opens the store's partition files in Rust and unwraps every SQLite error:
a damaged partition (truncated, overwritten, not a database), a missing directory, or a
directory without partitions ended the run with a 66- to 75-line panic. Checked here
first, each refuses the run in one line that names the file and what to do.

The check opens each ``*.sqlite3`` file of the directory with SQLite, runs
``PRAGMA quick_check`` (which reads every page: 2 ms for a fresh 32 KB partition) and
looks for the tables Bytewax creates and for its partition row. Under ``-i``/``-a`` a
process may hold no partition of its own (they are spread over the cluster), so an empty
directory is refused only when the process runs alone.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from collections.abc import Mapping, Sequence
from contextlib import closing
from pathlib import Path

from common.text import shown
from common.validation import ConfigError
from service.cluster import cluster_place

__all__ = ["check_recovery_store", "recovery_directory"]

BYTEWAX_TABLES = frozenset({"parts", "exs", "fronts", "commits", "snaps"})
"""The tables ``python -m bytewax.recovery DIR N`` creates in every partition file."""
_REMEDY = (
    "restore the store from a backup, or start afresh with a new one "
    "(python -m bytewax.recovery DIR PARTITIONS)"
)


def recovery_directory(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> Path | None:
    """The directory given to ``bytewax.run`` by ``-r``/``--recovery-directory`` or
    ``BYTEWAX_RECOVERY_DIRECTORY`` (read as ``bytewax.run`` reads them), or None."""
    argv = sys.argv[1:] if argv is None else argv
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    parser.add_argument(
        "-r", "--recovery-directory", default=env.get("BYTEWAX_RECOVERY_DIRECTORY")
    )
    try:
        args, _ = parser.parse_known_args(list(argv))
    except (argparse.ArgumentError, SystemExit):
        return None  # bytewax.run says what is wrong with its own arguments
    return Path(args.recovery_directory) if args.recovery_directory else None


def check_recovery_store(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> Path | None:
    """Refuse (:class:`ConfigError`, one line) a recovery store Bytewax would panic on;
    returns the directory checked, or None when the run has no recovery store."""
    argv = sys.argv[1:] if argv is None else argv
    env = os.environ if env is None else env
    directory = recovery_directory(argv, env)
    if directory is None:
        return None
    if not directory.is_dir():
        raise ConfigError(
            f"recovery store {shown(directory, 200)}: no such directory; create it "
            f"with python -m bytewax.recovery {shown(directory, 200)} PARTITIONS"
        )
    parts = sorted(directory.glob("*.sqlite3"))
    if not parts and cluster_place(argv, env) is None:
        raise ConfigError(
            f"recovery store {shown(directory, 200)}: no partition files (*.sqlite3) "
            f"in it; create them with python -m bytewax.recovery "
            f"{shown(directory, 200)} PARTITIONS"
        )
    for part in parts:
        problem = _partition_problem(part)
        if problem is not None:
            raise ConfigError(
                f"recovery store file {shown(part, 200)} {problem}: {_REMEDY}"
            )
    return directory


def _partition_problem(path: Path) -> str | None:
    """What makes ``path`` unusable as a Bytewax recovery partition, or None."""
    try:
        # mode=rw: never create a file; a hot journal is rolled back, as Bytewax would.
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True)
    except (sqlite3.Error, OSError, ValueError) as exc:
        return f"cannot be opened ({shown(exc, 120)})"
    try:
        with closing(conn):
            verdict = conn.execute("PRAGMA quick_check").fetchone()
            if verdict is None or verdict[0] != "ok":
                detail = verdict[0] if verdict else "no verdict"
                return f"is damaged (SQLite's quick_check: {shown(detail, 120)})"
            tables = {
                row[0]
                for row in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'"
                )
            }
            missing = sorted(BYTEWAX_TABLES - tables)
            if missing:
                return (
                    "is not a Bytewax recovery partition (no table "
                    + ", ".join(missing)
                    + ")"
                )
            if conn.execute("SELECT count(*) FROM parts").fetchone()[0] != 1:
                return "is damaged (its partition row is missing)"
    except sqlite3.Error as exc:
        return f"is damaged ({shown(exc, 120)})"
    return None
