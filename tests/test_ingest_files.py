"""`touchpoint ingest --file` plans a file as line-aligned byte ranges grouped into sink batches, so a
large file never sits in memory and an interrupted ingest resumes (the Spark side of it:
tests/test_ingest_generated.py)."""

import hashlib

import pytest

from touchpoint.streaming import ingest
from touchpoint.streaming.ingest import FileRange, FileScan, file_batches, resume_offset, scan_file

# byte offsets: "aaaa\n" 0-4, "bb\n" 5-7, "\n" 8, "cccccc\n" 9-15, "d\n" 16-17 (lines 1-5)
SMALL = b"aaaa\nbb\n\ncccccc\nd\n"


@pytest.mark.parametrize("block_bytes", [3, 1 << 20])  # split points found across read blocks too
def test_scan_splits_at_line_starts_with_their_line_numbers(tmp_path, monkeypatch, block_bytes):
    monkeypatch.setattr(ingest, "_SCAN_BLOCK_BYTES", block_bytes)
    file = tmp_path / "small.jsonl"
    file.write_bytes(SMALL)
    scan = scan_file(file, split_bytes=5)
    # 5: the line holding byte 4 ends there; 10: the line holding byte 9 ("cccccc") ends at 15
    assert scan == FileScan(hashlib.sha256(SMALL).hexdigest()[:32], 18, ((0, 1), (5, 2), (16, 5)))
    assert scan_file(file, split_bytes=100).splits == ((0, 1),)
    (tmp_path / "empty.jsonl").write_bytes(b"")
    assert scan_file(tmp_path / "empty.jsonl", split_bytes=5).splits == ((0, 1),)


def test_batches_group_ranges_and_resume_at_any_line_start(tmp_path):
    file = tmp_path / "small.jsonl"
    file.write_bytes(SMALL)
    scan = scan_file(file, split_bytes=5)
    ranges = [FileRange(0, 5, 1), FileRange(5, 16, 2), FileRange(16, 18, 5)]
    assert file_batches(file, scan, 0, batch_bytes=12) == [[ranges[0]], [ranges[1]], [ranges[2]]]
    assert file_batches(file, scan, 0, batch_bytes=16) == [ranges[:2], [ranges[2]]]
    assert file_batches(file, scan, 16, batch_bytes=16) == [[ranges[2]]]
    # byte 9 starts line 4 ("cccccc"), which is not a split point
    assert file_batches(file, scan, 9, batch_bytes=100) == [[FileRange(9, 16, 4), FileRange(16, 18, 5)]]
    assert file_batches(file, scan, 18, batch_bytes=100) == []


@pytest.mark.parametrize(("committed", "size", "resume_at"), [
    (None, 100, 0),  # never ingested: from the start
    (40, 100, 40),  # died after the batch that ended at byte 40
    (100, 100, None),  # done
    (0, 100, None),  # the whole-file batch 0 of earlier versions: done, not ingested twice
    (None, 0, 0),  # an empty file is one empty batch
    (0, 0, None),
])
def test_resume_offset(committed, size, resume_at):
    assert resume_offset(committed, size) == resume_at


def test_input_files_refuse_what_they_cannot_read_before_ingesting_anything(tmp_path):
    import gzip

    from touchpoint.streaming.ingest import input_files

    with pytest.raises(FileNotFoundError, match=f"^{tmp_path / 'nope.jsonl'} does not exist: give a JSONL file"):
        input_files(tmp_path / "nope.jsonl")
    (tmp_path / "README").write_text("not events")
    with pytest.raises(FileNotFoundError, match=f"^no \\*.jsonl or \\*.ndjson files under {tmp_path}$"):
        input_files(tmp_path)
    (tmp_path / "b.JSONL").write_text('{"a": 1}\n')
    (tmp_path / "nested").mkdir()
    (tmp_path / "nested" / "a.ndjson").write_text('{"a": 1}\n')
    assert input_files(tmp_path) == [tmp_path / "b.JSONL", tmp_path / "nested" / "a.ndjson"]
    (tmp_path / "day.jsonl.gz").write_bytes(gzip.compress(b'{"a": 1}\n'))
    with pytest.raises(ValueError) as error:
        input_files(tmp_path)
    assert str(error.value) == (f"compressed input, not JSONL text: {tmp_path / 'day.jsonl.gz'}; decompress it first "
                                "(gunzip -k FILE)")
    disguised = tmp_path / "nested" / "a.ndjson"
    disguised.write_bytes(gzip.compress(b'{"a": 1}\n'))  # gzip content under a text name
    with pytest.raises(ValueError, match=f"^compressed input, not JSONL text: {disguised};"):
        input_files(disguised)


