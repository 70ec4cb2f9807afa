"""``text`` and ``jsonl`` records: on stdout, or appended to a file (``KIND:PATH``).

Every batch is written with one ``write`` and flushed at once, so a downstream reader sees
each record within milliseconds and lines from several workers never interleave.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import TextIO

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from service import runtime
from service.outputs.registry import OutputKind, register
from service.runtime import run_closers


def record_stream() -> TextIO:
    """The stream records go to when an output names no file (the original stdout)."""
    return runtime.record_stream()


def format_text(record) -> str:
    return str(record)


def format_jsonl(record) -> str:
    return record.to_json()


FORMATTERS = {"text": format_text, "jsonl": format_jsonl}


def _reader_went_away() -> None:
    """``... | head`` closed our stdout: stop quietly, like any Unix filter."""
    try:
        sys.stderr.write("orderbook: output closed by its reader, stopping\n")
        sys.stderr.flush()
        run_closers()  # finish the other outputs' files
    finally:
        os._exit(0)


class _StreamPartition(StatelessSinkPartition):
    def __init__(self, stream: TextIO, formatter) -> None:
        self._stream = stream
        self._format = formatter

    def write_batch(self, items: list) -> None:
        if items:
            try:
                self._stream.write("".join(self._format(s) + "\n" for s in items))
                self._stream.flush()
            except BrokenPipeError:
                _reader_went_away()


class _AppendFilePartition(StatelessSinkPartition):
    """Appends with O_APPEND so that workers of several processes can share one file."""

    def __init__(self, path: Path, formatter) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._format = formatter

    def write_batch(self, items: list) -> None:
        if items:
            data = memoryview("".join(self._format(s) + "\n" for s in items).encode())
            # a regular file takes it all at once, bar a signal or a full disk
            while data:
                data = data[os.write(self._fd, data) :]

    def close(self) -> None:
        os.close(self._fd)


class StreamSink(DynamicSink):
    """``text`` or ``jsonl`` records to :func:`record_stream`, or appended to ``path``."""

    def __init__(self, fmt: str = "text", path: Path | None = None) -> None:
        if fmt not in FORMATTERS:
            raise ValueError(
                f"output format {fmt!r} is not one of {', '.join(FORMATTERS)}"
            )
        self._format = FORMATTERS[fmt]
        self._path = path

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> StatelessSinkPartition:
        if self._path is not None:
            return _AppendFilePartition(self._path, self._format)
        return _StreamPartition(record_stream(), self._format)


SummarySink = StreamSink
"""The former name."""


def check_file(arg: str | None) -> str | None:
    """A file that records can be appended to, tried at start.

    Refused: a directory, a missing parent directory, a file that cannot be opened for
    appending, a file system with no free space, and a device that fails a write of one
    empty line (``/dev/full``). A regular file is not written to here, so that an
    existing file stays byte for byte what it was.
    """
    if arg is None:
        return None
    path = Path(arg)
    if path.is_dir():
        raise ValueError(f"{arg} is a directory")
    if not path.parent.is_dir():
        raise ValueError(f"directory {str(path.parent)!r} does not exist")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o644)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISREG(mode):
            fs = os.fstatvfs(fd)
            if fs.f_bavail == 0 and fs.f_blocks:
                raise ValueError(f"{arg}: no space left on its file system")
        elif stat.S_ISCHR(mode):
            os.write(fd, b"\n")
    finally:
        os.close(fd)
    return arg


def _build(fmt: str):
    def build(arg: str | None) -> DynamicSink:
        return StreamSink(fmt, None if arg is None else Path(arg))

    return build


for _rank, _name in enumerate(("text", "jsonl")):
    register(
        OutputKind(
            _name,
            build=_build(_name),
            arg="optional",
            help=f"{_name}[:PATH]",
            check=check_file,
            rank=_rank,
        )
    )
