"""The daily pipeline as write–audit–publish over Delta.

For logical date D the batch jobs run against a staging namespace of the gold layer
(`<lake>/staging/<D>/...`), seeded from copies of the published tables. The audit
validates the staged tables; only a passing run is published: each staged table replaces its
published table in one atomic step (on a local lake the folders are exchanged; elsewhere a Delta
overwrite), after the staged exports were moved into place, and the
batch high-water mark H = as_of_for(D) is recorded. A failing audit publishes nothing, so readers of
`gold.*` keep seeing the previous state.

Every step is idempotent per logical date: re-running D re-seeds staging from what is published.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import shutil
from pathlib import Path

from pyspark.sql import SparkSession

from touchpoint.core import progress
from touchpoint.core.catalog import TABLES
from touchpoint.core.config import Settings
from touchpoint.core.dates import as_of_for, calendar_date
from touchpoint.core.delta import (
    ensure_table, exchange_folders, folder_exists, gold_write_lock, is_delta, make_folder, remove_tree,
)

log = logging.getLogger(__name__)
PIPELINE_JOBS = ("identity", "profiles", "attribution", "segments", "campaign_metrics", "exports")


STAGING_NAMESPACE = "staging/"


def staging_settings(settings: Settings, logical_date: dt.date) -> Settings:
    """The same settings with gold tables redirected into the run's staging namespace."""
    return settings.model_copy(update={"gold_namespace": f"{STAGING_NAMESPACE}d{logical_date:%Y%m%d}"})


def is_staging(settings: Settings) -> bool:
    """Do these settings write a pipeline run's staged gold (rather than published gold)?"""
    return settings.gold_namespace.startswith(STAGING_NAMESPACE)


def gold_tables() -> list[str]:
    """Gold tables the pipeline's jobs write (audit results and the high-water mark are written in place)."""
    owners = {f"jobs.{job}" for job in PIPELINE_JOBS}
    return [name for name, table in TABLES.items() if table.layer == "gold" and table.owner in owners]


def prepare_staging(spark: SparkSession, settings: Settings, logical_date: dt.date) -> dict:
    """Seed staging with copies of the published gold tables (hard links on a local lake).
    Staging is dropped first, so a retried or re-run date starts from what is published."""
    from touchpoint.jobs.exports import discard_staged_exports

    staged = staging_settings(settings, logical_date)
    staging = f"{settings.lake_uri}/{staged.gold_namespace}"
    remove_tree(spark, staging)
    discard_staged_exports(staged)
    make_folder(spark, staging)  # staged, even when nothing is published yet: publish checks it
    cloned = []
    for name in gold_tables():
        published = TABLES[name].path(settings)
        if is_delta(spark, published):
            _stage_copy(spark, published, TABLES[name].path(staged), name)
            cloned.append(name)
    return {"staging": staged.gold_namespace, "cloned": cloned}


def _stage_copy(spark: SparkSession, published: str, staged: str, name: str) -> None:
    """A self-contained copy of a published table for the jobs to change.

    Not a SHALLOW CLONE: its log names the published files by absolute `file:/` paths and carries
    statistics that delta-rs (used for run logs and snapshot checks) cannot read. On a local lake the
    copy is the table folder: the log copied, the data files hard-linked (a data file is never
    rewritten in place, while `_delta_log/_last_checkpoint` is); elsewhere Spark copies the rows into
    a table created with the catalog's properties (PII kept out of statistics).
    """
    if "://" not in published:
        def link_or_copy(source: str, target: str) -> None:
            if f"{os.sep}_delta_log{os.sep}" in source:
                shutil.copy2(source, target)
                return
            try:
                os.link(source, target)
            except OSError:  # another filesystem
                shutil.copy2(source, target)

        shutil.copytree(published, staged, copy_function=link_or_copy)
        return
    from delta.tables import DeltaTable


    rows = spark.read.format("delta").load(published)
    partitions = DeltaTable.forPath(spark, published).detail().first()["partitionColumns"]
    ensure_table(spark, staged, rows.schema, partitions, name)
    rows.write.format("delta").mode("overwrite").save(staged)


