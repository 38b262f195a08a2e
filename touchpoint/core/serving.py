"""Lambda serving (BRIEF §7): serving.* = batch rows below the cut ∪ speed rows at or above it.

The cut of a batch table is (H, V): its high-water mark H and the silver version V it read. Every
row of the gold campaign / activity tables carries it (`batch_as_of`, `batch_silver_version`), so
a reader always gets the cut of exactly the version of the table it reads, even while the
pipeline publishes table after table. A speed row is served when the batch cannot hold it:

    event_ts >= H  OR  silver_version > V     (it happened after H, or arrived after batch read)

Expiry (`expire_speed_rows`) deletes only rows this predicate hides: those also below H less the
backfill grace (`expiry_bound`), so a backfill that moves H back finds the rows it needs. Last-touch
metrics are kept per conversion: a conversion the speed layer recomputed after the batch read
(or at/after H) replaces the batch's row for it. docs/SERVING.md has the argument why serving then
equals a full batch recomputation.

The views are SQL text over table references, rendered for Spark (`delta.`path``) or for duckdb
over delta-rs (dotted names registered by `duckdb_connection`), so both engines run one definition.
"""

from __future__ import annotations

import datetime as dt
from typing import Callable, Iterable

from pyspark.sql.types import (
    BooleanType, DateType, DoubleType, LongType, StringType, StructField, StructType, TimestampType,
)

from touchpoint.core.campaign_metrics import MONEY
from touchpoint.core.catalog import TABLES, table_path
from touchpoint.core.config import Settings

_S, _TS, _L, _B = StringType(), TimestampType(), LongType(), BooleanType()


def _schema(*fields) -> StructType:
    return StructType([StructField(name, kind, True) for name, kind in fields])


_MEASURES = (("impressions", _L), ("clicks", _L), ("orders", _L), ("revenue", MONEY))
_LAST_TOUCH = (("last_touch_orders", _L), ("last_touch_revenue", MONEY))
_CUT = (("batch_as_of", _TS), ("batch_silver_version", _L))
_CONVERSION = (("conversion_id", _S), ("conversion_ts", _TS), ("customer_id", _S), ("revenue", MONEY),
               ("last_touch_event_id", _S), ("last_touch_ts", _TS), ("last_touch_channel", _S),
               ("last_touch_campaign", _S))
_ACTIVITY = (("customer_id", _S), ("as_of", _TS), ("last_event_ts", _TS), ("last_event_type", _S),
             ("events_last_30m", _L), ("page_views_last_30m", _L), ("open_cart_value", MONEY),
             ("last_cart_ts", _TS), ("cart_abandoned", _B))

SCHEMAS: dict[str, StructType] = {
    "gold.campaign_minute": _schema(("minute", _TS), ("campaign", _S), *_MEASURES, *_LAST_TOUCH, *_CUT),
    "gold.campaign_daily": _schema(("date", DateType()), ("campaign", _S), *_MEASURES, *_LAST_TOUCH, *_CUT),
    "gold.campaign_conversions": _schema(*_CONVERSION, *_CUT),
    "gold.customer_activity": _schema(*_ACTIVITY, *_CUT),
    "speed.campaign_minute": _schema(("minute", _TS), ("campaign", _S), ("silver_version", _L), *_MEASURES),
    "speed.campaign_daily": _schema(("date", DateType()), ("campaign", _S), ("silver_version", _L), *_MEASURES),
    "speed.campaign_conversions": _schema(*_CONVERSION, ("removed", _B), ("silver_version", _L), ("batch_id", _L)),
    "speed.customer_activity": _schema(*_ACTIVITY, ("silver_version", _L)),
    "speed.segment_membership": _schema(("segment", _S), ("customer_id", _S), ("as_of", _TS),
                                        ("silver_version", _L)),
    "speed.freshness": _schema(("query", _S), ("batch_id", _L), ("processed_at", _TS), ("rows", _L),
                               ("first_version", _L), ("last_version", _L), ("clock", _TS),
                               ("oldest_arrival_ts", _TS), ("lag_seconds", DoubleType())),
    "gold.segment_membership": _schema(("segment", _S), ("customer_id", _S), ("entered_at", _TS),
                                       ("exited_at", _TS)),
}

