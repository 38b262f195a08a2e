"""Right to erasure (BRIEF §8): `touchpoint forget`, the erasure queue and the privacy_erasure DAG.

An erasure request names a person by one identifier (email, phone, user_id or customer_id), which is
normalised and hashed at once: requests, the suppression list and the erasure log hold hashes only.
`erase` then:

1. resolves the person: their customer ids in gold.identity_map (plus ids merged into them), every
   identifier of those customers, and identifiers that co-occur with them in silver events the last
   identity run has not seen yet (held-back identifiers, such as shared devices, never spread it);
2. puts all their hashed identifiers on the suppression list, so events that arrive later are
   quarantined as `erased_subject` instead of re-creating them;
3. deletes their rows from every catalog table that declares `subject_columns`, in the published
   gold namespace and in any staging namespace present, retrying on concurrent stream commits, and
   checks again afterwards (a micro-batch in flight may have added some);
4. purges: REORG ... APPLY (PURGE) where deletion vectors are on, then VACUUM LITE with
   retention.erasure_vacuum_hours (0 by default), so no Parquet file under the lake root holds them;
5. rewrites the local export files that mention them; the last run's diff state keeps their rows,
   with raw identifiers blanked, so the next export of each segment and destination carries a
   `removes` row for them;
6. writes one row to gold.erasure_log: hashed identifiers, rows removed per table, timestamps.

Re-running a request is harmless; a person found nowhere is reported as `not_found`. DELETE
predicates compare SHA-256 hashes (or customer ids), so no raw value reaches `_delta_log`.
docs/PRIVACY.md explains each choice.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import logging
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType, BooleanType, LongType, MapType, StringType, StructField, StructType, TimestampType,
)

from touchpoint.core import progress
from touchpoint.core.catalog import TABLES, Table, table_path
from touchpoint.core.config import Settings
from touchpoint.core.delta import (
    commit_metadata, ensure_table, gold_write_lock, is_delta, latest_version, rs_table, silver_write_lock, subfolders,
)
from touchpoint.core.privacy import (
    IDENTIFIER_TYPES, REQUEST_TYPES, Suppression, hashed_identifiers, hashed_value_in, load_suppression,
    read_identifiers, request_identifier, sha256_hex,
)

log = logging.getLogger(__name__)

_S, _TS, _L = StringType(), TimestampType(), LongType()
REQUESTS_SCHEMA = StructType([StructField(n, k, True) for n, k in (
    ("request_id", _S), ("identifier_type", _S), ("identifier_sha256", _S), ("requested_at", _TS))])
SUPPRESSION_SCHEMA = StructType([StructField(n, k, True) for n, k in (
    ("identifier_type", _S), ("identifier_sha256", _S), ("request_id", _S), ("added_at", _TS))])
HASHED_IDENTIFIER = StructType([StructField("identifier_type", _S), StructField("identifier_sha256", _S)])
ERASURE_LOG_SCHEMA = StructType([StructField(n, k, True) for n, k in (
    ("request_id", _S), ("requested_type", _S), ("requested_sha256", _S), ("requested_at", _TS),
    ("started_at", _TS), ("completed_at", _TS), ("status", _S),
    ("customer_id", _S),  # one row per request; the first of customer_ids (exports suppress all of them)
    ("customer_ids", ArrayType(_S)), ("identifiers", ArrayType(HASHED_IDENTIFIER)),
    ("rows_removed", MapType(_S, _L)), ("export_files_rewritten", _L), ("tables_purged", ArrayType(_S)),
)])

MAX_CLOSURE_ROUNDS = 5
MIN_SUBSTRING = 6  # shorter identifiers are not searched inside unparseable payloads or free text
DELETE_ATTEMPTS = 6
STREAM_WRITTEN = ("bronze.events", "silver.events", "silver.quarantine")
PRIVACY_TABLES = ("privacy.erasure_requests", "privacy.suppression", "gold.erasure_log")


# ---- the person -------------------------------------------------------------------------------------

@dataclass
class Subject:
    """One person as the erasure sees them. Raw values live in driver memory for the run only."""

    requested: tuple[str, str]  # (type, sha256)
    customer_ids: set[str] = field(default_factory=set)
    identifiers: set[tuple[str, str]] = field(default_factory=set)  # (type, raw normalised value)

    @property
    def hashes(self) -> set[tuple[str, str]]:
        found = {(kind, sha256_hex(value)) for kind, value in self.identifiers}
        if self.requested[0] in IDENTIFIER_TYPES:
            found.add(self.requested)
        return found

    def hashes_of(self, kind: str) -> set[str]:
        return {h for k, h in self.hashes if k == kind}

    @property
    def known(self) -> bool:
        return bool(self.customer_ids or self.identifiers)

    def texts(self) -> set[str]:
        """Values searched as substrings where no structure helps (broken payloads, free text)."""
        values = {v for _, v in self.identifiers} | self.customer_ids
        return {v for v in values if len(v) >= MIN_SUBSTRING}

    def export_values(self) -> set[str]:
        """Every form in which an export file may carry them (raw, and each destination's hash)."""
        values = set(self.customer_ids)
        for kind, value in self.identifiers:
            if kind == "email":
                values |= {value, sha256_hex(value)}
            elif kind == "phone":
                digits = "".join(ch for ch in value if ch.isdigit())
                values |= {value, sha256_hex(value), sha256_hex(digits), sha256_hex("+" + digits)}
        values |= {h for k, h in self.hashes if k in ("email", "phone")}
        return values


def _read_every_namespace(spark: SparkSession, settings: Settings, name: str) -> DataFrame | None:
    """A gold table's rows in the published namespace and every staging namespace present."""
    frames = [spark.read.format("delta").load(path) for path in namespace_paths(spark, TABLES[name], settings)
              if is_delta(spark, path)]
    if not frames:
        return None
    union = frames[0]
    for frame in frames[1:]:
        union = union.unionByName(frame, allowMissingColumns=True)
    return union


def _read_latest(spark: SparkSession, path: str) -> DataFrame | None:
    return spark.read.format("delta").load(path) if is_delta(spark, path) else None


def resolve_subject(spark: SparkSession, settings: Settings, identifier_type: str, identifier_sha256: str) -> Subject:
    """All customer ids and identifiers of the person named by (type, sha256)."""
    from touchpoint.jobs.identity_rules import Guardrails, held_back_reason

    subject = Subject((identifier_type, identifier_sha256))
    silver = _read_latest(spark, table_path("silver.events", settings))
    guardrails = Guardrails.from_settings(settings.identity)
    held = _read_latest(spark, table_path("gold.identity_guardrails", settings))
    held_back = {(r[0], r[1]) for r in held.select("identifier_type", "identifier_value").collect()} if held else set()
    # A shared device asked for itself is its own customer only. One that became shared since the
    # last identity run is still filed under one of its users' customers in the map: not followed.
    requested_devices = set()
    if identifier_type == "anonymous_id" and silver is not None:
        requested_devices = {("anonymous_id", r[0]) for r in silver.where(
            hashed_value_in(F.col("anonymous_id"), [identifier_sha256])).select("anonymous_id").distinct().collect()}
    newly_shared = (_shared_devices_now(silver, requested_devices, guardrails) - held_back
                    if requested_devices else set())
    # Customer ids from every namespace's map: a pipeline run staged before this erasure may know the
    # person under an id the published map does not have yet, and would publish their profile,
    # credits and membership. Identifiers from the published map only (then silver): a staged map
    # left behind (a failed audit) may be stale, and must not hand the person someone else's.
    identity_map = _read_every_namespace(spark, settings, "gold.identity_map")
    published_map = _read_latest(spark, table_path("gold.identity_map", settings))
    if identity_map is not None and not newly_shared:
        if identifier_type == "customer_id":
            seed = identity_map.where(hashed_value_in(F.col("customer_id"), [identifier_sha256]))
        else:
            seed = identity_map.where((F.col("identifier_type") == identifier_type)
                                      & hashed_value_in(F.col("identifier_value"), [identifier_sha256]))
        subject.customer_ids |= {r[0] for r in seed.select("customer_id").distinct().collect()}
        subject.customer_ids |= _merged_into(spark, settings, subject.customer_ids)
        if subject.customer_ids and published_map is not None:
            subject.identifiers |= {(r[0], r[1]) for r in published_map.where(
                F.col("customer_id").isin(sorted(subject.customer_ids)))
                .select("identifier_type", "identifier_value").distinct().collect()}

    if silver is None:
        return subject
    # The guardrails are as of the last identity run: a device may have become shared since. Its
    # other users are other people, so it must not carry the closure to them (BRIEF §5: a shared
    # device links nothing); it is checked against silver as it stands before it is followed.
    held_back |= _shared_devices_now(silver, subject.identifiers | requested_devices, guardrails) | newly_shared
    subject.identifiers -= held_back
    wanted = dict.fromkeys(IDENTIFIER_TYPES)
    # a held-back requested device: its rows are still erased, but it leads to nobody else
    quiet = hashed_identifiers(held_back & requested_devices)
    for _ in range(MAX_CLOSURE_ROUNDS):
        # events carrying any identifier known so far (by hash), and the identifiers they carry
        hit = F.lit(False)
        for kind in IDENTIFIER_TYPES:
            hit = hit | hashed_value_in(F.col(kind), subject.hashes_of(kind) - {h for k, h in quiet if k == kind})
        pairs = F.explode(F.array(*[F.struct(F.lit(k).alias("t"), F.col(k).alias("v"),
                                             held_back_reason(F.col(k), guardrails.blocklist).alias("held"))
                                    for k in wanted]))
        found = {(r["t"], r["v"]) for r in silver.where(hit).select(pairs.alias("p")).select("p.*")
                 .where(F.col("v").isNotNull() & F.col("held").isNull()).distinct().collect()}
        new = found - subject.identifiers - held_back
        held_back |= _shared_devices_now(silver, new, guardrails)
        new -= held_back
        if not new:
            break
        subject.identifiers |= new
    if identity_map is not None and subject.identifiers:
        # identifiers found in silver may belong to a customer the map knows under another id
        by_hash = F.lit(False)
        for kind in IDENTIFIER_TYPES:
            hashes = subject.hashes_of(kind) - {h for k, h in quiet if k == kind}
            by_hash = by_hash | ((F.col("identifier_type") == kind)
                                 & hashed_value_in(F.col("identifier_value"), hashes))
        subject.customer_ids |= {r[0] for r in identity_map.where(by_hash).select("customer_id").distinct().collect()}
    subject.customer_ids |= _provisional_ids(spark, subject.identifiers)
    return subject


def _shared_devices_now(silver: DataFrame, identifiers: set[tuple[str, str]], guardrails) -> set[tuple[str, str]]:
    """The anonymous_ids among `identifiers` that are shared devices over silver as it stands: the
    identity job's own rule (`identity_rules.shared_devices`) over the edges of their events."""
    from touchpoint.jobs.identity_rules import edges_from_facts, identity_facts, shared_devices

    devices = sorted(v for kind, v in identifiers if kind == "anonymous_id")
    if not devices:
        return set()
    edges = edges_from_facts(silver.where(F.col("anonymous_id").isin(devices)).transform(identity_facts(guardrails)))
    shared = shared_devices(edges, guardrails.shared_device_max_user_ids)
    return {("anonymous_id", r["identifier_value"]) for r in shared.collect()}


def _provisional_ids(spark: SparkSession, identifiers: set[tuple[str, str]]) -> set[str]:
    """The ids the speed layer files a person under before any batch has seen them (a component of
    new identifiers takes the provisional id of one of them, all of which are the subject's)."""
    from touchpoint.core.stream_identity import provisional_id

    if not identifiers:
        return set()
    pairs = spark.createDataFrame(sorted(identifiers), "identifier_type string, identifier_value string")
    return {r[0] for r in pairs.select(provisional_id(F.col("identifier_type"), F.col("identifier_value"))).collect()}


def _merged_into(spark: SparkSession, settings: Settings, customer_ids: set[str]) -> set[str]:
    """Retired ids whose merges ended in one of `customer_ids` (followed back through chains)."""
    merges = _read_every_namespace(spark, settings, "gold.identity_merges")
    if merges is None or not customer_ids:
        return set()
    found, frontier = set(), set(customer_ids)
    for _ in range(20):
        older = {r[0] for r in merges.where(F.col("new_customer_id").isin(sorted(frontier)))
                 .select("old_customer_id").distinct().collect()} - found - customer_ids
        if not older:
            break
        found |= older
        frontier = older
    return found


# ---- row predicates per declared subject column -----------------------------------------------------

def _payload_matcher(subject: Subject):
    """A pandas UDF: does a raw payload belong to the subject? By hashed identifiers, as silver
    normalises them, or for a payload whose identifier fields cannot be read as the lenient token
    scan finds them (the ingest's suppression check); such a payload also by substring of a known
    value."""
    suppression = Suppression(frozenset(subject.hashes))
    needles = [v.lower().encode("utf-8") for v in subject.texts()]

    def matches(payload: bytes | None) -> bool:
        if payload is None:
            return False
        if suppression.matches_payload(payload):
            return True
        identifiers, readable = read_identifiers(payload)
        if identifiers and readable:
            return False
        lowered = bytes(payload).lower()
        return any(needle in lowered for needle in needles)

    @F.pandas_udf(BooleanType())
    def erased_payload(payloads: pd.Series) -> pd.Series:
        return payloads.map(lambda p: matches(None if p is None else bytes(p))).astype(bool)

    return erased_payload


def _text_matcher(subject: Subject):
    needles = sorted(v.lower() for v in subject.texts())

    @F.pandas_udf(BooleanType())
    def mentions_erased_subject(texts: pd.Series) -> pd.Series:
        return texts.map(lambda t: t is not None and any(n in t.lower() for n in needles)).astype(bool)

    return mentions_erased_subject


def _any(columns: Iterable[Column | None]) -> Column | None:
    """OR of the given conditions; None (matches nothing) when there are none."""
    kept = [c for c in columns if c is not None]
    if not kept:
        return None
    combined = kept[0]
    for column in kept[1:]:
        combined = combined | column
    return combined


def _hashed_in(value: Column, hashes: set[str]) -> Column | None:
    return hashed_value_in(value, hashes) if hashes else None


def subject_predicate(table: Table, columns: Iterable[str], subject: Subject) -> Column | None:
    """Rows of `table` that refer to the subject, from its `subject_columns` declaration; None when
    nothing known about the subject can match (no need to scan the table)."""
    present = set(columns)
    matches: list[Column | None] = []
    for column, kind in table.subject_columns:
        if column not in present:
            raise RuntimeError(f"{table.name} declares subject column {column!r}, which the table does not have: "
                               "fix the declaration in touchpoint/core/catalog.py before erasing")
        value = F.col(column)
        if kind == "customer_id":
            matches.append(value.isin(sorted(subject.customer_ids)) if subject.customer_ids else None)
        elif kind in IDENTIFIER_TYPES:
            matches.append(_hashed_in(value, subject.hashes_of(kind)))
        elif kind.startswith("identifier:"):
            type_column = F.col(kind.split(":", 1)[1])
            matches.append(_any((type_column == t) & hashed_value_in(value, subject.hashes_of(t))
                                for t in IDENTIFIER_TYPES if subject.hashes_of(t)))
        elif kind == "payload":
            matches.append(_payload_matcher(subject)(value) if subject.hashes or subject.texts() else None)
        elif kind in ("email_sha256", "phone_sha256"):
            hashes = sorted(subject.hashes_of(kind.removesuffix("_sha256")))
            matches.append(F.coalesce(value.isin(hashes), F.lit(False)) if hashes else None)
        elif kind == "text":
            matches.append(_text_matcher(subject)(value) if subject.texts() else None)
        else:
            raise ValueError(f"{table.name}: unknown subject column kind {kind!r}")
    return _any(matches)


# ---- Delta operations -------------------------------------------------------------------------------

def _is_concurrent_modification(error: Exception) -> bool:
    try:
        from delta.exceptions import DeltaConcurrentModificationException

        if isinstance(error, DeltaConcurrentModificationException):
            return True
    except ImportError:
        pass
    return "Concurrent" in type(error).__name__ or "ConcurrentAppendException" in str(error)


def with_retries(action, what: str, attempts: int = DELETE_ATTEMPTS):
    """Run `action`, retrying (with backoff) when a concurrent commit, e.g. the stream's, conflicts."""
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except Exception as error:  # noqa: BLE001 - only concurrent modifications are retried
            if attempt == attempts or not _is_concurrent_modification(error):
                raise
            log.info("%s conflicted with a concurrent commit (%s); retry %d", what, type(error).__name__, attempt)
            time.sleep(min(0.5 * 2 ** attempt, 10))


def _deleted_rows(path: str, after_version: int, tag: str) -> int:
    """Rows deleted by the commits tagged `tag` after `after_version` (from the Delta log)."""
    table = rs_table(path)
    total = 0
    for commit in table.history(max(table.version() - after_version, 1)):
        if commit.get("version", -1) > after_version and commit.get("userMetadata") == tag:
            total += int((commit.get("operationMetrics") or {}).get("numDeletedRows", 0) or 0)
    return total


def delete_rows(spark: SparkSession, path: str, predicate: Column, tag: str) -> int:
    """DELETE the matching rows; the commit is tagged with the request id (its userMetadata)."""
    from delta.tables import DeltaTable

    before = latest_version(spark, path)
    with commit_metadata(spark, tag):
        with_retries(lambda: DeltaTable.forPath(spark, path).delete(predicate), f"DELETE on {path}")
    return _deleted_rows(path, before, tag)


# What guards a full VACUUM (purge_files): a context manager factory and the fewest hours it keeps.
FullVacuumGuard = tuple[Callable[[], AbstractContextManager], int]


def purge_files(spark: SparkSession, path: str, retention_hours: int,
                full_vacuum: FullVacuumGuard = (nullcontext, 0)) -> None:
    """Remove deleted rows from disk: REORG PURGE rewrites files that only hide rows behind deletion
    vectors; VACUUM LITE deletes the files the log removed (never files of a commit in flight).

    LITE needs every remove since the last VACUUM still in the log; without it a full VACUUM runs,
    which also deletes files no commit refers to yet, a writer's commit in flight among them. So it
    runs inside `full_vacuum`'s guard (the silver write lock for the ingest's tables) and keeps at
    least its hours (the speed layer's tables: their writer holds no lock)."""
    from delta.tables import DeltaTable

    properties = DeltaTable.forPath(spark, path).detail().select("properties").first()[0] or {}
    if str(properties.get("delta.enableDeletionVectors", "false")).lower() == "true":
        with_retries(lambda: spark.sql(f"REORG TABLE delta.`{path}` APPLY (PURGE)").collect(), f"REORG {path}")
    check = "spark.databricks.delta.retentionDurationCheck.enabled"
    spark.conf.set(check, "false")  # the configured retention is deliberate, 0 h included
    try:
        try:
            spark.sql(f"VACUUM delta.`{path}` LITE RETAIN {retention_hours} HOURS").collect()
        except Exception as error:  # noqa: BLE001 - LITE needs every remove still in the log
            guard, min_hours = full_vacuum
            hours = max(retention_hours, min_hours)
            log.info("VACUUM LITE on %s not possible (%s): full VACUUM, %s hours", path, type(error).__name__, hours)
            with guard():
                spark.sql(f"VACUUM delta.`{path}` RETAIN {hours} HOURS").collect()
    finally:
        spark.conf.unset(check)


def full_vacuum_guard(name: str, settings: Settings) -> FullVacuumGuard:
    """What protects a writer's commit in flight from a full VACUUM of table `name` (purge_files):
    the ingest's tables are written under the silver write lock, so the VACUUM takes it; the speed
    layer's writer holds none, so its files of the last hour stay (those tables hold customer ids,
    no raw identifier: lake_maintenance's VACUUM removes them after retention.vacuum_hours)."""
    if name in STREAM_WRITTEN:
        return (lambda: silver_write_lock(settings.lake_uri)), 0
    if TABLES[name].layer == "speed":
        return nullcontext, 1
    return nullcontext, 0


def namespace_paths(spark: SparkSession, table: Table, settings: Settings) -> list[str]:
    """The table's path in the published namespace and, for gold tables, in every staging namespace
    (listed through Spark's file system on an object store)."""
    paths = [table.path(settings)]
    if table.layer == "gold":
        for folder in subfolders(spark, f"{settings.lake_uri}/staging"):
            staged = settings.model_copy(update={"gold_namespace": f"staging/{folder}"})
            paths.append(table.path(staged))
    return paths


def _erase_from_tables(spark: SparkSession, settings: Settings, subject: Subject, tag: str,
                       names: Sequence[str], label: str = "erasure: deleting rows") -> dict[str, int]:
    removed: dict[str, int] = {}
    with progress.each(names, label) as steps:
        for name in steps:
            table = TABLES[name]
            for path in namespace_paths(spark, table, settings):
                if not is_delta(spark, path):
                    continue
                predicate = subject_predicate(table, spark.read.format("delta").load(path).columns, subject)
                if predicate is None:
                    continue
                count = delete_rows(spark, path, predicate, tag)
                key = name if path == table.path(settings) else f"{name}@{path.rsplit('/', 2)[-2]}"
                if count:
                    removed[key] = removed.get(key, 0) + count
    return removed


def remaining_rows(spark: SparkSession, settings: Settings, subject: Subject) -> dict[str, int]:
    """Rows still referring to the subject, per table path (for operators and tests: {} after an erasure)."""
    left = {}
    for name, table in TABLES.items():
        if not table.subject_columns:
            continue
        for path in namespace_paths(spark, table, settings):
            if is_delta(spark, path):
                frame = spark.read.format("delta").load(path)
                predicate = subject_predicate(table, frame.columns, subject)
                count = frame.where(predicate).count() if predicate is not None else 0
                if count:
                    left[path] = count
    return left


# ---- the identity run log after an erasure -----------------------------------------------------------

def reconcile_identity_runs(spark: SparkSession, settings: Settings) -> None:
    """Point gold.identity_runs at the erased state. The files of earlier versions are gone after the
    purge, so: the latest run's row takes the current versions and row counts of the identity tables
    (profiles of that date still find their map), and every row's config fingerprint is marked so the
    next identity run rebuilds from silver rather than building on a state that lost rows."""
    runs_path = table_path("gold.identity_runs", settings)
    if not is_delta(spark, runs_path):
        return
    runs = spark.read.format("delta").load(runs_path)
    latest = runs.agg(F.max("logical_date")).first()[0]
    if latest is None:
        return

    def current(name: str) -> tuple[int, int]:
        table = rs_table(table_path(name, settings))
        rows = table.to_pyarrow_table(columns=[]).num_rows
        return table.version(), rows

    map_version, identifiers = current("gold.identity_map")
    edges_version, edges = current("gold.identity_edges")
    guardrails_version, guardrail_rows = current("gold.identity_guardrails")
    silver_version = latest_version(spark, table_path("silver.events", settings))
    is_latest = F.col("logical_date") == F.lit(latest)
    updated = runs.select(
        *[c for c in runs.columns if c not in ("identity_map_version", "identity_edges_version",
                                               "identity_guardrails_version", "identifiers", "edges",
                                               "blocklisted", "silver_version", "config_fingerprint")],
        F.when(is_latest, F.lit(map_version)).otherwise(F.lit(-1)).cast("long").alias("identity_map_version"),
        F.when(is_latest, F.lit(edges_version)).otherwise(F.lit(-1)).cast("long").alias("identity_edges_version"),
        F.when(is_latest, F.lit(guardrails_version)).otherwise(F.lit(-1)).cast("long")
        .alias("identity_guardrails_version"),
        F.when(is_latest, F.lit(identifiers)).otherwise(F.col("identifiers")).cast("long").alias("identifiers"),
        F.when(is_latest, F.lit(edges)).otherwise(F.col("edges")).cast("long").alias("edges"),
        F.when(is_latest, F.lit(guardrail_rows) - F.col("shared_devices")).otherwise(F.col("blocklisted"))
        .cast("long").alias("blocklisted"),
        F.lit(silver_version).cast("long").alias("silver_version"),  # earlier snapshots are purged
        F.when(F.col("config_fingerprint").startswith("erased:"), F.col("config_fingerprint"))
        .otherwise(F.concat(F.lit("erased:"), F.col("config_fingerprint"))).alias("config_fingerprint"),
    ).select(*runs.columns).localCheckpoint()
    updated.write.format("delta").mode("overwrite").save(runs_path)


# ---- export files on disk ---------------------------------------------------------------------------

def _export_roots(settings: Settings) -> list[Path]:
    from touchpoint.jobs.exports import STAGED, published_root

    try:
        root = published_root(settings)
    except Exception:  # noqa: BLE001 - no local exports folder configured: nothing on disk to rewrite
        return []
    roots = [root] if root.is_dir() else []
    staged = root / STAGED
    if staged.is_dir():
        roots += sorted(p for p in staged.iterdir() if p.is_dir())
    return roots


def _redact_state_row(row: dict, raw_values: set[str]) -> dict:
    """A row of the last run's diff state that refers to the subject, kept so the next diff removes
    it, with every raw identifier blanked (hashes and the customer id stay: that is what a
    destination matches a removal on)."""
    return {k: (None if isinstance(v, str) and v in raw_values else v) for k, v in row.items()}


def rewrite_export_files(settings: Settings, subject: Subject, request_id: str) -> tuple[int, dict[str, str]]:
    """Drop the subject's rows from every local export file (CSV, JSONL, diff state), blanking raw
    identifiers in the last run's state instead, and record the rewrite in each manifest. Returns
    the files rewritten and, per rewritten run (by the path gold.export_log gives it), the SHA-256
    of its manifest now."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from touchpoint.jobs import export_files as files
    from touchpoint.jobs.exports import published_root

    values = subject.export_values()
    raw_values = {value for _, value in subject.identifiers}
    if not values:
        return 0, {}
    refers = lambda row: any(isinstance(v, str) and v in values for v in row.values())  # noqa: E731
    rewritten, manifests = 0, {}
    for root in _export_roots(settings):
        for destination_folder in sorted(p for p in root.glob("*/*") if p.is_dir() and not p.name.startswith("_")):
            runs = files.committed_runs(destination_folder)
            latest = max(runs, key=lambda r: files.read_manifest(r).get("seq", 0)) if runs else None
            for run_folder in runs:
                manifest = files.read_manifest(run_folder)
                changed = {}
                for entry in manifest.get("files", []):
                    path = run_folder / entry["name"]
                    kept, dropped = _filter_file(path, refers)
                    if dropped:
                        entry.update(rows=entry["rows"] - dropped, bytes=path.stat().st_size,
                                     sha256=files.sha256_file(path))
                        changed[entry["name"]] = dropped
                state = Path(files.state_path(run_folder))
                for part in sorted(state.glob("*.parquet")) if state.is_dir() else []:
                    table = pq.read_table(part)
                    rows = table.to_pylist()
                    hits = [refers(r) for r in rows]
                    if not any(hits):
                        continue
                    if run_folder == latest:
                        rows = [_redact_state_row(r, raw_values) if hit else r for r, hit in zip(rows, hits)]
                    else:
                        rows = [r for r, hit in zip(rows, hits) if not hit]
                    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), part)
                    # Hadoop's local file system checks a `.<name>.crc` sidecar on read: it no longer matches
                    (part.parent / f".{part.name}.crc").unlink(missing_ok=True)
                    changed[f"{files.STATE}/{part.name}"] = sum(hits)
                if changed:
                    manifest.setdefault("erasures", []).append({"request_id": request_id, "rows": changed})
                    (run_folder / files.MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n",
                                                             encoding="utf-8")
                    rewritten += len(changed)
                    # a staged run is logged under the published path it is released to
                    logged_as = published_root(settings) / run_folder.relative_to(root)
                    manifests[str(logged_as)] = files.sha256_file(run_folder / files.MANIFEST)
    return rewritten, manifests


def _log_rewritten_manifests(spark: SparkSession, settings: Settings, manifests: dict[str, str]) -> None:
    """gold.export_log's manifest_sha256 of each rewritten run, in every namespace, follows its
    manifest: a run checked against its log row still verifies after an erasure."""
    from delta.tables import DeltaTable

    if not manifests:
        return
    updates = spark.createDataFrame(sorted(manifests.items()), "path string, manifest_sha256 string")
    for path in namespace_paths(spark, TABLES["gold.export_log"], settings):
        if is_delta(spark, path):
            with_retries(lambda: (DeltaTable.forPath(spark, path).alias("t")
                                  .merge(updates.alias("s"), "t.path = s.path")
                                  .whenMatchedUpdate(set={"manifest_sha256": "s.manifest_sha256"}).execute()),
                         "export log MERGE")


def _filter_file(path: Path, refers) -> tuple[int, int]:
    """Rewrite one CSV (with header) or JSONL export file without the rows `refers` matches."""
    if not path.is_file():
        return 0, 0
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        rows = list(reader)
        kept = [r for r in rows if not refers(r)]
        if len(kept) == len(rows):
            return len(rows), 0
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=reader.fieldnames, lineterminator="\n")
        writer.writeheader()
        writer.writerows(kept)
        path.write_text(out.getvalue(), encoding="utf-8")
        return len(kept), len(rows) - len(kept)
    lines = [line for line in text.split("\n") if line.strip()]
    kept = [line for line in lines if not refers(json.loads(line))]
    if len(kept) == len(lines):
        return len(lines), 0
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    return len(kept), len(lines) - len(kept)


# ---- the request ------------------------------------------------------------------------------------

def _now() -> dt.datetime:
    # Erasure timestamps record when the request was handled: wall-clock by design (an audit trail).
    return dt.datetime.now(dt.timezone.utc)


def new_request_id(identifier_type: str, identifier_sha256: str, requested_at: dt.datetime) -> str:
    return hashlib.sha256(f"{identifier_type}:{identifier_sha256}:{requested_at.isoformat()}".encode()).hexdigest()[:32]


def _add_to_suppression(spark: SparkSession, settings: Settings, hashes: set[tuple[str, str]], request_id: str,
                        at: dt.datetime) -> None:
    from delta.tables import DeltaTable

    if not hashes:
        return
    path = table_path("privacy.suppression", settings)
    ensure_table(spark, path, SUPPRESSION_SCHEMA, catalog_name="privacy.suppression")
    rows = spark.createDataFrame([(k, h, request_id, at) for k, h in sorted(hashes)], SUPPRESSION_SCHEMA)
    with_retries(lambda: (DeltaTable.forPath(spark, path).alias("t")
                          .merge(rows.alias("s"), "t.identifier_type = s.identifier_type AND "
                                                  "t.identifier_sha256 = s.identifier_sha256")
                          .whenNotMatchedInsertAll().execute()), "suppression MERGE")


def _log_erasure(spark: SparkSession, settings: Settings, record: dict) -> None:
    from delta.tables import DeltaTable

    path = table_path("gold.erasure_log", settings)
    ensure_table(spark, path, ERASURE_LOG_SCHEMA, catalog_name="gold.erasure_log")
    row = spark.createDataFrame([tuple(record[f] for f in ERASURE_LOG_SCHEMA.fieldNames())], ERASURE_LOG_SCHEMA)
    with_retries(lambda: (DeltaTable.forPath(spark, path).alias("t")
                          .merge(row.alias("s"), "t.request_id = s.request_id")
                          .whenMatchedUpdateAll().whenNotMatchedInsertAll().execute()), "erasure log MERGE")


def erase(spark: SparkSession, settings: Settings, identifier_type: str, identifier_sha256: str,
          request_id: str | None = None, requested_at: dt.datetime | None = None) -> dict:
    """Forget the person named by (type, sha256 of the normalised value); see the module docstring.
    Holds the lake's gold write lock: a publish does not exchange a table this is deleting from."""
    if identifier_type not in REQUEST_TYPES:
        raise ValueError(f"unknown identifier type {identifier_type!r}; use one of {', '.join(REQUEST_TYPES)}")
    with gold_write_lock(settings.lake_uri):
        return _erase(spark, settings, identifier_type, identifier_sha256, request_id, requested_at)


def _erase(spark: SparkSession, settings: Settings, identifier_type: str, identifier_sha256: str,
           request_id: str | None, requested_at: dt.datetime | None) -> dict:
    started_at = _now()
    requested_at = requested_at or started_at
    request_id = request_id or new_request_id(identifier_type, identifier_sha256, requested_at)
    tag = f"touchpoint-erasure:{request_id}"
    already = (identifier_type, identifier_sha256) in load_suppression(table_path("privacy.suppression", settings)).hashes

    subject = resolve_subject(spark, settings, identifier_type, identifier_sha256)
    _add_to_suppression(spark, settings, subject.hashes, request_id, started_at)
    subject_tables = [name for name, t in TABLES.items() if t.subject_columns]
    # stream-written tables first: once they are clean, a batch job cannot bring the person back
    ordered = [n for n in STREAM_WRITTEN if n in subject_tables] + [n for n in subject_tables if n not in STREAM_WRITTEN]
    removed = _erase_from_tables(spark, settings, subject, tag, ordered)
    # An ingest batch that read the suppression list before it was extended may have committed since.
    # Under the silver write lock: a batch holds it from reading the list again to its commits, so
    # one committed before this pass is deleted by it, and one after it withholds the person.
    with silver_write_lock(settings.lake_uri):
        for name, count in _erase_from_tables(spark, settings, subject, tag, STREAM_WRITTEN,
                                              "erasure: deleting rows the stream committed meanwhile").items():
            removed[name] = removed.get(name, 0) + count
    if any(name.startswith("gold.identity_") for name in removed):
        reconcile_identity_runs(spark, settings)
    # A pipeline run's kept scope holds resolved events (jobs.changed_scope): dropped, not filtered;
    # the run's next job derives its scope again.
    from touchpoint.jobs.changed_scope import discard_kept_scopes

    discard_kept_scopes(spark, settings)

    exports_rewritten, manifests = rewrite_export_files(settings, subject, request_id)
    _log_rewritten_manifests(spark, settings, manifests)
    # A first erasure purges every subject table (earlier versions of a table may hold the person even
    # when the current one does not); once they are unknown, only tables that lost rows now.
    bookkeeping = [n for n in PRIVACY_TABLES if n != "gold.erasure_log"]  # the log is purged once written
    to_purge = ([*ordered, *bookkeeping, "gold.identity_runs"] if subject.known
                else [*{key.split("@")[0] for key in removed}, *bookkeeping])
    purged = []

    with progress.each(to_purge, "erasure: purging files") as steps:
        for name in steps:
            for path in namespace_paths(spark, TABLES[name], settings):
                if is_delta(spark, path):
                    purge_files(spark, path, settings.retention.erasure_vacuum_hours, full_vacuum_guard(name, settings))
                    purged.append(name if path == TABLES[name].path(settings) else path)

    if subject.known or any(removed.values()):
        status = "erased"
    elif already:
        status = "already_erased"
    else:
        status = "not_found"
    customer_ids = sorted(subject.customer_ids)
    record = {
        "request_id": request_id, "requested_type": identifier_type, "requested_sha256": identifier_sha256,
        "requested_at": requested_at, "started_at": started_at, "completed_at": _now(), "status": status,
        "customer_id": customer_ids[0] if customer_ids else None, "customer_ids": customer_ids,
        "identifiers": [{"identifier_type": k, "identifier_sha256": h} for k, h in sorted(subject.hashes)],
        "rows_removed": removed, "export_files_rewritten": exports_rewritten, "tables_purged": purged,
    }
    _log_erasure(spark, settings, record)
    purge_files(spark, table_path("gold.erasure_log", settings), settings.retention.erasure_vacuum_hours)
    return {k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in record.items()
            if k not in ("tables_purged",)} | {"tables_purged": len(purged)}


def forget(spark: SparkSession, settings: Settings, identifier_type: str, value: str) -> dict:
    """`touchpoint forget --email/--phone/--user-id/--customer-id VALUE`: hash at once, then erase."""
    kind, digest = request_identifier(identifier_type, value)
    return erase(spark, settings, kind, digest)


# ---- the queue (the privacy_erasure DAG) ------------------------------------------------------------

def enqueue(spark: SparkSession, settings: Settings, identifier_type: str, value: str,
            requested_at: dt.datetime | None = None) -> str:
    """Queue a request for the privacy_erasure DAG. Only the hash is stored, never the raw value."""
    kind, digest = request_identifier(identifier_type, value)
    requested_at = requested_at or _now()
    request_id = new_request_id(kind, digest, requested_at)
    path = table_path("privacy.erasure_requests", settings)
    ensure_table(spark, path, REQUESTS_SCHEMA, catalog_name="privacy.erasure_requests")
    row = spark.createDataFrame([(request_id, kind, digest, requested_at)], REQUESTS_SCHEMA)
    with_retries(lambda: row.write.format("delta").mode("append").save(path), "queue append")
    return request_id


def queued_requests(settings: Settings) -> list[dict]:
    from deltalake.exceptions import TableNotFoundError

    try:
        table = rs_table(table_path("privacy.erasure_requests", settings))
    except TableNotFoundError:
        return []
    return sorted(table.to_pyarrow_table().to_pylist(), key=lambda r: (r["requested_at"], r["request_id"]))


def process_queue(spark: SparkSession, settings: Settings) -> dict:
    """Erase every queued request, oldest first; a request leaves the queue once its log row is written."""
    from delta.tables import DeltaTable

    results = []
    path = table_path("privacy.erasure_requests", settings)
    for request in queued_requests(settings):
        requested_at = request["requested_at"]
        if requested_at is not None and requested_at.tzinfo is None:
            requested_at = requested_at.replace(tzinfo=dt.timezone.utc)
        result = erase(spark, settings, request["identifier_type"], request["identifier_sha256"],
                       request_id=request["request_id"], requested_at=requested_at)
        with_retries(lambda: DeltaTable.forPath(spark, path).delete(F.col("request_id") == request["request_id"]),
                     "dequeue")
        results.append({k: result[k] for k in ("request_id", "status", "rows_removed")})
    if results:
        purge_files(spark, path, settings.retention.erasure_vacuum_hours)
    return {"processed": len(results), "requests": results}


def run(spark: SparkSession, settings: Settings, logical_date: dt.date) -> dict:
    """`touchpoint run privacy --date D` and the privacy_erasure DAG: process the erasure queue. The
    date only names the run: a request is handled the first time a run sees it."""
    return process_queue(spark, settings)



def verify_erasure_log(settings: Settings | None = None) -> dict:
    """Every hashed identifier of every logged erasure is on the suppression list (read with
    delta-rs: no Spark job). Raises when one is missing, which would let the person come back.
    `touchpoint verify-erasures` and the privacy_erasure DAG; settings from the environment."""
    from deltalake.exceptions import TableNotFoundError

    from touchpoint.core.config import get_settings

    settings = settings or get_settings()
    try:
        logged = rs_table(table_path("gold.erasure_log", settings)).to_pyarrow_table(
            columns=["request_id", "identifiers"]).to_pylist()
    except TableNotFoundError:
        return {"erasures": 0, "suppressed": 0}
    suppressed = load_suppression(table_path("privacy.suppression", settings)).hashes
    missing = sorted({row["request_id"] for row in logged for pair in row["identifiers"] or []
                      if (pair["identifier_type"], pair["identifier_sha256"]) not in suppressed})
    if missing:
        raise RuntimeError(f"erasures {', '.join(missing)} have identifiers missing from the suppression list")
    return {"erasures": len(logged), "suppressed": len(suppressed)}
