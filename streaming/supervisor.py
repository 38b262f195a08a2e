"""Keep the long-running streaming queries alive and fresh (the streaming_supervisor DAG).

Each query runs as its own process (`touchpoint stream <name>`), recorded by PID under
<state_dir>/streams. Freshness is the age of the last micro-batch the query committed.
"""

from __future__ import annotations

import datetime as dt
import sys
from dataclasses import dataclass

from touchpoint.core.catalog import table_path
from touchpoint.core.config import Settings
from touchpoint.core.delta import rs_table

# query name -> (CLI arguments, table with one row per committed micro-batch, its timestamp column)
QUERIES = {"ingest": (["stream", "ingest"], "silver.reconciliation", "ingest_ts"),
           "speed": (["stream", "speed"], "speed.freshness", "processed_at")}


class StreamStale(RuntimeError):
    pass


@dataclass(frozen=True)
class QueryHealth:
    name: str
    pid: int | None
    alive: bool
    last_batch_at: dt.datetime | None
    lag_seconds: float | None


def _pid_file(settings: Settings, name: str):
    folder = settings.state_path / "streams"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{name}.pid"


def last_batch_at(settings: Settings, name: str) -> dt.datetime | None:
    from deltalake.exceptions import TableNotFoundError

    try:
        table = rs_table(table_path(QUERIES[name][1], settings))
    except TableNotFoundError:
        return None
    column = QUERIES[name][2]
    stamps = table.to_pyarrow_table(columns=[column]).column(column).to_pylist()
    return max(stamps) if stamps else None


def health(settings: Settings, name: str, now: dt.datetime) -> QueryHealth:
    from touchpoint.infra.process import read_pid

    pid = read_pid(_pid_file(settings, name))
    last = last_batch_at(settings, name)
    lag = (now - last).total_seconds() if last else None
    return QueryHealth(name, pid, pid is not None, last, lag)


def start_detached(settings: Settings, name: str) -> int:
    from touchpoint.infra.process import spawn

    log = settings.state_path / "streams" / f"{name}.log"
    return spawn([sys.executable, "-m", "touchpoint", *QUERIES[name][0]], log, _pid_file(settings, name))


def supervise(settings: Settings | None, name: str, now: dt.datetime, max_lag_seconds: float) -> dict:
    """Restart a dead query; raise StreamStale (a failed task, an alert) when a live one is stale.
    `touchpoint stream supervise` and the streaming_supervisor DAG; settings None: from the environment."""
    from touchpoint.core.config import get_settings

    settings = settings or get_settings()
    state = health(settings, name, now)
    if not state.alive:
        pid = start_detached(settings, name)
        return {"query": name, "action": "restarted", "pid": pid, "last_batch_at": str(state.last_batch_at)}
    if state.lag_seconds is not None and state.lag_seconds > max_lag_seconds:
        raise StreamStale(f"query {name} (pid {state.pid}) last committed a batch {state.lag_seconds:.0f}s ago, "
                          f"over the {max_lag_seconds:.0f}s bound")
    return {"query": name, "action": "healthy", "pid": state.pid, "lag_seconds": state.lag_seconds}