def test_a_byte_order_mark_is_not_part_of_the_first_event(spark, settings, tmp_path):
    import json

    from pyspark.sql import functions as F

    from touchpoint.core.catalog import table_path
    from touchpoint.streaming.ingest import ingest_files

    events = [{"event_id": f"e{i}", "event_type": "page_view", "event_ts": "2026-03-01T10:00:00Z",
               "anonymous_id": "a1"} for i in (1, 2)]
    file = tmp_path / "bom.jsonl"
    file.write_bytes(b"\xef\xbb\xbf" + b"\r\n \t\n".join(json.dumps(e).encode() for e in events) + b"\r\n")
    [result] = ingest_files(spark, settings, file)
    assert (result["bronze"], result["silver"], result["quarantine"]) == (2, 2, 0)
    silver = spark.read.format("delta").load(table_path("silver.events", settings))
    assert sorted(r[0] for r in silver.select("event_id").collect()) == ["e1", "e2"]
    bronze = spark.read.format("delta").load(table_path("bronze.events", settings))
    assert [r[0] for r in bronze.where(F.col("source_offset") == 1).select("payload").collect()] == [
        json.dumps(events[0]).encode()]


def test_an_ingest_reports_the_bytes_of_each_batch_and_of_a_file_done_before(spark, settings, tmp_path,
                                                                           reported_progress):
    import json

    from touchpoint.streaming.ingest import ingest_files

    folder = tmp_path / "days"
    folder.mkdir()
    sizes = {}
    for name, count in (("a.jsonl", 3), ("b.jsonl", 1)):
        lines = [json.dumps({"event_id": f"{name}-{i}", "event_type": "page_view", "event_ts": "2026-03-01T10:00:00Z",
                             "anonymous_id": "a1"}) for i in range(count)]
        (folder / name).write_text("\n".join(lines) + "\n")
        sizes[name] = (folder / name).stat().st_size
    line_a = sizes["a.jsonl"] // 3
    # batches of at most 2 lines: ranges split every line, a.jsonl in two batches (2 lines, 1 line)
    results = ingest_files(spark, settings, folder, batch_bytes=2 * line_a, split_bytes=1)
    assert [(r["batches"], r["silver"]) for r in results] == [(2, 3), (1, 1)]
    total = sizes["a.jsonl"] + sizes["b.jsonl"]
    assert reported_progress == [
        ("begin", 0, "ingest days", total, "bytes", 0),
        ("update", 0, 0.0, "ingest days: a.jsonl"),
        ("update", 0, 0.0, "ingest days: a.jsonl"),  # resumed at byte 0
        ("update", 0, 2 * line_a, "ingest days: a.jsonl"),
        ("update", 0, 3 * line_a, "ingest days: a.jsonl"),
        ("update", 0, 3 * line_a, "ingest days: b.jsonl"),
        ("update", 0, 3 * line_a, "ingest days: b.jsonl"),
        ("update", 0, total, "ingest days: b.jsonl"),
        ("end", 0),
    ]
    reported_progress.clear()
    assert [r.get("skipped") for r in ingest_files(spark, settings, folder / "a.jsonl")] == [
        "already ingested (same content)"]
    assert reported_progress == [  # the second task reported
        ("begin", 1, "ingest a.jsonl", sizes["a.jsonl"], "bytes", 0),
        ("update", 1, 0.0, "ingest a.jsonl"),
        ("update", 1, sizes["a.jsonl"], "ingest a.jsonl"),
        ("end", 1),
    ]


