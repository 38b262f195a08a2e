"""Speed layer + serving views on hand-built silver arrivals (issue 7).

Silver rows are appended commit by commit (one append = one arrival), the batch is the real
campaign_metrics job, the speed layer the real change-feed query (availableNow), and serving the
real SQL, read both with Spark and with duckdb over delta-rs.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from pyspark.sql import functions as F

from touchpoint.schemas.lake import SILVER_SCHEMA

D = dt.date(2026, 3, 1)
UTC = dt.timezone.utc


def at(day: int, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(2026, 3, day, hour, minute, tzinfo=UTC)


def event(event_id, event_type, ts, user_id, campaign=None, channel="paid_search", order_id=None, revenue=None,
          price=None, quantity=None, anonymous_id=None):
    row = dict.fromkeys(SILVER_SCHEMA.fieldNames())
    row.update(event_id=event_id, event_type=event_type, event_ts=ts, event_date=ts.date(), user_id=user_id,
               anonymous_id=anonymous_id, campaign_name=campaign, channel=channel, order_id=order_id,
               revenue=revenue, revenue_reporting=revenue, currency="USD" if revenue is not None else None,
               price=price, quantity=quantity, source_ts=ts, ingest_ts=ts, source_topic="test",
               source_partition=0, source_offset=0)
    return row


class Lake:
    def __init__(self, spark, settings):
        from touchpoint.core.catalog import table_path
        from touchpoint.streaming.speed import enable_change_feed

        self.spark, self.settings = spark, settings
        self.path = lambda name, s=None: table_path(name, s or settings)
        self.start_version = enable_change_feed(spark, settings)

    def arrive(self, *rows):
        frame = self.spark.createDataFrame([tuple(r[f] for f in SILVER_SCHEMA.fieldNames()) for r in rows],
                                           SILVER_SCHEMA)
        frame.write.format("delta").mode("append").save(self.path("silver.events"))

    def identity(self, users: dict[str, str], settings=None):
        rows = [("user_id", u, c, at(1, 0), at(1, 0)) for u, c in users.items()]
        self.spark.createDataFrame(rows, "identifier_type string, identifier_value string, customer_id string, "
                                         "first_seen timestamp, last_seen timestamp") \
            .write.format("delta").mode("overwrite").save(self.path("gold.identity_map", settings))

    def batch(self, day: dt.date, settings=None):
        from touchpoint.jobs.campaign_metrics import run

        return run(self.spark, settings or self.settings, day)

    def speed(self, settings=None, **sink_args):
        from touchpoint.streaming.speed import SpeedSink, start_stream

        settings = settings or self.settings
        sink = SpeedSink(settings, **sink_args) if sink_args else None
        query = start_stream(self.spark, settings, trigger_once=True, sink=sink)
        try:
            query.awaitTermination()
        finally:
            query.stop()

    def serving(self, view="serving.campaign_daily"):
        from touchpoint.core.serving import serving_frame

        return serving_frame(self.spark, self.settings, view)

    def rows(self, frame, key):
        return sorted((tuple(r) for r in frame.collect()), key=lambda r: tuple(str(v) for v in r[:2]))


# This machine is shared: a micro-batch is a dozen small Spark jobs, slow under load.
pytestmark = [pytest.mark.timeout(2400), pytest.mark.slow]


def quiet(settings):
    """Real-time segments are exercised by their own tests; elsewhere they only cost time."""
    return settings.model_copy(update={"stream": settings.stream.model_copy(update={"realtime_segments": ()})})


@pytest.fixture
def lake(spark, settings):
    return Lake(spark, quiet(settings))


def daily(frame):
    return daily_rows(frame.collect())


def daily_rows(rows):
    return sorted(((r["date"], r["campaign"], r["impressions"], r["clicks"], r["orders"], r["revenue"],
                    r["last_touch_orders"], r["last_touch_revenue"]) for r in rows), key=lambda r: (r[0], r[1] or ""))


def test_late_touch_after_batch_moves_last_touch_and_new_customer_is_served(spark, settings, lake):
    lake.arrive(event("e1", "ad_click", at(1, 10), "u1", "spring"),
                event("e2", "ad_impression", at(1, 9), "u1", "spring", channel="display"),
                event("e3", "order", at(1, 10, 30), "u1", None, channel="direct", order_id="o1", revenue=100.0))
    lake.identity({"u1": "cus_1"})
    lake.batch(D)
    lake.speed()  # caught up: everything so far is below H and read by the batch
    assert daily(lake.serving()) == [
        (D, None, 0, 0, 1, Decimal("100.000000000"), 0, Decimal("0E-9")),
        (D, "spring", 1, 1, 0, Decimal("0E-9"), 1, Decimal("100.000000000")),
    ]
    # After the batch: a late click of D (before the order: it becomes the last touch), and a new
    # customer u2 (unknown to the published identity map) who clicks and orders on D+1.
    lake.arrive(event("e4", "email_click", at(1, 10, 20), "u1", "summer", channel="email"))
    lake.arrive(event("e5", "ad_click", at(2, 1), None, "spring", anonymous_id="a2"),
                event("e6", "order", at(2, 1, 5), "u2", None, channel="direct", order_id="o2", revenue=50.0,
                      anonymous_id="a2"))
    lake.speed()
    served = daily(lake.serving())
    expected = [
        (D, None, 0, 0, 1, Decimal("100.000000000"), 0, Decimal("0E-9")),
        (D, "spring", 1, 1, 0, Decimal("0E-9"), 0, Decimal("0E-9")),
        (D, "summer", 0, 1, 0, Decimal("0E-9"), 1, Decimal("100.000000000")),
        (D + dt.timedelta(days=1), None, 0, 0, 1, Decimal("50.000000000"), 0, Decimal("0E-9")),
        (D + dt.timedelta(days=1), "spring", 0, 1, 0, Decimal("0E-9"), 1, Decimal("50.000000000")),
    ]
    assert served == expected
    # The same view without a JVM: duckdb over delta-rs.
    from touchpoint.core.serving import query

    assert daily_rows(query(settings, "select * from serving.campaign_daily").to_pylist()) == expected


def without_grace(settings):
    """Expiry at the cut itself: no speed row kept for backfills (stream.backfill_grace_days = 0)."""
    return settings.model_copy(update={"stream": settings.stream.model_copy(update={"backfill_grace_days": 0})})


def clicks_by_campaign(frame):
    return {(r["date"], r["campaign"]): (r["clicks"], r["last_touch_orders"]) for r in frame.collect()}


def test_crash_replay_a_late_event_and_expiry_never_double_count(spark, settings, lake):
    """A micro-batch replayed after a crash, then an event hours late: served from the speed layer at
    once (before session 45 a 60-minute watermark dropped it until the next batch), then by the batch,
    and never twice."""
    from pyspark.errors import StreamingQueryException

    from touchpoint.core.serving import expire_speed_rows

    lake.identity({"u1": "cus_1"})
    lake.arrive(event("c1", "ad_click", at(1, 10), "u1", "spring"),
                event("c2", "ad_click", at(1, 12), "u1", "spring"))
    # The query dies after its first write of micro-batch 0; the restart replays the batch.
    with pytest.raises(StreamingQueryException):
        lake.speed(fail_after="campaign_measures")
    lake.speed()
    assert clicks_by_campaign(lake.serving()) == {(D, "spring"): (2, 0)}
    lake.arrive(event("c4", "ad_click", at(1, 23, 1), "u1", "other"))
    lake.speed()
    lake.arrive(event("c3", "ad_click", at(1, 10, 30), "u1", "spring"))  # 12.5 h behind the newest event
    lake.speed()
    assert clicks_by_campaign(lake.serving()) == {(D, "spring"): (3, 0), (D, "other"): (1, 0)}
    lake.batch(D)  # the batch reads it from silver; the speed rows it holds are below the cut
    assert clicks_by_campaign(lake.serving()) == {(D, "spring"): (3, 0), (D, "other"): (1, 0)}
    expired = expire_speed_rows(spark, without_grace(settings))  # at the cut itself
    assert expired["speed.campaign_daily"] == 3 and expired["speed.campaign_minute"] == 4
    assert clicks_by_campaign(lake.serving()) == {(D, "spring"): (3, 0), (D, "other"): (1, 0)}
    assert spark.read.format("delta").load(lake.path("speed.campaign_daily")).count() == 0


@pytest.mark.drill
def test_a_query_whose_feed_was_purged_or_checkpoint_lost_starts_over_from_silver(spark, settings, lake):
    """The speed views are derived from silver alone, so a query that cannot go on from its
    checkpoint starts over from silver's snapshot (`streaming.speed.resync`) instead of failing at
    every restart or skipping batches: (1) the change data it reads next was purged (an erasure's
    DELETE, then VACUUM of 0 hours) while it was stopped, after a batch was published; (2) its
    checkpoint was deleted, and the speed tables hold the batch ids a new checkpoint numbers from 0;
    (3) the same with the published batch's snapshot readable: rows deleted since it are subtracted;
    (4) a batch published after a resync read silver older than the resync's snapshot."""
    import shutil

    from touchpoint.core.delta import committed_batch

    lake.identity({"u1": "cus_1"})
    lake.arrive(event("e1", "ad_click", at(1, 10), "u1", "spring"),
                event("e2", "order", at(1, 11), "u1", None, channel="direct", order_id="o1", revenue=100.0))
    lake.batch(D)
    lake.speed()
    day_1 = [(D, None, 0, 0, 1, Decimal("100.000000000"), 0, Decimal("0E-9")),
             (D, "spring", 0, 1, 0, Decimal("0E-9"), 1, Decimal("100.000000000"))]
    assert daily(lake.serving()) == day_1
    # (1) Stopped: a click and an order of the next day arrive, e1 is erased, and the purge removes
    # the deleted rows' files and the DELETE's change data (the published batch's snapshot with them).
    lake.arrive(event("e3", "email_click", at(2, 10), "u1", "summer", channel="email"),
                event("e5", "order", at(2, 11), "u1", None, channel="direct", order_id="o2", revenue=50.0))
    silver = lake.path("silver.events")
    spark.sql(f"DELETE FROM delta.`{silver}` WHERE event_id = 'e1'")
    spark.conf.set("spark.databricks.delta.retentionDurationCheck.enabled", "false")
    try:
        spark.sql(f"VACUUM delta.`{silver}` RETAIN 0 HOURS").collect()
    finally:
        spark.conf.unset("spark.databricks.delta.retentionDurationCheck.enabled")
    lake.speed()  # before session 49: FileNotFound at this and every later start
    # Day 1's counts stay the batch's until it runs again (the purged batch snapshot cannot tell what
    # was deleted since: e1's click still counts there); o1, recomputed from silver, has no touch left.
    day_2 = D + dt.timedelta(days=1)
    after_purge = [(D, None, 0, 0, 1, Decimal("100.000000000"), 1, Decimal("100.000000000")),
                   (D, "spring", 0, 1, 0, Decimal("0E-9"), 0, Decimal("0E-9")),
                   (day_2, None, 0, 0, 1, Decimal("50.000000000"), 0, Decimal("0E-9")),
                   (day_2, "summer", 0, 1, 0, Decimal("0E-9"), 1, Decimal("50.000000000"))]
    assert daily(lake.serving()) == after_purge
    lake.speed()  # nothing new: the resynced query goes on from its own checkpoint
    assert daily(lake.serving()) == after_purge

    # (2) The checkpoint is lost; a later click takes o2's last touch.
    shutil.rmtree(f"{settings.checkpoint_root}/speed")
    lake.arrive(event("e4", "ad_click", at(2, 10, 30), "u1", "autumn"))
    lake.speed()  # before session 49: batch 0 of the new checkpoint was skipped, e4 never served
    day_2_rows = [(day_2, None, 0, 0, 1, Decimal("50.000000000"), 0, Decimal("0E-9")),
                  (day_2, "autumn", 0, 1, 0, Decimal("0E-9"), 1, Decimal("50.000000000")),
                  (day_2, "summer", 0, 1, 0, Decimal("0E-9"), 0, Decimal("0E-9"))]
    assert daily(lake.serving()) == after_purge[:2] + day_2_rows
    freshness = spark.read.format("delta").load(lake.path("speed.freshness"))
    resyncs = [r["query"].split("-")[0] for r in freshness.where(F.col("query").startswith("speed:")).collect()]
    assert resyncs == ["speed:resync", "speed:resync"]
    assert committed_batch(lake.path("speed.campaign_daily"), "speed:speed.campaign_daily") == -1  # restarted

    # (3) The batch runs again (its snapshot stays readable), then o1 is deleted and the checkpoint
    # lost: starting over subtracts the deleted order from the batch's day 1.
    lake.batch(D)
    spark.sql(f"DELETE FROM delta.`{silver}` WHERE event_id = 'e2'")
    shutil.rmtree(f"{settings.checkpoint_root}/speed")
    lake.speed()
    assert daily(lake.serving()) == day_2_rows  # as a recomputation over silver: no event of day 1 is left

    # (4) A batch published after a resync, over a silver version older than the resync's snapshot:
    # e7 (late, day 1) arrived after the last batch and before identity read silver for the next one.
    from touchpoint.jobs import identity

    lake.arrive(event("e7", "ad_click", at(1, 9), "u1", "winter"))
    identity.run(spark, lake.settings, D)  # the next batch reads silver as of here
    lake.arrive(event("e8", "ad_click", at(2, 9), "u1", "winter"))
    shutil.rmtree(f"{settings.checkpoint_root}/speed")
    lake.speed()  # resync: e7 is not in the published batch, so the speed side counts it
    lake.batch(D)  # now the batch counts e7 too
    lake.speed()  # before session 49's review: e7 served twice until the next batch; now a resync again
    assert daily(lake.serving()) == [(D, "winter", 0, 1, 0, Decimal("0E-9"), 0, Decimal("0E-9"))] + day_2_rows[:2] + [
        (day_2, "summer", 0, 1, 0, Decimal("0E-9"), 0, Decimal("0E-9")),
        (day_2, "winter", 0, 1, 0, Decimal("0E-9"), 0, Decimal("0E-9"))]


