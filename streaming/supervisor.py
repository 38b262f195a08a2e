"""Keep the long-running streaming queries alive and fresh (the streaming_supervisor DAG).

Each stream runs as its own process (`touchpoint stream <name>`), recorded by PID under
<state_dir>/streams. Freshness is the age of the last micro-batch committed, per query: the speed
process runs the campaign-views and the customer-views queries (streaming.speed.query_names), and
one of them falling behind is stale even while the other commits.
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
    last_batch_at: dt.datetime | None  # of the stalest query; None when it has committed nothing
    lag_seconds: float | None  # since its last batch or the running process's start, the later; None: neither
    stalest: str  # the query (of the process's queries) whose last batch is the oldest


def _pid_file(settings: Settings, name: str):
    folder = settings.state_path / "streams"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{name}.pid"


def last_batches(settings: Settings, name: str) -> dict[str, dt.datetime | None]:
    """query -> when it last committed a micro-batch (None: never), for each query the process runs."""
    import pyarrow.compute as pc
    from deltalake.exceptions import TableNotFoundError

    if name == "speed":
        from touchpoint.streaming.speed import query_names

        queries = query_names(settings)
    else:
        queries = [name]
    try:
        table = rs_table(table_path(QUERIES[name][1], settings))
    except TableNotFoundError:
        return dict.fromkeys(queries)
    column = QUERIES[name][2]
    if name == "speed":  # speed.freshness names the query of each row
        rows = table.to_pyarrow_table(columns=["query", column])
        stamps = {query: rows.filter(pc.equal(rows.column("query"), query)).column(column) for query in queries}
    else:  # one query writes the ingest's table
        stamps = {name: table.to_pyarrow_table(columns=[column]).column(column)}
    return {query: pc.max(times).as_py() if len(times) else None for query, times in stamps.items()}


def health(settings: Settings, name: str, now: dt.datetime) -> QueryHealth:
    """Each query's lag counts from its last batch or from the process's start, whichever is later
    (a query that has committed nothing since a restart is judged from the restart); the stalest
    query is reported. A process not running has no lag."""
    from touchpoint.core.process import read_pid

    pid_file = _pid_file(settings, name)
    pid = read_pid(pid_file)
    last = last_batches(settings, name)
    started = dt.datetime.fromtimestamp(pid_file.stat().st_mtime, dt.timezone.utc) if pid is not None else None
    lags = {}
    for query, at in last.items():
        since = max((t for t in (at, started) if t is not None), default=None)
        lags[query] = (now - since).total_seconds() if since is not None else None
    stalest = max(lags, key=lambda query: float("-inf") if lags[query] is None else lags[query])
    return QueryHealth(name, pid, pid is not None, last[stalest], lags[stalest], stalest)


def start_detached(settings: Settings, name: str) -> int:
    """`touchpoint stream <name>` as a detached process, with these settings (not only the caller's
    environment's), its PID recorded."""
    from touchpoint.core.config import settings_env
    from touchpoint.core.process import spawn

    log = settings.state_path / "streams" / f"{name}.log"
    return spawn([sys.executable, "-m", "touchpoint", *QUERIES[name][0]], log, _pid_file(settings, name),
                 env=settings_env(settings))


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
        raise StreamStale(f"query {state.stalest} of `touchpoint stream {name}` (pid {state.pid}) last committed a "
                          f"batch {state.lag_seconds:.0f}s ago, over the {max_lag_seconds:.0f}s bound")
    return {"query": name, "action": "healthy", "pid": state.pid, "lag_seconds": state.lag_seconds,
            "stalest": state.stalest}
