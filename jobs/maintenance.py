"""Lake maintenance: compaction, retention, VACUUM, staging clean-up (the lake_maintenance DAG).

Retention windows are counted back from the logical date, never from now(), so a run is repeatable.
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

from pyspark.sql import SparkSession

from touchpoint.core import progress
from touchpoint.core.catalog import table_path
from touchpoint.core.config import Settings
from touchpoint.core.delta import gold_write_lock, is_delta, retry_on_conflict

STREAM_WRITTEN = ("bronze.events", "silver.events", "silver.quarantine", "silver.reconciliation")
# table -> (date column, settings.retention field)
RETENTION = {"bronze.events": ("ingest_date", "bronze_days"), "silver.quarantine": ("ingest_date", "quarantine_days")}


def optimize(spark: SparkSession, settings: Settings, logical_date: dt.date) -> dict:
    """Bin-pack the small files streaming writes. OPTIMIZE commutes with the stream's appends, not
    with its MERGE that deletes displaced orders from files being compacted: a compaction that loses
    that race wrote nothing and runs again (the stream's side retries the same way)."""
    done = {}
    for name in STREAM_WRITTEN:
        path = table_path(name, settings)
        if is_delta(spark, path):
            def compact() -> None:  # called at once, inside this iteration
                metrics = spark.sql(f"OPTIMIZE delta.`{path}`").select("metrics.numFilesRemoved").first()
                done[name] = int(metrics[0] or 0)

            retry_on_conflict(compact, f"OPTIMIZE {name}")
    return {"files_compacted": done}


def enforce_retention(spark: SparkSession, settings: Settings, logical_date: dt.date) -> dict:
    """Delete rows older than each table's retention (bronze raw payloads, quarantine)."""
    from delta.tables import DeltaTable

    deleted = {}
    for name, (column, setting) in RETENTION.items():
        path = table_path(name, settings)
        if not is_delta(spark, path):
            continue
        cutoff = logical_date - dt.timedelta(days=getattr(settings.retention, setting))
        table = DeltaTable.forPath(spark, path)
        before = table.toDF().where(f"{column} < DATE'{cutoff.isoformat()}'").count()
        if before:
            table.delete(f"{column} < DATE'{cutoff.isoformat()}'")
        deleted[name] = before
    return {"rows_deleted": deleted}


def vacuum(spark: SparkSession, settings: Settings, logical_date: dt.date) -> dict:
    from delta.tables import DeltaTable

    hours = settings.retention.vacuum_hours
    if hours < 168:
        # Delta refuses retention below 7 days unless this check is off; config says we mean it.
        spark.conf.set("spark.databricks.delta.retentionDurationCheck.enabled", "false")
    vacuumed = []

    def vacuum_tables(names) -> None:
        for name in names:
            path = table_path(name, settings)
            if is_delta(spark, path):
                DeltaTable.forPath(spark, path).vacuum(hours)
                vacuumed.append(name)

    vacuum_tables(STREAM_WRITTEN)
    # The speed layer overwrites its snapshots every customer micro-batch and expiry deletes its rows:
    # unvacuumed, their removed files (customer ids among them after an erasure) stayed forever.
    vacuum_tables(_layer_names("speed"))
    # VACUUM commits to the table and deletes files its snapshot does not name: not while publish
    # exchanges a gold table's folder for one with files it has never seen.
    with gold_write_lock(settings.lake_uri):
        vacuum_tables(_layer_names("gold"))
    return {"vacuumed": vacuumed, "retention_hours": hours}


def _layer_names(layer: str) -> list[str]:
    from touchpoint.core.catalog import TABLES

    return [n for n, t in TABLES.items() if t.layer == layer]


def clean_staging(spark: SparkSession, settings: Settings, logical_date: dt.date) -> dict:
    """Remove staging namespaces of dates before D (a failed audit leaves its staging for inspection)."""
    root = Path(settings.lake_uri) / "staging"
    removed = []
    if "://" not in settings.lake_uri and root.is_dir():
        for folder in sorted(root.iterdir()):
            if folder.name.startswith("d") and folder.name[1:] < f"{logical_date:%Y%m%d}":
                shutil.rmtree(folder)
                removed.append(folder.name)
    return {"staging_removed": removed}


def expire_speed(spark: SparkSession, settings: Settings, logical_date: dt.date) -> dict:
    """Speed rows the published batch views already hold (publish does this too; this catches up
    after a publish whose expiry failed)."""
    from touchpoint.core.serving import expire_speed_rows

    return {"speed_rows_expired": expire_speed_rows(spark, settings)}


STEPS = {"optimize": optimize, "enforce_retention": enforce_retention, "expire_speed": expire_speed,
         "vacuum": vacuum, "clean_staging": clean_staging}


def run_step(step: str, logical_date: dt.date, settings: Settings | None = None,
             spark: SparkSession | None = None) -> dict:
    from touchpoint.core.config import get_settings
    from touchpoint.core.spark import get_spark

    from touchpoint.core.dates import calendar_date

    settings = settings or get_settings()
    spark = spark or get_spark(f"touchpoint-maintenance-{step}", settings=settings)
    return STEPS[step](spark, settings, calendar_date(logical_date))


def run(spark: SparkSession, settings: Settings, logical_date: dt.date) -> dict:
    with progress.each(tuple(STEPS), f"maintenance {logical_date}") as steps:
        return {step: run_step(step, logical_date, settings, spark) for step in steps}
