"""Shared by the output tests: a small recording, a flow writing JSON lines and Parquet
side by side, and Parquet rows in the JSON shape."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from tests.support.flow import FlowProcess, flow_env
from tests.support.recordings import write_session


def small_recording(path: Path, messages: int = 2000) -> Path:
    """Exchange-feed frames of the four default products, 1 ms of feed time apart."""
    write_session(path, messages, 3)
    return path


def sim_flow_to_jsonl_and_parquet(out: Path, pq: Path) -> FlowProcess:
    """The real flow, 2 workers, on the simulated feed (a 200-level book, 100 update
    batches a second per product, a summary at every change, depth records of 3
    levels), writing every record to the JSON lines ``out`` and to ``parquet:pq``: the
    JSON lines are what the Parquet files must hold. Started, not waited for. (At the
    default 20 batches a second the tests waited 5 s for their 300 records.)"""
    env = flow_env(
        ORDERBOOK_FEED="sim",
        ORDERBOOK_SIM_DEPTH="200",
        ORDERBOOK_SIM_RATE="100",
        ORDERBOOK_SPREAD_THRESHOLD="0",
        ORDERBOOK_DEPTH_LEVELS="3",
        ORDERBOOK_OUTPUT=f"jsonl:{out},parquet:{pq}",
    )
    return FlowProcess(["bytewax.run", "dataflow:flow", "-w", "2"], env)


def _plain(value: Decimal) -> str:
    return format(value.normalize(), "f")


def _iso(t: datetime | None) -> str | None:
    if t is None:
        return None
    t = t.astimezone(UTC).replace(tzinfo=None)
    return t.isoformat(timespec="microseconds") + "Z"


def _json_shape(rel, hive: dict[str, str]) -> list[dict]:
    """The rows of a DuckDB relation as the records' JSON shape."""
    out = []
    names = rel.columns
    for row in rel.fetchall():
        data = {**dict(zip(names, row, strict=True)), **hive}
        data.pop("date", None)
        record = {}
        for key, value in data.items():
            if isinstance(value, Decimal):
                value = _plain(value)
            elif isinstance(value, datetime):
                value = _iso(value)
            elif isinstance(value, list) and key == "mismatches":  # audit records
                value = [
                    {k: v if k == "side" else _plain(v) for k, v in m.items()}
                    for m in value
                ]
            elif isinstance(value, list):
                value = [[_plain(lv["price"]), _plain(lv["size"])] for lv in value]
            record[key] = value
        out.append(record)
    return out


def parquet_records(root: Path) -> list[dict]:
    """Every record of a ``parquet:DIR`` output, read with DuckDB, as the JSON shape."""
    import duckdb

    out = []
    con = duckdb.connect()
    for kind in ("summary", "depth", "audit"):
        if not list((root / f"type={kind}").rglob("*.parquet")):
            continue
        rel = con.sql(
            f"select * from read_parquet('{root}/type={kind}/**/*.parquet', "
            "hive_partitioning = true)"
        )
        out += _json_shape(rel, {})
    return out


def journal_records(root: Path) -> list[dict]:
    """The rows of the journals of files still open (``.part-*.arrows``, Arrow IPC
    stream format) up to their last complete batch, as the JSON shape: what a hard
    kill at this moment would leave to recover."""
    import duckdb
    import pyarrow as pa

    from service.outputs.parquet import read_journal

    out = []
    for journal in root.glob("type=*/product_id=*/date=*/.part-*.arrows"):
        try:
            data = journal.read_bytes()
        except OSError:
            continue  # converted meanwhile
        schema, batches = read_journal(pa, pa.BufferReader(data))
        if schema is None:
            continue  # not even its schema written yet
        table = pa.Table.from_batches(batches, schema)
        hive = dict(part.split("=", 1) for part in journal.parent.parts[-3:])
        out += _json_shape(duckdb.from_arrow(table), hive)
    return out


def canonical(records: list[dict]) -> list[tuple]:
    """Order-free comparable form (files of several partitions come in any order)."""
    return sorted(tuple(sorted((k, str(v)) for k, v in r.items())) for r in records)