def _order_line(event_id: str, currency: str = "EUR") -> str:
    import json

    return json.dumps({"event_id": event_id, "event_type": "order", "event_ts": "2026-03-01T10:00:00Z",
                       "anonymous_id": "a1", "properties": {"order_id": f"o-{event_id}", "revenue": 10,
                                                            "currency": currency}}) + "\n"


def test_a_lake_keeps_one_reporting_currency(spark, settings, tmp_path):
    """silver.events records the reporting currency its amounts are in; an ingest under another one
    is refused before it writes anything, naming the key and the fix."""
    from touchpoint.core.catalog import table_path
    from touchpoint.core.config import ConfigError
    from touchpoint.core.delta import latest_version, rs_table
    from touchpoint.streaming.ingest import REPORTING_CURRENCY_PROPERTY, ingest_files

    silver = table_path("silver.events", settings)
    first = tmp_path / "first.jsonl"
    first.write_text(_order_line("e1"))
    [result] = ingest_files(spark, settings, first)
    assert result["silver"] == 1
    assert rs_table(silver).metadata().configuration[REPORTING_CURRENCY_PROPERTY] == "USD"

    second = tmp_path / "second.jsonl"
    second.write_text(_order_line("e2"))
    version = latest_version(spark, silver)
    in_euros = settings.model_copy(update={"reporting_currency": "EUR"})
    with pytest.raises(ConfigError, match=r"key 'reporting_currency' \(env TOUCHPOINT_REPORTING_CURRENCY\): "
                                          r"silver.events holds revenue converted to USD, so ingesting in EUR would "
                                          r"sum amounts of two currencies; set it back to USD, or ingest the raw "
                                          r"events into a new lake \(lake_root\) to report in EUR"):
        ingest_files(spark, in_euros, second)
    assert latest_version(spark, silver) == version
    rows = spark.read.format("delta").load(silver).select("event_id", "revenue_reporting", "reporting_currency")
    assert [tuple(r) for r in rows.collect()] == [("e1", pytest.approx(10 * usd_per_unit("EUR")), "USD")]


def usd_per_unit(currency: str) -> float:
    """USD per unit of `currency` in the platform's rates table."""
    from touchpoint.core.events import currencies

    return currencies().usd_per_unit[currency]


@pytest.mark.parametrize(("held", "setting", "recorded", "error"), [
    (["EUR"], "EUR", "EUR", None),  # the currency of its rows becomes the lake's
    (["EUR"], "USD", "EUR", "silver.events holds revenue converted to EUR, so ingesting in USD"),
    ([], "GBP", "GBP", None),  # no amounts yet: the setting's
    (["EUR", "USD"], "USD", None, "silver.events already holds amounts in EUR and USD"),  # mixed: none
])
def test_a_silver_from_before_the_property_gets_the_currency_of_its_rows(spark, settings, held, setting, recorded,
                                                                         error):
    import datetime as dt

    from touchpoint.core.catalog import table_path
    from touchpoint.core.config import ConfigError
    from touchpoint.core.delta import ensure_table, rs_table
    from touchpoint.schemas.lake import SILVER_SCHEMA
    from touchpoint.streaming.ingest import REPORTING_CURRENCY_PROPERTY, require_reporting_currency

    silver = table_path("silver.events", settings)
    ensure_table(spark, silver, SILVER_SCHEMA, ["event_date"], "silver.events")  # as created before session 46
    rows = [{**{f.name: None for f in SILVER_SCHEMA}, "event_id": f"e{i}", "event_type": "order",
             "event_ts": dt.datetime(2026, 3, 1, 10), "event_date": dt.date(2026, 3, 1), "revenue_reporting": 1.0,
             "reporting_currency": currency} for i, currency in enumerate(held)]
    rows.append({**{f.name: None for f in SILVER_SCHEMA}, "event_id": "view", "event_type": "page_view",
                 "event_ts": dt.datetime(2026, 3, 1, 10), "event_date": dt.date(2026, 3, 1)})
    spark.createDataFrame(rows, SILVER_SCHEMA).write.format("delta").mode("append").save(silver)
    if error is None:
        require_reporting_currency(spark, silver, setting)
    else:
        with pytest.raises(ConfigError, match=error):
            require_reporting_currency(spark, silver, setting)
    assert rs_table(silver).metadata().configuration.get(REPORTING_CURRENCY_PROPERTY) == recorded


