"""Spark writes Delta; delta-rs and duckdb read the very same rows without a JVM."""

import datetime as dt

import duckdb
from chispa import assert_df_equality
from deltalake import DeltaTable


def test_spark_delta_rs_and_duckdb_agree(spark, tmp_path):
    path = str(tmp_path / "events")
    rows = [
        ("e1", "order", dt.datetime(2026, 1, 1, 10, 0, tzinfo=dt.timezone.utc), 12.5),
        ("e2", "page_view", dt.datetime(2026, 1, 1, 11, 30, tzinfo=dt.timezone.utc), None),
        ("e3", "ad_click", dt.datetime(2026, 1, 2, 0, 0, 1, 250, tzinfo=dt.timezone.utc), None),
    ]
    written = spark.createDataFrame(rows, "event_id string, event_type string, event_ts timestamp, revenue double")
    written.write.format("delta").save(path)

    read_back = spark.read.format("delta").load(path)
    assert_df_equality(read_back, written, ignore_row_order=True)

    by_delta_rs = sorted(DeltaTable(path).to_pyarrow_table().to_pylist(), key=lambda r: r["event_id"])
    assert [(r["event_id"], r["event_type"], r["event_ts"], r["revenue"]) for r in by_delta_rs] == rows

    connection = duckdb.connect()
    connection.register("events", DeltaTable(path).to_pyarrow_dataset())
    connection.execute("SET TimeZone = 'UTC'")
    by_duckdb = connection.execute("SELECT event_id, event_type, event_ts, revenue FROM events ORDER BY event_id").fetchall()
    assert by_duckdb == rows
