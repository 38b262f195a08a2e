"""marketing_daily end to end: dag.test() on generated data with real Spark and real GX,
idempotent re-runs, an injected defect that the audit blocks, and a backfill equal to daily runs."""

import datetime as dt
import json
import os
import shutil
import subprocess
import sys

import pytest
from deltalake import DeltaTable

from touchpoint.core.catalog import table_path
from touchpoint.core.config import get_settings, load_settings
from shared_history import FIRST_DAY, HISTORY_DAY, HISTORY_START

# two pipeline runs in the backfill test, and the shared lakes' two when it runs first: past the
# default per-test timeout on a busy machine
pytestmark = pytest.mark.timeout(2400)

START = dt.date.fromisoformat(HISTORY_START)
COMPARED = ("gold.identity_map", "gold.customer_profiles", "gold.attribution_credits", "gold.segment_membership")


@pytest.fixture(scope="module")
def airflow_db():
    """`airflow db migrate` once (dag.test() needs the metadata tables)."""
    result = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], capture_output=True, text=True,
                            timeout=600, env=os.environ.copy())
    assert result.returncode == 0, result.stderr[-3000:]


def _own_lake(source, tmp_path, monkeypatch):
    """A private copy of a shared lake, made the process's settings (Airflow tasks read them)."""
    shutil.copytree(source / "lake", tmp_path / "lake")
    monkeypatch.setenv("TOUCHPOINT_LAKE_ROOT", str(tmp_path / "lake"))
    monkeypatch.setenv("TOUCHPOINT_SPARK_SHUFFLE_PARTITIONS", "2")
    get_settings.cache_clear()
    return get_settings()


@pytest.fixture
def published_lake(published_history, tmp_path, monkeypatch):
    yield _own_lake(published_history, tmp_path, monkeypatch)
    get_settings.cache_clear()


def snapshot(settings, names=COMPARED):
    """Each table's rows, every column as text, sorted: read with delta-rs (no Spark job). Every
    comparison below is between two snapshots taken this way."""
    state = {}
    for name in names:
        rows = DeltaTable(table_path(name, settings)).to_pyarrow_table().to_pylist()
        state[name] = sorted(tuple(str(v) for v in row.values()) for row in rows)
    return state


def test_dag_test_over_a_published_date_succeeds_and_changes_nothing(spark, published_history, published_lake,
                                                                     airflow_db):
    """The shared lake was published for HISTORY_DAY by the same steps; dag.test() re-runs that date."""
    from airflow.dag_processing.dagbag import DagBag

    from touchpoint.jobs.pipeline import current_high_water_mark

    published = snapshot(load_settings(lake_root=str(published_history / "lake")))
    assert all(published[name] for name in COMPARED)
    dag = DagBag(dag_folder="dags").get_dag("marketing_daily")
    logical = dt.datetime.fromisoformat(HISTORY_DAY).replace(tzinfo=dt.timezone.utc)
    run = dag.test(logical_date=logical)
    assert run.state == "success", [(ti.task_id, ti.state) for ti in run.get_task_instances()]
    assert {ti.task_id: ti.state for ti in run.get_task_instances()} == {
        step: "success" for step in ("optimize_silver", "prepare_staging", "identity", "profiles", "attribution",
                                     "segments", "campaign_metrics", "exports", "audit", "publish")}
    assert snapshot(published_lake) == published
    assert current_high_water_mark(spark, published_lake) == dt.datetime(2026, 3, 5, tzinfo=dt.timezone.utc)


def test_the_published_serving_tables_equal_a_derivation_from_silver(spark, published_history, published_lake):
    """Both dates' campaign_metrics took each last touch from the paths their attribution run had just
    staged (the second one incremental); deriving the published date again from silver writes the
    same four tables."""
    from touchpoint.jobs import campaign_metrics

    sources = json.loads((published_history / "last_touch.json").read_text())
    assert sorted(sources) == [FIRST_DAY, HISTORY_DAY]
    assert all(source.startswith("attribution paths (gold.attribution_conversions version ")
               for source in sources.values()), sources
    tables = ("gold.campaign_conversions", "gold.campaign_minute", "gold.campaign_daily", "gold.customer_activity")
    published = snapshot(published_lake, tables)
    assert all(published.values())
    derived = campaign_metrics.run(spark, published_lake, dt.date.fromisoformat(HISTORY_DAY), mode="full")
    assert derived["last_touch"] == "derived from silver: full recompute requested"
    assert snapshot(published_lake, tables) == published


