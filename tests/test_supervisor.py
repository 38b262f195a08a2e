"""The stream supervisor (streaming_supervisor DAG, `touchpoint stream supervise`): a dead stream
is restarted as a detached process; a live one whose query last committed too long ago is stale,
per query (the speed process runs two)."""

import datetime as dt
import os
import subprocess
import sys

import pyarrow as pa
import pytest
from deltalake import write_deltalake
from pyspark.sql.pandas.types import to_arrow_schema

from touchpoint.core.catalog import table_path
from touchpoint.core.config import load_settings
from touchpoint.core.serving import SCHEMAS
from touchpoint.schemas.lake import RECONCILIATION_SCHEMA
from touchpoint.streaming.supervisor import StreamStale, supervise

NOW = dt.datetime(2026, 3, 5, 12, 0, tzinfo=dt.timezone.utc)


def _settings(tmp_path, **overrides):
    return load_settings(lake_root=str(tmp_path / "lake"), state_dir=str(tmp_path / "state"), **overrides)


def _append(settings, name, schema, rows):
    arrow_schema = to_arrow_schema(schema, timezone="UTC", prefers_large_types=False)
    columns = {field.name: [row.get(field.name) for row in rows] for field in arrow_schema}
    write_deltalake(table_path(name, settings), pa.table(columns, schema=arrow_schema), mode="append")


def _speed_batches(settings, *batches):
    _append(settings, "speed.freshness", SCHEMAS["speed.freshness"],
            [{"query": query, "batch_id": i, "processed_at": at} for i, (query, at) in enumerate(batches)])


def _alive(settings, name, started=NOW - dt.timedelta(hours=3)):
    """This test's own process stands for a live stream, started at `started` (its PID file's time)."""
    folder = settings.state_path / "streams"
    folder.mkdir(parents=True, exist_ok=True)
    pid_file = folder / f"{name}.pid"
    pid_file.write_text(str(os.getpid()))
    os.utime(pid_file, (started.timestamp(), started.timestamp()))


def test_a_speed_query_falling_behind_is_stale_while_the_other_commits(tmp_path):
    settings = _settings(tmp_path, stream={"customer_trigger_seconds": 30})
    _alive(settings, "speed")
    minutes = dt.timedelta(minutes=1)
    _speed_batches(settings, ("speed_customers", NOW - 20 * minutes), ("speed", NOW - 30 * minutes),
                   ("speed", NOW - 1 * minutes), ("speed:bootstrap", NOW - 40 * minutes))
    with pytest.raises(StreamStale, match=rf"query speed_customers of `touchpoint stream speed` \(pid {os.getpid()}\) "
                                          r"last committed a batch 1200s ago, over the 600s bound"):
        supervise(settings, "speed", NOW, max_lag_seconds=600)
    _speed_batches(settings, ("speed_customers", NOW - 2 * minutes))
    assert supervise(settings, "speed", NOW, max_lag_seconds=600) == {
        "query": "speed", "action": "healthy", "pid": os.getpid(), "lag_seconds": 120.0, "stalest": "speed_customers"}


def test_a_query_that_never_committed_does_not_hide_a_stale_one_and_counts_from_the_start(tmp_path):
    settings = _settings(tmp_path, stream={"customer_trigger_seconds": 30})
    _alive(settings, "speed")  # started three hours before NOW
    _speed_batches(settings, ("speed", NOW - dt.timedelta(hours=2)))  # speed_customers: nothing yet
    with pytest.raises(StreamStale, match=r"query speed_customers .* 10800s ago, over the 600s bound"):
        supervise(settings, "speed", NOW, max_lag_seconds=600)
    _speed_batches(settings, ("speed_customers", NOW - dt.timedelta(seconds=30)))
    with pytest.raises(StreamStale, match=r"query speed of .* 7200s ago"):
        supervise(settings, "speed", NOW, max_lag_seconds=600)
    # restarted five minutes ago: both are judged from the restart until they commit again
    _alive(settings, "speed", started=NOW - dt.timedelta(minutes=5))
    assert supervise(settings, "speed", NOW, max_lag_seconds=600) == {
        "query": "speed", "action": "healthy", "pid": os.getpid(), "lag_seconds": 300.0, "stalest": "speed"}


def test_one_speed_query_and_the_ingest_are_judged_by_their_own_batches(tmp_path):
    settings = _settings(tmp_path, stream={"customer_trigger_seconds": None})  # one speed query for all views
    _alive(settings, "speed")
    _speed_batches(settings, ("speed", NOW - dt.timedelta(seconds=45)))
    assert supervise(settings, "speed", NOW, 600)["lag_seconds"] == 45.0
    # the ingest has committed nothing yet: judged from its start
    _alive(settings, "ingest", started=NOW - dt.timedelta(seconds=90))
    assert supervise(settings, "ingest", NOW, 600) == {
        "query": "ingest", "action": "healthy", "pid": os.getpid(), "lag_seconds": 90.0, "stalest": "ingest"}
    _append(settings, "silver.reconciliation", RECONCILIATION_SCHEMA,
            [{"ingest_ts": NOW - dt.timedelta(seconds=s)} for s in (900, 700)])
    _alive(settings, "ingest")  # running since before those batches
    with pytest.raises(StreamStale, match=r"query ingest .* 700s ago, over the 600s bound"):
        supervise(settings, "ingest", NOW, 600)


def test_a_dead_stream_is_started_again_detached_with_its_pid_recorded_and_the_same_settings(tmp_path):
    # The restarted stream gets the supervisor's settings, not only the environment's: with no broker
    # at this address it stops at once, naming the key, which shows it really ran with them.
    settings = _settings(tmp_path, kafka_bootstrap="127.0.0.1:1")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (settings.state_path / "streams").mkdir(parents=True)
    (settings.state_path / "streams" / "ingest.pid").write_text(str(gone.pid))

    result = supervise(settings, "ingest", NOW, 600)
    assert result["action"] == "restarted" and result["pid"] != gone.pid
    assert (settings.state_path / "streams" / "ingest.pid").read_text().split()[0] == str(result["pid"])
    _, status = os.waitpid(result["pid"], 0)  # a child of this process: reaped here
    assert os.waitstatus_to_exitcode(status) == 2
    log = (settings.state_path / "streams" / "ingest.log").read_text()
    assert "key 'kafka_bootstrap'" in log and "127.0.0.1:1 is unreachable" in log, log
