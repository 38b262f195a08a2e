"""Ingestion: Kafka (or JSONL files) -> bronze.events -> silver.events / silver.quarantine.

One `foreachBatch` sink, `IngestSink`, serves the stream and the file backfill alike. Each of
its writes is done once per batch (`core.delta.BatchWrites`: commits marked with the batch), so
replaying a micro-batch after a crash neither loses nor doubles a record.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, Row, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import to_arrow_schema

from touchpoint.core import progress
from touchpoint.core.catalog import table_path
from touchpoint.core.channels import ChannelRules, load_rules, with_channel
from touchpoint.core.config import Settings
from touchpoint.core.delta import (
    BatchWrites, committed_batch, ensure_table, idempotent_merge_conf, retry_on_conflict, silver_write_lock,
)
from touchpoint.core.events import Rejected, validate_payload
from touchpoint.core.privacy import ERASED_SUBJECT, Suppression, erased_reason, load_suppression, withheld_payload
from touchpoint.core.spark import has_checkpoint, local_checkpoint
from touchpoint.schemas.envelope import schema_version
from touchpoint.schemas.lake import (
    BRONZE_SCHEMA, QUARANTINE_SCHEMA, RECONCILIATION_SCHEMA, SILVER_EXTRA_FIELDS, SILVER_SCHEMA, SOURCE_FIELDS,
    envelope_silver_fields, struct,
)
from touchpoint.streaming.silver_keys import SilverKeys

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
    `erased_subject` before anything else, and its payload is replaced by a hash of it.

    `payload` is the payload as stored: with erased subjects it is every record's (bronze is then
    written from these rows); without, only rejected records keep theirs, for the quarantine. The
    accepted ones' payloads are already in bronze, and carrying them back from Python and through
    the batch's cache was a tenth of a batch's time."""
    validate_batches = validated_batches(reporting_currency, suppression)

    def transform(bronze: DataFrame) -> DataFrame:
        return bronze.mapInArrow(validate_batches, _VALIDATED_SCHEMA)

    return transform


def validated_batches(reporting_currency: str, suppression: Suppression = Suppression()
                      ) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """`validate`'s work on Arrow record batches of bronze rows (what mapInArrow hands a worker)."""
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

    def _storable(outcome: dict, payload: bytes | None) -> tuple[dict, bytes | None]:
        """A record whose columns Arrow cannot hold (input no validator rule foresaw) quarantined, so
        that it does not fail its micro-batch again at every restart."""
        try:
            pa.array([outcome], filled_struct)
            return outcome, payload
        except (pa.ArrowException, UnicodeError, OverflowError, TypeError, ValueError) as error:
            return ({"error_code": "validator_error", "schema_version": version,
                     "reason": f"the validated record cannot be stored: {type(error).__name__}: "
                               f"{str(error).encode('utf-8', 'replace').decode('utf-8')[:200]}"}, payload)

    def validate_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        # Column by column: the lineage columns pass through as Arrow arrays, untouched.
        for batch in batches:
            payloads = batch.column("payload").to_pylist()
            results = [outcome_of(payload, arrival)
                       for payload, arrival in zip(payloads, arrival_instants(batch.column("source_ts")))]
            try:
                # Arrow converts the dicts to a struct in C++ (a missing key is a null), far faster
                # than one Python list per column.
                outcomes = pa.array([outcome for outcome, _ in results], filled_struct)
            except (pa.ArrowException, UnicodeError, OverflowError, TypeError, ValueError):
                results = [_storable(outcome, payload) for outcome, payload in results]
                outcomes = pa.array([outcome for outcome, _ in results], filled_struct)
            if suppression:
                stored = [payload for _, payload in results]
            else:
                stored = [payload if "error_code" in outcome else None for outcome, payload in results]
            columns = {"payload": batch.column("payload") if stored == payloads else pa.array(stored, pa.binary()),
                       **{name: batch.column(name) for name in passed_through}}
            columns.update(zip(filled_struct.names, outcomes.flatten()))
            yield pa.RecordBatch.from_arrays([columns[field.name].cast(field.type) for field in arrow_schema],
                                             schema=arrow_schema)

    return validate_batches


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def arrival_instants(timestamps: pa.Array) -> list[dt.datetime | None]:
    """Arrow UTC timestamps -> aware datetimes, each distinct instant built once: Kafka's are in
    milliseconds and a file's are all one, so a batch repeats them (Arrow's own conversion of every
    value was a tenth of the validation wrapper's time)."""
    built: dict[int, dt.datetime] = {}
    instants = []
    for micros in timestamps.cast(pa.timestamp("us", "UTC")).cast(pa.int64()).to_pylist():
        if micros is None:
            instants.append(None)
            continue
        instant = built.get(micros)
        if instant is None:
            instant = built[micros] = _EPOCH + dt.timedelta(microseconds=micros)
        instants.append(instant)
    return instants