SERVING_VIEWS = ("serving.campaign_daily", "serving.campaign_minute", "serving.customer_activity",
                 "serving.segment_membership")

# speed table -> (gold table giving its cut, bucket column, "date" or "ts" comparison)
SPEED_CUTS = {
    "speed.campaign_minute": ("gold.campaign_minute", "minute", "ts"),
    "speed.campaign_daily": ("gold.campaign_daily", "date", "date"),
    "speed.campaign_conversions": ("gold.campaign_conversions", "conversion_ts", "ts"),
}


def read_cut(settings: Settings, gold: str) -> tuple[dt.datetime | None, int | None]:
    """(H, V) of a gold table from its own rows, with delta-rs; (None, None) when absent or empty."""
    import pyarrow.compute as pc
    from deltalake.exceptions import TableNotFoundError

    from touchpoint.core.delta import rs_table

    try:
        rows = rs_table(table_path(gold, settings)).to_pyarrow_table(
            columns=["batch_as_of", "batch_silver_version"])
    except TableNotFoundError:
        return None, None
    if rows.num_rows == 0:
        return None, None
    high_water_mark = pc.max(rows.column("batch_as_of")).as_py()
    if high_water_mark is not None and high_water_mark.tzinfo is None:
        high_water_mark = high_water_mark.replace(tzinfo=dt.timezone.utc)
    return high_water_mark, pc.max(rows.column("batch_silver_version")).as_py()


def _cut_cte(ref: Callable[[str], str], gold: str) -> str:
    return (f"SELECT MAX(batch_as_of) AS h, COALESCE(MAX(batch_silver_version), -1) AS v "
            f"FROM {ref(gold)}")


def _kept(bucket: str, kind: str) -> str:
    """The speed-row predicate: at/after H, or arrived after the batch read silver."""
    at_or_after = f"s.{bucket} >= CAST(cut.h AS DATE)" if kind == "date" else f"s.{bucket} >= cut.h"
    return f"(cut.h IS NULL OR {at_or_after} OR s.silver_version > cut.v)"