def test_a_late_delete_of_a_counted_order_is_applied(spark, settings, lake):
    """An order counted by the speed layer, then displaced by an earlier copy of it that arrives
    hours later (its event_ts before H): the delete and the insert are both applied, so the order is
    counted once, on the displacing copy's date; before session 45 the watermark dropped both and
    serving counted it on both dates."""
    from delta.tables import DeltaTable

    lake.identity({"u1": "cus_1"})
    lake.arrive(event("oA", "order", at(2, 0, 10), "u1", None, channel="direct", order_id="o1", revenue=40.0))
    lake.speed()
    lake.arrive(event("v1", "page_view", at(2, 3), "u1", None, channel="direct"))  # the stream moves on
    lake.speed()
    DeltaTable.forPath(spark, lake.path("silver.events")).delete("event_id = 'oA'")  # as the ingest displaces
    lake.arrive(event("oB", "order", at(1, 23, 50), "u1", None, channel="direct", order_id="o1", revenue=40.0))
    lake.speed()
    forty = Decimal("40.000000000")
    assert daily(lake.serving()) == [(D, None, 0, 0, 1, forty, 1, forty)]  # nothing left on D+1
    lake.batch(D)
    assert daily(lake.serving()) == [(D, None, 0, 0, 1, forty, 1, forty)]


