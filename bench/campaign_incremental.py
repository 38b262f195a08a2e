"""Incremental campaign_metrics: the last run's tables plus what changed (the platform) against every
table derived from all of silver (`mode="full"`, and what a run does when the changes since the
last one cannot be read), for the same day from the same stored state, alternating in one Spark
application.

    python -m bench.campaign_incremental [--lake DIR] [--events 2000000] [--days 90] [--repeat 3]

With `--lake` (e.g. `DIR/lake` of `bench.batch_pipeline --workdir DIR`) it reads silver.events from
there (nothing there is written); otherwise it builds a lake as `bench.attribution_peers` does. In
a scratch lake it runs identity and campaign_metrics for day D-1, D being the last event date in
silver, then identity for D, and keeps a copy of the gold tables. Then it runs campaign_metrics for
D `--repeat` times each way, each run starting from that copy, the two ways alternating. The changes
between the two days are those of a daily run: D's events cross the as-of. Reports the median
seconds of each way, their ratio, and checks that every run wrote the same four tables.
"""

from __future__ import annotations

from bench.changed_vs_all import job_benchmark

COMPARED = ("gold.campaign_conversions", "gold.campaign_minute", "gold.campaign_daily", "gold.customer_activity")


def main(argv: list[str] | None = None) -> int:
    # incremental at any size: at development size this shows where a full run is cheaper
    return job_benchmark("campaign_incremental", __doc__, argv, "campaign_metrics", COMPARED,
                         campaign_metrics={"incremental_min_events": 0})


if __name__ == "__main__":
    raise SystemExit(main())