def publish(spark: SparkSession, settings: Settings, logical_date: dt.date) -> dict:
    """Replace each published gold table by its staged version, then record the high-water mark.
    Publication is per table, not across tables: a crash mid-publish is repaired by re-running
    the date, which re-stages from what was published and publishes again."""
    from concurrent.futures import ThreadPoolExecutor

    staged = staging_settings(settings, logical_date)
    staging = f"{settings.lake_uri}/{staged.gold_namespace}"
    if not folder_exists(spark, staging):
        # Publish removes staging last, after recording H: a retry of a finished publish. Otherwise
        # staging was removed under the run (lake_maintenance's clean_staging beside a backfill):
        # recording H and expiring speed rows would drop data the published tables do not hold.
        if _high_water_mark_recorded(spark, settings, logical_date):
            return {"published": [], "exports_released": [], "speed_rows_expired": {},
                    "high_water_mark": as_of_for(logical_date).isoformat(), "note": "published before"}
        raise RuntimeError(f"publish {logical_date}: nothing is staged at {staging}; re-run the date from "
                           "prepare_staging (was it removed while the run went on?)")

    def publish_table(name: str) -> str | None:
        source, target = TABLES[name].path(staged), TABLES[name].path(settings)
        if not is_delta(spark, source):
            return None  # nothing staged
        history = _compare_histories(source, target)
        if history in ("same", "behind"):
            return None  # no job committed to the copy, or it is published already (a retried publish)
        if history == "ahead" and _exchange_into_place(Path(source), Path(target)):
            return name
        if history == "new" and _move_into_place(Path(source), Path(target)):
            return name
        # One atomic overwrite per table: readers see the previous version or exactly the audited one.
        (spark.read.format("delta").load(source).write.format("delta").mode("overwrite")
         .option("overwriteSchema", "true").save(target))
        return name

    from touchpoint.jobs.exports import publish_staged_exports

    # Export runs first: a run released before a crash is found in the published tree by the re-run's
    # exports step, which logs it and redoes nothing. Tables first would publish gold.export_log rows
    # of runs the re-run's fresh staging no longer holds, and they would never be released.
    released = publish_staged_exports(settings, staged)
    # The lock keeps an erasure from committing to a table while its folder is exchanged.
    with gold_write_lock(settings.lake_uri):
        # Tables are independent; their small Spark jobs and Delta commits overlap well in threads.
        with ThreadPoolExecutor(max_workers=PUBLISH_THREADS) as pool:
            published = [name for name in pool.map(publish_table, gold_tables()) if name]
    gap = serving_gap(latest_published_date(spark, settings), logical_date, settings)
    record_high_water_mark(spark, settings, logical_date)
    from touchpoint.core.serving import expire_speed_rows

    expired = expire_speed_rows(spark, settings)  # speed rows the published batch now holds
    # Staging is a full copy of gold (raw PII included): never keep it around, on any file system.
    remove_tree(spark, staging)
    return {"published": published, "exports_released": released, "speed_rows_expired": expired,
            "high_water_mark": as_of_for(logical_date).isoformat(), **({"serving_gap": gap} if gap else {})}


def serving_gap(latest_date: dt.date | None, logical_date: dt.date, settings: Settings) -> dict | None:
    """What serving may lack once `logical_date` is published after `latest_date` (a backfill): the
    batch views now stop at H, and the speed rows below the latest cut less the backfill grace may be
    expired already (core.serving.expiry_bound). None when the cut moves back no further than the
    grace. Logged as a warning: re-running the latest date closes the gap."""
    if latest_date is None:
        return None
    cut, newest_cut = as_of_for(logical_date), as_of_for(latest_date)
    kept_from = newest_cut - dt.timedelta(days=settings.stream.backfill_grace_days)
    if cut >= kept_from:
        return None
    gap = {"from": cut.isoformat(), "to": kept_from.isoformat(), "latest_date": latest_date.isoformat()}
    log.warning("publish %s moves the serving cut back from %s to %s, further than stream.backfill_grace_days "
                "(%g) allows: serving may lack events from %s to %s until %s runs again; re-run it, or raise "
                "stream.backfill_grace_days (TOUCHPOINT_STREAM__BACKFILL_GRACE_DAYS) before backfills that far back",
                logical_date, newest_cut.isoformat(), cut.isoformat(), settings.stream.backfill_grace_days,
                gap["from"], gap["to"], latest_date)
    return gap


