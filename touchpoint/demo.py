"""`touchpoint demo` / `make demo`: the main job end to end on the local default.

Generates seeded traffic into a fresh Kafka topic, streams it into bronze/silver, prints the
reconciliation against the generator's report, then runs the daily pipeline (write–audit–publish)
for the last simulated day and prints what attribution found. Every run starts from a fresh demo
lake and topic, so it can be repeated.
"""

from __future__ import annotations

import datetime as dt
import shutil
from contextlib import nullcontext
from typing import Callable, ContextManager

from rich.console import Console
from rich.table import Table

DEMO_START = dt.date(2026, 3, 2)
DEMO_DAYS = 4


def run_demo(console: Console, customers: int = 300, seed: int = 42,
             progress_bars: Callable[[str], ContextManager] = nullcontext) -> dict:
    """`progress_bars(description)`: a block in which the pipeline's steps show as bars (the CLI's)."""
    from touchpoint.core.catalog import table_path
    from touchpoint.core.config import get_settings, require_kafka
    from touchpoint.core.delta import rs_table
    from touchpoint.core.spark import get_spark
    from touchpoint.generator import GeneratorConfig, generate_kafka
    from touchpoint.infra import kafka
    from touchpoint.streaming.ingest import start_stream

    # the generator's settings are checked before the demo's lake and topic are replaced
    config = GeneratorConfig(seed=seed, customers=customers, days=DEMO_DAYS, start_date=DEMO_START)
    base = get_settings()
    require_kafka(base)
    lake = base.state_path / "demo" / "lake"
    shutil.rmtree(lake, ignore_errors=True)
    settings = base.model_copy(update={"lake_root": str(lake), "kafka_topic": f"demo.events.{seed}"})
    kafka.delete_topic(settings.kafka_topic, settings)
    kafka.ensure_topic(settings.kafka_topic, settings=settings)

    console.rule("1. generate")
    report = generate_kafka(settings.kafka_topic, settings.kafka_bootstrap, config, progress=True)
    console.print(f"{report['lines']} records to topic {settings.kafka_topic}: {report['expected_silver']} valid, "
                  f"{report['duplicates_injected']} duplicates, {report['late_events']} late, "
                  f"{report['malformed_total']} malformed")

    console.rule("2. stream into bronze / silver / quarantine")
    spark = get_spark("touchpoint-demo", settings=settings)
    query = start_stream(spark, settings, topic=settings.kafka_topic, query_name="demo-ingest", trigger_once=True)
    query.awaitTermination()
    batches = rs_table(table_path("silver.reconciliation", settings)).to_pyarrow_table().to_pylist()
    totals = {k: sum(b[k] for b in batches) for k in ("bronze", "silver", "quarantine", "duplicates")}
    grid = Table("", "generator", "lake", title="reconciliation")
    grid.add_row("records", str(report["lines"]), str(totals["bronze"]))
    grid.add_row("silver (valid, unique)", str(report["expected_silver"]), str(totals["silver"]))
    grid.add_row("quarantine", str(report["expected_quarantine"]), str(totals["quarantine"]))
    grid.add_row("duplicates", str(report["expected_duplicates"]), str(totals["duplicates"]))
    console.print(grid)
    exact = (totals["silver"], totals["quarantine"], totals["duplicates"]) == (
        report["expected_silver"], report["expected_quarantine"], report["expected_duplicates"])
    console.print("reconciliation: " + ("[green]exact[/green]" if exact else "[red]MISMATCH[/red]"))

    result = {"report": report, "reconciliation": totals, "exact": exact}
    result.update(_batch_pipeline(console, spark, settings, progress_bars))
    return result


def _batch_pipeline(console: Console, spark, settings, progress_bars: Callable[[str], ContextManager]) -> dict:
    from touchpoint.jobs.runner import JOBS

    missing = [job for job in ("identity", "profiles", "attribution") if not _importable(JOBS[job])]
    if missing:
        console.print(f"batch jobs not available yet: {', '.join(missing)}")
        return {}
    from touchpoint.jobs.pipeline import run as run_pipeline

    logical_date = DEMO_START + dt.timedelta(days=DEMO_DAYS - 1)
    console.rule(f"3. marketing_daily for {logical_date} (write, audit, publish)")
    with progress_bars(f"marketing_daily {logical_date}"):
        steps = run_pipeline(spark, settings, logical_date)
    console.print({step: _short(summary) for step, summary in steps.items()})
    daily = spark.read.format("delta").load(_path("gold.attribution_daily", settings))
    by_channel = (daily.groupBy("model", "channel").sum("revenue").withColumnRenamed("sum(revenue)", "revenue")
                  .orderBy("model", "channel").collect())
    grid = Table("model", "channel", f"attributed revenue ({settings.reporting_currency})",
                 title="revenue by channel and model")
    for row in by_channel:
        grid.add_row(row["model"], row["channel"], f"{row['revenue']:.2f}")
    console.print(grid)
    return {"pipeline": steps}


def _path(name: str, settings) -> str:
    from touchpoint.core.catalog import table_path

    return table_path(name, settings)


def _short(summary) -> str:
    text = str(summary)
    return text if len(text) < 120 else text[:117] + "..."


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


if __name__ == "__main__":
    run_demo(Console())