def _arrow_schema() -> pa.Schema:
    return to_arrow_schema(_VALIDATED_SCHEMA, timezone="UTC", prefers_large_types=False)


def batch_tally(validated: DataFrame) -> Row:
    """One pass over a validated batch: its records, rejections, dropped phones, orders and dates."""
    return validated.agg(
        F.count(F.lit(1)).alias("bronze"),
        F.count("error_code").alias("quarantine"),
        F.count_if(F.col("error_code").isNull() & F.col("phone_dropped")).alias("phones_dropped"),
        F.count_if(F.col("error_code").isNull() & (F.col("event_type") == "order")).alias("orders"),
        F.collect_set(F.when(F.col("error_code").isNull(), F.col("event_date"))).alias("event_dates"),
    ).first()


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


# One bronze record: a Kafka topic, partition and offset, or a file and line.
ARRIVAL = ["source_topic", "source_partition", "source_offset"]


def later_arrivals(accepted: DataFrame) -> DataFrame:
    """The ARRIVAL of every copy of an event_id but the first to arrive within a batch (by source
    timestamp, partition, offset). Only these key columns are shuffled, never the rows."""
    order = Window.partitionBy("event_id").orderBy("source_ts", "source_partition", "source_offset")
    return (accepted.select("event_id", "source_ts", *ARRIVAL)
            .withColumn("_arrival_rank", F.row_number().over(order))
            .where("_arrival_rank > 1").select(*ARRIVAL))


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


def silver_orders_sharing_an_id(silver: DataFrame, accepted: DataFrame, broadcast: bool = True) -> DataFrame:
    """(order_id, event_ts, event_id, event_date) of the silver orders that share an order id with an
    order of the batch: the only silver rows the earliest-order rule can touch. A scan of every
    date of silver (an order id can come back on another day), so the sink keeps this frame and
    both the order contenders and the displaced orders read it instead of silver."""
    small = F.broadcast if broadcast else (lambda frame: frame)
    is_order = F.col("event_type") == "order"
    return (silver.where(is_order)
            .join(small(accepted.where(is_order).select("order_id").distinct()), "order_id", "left_semi")
            .select("order_id", "event_ts", "event_id", "event_date"))


