"""The kinds of output ``ORDERBOOK_OUTPUT`` may name, and how its list is parsed.

``ORDERBOOK_OUTPUT`` is a comma-separated list of entries ``KIND`` or ``KIND:ARGUMENT``
(``text,parquet:data/``). Each kind registers itself here with :func:`register`: a name,
whether it takes an argument, a check run at start (it may try opening files or
brokers: a bad entry is refused before any data flows) and a builder of its Bytewax
sink. Adding a kind is one module that calls :func:`register`, imported by
``service/outputs/__init__.py``::

    register(OutputKind("live", build=build_live, arg="optional", help="live[:PORT]"))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from bytewax.outputs import DynamicSink

from common.validation import ConfigError, refuse

SETTING = "ORDERBOOK_OUTPUT"


@dataclass(frozen=True)
class OutputSpec:
    """One entry of ``ORDERBOOK_OUTPUT``, checked: ``kind`` and its ``arg`` (or None)."""

    kind: str
    arg: str | None = None

    def __str__(self) -> str:
        return self.kind if self.arg is None else f"{self.kind}:{self.arg}"


@dataclass(frozen=True)
class OutputKind:
    """A kind of output.

    ``arg``: "none", "optional" or "required". ``check(arg)`` runs at start and raises
    ``ValueError`` (or ``OSError``) saying why the entry cannot work; it returns the
    argument in canonical form. ``build(arg)`` returns a ``DynamicSink`` of records
    (``OrderBookSummary``/``OrderBookDepth``) and is called once per process.
    """

    name: str
    build: Callable[[str | None], DynamicSink]
    arg: str = "none"
    help: str = ""
    check: Callable[[str | None], str | None] = field(default=lambda arg: arg)
    rank: int = 50
    """Place in the list of kinds that error messages show."""


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
    entries = [e.strip() for e in raw.split(",")]
    if not any(entries):
        raise refuse(name, raw, expected(), "no output given")
    specs = []
    for entry in entries:
        if not entry:
            raise refuse(name, raw, expected(), "an empty entry")
        kind_name, colon, arg = entry.partition(":")
        kind = KINDS.get(kind_name.strip().lower())
        why = ""
        if kind is None:
            why = f"{entry!r}: unknown output {kind_name.strip()!r}"
        elif colon and kind.arg == "none":
            why = f"{entry!r}: {kind.name} takes no argument"
        elif not arg.strip() and kind.arg == "required":
            why = f"{entry!r}: {kind.help or kind.name} needs its argument"
        if why:
            raise refuse(name, raw, expected(), why)
        arg = arg.strip() if colon else None
        try:
            arg = kind.check(arg)
        except (ValueError, OSError) as exc:
            raise ConfigError(f"{name}: output {entry!r} cannot work: {exc}") from None
        spec = OutputSpec(kind.name, arg)
        if spec in specs:
            raise refuse(name, raw, expected(), f"{entry!r} given twice")
        specs.append(spec)
    return tuple(specs)


def build_sink(spec: OutputSpec) -> DynamicSink:
    return KINDS[spec.kind].build(spec.arg)
