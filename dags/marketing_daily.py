"""marketing_daily: the batch layer for logical date D, as write–audit–publish. Wiring only."""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Asset, chain, dag, task

GOLD_ASSETS = [
    Asset(name=f"gold.{table}", uri=f"touchpoint://gold/{table}")
    for table in ("identity_map", "identity_merges", "identity_guardrails", "customer_profiles",
                  "attribution_credits", "attribution_daily", "markov_removal_effects", "attribution_paths",
                  "segment_membership", "segment_sizes", "export_log")
]
HIGH_WATER_MARK = Asset(name="gold.high_water_mark", uri="touchpoint://gold/high_water_mark")

DOC = """
### marketing_daily
For logical date **D** (events with `event_ts < D+1 00:00Z`):

1. `optimize_silver` compacts D's silver partition written by the stream;
2. `prepare_staging` copies the published gold tables into `staging/dD`;
3. `identity → profiles → attribution → segments → exports` run against staging;
4. `audit` runs the Great Expectations suites on the staged tables: a critical failure stops the run;
5. `publish` swaps the audited tables into `gold.*`, releases the exports and records the
   high-water mark H = D+1 00:00Z that the serving views use.

Every task is idempotent per D (re-running re-stages from what is published) and calls the same
entry point as `touchpoint run pipeline --date D` (`touchpoint.jobs.pipeline.run_step`).
"""


def _logical_date(context) -> dt.date:
    stamp = context.get("logical_date") or context["dag_run"].run_after
    return stamp.date()


def run_pipeline_step(step: str, **context) -> dict:
    from touchpoint.jobs.pipeline import run_step

    return run_step(step, _logical_date(context))


# The steps of touchpoint.jobs.pipeline.STEPS, spelled out so the DAG file stays import-light.
STEPS = ("optimize_silver", "prepare_staging", "identity", "profiles", "attribution", "segments", "campaign_metrics",
         "exports",
         "audit", "publish")


@dag(
    dag_id="marketing_daily",
    schedule="@daily",
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