def plan_silver_changes(accepted: DataFrame, silver: DataFrame, event_dates: list,
                        with_orders: bool = True, broadcast: bool = True,
                        silver_orders: DataFrame | None = None,
                        silver_ids: DataFrame | None = None) -> SilverChanges:
    """Dedup a batch within itself (the first copy to arrive wins) and against silver: by event_id
    (pruned to the batch's event dates: copies are identical, so a copy has the same event_date),
    and orders by order_id keeping the earliest. `silver_orders` is the batch's
    `silver_orders_sharing_an_id`, when the caller keeps it; `silver_ids` the batch's event ids that
    silver holds on its dates, when the caller looked them up (the sink does both with
    `streaming.silver_keys`); without them, silver is scanned.

    The rows are never shuffled: the batch's ids are broadcast to a scan of silver (or the ids
    looked up are), and the few records to drop (later copies, ids already in silver) back to the
    batch. The hint bypasses
    Spark's size threshold, so a batch too large to broadcast passes `broadcast=False` and leaves
    the join strategy to Spark."""
    small = F.broadcast if broadcast else (lambda frame: frame)
    if silver_ids is None:
        silver_ids = silver.where(F.col("event_date").isin(event_dates)).select("event_id").join(
            small(accepted.select("event_id")), "event_id", "left_semi")
    in_silver = accepted.join(small(silver_ids), "event_id", "left_semi").select(*ARRIVAL)
    dropped = small(later_arrivals(accepted).unionByName(in_silver))
    new_events = accepted.join(dropped, ARRIVAL, "left_anti").select(*accepted.columns)
    if not with_orders:
        return SilverChanges(new_events, silver.select("event_id", "event_date").limit(0))

    if silver_orders is None:
        silver_orders = silver_orders_sharing_an_id(silver, accepted, broadcast)
    is_order = F.col("event_type") == "order"
    new_orders = new_events.where(is_order)
    contenders = new_orders.withColumn("_in_silver", F.lit(False)).unionByName(
        silver_orders.withColumn("_in_silver", F.lit(True)), allowMissingColumns=True)
    order_inserts = earliest_order_per_order_id(contenders).where(~F.col("_in_silver")).drop("_in_silver")
    inserts = new_events.where(~is_order).unionByName(order_inserts.select(*accepted.columns))
    return SilverChanges(inserts, displaced_orders(silver_orders, inserts, broadcast))


def displaced_orders(silver_orders: DataFrame, inserts: DataFrame, broadcast: bool = True) -> DataFrame:
    """(event_id, event_date) of the silver orders (`silver_orders_sharing_an_id`) that share an order
    id with an inserted order: the insert is the earlier one (plan_silver_changes), so they leave
    silver. The sink passes its checkpoint of the inserts, which are then not planned a second time."""
    small = F.broadcast if broadcast else (lambda frame: frame)
    return (silver_orders.join(small(inserts.where(F.col("event_type") == "order").select("order_id")), "order_id",
                               "left_semi")
            .select("event_id", "event_date"))


# ---- the sink ------------------------------------------------------------------------------------

