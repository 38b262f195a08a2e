"""Activation exports (BRIEF §6): `touchpoint export --segment S --destination T [--full]` and the
daily job `touchpoint run exports --date D` (the pairs in settings.exports.daily).

An export run sends the members of segment S at the instant of the segments run for D, restricted
to the destination's consent and never including an erased customer, as the destination's rows. The
first run of a (segment, destination), or one asked for with full=True, writes `full`; every other
run writes `adds` and `removes` relative to the rows of the last successful run. Runs are atomic
(export_files) and logged in gold.export_log; a run id that was logged is never redone.
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
from functools import reduce
from pathlib import Path
from typing import Callable

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import DateType, IntegerType, LongType, StringType, StructField, StructType, TimestampType

from touchpoint.core import progress
from touchpoint.core.catalog import TABLES, table_path
from touchpoint.core.config import ConfigError, Settings
from touchpoint.core.delta import ensure_table, is_delta, latest_version, read_version
from touchpoint.core.segments import NAME_PATTERN
from touchpoint.jobs import export_files as files
from touchpoint.jobs.export_destinations import Destination, destination, destination_rows, eligible
from touchpoint.core.dates import as_of_for
from touchpoint.jobs.segments import members_at

STAGED = "_staged"
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
ERASURE_TABLE = "gold.erasure_log"

_S, _L = StringType(), LongType()
EXPORT_LOG_SCHEMA = StructType([StructField(name, kind, True) for name, kind in (
    ("segment", _S), ("destination", _S), ("run_id", _S), ("seq", _L), ("logical_date", DateType()),
    ("as_of", TimestampType()), ("mode", _S), ("base_run_id", _S), ("audience_rows", _L), ("full_rows", _L),
    ("adds", _L), ("removes", _L), ("files", IntegerType()), ("path", _S), ("manifest_sha256", _S),
    ("schema_version", _S),
)])


def published_root(settings: Settings) -> Path:
    """settings.exports_dir, else the folder `exports` next to a local lake root."""
    if settings.exports_dir is not None:
        return settings.exports_dir.resolve()
    if "://" in settings.lake_root and not settings.lake_root.startswith("file://"):
        raise ConfigError("key 'exports_dir' (env TOUCHPOINT_EXPORTS_DIR): the lake root is not a local folder, "
                          "set exports_dir to a local folder for export files")
    return Path(settings.lake_uri.removeprefix("file://")).parent / "exports"


def exports_root(settings: Settings) -> Path:
    """Where runs of these settings are committed: the published tree, or, for a write-audit-publish
    staging namespace (gold_namespace other than 'gold'), a hidden `_staged/<namespace>` folder in it
    that publish_staged_exports releases once the audit passed."""
    root = published_root(settings)
    if settings.gold_namespace != "gold":
        return root / STAGED / settings.gold_namespace.replace("/", "-")
    return root


def publish_staged_exports(settings: Settings, staged: Settings) -> list[str]:
    """Move every committed run of the staged namespace into the published tree (one rename per
    run: each appears whole), then drop the staged folder. A run id already published stays as it is."""
    source, target = exports_root(staged), exports_root(settings)
    moved = []
    for destination_folder in sorted(p for p in source.glob("*/*") if p.is_dir()):
        for run_folder in files.committed_runs(destination_folder):
            final = target / destination_folder.parent.name / destination_folder.name / run_folder.name
            if not final.exists():
                final.parent.mkdir(parents=True, exist_ok=True)
                files.commit(run_folder, final)
                moved.append(str(final.relative_to(target)))
    discard_staged_exports(staged)
    return moved


def discard_staged_exports(staged: Settings) -> None:
    """Forget the staged runs of a namespace (a failed audit, or a date about to be re-staged)."""
    if staged.gold_namespace != "gold":
        shutil.rmtree(exports_root(staged), ignore_errors=True)


def erased_customers(spark: SparkSession, settings: Settings) -> DataFrame | None:
    """The suppression list: customer ids in gold.erasure_log (written by `touchpoint forget`), once
    that table is in the catalog and exists. Exports also take extra ids through `erased`."""
    if ERASURE_TABLE not in TABLES:
        return None
    from touchpoint.jobs.pipeline import is_staging

    # `touchpoint forget` writes the log to the published namespace only; a staged run (the
    # pipeline's staging/dYYYYMMDD) reads it from there, or it would find none and suppress nobody.
    published = settings.model_copy(update={"gold_namespace": "gold"}) if is_staging(settings) else settings
    path = table_path(ERASURE_TABLE, published)
    if not is_delta(spark, path):
        return None
    log = spark.read.format("delta").load(path)
    if "customer_id" not in log.columns:
        raise RuntimeError(f"{ERASURE_TABLE} has no customer_id column: exports cannot exclude erased customers")
    # A request erases every id of the person (the current one and those merged into it); customer_id
    # holds only the first of them.
    ids = log.select("customer_id")
    if "customer_ids" in log.columns:
        ids = ids.unionByName(log.select(F.explode("customer_ids").alias("customer_id")))
    return ids.where(F.col("customer_id").isNotNull()).distinct()


def latest_segments_date(spark: SparkSession, settings: Settings) -> dt.date:
    """The logical date of the latest segments run (what a CLI export without a date sends)."""
    path = table_path("gold.segment_sizes", settings)
    row = spark.read.format("delta").load(path).agg(F.max("date")).first() if is_delta(spark, path) else None
    if row is None or row[0] is None:
        raise RuntimeError("no segments run yet: run `touchpoint run segments --date D` first")
    return row[0]


def _check_evaluated(spark: SparkSession, settings: Settings, segment: str, logical_date: dt.date) -> None:
    """Refuse to export a segment the segments run for D did not evaluate: a typo must not send an
    empty audience (which would remove everybody)."""
    path = table_path("gold.segment_sizes", settings)
    evaluated = ([r["segment"] for r in spark.read.format("delta").load(path)
                  .where((F.col("date") == F.lit(logical_date)) & F.col("definition_sha256").isNotNull())
                  .select("segment").collect()] if is_delta(spark, path) else [])
    if not evaluated:
        raise RuntimeError(f"no segments run for {logical_date}: run `touchpoint run segments --date {logical_date}`")
    if segment not in evaluated:
        raise ValueError(f"segment {segment!r} was not evaluated for {logical_date}; known: {', '.join(sorted(evaluated))}")


def _log_rows(spark: SparkSession, log_path: str, segment: str, name: str) -> list[dict]:
    return [r.asDict() for r in spark.read.format("delta").load(log_path)
            .where((F.col("segment") == segment) & (F.col("destination") == name)).collect()]


def _append_log(spark: SparkSession, log_path: str, record: dict) -> None:
    """Append one run's row (callers checked that the run id is not logged yet)."""
    row = spark.createDataFrame([tuple(record[f] for f in EXPORT_LOG_SCHEMA.fieldNames())], EXPORT_LOG_SCHEMA)
    row.write.format("delta").mode("append").save(log_path)


