"""The customer-views speed query's micro-batches, step by step, on a lake that keeps growing.

    python -m bench.speed_customers [--events 600000] [--customers 30000] [--initial 0.6]
                                    [--increments 8] [--seed 42] [--workdir DIR]

Generates `--events` lines (seeded) and ingests the first `--initial` share into a fresh lake as
one file; the rest is cut into `--increments` files. Nothing is published, so every silver row is
uncovered, as in bench/freshness. The initial lake and the increment files are kept in `--workdir`
(`prepared/`) and reused by the next run with the same parameters, so that two versions of the
code can be compared on the same silver.

Then one `SpeedSink` keeping the customer views (`views="customers"`, the query
`speed_customers`) reads silver's change feed as the running query does: micro-batch 0 is every
change of the initial silver; then, for each increment, the file is ingested (one or more silver
commits, as ingest micro-batches are; not timed) and one micro-batch reads its changes. Reported per micro-batch:
its change rows and the seconds of each of its steps (identity, last_touch,
activity_and_segments, from the sink's own step log), and at the end the hash sums of the speed
tables it wrote, which two code versions must share.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import frame_digest, progress, write_result
from bench.faults import RssSampler, lake_settings
from bench.speed_identity import add_growth_arguments, generated_parts

STEPS = ("identity", "last_touch", "activity_and_segments")
STEP_LINE = re.compile(r"^speed \S+: (\w+) done after ([0-9.]+)s$")


class StepLog(logging.Handler):
    """Collects the sink's `<step> done after <s>s` lines (seconds since its micro-batch began)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.marks: list[tuple[str, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        found = STEP_LINE.match(record.getMessage())
        if found:
            self.marks.append((found.group(1), float(found.group(2))))

    def take(self) -> dict[str, float]:
        """Seconds of each step of the micro-batch just run (each mark minus the one before it)."""
        steps, before = {}, 0.0
        for name, after in self.marks:
            steps[name] = round(after - before, 2)
            before = after
        self.marks = []
        return steps


def prepare(spark, args: argparse.Namespace, prepared: Path) -> dict:
    """Generate the lines and ingest the initial share once; later runs with the same parameters
    reuse both (the increments are kept as files, ingested by each run between its micro-batches)."""
    from touchpoint.streaming.ingest import ingest_files
    from touchpoint.streaming.speed import enable_change_feed

    key = {name: getattr(args, name) for name in ("events", "customers", "initial", "increments", "seed")}
    meta_file = prepared / "meta.json"
    if meta_file.exists():
        meta = json.loads(meta_file.read_text())
        if meta["key"] == key:
            progress(f"reusing the lake and increments in {prepared}")
            return meta
    shutil.rmtree(prepared, ignore_errors=True)
    prepared.mkdir(parents=True)
    parts = generated_parts(args)
    for index, part in enumerate(parts):
        (prepared / f"part_{index:02d}.jsonl").write_bytes(b"\n".join(part) + b"\n")
    initial_settings = lake_settings(prepared / "lake")
    start_version = enable_change_feed(spark, initial_settings)
    ingest_files(spark, initial_settings, prepared / "part_00.jsonl")
    progress(f"ingested the initial {len(parts[0]):,} lines")
    meta = {"key": key, "lines": sum(len(p) for p in parts), "initial_lines": len(parts[0]),
            "increment_lines": [len(p) for p in parts[1:]], "start_version": start_version}
    meta_file.write_text(json.dumps(meta))
    return meta


def measure(spark, settings, meta: dict, prepared: Path, result: dict) -> None:
    from touchpoint.core.catalog import table_path
    from touchpoint.core.delta import latest_version
    from touchpoint.streaming.ingest import ingest_files
    from touchpoint.streaming.speed import SpeedSink

    silver_path = table_path("silver.events", settings)
    step_log = StepLog()
    logging.getLogger("touchpoint.streaming.speed").addHandler(step_log)
    logging.getLogger("touchpoint.streaming.speed").setLevel(logging.INFO)
    sink = SpeedSink(settings, "speed_customers", views="customers")
    batches = []
    read_through = meta["start_version"] - 1
    try:
        for batch_id in range(len(meta["increment_lines"]) + 1):
            if batch_id:  # silver grows between micro-batches, as under the running query
                ingest_files(spark, settings, prepared / f"part_{batch_id:02d}.jsonl")
            after, read_through = read_through, latest_version(spark, silver_path)
            changes = (spark.read.format("delta").option("readChangeFeed", "true")
                       .option("startingVersion", after + 1).option("endingVersion", read_through).load(silver_path))
            builds = dict(sink.identity_builds)
            started = time.monotonic()
            outcome = sink(changes, batch_id)
            seconds = round(time.monotonic() - started, 2)
            steps = step_log.take()
            if outcome["rows"] and set(STEPS) - steps.keys():  # the sink's step lines changed: say so, never report 0 s
                raise RuntimeError(f"micro-batch {batch_id}: no step line for {sorted(set(STEPS) - steps.keys())} "
                                   f"in the sink's log (expected {STEP_LINE.pattern!r})")
            identity = next((way for way, count in sink.identity_builds.items() if count > builds[way]), "kept")
            batches.append({"batch_id": batch_id, "silver_versions": [after + 1, read_through], "rows": outcome["rows"],
                            "seconds": seconds, "steps": steps, "identity": identity})
            progress(f"micro-batch {batch_id} (silver {after + 1}..{read_through}, {outcome['rows']:,} change rows): "
                     f"{seconds} s; " + ", ".join(f"{name} {steps[name]} s" for name in STEPS) + f" (map {identity})")
    finally:
        sink.release()
        logging.getLogger("touchpoint.streaming.speed").removeHandler(step_log)
    increments = batches[1:]
    result["batches"] = batches
    result["median_increment_seconds"] = {
        "total": round(statistics.median(b["seconds"] for b in increments), 2),
        **{name: round(statistics.median(b["steps"][name] for b in increments), 2) for name in STEPS}}
    result["output_digests"] = {
        name: frame_digest(spark.read.format("delta").load(table_path(name, settings)))
        for name in ("speed.campaign_conversions", "speed.customer_activity", "speed.segment_membership")}
    progress(f"median per increment: {result['median_increment_seconds']}")
    progress(f"output digests: {result['output_digests']}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_growth_arguments(parser)
    parser.add_argument("--workdir", default=None, help="keeps the ingested lake for the next run (default: a temporary folder)")
    args = parser.parse_args(argv)

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-speed-customers-"))
    run_lake = workdir / "run" / "lake"
    shutil.rmtree(run_lake.parent, ignore_errors=True)
    settings = lake_settings(run_lake, spark_driver_memory=args.driver_memory)
    result: dict = {"parameters": {**vars(args), "spark_master": settings.spark_master}}

    from touchpoint.core.spark import get_spark

    spark = get_spark("bench-speed-customers", settings=settings)
    try:
        with RssSampler(lambda: [os.getpid()]) as memory:
            prepared = workdir / "prepared"
            meta = prepare(spark, args, prepared)
            result["data"] = {k: v for k, v in meta.items() if k != "key"}
            # Each run starts from the initial silver alone (no increments, speed tables or checkpoints).
            shutil.copytree(prepared / "lake", run_lake)
            measure(spark, settings, meta, prepared, result)
        result["peak_rss_mb"] = dict(memory.peaks_mb)
    finally:
        spark.stop()
        shutil.rmtree(run_lake.parent, ignore_errors=True)
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    write_result("speed_customers", result)
    return result


if __name__ == "__main__":
    main()
