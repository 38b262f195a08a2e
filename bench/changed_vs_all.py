"""The frame of the incremental benchmarks (`attribution_incremental`, `profiles_incremental`): one
day of a job run two ways from the same stored state, alternating in one Spark application, the
changed customers re-derived against every customer, with a check that both ways write the same
tables.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path
from typing import Callable

from bench.common import alternate_ways, frame_digest, progress
from bench.faults import lake_settings

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
    from touchpoint.core.catalog import table_path

    return {name: frame_digest(spark.read.format("delta").load(table_path(name, settings))) for name in names}


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


def timed(result: dict, name: str, step):
    """Runs a step, recording its seconds as `<name>_seconds`; returns what it returned."""
    started = time.monotonic()
    returned = step()
    result[f"{name}_seconds"] = round(time.monotonic() - started, 1)
    return returned


def alternate(repeat: int, restore: Callable[[str], None], run: Callable[[str], dict],
              digest: Callable[[], dict]) -> dict:
    """`repeat` rounds of both ways, the order alternating; before each run `restore(way)` puts the
    stored state back. Returns the seconds, medians, ratio, the last summary of each way and the
    tables written, after checking that every run of both ways wrote the same tables."""
    def timed_way(way: str) -> tuple[float, dict, dict]:
        restore(way)
        started = time.monotonic()
        summary = run(way)
        return round(time.monotonic() - started, 1), summary, digest()

    outcome = alternate_ways(WAYS, repeat, timed_way, lambda summary: summary["derivation"])
    medians = outcome["median_seconds"]
    progress(f"changed customers {medians['changed']} s, every customer {medians['all']} s")
    return {"seconds": outcome["seconds"], "median_seconds": medians,
            "ratio_all_to_changed": round(medians["all"] / medians["changed"], 2),
            "summaries": {way: runs[-1] for way, runs in outcome["summaries"].items()},
            "tables": outcome["digest"], "identical_tables": True}