def test_an_event_dated_ahead_of_its_arrival_does_not_move_the_clock_past_the_arrival(spark, settings, lake):
    """A valid page view dated 23 h after it arrived (a device clock): the customer views' clock, at
    which activity and real-time segments are evaluated, stops at its arrival. Before, it jumped a day
    ahead and stayed there, so "the last 30 minutes" held nobody active now."""
    lake.identity({"u1": "cus_1", "u2": "cus_2"})
    ahead = {**event("p2", "page_view", at(2, 9), "u2", channel="direct"), "source_ts": at(1, 10, 5)}
    lake.arrive(event("p1", "page_view", at(1, 10), "u1", channel="direct"), ahead)
    lake.speed()
    clocks = spark.read.format("delta").load(lake.path("speed.freshness")).where("query = 'speed'")
    assert [r["clock"] for r in clocks.select(F.unix_micros("clock").alias("clock")).collect()] == [
        int(at(1, 10, 5).timestamp() * 1_000_000)]
    active = spark.read.format("delta").load(lake.path("speed.customer_activity"))
    assert sorted((r["customer_id"], r["events_last_30m"]) for r in active.collect()) == [("cus_1", 1)]


def test_a_displaced_or_removed_order_is_never_served_from_an_older_recomputation(spark, settings, lake):
    """A conversion's speed rows are recomputations; only its latest may be served, and the batch's
    cut applies to that one. o1's first order event (after H) is displaced by a late one before H;
    o2's only order event (after H) is deleted. Before and after expiry, serving equals the batch
    for D plus the speed rows after H, and no older recomputation resurfaces."""
    from delta.tables import DeltaTable

    from touchpoint.core.serving import expire_speed_rows

    lake.identity({"u1": "cus_1"})
    lake.arrive(event("k1", "ad_click", at(1, 23, 40), "u1", "spring"),
                event("k2", "ad_click", at(2, 0, 5), "u1", "summer"),
                event("oA", "order", at(2, 0, 10), "u1", None, channel="direct", order_id="o1", revenue=40.0),
                event("oC", "order", at(2, 0, 20), "u1", None, channel="direct", order_id="o2", revenue=7.0))
    lake.speed()
    # As the ingest sink displaces an order (delete the loser, insert the winner), and as an erasure deletes.
    DeltaTable.forPath(spark, lake.path("silver.events")).delete("event_id IN ('oA', 'oC')")
    lake.arrive(event("oB", "order", at(1, 23, 50), "u1", None, channel="direct", order_id="o1", revenue=40.0))
    lake.speed()
    lake.batch(D)  # reads every version: o1 at D 23:50, its last touch spring
    zero, forty = Decimal("0E-9"), Decimal("40.000000000")
    expected = [(D, None, 0, 0, 1, forty, 0, zero), (D, "spring", 0, 1, 0, zero, 1, forty),
                (D + dt.timedelta(days=1), "summer", 0, 1, 0, zero, 0, zero)]
    assert daily(lake.serving()) == expected
    recomputations = spark.read.format("delta").load(lake.path("speed.campaign_conversions"))
    assert sorted((r["conversion_id"], r["removed"]) for r in recomputations.collect()) == [
        ("o1", False), ("o1", False), ("o2", False), ("o2", True)]
    assert expire_speed_rows(spark, without_grace(lake.settings))["speed.campaign_conversions"] == 4
    assert daily(lake.serving()) == expected
    from touchpoint.core.serving import query  # the same view without a JVM: duckdb over delta-rs

    assert daily_rows(query(lake.settings, "select * from serving.campaign_daily").to_pylist()) == expected


