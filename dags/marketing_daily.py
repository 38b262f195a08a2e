"""marketing_daily: the batch layer for logical date D, as write–audit–publish. Wiring only."""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Asset, chain, dag, task
from airflow.timetables.interval import CronDataIntervalTimetable

GOLD_ASSETS = [
    Asset(name=f"gold.{table}", uri=f"touchpoint://gold/{table}")
    for table in ("identity_map", "identity_merges", "identity_guardrails", "customer_profiles",
                  "attribution_credits", "attribution_daily", "markov_removal_effects", "attribution_paths",
                  "segment_membership", "segment_sizes", "export_log")
]
HIGH_WATER_MARK = Asset(name="gold.high_water_mark", uri="touchpoint://gold/high_water_mark")

DOC = """
### marketing_daily
For logical date **D** (events with `event_ts < D+1 00:00Z`), the data interval [D, D+1) that
the run at D+1 00:00Z closes; a manual run without a logical date covers the last complete UTC day:

1. `optimize_silver` compacts D's silver partition written by the stream;
2. `prepare_staging` copies the published gold tables into `staging/dD`;
3. `identity → profiles → attribution → segments → exports` run against staging;
4. `audit` runs the Great Expectations suites on the staged tables: a critical failure stops the run;
5. `publish` swaps the audited tables into `gold.*`, releases the exports and records the
   high-water mark H = D+1 00:00Z that the serving views use.

Every task is idempotent per D (re-running re-stages from what is published) and calls the same
entry point as `touchpoint run pipeline --date D` (`touchpoint.jobs.pipeline.run_step`).
Backfill oldest first, one date at a time: `--max-active-runs 1`, never `--run-backwards`; then
re-run the later dates. Serving covers the days in between from the speed layer when the backfill
reaches no further back than `stream.backfill_grace_days` (7); publish warns otherwise.
"""


def run_pipeline_step(step: str, **context) -> dict:
    from touchpoint.jobs.pipeline import run_step
    from touchpoint.jobs.runner import covered_date

    return run_step(step, covered_date(context))


# The steps of touchpoint.jobs.pipeline.STEPS, spelled out so the DAG file stays import-light.
STEPS = ("optimize_silver", "prepare_staging", "identity", "profiles", "attribution", "segments", "campaign_metrics",
         "exports",
         "audit", "publish")


@dag(
    dag_id="marketing_daily",
    # Data intervals: the run at D+1 00:00Z has logical date D and covers D (Airflow 3's "@daily"
    # would give it logical date D+1, the day just begun).
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    max_active_runs=1,
    doc_md=DOC,
    tags=["touchpoint", "batch", "gold"],
    default_args={"owner": "data-platform", "retries": 2, "retry_delay": dt.timedelta(minutes=2),
                  "retry_exponential_backoff": True, "max_retry_delay": dt.timedelta(minutes=30)},
)
def marketing_daily():
    tasks = [
        task(task_id=step, outlets=[*GOLD_ASSETS, HIGH_WATER_MARK] if step == "publish" else [])(run_pipeline_step)(step)
        for step in STEPS
    ]
    chain(*tasks)


marketing_daily()