def test_retention_deletes_raw_payloads_and_quarantine_older_than_their_days_and_keeps_silver(spark, tmp_path):
    """lake_maintenance's enforce_retention: the cut-off is counted back from the logical date (never
    from now), per table; silver is never touched."""
    import datetime as dt
    import json

    from touchpoint.core.catalog import table_path
    from touchpoint.core.config import load_settings
    from touchpoint.jobs.maintenance import enforce_retention
    from touchpoint.streaming.ingest import ingest_files

    settings = load_settings(lake_root=str(tmp_path / "lake"), spark_shuffle_partitions=2,
                             retention={"bronze_days": 5, "quarantine_days": 10})
    events = tmp_path / "day.jsonl"
    events.write_text("".join(json.dumps({"event_id": f"e{i}", "event_type": "page_view", "anonymous_id": "a1",
                                          "event_ts": "2026-03-01T10:00:00Z"}) + "\n" for i in (1, 2)) + "{broken\n")
    ingest_files(spark, settings, events)

    def count(name: str) -> int:
        return spark.read.format("delta").load(table_path(name, settings)).count()

    [ingest_day] = {r[0] for r in spark.read.format("delta").load(table_path("bronze.events", settings))
                    .select("ingest_date").collect()}
    assert (count("bronze.events"), count("silver.quarantine"), count("silver.events")) == (3, 1, 2)
    # D = ingest day + 5: the bronze cut-off is the ingest day itself, and rows of that day stay
    assert enforce_retention(spark, settings, ingest_day + dt.timedelta(days=5)) == {
        "rows_deleted": {"bronze.events": 0, "silver.quarantine": 0}}
    assert enforce_retention(spark, settings, ingest_day + dt.timedelta(days=6)) == {
        "rows_deleted": {"bronze.events": 3, "silver.quarantine": 0}}
    assert enforce_retention(spark, settings, ingest_day + dt.timedelta(days=11)) == {
        "rows_deleted": {"bronze.events": 0, "silver.quarantine": 1}}
    assert (count("bronze.events"), count("silver.quarantine"), count("silver.events")) == (0, 0, 2)


def test_maintenance_vacuums_the_speed_tables_too(spark, tmp_path):
    """The speed layer overwrites customer_activity every customer micro-batch; before session 47 no
    VACUUM reached the speed tables, so every replaced file stayed on disk."""
    from pathlib import Path

    from touchpoint.core.catalog import table_path
    from touchpoint.core.config import load_settings
    from touchpoint.jobs.maintenance import vacuum

    settings = load_settings(lake_root=str(tmp_path / "lake"), spark_shuffle_partitions=2,
                             retention={"vacuum_hours": 0})
    path = table_path("speed.customer_activity", settings)
    for customer in ("c1", "c2", "c3"):  # three snapshots, as three micro-batches write them
        spark.createDataFrame([(customer,)], "customer_id string").coalesce(1).write.format("delta") \
            .mode("overwrite").save(path)
    assert len(list(Path(path).glob("*.parquet"))) == 3
    import datetime as dt

    assert vacuum(spark, settings, dt.date(2026, 3, 1))["vacuumed"] == ["speed.customer_activity"]
    assert len(list(Path(path).glob("*.parquet"))) == 1
    assert [row.customer_id for row in spark.read.format("delta").load(path).collect()] == ["c3"]
