"""What an output kind is, and how ``ORDERBOOK_OUTPUT``'s list is parsed and checked.

The list's syntax, its checks and the refusals are described in docs/outputs.md
("Several outputs"). A kind is an :class:`OutputKind`: a name, whether it takes an
argument, a check run at start (it may try opening files or brokers: a bad entry is
refused before any data flows) and a builder of its Bytewax sink. Each kind's module
exposes its kind; ``service/outputs/__init__.py`` lists them all, in one tuple: adding a
kind is its module and one line there. Entries that turn on a view instead (``live``)
are parsed here too, so that the list reads and is refused as one.

Two entries that write to one place are refused: every record would be written twice.
Each kind says where an entry writes with ``targets``. Secrets never reach a message: an
entry shown in a refusal or a failure line has the values of secret-looking settings
after its ``?`` replaced by ``***`` (:func:`common.text.redact_url`), as does the whole
list when a refusal repeats it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from bytewax.outputs import DynamicSink

from common.text import redact_url, shown
from common.validation import ConfigError, refuse

if TYPE_CHECKING:
    from service.runtime import Shutdown

SETTING = "ORDERBOOK_OUTPUT"


@dataclass(frozen=True)
class OutputSpec:
    """One entry of ``ORDERBOOK_OUTPUT``, checked: ``kind`` and its ``arg`` (or None)."""

    kind: str
    arg: str | None = None
    depth: tuple[int, float] | None = field(default=None, compare=False, repr=False)
    """``(levels, interval)`` of the depth records, for a kind that writes them
    (:attr:`OutputKind.needs_depth`): set by :func:`with_depth`."""

    def __str__(self) -> str:
        return self.kind if self.arg is None else f"{self.kind}:{self.arg}"

    @property
    def shown(self) -> str:
        """The entry as messages show it: secrets redacted."""
        return shown_entry(str(self))


def shown_entry(entry: str) -> str:
    """An entry (or a whole list) safe for a message: the value of every secret-looking
    setting after a ``?`` replaced by ``***`` (``kafka:h:9092/t?sasl.password=***``)."""
    if "?" not in entry and "@" not in entry:
        return entry
    return ",".join(
        redact_url(part.strip()) if "?" in part or "@" in part else part
        for part in entry.split(",")
    )


@dataclass(frozen=True)
class OutputKind:
    """A kind of output.

    ``arg``: "none", "optional" or "required". ``check(arg)`` runs at start and raises
    ``ValueError`` (or ``OSError``) saying why the entry cannot work; it returns the
    argument in canonical form. ``targets(arg)`` (after the check) names where the entry
    writes, as tuples whose first item says what it is ("the same file"): two entries
    sharing one are refused. ``build(arg, shutdown)`` returns a ``DynamicSink`` of
    records (``OrderBookSummary``/``OrderBookDepth``) and is called once per process;
    its partitions raise :class:`OutputFailed` (or any exception) to stop the run, and
    an output with a thread or files of its own uses ``shutdown``
    (:class:`service.runtime.Shutdown`) to be closed on a signal or to stop the run.
    """

    name: str
    build: Callable[[str | None, Shutdown], DynamicSink]
    arg: str = "none"
    help: str = ""
    """The entry's form in messages (``parquet:DIR``); empty: the name."""
    check: Callable[[str | None], str | None] = field(default=lambda arg: arg)
    targets: Callable[[str | None], Iterable[tuple]] | None = None
    """None: the entry itself is its only target."""
    needs_depth: Callable[[int, float], None] | None = None
    """A kind that writes depth records: called at start with ``ORDERBOOK_DEPTH_LEVELS``
    (never 0: refused before) and ``ORDERBOOK_DEPTH_INTERVAL``, raises ``ValueError``
    when it cannot write them; its ``build`` then takes ``(arg, shutdown, levels,
    interval)``."""


def writable_dir(arg: str | None) -> str:
    """The check of a kind that writes files into a directory (``parquet:DIR``,
    ``tardis:DIR``): ``arg`` is a directory that exists or can be created, and that
    takes a file (a probe file is written and removed); ``ValueError`` or ``OSError``
    otherwise."""
    path = Path(arg)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{arg} exists and is not a directory")
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f".probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        probe.write_bytes(b"x")
    finally:
        probe.unlink(missing_ok=True)
    return arg


def dir_targets(arg: str | None, what: str = "the same directory") -> list[tuple]:
    """The targets of a directory entry (after :func:`writable_dir` created it): the
    directory by device and inode, so ``D``, ``./D/`` and a link to it are one. ``what``
    names it in a refusal, and is part of the target: two kinds that name it apart
    (``parquet:D`` and ``tardis:D``, whose files have different names) may share it."""
    info = os.stat(arg)
    return [(what, info.st_dev, info.st_ino)]


class OutputFailed(Exception):
    """Raised by an output partition for a failure that must stop the run; its text is
    the whole explanation (no type name is added)."""


class ReaderGone(Exception):
    """Raised by an output writing to stdout when its reader went away (``| head``):
    the run ends quietly, status 0."""


FAILURE_DETAIL_LIMIT = 1000
"""Characters of an error's text kept in the failure line."""