@pytest.fixture(scope="module")
def backfill_start(spark, tmp_path_factory, lake_settings):
    """The start of the backfill test, which no grace setting changes, built once and copied by each
    case (the lake folder holds the speed query's checkpoint, <lake>/_checkpoints/speed): the speed
    layer reads b1-b3 with the default settings, b4 arrives, and the batch for D+1 reads b4 before
    the speed layer does. campaign_metrics reads no stream.backfill_grace_days (only the speed layer,
    expiry and publish do), so that batch is the same whichever grace the case then uses."""
    lake_dir = tmp_path_factory.mktemp("backfill_start") / "lake"
    lake = Lake(spark, quiet(lake_settings(lake_dir)))
    assert lake.settings.stream.backfill_grace_days == 7  # the default, which lake.batch and lake.speed use
    lake.identity({"u1": "cus_1"})
    lake.arrive(event("b1", "ad_click", at(1, 10), "u1", "spring"),
                event("b2", "ad_click", at(2, 9), "u1", "summer"),
                event("b3", "order", at(2, 9, 30), "u1", None, channel="direct", order_id="o1", revenue=30.0))
    lake.speed()
    lake.arrive(event("b4", "ad_impression", at(2, 11), "u1", "summer", channel="display"))
    lake.batch(D + dt.timedelta(days=1))  # reads b4 before the speed layer does
    return lake_dir


