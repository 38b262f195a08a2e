"""Ingestion: Kafka (or JSONL files) -> bronze.events -> silver.events / silver.quarantine.

One `foreachBatch` sink, `IngestSink`, serves the stream and the file backfill alike. Each of
its writes is made idempotent with Delta's txnAppId/txnVersion, so replaying a micro-batch
after a crash neither loses nor doubles a record.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import to_arrow_schema

from touchpoint.core.catalog import table_path
from touchpoint.core.channels import ChannelRules, load_rules, with_channel
from touchpoint.core.config import Settings
from touchpoint.core.delta import committed_txn_version, ensure_table, idempotent_merge_conf, retry_on_conflict
from touchpoint.core.events import Rejected, validate_payload
from touchpoint.core.privacy import ERASED_SUBJECT, Suppression, erased_reason, load_suppression, withheld_payload
from touchpoint.schemas.envelope import schema_version
from touchpoint.schemas.lake import (
    BRONZE_SCHEMA, QUARANTINE_SCHEMA, RECONCILIATION_SCHEMA, SILVER_EXTRA_FIELDS, SILVER_SCHEMA, SOURCE_FIELDS,
    envelope_silver_fields, struct,
)

# Columns the Python validator fills in; channel and lineage are added in Spark.
_LINEAGE = {name for name, _ in SOURCE_FIELDS} | {"ingest_ts", "channel"}
_PARSED_FIELDS = envelope_silver_fields() + [f for f in SILVER_EXTRA_FIELDS if f[0] not in _LINEAGE]
_VALIDATED_SCHEMA = struct(
    [("payload", "binary"), *SOURCE_FIELDS, ("ingest_ts", "timestamp"), ("ingest_date", "date"),
     *_PARSED_FIELDS, ("error_code", "string"), ("reason", "string"), ("rejected_event_id", "string")]
)
_BRONZE_COLUMNS = [f.name for f in BRONZE_SCHEMA.fields]
log = logging.getLogger(__name__)
SILVER_COLUMNS = [f.name for f in SILVER_SCHEMA.fields]
ACCEPTED_COLUMNS = [name for name in SILVER_COLUMNS if name != "channel"]


# ---- pure transforms ---------------------------------------------------------------------------

def bronze_from_kafka(kafka_rows: DataFrame) -> DataFrame:
    """Kafka source rows -> bronze rows: the raw bytes and where they came from."""
    return kafka_rows.select(
        F.col("value").alias("payload"),
        F.col("topic").alias("source_topic"),
        F.col("partition").cast("int").alias("source_partition"),
        F.col("offset").cast("long").alias("source_offset"),
        F.col("timestamp").alias("source_ts"),
        F.current_timestamp().alias("ingest_ts"),
    ).withColumn("ingest_date", F.to_date("ingest_ts"))


def validate(reporting_currency: str, suppression: Suppression = Suppression()) -> Callable[[DataFrame], DataFrame]:
    """Bronze rows -> the same rows with silver columns, or error_code/reason when rejected.

    An event of an erased subject (its identifiers are on the suppression list) is rejected as
    `erased_subject` before anything else, and its payload is replaced by a hash of it."""
    arrow_schema = _arrow_schema()
    passed_through = [name for name in _BRONZE_COLUMNS if name != "payload"]
    filled_struct = pa.struct([field for field in arrow_schema if field.name not in _BRONZE_COLUMNS])
    version = schema_version()

    def outcome_of(payload: bytes | None, arrival) -> tuple[dict, bytes | None]:
        """(the validator's columns of one record, its payload as stored)."""
        if suppression and suppression.matches_payload(payload):
            return ({"error_code": ERASED_SUBJECT, "reason": erased_reason(payload), "schema_version": version},
                    withheld_payload(payload))
        outcome = validate_payload(payload, arrival, reporting_currency)
        if isinstance(outcome, Rejected):
            return ({"error_code": outcome.code, "reason": outcome.reason, "rejected_event_id": outcome.event_id,
                     "schema_version": version}, payload)
        return outcome, payload

    def validate_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        # Column by column: the lineage columns pass through as Arrow arrays, untouched.
        for batch in batches:
            payloads = batch.column("payload").to_pylist()
            results = [outcome_of(payload, arrival)
                       for payload, arrival in zip(payloads, batch.column("source_ts").to_pylist())]
            stored = [payload for _, payload in results]
            columns = {"payload": batch.column("payload") if stored == payloads else pa.array(stored),
                       **{name: batch.column(name) for name in passed_through}}
            # Arrow converts the dicts to a struct in C++ (a missing key is a null), far faster than
            # one Python list per column.
            outcomes = pa.array([outcome for outcome, _ in results], filled_struct)
            columns.update(zip(filled_struct.names, outcomes.flatten()))
            yield pa.RecordBatch.from_arrays([columns[field.name].cast(field.type) for field in arrow_schema],
                                             schema=arrow_schema)

    def transform(bronze: DataFrame) -> DataFrame:
        return bronze.mapInArrow(validate_batches, _VALIDATED_SCHEMA)

    return transform


def _arrow_schema() -> pa.Schema:
    return to_arrow_schema(_VALIDATED_SCHEMA, timezone="UTC", prefers_large_types=False)


def quarantine_rows(validated: DataFrame) -> DataFrame:
    return validated.where(F.col("error_code").isNotNull()).select(
        "payload", "error_code", "reason", F.col("rejected_event_id").alias("event_id"), "schema_version",
        *[name for name, _ in SOURCE_FIELDS], "ingest_ts", "ingest_date",
    )


def accepted_rows(validated: DataFrame) -> DataFrame:
    """The validated rows silver takes, in silver's columns but for `channel` (see silver_rows)."""
    return validated.where(F.col("error_code").isNull()).select(*ACCEPTED_COLUMNS)


def silver_rows(rules: ChannelRules) -> Callable[[DataFrame], DataFrame]:
    """Accepted rows -> silver rows. The channel is added last, to the rows that are inserted only:
    its URL parsing is the costliest column of a batch."""
    def transform(accepted: DataFrame) -> DataFrame:
        return accepted.transform(with_channel(rules)).select(*SILVER_COLUMNS)

    return transform


def first_arrival_per_event_id(accepted: DataFrame) -> DataFrame:
    """Within a batch the first copy to arrive wins (by source timestamp, partition, offset)."""
    order = Window.partitionBy("event_id").orderBy("source_ts", "source_partition", "source_offset")
    return accepted.withColumn("_arrival_rank", F.row_number().over(order)).where("_arrival_rank = 1").drop(
        "_arrival_rank"
    )


def earliest_order_per_order_id(candidates: DataFrame) -> DataFrame:
    """Of several order events with one order id, the smallest (event_ts, event_id) is kept (BRIEF §2)."""
    order = Window.partitionBy("order_id").orderBy("event_ts", "event_id")
    return candidates.withColumn("_order_rank", F.row_number().over(order)).where("_order_rank = 1").drop(
        "_order_rank"
    )


@dataclass(frozen=True)
class SilverChanges:
    """What one batch does to silver: rows to insert and earlier orders they displace."""

    inserts: DataFrame  # accepted columns: silver_rows adds the channel
    displaced: DataFrame  # (event_id, event_date) of silver orders beaten by an earlier order event


def plan_silver_changes(accepted_unique: DataFrame, silver: DataFrame, event_dates: list,
                        with_orders: bool = True) -> SilverChanges:
    """Dedup a batch against silver: by event_id (pruned to the batch's event dates: copies are
    identical, so a copy has the same event_date), and orders by order_id keeping the earliest."""
    existing_ids = silver.where(F.col("event_date").isin(event_dates)).select("event_id")
    new_events = accepted_unique.join(existing_ids, "event_id", "left_anti")
    empty_displaced = silver.select("event_id", "event_date").limit(0)
    if not with_orders:
        return SilverChanges(new_events, empty_displaced)

    is_order = F.col("event_type") == "order"
    new_orders = new_events.where(is_order)
    silver_orders = (
        silver.where(is_order)
        .join(new_orders.select("order_id").distinct(), "order_id", "left_semi")
        .select("order_id", "event_ts", "event_id", "event_date")
        .withColumn("_in_silver", F.lit(True))
    )
    contenders = new_orders.withColumn("_in_silver", F.lit(False)).unionByName(silver_orders, allowMissingColumns=True)
    order_inserts = earliest_order_per_order_id(contenders).where(~F.col("_in_silver")).drop("_in_silver")
    inserts = new_events.where(~is_order).unionByName(order_inserts.select(*accepted_unique.columns))
    # Written over `inserts` so that, once the sink persists those, this reads them from the cache.
    displaced = (
        silver.where(is_order).join(inserts.where(is_order).select("order_id"), "order_id", "left_semi")
        .select("event_id", "event_date")
    )
    return SilverChanges(inserts, displaced)


# ---- the sink ------------------------------------------------------------------------------------

class IngestSink:
    """foreachBatch sink: bronze append, validation, quarantine, silver MERGE, reconciliation."""

    def __init__(self, settings: Settings, source_id: str, write_bronze: bool = True):
        self.settings = settings
        self.source_id = source_id
        self.write_bronze = write_bronze
        self._tables_ready = False
        self.rules = load_rules(settings.channel_rules_file)
        self.paths = {name: table_path(name, settings) for name in
                      ("bronze.events", "silver.events", "silver.quarantine", "silver.reconciliation",
                       "privacy.suppression")}

    def ensure_tables(self, spark: SparkSession) -> None:
        ensure_table(spark, self.paths["bronze.events"], BRONZE_SCHEMA, ["ingest_date"], "bronze.events")
        ensure_table(spark, self.paths["silver.events"], SILVER_SCHEMA, ["event_date"], "silver.events")
        ensure_table(spark, self.paths["silver.quarantine"], QUARANTINE_SCHEMA, ["ingest_date"], "silver.quarantine")
        ensure_table(spark, self.paths["silver.reconciliation"], RECONCILIATION_SCHEMA, [], "silver.reconciliation")

    def already_processed(self, batch_id: int) -> bool:
        """True when this source's batch reached silver (its last write, so everything before it did too)."""
        version = committed_txn_version(self.paths["silver.events"], f"{self.source_id}:silver.events")
        return version is not None and version >= batch_id

    def _append(self, frame: DataFrame, table: str, batch_id: int) -> None:
        started = time.monotonic()
        # A concurrent metadata commit (e.g. the speed layer switching the change feed on in an
        # older lake) refuses a blind append, which then wrote nothing: it is written again.
        retry_on_conflict(lambda: (frame.write.format("delta").mode("append")
                                   .option("txnAppId", f"{self.source_id}:{table}").option("txnVersion", batch_id)
                                   .save(self.paths[table])),
                          f"batch {batch_id}: {table} append")
        log.debug("batch %s: %s append took %.2fs", batch_id, table, time.monotonic() - started)

    def __call__(self, bronze: DataFrame, batch_id: int) -> dict[str, int]:
        spark = bronze.sparkSession
        if not self._tables_ready:
            self.ensure_tables(spark)
            self._tables_ready = True
        if self.already_processed(batch_id):  # a replay after a crash that followed the silver commit
            return {"skipped": 1}
        bronze = bronze.persist()
        try:
            return self._process(spark, bronze, batch_id)
        finally:
            bronze.unpersist()

    def _process(self, spark: SparkSession, bronze: DataFrame, batch_id: int) -> dict[str, int]:
        # Read per batch: a subject erased while the stream runs is suppressed from the next batch on.
        suppression = load_suppression(self.paths["privacy.suppression"])
        validated = bronze.transform(validate(self.settings.reporting_currency, suppression)).persist()
        cached = [validated]
        try:
            if self.write_bronze:
                # With erased subjects, bronze takes the validated payloads: theirs are withheld (hashed).
                self._append(validated.select(*BRONZE_SCHEMA.fieldNames()) if suppression else bronze,
                             "bronze.events", batch_id)
            started = time.monotonic()  # each step's debug line times that step alone
            tally = validated.agg(
                F.count(F.lit(1)).alias("bronze"),
                F.count("error_code").alias("quarantine"),
                F.count_if(F.col("error_code").isNull() & F.col("phone_dropped")).alias("phones_dropped"),
                F.count_if(F.col("error_code").isNull() & (F.col("event_type") == "order")).alias("orders"),
                F.collect_set(F.when(F.col("error_code").isNull(), F.col("event_date"))).alias("event_dates"),
            ).first()
            log.debug("batch %s: validation and tally took %.2fs", batch_id, time.monotonic() - started)
            started = time.monotonic()
            unique = first_arrival_per_event_id(validated.transform(accepted_rows))
            silver = spark.read.format("delta").load(self.paths["silver.events"])
            changes = plan_silver_changes(unique, silver, list(tally["event_dates"]), with_orders=tally["orders"] > 0)
            inserts = changes.inserts.persist()
            cached.append(inserts)
            displaced = changes.displaced.persist() if tally["orders"] else changes.displaced
            cached.append(displaced)
            counts = {
                "bronze": tally["bronze"],
                "quarantine": tally["quarantine"],
                "accepted": tally["bronze"] - tally["quarantine"],
                "inserted": inserts.count(),
                "displaced": displaced.count() if tally["orders"] else 0,
                "phones_dropped": tally["phones_dropped"],
            }
            log.debug("batch %s: dedup against silver took %.2fs", batch_id, time.monotonic() - started)
            counts["silver"] = counts["inserted"] - counts["displaced"]
            counts["duplicates"] = counts["accepted"] - counts["silver"]

            if counts["quarantine"]:
                self._append(validated.transform(quarantine_rows), "silver.quarantine", batch_id)
            reconciliation = spark.createDataFrame(
                [(self.source_id, batch_id, counts["bronze"], counts["silver"], counts["quarantine"],
                  counts["duplicates"], counts["phones_dropped"], dt.datetime.now(dt.timezone.utc))],
                RECONCILIATION_SCHEMA,
            )
            self._append(reconciliation, "silver.reconciliation", batch_id)
            if counts["displaced"]:
                self._delete_displaced(spark, displaced, batch_id)
            # The silver append is the batch's last write: already_processed() keys on it.
            self._append(inserts.transform(silver_rows(self.rules)), "silver.events", batch_id)
            return counts
        finally:
            for frame in cached:
                frame.unpersist()

    def _delete_displaced(self, spark: SparkSession, displaced: DataFrame, batch_id: int) -> None:
        from delta.tables import DeltaTable

        def delete() -> None:
            with idempotent_merge_conf(spark, f"{self.source_id}:silver.displaced", batch_id):
                (DeltaTable.forPath(spark, self.paths["silver.events"]).alias("t")
                 .merge(displaced.alias("s"), "t.event_date = s.event_date AND t.event_id = s.event_id")
                 .whenMatchedDelete()
                 .execute())

        # lake_maintenance's OPTIMIZE rewrites the files this MERGE read: Delta refuses the delete,
        # which is then run again on the compacted files (the same rows).
        retry_on_conflict(delete, f"batch {batch_id}: displaced orders delete")


# ---- entry points --------------------------------------------------------------------------------

def start_stream(spark: SparkSession, settings: Settings, topic: str | None = None, query_name: str = "ingest",
                 trigger_once: bool = False):
    """Start the Kafka -> bronze/silver query. `trigger_once` drains what is there and stops."""
    topic = topic or settings.kafka_topic
    sink = IngestSink(settings, source_id=f"stream:{query_name}")
    sink.ensure_tables(spark)
    reader = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", settings.kafka_bootstrap)
        .option("subscribe", topic)
        .option("startingOffsets", settings.stream.starting_offsets)
        .option("maxOffsetsPerTrigger", settings.stream.max_offsets_per_trigger)
        .option("failOnDataLoss", "true")
    )
    if settings.stream.min_partitions:
        # Default: one read task per Kafka partition; more splits big partitions across executor cores.
        reader = reader.option("minPartitions", settings.stream.min_partitions)
    kafka_rows = reader.load()
    writer = (
        kafka_rows.transform(bronze_from_kafka).writeStream.queryName(query_name)
        .foreachBatch(lambda frame, batch_id: sink(frame, batch_id))
        .option("checkpointLocation", f"{settings.checkpoint_root}/{query_name}")
    )
    if trigger_once:
        writer = writer.trigger(availableNow=True)
    else:
        writer = writer.trigger(processingTime=f"{settings.stream.trigger_seconds} seconds")
    return writer.start()


