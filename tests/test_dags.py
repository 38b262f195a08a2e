"""DagBag integrity: every DAG imports fast and cleanly, with docs, tags, owner, retries, no cycles."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[1] / "dags"
DAG_FILES = sorted(p for p in DAGS.glob("*.py") if p.name != "__init__.py")


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_every_dag_file_imports_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) >= {"marketing_daily", "lake_maintenance", "streaming_supervisor"}


def test_dags_have_docs_tags_owner_retries_and_no_cycles(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.doc_md and len(dag.doc_md) > 50, dag_id
        assert "touchpoint" in dag.tags, dag_id
        for task in dag.tasks:
            assert task.owner == "data-platform", (dag_id, task.task_id)
            assert task.retries >= 2, (dag_id, task.task_id)
        # a topological sort fails on a cycle
        assert len(dag.topological_sort()) == len(dag.tasks)


def test_marketing_daily_order(dagbag):
    dag = dagbag.dags["marketing_daily"]
    order = [t.task_id for t in dag.topological_sort()]
    assert order == ["optimize_silver", "prepare_staging", "identity", "profiles", "attribution", "segments",
                     "campaign_metrics", "exports", "audit", "publish"]
    assert {a.name for a in dag.get_task("publish").outlets} >= {"gold.attribution_credits", "gold.high_water_mark"}


@pytest.mark.parametrize("dag_id", ["marketing_daily", "lake_maintenance"])
def test_the_run_at_midnight_covers_the_day_that_just_ended(dagbag, dag_id):
    """A scheduled run's logical date is its data interval's start: the run firing at 03-02 00:00Z
    covers 03-01. (Airflow 3's "@daily" is a trigger timetable whose logical date is the firing
    time: the pipeline processed the day just begun.) A manual run without a logical date covers the
    last complete UTC day before it."""
    import datetime as dt
    from types import SimpleNamespace

    from airflow.timetables.base import TimeRestriction

    from touchpoint.jobs.runner import covered_date

    utc = dt.timezone.utc
    first = dagbag.dags[dag_id].timetable.next_dagrun_info(
        last_automated_data_interval=None,
        restriction=TimeRestriction(earliest=dt.datetime(2026, 3, 1, tzinfo=utc), latest=None, catchup=True))
    assert (first.run_after, first.data_interval.start, first.data_interval.end) == (
        dt.datetime(2026, 3, 2, tzinfo=utc), dt.datetime(2026, 3, 1, tzinfo=utc), dt.datetime(2026, 3, 2, tzinfo=utc))
    assert covered_date({"logical_date": first.data_interval.start}) == dt.date(2026, 3, 1)
    manual = SimpleNamespace(run_after=dt.datetime(2026, 3, 2, 14, 5, tzinfo=utc))
    assert covered_date({"logical_date": None, "dag_run": manual}) == dt.date(2026, 3, 1)
    late_evening = dt.datetime(2026, 3, 1, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5)))  # 03-02 04:30Z
    assert covered_date({"logical_date": late_evening}) == dt.date(2026, 3, 2)


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=[p.stem for p in DAG_FILES])
def test_dag_file_parses_in_a_few_seconds_without_heavy_imports(dag_file):
    code = (
        # the DAG processor has Airflow imported already: time the file's own work
        "import sys, time, runpy; from airflow.sdk import Asset, chain, dag, task; "
        "t = time.monotonic(); runpy.run_path(sys.argv[1]); "
        "heavy = [m for m in ('pyspark', 'great_expectations', 'delta', 'touchpoint.jobs') if m in sys.modules]; "
        "print(time.monotonic() - t, ','.join(heavy))"
    )
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code, str(dag_file)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    last_line = result.stdout.strip().splitlines()[-1]
    seconds, _, heavy = last_line.partition(" ")
    assert float(seconds) < 5.0, f"{dag_file.name} took {seconds}s to parse (total {time.monotonic() - started:.1f}s)"
    assert heavy == "", f"{dag_file.name} imports {heavy} at parse time"


def test_pipeline_steps_in_the_dag_match_the_pipeline_module():
    import runpy

    from touchpoint.jobs.pipeline import STEPS

    assert runpy.run_path(str(DAGS / "marketing_daily.py"))["STEPS"] == STEPS


def test_erasures_run_every_hour_at_half_past_never_when_the_daily_dags_fire(dagbag):
    import pendulum
    from airflow.timetables.base import TimeRestriction

    timetable, last, fired = dagbag.dags["privacy_erasure"].timetable, None, []
    for _ in range(3):
        info = timetable.next_dagrun_info(
            last_automated_data_interval=last,
            restriction=TimeRestriction(earliest=pendulum.datetime(2026, 3, 4, 23, 0), latest=None, catchup=True))
        fired.append(info.run_after.isoformat())
        last = info.data_interval
    assert fired == ["2026-03-04T23:30:00+00:00", "2026-03-05T00:30:00+00:00", "2026-03-05T01:30:00+00:00"]
