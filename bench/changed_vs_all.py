"""The frame of the incremental benchmarks (`attribution_incremental`, `profiles_incremental`): one
day of a job run two ways from the same stored state, alternating in one Spark application, the
changed customers re-derived against every customer, with a check that both ways write the same
tables.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

from bench.common import progress, write_result
from bench.faults import RssSampler, lake_settings

WAYS = ("changed", "all")


def arguments(doc: str, argv: list[str] | None, lake_help: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lake", default=None, help=lake_help)
    parser.add_argument("--events", type=int, default=2_000_000, help="when building a lake")
    parser.add_argument("--days", type=int, default=90, help="when building a lake")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--driver-memory", default="8g")
    return parser.parse_args(argv)


def link_copy(source: Path, target: Path) -> None:
    """A table folder copied as staging copies it: logs copied, data files hard-linked."""
    def copy(src: str, dst: str) -> None:
        if f"{os.sep}_delta_log{os.sep}" in src:
            shutil.copy2(src, dst)
        else:
            os.link(src, dst)

    shutil.copytree(source, target, copy_function=copy)


def table_digest(spark, settings, names) -> dict:
    """Rows and an order-free hash sum of each table."""
    from pyspark.sql import functions as F

    from touchpoint.core.catalog import table_path

    digest = {}
    for name in names:
        frame = spark.read.format("delta").load(table_path(name, settings))
        row = frame.select(F.count(F.lit(1)), F.sum(F.xxhash64(*frame.columns).cast("decimal(38,0)"))).first()
        digest[name] = [row[0], str(row[1])]
    return digest


def source_lake(spark, args: argparse.Namespace, settings, workdir: Path, result: dict):
    """The settings of the lake read (`--lake`, or one built as bench.attribution_peers builds it),
    with its silver.events linked into the scratch lake of `settings` (only read, never written)."""
    from pyspark.sql import functions as F

    from touchpoint.core.catalog import table_path

    if args.lake:
        source = lake_settings(args.lake)
    else:
        from bench.attribution_peers import build_lake

        source = lake_settings(workdir / "source", spark_driver_memory=args.driver_memory)
        result["data"] = build_lake(spark, source, args.events, args.days, args.seed, workdir)
    os.makedirs(settings.lake_root, exist_ok=True)
    os.symlink(Path(table_path("silver.events", source)).parent, Path(settings.lake_root) / "silver")
    silver = spark.read.format("delta").load(table_path("silver.events", settings))
    result["parameters"].update(last_day=silver.agg(F.max("event_date")).first()[0].isoformat(),
                                silver_events=silver.count())
    return source


def alternate(repeat: int, restore: Callable[[str], None], run: Callable[[str], dict],
              digest: Callable[[], dict]) -> dict:
    """`repeat` rounds of both ways, the order alternating; before each run `restore(way)` puts the
    stored state back. Returns the seconds, medians, ratio, the last summary of each way and the
    tables written, after checking that every run of both ways wrote the same tables."""
    seconds: dict[str, list[float]] = {way: [] for way in WAYS}
    summaries, digests = {}, {}
    for round_number in range(repeat):
        for way in WAYS if round_number % 2 == 0 else WAYS[::-1]:
            restore(way)
            started = time.monotonic()
            summaries[way] = run(way)
            seconds[way].append(round(time.monotonic() - started, 1))
            written = digest()
            if digests.setdefault(way, written) != written:
                raise AssertionError(f"{way}: round {round_number + 1} wrote other tables than round 1")
            progress(f"round {round_number + 1} {way}: {seconds[way][-1]} s ({summaries[way]['derivation']})")
    if digests["changed"] != digests["all"]:
        raise AssertionError(f"the two ways wrote different tables: {digests}")
    medians = {way: statistics.median(values) for way, values in seconds.items()}
    progress(f"changed customers {medians['changed']} s, every customer {medians['all']} s")
    return {"seconds": seconds, "median_seconds": medians,
            "ratio_all_to_changed": round(medians["all"] / medians["changed"], 2),
            "summaries": summaries, "tables": digests["changed"], "identical_tables": True}


def job_benchmark(name: str, doc: str, argv: list[str] | None, job: str, compared: tuple[str, ...],
                  **overrides) -> int:
    """One day of `touchpoint.jobs.<job>` (a job with `run(..., mode="auto"|"full")` and a
    `derivation` in its summary) both ways. In a scratch lake reading the source's silver.events it
    runs identity and the job for day D-1, D being the last event date in silver, then identity for D,
    and keeps a copy of the gold tables; then the job for D `--repeat` times each way, each run
    starting from that copy. `overrides`: settings of the scratch lake."""
    args = arguments(doc, argv, "a lake with silver.events")

    from touchpoint.core.catalog import table_path
    from touchpoint.core.spark import get_spark
    from touchpoint.jobs import identity

    module = importlib.import_module(f"touchpoint.jobs.{job}")
    logging.basicConfig(format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    logging.getLogger(module.__name__).setLevel(logging.INFO)  # the steps' times of jobs that log them
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    settings = lake_settings(workdir / "scratch", spark_driver_memory=args.driver_memory, spark_shuffle_partitions=4,
                             **overrides)
    spark = get_spark(f"bench-{name}", settings=settings)
    result: dict = {"parameters": {**vars(args)}}
    try:
        with RssSampler(lambda: [os.getpid()]) as memory:
            source_lake(spark, args, settings, workdir, result)
            day = dt.date.fromisoformat(result["parameters"]["last_day"])
            before = day - dt.timedelta(days=1)
            result["parameters"]["day"] = day.isoformat()
            progress(f"{result['parameters']['silver_events']:,} silver events; identity and {job} for {before}")
            timed(result, "identity_before", lambda: identity.run(spark, settings, before))
            result[f"{job}_before"] = timed(result, f"{job}_before", lambda: module.run(spark, settings, before))
            progress(f"{job} for {before}: {result[f'{job}_before_seconds']} s; identity for {day}")
            identity.run(spark, settings, day)

            gold = Path(table_path(compared[0], settings)).parent
            base = workdir / "gold-base"
            link_copy(gold, base)

            def restore(way: str) -> None:
                shutil.rmtree(gold)
                link_copy(base, gold)

            outcome = alternate(
                args.repeat, restore,
                lambda way: module.run(spark, settings, day, mode="auto" if way == "changed" else "full"),
                lambda: table_digest(spark, settings, compared))
        summaries = outcome.pop("summaries")
        result.update(outcome, derivation={way: summary["derivation"] for way, summary in summaries.items()},
                      peak_rss_mb=dict(memory.peaks_mb))
    finally:
        spark.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    write_result(name, result)
    return 0


def timed(result: dict, name: str, step):
    """Runs a step, recording its seconds as `<name>_seconds`; returns what it returned."""
    started = time.monotonic()
    returned = step()
    result[f"{name}_seconds"] = round(time.monotonic() - started, 1)
    return returned
