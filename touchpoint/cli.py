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


def main(argv: Optional[list[str]] = None) -> None:
    try:
        app(args=argv)
    except ConfigError as error:
        err_console.print(f"[red]error:[/red] {error}")
        sys.exit(2)


if __name__ == "__main__":
    main()