def ingest_files(spark: SparkSession, settings: Settings, path: str | Path) -> list[dict[str, int]]:
    """`touchpoint ingest --file`: each JSONL file runs through the same sink, keyed by its content hash
    so that ingesting the same file again adds nothing."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*.jsonl")) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"no .jsonl files under {path}")
    results = []
    for file in files:
        digest = hashlib.sha256(file.read_bytes()).hexdigest()[:32]
        sink = IngestSink(settings, source_id=f"file:{digest}")
        sink.ensure_tables(spark)
        if sink.already_processed(0):
            results.append({"file": str(file), "skipped": "already ingested (same content)"})
            continue
        results.append({"file": str(file), **sink(file_bronze_rows(spark, file), 0)})
    return results


def file_bronze_rows(spark: SparkSession, file: Path) -> DataFrame:
    """Bronze rows of a JSONL file: the raw bytes of each non-blank line (invalid UTF-8 kept as is),
    the line number as offset. Split on executors, never collected to the driver."""
    ingest_ts = dt.datetime.now(dt.timezone.utc)
    arrow_schema = to_arrow_schema(BRONZE_SCHEMA, timezone="UTC", prefers_large_types=False)

    def split_lines(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for content in batch.column("content").to_pylist():
                rows = [
                    {"payload": line.rstrip(b"\r"), "source_topic": f"file:{file.name}", "source_partition": 0,
                     "source_offset": number, "source_ts": ingest_ts, "ingest_ts": ingest_ts,
                     "ingest_date": ingest_ts.date()}
                    for number, line in enumerate(content.split(b"\n"), start=1) if line.strip()
                ]
                yield pa.RecordBatch.from_pylist(rows, schema=arrow_schema)

    raw = spark.read.format("binaryFile").load(str(file.resolve())).select("content")
    return raw.mapInArrow(split_lines, BRONZE_SCHEMA)