def _campaign_sql(grain: str, ref: Callable[[str], str]) -> str:
    gold, speed = f"gold.campaign_{'daily' if grain == 'date' else 'minute'}", \
        f"speed.campaign_{'daily' if grain == 'date' else 'minute'}"
    bucket_of_conversion = "CAST(c.conversion_ts AS DATE)" if grain == "date" else \
        "date_trunc('minute', c.conversion_ts)"
    zero = "CAST(0 AS DECIMAL(38,9))"
    measures = "impressions, clicks, orders, revenue"
    return f"""
WITH cut AS ({_cut_cte(ref, gold)}),
conv_cut AS ({_cut_cte(ref, "gold.campaign_conversions")}),
recomputations AS (
  SELECT s.*, ROW_NUMBER() OVER (PARTITION BY s.conversion_id ORDER BY s.silver_version DESC, s.batch_id DESC) AS rank
  FROM {ref("speed.campaign_conversions")} s
),
-- Each conversion's latest recomputation, when the batch does not hold it. The cut applies to the
-- latest only: an older row (the order before it was displaced, at another time) is never served.
speed_conversions AS (
  SELECT s.* FROM recomputations s CROSS JOIN conv_cut cut WHERE s.rank = 1 AND {_kept("conversion_ts", "ts")}
),
conversions AS (
  SELECT conversion_id, conversion_ts, revenue, last_touch_campaign FROM speed_conversions WHERE NOT removed
  UNION ALL
  SELECT b.conversion_id, b.conversion_ts, b.revenue, b.last_touch_campaign
  FROM {ref("gold.campaign_conversions")} b LEFT JOIN speed_conversions s ON s.conversion_id = b.conversion_id
  WHERE s.conversion_id IS NULL
),
parts AS (
  SELECT {grain}, campaign, {measures}, 0 AS last_touch_orders, {zero} AS last_touch_revenue
  FROM {ref(gold)}
  UNION ALL
  SELECT s.{grain}, s.campaign, s.impressions, s.clicks, s.orders, s.revenue, 0, {zero}
  FROM {ref(speed)} s CROSS JOIN cut WHERE {_kept(grain, "date" if grain == "date" else "ts")}
  UNION ALL
  SELECT {bucket_of_conversion} AS {grain}, c.last_touch_campaign AS campaign, 0, 0, 0, {zero}, 1,
         COALESCE(c.revenue, {zero})
  FROM conversions c
)
SELECT {grain}, campaign, CAST(SUM(impressions) AS BIGINT) AS impressions, CAST(SUM(clicks) AS BIGINT) AS clicks,
       CAST(SUM(orders) AS BIGINT) AS orders, CAST(SUM(revenue) AS DECIMAL(38,9)) AS revenue,
       CAST(SUM(last_touch_orders) AS BIGINT) AS last_touch_orders,
       CAST(SUM(last_touch_revenue) AS DECIMAL(38,9)) AS last_touch_revenue
FROM parts
GROUP BY {grain}, campaign
HAVING SUM(impressions) <> 0 OR SUM(clicks) <> 0 OR SUM(orders) <> 0 OR SUM(revenue) <> 0
    OR SUM(last_touch_orders) <> 0 OR SUM(last_touch_revenue) <> 0
"""


def _activity_sql(ref: Callable[[str], str]) -> str:
    columns = ", ".join(name for name, _ in _ACTIVITY)
    return f"""
WITH cut AS ({_cut_cte(ref, "gold.customer_activity")}),
speed AS (SELECT s.* FROM {ref("speed.customer_activity")} s CROSS JOIN cut
          WHERE cut.h IS NULL OR s.as_of >= cut.h)
SELECT {columns}, 'speed' AS source FROM speed
UNION ALL
SELECT {", ".join("b." + name for name, _ in _ACTIVITY)}, 'batch' AS source
FROM {ref("gold.customer_activity")} b LEFT JOIN speed s ON s.customer_id = b.customer_id
WHERE s.customer_id IS NULL
"""


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _segments_sql(ref: Callable[[str], str], realtime: Iterable[str]) -> str:
    names = ", ".join(_quote(n) for n in sorted(set(realtime))) or "NULL"
    # A speed snapshot holds, per evaluated segment, one row without a customer: its evaluation
    # instant. A segment evaluated at or after H is served from speed, members or none; else batch.
    return f"""
WITH cut AS ({_cut_cte(ref, "gold.customer_activity")}),
live AS (SELECT s.segment, MAX(s.as_of) AS clock FROM {ref("speed.segment_membership")} s
         WHERE s.customer_id IS NULL AND s.segment IN ({names}) GROUP BY s.segment),
speed_on AS (SELECT live.segment FROM live CROSS JOIN cut WHERE cut.h IS NULL OR live.clock >= cut.h)
SELECT s.segment, s.customer_id, s.as_of, 'speed' AS source
FROM {ref("speed.segment_membership")} s JOIN speed_on o ON s.segment = o.segment
WHERE s.customer_id IS NOT NULL
UNION ALL
SELECT b.segment, b.customer_id, b.entered_at AS as_of, 'batch' AS source
FROM {ref("gold.segment_membership")} b LEFT JOIN speed_on o ON b.segment = o.segment
WHERE b.exited_at IS NULL AND o.segment IS NULL
"""


