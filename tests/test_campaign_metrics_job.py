"""The campaign_metrics job (BRIEF §7): incremental runs write exactly what a full derivation writes."""

from __future__ import annotations

from decimal import Decimal

import pytest
from chispa import assert_df_equality

from test_identity_support import (
    append_silver, date, expected_customer_id, restore_delta_state, rows_of, small_delta_state, ts,
)

TABLES = ("gold.campaign_conversions", "gold.campaign_minute", "gold.campaign_daily", "gold.customer_activity")
KEYS = {"gold.campaign_conversions": ["conversion_id"], "gold.campaign_minute": ["minute", "campaign"],
        "gold.campaign_daily": ["date", "campaign"], "gold.customer_activity": ["customer_id"]}


@pytest.fixture(autouse=True, scope="module")
def _small_delta_state(spark):
    previous = small_delta_state(spark)
    yield
    restore_delta_state(spark, previous)


def _money(value: str) -> Decimal:
    return Decimal(value).quantize(Decimal("1E-9"))


def _snapshot(spark, settings) -> dict:
    """The four tables at their current versions."""
    from touchpoint.core.catalog import table_path
    from touchpoint.core.delta import latest_version, read_version

    return {name: read_version(spark, table_path(name, settings), latest_version(spark, table_path(name, settings)))
            for name in TABLES}


def _assert_equals_full_run(spark, settings, logical_date, incremental: dict) -> None:
    """A full derivation from the same inputs writes the same rows in every table."""
    from touchpoint.jobs import campaign_metrics

    full = campaign_metrics.run(spark, settings, logical_date, mode="full")
    assert (full["mode"], full["derivation"]) == ("full", "all customers: full recompute requested")
    for name, derived in _snapshot(spark, settings).items():
        order = KEYS[name]
        assert_df_equality(incremental[name].orderBy(*order), derived.orderBy(*order), ignore_nullable=True)


def _daily(tables: dict) -> list[tuple]:
    return rows_of(tables["gold.campaign_daily"], "date", "campaign", "impressions", "clicks", "orders", "revenue",
                   "last_touch_orders", "last_touch_revenue")


def _conversions(tables: dict) -> list[tuple]:
    return rows_of(tables["gold.campaign_conversions"], "conversion_id", "customer_id", "revenue",
                   "last_touch_event_id", "last_touch_channel", "last_touch_campaign")


