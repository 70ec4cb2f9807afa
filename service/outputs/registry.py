"""The kinds of output ``ORDERBOOK_OUTPUT`` may name, and how its list is parsed.

``ORDERBOOK_OUTPUT`` is a comma-separated list of entries ``KIND`` or ``KIND:ARGUMENT``
(``text,parquet:data/``). Each kind registers itself here with :func:`register`: a name,
whether it takes an argument, a check run at start (it may try opening files or
brokers: a bad entry is refused before any data flows) and a builder of its Bytewax
sink. Adding a kind is one module that calls :func:`register`, imported by
``service/outputs/__init__.py``::

    register(OutputKind("live", build=build_live, arg="optional", help="live[:PORT]"))

Two entries that write to one place (``jsonl:F,jsonl:./F``, ``text`` and ``jsonl`` both on
stdout, one Parquet directory, one Kafka topic of one cluster) are refused: every record
would be written twice. Each kind says where an entry writes with ``targets``.

Secrets never reach a message: an entry shown in a refusal or a failure line has the
values of secret-looking settings after its ``?`` replaced by ``***``
(:func:`common.text.redact_url`), as does the whole list when a refusal repeats it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from bytewax.outputs import DynamicSink

from common.text import redact_url
from common.validation import ConfigError, refuse

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
    sharing one are refused. ``build(arg)`` returns a ``DynamicSink`` of records
    (``OrderBookSummary``/``OrderBookDepth``) and is called once per process.
    """

    name: str
    build: Callable[[str | None], DynamicSink]
    arg: str = "none"
    help: str = ""
    check: Callable[[str | None], str | None] = field(default=lambda arg: arg)
    rank: int = 50
    """Place in the list of kinds that error messages show."""
    targets: Callable[[str | None], Iterable[tuple]] | None = None
    """None: the entry itself is its only target."""
    needs_depth: Callable[[int, float], None] | None = None
    """A kind that writes depth records: called at start with ``ORDERBOOK_DEPTH_LEVELS``
    (never 0: refused before) and ``ORDERBOOK_DEPTH_INTERVAL``, raises ``ValueError``
    when it cannot write them; its ``build`` then takes ``(arg, levels, interval)``."""


KINDS: dict[str, OutputKind] = {}


def register(kind: OutputKind) -> OutputKind:
    KINDS[kind.name] = kind
    return kind


def expected() -> str:
    """What the setting allows, for error messages and the settings help."""
    kinds = sorted(KINDS.values(), key=lambda k: k.rank)
    forms = ", ".join(k.help or k.name for k in kinds)
    return f"a comma-separated list of outputs: {forms}"


def parse_outputs(raw: str, name: str = SETTING) -> tuple[OutputSpec, ...]:
    """Parse and check every entry; raises :class:`ConfigError` naming the bad one."""
    shown_raw = shown_entry(raw)
    entries = [e.strip() for e in raw.split(",")]
    if not any(entries):
        raise refuse(name, shown_raw, expected(), "no output given")
    specs: list[OutputSpec] = []
    taken: dict[tuple, str] = {}
    """Every target of the entries so far -> the entry, as shown."""
    for entry in entries:
        if not entry:
            raise refuse(name, shown_raw, expected(), "an empty entry")
        shown = shown_entry(entry)
        kind_name, colon, arg = entry.partition(":")
        kind = KINDS.get(kind_name.strip().lower())
        why = ""
        if kind is None:
            why = f"{shown!r}: unknown output {shown.partition(':')[0].strip()!r}"
        elif colon and kind.arg == "none":
            why = f"{shown!r}: {kind.name} takes no argument"
        elif not arg.strip() and kind.arg == "required":
            why = f"{shown!r}: {kind.help or kind.name} needs its argument"
        if why:
            raise refuse(name, shown_raw, expected(), why)
        arg = arg.strip() if colon else None
        try:
            arg = kind.check(arg)
        except (ValueError, OSError) as exc:
            raise ConfigError(f"{name}: output {shown!r} cannot work: {exc}") from None
        spec = OutputSpec(kind.name, arg)
        if spec in specs:
            raise refuse(name, shown_raw, expected(), f"{shown!r} given twice")
        targets = (
            [(kind.name, arg)] if kind.targets is None else list(kind.targets(arg))
        )
        for target in targets:
            if target in taken:
                raise refuse(
                    name,
                    shown_raw,
                    expected(),
                    f"{taken[target]!r} and {shown!r} write to {target[0]}: every "
                    "record would be written twice",
                )
        taken.update((target, shown) for target in targets)
        specs.append(spec)
    return tuple(specs)


def with_depth(
    specs: tuple[OutputSpec, ...], levels: int, interval: float, name: str = SETTING
) -> tuple[OutputSpec, ...]:
    """``specs`` with the depth cadence given to the kinds that write depth records;
    ConfigError (one line) when depth records are off or the kind cannot write them."""
    bound = []
    for spec in specs:
        check = KINDS[spec.kind].needs_depth
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


def build_sink(spec: OutputSpec) -> DynamicSink:
    kind = KINDS[spec.kind]
    if kind.needs_depth is not None:
        return kind.build(spec.arg, *(spec.depth or (0, 0.0)))
    return kind.build(spec.arg)
