"""Benchmark 3, batch: the whole daily pipeline (optimize_silver, prepare_staging, identity, profiles,
attribution, segments, exports, audit, publish) on `days` days of generated history: the full
rebuild (first run, no earlier state), then one incremental day. Target: incremental <= 10 % of full.

    python -m bench.batch_pipeline [--events 10000000] [--days 90] [--seed 42] [--driver-memory 8g]

History: the generator (historical mode, seeded) over days + 1 days from 2026-01-01; records that
arrive before day `days` + 1 go to the history file, those arriving during day `days` + 1 to the
increment file (late events of earlier days included), later arrivals are dropped. Both are
ingested with `touchpoint ingest --file`'s code path (not timed as part of the pipeline). Then
`pipeline` for the last history day (full) and for the next day (incremental), step by step, in
one Spark application. `--lake DIR` keeps the lake (bench.attribution_peers can reuse it).

At full size the history takes about 45 minutes to generate and ingest on 2 cores before the
pipeline starts. `--workdir DIR` keeps the generated files and the lake there, so a run that was
stopped goes on where it stopped: generation is skipped when DIR holds the files of the same
parameters, the file ingest resumes after its last committed batch, and the full run starts from
bronze and silver alone (every other table of the lake is dropped first, so it is a full rebuild;
if the stopped run had ingested the increment file already, silver holds its late events too).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

from bench.common import progress, write_result
from bench.faults import JARS, REPO, RssSampler

START = dt.date(2026, 1, 1)
EVENTS_PER_CUSTOMER = 20.0
# The daily exports the pipeline sends (the default settings send none): one per kind of destination.
EXPORTS = ({"segment": "high_value_recent_buyers", "destination": "google_customer_match"},
           {"segment": "lapsed_customers", "destination": "meta_custom_audience"},
           {"segment": "cart_abandoners", "destination": "esp"})


def split_history(config, cut_ms: int, end_ms: int, history: Path, increment: Path) -> dict:
    from touchpoint.generator import GenerationReport, iter_records

    counts = {"history": 0, "increment": 0, "dropped_after_increment": 0}
    report = GenerationReport()
    with open(history, "wb", buffering=1 << 20) as before, open(increment, "wb", buffering=1 << 20) as during:
        for number, record in enumerate(iter_records(config, report), start=1):
            if record.timestamp_ms < cut_ms:
                before.write(record.payload + b"\n")
                counts["history"] += 1
            elif record.timestamp_ms < end_ms:
                during.write(record.payload + b"\n")
                counts["increment"] += 1
            else:
                counts["dropped_after_increment"] += 1
            if number % 1_000_000 == 0:
                progress(f"  generated {number:,} lines")
    return {**counts, "lines": report.lines, "valid_unique_events": report.valid_unique_events}


def run_pipeline(spark, settings, logical_date: dt.date) -> dict:
    from touchpoint.jobs import pipeline

    steps = {}
    started = time.monotonic()
    for step in pipeline.STEPS:
        step_started = time.monotonic()
        pipeline.run_step(step, logical_date, settings, spark)
        steps[step] = round(time.monotonic() - step_started, 1)
        progress(f"  {logical_date} {step}: {steps[step]}s")
    return {"seconds": round(time.monotonic() - started, 1), "steps": steps}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_300_000, help="approximate lines over the whole history")
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--driver-memory", default="8g")
    parser.add_argument("--lake", default=None, help="keep the lake here (default: a temp folder, removed after)")
    parser.add_argument("--workdir", default=None,
                        help="keep the generated files and the lake here and reuse them in the next run")
    args = parser.parse_args(argv)
    os.chdir(REPO)  # segments/ and .state/ resolve against the repository

    from touchpoint.core.config import load_settings
    from touchpoint.core.spark import get_spark
    from touchpoint.generator import GeneratorConfig
    from touchpoint.streaming.ingest import ingest_files

    reuse = args.workdir is not None
    workdir = Path(args.workdir) if reuse else Path(tempfile.mkdtemp(prefix="bench-batch-"))
    workdir.mkdir(parents=True, exist_ok=True)
    lake = Path(args.lake) if args.lake else workdir / "lake"
    stamp = workdir / "generated.json"
    wanted = {"events": args.events, "days": args.days, "seed": args.seed}
    earlier = json.loads(stamp.read_text()) if reuse and stamp.exists() else None
    generated = earlier["data"] if earlier is not None and earlier["parameters"] == wanted else None
    if generated is not None:
        keep_only_ingested(lake)
        for folder in ("exports", "reports"):  # written by the pipeline, as the dropped tables were
            shutil.rmtree(workdir / folder, ignore_errors=True)
    elif lake.exists():  # a lake of other files
        shutil.rmtree(lake)
    settings = load_settings(lake_root=str(lake), jars_dir=str(JARS), spark_driver_memory=args.driver_memory,
                             exports_dir=str(workdir / "exports"), reports_dir=str(workdir / "reports"),
                             exports={"daily": EXPORTS})
    customers = max(10, math.ceil(args.events / (EVENTS_PER_CUSTOMER * 1.016)))
    # events_per_customer is spread over the whole window, so the daily volume is even.
    config = GeneratorConfig(seed=args.seed, customers=customers, days=args.days + 1, start_date=START,
                             events_per_customer=EVENTS_PER_CUSTOMER)
    last_day = START + dt.timedelta(days=args.days - 1)
    increment_day = last_day + dt.timedelta(days=1)
    cut = dt.datetime.combine(increment_day, dt.time(), tzinfo=dt.timezone.utc)
    cut_ms = int(cut.timestamp() * 1000)
    result: dict = {"parameters": {**vars(args), "customers": customers, "start_date": START.isoformat(),
                                   "full_date": last_day.isoformat(), "incremental_date": increment_day.isoformat(),
                                   "spark_master": settings.spark_master, "exports": list(EXPORTS),
                                   "shuffle_partitions": settings.spark_shuffle_partitions}}
    try:
        if generated is not None:
            result["data"] = {**generated, "reused_from": str(workdir)}
            progress(f"reusing the files generated in {workdir}")
        else:
            progress(f"generating {args.days + 1} days for {customers:,} customers")
            stamp.unlink(missing_ok=True)
            started = time.monotonic()
            result["data"] = split_history(config, cut_ms, cut_ms + 86_400_000, workdir / "history.jsonl",
                                           workdir / "increment.jsonl")
            result["data"]["generate_seconds"] = round(time.monotonic() - started, 1)
            stamp.write_text(json.dumps({"parameters": wanted, "data": result["data"]}))
        progress(f"history {result['data']['history']:,} lines, increment {result['data']['increment']:,}")

        # the file ingest logs each committed batch: the history takes tens of minutes at full size
        logging.basicConfig(format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
        logging.getLogger("touchpoint.streaming.ingest").setLevel(logging.INFO)
        logging.getLogger("touchpoint.jobs.attribution").setLevel(logging.INFO)  # its steps' times
        spark = get_spark("bench-batch-pipeline", settings=settings)
        with RssSampler(lambda: [os.getpid()]) as memory:
            started = time.monotonic()
            [result["ingest_history"]] = ingest_files(spark, settings, workdir / "history.jsonl")
            result["ingest_history_seconds"] = round(time.monotonic() - started, 1)
            progress(f"history ingested in {result['ingest_history_seconds']}s; full pipeline for {last_day}")
            result["full"] = run_pipeline(spark, settings, last_day)
            started = time.monotonic()
            ingest_files(spark, settings, workdir / "increment.jsonl")
            result["ingest_increment_seconds"] = round(time.monotonic() - started, 1)
            progress(f"incremental pipeline for {increment_day}")
            result["incremental"] = run_pipeline(spark, settings, increment_day)
        result["peak_rss_mb"] = dict(memory.peaks_mb)
        silver = spark.read.format("delta").load(f"{settings.lake_uri}/silver/events").count()
        result["silver_events"] = silver
        result["ratio_incremental_to_full"] = round(result["incremental"]["seconds"] / result["full"]["seconds"], 4)
        result["target_ratio"] = 0.10
        progress(f"full {result['full']['seconds']}s, incremental {result['incremental']['seconds']}s, "
                 f"ratio {result['ratio_incremental_to_full']}")
    finally:
        if not reuse:
            shutil.rmtree(workdir, ignore_errors=True)
    write_result("batch_pipeline", result)
    return result


INGESTED_LAYERS = ("bronze", "silver")


def keep_only_ingested(lake: Path) -> None:
    """Drop every table of a kept lake but bronze and silver: the next pipeline run is a full rebuild."""
    if not lake.exists():
        return
    for entry in lake.iterdir():
        if entry.name not in INGESTED_LAYERS:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


if __name__ == "__main__":
    main()
