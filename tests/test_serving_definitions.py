"""The shared definitions of touchpoint.core.campaign_metrics as pure transforms, and their
agreement with the attribution job's last-touch model (BRIEF §4)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from touchpoint.core.config import AttributionSettings

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
COLUMNS = ("event_id string, event_type string, event_ts timestamp, customer_id string, channel string, "
           "campaign_name string, order_id string, revenue_reporting double, price double, quantity long")


def minutes(n: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=n)


def events(spark, rows):
    full = [(*r, *([None] * (10 - len(r)))) for r in rows]
    return spark.createDataFrame(full, COLUMNS)


def test_last_touch_matches_the_attribution_jobs_last_touch_credits(spark):
    from pyspark.sql import functions as F

    from touchpoint.core.campaign_metrics import conversions, last_touch, touchpoints
    from touchpoint.jobs import attribution_models as job

    cfg = AttributionSettings(lookback_days=1)
    frame = events(spark, [
        ("c1", "ad_click", minutes(0), "A", "paid_search", " spring "),
        ("v1", "page_view", minutes(10), "A", "paid_search", "spring"),  # lands c1: not a touchpoint
        ("v2", "page_view", minutes(20), "A", "referral", None),
        ("o1", "order", minutes(30), "A", "direct", None, "O-1", 10.0),
        ("c2", "email_click", minutes(40), "B", "email", "news"),
        ("c3", "email_click", minutes(40), "B", "email", "later"),  # same instant: the larger event_id wins
        ("o2", "order", minutes(40), "B", "direct", None, "O-2", 5.5),
        ("c4", "ad_click", minutes(-2 * 24 * 60), "C", "display", "old"),  # outside the 1-day lookback
        ("o3", "order", minutes(50), "C", "direct", None, "O-3", 1.0),
        ("o4", "order", minutes(55), None, "direct", None, "O-4", 2.0),  # no customer: empty path
        ("o5", "order", minutes(56), "A", "direct", None, "O-4", 2.0),  # same order id later: a duplicate
    ])
    ours = frame.transform(conversions).transform(last_touch(frame.transform(touchpoints(cfg)), cfg))
    got = sorted((r["conversion_id"], r["last_touch_event_id"], r["last_touch_channel"], r["last_touch_campaign"],
                  r["revenue"]) for r in ours.collect())
    assert got == [("O-1", "v2", "referral", None, Decimal("10.000000000")),
                   ("O-2", "c3", "email", "later", Decimal("5.500000000")),
                   ("O-3", None, "direct", None, Decimal("1.000000000")),
                   ("O-4", None, "direct", None, Decimal("2.000000000"))]
    theirs = (frame.transform(job.conversions)
              .transform(job.with_paths(frame.transform(job.touchpoints(cfg)), cfg))
              .transform(job.credits(cfg, {}, ["last_touch"])))
    assert sorted((r["conversion_id"], r["touch_event_id"], r["channel"], r["campaign"])
                  for r in theirs.where(F.col("credit") > 0).collect()) == [g[:4] for g in got]


def test_campaign_totals_sum_signed_changes_and_customer_activity(spark):
    from touchpoint.core.campaign_metrics import campaign_totals, customer_activity, measure_rows

    frame = events(spark, [
        ("i1", "ad_impression", minutes(0), "A", "display", "spring"),
        ("k1", "ad_click", minutes(0.5), "A", "paid_search", "spring "),
        ("p1", "page_view", minutes(1), "A", "direct", None),
        ("o1", "order", minutes(61), "A", "direct", "", "O-1", 19.99),
        ("a1", "add_to_cart", minutes(62), "A", "direct", None, None, None, 2.5, 2),
        ("a2", "add_to_cart", minutes(70), "A", "direct", None, None, None, 1.0, None),
        ("a3", "add_to_cart", minutes(5), "B", "direct", None, None, None, 4.0, 1),
        ("p2", "page_view", minutes(80), "B", "direct", None),
    ])
    totals = sorted((tuple(r) for r in measure_rows(frame).transform(campaign_totals("date")).collect()),
                    key=lambda r: r[1] or "")
    day = T0.date()
    assert totals == [(day, None, 0, 0, 1, Decimal("19.990000000")), (day, "spring", 1, 1, 0, Decimal("0E-9"))]
    activity = {r["customer_id"]: r for r in frame.transform(customer_activity(minutes(95))).collect()}
    a, b = activity["A"], activity["B"]
    assert (a["last_event_type"], a["events_last_30m"], a["open_cart_value"], a["cart_abandoned"]) == \
        ("add_to_cart", 1, Decimal("6.000000000"), False)  # carts after the order; last one 25 min ago
    assert (b["events_last_30m"], b["page_views_last_30m"], b["open_cart_value"], b["cart_abandoned"]) == \
        (1, 1, Decimal("4.000000000"), True)


def test_revenue_keeps_its_nine_decimals_with_and_without_a_sign(spark):
    """The batch (no sign) and the speed layer (a sign from the change feed) sum the same revenue to
    the last of its 9 decimals: an FX-converted revenue has more than 6."""
    from pyspark.sql import functions as F

    from touchpoint.core.campaign_metrics import campaign_totals, measure_rows

    frame = events(spark, [("o1", "order", minutes(0), "A", "direct", "spring", "O-1", 12.856781549),
                           ("o2", "order", minutes(1), "A", "direct", "spring", "O-2", 18.509259259)])
    batch = measure_rows(frame)
    speed = measure_rows(frame.withColumn("sign", F.when(F.col("event_id") == "o2", -1).otherwise(1)))
    assert [(r["revenue"], r["orders"]) for r in batch.collect()] == [
        (Decimal("12.856781549"), 1), (Decimal("18.509259259"), 1)]
    assert [(r["revenue"], r["orders"]) for r in speed.collect()] == [
        (Decimal("12.856781549"), 1), (Decimal("-18.509259259"), -1)]
    assert [tuple(r) for r in speed.transform(campaign_totals("date")).collect()] == [
        (T0.date(), "spring", 0, 0, 0, Decimal("-5.652477710"))]