def _log_record(manifest: dict, seq: int, path: Path, manifest_sha256: str) -> dict:
    counts = manifest["counts"]
    return {
        "segment": manifest["segment"], "destination": manifest["destination"], "run_id": manifest["run_id"],
        "seq": seq, "logical_date": dt.date.fromisoformat(manifest["logical_date"]),
        "as_of": dt.datetime.fromisoformat(manifest["as_of"]), "mode": manifest["mode"],
        "base_run_id": manifest["base_run_id"], "audience_rows": manifest["audience_rows"],
        "full_rows": counts.get("full"), "adds": counts.get("adds"), "removes": counts.get("removes"),
        "files": len(manifest["files"]), "path": str(path), "manifest_sha256": manifest_sha256,
        "schema_version": manifest["schema_version"],
    }


def _recover(spark: SparkSession, log_path: str, folder: Path, published: Path, logged: list[dict]) -> list[dict]:
    """Log the committed runs whose log row was lost: a crash between the rename and the log, or,
    for a staging namespace, a publish that released the runs and died before the tables (its
    re-run stages the log as it was published, without those runs)."""
    known = {r["run_id"] for r in logged}
    # the two trees are one when these settings are the published namespace
    for run_folder in dict.fromkeys([*files.committed_runs(published), *files.committed_runs(folder)]):
        manifest = files.read_manifest(run_folder)
        if manifest["run_id"] not in known:
            record = _log_record(manifest, manifest["seq"], published / run_folder.name,
                                 files.sha256_file(run_folder / files.MANIFEST))
            _append_log(spark, log_path, record)
            logged.append(record)
            known.add(manifest["run_id"])
    return logged