def serving_sql(view: str, ref: Callable[[str], str], realtime_segments: Iterable[str] = ()) -> str:
    """The SQL of one serving view, with `ref(table_name)` rendering each table reference."""
    if view == "serving.campaign_daily":
        return _campaign_sql("date", ref)
    if view == "serving.campaign_minute":
        return _campaign_sql("minute", ref)
    if view == "serving.customer_activity":
        return _activity_sql(ref)
    if view == "serving.segment_membership":
        return _segments_sql(ref, realtime_segments)
    raise KeyError(f"unknown serving view {view!r}; known: {', '.join(SERVING_VIEWS)}")


SERVING_INPUTS = tuple(name for name in SCHEMAS if name not in ("speed.freshness",))


# ---------------------------------------------------------------- Spark


def ensure_serving_inputs(spark, settings: Settings) -> None:
    """Create every table the views read, empty, where missing (so a view works before any run)."""
    from touchpoint.core.delta import ensure_table

    for name in SERVING_INPUTS:
        ensure_table(spark, table_path(name, settings), SCHEMAS[name], (), name)


def spark_ref(settings: Settings) -> Callable[[str], str]:
    return lambda name: f"delta.`{table_path(name, settings)}`"


def serving_frame(spark, settings: Settings, view: str):
    """A serving view as a Spark DataFrame."""
    ensure_serving_inputs(spark, settings)
    return spark.sql(serving_sql(view, spark_ref(settings), settings.stream.realtime_segments))


def register_spark_views(spark, settings: Settings) -> list[str]:
    """Temp views for Spark SQL: serving.campaign_daily is `serving_campaign_daily`, etc."""
    names = []
    for view in SERVING_VIEWS:
        serving_frame(spark, settings, view).createOrReplaceTempView(view.replace(".", "_"))
        names.append(view.replace(".", "_"))
    return names


def expiry_bound(high_water_mark: dt.datetime, settings: Settings) -> dt.datetime:
    """How far below the cut H speed rows are kept: H − `stream.backfill_grace_days`. The speed layer
    writes, and expiry keeps, every row from there on whether or not the batch holds it, so that a
    backfill that moves the cut back no further than that serves no gap (docs/SERVING.md)."""
    return high_water_mark - dt.timedelta(days=settings.stream.backfill_grace_days)


def expire_speed_rows(spark, settings: Settings) -> dict[str, int]:
    """Delete the speed rows a published batch holds (BRIEF §7): those with event_ts < H that
    arrived no later than the silver version V the batch read, older than the backfill grace
    (`expiry_bound`). Safe at any time and repeatable."""
    from pyspark.sql import functions as F

    from touchpoint.core.delta import ensure_table, is_delta

    removed: dict[str, int] = {}

    for speed, (gold, column, kind) in SPEED_CUTS.items():
        high_water_mark, version = read_cut(settings, gold)
        path = table_path(speed, settings)
        if high_water_mark is None or not is_delta(spark, path):
            continue
        bound = expiry_bound(high_water_mark, settings)
        if speed == "speed.campaign_conversions":
            removed[speed] = _expire_recomputations(spark, path, bound, version)
            continue
        below = F.col(column) < (F.lit(bound).cast("date") if kind == "date" else F.lit(bound))
        condition = below & (F.col("silver_version") <= F.lit(version))
        removed[speed] = _delete(spark, path, condition)
    high_water_mark, _ = read_cut(settings, "gold.customer_activity")
    if high_water_mark is not None:
        for speed in ("speed.customer_activity", "speed.segment_membership"):
            path = table_path(speed, settings)
            ensure_table(spark, path, SCHEMAS[speed], (), speed)
            removed[speed] = _delete(spark, path, F.col("as_of") < F.lit(expiry_bound(high_water_mark, settings)))
    return removed