@pytest.mark.slow
def test_incremental_campaign_metrics_equal_a_full_derivation(spark, settings):
    """Day by day, through a late click that takes a conversion's last touch, a merge, an order id won
    by another customer's earlier order event and then given back by its erasure (to a customer who
    did not change), a new customer, events crossing the as-of, and a rerun of an earlier date."""
    from delta.tables import DeltaTable

    from touchpoint.core.catalog import table_path
    from touchpoint.core.config import load_settings
    from touchpoint.jobs import campaign_metrics, identity

    default_settings = settings
    settings = load_settings(lake_root=settings.lake_root, spark_shuffle_partitions=2, jars_dir=str(settings.jars_dir),
                             campaign_metrics={"incremental_min_events": 0})
    cid = expected_customer_id
    a, c, d, e = cid("anonymous_id", "a-a"), cid("user_id", "c-u"), cid("anonymous_id", "d-a"), cid("anonymous_id", "e-a")
    append_silver(spark, settings, [
        dict(event_id="i1", event_ts=ts(1, 8), event_type="identify", anonymous_id="a-a", user_id="a-u"),
        dict(event_id="c1", event_ts=ts(1, 9), event_type="ad_click", anonymous_id="a-a", channel="paid_search",
             campaign_name="spring"),
        dict(event_id="c2", event_ts=ts(1, 9, 30), event_type="ad_impression", anonymous_id="b-a", channel="display",
             campaign_name="spring"),
        dict(event_id="c5", event_ts=ts(1, 10), event_type="order", anonymous_id="a-a", order_id="o-1",
             revenue_reporting=30.5),
        dict(event_id="c4", event_ts=ts(1, 11), event_type="email_click", user_id="c-u", channel="email",
             campaign_name="newsletter"),
        dict(event_id="c3", event_ts=ts(1, 12), event_type="order", user_id="c-u", order_id="o-9",
             revenue_reporting=50.0),
        dict(event_id="c6", event_ts=ts(1, 14), anonymous_id="f-a", channel="display", campaign_name="retarget"),
    ])
    identity.run(spark, settings, date(1))
    first = campaign_metrics.run(spark, settings, date(1))
    assert (first["mode"], first["derivation"], first["conversions"]) == ("full", "all customers: first run", 2)

    append_silver(spark, settings, [
        dict(event_id="k2", event_ts=ts(1, 9, 45), event_type="ad_click", anonymous_id="a-a", channel="paid_social",
             campaign_name="summer"),  # late: A's last touch for o-1 now
        dict(event_id="i2", event_ts=ts(2, 9), event_type="identify", anonymous_id="b-a", user_id="a-u"),
        dict(event_id="e9", event_ts=ts(1, 11, 30), event_type="order", anonymous_id="d-a", order_id="o-9",
             revenue_reporting=40.0),  # earlier than C's order event of o-9: the conversion is D's now
        dict(event_id="k3", event_ts=ts(2, 9), event_type="ad_click", anonymous_id="e-a", channel="paid_search",
             campaign_name="summer"),
        dict(event_id="e10", event_ts=ts(2, 10), event_type="order", anonymous_id="e-a", order_id="o-10",
             revenue_reporting=20.0),
        dict(event_id="e11", event_ts=ts(3, 1), anonymous_id="f-a", channel="display",
             campaign_name="retarget"),  # after day 2's as-of
    ])
    identity.run(spark, settings, date(2))
    second = campaign_metrics.run(spark, settings, date(2))
    # A (late click, b-a joined), B (b-a left it), D (order), E (new), F (an event after the as-of)
    assert (second["mode"], second["derivation"], second["conversions"]) == (
        "incremental", "changed customers: 5", 3)
    day_2 = _snapshot(spark, settings)
    assert _conversions(day_2) == [
        ("o-1", a, _money("30.5"), "k2", "paid_social", "summer"),
        ("o-10", e, _money("20"), "k3", "paid_search", "summer"),
        ("o-9", d, _money("40"), None, "direct", None),
    ]
    d1, d2, d3 = date(1), date(2), date(3)
    zero = _money("0")
    assert _daily(day_2) == [  # rows_of sorts a null campaign last
        (d1, "newsletter", 0, 1, 0, zero, 0, zero),
        (d1, "spring", 1, 1, 0, zero, 0, zero),
        (d1, "summer", 0, 1, 0, zero, 1, _money("30.5")),
        (d1, None, 0, 0, 3, _money("120.5"), 1, _money("40")),
        (d2, "summer", 0, 1, 0, zero, 1, _money("20")),
        (d2, None, 0, 0, 1, _money("20"), 0, zero),
    ]
    _assert_equals_full_run(spark, settings, date(2), day_2)

    DeltaTable.forPath(spark, table_path("silver.events", settings)).delete("event_id = 'e9'")  # an erasure
    append_silver(spark, settings, [
        dict(event_id="i3", event_ts=ts(3, 9), event_type="ad_impression", anonymous_id="f-a", channel="display",
             campaign_name="spring"),
    ])
    identity.run(spark, settings, date(3))
    third = campaign_metrics.run(spark, settings, date(3))
    # D (its order erased) and F (e11 crossed the as-of, i3); o-9 goes back to C, who did not change
    assert (third["mode"], third["derivation"]) == ("incremental", "changed customers: 2")
    day_3 = _snapshot(spark, settings)
    assert _conversions(day_3) == [
        ("o-1", a, _money("30.5"), "k2", "paid_social", "summer"),
        ("o-10", e, _money("20"), "k3", "paid_search", "summer"),
        ("o-9", c, _money("50"), "c4", "email", "newsletter"),
    ]
    day_3_daily = [
        (d1, "newsletter", 0, 1, 0, zero, 1, _money("50")),
        (d1, "spring", 1, 1, 0, zero, 0, zero),
        (d1, "summer", 0, 1, 0, zero, 1, _money("30.5")),
        (d1, None, 0, 0, 2, _money("80.5"), 0, zero),
        (d2, "summer", 0, 1, 0, zero, 1, _money("20")),
        (d2, None, 0, 0, 1, _money("20"), 0, zero),
    ]
    assert _daily(day_3) == [*day_3_daily, (d3, "spring", 1, 0, 0, zero, 0, zero)]
    _assert_equals_full_run(spark, settings, date(3), day_3)

    # A rerun of day 2 after day 3: the as-of moves back, and i3 leaves the totals again.
    identity.run(spark, settings, date(2))
    rerun = campaign_metrics.run(spark, settings, date(2))
    assert rerun["mode"] == "incremental"
    again = _snapshot(spark, settings)
    assert _daily(again) == day_3_daily
    _assert_equals_full_run(spark, settings, date(2), again)

    # By default a lake this small is derived in full: the same rows.
    small = campaign_metrics.run(spark, default_settings, date(2))
    assert (small["mode"], small["derivation"]) == ("full", "all customers: silver holds 13 events, fewer than 1,000,000")
    assert _daily(_snapshot(spark, settings)) == day_3_daily

    # A commit of someone else's to one of the tables hides the state: a full run.
    spark.sql(f"ALTER TABLE delta.`{table_path('gold.campaign_daily', settings)}` "
              "SET TBLPROPERTIES ('touchpoint.test' = 'x')")
    foreign = campaign_metrics.run(spark, settings, date(2))
    assert (foreign["mode"], foreign["derivation"]) == (
        "full", "all customers: the last commit of gold.campaign_daily is not a campaign_metrics run")
    assert _daily(_snapshot(spark, settings)) == day_3_daily

    # Changed attribution settings change last touches: a full run.
    changed = load_settings(lake_root=settings.lake_root, spark_shuffle_partitions=2, jars_dir=str(settings.jars_dir),
                            campaign_metrics={"incremental_min_events": 0}, attribution={"lookback_days": 1})
    refit = campaign_metrics.run(spark, changed, date(2))
    assert (refit["mode"], refit["derivation"]) == ("full", "all customers: attribution settings changed")


