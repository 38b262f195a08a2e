"""The `touchpoint` command line (typer + rich). Heavy imports stay inside commands."""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table as RichTable

from touchpoint.core.config import ConfigError, get_settings

app = typer.Typer(help="touchpoint: a self-hosted marketing data platform.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)


def _settings():
    try:
        return get_settings()
    except ConfigError as error:
        err_console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None


@app.command()
def up(cluster: bool = typer.Option(False, help="also start a local Spark standalone cluster")) -> None:
    """Start the local Kafka broker (and optionally a Spark cluster). Idempotent."""
    from touchpoint.infra import cluster as spark_cluster
    from touchpoint.infra import kafka

    settings = _settings()
    with console.status("starting Kafka broker"):
        broker = kafka.start(settings)
        kafka.ensure_topic(settings.kafka_topic, settings=settings)
    console.print(f"kafka: running (pid {broker.pid}) on {broker.bootstrap}, topic {settings.kafka_topic}")
    if cluster:
        with console.status("starting Spark standalone cluster"):
            state = spark_cluster.start(settings)
        console.print(f"spark cluster: {state.master_url} with {state.workers_registered} workers")


@app.command()
def down() -> None:
    """Stop the broker and the local Spark cluster if running. Idempotent."""
    from touchpoint.infra import cluster as spark_cluster
    from touchpoint.infra import kafka

    settings = _settings()
    console.print("kafka: " + ("stopped" if kafka.stop(settings) else "was not running"))
    console.print("spark cluster: " + ("stopped" if spark_cluster.stop(settings) else "was not running"))


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """Broker and cluster health, lake root, versions, stream freshness."""
    from importlib.metadata import version

    from touchpoint.infra import cluster as spark_cluster
    from touchpoint.infra import kafka

    settings = _settings()
    broker = kafka.status(settings)
    spark_state = spark_cluster.status(settings)
    report = {
        "kafka": {"running": broker.running, "answering": broker.answering, "pid": broker.pid,
                  "bootstrap": broker.bootstrap},
        "spark_cluster": {"master": spark_state.master_url, "running": spark_state.master_running,
                          "workers": spark_state.workers_running},
        "lake_root": settings.lake_uri,
        "versions": {p: version(p) for p in ("touchpoint", "pyspark", "delta-spark", "apache-airflow",
                                             "great-expectations", "kafka-python")},
    }
    report.update(_freshness(settings))
    if as_json:
        print(json.dumps(report, indent=2, default=str))
        return
    grid = RichTable(title="touchpoint status", show_header=False)
    grid.add_row("kafka", f"{'up' if broker.answering else 'down'} ({broker.bootstrap}, pid {broker.pid})")
    grid.add_row("spark cluster", f"{'up' if spark_state.master_running else 'down'} ({spark_state.master_url}, "
                 f"{spark_state.workers_running} workers)")
    grid.add_row("lake root", settings.lake_uri)
    for key in ("freshness", "kafka_lag"):
        if key in report:
            grid.add_row(key, str(report[key]))
    for name, ver in report["versions"].items():
        grid.add_row(name, ver)
    console.print(grid)


def _freshness(settings) -> dict:
    """Stream freshness from the speed layer's progress table, when one exists (JVM-free)."""
    try:
        from touchpoint.streaming.progress import freshness_report
    except ImportError:
        return {}
    try:
        return freshness_report(settings)
    except Exception as error:  # status must never crash on a missing or empty table
        return {"freshness": f"unavailable ({error.__class__.__name__})"}


@app.command()
def tables(as_json: bool = typer.Option(False, "--json", help="print every table's name and path as JSON")) -> None:
    """List the lake's tables: name, path, owner, restricted (holds raw PII)."""
    from touchpoint.core.catalog import describe_tables

    described = describe_tables(_settings())
    if as_json:
        print(json.dumps(described, indent=2))
        return
    grid = RichTable("name", "owner", "restricted", "path")
    for t in described:
        grid.add_row(t["name"], t["owner"], "yes" if t["restricted"] else "", t["path"])
    console.print(grid)


def _generate_command():
    from touchpoint.generator import generate_command

    return generate_command


app.command("generate", help="Synthetic marketing traffic to Kafka or JSONL, deterministic by seed.")(
    _generate_command()
)

stream_app = typer.Typer(help="Long-running Structured Streaming queries.", no_args_is_help=True)
app.add_typer(stream_app, name="stream")


@stream_app.command("ingest")
def stream_ingest(
    topic: Optional[str] = typer.Option(None, help="Kafka topic (default: settings.kafka_topic)"),
    available_now: bool = typer.Option(False, "--available-now", help="drain what is in Kafka, then stop"),
    query_name: str = typer.Option("ingest", help="query name; also names its checkpoint"),
) -> None:
    """Kafka -> bronze.events -> silver.events / silver.quarantine, exactly once."""
    from touchpoint.core.config import require_kafka
    from touchpoint.core.spark import get_spark
    from touchpoint.streaming.ingest import start_stream

    settings = _settings()
    require_kafka(settings)
    spark = get_spark("touchpoint-stream-ingest", settings=settings)
    query = start_stream(spark, settings, topic=topic, query_name=query_name, trigger_once=available_now)
    console.print(f"ingest query {query.id} running; checkpoint {settings.checkpoint_root}/{query_name}")
    try:
        query.awaitTermination()
    except KeyboardInterrupt:
        query.stop()
    if query.exception() is not None:
        raise typer.Exit(1)


@app.command()
def ingest(file: str = typer.Option(..., "--file", help="a JSONL file or a folder of *.jsonl files")) -> None:
    """Batch ingest of JSONL files through the same bronze/silver path as the stream."""
    from touchpoint.core.spark import get_spark
    from touchpoint.streaming.ingest import ingest_files

    settings = _settings()
    spark = get_spark("touchpoint-ingest", settings=settings)
    with console.status(f"ingesting {file}"):
        results = ingest_files(spark, settings, file)
    grid = RichTable("file", "bronze", "silver", "quarantine", "duplicates", "note")
    for r in results:
        grid.add_row(r["file"], *(str(r.get(k, "")) for k in ("bronze", "silver", "quarantine", "duplicates")),
                     r.get("skipped", ""))
    console.print(grid)


@app.command()
def run(job: str = typer.Argument(..., help="identity | profiles | attribution | ..."),
        date: str = typer.Option(..., "--date", help="logical date D, YYYY-MM-DD (UTC)")) -> None:
    """Run one batch job for logical date D (the same entry point as spark-submit and Airflow)."""
    import datetime as dt

    from touchpoint.jobs.runner import JOBS, run_job

    if job not in JOBS:
        err_console.print(f"[red]error:[/red] unknown job {job!r}; known jobs: {', '.join(sorted(JOBS))}")
        raise typer.Exit(2)
    try:
        logical_date = dt.date.fromisoformat(date)
    except ValueError:
        err_console.print(f"[red]error:[/red] --date must be YYYY-MM-DD, got {date!r}")
        raise typer.Exit(2) from None
    settings = _settings()
    with console.status(f"running {job} for {logical_date}"):
        summary = run_job(job, logical_date, settings=settings)
    console.print_json(json.dumps({"job": job, "date": date, **summary}, default=str))


@app.command()
def export(segment: str = typer.Option(..., "--segment", help="segment name (a file in segments_dir)"),
           destination: str = typer.Option(..., "--destination",
                                           help="google_customer_match | meta_custom_audience | esp | jsonl"),
           date: Optional[str] = typer.Option(None, "--date", help="segments run to export (default: latest)"),
           full: bool = typer.Option(False, "--full", help="a full export instead of adds/removes"),
           run_id: Optional[str] = typer.Option(None, "--run-id", help="re-running a run id changes nothing")) -> None:
    """Export a segment's members to an activation destination: hashed, consent-checked, atomic."""
    import datetime as dt

    from touchpoint.core.spark import get_spark
    from touchpoint.jobs.exports import export_segment

    settings = _settings()
    spark = get_spark("touchpoint-export", settings=settings)
    logical_date = dt.date.fromisoformat(date) if date else None
    result = export_segment(spark, settings, segment, destination, logical_date=logical_date, full=full,
                            run_id=run_id)
    console.print_json(json.dumps(result, default=str))


@app.command()
def demo(customers: int = typer.Option(300, help="simulated customers"),
         seed: int = typer.Option(42, help="generator seed")) -> None:
    """Generate traffic, stream it in, reconcile, run the daily pipeline: end to end, locally."""
    from touchpoint.demo import run_demo

    result = run_demo(console, customers=customers, seed=seed)
    if not result["exact"]:
        raise typer.Exit(1)


def main(argv: Optional[list[str]] = None) -> None:
    try:
        app(args=argv)
    except ConfigError as error:
        err_console.print(f"[red]error:[/red] {error}")
        sys.exit(2)


if __name__ == "__main__":
    main()
