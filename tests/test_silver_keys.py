"""The ingest sink's keyed mirror of silver's dedup keys (streaming.silver_keys): what it answers
after other writers' inserts and deletes, a re-created table and an unreadable change feed; and a
sink using it writes the same silver as one that scans silver, or whose mirror fails."""

import datetime as dt
import json
import shutil

import pytest
from delta.tables import DeltaTable

from touchpoint.core.delta import ensure_table
from touchpoint.schemas.lake import SILVER_SCHEMA
from touchpoint.streaming.silver_keys import SilverKeys

DAY, NEXT_DAY = dt.date(2026, 3, 1), dt.date(2026, 3, 2)
EPOCH = dt.datetime(1970, 1, 1)


def silver_row(event_id, day=DAY, hour=8, order_id=None):
    row = {field.name: None for field in SILVER_SCHEMA.fields}
    row.update(event_id=event_id, event_type="order" if order_id else "page_view", order_id=order_id,
               event_ts=dt.datetime.combine(day, dt.time(hour)), event_date=day, anonymous_id="a1",
               channel="direct", source_topic="events.raw", source_partition=0, source_offset=0,
               source_ts=dt.datetime.combine(day, dt.time(20)))
    return row


def micros(day, hour):
    return (dt.datetime.combine(day, dt.time(hour)) - EPOCH) // dt.timedelta(microseconds=1)


def append(spark, path, rows):
    spark.createDataFrame(rows, SILVER_SCHEMA).write.format("delta").mode("append").save(path)


def delete(spark, path, event_ids):
    DeltaTable.forPath(spark, path).delete(" OR ".join(f"event_id = '{event_id}'" for event_id in event_ids))


def new_silver(spark, path):
    ensure_table(spark, path, SILVER_SCHEMA, ["event_date"], "silver.events")


def test_the_mirror_follows_other_writers_and_a_recreated_table(spark, tmp_path):
    path = str(tmp_path / "silver")
    new_silver(spark, path)
    append(spark, path, [silver_row("a"), silver_row("b"), silver_row("c", NEXT_DAY),
                         silver_row("x1", hour=11, order_id="o1")])
    keys = SilverKeys(path)
    assert keys.orders_held == 0

    version = keys.sync([DAY], orders=True)

    assert version == keys.version == 1
    assert keys.loaded_dates == {"2026-03-01"}
    # c is silver's, but on another date than the batch's: as the scan pruned to the batch's dates
    assert keys.ids_in_silver(["a", "c", "zz", "a"], [DAY]) == ["a"]
    assert keys.orders_sharing(["o1", "o9"]) == [("o1", "x1", micros(DAY, 11), "2026-03-01")]
    with pytest.raises(ValueError, match=r"event dates \['2026-03-02'\] are not loaded"):
        keys.ids_in_silver(["c"], [NEXT_DAY])

    # other writers: an insert on each date, an earlier order for o1 on the next day, two deletes
    append(spark, path, [silver_row("d"), silver_row("e", NEXT_DAY), silver_row("x0", NEXT_DAY, 9, "o1")])
    delete(spark, path, ["b", "x1"])
    keys.sync([DAY, NEXT_DAY], orders=True)

    assert keys.version == 3
    assert sorted(keys.ids_in_silver(["a", "b", "c", "d", "e", "x1"], [DAY, NEXT_DAY])) == ["a", "c", "d", "e"]
    assert keys.orders_sharing(["o1"]) == [("o1", "x0", micros(NEXT_DAY, 9), "2026-03-02")]
    assert keys.event_ids == 5  # a, c, d, e, x0: both dates loaded, b and x1 deleted
    assert keys.orders_held == 1  # x0: x1 deleted

    # the table deleted and created again at the same path: another table id, so the mirror starts again
    shutil.rmtree(path)
    new_silver(spark, path)
    append(spark, path, [silver_row("g"), silver_row("y", hour=7, order_id="o1")])
    keys.sync([DAY], orders=True)
    assert keys.version == 1
    assert keys.loaded_dates == {"2026-03-01"}
    assert keys.ids_in_silver(["a", "d", "g"], [DAY]) == ["g"]
    assert keys.orders_sharing(["o1"]) == [("o1", "y", micros(DAY, 7), "2026-03-01")]
    assert keys.reloads == 0


def test_many_catch_ups_merge_into_few_sorted_runs(spark, tmp_path):
    path = str(tmp_path / "silver")
    new_silver(spark, path)
    keys = SilverKeys(path)
    keys.sync([DAY], orders=False)
    for number in range(12):  # twelve micro-batches of 4 new ids each
        append(spark, path, [silver_row(f"e{number}-{i}") for i in range(4)])
    keys.sync([DAY], orders=False)  # each version is a run of its own, merged as they come
    runs = [len(hi) for hi, _ in keys._dates["2026-03-01"].runs]
    assert sum(runs) == 48 and len(runs) <= 3, runs
    every = [f"e{number}-{i}" for number in range(12) for i in range(4)]
    assert keys.ids_in_silver(every + ["e12-0"], [DAY]) == sorted(every)


