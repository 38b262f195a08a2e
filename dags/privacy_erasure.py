"""privacy_erasure: erase the people whose requests are queued. Wiring only."""

from __future__ import annotations

import datetime as dt

from airflow.sdk import chain, dag, task
from airflow.timetables.trigger import CronTriggerTimetable

DOC = """
### privacy_erasure
Processes the erasure queue `privacy.erasure_requests` (filled by `touchpoint forget --queue`; a
request holds the identifier's type and SHA-256 only, never the raw value, and leaves the queue once
handled). For each request, oldest first, `touchpoint.jobs.privacy.erase` resolves the person through
the identity map, puts their hashed identifiers on the suppression list, deletes their rows from
every table that declares subject columns (bronze, silver, quarantine, identity, profiles,
attribution, segments, speed), purges the files (REORG PURGE, VACUUM LITE), rewrites local export
files and logs the erasure (hashes and counts only) in `gold.erasure_log`. The next export of every
segment and destination then carries a `removes` row for them.

`verify` re-checks every logged erasure against the suppression list. Same entry point as
`touchpoint run privacy --date D`. Runs at half past each hour, away from `marketing_daily` and
`lake_maintenance`, which fire on the hour (see docs/PRIVACY.md).
"""


@task(task_id="erase_queued")
def erase_queued(**context) -> dict:
    from touchpoint.jobs.runner import run_job

    stamp = context.get("logical_date") or context["dag_run"].run_after
    return run_job("privacy", stamp.date())


@task(task_id="verify")
def verify() -> dict:
    from touchpoint.jobs.privacy import verify_erasure_log

    return verify_erasure_log()


@dag(
    dag_id="privacy_erasure",
    # Half past each hour: marketing_daily and lake_maintenance fire on the hour (00:00Z), and an
    # erasure waits for a publish's lock anyway (docs/PRIVACY.md, "Operations").
    schedule=CronTriggerTimetable("30 * * * *", timezone="UTC"),
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    max_active_runs=1,
    doc_md=DOC,
    tags=["touchpoint", "privacy"],
    default_args={"owner": "data-platform", "retries": 2, "retry_delay": dt.timedelta(minutes=5),
                  "retry_exponential_backoff": True, "max_retry_delay": dt.timedelta(minutes=30)},
)
def privacy_erasure():
    chain(erase_queued(), verify())


privacy_erasure()