def _expire_recomputations(spark, path: str, bound: dt.datetime, version: int) -> int:
    """Delete the conversion recomputations the views can no longer serve: every row read by the
    batch (silver_version <= V) except a conversion's latest when that one is at or after `bound`
    (the cut, less the backfill grace). So the latest row of each conversion stays what the view
    decides on: a displaced order's older row never becomes the latest, and the tombstones of
    removed orders (no conversion_ts) go."""
    from delta.tables import DeltaTable
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    latest = F.row_number().over(Window.partitionBy("conversion_id").orderBy(
        F.col("silver_version").desc(), F.col("batch_id").desc())) == 1
    served = F.coalesce(latest & (F.col("conversion_ts") >= F.lit(bound)), F.lit(False))
    doomed = (spark.read.format("delta").load(path).withColumn("_served", served)
              .where((F.col("silver_version") <= F.lit(version)) & ~F.col("_served"))
              .select("conversion_id", "silver_version", "batch_id").localCheckpoint())
    if doomed.isEmpty():
        return 0
    table = DeltaTable.forPath(spark, path)
    (table.alias("t").merge(doomed.alias("d"), "t.conversion_id <=> d.conversion_id AND "
                            "t.silver_version = d.silver_version AND t.batch_id = d.batch_id")
     .whenMatchedDelete().execute())
    metrics = table.history(1).select("operationMetrics").first()["operationMetrics"] or {}
    return int(metrics.get("numTargetRowsDeleted", 0) or 0)


def _delete(spark, path: str, condition) -> int:
    from delta.tables import DeltaTable

    table = DeltaTable.forPath(spark, path)
    table.delete(condition)
    metrics = table.history(1).select("operation", "operationMetrics").first()
    if metrics["operation"] != "DELETE":
        return 0
    return int((metrics["operationMetrics"] or {}).get("numDeletedRows", 0) or 0)


# ---------------------------------------------------------------- duckdb over delta-rs (no JVM)


def _arrow_schema(schema: StructType):
    from pyspark.sql.pandas.types import to_arrow_schema

    return to_arrow_schema(schema, timezone="UTC", prefers_large_types=False)


def duckdb_connection(settings: Settings):
    """A duckdb connection (UTC) where every catalog table and serving view is a view under its
    dotted name: `select * from serving.campaign_daily`, `from silver.events`. Delta tables are
    read with delta-rs; a table that does not exist yet is an empty table of its schema (when known)."""
    import duckdb
    import pyarrow as pa
    from deltalake.exceptions import TableNotFoundError

    from touchpoint.core.delta import rs_table

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    registered = set()
    for name in sorted(set(TABLES) | set(SCHEMAS)):
        layer, short = name.split(".", 1)
        con.execute(f'CREATE SCHEMA IF NOT EXISTS "{layer}"')
        source = None
        try:
            source = rs_table(table_path(name, settings)).to_pyarrow_dataset()
        except (TableNotFoundError, OSError, Exception):  # absent or not a Delta table yet
            if name in SCHEMAS:
                source = pa.Table.from_batches([], schema=_arrow_schema(SCHEMAS[name]))
        if source is None:
            continue
        handle = f"__{layer}__{short}"
        con.register(handle, source)
        con.execute(f'CREATE OR REPLACE VIEW "{layer}"."{short}" AS SELECT * FROM "{handle}"')
        registered.add(name)
    con.execute('CREATE SCHEMA IF NOT EXISTS "serving"')
    ref = lambda table: table  # noqa: E731 - dotted names resolve as schema.view in duckdb
    for view in SERVING_VIEWS:
        short = view.split(".", 1)[1]
        con.execute(f'CREATE OR REPLACE VIEW "serving"."{short}" AS '
                    f"{serving_sql(view, ref, settings.stream.realtime_segments)}")
    return con


def query(settings: Settings, sql: str):
    """Run SQL over every table and serving view with duckdb; returns a pyarrow Table."""
    con = duckdb_connection(settings)
    try:
        return con.sql(sql).to_arrow_table()
    finally:
        con.close()