@pytest.mark.parametrize("grace_days", [7, 0])
def test_a_backfill_of_an_older_date_within_the_grace_serves_no_gap(spark, settings, backfill_start, grace_days):
    """The batch for D+1 publishes and expires, then a backfill of D moves the cut back a day. With
    the default grace (7 days) D+1's speed rows, which that batch held, are still there, so serving
    still equals everything ingested; one of them (b4) reached the speed layer only after the batch
    had read it. Without a grace (the expiry before session 47) D+1 is gone until D+1 runs again."""
    import shutil

    from touchpoint.core.serving import expire_speed_rows

    # identity u1 -> cus_1; b1-b3 read by the speed layer; b4 arrived; the batch for D+1 (backfill_start)
    shutil.copytree(backfill_start, settings.lake_uri)
    lake = Lake(spark, quiet(settings))  # silver's change feed is on already: no commit
    settings = lake.settings if grace_days == 7 else without_grace(lake.settings)
    assert settings.stream.backfill_grace_days == grace_days
    next_day = D + dt.timedelta(days=1)
    lake.speed(settings=settings)
    expire_speed_rows(spark, settings)
    zero, thirty = Decimal("0E-9"), Decimal("30.000000000")
    spring_on_d = (D, "spring", 0, 1, 0, zero, 0, zero)
    expected = [spring_on_d, (next_day, None, 0, 0, 1, thirty, 0, zero),
                (next_day, "summer", 1, 1, 0, zero, 1, thirty)]
    assert daily(lake.serving()) == expected
    lake.batch(D, settings)  # the backfill: the cut moves back from D+2 to D+1
    served = expected if grace_days else [spring_on_d]
    assert daily(lake.serving()) == served
    expire_speed_rows(spark, settings)  # under the backfill's cut: nothing served changes
    assert daily(lake.serving()) == served
    from touchpoint.core.serving import query  # the same view without a JVM: duckdb over delta-rs

    assert daily_rows(query(settings, "select * from serving.campaign_daily").to_pylist()) == served


CART_ABANDONED_NOW = """
name: cart_abandoned_now
description: carted in the last day, nothing carted in the last 30 minutes, no order in the last day
condition:
  all:
    - behaviour: {event_type: add_to_cart, at_least: 1, within_last_days: 1}
    - behaviour: {event_type: add_to_cart, at_most: 0, within_last_days: 0.020833333333333332}
    - behaviour: {event_type: order, at_most: 0, within_last_days: 1}
"""


def test_realtime_cart_abandoner_enters_in_event_time_and_an_order_removes_them(spark, settings, tmp_path, lake):
    segments = tmp_path / "segments"
    segments.mkdir()
    (segments / "cart_abandoned_now.yaml").write_text(CART_ABANDONED_NOW)
    lake.settings = settings.model_copy(update={
        "segments_dir": segments, "stream": settings.stream.model_copy(update={
            "realtime_segments": ("cart_abandoned_now",)})})
    lake.identity({"u1": "cus_1", "u2": "cus_2"})

    def members():
        frame = lake.serving("serving.segment_membership")
        return sorted((r["segment"], r["customer_id"], r["source"]) for r in frame.collect())

    lake.arrive(event("k1", "add_to_cart", at(1, 10), "u1", price=20.0, quantity=2))
    lake.speed()
    assert members() == []  # the cart is fresh
    lake.arrive(event("p1", "page_view", at(1, 10, 31), "u2", channel="direct"))  # event time moves on
    lake.speed()
    assert members() == [("cart_abandoned_now", "cus_1", "speed")]
    activity = {r["customer_id"]: r for r in lake.serving("serving.customer_activity").collect()}
    assert (activity["cus_1"]["open_cart_value"], activity["cus_1"]["cart_abandoned"]) == (Decimal("40.000000000"), True)
    assert (activity["cus_2"]["events_last_30m"], activity["cus_2"]["cart_abandoned"]) == (1, False)
    lake.arrive(event("o1", "order", at(1, 10, 40), "u1", order_id="o1", revenue=40.0, channel="direct"))
    lake.speed()
    assert members() == []
    activity = {r["customer_id"]: r for r in lake.serving("serving.customer_activity").collect()}
    assert (activity["cus_1"]["open_cart_value"], activity["cus_1"]["cart_abandoned"]) == (Decimal("0E-9"), False)