class IngestSink:
    """foreachBatch sink: bronze append, validation, quarantine, silver MERGE, reconciliation."""

    # Up to this many records a batch's event ids are broadcast for the dedup (tens of MB through
    # the driver); a larger batch (a raised max_offsets_per_trigger) is joined the way Spark picks.
    broadcast_records_max = 1_000_000

    def __init__(self, settings: Settings, source_id: str, write_bronze: bool = True, txn_versions: bool = False,
                 keyed_lookup: bool | None = None):
        self.settings = settings
        self.source_id = source_id
        self.write_bronze = write_bronze
        self._tables_ready = False
        # The sink's mirror of silver's dedup keys (streaming.silver_keys), in the driver's memory;
        # without it (`stream.keyed_dedup` off), each batch scans silver.
        self.keyed_lookup = settings.stream.keyed_dedup if keyed_lookup is None else keyed_lookup
        self._keys: SilverKeys | None = None
        self.keyed_fallbacks = 0  # batches that scanned silver because the mirror failed
        self.rules = load_rules(settings.channel_rules_file)
        self.paths = {name: table_path(name, settings) for name in
                      ("bronze.events", "silver.events", "silver.quarantine", "silver.reconciliation",
                       "privacy.suppression")}
        # A file can be ingested again any time: its batches are also kept as Delta txn versions.
        self.writes = BatchWrites(self.paths, lambda table: f"{self.source_id}:{table}", txn_versions)

    def ensure_tables(self, spark: SparkSession) -> None:
        ensure_table(spark, self.paths["bronze.events"], BRONZE_SCHEMA, ["ingest_date"], "bronze.events")
        currency = self.settings.reporting_currency
        ensure_table(spark, self.paths["silver.events"], SILVER_SCHEMA, ["event_date"], "silver.events",
                     {REPORTING_CURRENCY_PROPERTY: currency})
        require_reporting_currency(spark, self.paths["silver.events"], currency)
        ensure_table(spark, self.paths["silver.quarantine"], QUARANTINE_SCHEMA, ["ingest_date"], "silver.quarantine")
        ensure_table(spark, self.paths["silver.reconciliation"], RECONCILIATION_SCHEMA, [], "silver.reconciliation")

    def committed_batch(self) -> int | None:
        """The last batch id of this source that reached silver (its last write), None before the
        first; read from silver's log."""
        return committed_batch(self.paths["silver.events"], f"{self.source_id}:silver.events")

    def already_processed(self, batch_id: int) -> bool:
        """True when this source's batch reached silver (so everything before it did too)."""
        return self.writes.holds("silver.events", batch_id)

    def _append(self, frame: DataFrame, table: str, batch_id: int) -> None:
        started = time.monotonic()
        # A concurrent metadata commit (e.g. the speed layer switching the change feed on in an
        # older lake) refuses a blind append, which then wrote nothing: BatchWrites writes it again.
        if self.writes.write(frame, table, batch_id):
            log.debug("batch %s: %s append took %.2fs", batch_id, table, time.monotonic() - started)

    def __call__(self, bronze: DataFrame, batch_id: int) -> dict[str, int]:
        spark = bronze.sparkSession
        if not self._tables_ready:
            self.ensure_tables(spark)
            self._tables_ready = True
        with self.writes.batch():
            if self.already_processed(batch_id):  # a replay after a crash that followed the silver commit
                return {"skipped": 1}
            # The frames a batch reads more than once are local checkpoints, not persist(): Spark's
            # columnar cache compressed each row as it was stored, and a batch took 1.4x as long in
            # these steps (bench/README.md, session 27). A lost block (an executor gone) fails the
            # batch and stops the query; restarted (streaming_supervisor), it replays the batch, and
            # every write below is done once.
            with local_checkpoint(bronze) as bronze:
                return self._process(spark, bronze, batch_id)

    def _process(self, spark: SparkSession, bronze: DataFrame, batch_id: int) -> dict[str, int]:
        # Read per batch: a subject erased while the stream runs is suppressed from the next batch on.
        suppression = load_suppression(self.paths["privacy.suppression"])
        with ExitStack() as frames:
            started = time.monotonic()  # each step's debug line times that step alone
            validated = frames.enter_context(local_checkpoint(
                bronze.transform(validate(self.settings.reporting_currency, suppression))))
            tally = batch_tally(validated)
            log.debug("batch %s: validation and tally took %.2fs", batch_id, time.monotonic() - started)
            # From here to the silver commit the batch holds the lake's silver write lock (released as
            # its frames are). Another writer's batch plans after this one committed, so it sees its ids
            # and orders; an erasure's last pass over the stream's tables waits for this commit.
            frames.enter_context(silver_write_lock(self.settings.lake_uri))
            latest = load_suppression(self.paths["privacy.suppression"])
            if latest != suppression:
                # An erasure extended the list while this batch validated, and its last pass may be
                # over: validated again, nothing of that person is committed (bronze included).
                log.info("batch %s: the suppression list changed during validation; validating again", batch_id)
                suppression = latest
                validated = frames.enter_context(local_checkpoint(
                    bronze.transform(validate(self.settings.reporting_currency, suppression))))
                tally = batch_tally(validated)
            if self.write_bronze:
                # With erased subjects, bronze takes the validated payloads: theirs are withheld (hashed).
                self._append(validated.select(*BRONZE_SCHEMA.fieldNames()) if suppression else bronze,
                             "bronze.events", batch_id)
            started = time.monotonic()
            silver = spark.read.format("delta").load(self.paths["silver.events"])
            broadcast = tally["bronze"] <= self.broadcast_records_max
            accepted = validated.transform(accepted_rows)
            event_dates = list(tally["event_dates"])
            looked_up = self._looked_up_keys(spark, accepted, event_dates, tally["orders"] > 0)
            if looked_up is not None:
                silver_ids, silver_orders = looked_up
            else:
                # Silver's orders are scanned once per batch (every date), then read from this checkpoint.
                silver_ids = None
                silver_orders = (frames.enter_context(local_checkpoint(
                    silver_orders_sharing_an_id(silver, accepted, broadcast))) if tally["orders"] else None)
            changes = plan_silver_changes(accepted, silver, event_dates,
                                          with_orders=tally["orders"] > 0, broadcast=broadcast,
                                          silver_orders=silver_orders, silver_ids=silver_ids)
            inserts = frames.enter_context(local_checkpoint(changes.inserts))
            displaced = (frames.enter_context(local_checkpoint(displaced_orders(silver_orders, inserts, broadcast)))
                         if tally["orders"] else changes.displaced)
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

    def _looked_up_keys(self, spark: SparkSession, accepted: DataFrame, event_dates: list[dt.date],
                        with_orders: bool) -> tuple[DataFrame, DataFrame | None] | None:
        """(the batch's event ids that silver holds on its dates, silver's orders that share an order
        id with the batch's orders) from the keyed mirror, caught up to silver's latest version; None
        when there is no mirror or it failed (logged): the batch then scans silver, as before."""
        if not self.keyed_lookup:
            return None
        try:
            if self._keys is None:
                self._keys = SilverKeys(self.paths["silver.events"])
            self._keys.sync(event_dates, orders=with_orders)
            batch_keys = accepted.select("event_id", "event_type", "order_id").toArrow()
            found_ids = self._keys.ids_in_silver(batch_keys.column("event_id"), event_dates)
            found_orders = None
            if with_orders:
                orders = batch_keys.filter(pc.equal(batch_keys.column("event_type"), "order"))
                found_orders = self._keys.orders_sharing(orders.column("order_id").drop_null().to_pylist())
        except Exception as failed:  # noqa: BLE001 - the mirror only saves time; the scan gives the same answer
            log.warning("%s: the keyed lookup of silver's keys failed, this batch scans silver: %s",
                        self.source_id, failed, exc_info=True)
            self.keyed_fallbacks += 1
            self._keys = None  # the next batch loads a new mirror
            return None
        silver_ids = spark.createDataFrame([(event_id,) for event_id in found_ids], "event_id string")
        silver_orders = None
        if found_orders is not None:
            silver_orders = spark.createDataFrame(
                found_orders, "order_id string, event_id string, event_ts_us long, event_date string").select(
                "order_id", F.timestamp_micros("event_ts_us").alias("event_ts"), "event_id",
                F.to_date("event_date").alias("event_date"))
        return silver_ids, silver_orders

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


