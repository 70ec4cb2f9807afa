"""Moved to :mod:`tests.support.scripted_server`; kept so that existing imports work."""

from tests.support.scripted_server import (  # noqa: F401
    Script,
    ScriptedConnection,
    ScriptedServer,
)
