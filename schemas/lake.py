"""Spark schemas of the ingestion tables, derived from the envelope where they carry its fields."""

from __future__ import annotations

from pyspark.sql.types import (
    BinaryType, BooleanType, DataType, DateType, DoubleType, IntegerType, LongType, StringType, StructField,
    StructType, TimestampType,
)

from touchpoint.schemas.envelope import envelope_fields

_SPARK_TYPES: dict[str, DataType] = {
    "string": StringType(), "double": DoubleType(), "long": LongType(), "boolean": BooleanType(),
    "timestamp": TimestampType(), "date": DateType(), "int": IntegerType(), "binary": BinaryType(),
}

# Where a record came from: Kafka coordinates, or a file and line for `touchpoint ingest --file`.
SOURCE_FIELDS = [
    ("source_topic", "string"),  # Kafka topic, or "file:<path>"
    ("source_partition", "int"),  # Kafka partition, 0 for files
    ("source_offset", "long"),  # Kafka offset, or line number in the file
    ("source_ts", "timestamp"),  # Kafka record timestamp, or file ingest time
]

BRONZE_FIELDS = [("payload", "binary"), *SOURCE_FIELDS, ("ingest_ts", "timestamp"), ("ingest_date", "date")]

# Columns silver adds to the envelope's own fields (enrichment, normalisation, lineage).
SILVER_EXTRA_FIELDS = [
    ("event_date", "date"),  # UTC date of event_ts; the partition column
    ("campaign_origin", "string"),  # 'campaign' object, 'utm' from page_url, or null
    ("revenue_reporting", "double"),  # revenue in the reporting currency
    ("reporting_currency", "string"),
    ("channel", "string"),  # BRIEF §3
    ("device_type", "string"),
    ("browser", "string"),
    ("os", "string"),
    ("phone_dropped", "boolean"),  # a raw phone was present but not a possible number
    ("schema_version", "string"),
    *SOURCE_FIELDS,
    ("ingest_ts", "timestamp"),
]

QUARANTINE_FIELDS = [
    ("payload", "binary"),
    ("error_code", "string"),
    ("reason", "string"),
    ("event_id", "string"),  # when it could be read
    ("schema_version", "string"),
    *SOURCE_FIELDS,
    ("ingest_ts", "timestamp"),
    ("ingest_date", "date"),
]

RECONCILIATION_FIELDS = [
    ("source", "string"),  # streaming query id or file ingest run id
    ("batch_id", "long"),
    ("bronze", "long"),
    ("silver", "long"),  # net rows added to silver
    ("quarantine", "long"),
    ("duplicates", "long"),  # dropped as duplicates, including order events displaced by an earlier one
    ("phones_dropped", "long"),
    ("ingest_ts", "timestamp"),
]

HIGH_WATER_MARK_FIELDS = [
    ("logical_date", "date"),
    ("high_water_mark", "timestamp"),  # H: every arrived event with event_ts < H is in the batch views
]


def struct(fields: list[tuple[str, str]]) -> StructType:
    return StructType([StructField(name, _SPARK_TYPES[kind], True) for name, kind in fields])


def envelope_silver_fields() -> list[tuple[str, str]]:
    return [(f.column, f.spark_type) for f in envelope_fields()]


def silver_fields() -> list[tuple[str, str]]:
    return envelope_silver_fields() + SILVER_EXTRA_FIELDS


BRONZE_SCHEMA = struct(BRONZE_FIELDS)
SILVER_SCHEMA = struct(silver_fields())
QUARANTINE_SCHEMA = struct(QUARANTINE_FIELDS)
RECONCILIATION_SCHEMA = struct(RECONCILIATION_FIELDS)
HIGH_WATER_MARK_SCHEMA = struct(HIGH_WATER_MARK_FIELDS)