# ---- the reporting currency of a lake --------------------------------------------------------------

# silver.events' table property naming the currency its `revenue_reporting` is in.
REPORTING_CURRENCY_PROPERTY = "touchpoint.reportingCurrency"


def require_reporting_currency(spark: SparkSession, silver_path: str, currency: str) -> None:
    """Refuse to ingest into a silver whose amounts are in another reporting currency: every job and
    view sums `revenue_reporting`, so two currencies in one lake would be added up. A silver made
    before the property existed gets it from its rows (the one currency they hold, else this one)."""
    from touchpoint.core.config import ConfigError
    from touchpoint.core.delta import rs_table

    def recorded() -> str | None:
        return rs_table(silver_path).metadata().configuration.get(REPORTING_CURRENCY_PROPERTY)

    held = recorded()
    if held is None:
        found = sorted(r[0] for r in spark.read.format("delta").load(silver_path)
                       .where(F.col("reporting_currency").isNotNull()).select("reporting_currency").distinct()
                       .limit(3).collect())
        if len(found) > 1:
            raise ConfigError(f"key 'reporting_currency': silver.events already holds amounts in {' and '.join(found)} "
                              "(the setting changed between ingests); rebuild the lake from the raw events "
                              "(a new lake_root) with one reporting_currency")
        held = found[0] if found else currency
        # A metadata commit: retried when it races the stream's appends; another starter may record first.
        retry_on_conflict(lambda: spark.sql(f"ALTER TABLE delta.`{silver_path}` SET TBLPROPERTIES "
                                            f"('{REPORTING_CURRENCY_PROPERTY}' = '{held}')"),
                          "recording silver's reporting currency")
        held = recorded() or held
    if held != currency:
        raise ConfigError(f"key 'reporting_currency' (env TOUCHPOINT_REPORTING_CURRENCY): silver.events holds revenue "
                          f"converted to {held}, so ingesting in {currency} would sum amounts of two currencies; set "
                          f"it back to {held}, or ingest the raw events into a new lake (lake_root) to report in "
                          f"{currency}")