def test_above_its_bound_the_mirror_drops_the_dates_asked_least_recently_and_loads_them_again(spark, tmp_path):
    path = str(tmp_path / "silver")
    new_silver(spark, path)
    days = [dt.date(2026, 3, day) for day in (1, 2, 3)]
    append(spark, path, [silver_row(f"{day.day}-{i}", day) for day in days for i in range(3)])
    keys = SilverKeys(path, max_event_ids=6)
    keys.sync(days[:2], orders=False)  # 6 ids: within the bound
    keys.sync(days[1:2], orders=False)  # the 2nd asked again: the 1st is now the least recent
    keys.sync(days[2:], orders=False)  # 9 ids: the 1st goes

    assert (keys.loaded_dates, keys.event_ids, keys.evictions) == ({"2026-03-02", "2026-03-03"}, 6, 1)
    append(spark, path, [silver_row("1-new", days[0])])  # while the 1st is out of memory
    keys.sync(days[:1], orders=False)  # loaded again, with what came meanwhile: 10 ids, so both others go
    assert (keys.loaded_dates, keys.event_ids, keys.evictions) == ({"2026-03-01"}, 4, 3)
    assert keys.ids_in_silver(["1-0", "1-2", "1-new", "2-0"], days[:1]) == ["1-0", "1-2", "1-new"]
    # a batch's own dates are kept even above the bound
    keys.sync(days, orders=False)
    assert keys.loaded_dates == {"2026-03-01", "2026-03-02", "2026-03-03"} and keys.event_ids == 10


def test_an_unreadable_change_feed_reloads_the_keys_from_the_latest_version(spark, tmp_path):
    path = str(tmp_path / "silver")
    new_silver(spark, path)
    append(spark, path, [silver_row("a"), silver_row("b")])
    keys = SilverKeys(path)
    keys.sync([DAY], orders=False)
    delete(spark, path, ["a"])  # a delete's change rows are written to _change_data files
    append(spark, path, [silver_row("c")])
    shutil.rmtree(tmp_path / "silver" / "_change_data")  # as if vacuumed

    keys.sync([DAY], orders=False)

    assert keys.reloads == 1
    assert keys.version == 3
    assert sorted(keys.ids_in_silver(["a", "b", "c"], [DAY])) == ["b", "c"]


def sink_batches(spark, tmp_path, sink, batches, first_batch_id=0):
    """Each batch of JSON lines through `sink` as a file batch; the counts it returned."""
    from touchpoint.streaming.ingest import file_batches, file_bronze_rows, scan_file

    counts = []
    for batch_id, lines in enumerate(batches, start=first_batch_id):
        file = tmp_path / f"{sink.source_id.replace(':', '-')}-{batch_id}.jsonl"
        file.write_text("\n".join(lines) + "\n")
        [ranges] = file_batches(file, scan_file(file), 0)
        counts.append(sink(file_bronze_rows(spark, file, ranges), batch_id))
    return counts


def line(event_id, day="2026-03-01", hour=10, order_id=None):
    event = {"event_id": event_id, "event_type": "order" if order_id else "page_view",
             "event_ts": f"{day}T{hour:02d}:00:00Z", "user_id": "u-1"}
    if order_id:
        event["properties"] = {"order_id": order_id, "revenue": 10.0, "currency": "USD"}
    return json.dumps(event)


@pytest.mark.parametrize("how", ["keyed", "scan", "broken mirror"])
def test_a_sink_with_the_mirror_writes_what_a_scanning_sink_writes(spark, tmp_path, monkeypatch, how):
    from touchpoint.core.config import load_settings
    from touchpoint.streaming import silver_keys
    from touchpoint.streaming.ingest import IngestSink

    settings = load_settings(lake_root=str(tmp_path / "lake"), spark_shuffle_partitions=2)
    keyed = how != "scan"
    if how == "broken mirror":  # the mirror fails part way through every batch (as an unreadable lake would)
        def failing(self, event_dates, orders):
            self._dates = {}
            raise OSError("injected: the mirror cannot be read")
        monkeypatch.setattr(silver_keys.SilverKeys, "sync", failing)
    sink = IngestSink(settings, source_id="test:keys", keyed_lookup=keyed)
    other = IngestSink(settings, source_id="test:other", keyed_lookup=keyed)
    first = sink_batches(spark, tmp_path, sink, [
        [line("v1"), line("v2"), line("v1"), line("o-late", hour=12, order_id="A"), "garbage"],
        [line("v2"), line("v3", day="2026-03-02"), line("o-early", hour=9, order_id="A")],
    ])
    # another writer lands v4 and an earlier order for B; then the sink sees copies of both
    sink_batches(spark, tmp_path, other, [[line("v4"), line("b-early", hour=8, order_id="B")]])
    last = sink_batches(spark, tmp_path, sink, [
        [line("v4"), line("v5"), line("b-late", hour=11, order_id="B"), line("v3", day="2026-03-02")],
    ], first_batch_id=2)

    by_key = [{key: batch[key] for key in ("bronze", "quarantine", "silver", "duplicates", "displaced")}
              for batch in first + last]
    assert by_key == [
        {"bronze": 5, "quarantine": 1, "silver": 3, "duplicates": 1, "displaced": 0},
        {"bronze": 3, "quarantine": 0, "silver": 1, "duplicates": 2, "displaced": 1},  # v2 again; o-late goes
        {"bronze": 4, "quarantine": 0, "silver": 1, "duplicates": 3, "displaced": 0},
    ]
    silver = spark.read.format("delta").load(sink.paths["silver.events"])
    assert sorted(row.event_id for row in silver.collect()) == ["b-early", "o-early", "v1", "v2", "v3", "v4", "v5"]
    if how == "keyed":  # the mirror answered every batch (a failed lookup falls back to the scan)
        assert sink.keyed_fallbacks == 0 and sink._keys.reloads == 0
        assert sink._keys.version == DeltaTable.forPath(spark, sink.paths["silver.events"]).history(1).first().version - 1
    else:
        assert sink._keys is None
        assert sink.keyed_fallbacks == (3 if how == "broken mirror" else 0)