PUBLISH_THREADS = 4


def _compare_histories(staged: str, published: str) -> str:
    """How a staged table's Delta log relates to the published table's, read from the commit files.

    A local staging copy starts as the published log byte for byte, so comparing commit files tells:
    "same" (no job committed to the copy), "ahead" (the jobs' commits continue the published log),
    "behind" (the published log already holds the copy's last commit: a retried publish after this
    table was exchanged), "new" (nothing published yet) or "diverged" (the published table got a
    commit of its own since staging, or the lake is not a local folder: a Spark-made copy has its
    own history). Asking Delta instead costs a snapshot of each table (Spark jobs)."""
    if "://" in published:
        return "diverged"
    staged_log, published_log = Path(staged) / "_delta_log", Path(published) / "_delta_log"
    staged_last, published_last = _last_commit(staged_log), _last_commit(published_log)
    if published_last is None:
        return "new" if not Path(published).exists() else "diverged"
    if staged_last is None:
        return "diverged"
    if staged_last == published_last:
        return "same"
    if _holds_commit(published_log, staged_last):
        return "behind"
    if _holds_commit(staged_log, published_last):
        return "ahead"
    return "diverged"


def _holds_commit(log: Path, commit: tuple[str, bytes]) -> bool:
    name, content = commit
    path = log / name
    return path.is_file() and path.read_bytes() == content


def _exchange_into_place(staged: Path, published: Path) -> bool:
    """Publish a staged table whose log continues the published one by exchanging the two folders:
    one atomic step, no data rewritten, and the published table keeps its history with the jobs'
    commits on top. The folder that comes out is deleted: every file a reader of the old version
    may still open is hard-linked in the new folder under the same name (no VACUUM runs on staging;
    an erasure's purge does, and it holds the lock this runs under)."""
    before = _last_commit(published / "_delta_log")
    # read again here: a commit since the comparison is caught by this check, or by the one after
    if before is None or not _holds_commit(staged / "_delta_log", before) or not exchange_folders(staged, published):
        return False
    if _last_commit(staged / "_delta_log") != before:
        # A writer that ignores the lock committed between the check and the exchange: put the
        # folders back, and the overwrite conflict-checks against that commit as Delta does.
        exchange_folders(staged, published)
        return False
    shutil.rmtree(staged, ignore_errors=True)
    return True


def _move_into_place(staged: Path, published: Path) -> bool:
    """Publish a table that has no published version yet by renaming its staged folder (atomic)."""
    published.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(staged, published)  # fails if a table appeared there meanwhile: then overwrite
    except OSError:
        return False
    return True


def _last_commit(log: Path) -> tuple[str, bytes] | None:
    """(file name, bytes) of the newest commit in a Delta log folder; None when it has none."""
    commits = [p for p in log.glob("*.json") if _COMMIT_FILE.match(p.name)] if log.is_dir() else []
    if not commits:
        return None
    newest = max(commits, key=lambda p: p.name)  # zero-padded versions: name order is version order
    return newest.name, newest.read_bytes()


_COMMIT_FILE = re.compile(r"^\d{20}\.json$")


def record_high_water_mark(spark: SparkSession, settings: Settings, logical_date: dt.date) -> None:
    """gold.high_water_mark: one row per published logical date (MERGE: re-publishing D changes nothing)."""
    from delta.tables import DeltaTable

    from touchpoint.schemas.lake import HIGH_WATER_MARK_SCHEMA

    path = TABLES["gold.high_water_mark"].path(settings)
    ensure_table(spark, path, HIGH_WATER_MARK_SCHEMA, (), "gold.high_water_mark")
    row = spark.createDataFrame([(logical_date, as_of_for(logical_date))], HIGH_WATER_MARK_SCHEMA)
    (DeltaTable.forPath(spark, path).alias("t").merge(row.alias("s"), "t.logical_date = s.logical_date")
     .whenMatchedUpdateAll().whenNotMatchedInsertAll().execute())