# ---- entry points --------------------------------------------------------------------------------

def start_stream(spark: SparkSession, settings: Settings, topic: str | None = None, query_name: str = "ingest",
                 trigger_once: bool = False):
    """Start the Kafka -> bronze/silver query. `trigger_once` drains what is there and stops."""
    topic = topic or settings.kafka_topic
    sink = IngestSink(settings, source_id=f"stream:{query_name}")
    sink.ensure_tables(spark)
    checkpoint = f"{settings.checkpoint_root}/{query_name}"
    committed = sink.committed_batch()
    if committed is not None and not has_checkpoint(checkpoint):
        # Batch ids restart at 0 with a new checkpoint, and the sink skips the ids silver already
        # holds as written: the records of batches 0..N would be dropped without a trace.
        raise RuntimeError(f"ingest query {query_name!r}: its checkpoint {checkpoint} is missing, but silver holds "
                           f"its batches up to {committed}; restore the checkpoint, or start the stream under a new "
                           "query name (--query-name) to read the topic again from stream.starting_offsets "
                           "(events already in silver are dropped as duplicates by event_id)")
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
        .option("checkpointLocation", checkpoint)
    )
    if trigger_once:
        writer = writer.trigger(availableNow=True)
    else:
        writer = writer.trigger(processingTime=f"{settings.stream.trigger_seconds} seconds")
    return writer.start()


# `touchpoint ingest --file` reads a file in line-aligned byte ranges, one Spark task per range, and
# hands groups of ranges to the sink as batches: memory stays bounded whatever the file's size (a
# whole-file read ran a 3M-line file out of heap). A batch's id is the byte offset where it
# ends, so a re-run resumes after the last committed batch, whatever the range sizes were then.
FILE_SPLIT_BYTES = 16 * 1024 * 1024
FILE_BATCH_BYTES = 128 * 1024 * 1024
_SCAN_BLOCK_BYTES = 8 * 1024 * 1024
_ROWS_PER_ARROW_BATCH = 10_000


@dataclass(frozen=True)
class FileRange:
    """Whole lines of a file: bytes [start, end), the first of them line number `first_line` (from 1)."""

    start: int
    end: int
    first_line: int


@dataclass(frozen=True)
class FileScan:
    """A file's content digest, size and line-aligned split points (byte offset, line number there)."""

    digest: str
    size: int
    splits: tuple[tuple[int, int], ...]


