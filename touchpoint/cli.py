"""The `touchpoint` command line (typer + rich). Heavy imports stay inside commands."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import Optional

import typer
from rich.console import Console
from rich.filesize import decimal
from rich.progress import BarColumn, Progress, ProgressColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table as RichTable
from rich.text import Text

from touchpoint.core.config import ConfigError, get_settings

app = typer.Typer(help="touchpoint: a self-hosted marketing data platform.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)


def _error(message: str) -> None:
    """One error line; the message is printed as text (a `[...]` in a value is no rich markup)."""
    err_console.print("[red]error:[/red] ", end="")
    err_console.print(message, markup=False, highlight=False)


def _settings():
    try:
        return get_settings()
    except ConfigError as error:
        _error(f"{error}")
        raise typer.Exit(2) from None


class _Bars:
    """The work's progress (touchpoint.core.progress) as rich bars on stderr: stdout keeps the
    command's result (JSON, a table) clean for scripts. Finished tasks stay listed."""

    def __init__(self, bars: Progress):
        self.bars, self.indents = bars, {}

    def begin(self, description: str, total: float | None, unit: str, depth: int) -> object:
        handle = self.bars.add_task("  " * depth + description, total=total, unit=unit, sized=total is not None,
                                    ended=False)
        self.indents[handle] = "  " * depth
        return handle

    def update(self, handle: object, completed: float, description: str) -> None:
        self.bars.update(handle, completed=completed, description=self.indents[handle] + description)

    def end(self, handle: object, failed: bool) -> None:
        task = next(t for t in self.bars.tasks if t.id == handle)
        if not task.fields["sized"]:  # work of unknown size is done when it ends, unless it failed
            self.bars.update(handle, total=1, completed=0 if failed else 1)
        self.bars.update(handle, ended=True)
        self.bars.stop_task(handle)  # its elapsed time stops with it


class _State(ProgressColumn):
    """A spinner while a task runs, then 'done', or 'stopped' for a task that ended unfinished."""

    def __init__(self):
        super().__init__()
        self.spinner = SpinnerColumn()

    def render(self, task) -> Text | str:
        if task.finished:
            return Text("done", style="green")
        if task.fields.get("ended"):
            return Text("stopped", style="red")
        return self.spinner.render(task)


class _Amount(ProgressColumn):
    """'3/8 steps', '1.2 MB/5.8 MB'; nothing for work of unknown size."""

    def render(self, task) -> Text:
        if not task.fields.get("sized"):
            return Text("")
        if task.fields["unit"] == "bytes":
            return Text(f"{decimal(int(task.completed))}/{decimal(int(task.total))}", no_wrap=True)
        return Text(f"{task.completed:g}/{task.total:g} {task.fields['unit']}", no_wrap=True)


@contextmanager
def _progress(description: str):
    """Bars for the work in the block, under one task of unknown size named `description`."""
    from touchpoint.core import progress

    bars = Progress(_State(), TextColumn("{task.description}"), BarColumn(bar_width=20), _Amount(),
                    TimeElapsedColumn(), console=err_console)
    with bars, progress.reporting(_Bars(bars)), progress.task(description, total=None):
        yield


def _date_option(text: str):
    """A --date value: a UTC calendar day before 9999-12-31 (its as-of, the next midnight, must exist)."""
    import datetime as dt

    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        day = None
    if day is None or day >= dt.date.max:
        _error(f"--date must be a day YYYY-MM-DD before 9999-12-31, got {text!r}")
        raise typer.Exit(2)
    return day


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


@app.command("airflow")
def airflow_local(stop: bool = typer.Option(False, "--stop", help="stop the local Airflow")) -> None:
    """Start a local Airflow (standalone) with the project's DAGs on 127.0.0.1; print the URL and login."""
    from touchpoint.infra import airflow_local as local

    settings = _settings()
    if stop:
        console.print("airflow: " + ("stopped" if local.stop(settings) else "was not running"))
        return
    with console.status("starting Airflow (metadata DB, scheduler, DAG processor, API server)"):
        state = local.start(settings)
    console.print(f"airflow: running (pid {state.pid}) at {state.url}")
    console.print(f"login: {state.username} / {state.password or '(see ' + str(state.home / 'passwords.json') + ')'}")
    console.print(f"home: {state.home}  log: {state.log_file}  stop: touchpoint airflow --stop")


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
    report.update(_freshness(settings, broker.answering))
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


def _freshness(settings, kafka_answering: bool) -> dict:
    """Stream freshness from the speed layer's progress table, when one exists (JVM-free)."""
    try:
        from touchpoint.streaming.progress import freshness_report
    except ImportError:
        return {}
    try:
        return freshness_report(settings, kafka_answering)
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
    _log_batches()
    spark = get_spark("touchpoint-stream-ingest", settings=settings)
    query = start_stream(spark, settings, topic=topic, query_name=query_name, trigger_once=available_now)
    _await_queries([query], "ingest", settings.checkpoint_root)


