"""Incremental profiles: the changed customers' event summaries re-derived (the platform) against
every customer derived from all of silver (`mode="full"`, and what a run does when the changes since
the last one cannot be read), for the same day from the same stored state, alternating in one Spark
application.

    python -m bench.profiles_incremental [--lake DIR] [--events 2000000] [--days 90] [--repeat 3]

With `--lake` (e.g. `DIR/lake` of `bench.batch_pipeline --workdir DIR`) it reads silver.events from
there (nothing there is written); otherwise it builds a lake as `bench.attribution_peers` does. In
a scratch lake it runs identity and profiles for day D-1, D being the last event date in silver,
then identity for D, and keeps a copy of the gold tables. Then it runs profiles for D `--repeat`
times each way, each run starting from that copy, the two ways alternating. The changes between the
two days are those of a daily run: D's events cross the as-of. Reports the median seconds of each
way, their ratio, and checks that every run wrote the same gold.customer_profiles.
"""

from __future__ import annotations

from bench.changed_vs_all import job_benchmark


def main(argv: list[str] | None = None) -> int:
    # incremental at any size: at development size this shows where a full run is cheaper
    return job_benchmark("profiles_incremental", __doc__, argv, "profiles", ("gold.customer_profiles",),
                         profiles={"incremental_min_events": 0})


if __name__ == "__main__":
    raise SystemExit(main())