def scan_file(file: Path, split_bytes: int = FILE_SPLIT_BYTES) -> FileScan:
    """One streaming pass: the SHA-256 of the content and a split point at the first line start at or
    after every `split_bytes` since the previous one."""
    sha = hashlib.sha256()
    splits = [(0, 1)]
    block_start, newlines_before_block = 0, 0
    target = split_bytes
    with open(file, "rb") as handle:
        while block := handle.read(_SCAN_BLOCK_BYTES):
            sha.update(block)
            # the first newline at or after target - 1 ends the line that holds the target byte
            while target - 1 < block_start + len(block):
                newline = block.find(b"\n", max(target - 1 - block_start, 0))
                if newline < 0:
                    break
                split = block_start + newline + 1
                splits.append((split, newlines_before_block + block.count(b"\n", 0, newline + 1) + 1))
                target = split + split_bytes
            newlines_before_block += block.count(b"\n")
            block_start += len(block)
    size = block_start
    return FileScan(sha.hexdigest()[:32], size, tuple(s for s in splits if s[0] < size or s[0] == 0))


def _line_number_at(file: Path, scan: FileScan, offset: int) -> int:
    """The line number that starts at byte `offset` (a line start)."""
    split, line = max((s for s in scan.splits if s[0] <= offset), key=lambda s: s[0])
    with open(file, "rb") as handle:
        handle.seek(split)
        remaining = offset - split
        while remaining > 0:
            block = handle.read(min(remaining, _SCAN_BLOCK_BYTES))
            if not block:
                break
            line += block.count(b"\n")
            remaining -= len(block)
    return line


def file_batches(file: Path, scan: FileScan, resume_at: int = 0,
                 batch_bytes: int = FILE_BATCH_BYTES) -> list[list[FileRange]]:
    """The ranges from byte `resume_at` (a line start) to the end, grouped into batches of at most
    `batch_bytes` (or one range, when a range is larger)."""
    points = [(resume_at, _line_number_at(file, scan, resume_at))]
    points += [s for s in scan.splits if s[0] > resume_at]
    ranges = [FileRange(start, end, line) for (start, line), (end, _) in zip(points, [*points[1:], (scan.size, 0)])
              if start < end]
    batches: list[list[FileRange]] = []
    for file_range in ranges:
        if batches and file_range.end - batches[-1][0].start <= batch_bytes:
            batches[-1].append(file_range)
        else:
            batches.append([file_range])
    return batches


def resume_offset(committed_batch: int | None, size: int) -> int | None:
    """Where a file's ingest goes on, given the last batch id (end offset) of its source in silver:
    the start, that offset, or None when the file is done. A batch 0 on a file that is not empty
    is the whole-file batch of touchpoint before 2026-12-03, so that file is done too."""
    if committed_batch is None:
        return 0
    if committed_batch >= size or committed_batch == 0:
        return None
    return committed_batch


JSONL_SUFFIXES = (".jsonl", ".ndjson")
_GZIP_MAGIC = b"\x1f\x8b"
_UTF8_BOM = b"\xef\xbb\xbf"