def _log_batches() -> None:
    """A long-running stream logs each micro-batch's steps and timings (the sinks' INFO lines) to stderr."""
    import logging

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("touchpoint").setLevel(logging.INFO)


def _await_queries(queries: list, label: str, checkpoint_root: str) -> None:
    """Run streaming queries in the foreground until all end, one fails (the others are then
    stopped: a supervisor restarts the whole process) or Ctrl-C; exit 1 if any failed."""
    from pyspark.errors import StreamingQueryException

    for query in queries:
        console.print(f"{label} query {query.name} ({query.id}) running; checkpoint {checkpoint_root}/{query.name}")
    try:
        while any(query.isActive for query in queries):
            for query in queries:
                if query.isActive:
                    try:
                        query.awaitTermination(1)  # seconds
                    except StreamingQueryException:
                        pass  # reported below, after the other queries are stopped
            if any(query.exception() is not None for query in queries):
                break
    except KeyboardInterrupt:
        pass
    for query in queries:
        if query.isActive:
            query.stop()
    failed = [query for query in queries if query.exception() is not None]
    for query in failed:
        _error(f"{label} query {query.name} failed: {query.exception()}")
    if failed:
        raise typer.Exit(1)


@stream_app.command("speed")
def stream_speed(
    available_now: bool = typer.Option(False, "--available-now", help="process silver's pending changes, then stop"),
    query_name: str = typer.Option("speed", help="query name; also names its checkpoint"),
    views: str = typer.Option("all", help="all | campaigns | customers: start both queries, or one of them "
                                          "(run the other in a second process)"),
    nice: int = typer.Option(0, min=0, max=19, help="lower this process's CPU priority by N (Unix nice), "
                                                     "e.g. for the customer views beside ingestion"),
) -> None:
    """silver.events change feed -> speed.* real-time views, exactly once (docs/SERVING.md): the
    campaign-views query QUERY_NAME and the customer-views query QUERY_NAME_customers."""
    import os

    from touchpoint.core.spark import get_spark
    from touchpoint.streaming.speed import VIEWS, start_queries

    if views not in VIEWS:
        _error(f"--views must be one of {', '.join(VIEWS)}, got {views!r}")
        raise typer.Exit(2)
    settings = _settings()
    _log_batches()
    if nice:
        os.nice(nice)  # before Spark starts: the JVM and the Python workers inherit it
    # FAIR: each query's micro-batches run in its own pool (see SpeedSink).
    spark = get_spark("touchpoint-stream-speed", settings=settings, **{"spark.scheduler.mode": "FAIR"})
    try:
        queries = start_queries(spark, settings, query_name=query_name, trigger_once=available_now, views=views)
    except ValueError as error:
        _error(f"{error}")
        raise typer.Exit(2) from None
    _await_queries(queries, "speed", settings.checkpoint_root)


@app.command("query")
def query_command(sql: str = typer.Argument(..., help="SQL over any table or serving view, e.g. "
                                                        "\"select * from serving.campaign_daily\""),
                  output: str = typer.Option("table", "--format", help="table | csv | json")) -> None:
    """Run SQL with duckdb over the lake (delta-rs, no JVM); tables and views by dotted name."""
    from touchpoint.core.serving import query

    if output not in ("table", "csv", "json"):
        _error(f"--format must be table, csv or json, got {output!r}")
        raise typer.Exit(2)
    try:
        result = query(_settings(), sql)
    except Exception as error:  # duckdb's parser/binder errors name the problem
        _error(f"{error}")
        raise typer.Exit(1) from None
    rows = result.to_pylist()
    if output == "json":
        print(json.dumps(rows, default=str))
    elif output == "csv":
        import csv

        writer = csv.DictWriter(sys.stdout, fieldnames=result.column_names)
        writer.writeheader()
        writer.writerows(rows)
    else:
        grid = RichTable(*result.column_names)
        for row in rows:
            grid.add_row(*["" if v is None else str(v) for v in row.values()])
        console.print(grid)


@app.command()
def ingest(file: str = typer.Option(..., "--file", help="a JSONL file or a folder of *.jsonl / *.ndjson files")) -> None:
    """Batch ingest of JSONL files through the same bronze/silver path as the stream."""
    from touchpoint.core.spark import get_spark
    from touchpoint.streaming.ingest import ingest_files, input_files

    settings = _settings()
    try:
        input_files(file)  # before Spark starts: a wrong path or a compressed file is a clean error
    except (OSError, ValueError) as error:
        _error(f"--file: {error}")
        raise typer.Exit(2) from None
    spark = get_spark("touchpoint-ingest", settings=settings)
    with _progress(f"touchpoint ingest --file {file}"):
        results = ingest_files(spark, settings, file)
    grid = RichTable("file", "bronze", "silver", "quarantine", "duplicates", "note")
    for r in results:
        note = r.get("skipped") or (f"resumed at byte {r['resumed_at_byte']:,}" if "resumed_at_byte" in r else "")
        grid.add_row(r["file"], *(str(r.get(k, "")) for k in ("bronze", "silver", "quarantine", "duplicates")), note)
    console.print(grid)


