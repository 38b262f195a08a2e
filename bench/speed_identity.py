"""The customer-views speed query's identity map, kept between micro-batches vs rebuilt each one.

    python -m bench.speed_identity [--events 600000] [--customers 30000] [--initial 0.6]
                                   [--increments 8] [--seed 42]

Generates `--events` lines (seeded), ingests the first `--initial` share into a fresh lake as one
file, then the rest as `--increments` files, one after another (each file is one or more silver
commits, as ingest micro-batches are). Nothing is published, so every silver row is uncovered, as
in bench/freshness. Then, for each increment's silver version, in one Spark application:
- **kept**: one `SpeedSink` carried through the versions in order extends its kept map with the
  increment's rows (`SpeedSink._identity`, as the running query does);
- **rebuilt**: a new `SpeedSink` derives the map from every uncovered row (what a micro-batch did
  before session 25, and still does after a publish or a restart).
Both maps are compared whole at every version (they must be equal). Reported: seconds per
increment of each way, their medians and ratio, and which path the kept sink took.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import frame_digest, progress, write_result
from bench.faults import RssSampler, lake_settings


def add_growth_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a silver that grows by increments (this bench and bench/speed_customers)."""
    parser.add_argument("--events", type=int, default=600_000)
    parser.add_argument("--customers", type=int, default=30_000)
    parser.add_argument("--initial", type=float, default=0.6, help="share of the lines in silver before the first increment")
    parser.add_argument("--increments", type=int, default=8)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--driver-memory", default="6g")


def generated_parts(args: argparse.Namespace) -> list[list[bytes]]:
    """The seeded generator's lines, cut into the initial share and `--increments` parts."""
    from touchpoint.generator import GeneratorConfig, iter_records

    config = GeneratorConfig(seed=args.seed, customers=args.customers, days=14, start_date=dt.date(2026, 3, 2),
                             events_per_customer=args.events / args.customers, max_events=args.events)
    lines = [record.payload for record in iter_records(config)]
    first = int(len(lines) * args.initial)
    step = -(-(len(lines) - first) // args.increments)
    return [lines[:first]] + [lines[i:i + step] for i in range(first, len(lines), step)]


def measure(spark, settings, args: argparse.Namespace, workdir: Path, result: dict) -> None:
    from touchpoint.core.catalog import table_path
    from touchpoint.core.delta import latest_version, read_version
    from touchpoint.streaming.ingest import ingest_files
    from touchpoint.streaming.speed import EVENT_COLUMNS, SpeedSink, enable_change_feed

    parts = generated_parts(args)
    enable_change_feed(spark, settings)
    silver_path = table_path("silver.events", settings)
    versions = []
    for index, part in enumerate(parts):
        file = workdir / f"part_{index:02d}.jsonl"
        file.write_bytes(b"\n".join(part) + b"\n")
        ingest_files(spark, settings, file)
        versions.append(latest_version(spark, silver_path))
        progress(f"ingested part {index} ({len(part):,} lines): silver version {versions[-1]}")
    result["data"] = {"lines": sum(len(part) for part in parts), "initial_lines": len(parts[0]),
                      "increment_lines": [len(p) for p in parts[1:]], "silver_versions": versions}

    def silver_at(version: int):
        return version, read_version(spark, silver_path, version).select(*EVENT_COLUMNS, "source_ts")

    kept_sink = SpeedSink(settings, "bench_kept", views="customers")
    kept_sink._identity(spark, silver_at(versions[0]))  # the map as it stood before the increments
    seconds: dict[str, list[float]] = {"kept": [], "rebuilt": []}
    paths, identifiers = [], []
    for number, version in enumerate(versions[1:], start=1):
        before = dict(kept_sink.identity_builds)
        fresh = SpeedSink(settings, "bench_rebuilt", views="customers")
        maps = {}
        # The order alternates: whichever runs second finds silver's files in the page cache.
        for way in ("kept", "rebuilt") if number % 2 else ("rebuilt", "kept"):
            started = time.monotonic()
            maps[way] = (kept_sink if way == "kept" else fresh)._identity(spark, silver_at(version))
            seconds[way].append(round(time.monotonic() - started, 2))
        kept, rebuilt = maps["kept"], maps["rebuilt"]
        paths.append(next(k for k, v in kept_sink.identity_builds.items() if v > before[k]))
        kept_digest, rebuilt_digest = frame_digest(kept.frame), frame_digest(rebuilt.frame)
        fresh.release()
        if kept_digest != rebuilt_digest:
            raise AssertionError(f"silver version {version}: kept map {kept_digest} != rebuilt {rebuilt_digest}")
        identifiers.append(kept.identifiers)
        progress(f"increment {number} (silver version {version}, {kept.identifiers:,} identifiers): kept "
                 f"{seconds['kept'][-1]} s ({paths[-1]}), rebuilt {seconds['rebuilt'][-1]} s; maps equal")
    kept_sink.release()
    medians = {way: round(statistics.median(values), 2) for way, values in seconds.items()}
    result.update(seconds=seconds, median_seconds=medians, kept_paths=paths, identifiers=identifiers,
                  ratio_rebuilt_to_kept=round(medians["rebuilt"] / medians["kept"], 2), identical_maps=True)
    progress(f"median per increment: kept {medians['kept']} s, rebuilt {medians['rebuilt']} s "
             f"({result['ratio_rebuilt_to_kept']}x)")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_growth_arguments(parser)
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="bench-speed-identity-"))
    settings = lake_settings(workdir / "lake", spark_driver_memory=args.driver_memory)
    result: dict = {"parameters": {**vars(args), "spark_master": settings.spark_master}}

    from touchpoint.core.spark import get_spark

    spark = get_spark("bench-speed-identity", settings=settings)
    try:
        with RssSampler(lambda: [os.getpid()]) as memory:
            measure(spark, settings, args, workdir, result)
        result["peak_rss_mb"] = dict(memory.peaks_mb)
    finally:
        spark.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    write_result("speed_identity", result)
    return result


if __name__ == "__main__":
    main()