def input_files(path: str | Path) -> list[Path]:
    """The JSONL files `touchpoint ingest --file` reads: the file given, or every *.jsonl / *.ndjson
    file under a folder (any case). Raises, naming the files and the fix, for a path that does not
    exist, a folder without such files, and compressed files (read as text they would be
    quarantined line by line as invalid UTF-8), before anything is ingested."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: give a JSONL file or a folder of *.jsonl files")
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file())
        files = [p for p in found if p.name.lower().endswith(JSONL_SUFFIXES)]
        compressed = [p for p in found if p.name.lower().endswith(tuple(f"{s}.gz" for s in JSONL_SUFFIXES))]
        if not files and not compressed:
            raise FileNotFoundError(f"no *.jsonl or *.ndjson files under {path}")
    else:
        files, compressed = [path], []
    compressed += [file for file in files if _starts_with(file, _GZIP_MAGIC)]
    if compressed:
        raise ValueError(f"compressed input, not JSONL text: {', '.join(map(str, compressed))}; decompress it "
                         "first (gunzip -k FILE)")
    return files


def _starts_with(file: Path, magic: bytes) -> bool:
    with open(file, "rb") as handle:
        return handle.read(len(magic)) == magic


def ingest_files(spark: SparkSession, settings: Settings, path: str | Path, batch_bytes: int = FILE_BATCH_BYTES,
                 split_bytes: int = FILE_SPLIT_BYTES) -> list[dict[str, int]]:
    """`touchpoint ingest --file`: each JSONL file runs through the same sink as the stream, keyed by
    its content hash, so that ingesting the same file again adds nothing and an interrupted ingest
    goes on where it stopped."""
    files = input_files(path)
    results = []
    label = f"ingest {Path(path).name}"
    with progress.task(label, total=sum(file.stat().st_size for file in files), unit="bytes") as read:
        for file in files:
            read.describe(f"{label}: {file.name}" if len(files) > 1 else label)
            scan = scan_file(file, split_bytes)
            sink = IngestSink(settings, source_id=f"file:{scan.digest}", txn_versions=True)
            sink.ensure_tables(spark)
            resume_at = resume_offset(sink.committed_batch(), scan.size)
            if resume_at is None:
                results.append({"file": str(file), "skipped": "already ingested (same content)"})
                read.advance(scan.size)
                continue
            read.advance(resume_at)
            totals: dict[str, int] = {"batches": 0}
            # an empty file is one empty batch, recorded like any other
            for batch in file_batches(file, scan, resume_at, batch_bytes) or [[]]:
                end = batch[-1].end if batch else 0
                counts = sink(file_bronze_rows(spark, file, batch), end)
                totals["batches"] += 1
                for key, value in counts.items():
                    totals[key] = totals.get(key, 0) + value
                log.info("%s: ingested through byte %s of %s", file, end, scan.size)
                read.advance(sum(r.end - r.start for r in batch))
            results.append({"file": str(file), **({"resumed_at_byte": resume_at} if resume_at else {}), **totals})
    return results


def file_bronze_rows(spark: SparkSession, file: Path, ranges: list[FileRange]) -> DataFrame:
    """Bronze rows of some ranges of a JSONL file: the raw bytes of each non-blank line (invalid UTF-8
    kept as is, a trailing CR and a leading byte order mark dropped), its line number as offset. A
    line of whitespace only is no record. Each range is read by one task."""
    ingest_ts = dt.datetime.now(dt.timezone.utc)
    arrow_schema = to_arrow_schema(BRONZE_SCHEMA, timezone="UTC", prefers_large_types=False)
    location, topic = str(file.resolve()), f"file:{file.name}"
    bounds = [(r.start, r.end, r.first_line) for r in ranges]

    def read_ranges(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for index in batch.column("id").to_pylist():
                start, end, first_line = bounds[index]
                with open(location, "rb") as handle:
                    handle.seek(start)
                    content = handle.read(end - start)
                if start == 0 and content.startswith(_UTF8_BOM):  # a byte order mark is no part of line 1
                    content = content[len(_UTF8_BOM):]
                lines = [(number, line.rstrip(b"\r")) for number, line in enumerate(content.split(b"\n"), first_line)
                         if line.strip()]
                for at in range(0, len(lines), _ROWS_PER_ARROW_BATCH):
                    part = lines[at:at + _ROWS_PER_ARROW_BATCH]
                    columns = {"payload": [line for _, line in part], "source_topic": [topic] * len(part),
                               "source_partition": [0] * len(part), "source_offset": [n for n, _ in part],
                               "source_ts": [ingest_ts] * len(part), "ingest_ts": [ingest_ts] * len(part),
                               "ingest_date": [ingest_ts.date()] * len(part)}
                    yield pa.RecordBatch.from_arrays(
                        [pa.array(columns[f.name], f.type) for f in arrow_schema], schema=arrow_schema)

    return spark.range(0, len(bounds), 1, max(len(bounds), 1)).mapInArrow(read_ranges, BRONZE_SCHEMA)
