"""lake_maintenance: compaction, retention, VACUUM and staging clean-up. Wiring only."""

from __future__ import annotations

import datetime as dt

from airflow.sdk import chain, dag, task
from airflow.timetables.interval import CronDataIntervalTimetable

DOC = """
### lake_maintenance
Daily, for logical date D: `optimize` compacts the stream-written tables (bronze, silver,
quarantine, reconciliation); `enforce_retention` deletes bronze raw payloads and quarantine rows
older than `retention.bronze_days` / `retention.quarantine_days` before D; `expire_speed` deletes
speed rows the published batch views already hold (BRIEF §7); `vacuum` removes
unreferenced files older than `retention.vacuum_hours`; `clean_staging` drops staging namespaces of
earlier dates. Each step is `touchpoint.jobs.maintenance.run_step`, also `touchpoint run maintenance --date D`.
"""


def _step(step: str, **context) -> dict:
    from touchpoint.jobs.maintenance import run_step
    from touchpoint.jobs.runner import covered_date

    return run_step(step, covered_date(context))


@dag(
    dag_id="lake_maintenance",
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),  # the run at D+1 00:00Z covers D
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    max_active_runs=1,
    doc_md=DOC,
    tags=["touchpoint", "maintenance"],
    default_args={"owner": "data-platform", "retries": 2, "retry_delay": dt.timedelta(minutes=5),
                  "retry_exponential_backoff": True},
)
def lake_maintenance():
    chain(*[task(task_id=step)(_step)(step) for step in ("optimize", "enforce_retention", "expire_speed", "vacuum", "clean_staging")])


lake_maintenance()