def test_realtime_segments_reevaluate_batch_members_and_an_empty_evaluation_is_served(spark, settings, tmp_path,
                                                                                       lake):
    """After H: cus_1, a cart abandoner in the batch, orders; cus_9, in `big` by the batch, has no
    event since. Serving must drop cus_1 (the speed layer found no abandoner) and keep cus_9. Before,
    the speed layer evaluated only customers with recent events (cus_9 vanished from `big` once it
    ran) and an evaluation with no member at all fell back to the batch (cus_1 stayed)."""
    from touchpoint.core.serving import SCHEMAS as SERVING_SCHEMAS

    segments = tmp_path / "segments"
    segments.mkdir()
    (segments / "cart_abandoned_now.yaml").write_text(CART_ABANDONED_NOW)
    (segments / "big.yaml").write_text("name: big\ncondition: {attribute: lifetime_revenue, gte: 100}\n")
    lake.settings = settings.model_copy(update={
        "segments_dir": segments, "stream": settings.stream.model_copy(update={
            "realtime_segments": ("cart_abandoned_now", "big")})})
    lake.identity({"u1": "cus_1", "u9": "cus_9"})
    spark.createDataFrame([("cus_1", 10.0), ("cus_9", 500.0)], "customer_id string, lifetime_revenue double") \
        .write.format("delta").save(lake.path("gold.customer_profiles"))
    spark.createDataFrame([("cart_abandoned_now", "cus_1", at(1, 12), None), ("big", "cus_9", at(1, 0), None)],
                          SERVING_SCHEMAS["gold.segment_membership"]) \
        .write.format("delta").save(lake.path("gold.segment_membership"))
    lake.arrive(event("k0", "add_to_cart", at(1, 11), "u1", price=5.0, quantity=1))
    lake.batch(D)  # H = D+1 00:00
    lake.arrive(event("o1", "order", at(2, 0, 10), "u1", order_id="o1", revenue=5.0, channel="direct"))
    lake.speed()

    served = lake.serving("serving.segment_membership")
    assert sorted((r["segment"], r["customer_id"], r["source"]) for r in served.collect()) == [("big", "cus_9", "speed")]


def test_a_realtime_segment_the_speed_layer_cannot_count_fails_at_start(settings, tmp_path):
    from touchpoint.core.config import ConfigError
    from touchpoint.core.segments import SegmentDefinitionError
    from touchpoint.streaming.speed import realtime_definitions

    segments = tmp_path / "segments"
    segments.mkdir()
    (segments / "slow.yaml").write_text("name: slow\ncondition:\n  behaviour:\n    event_type: page_view\n"
                                        "    at_least: 3\n    within_last_days: 60\n")
    slow = settings.model_copy(update={"segments_dir": segments, "stream": settings.stream.model_copy(
        update={"realtime_segments": ("slow",)})})
    with pytest.raises(SegmentDefinitionError) as error:
        realtime_definitions(slow)
    assert str(error.value) == (
        f"invalid segment definitions:\n  {segments / 'slow.yaml'}:6: condition.behaviour.within_last_days: a 60-day "
        "window is longer than stream.activity_horizon_days (30), as far back as the speed layer counts events; fix: "
        "shorten the window, raise stream.activity_horizon_days, or leave the segment to the daily batch (drop it "
        "from stream.realtime_segments)")
    longer = slow.model_copy(update={"stream": slow.stream.model_copy(update={"activity_horizon_days": 60})})
    assert [d.name for d in realtime_definitions(longer)] == ["slow"]
    typo = slow.model_copy(update={"stream": slow.stream.model_copy(update={"realtime_segments": ("slow", "sloww")})})
    with pytest.raises(ConfigError, match=r"^key 'stream.realtime_segments' .*: \['sloww'\] name no segment file"):
        realtime_definitions(typo)


