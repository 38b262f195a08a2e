"""Helpers shared by the identity and profile tests: silver rows from short dicts, table readers.

(No tests here; the name keeps it in the identity test files.)
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict

from pyspark.sql import DataFrame, SparkSession

UTC = dt.timezone.utc
DAY = dt.date(2026, 3, 1)


def ts(day: int, hour: int = 0, minute: int = 0, second: int = 0) -> dt.datetime:
    """An instant on day `day` of March 2026 (UTC)."""
    return dt.datetime(2026, 3, day, hour, minute, second, tzinfo=UTC)


def date(day: int) -> dt.date:
    return dt.date(2026, 3, day)


def silver_frame(spark: SparkSession, events: list[dict]) -> DataFrame:
    """Silver rows: every column of SILVER_SCHEMA, null unless given; event_date from event_ts."""
    from touchpoint.schemas.lake import SILVER_SCHEMA

    names = SILVER_SCHEMA.fieldNames()
    rows = []
    for event in events:
        unknown = set(event) - set(names)
        assert not unknown, f"not silver columns: {unknown}"
        row = {"event_type": "page_view", "channel": "direct", "ingest_ts": event["event_ts"], **event}
        row["event_date"] = row["event_ts"].astimezone(UTC).date()
        rows.append(tuple(row.get(name) for name in names))
    return spark.createDataFrame(rows, SILVER_SCHEMA)


def append_silver(spark: SparkSession, settings, events: list[dict]) -> None:
    """Append rows to silver.events the way the ingest lays it out (partitioned by event_date)."""
    from touchpoint.core.catalog import table_path
    from touchpoint.core.delta import ensure_table
    from touchpoint.schemas.lake import SILVER_SCHEMA

    path = table_path("silver.events", settings)
    ensure_table(spark, path, SILVER_SCHEMA, ["event_date"], "silver.events")
    silver_frame(spark, events).write.format("delta").mode("append").save(path)


def read_table(spark: SparkSession, settings, name: str) -> DataFrame:
    from touchpoint.core.catalog import table_path

    return spark.read.format("delta").load(table_path(name, settings))


def _aware(value):
    """Spark returns naive datetimes in the Python process's local time: make them aware UTC."""
    return value.astimezone(UTC) if isinstance(value, dt.datetime) else value


def _row_order(row: tuple) -> tuple:
    return tuple((v is None, v if not isinstance(v, list) else tuple(v)) for v in row)


def rows_of(frame: DataFrame, *columns: str) -> list[tuple]:
    """Collected rows as tuples (datetimes aware UTC), sorted."""
    selected = frame.select(*columns) if columns else frame
    return sorted((tuple(_aware(v) for v in row) for row in selected.collect()), key=_row_order)


def table_rows(settings, name: str, *columns: str) -> list[tuple]:
    """A table's columns as rows_of gives them (datetimes aware UTC, same order), read with
    delta-rs: no Spark job, for checks that only need the rows."""
    from deltalake import DeltaTable

    from touchpoint.core.catalog import table_path

    assert columns, "name the columns: with none, every row would be empty and any two tables alike"
    rows = DeltaTable(table_path(name, settings)).to_pyarrow_table(columns=list(columns)).to_pylist()
    return sorted((tuple(_aware(row[c]) for c in columns) for row in rows), key=_row_order)


def identity_rows(settings) -> list[tuple]:
    """identity_map as sorted (type, value, customer_id, first_seen, last_seen) tuples."""
    return table_rows(settings, "gold.identity_map",
                      "identifier_type", "identifier_value", "customer_id", "first_seen", "last_seen")


def partition_of(rows: list[tuple]) -> set[frozenset]:
    """The components of an identity map as a set of frozensets of (type, value)."""
    groups = defaultdict(set)
    for identifier_type, identifier_value, customer_id, *_ in rows:
        groups[customer_id].add((identifier_type, identifier_value))
    return {frozenset(members) for members in groups.values()}


def customer_of(rows: list[tuple]) -> dict[tuple[str, str], str]:
    return {(r[0], r[1]): r[2] for r in rows}


def union_find_partition(events: list[dict], blocklist: set[str], max_user_ids: int) -> set[frozenset]:
    """An independent reference: plain union-find with the BRIEF §5 guardrails, in Python."""
    import re

    types = ("anonymous_id", "user_id", "email", "phone")
    zero = re.compile(r"^[0\-+_ ]*0[0\-+_ ]*$")

    def usable(value):
        return value is not None and value != "" and value.strip().lower() not in blocklist and not zero.match(value)

    device_users = defaultdict(set)
    for event in events:
        if usable(event.get("anonymous_id")) and usable(event.get("user_id")):
            device_users[event["anonymous_id"]].add(event["user_id"])
    shared = {device for device, users in device_users.items() if len(users) > max_user_ids}

    parent: dict = {}

    def find(x):
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for event in events:
        ids = [(t, event.get(t)) for t in types if usable(event.get(t))]
        for node in ids:
            find(node)
        linking = [node for node in ids if not (node[0] == "anonymous_id" and node[1] in shared)]
        for node in linking[1:]:
            parent[find(node)] = find(linking[0])
    groups = defaultdict(set)
    for node in parent:
        groups[find(node)].add(node)
    return {frozenset(members) for members in groups.values()}


def expected_customer_id(identifier_type: str, identifier_value: str) -> str:
    """The documented id formula, computed independently of Spark."""
    import hashlib

    digest = hashlib.sha256(f"touchpoint-customer-v1:{identifier_type}:{identifier_value}".encode()).hexdigest()
    return "cus_" + digest[:32]


def small_delta_state(spark):
    """Delta reconstructs snapshots with 50 partitions by default: far too many for tiny test tables."""
    previous = spark.conf.get("spark.databricks.delta.snapshotPartitions", None)
    spark.conf.set("spark.databricks.delta.snapshotPartitions", "2")
    return previous


def restore_delta_state(spark, previous):
    if previous is None:
        spark.conf.unset("spark.databricks.delta.snapshotPartitions")
    else:
        spark.conf.set("spark.databricks.delta.snapshotPartitions", previous)