@app.command()
def run(job: str = typer.Argument(..., help="identity | profiles | attribution | ..."),
        date: str = typer.Option(..., "--date", help="logical date D, YYYY-MM-DD (UTC)")) -> None:
    """Run one batch job for logical date D (the same entry point as spark-submit and Airflow)."""
    from touchpoint.jobs.runner import JOBS, run_job

    if job not in JOBS:
        _error(f"unknown job {job!r}; known jobs: {', '.join(sorted(JOBS))}")
        raise typer.Exit(2)
    logical_date = _date_option(date)
    settings = _settings()
    with _progress(f"touchpoint run {job} --date {logical_date}"):
        summary = run_job(job, logical_date, settings=settings)
    console.print_json(json.dumps({"job": job, "date": date, **summary}, default=str))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def submit(target: list[str] = typer.Argument(..., help="JOB (as for `run`), or `stream ingest|speed [OPTIONS]`"),
           date: Optional[str] = typer.Option(None, "--date", help="logical date D of a batch job, YYYY-MM-DD"),
           dry_run: bool = typer.Option(False, "--dry-run", help="print the spark-submit command, run nothing")) -> None:
    """spark-submit a batch job or a stream to settings.spark_master (spark://, yarn, k8s://, local[N])."""
    from touchpoint.infra import submit as spark_submit

    settings = _settings()
    if target[0] == "stream":
        entry, app_args = "cli", target
    elif len(target) == 1 and date:
        entry, app_args = "runner", target
        try:
            app_args = spark_submit.job_args(target[0], date)
        except ValueError as error:
            _error(f"{error}")
            raise typer.Exit(2) from None
    else:
        _error("expected `submit JOB --date D` or `submit stream ingest|speed`")
        raise typer.Exit(2)
    with console.status("packaging the project"):
        command = spark_submit.compose(app_args, settings=settings, entry=entry)
    if dry_run:
        print(command.shell())
        return
    raise typer.Exit(spark_submit.run(command).returncode)


@app.command()
def export(segment: str = typer.Option(..., "--segment", help="segment name (a file in segments_dir)"),
           destination: str = typer.Option(..., "--destination",
                                           help="google_customer_match | meta_custom_audience | esp | jsonl"),
           date: Optional[str] = typer.Option(None, "--date", help="segments run to export (default: latest)"),
           full: bool = typer.Option(False, "--full", help="a full export instead of adds/removes"),
           run_id: Optional[str] = typer.Option(None, "--run-id", help="re-running a run id changes nothing")) -> None:
    """Export a segment's members to an activation destination: hashed, consent-checked, atomic."""
    from touchpoint.core.segments import NAME_PATTERN
    from touchpoint.core.spark import get_spark
    from touchpoint.jobs.export_destinations import DESTINATIONS
    from touchpoint.jobs.exports import RUN_ID_PATTERN, export_segment

    logical_date = _date_option(date) if date else None
    if destination not in DESTINATIONS:
        _error(f"--destination {destination!r} is unknown; use one of {', '.join(DESTINATIONS)}")
        raise typer.Exit(2)
    if not NAME_PATTERN.match(segment):  # checked before Spark starts, as the job checks them
        _error(f"--segment {segment!r} is no segment name: a lowercase letter, then lowercase letters, digits, '_'")
        raise typer.Exit(2)
    if run_id is not None and not RUN_ID_PATTERN.match(run_id):
        _error(f"--run-id {run_id!r}: letters, digits, '.', '_' and '-' only")
        raise typer.Exit(2)
    settings = _settings()
    spark = get_spark("touchpoint-export", settings=settings)
    with _progress(f"touchpoint export --segment {segment} --destination {destination}"):
        result = export_segment(spark, settings, segment, destination, logical_date=logical_date, full=full,
                                run_id=run_id)
    console.print_json(json.dumps(result, default=str))