def test_injected_defect_fails_the_audit_and_publishes_nothing(spark, published_lake):
    """The next date is staged from the published tables (the jobs are not needed to break a table):
    one staged conversion then sums to 1.5, the audit fails, and gold stays exactly as published."""
    from touchpoint.expectations.audit import AuditFailed
    from touchpoint.jobs.pipeline import current_high_water_mark, run_step, staging_settings

    before = snapshot(published_lake)
    day = dt.date.fromisoformat(HISTORY_DAY) + dt.timedelta(days=1)
    run_step("prepare_staging", day, published_lake, spark)
    credits = table_path("gold.attribution_credits", staging_settings(published_lake, day))
    # min(conversion_id) of the last-touch credits, read with delta-rs (no Spark job)
    staged_credits = DeltaTable(credits).to_pyarrow_table(columns=["conversion_id", "model"]).to_pylist()
    victim = min(row["conversion_id"] for row in staged_credits
                 if row["model"] == "last_touch" and row["conversion_id"] is not None)
    spark.sql(f"UPDATE delta.`{credits}` SET credit = credit + 0.5 "
              f"WHERE model = 'last_touch' AND conversion_id = '{victim}'")
    with pytest.raises(AuditFailed, match="credit_sums_per_conversion"):
        run_step("audit", day, published_lake, spark)
    assert snapshot(published_lake) == before  # nothing published
    assert current_high_water_mark(spark, published_lake) == dt.datetime(2026, 3, 5, tzinfo=dt.timezone.utc)


def test_backfill_equals_daily_runs_as_data_arrives(spark, tmp_path, ingested_history, published_history,
                                                   reported_progress):
    from touchpoint.jobs.pipeline import STEPS, run as run_pipeline
    from touchpoint.streaming.ingest import ingest_files

    # The backfill is the shared published lake (conftest): all the history ingested, then the last
    # two dates run one by one; the first run covers two days of history, the second is incremental.
    days = [dt.date.fromisoformat(FIRST_DAY), dt.date.fromisoformat(HISTORY_DAY)]
    assert days == [START + dt.timedelta(days=1), START + dt.timedelta(days=2)]
    # attribution finds its published state again through staging copies and publishing
    assert json.loads((published_history / "runs.json").read_text()) == {
        FIRST_DAY: "full", HISTORY_DAY: "incremental"}
    backfilled = snapshot(load_settings(lake_root=str(published_history / "lake")))

    # the same dates, each run right after its own day's lines arrived
    daily = load_settings(lake_root=str(tmp_path / "daily_lake"), spark_shuffle_partitions=2)
    lines = (ingested_history / "events.jsonl").read_bytes().splitlines(keepends=True)
    for day in days:
        chunk = tmp_path / f"arrived-{day}.jsonl"
        # lines arriving by `day` (the first chunk) or on it; the last chunk also takes what arrives
        # after the window (late events)
        chunk.write_bytes(b"".join(line for line in lines
                                   if _arrival_day(line) == day or (day == days[0] and _arrival_day(line) < day)
                                   or (day == days[-1] and _arrival_day(line) > day)))
        ingest_files(spark, daily, chunk)
        run_pipeline(spark, daily, day)
    assert snapshot(daily) == backfilled
    # each run reported its steps in order, each one done (`touchpoint run pipeline` shows them as a bar)
    pipeline_tasks = {event[1]: event[2] for event in reported_progress
                      if event[0] == "begin" and event[2].startswith("pipeline ")}
    assert sorted(pipeline_tasks.values()) == [f"pipeline {day}" for day in days]
    for task in pipeline_tasks:
        updates = [event[2:] for event in reported_progress if event[0] == "update" and event[1] == task]
        label = pipeline_tasks[task]
        assert updates == [update for index, step in enumerate(STEPS)
                           for update in ((index, f"{label}: {step}"), (index + 1, f"{label}: {step}"))] + [
            (len(STEPS), label)]


def _arrival_day(line: bytes) -> dt.date:
    """When a generated line arrived (its sent_ts); lines without one (malformed) count as the first day."""
    try:
        return dt.datetime.fromisoformat(json.loads(line)["sent_ts"].replace("Z", "+00:00")).date()
    except (ValueError, KeyError, TypeError, AttributeError):
        return START