def _high_water_mark_recorded(spark: SparkSession, settings: Settings, logical_date: dt.date) -> bool:
    from pyspark.sql import functions as F

    path = TABLES["gold.high_water_mark"].path(settings)
    return is_delta(spark, path) and not spark.read.format("delta").load(path).where(
        F.col("logical_date") == F.lit(logical_date)).isEmpty()


def latest_published_date(spark: SparkSession, settings: Settings) -> dt.date | None:
    """The latest logical date gold.high_water_mark records (None before the first publish)."""
    path = TABLES["gold.high_water_mark"].path(settings)
    if not is_delta(spark, path):
        return None
    return spark.read.format("delta").load(path).agg({"logical_date": "max"}).first()[0]


def current_high_water_mark(spark: SparkSession, settings: Settings) -> dt.datetime | None:
    """H of the latest published date (UTC; every recorded H is as_of_for of its date)."""
    latest = latest_published_date(spark, settings)
    return as_of_for(latest) if latest is not None else None


# ---- steps: what each marketing_daily task runs (also `touchpoint run pipeline --date D`) ---------

def optimize_silver(spark: SparkSession, settings: Settings, logical_date: dt.date) -> dict:
    """Compact the small files the stream wrote into D's silver partition."""
    from touchpoint.core.catalog import table_path

    path = table_path("silver.events", settings)
    if not is_delta(spark, path):
        return {"optimized": False}
    spark.sql(f"OPTIMIZE delta.`{path}` WHERE event_date = DATE'{logical_date.isoformat()}'")
    return {"optimized": True}


def run_pipeline_job(spark: SparkSession, settings: Settings, logical_date: dt.date, job: str) -> dict:
    from touchpoint.jobs.runner import run_job

    return run_job(job, logical_date, settings=staging_settings(settings, logical_date), spark=spark)


def audit_staging(spark: SparkSession, settings: Settings, logical_date: dt.date) -> dict:
    """Validate D's silver partition and the staged gold tables; raise if a critical expectation fails."""
    from pyspark.sql import functions as F

    from touchpoint.core.catalog import table_path
    from touchpoint.expectations.audit import audit
    from touchpoint.expectations.suites import load_suites

    staged = staging_settings(settings, logical_date)
    suites = load_suites()
    wanted = {name for name in suites if name in TABLES}
    wanted |= {needed for name in wanted for needed in suites[name].inputs if needed in TABLES}
    frames = {}
    for name in sorted(wanted):
        source = settings if TABLES[name].layer != "gold" else staged
        path = table_path(name, source)
        if is_delta(spark, path):
            frame = spark.read.format("delta").load(path)
            if name == "silver.events":
                frame = frame.where(F.col("event_date") == F.lit(logical_date))
            frames[name] = frame
    result = audit(spark, settings, frames, f"marketing_daily-{logical_date:%Y%m%d}", logical_date)
    result.raise_if_failed()  # AuditFailed: nothing is published, gold stays as it was
    return result.summary()


STEPS = ("optimize_silver", "prepare_staging", *PIPELINE_JOBS, "audit", "publish")


def run_step(step: str, logical_date: dt.date, settings: Settings | None = None,
             spark: SparkSession | None = None) -> dict:
    from touchpoint.core.config import get_settings
    from touchpoint.core.spark import get_spark

    logical_date = calendar_date(logical_date)
    settings = settings or get_settings()
    spark = spark or get_spark(f"touchpoint-{step}", settings=settings)
    if step in PIPELINE_JOBS:
        return run_pipeline_job(spark, settings, logical_date, step)
    handlers = {"optimize_silver": optimize_silver, "prepare_staging": prepare_staging,
                "audit": audit_staging, "publish": publish}
    if step not in handlers:
        raise ValueError(f"unknown step {step!r}; steps: {', '.join(STEPS)}")
    return handlers[step](spark, settings, logical_date)


def run(spark: SparkSession, settings: Settings, logical_date: dt.date) -> dict:
    """The whole daily pipeline in order, outside Airflow."""
    with progress.each(STEPS, f"pipeline {logical_date}") as steps:
        return {step: run_step(step, logical_date, settings, spark) for step in steps}