def failure_line(label: str, exc: BaseException) -> str:
    """The one line that says output ``label`` failed and why (for
    :meth:`service.runtime.Shutdown.failed`)."""
    if isinstance(exc, (OSError, OutputFailed)):
        detail = str(exc) or type(exc).__name__
    else:  # a bug or a library's surprise: its type says what it was
        detail = f"{type(exc).__name__}: {exc}"
    detail = shown(detail, FAILURE_DETAIL_LIMIT)  # one line, whatever it holds
    return f"output {label} failed, stopping: {detail}"


@dataclass(frozen=True)
class OutputList:
    """``ORDERBOOK_OUTPUT`` parsed: the outputs, and the views it turns on."""

    specs: tuple[OutputSpec, ...]
    views: frozenset[str] = frozenset()


def expected(kinds: Mapping[str, OutputKind], views: Mapping[str, str]) -> str:
    """What the setting allows, for error messages."""
    forms = ", ".join([*(k.help or k.name for k in kinds.values()), *views.values()])
    return f"a comma-separated list of outputs: {forms}"


def parse_outputs(
    raw: str,
    kinds: Mapping[str, OutputKind],
    views: Mapping[str, str],
    name: str = SETTING,
) -> OutputList:
    """Parse and check every entry; raises :class:`ConfigError` naming the bad one.

    ``kinds``: the outputs by name, in the order messages list them; ``views``: the
    names of the entries that turn on a view (they take no argument), and their form
    in messages."""
    shown_raw = shown_entry(raw)
    allowed = expected(kinds, views)

    def refused(why: str) -> ConfigError:
        return refuse(name, shown_raw, allowed, why)

    entries = [e.strip() for e in raw.split(",")]
    if not any(entries):
        raise refused("no output given")
    specs: list[OutputSpec] = []
    named_views: list[str] = []
    taken: dict[tuple, str] = {}
    """Every target of the entries so far -> the entry, as shown."""
    for entry in entries:
        if not entry:
            raise refused("an empty entry")
        as_shown = shown_entry(entry)
        kind_name, colon, arg = entry.partition(":")
        kind_name = kind_name.strip().lower()
        if kind_name in views:
            if colon:
                raise refused(f"{as_shown!r}: {kind_name} takes no argument")
            if kind_name in named_views:
                raise refused(f"{as_shown!r} given twice")
            named_views.append(kind_name)
            continue
        kind = kinds.get(kind_name)
        why = _misused(kind, bool(colon), arg, as_shown)
        if why:
            raise refused(why)
        spec = _checked(kind, arg.strip() if colon else None, as_shown, name)
        if spec in specs:
            raise refused(f"{as_shown!r} given twice")
        for target, first in _claim(kind, spec.arg, as_shown, taken):
            raise refused(
                f"{first!r} and {as_shown!r} write to {target[0]}: every record "
                "would be written twice"
            )
        specs.append(spec)
    return OutputList(tuple(specs), frozenset(named_views))


def _misused(kind: OutputKind | None, colon: bool, arg: str, as_shown: str) -> str:
    """Why the entry is refused before its check (an unknown kind, an argument given
    or missing), or ""."""
    if kind is None:
        return f"{as_shown!r}: unknown output {as_shown.partition(':')[0].strip()!r}"
    if colon and kind.arg == "none":
        return f"{as_shown!r}: {kind.name} takes no argument"
    if not arg.strip() and kind.arg == "required":
        return f"{as_shown!r}: {kind.help or kind.name} needs its argument"
    return ""


def _checked(kind: OutputKind, arg: str | None, as_shown: str, name: str) -> OutputSpec:
    """The entry after its kind's check (files opened, brokers asked)."""
    try:
        arg = kind.check(arg)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"{name}: output {as_shown!r} cannot work: {exc}") from None
    return OutputSpec(kind.name, arg)


def _claim(
    kind: OutputKind, arg: str | None, as_shown: str, taken: dict[tuple, str]
) -> list[tuple[tuple, str]]:
    """The entry's targets that an earlier entry holds, with that entry; when there
    are none, the targets are taken for this one."""
    targets = [(kind.name, arg)] if kind.targets is None else list(kind.targets(arg))
    clashes = [(target, taken[target]) for target in targets if target in taken]
    if not clashes:
        taken.update((target, as_shown) for target in targets)
    return clashes


def with_depth(
    specs: tuple[OutputSpec, ...],
    kinds: Mapping[str, OutputKind],
    levels: int,
    interval: float,
    name: str = SETTING,
) -> tuple[OutputSpec, ...]:
    """``specs`` with the depth cadence given to the kinds that write depth records;
    ConfigError (one line) when depth records are off or the kind cannot write them."""
    bound = []
    for spec in specs:
        check = kinds[spec.kind].needs_depth
        if check is not None:
            why = ""
            if not levels:
                why = (
                    "it writes depth records and ORDERBOOK_DEPTH_LEVELS is 0 (off): set "
                    "ORDERBOOK_DEPTH_LEVELS to the levels per side wanted"
                )
            else:
                try:
                    check(levels, interval)
                except ValueError as exc:
                    why = str(exc)
            if why:
                raise ConfigError(f"{name}: output {spec.shown!r} cannot work: {why}")
            spec = replace(spec, depth=(levels, interval))
        bound.append(spec)
    return tuple(bound)