def export_segment(spark: SparkSession, settings: Settings, segment: str, destination_name: str,
                   logical_date: dt.date | None = None, full: bool = False, run_id: str | None = None,
                   erased: DataFrame | None = None) -> dict:
    """Export segment S to destination T as of the segments run for `logical_date` (default: the
    latest). `erased` adds customer ids to the suppression list of gold.erasure_log. The run id
    defaults to the date (with `-full` when forced), so a rerun of the same export is a no-op."""
    if not NAME_PATTERN.match(segment):
        raise ValueError(f"invalid segment name {segment!r}")
    target = destination(destination_name)
    logical_date = logical_date or latest_segments_date(spark, settings)
    run_id = run_id or (f"{logical_date.isoformat()}-full" if full else logical_date.isoformat())
    if not RUN_ID_PATTERN.match(run_id):
        raise ValueError(f"invalid run id {run_id!r}: letters, digits, '.', '_' and '-' only")

    folder = exports_root(settings) / segment / target.name
    published = published_root(settings) / segment / target.name  # where runs end up (the log's path)
    log_path = table_path("gold.export_log", settings)
    ensure_table(spark, log_path, EXPORT_LOG_SCHEMA, catalog_name="gold.export_log")
    logged = _recover(spark, log_path, folder, published, _log_rows(spark, log_path, segment, target.name))
    done = next((r for r in logged if r["run_id"] == run_id), None)
    if done is not None:
        return {**_summary(done), "status": "already exported"}
    cleared = files.clear_leftovers(folder)

    _check_evaluated(spark, settings, segment, logical_date)
    as_of = as_of_for(logical_date)
    current = _current_rows(spark, settings, target, segment, as_of, erased).localCheckpoint()
    base = max(logged, key=lambda r: r["seq"]) if logged else None
    # the base run is in this tree, or already published when this is a staging namespace
    base_state = next((files.state_path(f / base["run_id"]) for f in (folder, published)
                       if (f / base["run_id"]).is_dir()), None) if base else None
    if base is not None and base_state is None and not full:  # a full export needs no base
        raise RuntimeError(f"the state of the last export {base['run_id']} is missing under {published}; "
                           "export with full=True (--full) to start again from a full export")
    mode = "full" if full or base is None else "diff"

    temp = files.temp_folder(folder, run_id)
    temp.mkdir(parents=True)
    max_rows = settings.exports.max_rows_per_file
    if mode == "full":
        tagged = current.withColumn("kind", F.lit("full"))
    else:
        tagged = current.transform(diff_rows(spark.read.schema(current.schema).parquet(base_state))).localCheckpoint()
    counts = {kind: 0 for kind in (("full",) if mode == "full" else ("adds", "removes"))}
    counts.update({r["kind"]: r["count"] for r in tagged.groupBy("kind").count().collect()})
    audience_rows = counts["full"] if mode == "full" else base["audience_rows"] + counts["adds"] - counts["removes"]
    written = files.write_part_files(tagged, temp, target.file_format, counts, max_rows)
    files.write_state(current, temp)
    seq = max((r["seq"] for r in logged), default=0) + 1
    manifest = {
        "segment": segment, "destination": target.name, "run_id": run_id, "seq": seq,
        "logical_date": logical_date.isoformat(), "as_of": as_of.isoformat(), "mode": mode,
        "base_run_id": base["run_id"] if mode == "diff" else None, "schema_version": target.schema_version,
        "format": target.file_format, "columns": list(target.columns), "hash": "sha256-hex",
        "audience_rows": audience_rows, "counts": counts, "max_rows_per_file": max_rows,
    }
    manifest_sha256 = files.write_manifest(temp, manifest, written)
    files.commit(temp, folder / run_id)
    record = _log_record({**manifest, "files": written}, seq, published / run_id, manifest_sha256)
    _append_log(spark, log_path, record)
    return {**_summary(record), "status": "exported", "cleared_leftovers": cleared}


def diff_rows(previous: DataFrame) -> Callable[[DataFrame], DataFrame]:
    """Current rows -> the rows to add (only in current) and to remove (only in previous), each with
    its `kind`. Rows are compared whole, nulls equal: applying adds and removes to the previous set
    gives the current one."""

    def transform(current: DataFrame) -> DataFrame:
        columns = current.columns
        sides = current.withColumn("side", F.lit(1)).unionByName(previous.select(*columns).withColumn("side", F.lit(2)))
        return (sides.groupBy(*columns).agg(F.min("side").alias("first"), F.max("side").alias("last"))
                .where(F.col("first") == F.col("last"))
                .select(*columns, F.when(F.col("first") == 1, F.lit("adds")).otherwise(F.lit("removes")).alias("kind")))

    return transform


def _current_rows(spark: SparkSession, settings: Settings, target: Destination, segment: str,
                  as_of: dt.datetime, erased: DataFrame | None) -> DataFrame:
    """The destination's full row set for the segment's members at `as_of`."""
    membership = spark.read.format("delta").load(table_path("gold.segment_membership", settings))
    members = membership.where(F.col("segment") == F.lit(segment)).transform(members_at(as_of))
    profiles_path, map_path = table_path("gold.customer_profiles", settings), table_path("gold.identity_map", settings)
    profiles = read_version(spark, profiles_path, latest_version(spark, profiles_path))
    identifiers = (read_version(spark, map_path, latest_version(spark, map_path))
                   .where(F.col("identifier_type").isin("email", "phone")))
    suppression = [frame.select("customer_id") for frame in (erased_customers(spark, settings), erased)
                   if frame is not None]
    audience = profiles.transform(eligible(target, members, reduce(DataFrame.unionByName, suppression)
                                           if suppression else None))
    return audience.transform(destination_rows(target, identifiers))


def _summary(record: dict) -> dict:
    keys = ("segment", "destination", "run_id", "seq", "mode", "base_run_id", "audience_rows", "full_rows", "adds",
            "removes", "files", "path")
    return {k: record[k] for k in keys}


def run(spark: SparkSession, settings: Settings, logical_date: dt.date) -> dict:
    """The daily exports: every (segment, destination) of settings.exports.daily, run id = the date."""
    with progress.each(settings.exports.daily, f"exports {logical_date}",
                       lambda t: f"{t.segment} -> {t.destination}") as targets:
        results = [export_segment(spark, settings, t.segment, t.destination, logical_date) for t in targets]
    return {"exports": results, "count": len(results)}
