"""``text`` and ``jsonl`` records: on stdout, or appended to a file (``KIND:PATH``).

Every batch is written with one ``write`` and flushed at once, so a downstream reader sees
each record within milliseconds and lines from several workers never interleave.

A FIFO (named pipe) works as a file: the start check opens it without blocking and keeps
that descriptor for the sink, so a reader already waiting (``cat FIFO``) never sees an
end of file between the check and the run; a FIFO nobody reads is refused at start in
one line. Two entries naming one file (``jsonl:F,text:./F``, a link to it) or both stdout
(``text,jsonl``) are refused: every record would be written twice.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from pathlib import Path
from typing import TextIO

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from service.outputs.registry import OutputKind, ReaderGone
from service.runtime import record_stream


def format_text(record) -> str:
    return str(record)


def format_jsonl(record) -> str:
    return record.to_json()


FORMATTERS = {"text": format_text, "jsonl": format_jsonl}


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
                raise ReaderGone from None  # ``... | head``: not a failure


class _AppendFilePartition(StatelessSinkPartition):
    """Appends with O_APPEND so that workers of several processes can share one file."""

    def __init__(self, path: Path, formatter) -> None:
        self._fd = _open_for_append(path)
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
    """``text`` or ``jsonl`` records to the process's stdout kept for records
    (:func:`service.runtime.record_stream`), or appended to ``path``."""

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


_FIFOS: dict[tuple[int, int], int] = {}
"""FIFOs opened by the start check, by (device, inode): the descriptor kept for the sink."""
_FIFOS_LOCK = threading.Lock()


def _open_for_append(path: Path | str) -> int:
    """A descriptor appending to ``path``, without ever blocking: a FIFO is opened
    non-blocking (its kept descriptor reused when the start check opened it), and
    one with no reader fails with a clear OSError instead of waiting forever."""
    try:
        fd = os.open(
            path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o644
        )
    except OSError as exc:
        if exc.errno == errno.ENXIO and _is_fifo(path):
            raise OSError(exc.errno, f"{path} is a FIFO with no reader") from None
        raise
    info = os.fstat(fd)
    if stat.S_ISFIFO(info.st_mode):
        with _FIFOS_LOCK:
            kept = _FIFOS.get((info.st_dev, info.st_ino))
            if kept is None:  # this descriptor is the process's kept one from now on
                _FIFOS[(info.st_dev, info.st_ino)] = fd
                fd = os.dup(fd)
            else:
                os.close(fd)
                fd = os.dup(kept)
    os.set_blocking(fd, True)  # a slow reader slows the run down; nothing is dropped
    return fd


def _is_fifo(path: Path | str) -> bool:
    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except OSError:
        return False


def check_file(kind: str, arg: str | None) -> str | None:
    """A file that records can be appended to, tried at start.

    Refused: an empty path, a directory, a missing parent directory, a file that
    cannot be opened for appending, a FIFO with no reader, a file system with no free
    space, and a device that fails a write of one empty line (``/dev/full``). A regular
    file is not written to here, so that an existing file stays byte for byte what it
    was; a FIFO is opened once and kept open for the sink (see the module docstring).
    """
    if arg is None:
        return None
    if not arg:
        raise ValueError(f"the path is empty: write {kind!r} alone for stdout")
    path = Path(arg)
    if path.is_dir():
        raise ValueError(f"{arg} is a directory")
    if not path.parent.is_dir():
        raise ValueError(f"directory {str(path.parent)!r} does not exist")
    try:
        fd = _open_for_append(path)
    except OSError as exc:
        if exc.errno == errno.ENXIO and _is_fifo(path):  # not "No such device"
            raise ValueError(exc.strerror) from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISREG(mode):
            fs = os.fstatvfs(fd)
            if fs.f_bavail == 0 and fs.f_blocks:
                raise ValueError(f"{arg}: no space left on its file system")
        elif stat.S_ISCHR(mode):
            os.set_blocking(fd, False)
            os.write(fd, b"\n")
    finally:
        os.close(fd)  # a FIFO's kept descriptor stays open
    return arg


def file_targets(arg: str | None) -> list[tuple]:
    """Where an entry writes: stdout, or a file by device and inode (after the check
    created it), so that a second name for it (``./F``, a link) is the same target."""
    if arg is None:
        return [("the same stream (stdout)",)]
    info = os.stat(arg)
    return [("the same file", info.st_dev, info.st_ino)]


def _kind(fmt: str, help_form: str) -> OutputKind:
    return OutputKind(
        fmt,
        build=lambda arg, shutdown: StreamSink(fmt, None if arg is None else Path(arg)),
        arg="optional",
        help=help_form,
        check=lambda arg: check_file(fmt, arg),
        targets=file_targets,
    )


TEXT = _kind("text", "text[:PATH]")
JSONL = _kind("jsonl", "jsonl[:PATH]")
