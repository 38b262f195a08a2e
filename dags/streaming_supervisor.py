"""streaming_supervisor: keeps the ingest and speed queries alive and fresh. Wiring only."""

from __future__ import annotations

import datetime as dt

from airflow.sdk import dag, task

DOC = """
### streaming_supervisor
Every 5 minutes, for each of the `ingest` and `speed` queries: if its process is gone it is restarted
(`touchpoint stream ingest` / `touchpoint stream speed`, PID under `.state/streams`); if it is alive but one of
its queries last committed a micro-batch more than `max_lag_seconds` ago, the task fails naming that query,
which is the alert (log + failed task). The speed process runs two queries (campaign views `speed`,
customer views `speed_customers`): each is judged by its own batches.
"""


@dag(
    dag_id="streaming_supervisor",
    schedule=dt.timedelta(minutes=5),
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    max_active_runs=1,
    doc_md=DOC,
    tags=["touchpoint", "streaming", "ops"],
    params={"max_lag_seconds": 600},
    default_args={"owner": "data-platform", "retries": 2, "retry_delay": dt.timedelta(seconds=30),
                  "retry_exponential_backoff": True},
)
def streaming_supervisor():
    @task
    def supervise_ingest(**context):
        from touchpoint.streaming.supervisor import supervise

        now = context["dag_run"].run_after
        return supervise(None, "ingest", now, float(context["params"]["max_lag_seconds"]))

    @task
    def supervise_speed(**context):
        from touchpoint.streaming.supervisor import supervise

        now = context["dag_run"].run_after
        return supervise(None, "speed", now, float(context["params"]["max_lag_seconds"]))

    supervise_ingest()
    supervise_speed()


streaming_supervisor()
