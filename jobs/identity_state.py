"""Identity job bookkeeping: the run log, Delta versions, and which silver rows are new since a run.

An identity run records in gold.identity_runs the silver version it read and the versions of the
state tables it wrote. The next run starts from that state (read by Delta time travel, so a
rerun of an old date still sees the state as of the date before it) and reads from silver only:
- the partitions whose files changed between the two silver versions (late arrivals for any date);
- the partitions of dates after the previous run's logical date, up to its own.
If rows the previous run used have since been deleted from silver (erasure, an order displaced by
an earlier duplicate), the incremental state cannot forget them and the run falls back to a full
rebuild. The same happens when the guardrail settings changed or the state is unreadable.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from dataclasses import dataclass, field

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType, TimestampType

from touchpoint.core.dates import EPOCH, as_of_for
from touchpoint.core.delta import (
    ensure_table, files_present, is_delta, latest_version, read_version, rs_table, snapshot_fingerprint,
    snapshot_present,
)
from touchpoint.core.identity_lookup import BROADCAST_MAP_MAX_IDENTIFIERS

log = logging.getLogger(__name__)

# Bump when the meaning of the state tables changes: older state then triggers a full rebuild.
STATE_VERSION = 1


def config_fingerprint(guardrails) -> str:
    payload = json.dumps({"state_version": STATE_VERSION, "blocklist": list(guardrails.blocklist),
                          "shared_device_max_user_ids": guardrails.shared_device_max_user_ids}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# Table metadata (versions, file lists, the small run log) is read with delta-rs straight from the
# Delta log: no Spark job for bookkeeping.

def snapshot_files(path: str, version: int) -> dict[str, dt.date | None]:
    """Data files of a Delta snapshot with their event_date partition value (from the log only)."""
    import pyarrow as pa

    actions = pa.table(rs_table(path, version).get_add_actions(flatten=True))
    dates = (actions.column("partition.event_date").to_pylist() if "partition.event_date" in actions.column_names
             else [None] * actions.num_rows)
    return dict(zip(actions.column("path").to_pylist(), dates))


@dataclass(frozen=True)
class Written:
    version: int
    rows: int  # rows written by this commit (Delta's numOutputRows)


def _last_commit(path: str) -> Written:
    table = rs_table(path)
    metrics = table.history(1)[0].get("operationMetrics") or {}
    return Written(table.version(), int(metrics.get("numOutputRows", 0)))


def write_snapshot(frame: DataFrame, path: str, schema: StructType, catalog_name: str,
                   user_metadata: str | None = None) -> Written:
    """Replace a whole state table; `user_metadata` goes into the commit (Delta's userMetadata)."""
    ensure_table(frame.sparkSession, path, schema, catalog_name=catalog_name)
    writer = frame.select(*schema.fieldNames()).write.format("delta").mode("overwrite")
    if user_metadata is not None:
        writer = writer.option("userMetadata", user_metadata)
    writer.save(path)
    return _last_commit(path)


def write_slice(frame: DataFrame, path: str, schema: StructType, catalog_name: str, predicate: str) -> Written:
    """Replace the rows matching `predicate` (one run's slice): reruns replace, never duplicate."""
    ensure_table(frame.sparkSession, path, schema, catalog_name=catalog_name)
    (frame.select(*schema.fieldNames()).write.format("delta").mode("overwrite")
     .option("replaceWhere", predicate).save(path))
    return _last_commit(path)


@dataclass(frozen=True)
class BaseRun:
    """The previous run an incremental run builds on, as its row of gold.identity_runs recorded it."""

    logical_date: dt.date
    as_of: dt.datetime
    silver_version: int
    config_fingerprint: str
    identity_map_version: int
    identity_edges_version: int
    identity_guardrails_version: int
    identifiers: int
    edges: int
    guardrail_rows: int


def run_log(spark: SparkSession, runs_path: str) -> list[dict]:
    """The run log (one small row per logical date), newest date first."""
    if not is_delta(spark, runs_path):
        return []
    # Timestamps travel as epoch microseconds: PySpark would hand them back in the host's local zone.
    frame = spark.read.format("delta").load(runs_path)
    stamps = [f.name for f in frame.schema.fields if isinstance(f.dataType, TimestampType)]
    rows = [row.asDict() for row in frame.select(
        *[F.unix_micros(name).alias(name) if name in stamps else name for name in frame.columns]).collect()]
    for row in rows:
        for name in stamps:
            row[name] = None if row[name] is None else EPOCH + dt.timedelta(microseconds=row[name])
    return sorted(rows, key=lambda row: row["logical_date"], reverse=True)


def previous_run(runs: list[dict], logical_date: dt.date) -> BaseRun | None:
    """The run of the latest logical date before `logical_date`, if any, from `run_log`'s rows."""
    earlier = [row for row in runs if row["logical_date"] < logical_date]
    if not earlier:
        return None
    row = earlier[0]
    as_of = row["as_of"] if row["as_of"].tzinfo else row["as_of"].replace(tzinfo=dt.timezone.utc)
    return BaseRun(row["logical_date"], as_of, row["silver_version"], row["config_fingerprint"],
                   row["identity_map_version"], row["identity_edges_version"], row["identity_guardrails_version"],
                   row["identifiers"], row["edges"], row["shared_devices"] + row["blocklisted"])


def _add_actions(path: str, version: int):
    import pyarrow as pa

    return pa.table(rs_table(path, version).get_add_actions(flatten=True))


def _snapshot_stats(path: str, version: int, actions=None) -> tuple[int | None, object, object]:
    """(rows, min as_of, max as_of) of a Delta snapshot from its file statistics (metadata only)."""
    actions = _add_actions(path, version) if actions is None else actions
    if actions.num_rows == 0:
        return 0, None, None
    rows = actions.column("num_records").to_pylist()
    if any(n is None for n in rows):
        return None, None, None
    names = actions.column_names
    low = [v for v in actions.column("min.as_of").to_pylist() if v is not None] if "min.as_of" in names else []
    high = [v for v in actions.column("max.as_of").to_pylist() if v is not None] if "max.as_of" in names else []
    return sum(rows), min(low, default=None), max(high, default=None)


def snapshot_rows(path: str, version: int) -> int | None:
    """Rows of a Delta snapshot from its file statistics (metadata only); None without statistics."""
    return _snapshot_stats(path, version)[0]


def lookup_by_broadcast(map_path: str, version: int) -> bool:
    """Whether a batch job resolving events in bulk should look this gold.identity_map snapshot up
    broadcast (`attach_customer_id(..., broadcast=True)`): its identifiers, counted from the log,
    are within BROADCAST_MAP_MAX_IDENTIFIERS."""
    identifiers = snapshot_rows(map_path, version)
    return identifiers is not None and identifiers <= BROADCAST_MAP_MAX_IDENTIFIERS


def _holds(path: str, version: int, rows: int, as_of: dt.datetime | None) -> bool:
    """Does this snapshot hold `rows` rows, all written for `as_of` (when the table has that column),
    and, on a local lake, are its data files still there?"""
    try:
        actions = _add_actions(path, version)
        found, low, high = _snapshot_stats(path, version, actions)
    except Exception:  # version gone, table replaced
        return False
    if found != rows:
        return False
    return ((as_of is None or rows == 0 or (low == high == as_of))
            and files_present(path, actions.column("path").to_pylist()))


@dataclass(frozen=True)
class IdentitySnapshot:
    """What the identity run of a date read and wrote: the jobs of that date read the same."""

    silver_version: int
    map_version: int


def identity_snapshot(spark: SparkSession, settings, logical_date: dt.date) -> IdentitySnapshot | None:
    """The silver version the identity run of `logical_date` read and the map version it wrote, or
    None when no identity run of that date is recorded. A job of D that read the latest tables instead
    would meet events the map has not seen (the stream appends after identity ran) or, rerun after
    D+1, the map of a later date (BRIEF §4: the customer is the one "as of the run"). Raises, naming
    the fix, when either snapshot is gone (VACUUM, an erasure's purge)."""
    from touchpoint.core.catalog import table_path

    runs = [row for row in run_log(spark, table_path("gold.identity_runs", settings))
            if row["logical_date"] == logical_date]
    if not runs:
        return None
    run, rerun = runs[0], f"run `touchpoint run identity --date {logical_date}` again"
    map_version = locate_version(table_path("gold.identity_map", settings), run["identity_map_version"],
                                 run["identifiers"])
    if map_version is None:
        raise RuntimeError(f"gold.identity_map no longer holds the map of the identity run for {logical_date}: {rerun}")
    if not snapshot_present(table_path("silver.events", settings), run["silver_version"]):
        raise RuntimeError(f"silver.events no longer holds version {run['silver_version']}, the snapshot the identity "
                           f"run for {logical_date} read (VACUUM removed its files): {rerun}")
    return IdentitySnapshot(run["silver_version"], map_version)


def recorded_snapshot(settings, recorded: dict) -> IdentitySnapshot | None:
    """The inputs a job run recorded in its commit (`silver_version`, `identity_map_version` and
    `identity_map_fingerprint`, as profiles do), if both still read as they did then: the map
    version by the fingerprint of its files (publish may re-create the table), both by their files
    being there (VACUUM). None otherwise, or when something was not recorded."""
    from touchpoint.core.catalog import table_path

    silver_version, map_version = recorded.get("silver_version"), recorded.get("identity_map_version")
    if silver_version is None or map_version is None or recorded.get("identity_map_fingerprint") is None:
        return None
    map_path = table_path("gold.identity_map", settings)
    try:
        same_map = snapshot_fingerprint(map_path, map_version) == recorded["identity_map_fingerprint"]
    except Exception:  # the version's log is gone, or the table was replaced
        return None
    if not (same_map and snapshot_present(map_path, map_version)
            and snapshot_present(table_path("silver.events", settings), silver_version)):
        return None
    return IdentitySnapshot(silver_version, map_version)


def inputs_of_date(spark: SparkSession, settings, logical_date: dt.date, job: str) -> IdentitySnapshot:
    """`identity_snapshot`, or the latest versions of silver and the map (logged) when no identity run of
    D is recorded: a map maintained outside touchpoint, or written by hand in a test."""
    from touchpoint.core.catalog import table_path

    snapshot = identity_snapshot(spark, settings, logical_date)
    if snapshot is not None:
        return snapshot
    log.warning("%s %s: no identity run of that date is recorded; reading the latest silver.events and "
                "gold.identity_map", job, logical_date)
    return IdentitySnapshot(latest_version(spark, table_path("silver.events", settings)),
                            latest_version(spark, table_path("gold.identity_map", settings)))


def locate_version(path: str, recorded: int, rows: int, as_of: dt.datetime | None = None) -> int | None:
    """The recorded version of a table if it holds the expected rows, else the current one if it does."""
    for version in (recorded, latest_version(None, path)):
        if _holds(path, version, rows, as_of):
            return version
    return None


def locate_state(paths: dict[str, str], base: BaseRun, current_only: bool = False) -> dict[str, int] | None:
    """Delta versions of the identity state tables that hold the base run's output, or None.
    `current_only`: only if the tables as they stand hold it.

    The versions the run recorded are right when the tables were written in place. Under the
    pipeline's write-audit-publish the tables are staged copies and published copies with other
    version numbers; then the current versions hold that state. Either candidate is accepted only
    if its row counts (and the `as_of` stamp of the edges and guardrails) match the run log.
    """
    expected = {
        "gold.identity_map": (base.identifiers, None),
        "gold.identity_edges": (base.edges, base.as_of),
        "gold.identity_guardrails": (base.guardrail_rows, base.as_of),
    }
    recorded = {"gold.identity_map": base.identity_map_version, "gold.identity_edges": base.identity_edges_version,
                "gold.identity_guardrails": base.identity_guardrails_version}
    candidates = [] if current_only else [recorded]
    try:
        candidates.append({name: latest_version(None, paths[name]) for name in recorded})
    except Exception:
        pass
    for versions in candidates:
        if all(_holds(paths[name], versions[name], *expected[name]) for name in recorded):
            return versions
    return None


@dataclass
class Increment:
    """Which silver rows to read: `dates` (partitions) for an incremental run, None for a full rebuild."""

    dates: list[dt.date] | None
    reason: str
    details: dict = field(default_factory=dict)

    @property
    def full(self) -> bool:
        return self.dates is None


def deletion_vectors_changed(path: str, after_version: int, up_to_version: int) -> bool | None:
    """Did a commit in (after_version, up_to_version] delete rows in place with deletion vectors?

    Such a delete keeps the file's path, so comparing file lists cannot see it; the commits'
    operation metrics can. None when the log no longer holds every one of those commits.
    """
    table = rs_table(path)
    commits = {c["version"]: c for c in table.history(max(table.version() - after_version, 1))
               if after_version < c.get("version", -1) <= up_to_version}
    if set(commits) != set(range(after_version + 1, up_to_version + 1)):
        return None
    for commit in commits.values():
        for key, value in (commit.get("operationMetrics") or {}).items():
            if ("DeletionVectorsAdded" in key or "DeletionVectorsUpdated" in key) and int(value or 0) > 0:
                return True
    return False


def plan_increment(spark: SparkSession, silver_path: str, base: BaseRun, silver_version: int,
                   logical_date: dt.date) -> Increment:
    """Partitions of silver an incremental run on top of `base` must read, or a full rebuild and why."""
    if base.silver_version > silver_version:
        return Increment(None, "silver is older than the previous run's snapshot")
    try:
        before = snapshot_files(silver_path, base.silver_version)
    except Exception as error:  # log cleaned up, table recreated: start over
        return Increment(None, f"silver version {base.silver_version} unreadable ({error.__class__.__name__})")
    now = snapshot_files(silver_path, silver_version)
    in_place = deletion_vectors_changed(silver_path, base.silver_version, silver_version)
    if in_place is None:
        return Increment(None, "silver commits since the previous run are no longer in the log")
    if in_place:
        return Increment(None, "rows were deleted from silver in place (deletion vectors)")
    added, removed = now.keys() - before.keys(), before.keys() - now.keys()
    changed_dates = {now[f] for f in added} | {before[f] for f in removed}
    if None in changed_dates:
        return Increment(None, "silver files outside event_date partitions")
    removed_dates = sorted(d for d in {before[f] for f in removed} if d <= base.logical_date)
    if removed_dates:
        # Rewritten files are harmless (compaction); deleted rows the base run saw are not.
        seen = (
            read_version(spark, silver_path, base.silver_version)
            .where(F.col("event_date").isin(removed_dates) & (F.col("event_ts") < F.lit(as_of_for(base.logical_date))))
            .select("event_date", "event_id")
        )
        kept = read_version(spark, silver_path, silver_version).where(F.col("event_date").isin(removed_dates))
        if not seen.join(kept.select("event_date", "event_id"), ["event_date", "event_id"], "left_anti").isEmpty():
            return Increment(None, "rows read by the previous run were deleted from silver")
    later_dates = {d for d in changed_dates if d > base.logical_date}
    days = (logical_date - base.logical_date).days
    new_dates = {base.logical_date + dt.timedelta(days=i) for i in range(1, days + 1)}
    dates = sorted(d for d in (changed_dates - later_dates) | new_dates if d <= logical_date)
    return Increment(dates, "incremental", {"files_added": len(added), "files_removed": len(removed)})
