"""One entry point for every batch job: the CLI, spark-submit and Airflow all come through here.

    python -m touchpoint.jobs.runner <job> --date YYYY-MM-DD     (also the spark-submit main)
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import sys

# job name -> module exposing run(spark, settings, logical_date) -> dict summary
JOBS: dict[str, str] = {
    "identity": "touchpoint.jobs.identity",
    "profiles": "touchpoint.jobs.profiles",
    "attribution": "touchpoint.jobs.attribution",
    "pipeline": "touchpoint.jobs.pipeline",
    "maintenance": "touchpoint.jobs.maintenance",  # every step of marketing_daily, write-audit-publish
    "segments": "touchpoint.jobs.segments",
    "exports": "touchpoint.jobs.exports",
    "privacy": "touchpoint.jobs.privacy",  # processes the erasure queue (privacy_erasure DAG)
    "campaign_metrics": "touchpoint.jobs.campaign_metrics",
}

def covered_date(context) -> dt.date:
    """D, the UTC day an Airflow run of a daily DAG covers. The daily DAGs schedule data intervals
    (`CronDataIntervalTimetable`), so a scheduled run's logical date is its interval's start: the
    run firing at 03-02 00:00Z covers 03-01. A manual run without a logical date covers the last
    complete UTC day before it was triggered, never the day still under way."""
    from touchpoint.core.dates import calendar_date

    stamp = context.get("logical_date")
    if stamp is not None:
        return calendar_date(stamp)
    return calendar_date(context["dag_run"].run_after) - dt.timedelta(days=1)


# Jobs that commit to gold tables publish exchanges. Run on their own against published gold (not as
# a pipeline step, which writes staging), they hold the lake's gold write lock, as publish and
# erasures do, so none of their commits lands in a table folder while publish exchanges it. The
# pipeline, privacy and maintenance jobs take the lock themselves, around the steps that need it.
GOLD_WRITERS = frozenset({"identity", "profiles", "attribution", "segments", "exports", "campaign_metrics"})


def run_job(name: str, logical_date: dt.date, settings=None, spark=None) -> dict:
    from touchpoint.core.config import get_settings
    from touchpoint.core.dates import calendar_date
    from touchpoint.core.delta import gold_write_lock
    from touchpoint.core.spark import get_spark
    from touchpoint.jobs.pipeline import is_staging

    if name not in JOBS:
        raise SystemExit(f"unknown job {name!r}; known jobs: {', '.join(sorted(JOBS))}")
    settings = settings or get_settings()
    spark = spark or get_spark(f"touchpoint-{name}", settings=settings)
    module = importlib.import_module(JOBS[name])
    if name in GOLD_WRITERS and not is_staging(settings):
        with gold_write_lock(settings.lake_uri):
            return module.run(spark, settings, calendar_date(logical_date))
    return module.run(spark, settings, calendar_date(logical_date))


def main(argv: list[str] | None = None) -> int:
    from touchpoint.core.config import ConfigError, get_settings

    parser = argparse.ArgumentParser(prog="touchpoint.jobs.runner")
    parser.add_argument("job", choices=sorted(JOBS))
    parser.add_argument("--date", required=True, type=dt.date.fromisoformat, help="logical date D (UTC)")
    args = parser.parse_args(argv)
    if args.date >= dt.date.max:  # its as-of, the next midnight, does not exist
        parser.error(f"--date must be a day before 9999-12-31, got {args.date}")
    try:
        settings = get_settings()
    except ConfigError as error:  # one line naming the key, as the CLI prints it
        print(f"error: {error}", file=sys.stderr)
        return 2
    summary = run_job(args.job, args.date, settings=settings)
    print(json.dumps({"job": args.job, "date": args.date.isoformat(), **summary}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