def test_batch_segment_and_its_realtime_counterpart_agree(spark, settings, tmp_path, lake):
    """The project's own YAML files (segments/cart_abandoners.yaml, segments/active_now.yaml),
    compiled by core.segments: the batch segments job and the speed layer's evaluation agree."""
    import shutil

    from touchpoint.core.identity_lookup import attach_customer_id
    from touchpoint.core.segments import load_segments
    from touchpoint.jobs.segments import members_on, run as run_segments
    from touchpoint.streaming.speed import realtime_members

    folder = tmp_path / "segments"
    folder.mkdir()
    for name in ("cart_abandoners.yaml", "active_now.yaml"):
        shutil.copy(settings.segments_dir / name, folder / name)
    settings = settings.model_copy(update={"segments_dir": folder})

    lake.identity({"u1": "cus_1", "u2": "cus_2", "u3": "cus_3"})
    profiles_as_of = at(2, 0)  # profiles of D, as the segments job requires
    spark.createDataFrame([(c, profiles_as_of) for c in ("cus_1", "cus_2", "cus_3")],
                          "customer_id string, as_of timestamp").write.format("delta") \
        .save(lake.path("gold.customer_profiles"))
    lake.arrive(event("a1", "add_to_cart", at(1, 9), "u1", price=5.0, quantity=1),
                event("a2", "add_to_cart", at(1, 8), "u2", price=5.0, quantity=1),
                event("a3", "order", at(1, 9, 30), "u2", order_id="o9", revenue=5.0, channel="direct"),
                event("a4", "page_view", at(1, 23, 59), "u3", channel="direct"))
    wanted = {"cart_abandoners", "active_now"}
    definitions = [d for d in load_segments(settings.segments_dir) if d.name in wanted]
    run_segments(spark, settings, D)
    batch = sorted((r["segment"], r["customer_id"]) for r in
                   spark.read.format("delta").load(lake.path("gold.segment_membership"))
                   .transform(members_on(D)).where(F.col("segment").isin(*wanted)).collect())
    events = spark.read.format("delta").load(lake.path("silver.events")).transform(
        attach_customer_id(spark.read.format("delta").load(lake.path("gold.identity_map"))))
    base = spark.read.format("delta").load(lake.path("gold.customer_profiles"))
    realtime = sorted(tuple(r) for r in realtime_members(definitions, base, events,
                                                          dt.datetime(2026, 3, 2, tzinfo=UTC)).collect())
    assert batch == realtime == [("active_now", "cus_1"), ("active_now", "cus_2"), ("active_now", "cus_3"),
                                 ("cart_abandoners", "cus_1")]


def test_split_queries_read_bounded_batches_and_write_only_their_views(spark, settings, lake):
    from touchpoint.core.delta import committed_batch
    from touchpoint.streaming.speed import start_queries

    lake.arrive(event("e1", "ad_click", at(1, 10), "u1", "spring"))
    lake.arrive(event("e2", "ad_click", at(1, 10, 20), "u1", "summer", channel="email"),
                event("e3", "order", at(1, 10, 30), "u1", None, channel="direct", order_id="o1", revenue=100.0))
    # A one-byte bound: each micro-batch of either query takes one silver file (the second commit
    # wrote two: one per partition of the two-row frame).
    bounded = lake.settings.model_copy(update={"stream": lake.settings.stream.model_copy(
        update={"speed_max_bytes_per_trigger": 1, "customer_trigger_seconds": 30.0})})
    queries = start_queries(spark, bounded, trigger_once=True)
    for query in queries:
        query.awaitTermination()
        query.stop()
    assert [q.name for q in queries] == ["speed", "speed_customers"]
    assert all(q.exception() is None for q in queries)

    freshness = spark.read.format("delta").load(lake.path("speed.freshness")).where("rows > 0").collect()
    for name in ("speed", "speed_customers"):
        assert sorted((r["first_version"], r["last_version"], r["rows"]) for r in freshness if r["query"] == name) == [
            (1, 1, 1), (2, 2, 1), (2, 2, 1)]
    # Each query wrote its own views only (each commit's batch mark names its writer).
    campaign_tables = ("speed.campaign_minute", "speed.campaign_daily")
    customer_tables = ("speed.campaign_conversions", "speed.customer_activity")
    for table in campaign_tables + customer_tables:
        writer = "speed" if table in campaign_tables else "speed_customers"
        other = "speed_customers" if writer == "speed" else "speed"
        assert committed_batch(lake.path(table), f"{writer}:{table}") is not None, table
        assert committed_batch(lake.path(table), f"{other}:{table}") is None, table
    assert daily(lake.serving()) == [
        (D, None, 0, 0, 1, Decimal("100.000000000"), 0, Decimal("0E-9")),
        (D, "spring", 0, 1, 0, Decimal("0E-9"), 0, Decimal("0E-9")),
        (D, "summer", 0, 1, 0, Decimal("0E-9"), 1, Decimal("100.000000000")),
    ]


