"""Moved to :mod:`tests.support.flow`; kept so that existing imports keep working."""

from tests.support.flow import (  # noqa: F401
    REPO,
    FlowProcess,
    by_product,
    flow_env,
    free_port,
    last_by_product,
    read_jsonl,
    settle,
    wait_until,
)