def test_signed_silver_changes_add_up_to_the_difference_of_two_cuts(spark, settings):
    """Σ sign over the rows = events below the new as-of at the new version minus events below the
    old as-of at the old version, whichever way the as-of moved."""
    from pyspark.sql import functions as F

    from touchpoint.core.catalog import table_path
    from touchpoint.core.dates import as_of_for
    from touchpoint.core.delta import latest_version, read_version
    from touchpoint.jobs.input_changes import signed_silver_changes

    path = table_path("silver.events", settings)
    append_silver(spark, settings, [dict(event_id=f"s{i}", event_ts=ts(day, 10)) for i, day in enumerate((1, 2, 3))])
    before = latest_version(spark, path)
    append_silver(spark, settings, [dict(event_id="late", event_ts=ts(1, 11)), dict(event_id="new", event_ts=ts(3, 5))])
    spark.sql(f"DELETE FROM delta.`{path}` WHERE event_id = 's1'")
    after = latest_version(spark, path)
    silver = read_version(spark, path, after)

    def signed(since_day: int, day: int) -> list[tuple]:
        rows = signed_silver_changes(spark, path, silver, before, after, as_of_for(date(since_day)),
                                     as_of_for(date(day)), ("event_id",))
        return rows_of(rows.groupBy("event_id").agg(F.sum("sign").alias("sign")).where("sign != 0"))

    # forward from day 1 (s0) to day 3 (s0, late, s2, new): +late, +s2, +new; s1 (day 2) was deleted
    assert signed(1, 3) == [("late", 1), ("new", 1), ("s2", 1)]
    # backward from day 3 (s0, s1, s2) to day 1 (s0, late): +late, -s1, -s2
    assert signed(3, 1) == [("late", 1), ("s1", -1), ("s2", -1)]