def test_a_single_query_deployment_switched_to_split_queries_counts_everything_once(spark, settings, lake):
    """docs/SERVING.md, "Two speed queries": `speed` keeps its checkpoint and from then on writes the
    campaign measures only; `speed_customers` starts without one and reads the feed from its start."""
    from touchpoint.core.delta import committed_batch
    from touchpoint.streaming.speed import start_queries

    lake.arrive(event("e1", "ad_click", at(1, 10), "u1", "spring"),
                event("e2", "ad_impression", at(1, 9), "u1", "spring", channel="display"),
                event("e3", "order", at(1, 10, 30), "u1", None, channel="direct", order_id="o1", revenue=100.0))
    lake.speed()  # one query, `speed`, keeping every view
    assert daily(lake.serving()) == [
        (D, None, 0, 0, 1, Decimal("100.000000000"), 0, Decimal("0E-9")),
        (D, "spring", 1, 1, 0, Decimal("0E-9"), 1, Decimal("100.000000000")),
    ]
    single_batches = committed_batch(lake.path("speed.campaign_daily"), "speed:speed.campaign_daily")

    # While switched over: a late click that takes o1's last touch, and a new customer's click and order.
    lake.arrive(event("e4", "email_click", at(1, 10, 20), "u1", "summer", channel="email"))
    lake.arrive(event("e5", "ad_click", at(2, 1), None, "spring", anonymous_id="a2"),
                event("e6", "order", at(2, 1, 5), "u2", None, channel="direct", order_id="o2", revenue=50.0,
                      anonymous_id="a2"))
    split = lake.settings.model_copy(update={"stream": lake.settings.stream.model_copy(
        update={"customer_trigger_seconds": 30.0})})
    queries = start_queries(spark, split, trigger_once=True)
    for query in queries:
        query.awaitTermination()
        query.stop()
    assert [(q.name, q.exception()) for q in queries] == [("speed", None), ("speed_customers", None)]

    assert daily(lake.serving()) == [
        (D, None, 0, 0, 1, Decimal("100.000000000"), 0, Decimal("0E-9")),
        (D, "spring", 1, 1, 0, Decimal("0E-9"), 0, Decimal("0E-9")),
        (D, "summer", 0, 1, 0, Decimal("0E-9"), 1, Decimal("100.000000000")),
        (D + dt.timedelta(days=1), None, 0, 0, 1, Decimal("50.000000000"), 0, Decimal("0E-9")),
        (D + dt.timedelta(days=1), "spring", 0, 1, 0, Decimal("0E-9"), 1, Decimal("50.000000000")),
    ]
    # `speed` went on from its checkpoint (later batch ids, the new changes only) and wrote no customer
    # view after the switch; `speed_customers` began at batch 0 and re-read the whole feed.
    freshness = spark.read.format("delta").load(lake.path("speed.freshness")).where("rows > 0")
    after = {r["query"]: (r["batch_id"], r["first_version"], r["rows"])
             for r in freshness.where(F.col("batch_id") > single_batches).collect()}
    assert after == {"speed": (single_batches + 1, 2, 3)}
    assert sorted((r["first_version"], r["last_version"], r["rows"]) for r in
                  freshness.where("query = 'speed_customers'").collect()) == [(1, 3, 6)]
    assert committed_batch(lake.path("speed.campaign_conversions"), "speed:speed.campaign_conversions") \
        == single_batches
    assert committed_batch(lake.path("speed.campaign_daily"), "speed:speed.campaign_daily") == single_batches + 1


def test_each_speed_query_runs_alone_and_writes_only_its_own_views(spark, settings, lake):
    """`touchpoint stream speed --views campaigns|customers` (one process per query): the campaign
    query alone serves the measures without last touch; the customer query, started after it in
    its own right, adds the last touch; together they serve what the two queries of one process do."""
    from touchpoint.streaming.speed import start_queries

    lake.arrive(event("e1", "ad_click", at(1, 10), "u1", "spring"),
                event("e2", "order", at(1, 10, 30), "u1", None, channel="direct", order_id="o1", revenue=100.0))
    split = lake.settings.model_copy(update={"stream": lake.settings.stream.model_copy(
        update={"customer_trigger_seconds": 30.0})})

    def run(views):
        queries = start_queries(spark, split, trigger_once=True, views=views)
        for query in queries:
            query.awaitTermination()
            query.stop()
        return [(q.name, q.exception()) for q in queries]

    assert run("campaigns") == [("speed", None)]
    assert daily(lake.serving()) == [
        (D, None, 0, 0, 1, Decimal("100.000000000"), 0, Decimal("0E-9")),
        (D, "spring", 0, 1, 0, Decimal("0E-9"), 0, Decimal("0E-9")),
    ]
    assert run("customers") == [("speed_customers", None)]
    assert daily(lake.serving()) == [
        (D, None, 0, 0, 1, Decimal("100.000000000"), 0, Decimal("0E-9")),
        (D, "spring", 0, 1, 0, Decimal("0E-9"), 1, Decimal("100.000000000")),
    ]
    freshness = spark.read.format("delta").load(lake.path("speed.freshness")).where("rows > 0")
    assert sorted((r["query"], r["rows"]) for r in freshness.collect()) == [("speed", 2), ("speed_customers", 2)]
    assert spark.read.format("delta").load(lake.path("speed.campaign_minute")).count() == 2  # written once

    with pytest.raises(ValueError, match="customer_trigger_seconds"):
        start_queries(spark, lake.settings.model_copy(update={"stream": lake.settings.stream.model_copy(
            update={"customer_trigger_seconds": None})}), trigger_once=True, views="customers")