@stream_app.command("supervise")
def stream_supervise(query: str = typer.Argument(..., help="ingest | speed"),
                     max_lag_seconds: float = typer.Option(600, min=1, help="stale beyond this many seconds")) -> None:
    """Restart the query if it is dead; exit 1 naming it if it is alive but stale (the
    streaming_supervisor DAG's task, from a shell or cron)."""
    import datetime as dt

    from touchpoint.streaming.supervisor import QUERIES, StreamStale, supervise

    if query not in QUERIES:
        _error(f"QUERY must be one of {', '.join(QUERIES)}, got {query!r}")
        raise typer.Exit(2)
    try:
        result = supervise(_settings(), query, dt.datetime.now(dt.timezone.utc), max_lag_seconds)
    except StreamStale as error:
        _error(f"{error}")
        raise typer.Exit(1) from None
    console.print_json(json.dumps(result, default=str))


@app.command("verify-erasures")
def verify_erasures() -> None:
    """Check that every identifier of every logged erasure is on the suppression list (the
    privacy_erasure DAG's last task; no Spark). Exit 1 naming the requests that are not."""
    from touchpoint.jobs.privacy import verify_erasure_log

    try:
        result = verify_erasure_log(_settings())
    except RuntimeError as error:
        _error(f"{error}")
        raise typer.Exit(1) from None
    console.print_json(json.dumps(result))


@app.command()
def forget(email: Optional[str] = typer.Option(None, "--email", help="the person's email"),
           phone: Optional[str] = typer.Option(None, "--phone", help="the person's phone, international (+...)"),
           user_id: Optional[str] = typer.Option(None, "--user-id", help="the person's user_id"),
           anonymous_id: Optional[str] = typer.Option(None, "--anonymous-id",
                                                      help="a device's anonymous_id (a shared device: its rows only)"),
           customer_id: Optional[str] = typer.Option(None, "--customer-id", help="the person's customer_id"),
           queue: bool = typer.Option(False, "--queue", help="queue for the privacy_erasure DAG instead of now")) -> None:
    """Erase a person from every table, the files and the next exports (docs/PRIVACY.md)."""
    from touchpoint.core.privacy import request_identifier

    given = [(kind, value) for kind, value in (("email", email), ("phone", phone), ("user_id", user_id),
                                               ("anonymous_id", anonymous_id), ("customer_id", customer_id))
             if value is not None]
    if len(given) != 1:
        _error("give exactly one of --email, --phone, --user-id, --anonymous-id, --customer-id")
        raise typer.Exit(2)
    kind, value = given[0]
    try:
        request_identifier(kind, value)  # validate before starting Spark
    except ValueError as error:
        _error(f"{error}")
        raise typer.Exit(2) from None
    from touchpoint.core.spark import get_spark
    from touchpoint.jobs.privacy import enqueue, forget as erase_person

    settings = _settings()
    spark = get_spark("touchpoint-forget", settings=settings)
    if queue:
        request_id = enqueue(spark, settings, kind, value)
        console.print_json(json.dumps({"queued": request_id}))
        return
    with _progress(f"touchpoint forget: the person with this {kind}"):
        result = erase_person(spark, settings, kind, value)
    console.print_json(json.dumps(result, default=str))
    if result["status"] == "not_found":
        console.print(f"no data found for this {kind}: nothing was erased")


@app.command()
def demo(customers: int = typer.Option(300, min=1, help="simulated customers"),
         seed: int = typer.Option(42, help="generator seed")) -> None:
    """Generate traffic, stream it in, reconcile, run the daily pipeline: end to end, locally."""
    from touchpoint.demo import run_demo

    result = run_demo(console, customers=customers, seed=seed, progress_bars=_progress)
    if not result["exact"]:
        raise typer.Exit(1)


@app.command()
def collect(host: Optional[str] = typer.Option(None, help="bind address (default: collector.host, 127.0.0.1)"),
            port: Optional[int] = typer.Option(None, help="port (default: collector.port, 8088)"),
            topic: Optional[str] = typer.Option(None, help="Kafka topic (default: settings.kafka_topic)")) -> None:
    """HTTP collector: POST /v1/events (one event or a JSON array) with an API key -> Kafka."""
    from touchpoint.collector import serve
    from touchpoint.core.config import require_kafka

    settings = _settings()
    require_kafka(settings)
    try:
        serve(settings, host=host, port=port, topic=topic)
    except ValueError as error:  # no API keys configured, or a bad keys file
        _error(f"{error}")
        raise typer.Exit(2) from None


@app.command()
def report(date: str = typer.Option(..., "--date", help="report date D, YYYY-MM-DD (UTC)"),
           days: int = typer.Option(30, min=1, help="days of history in the charts, ending on D")) -> None:
    """Analyst report: one self-contained HTML page of charts from the gold tables (no JVM)."""
    from touchpoint.report import write_report

    path = write_report(_settings(), _date_option(date), days=days)
    console.print(f"report: {path}")


def main(argv: Optional[list[str]] = None) -> None:
    try:
        app(args=argv)
    except ConfigError as error:
        _error(f"{error}")
        sys.exit(2)


if __name__ == "__main__":
    main()
