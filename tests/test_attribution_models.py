"""Touchpoints, conversions, paths and credits of BRIEF §4 on hand-built data, with exact expectations."""

import datetime as dt

import pytest
from chispa import assert_df_equality

from touchpoint.core.config import AttributionSettings
from touchpoint.core.identity_lookup import attach_customer_id
from touchpoint.jobs.attribution_checks import (
    AttributionInvariantError, assert_attribution_invariants, attribution_violations,
)
from touchpoint.jobs.attribution_models import (
    CREDIT_COLUMNS, MODELS, PATH_ELEMENT, conversions, credits, daily, lookback_micros, touchpoints,
    training_paths, with_paths,
)

# Pure transforms on small frames: they run with Spark's generated code, as in production (the
# rest of the suite runs interpreted, tests/conftest.py).
pytestmark = pytest.mark.usefixtures("production_codegen")

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
MICRO = dt.timedelta(microseconds=1)
DEFAULTS = AttributionSettings()

EVENTS_SCHEMA = ("event_id string, event_type string, event_ts timestamp, channel string, campaign_name string, "
                 "customer_id string, order_id string, revenue_reporting double")
PATHS_SCHEMA = (f"conversion_id string, conversion_event_id string, customer_id string, conversion_ts timestamp, "
                f"revenue double, path array<{PATH_ELEMENT}>")


def as_collected(instant):
    """PySpark's collect() returns naive datetimes in the Python process's local time zone."""
    return instant.astimezone().replace(tzinfo=None)


def minutes(n):
    return dt.timedelta(minutes=n)


def days(n):
    return dt.timedelta(days=n)


def event(event_id, kind, ts, channel="direct", campaign=None, customer="c1", order_id=None, revenue=None):
    return (event_id, kind, ts, channel, campaign, customer, order_id, revenue)


def touch_ids(spark, rows, settings=DEFAULTS):
    frame = spark.createDataFrame(rows, EVENTS_SCHEMA).transform(touchpoints(settings))
    return sorted(r["touch_event_id"] for r in frame.collect())


LANDING_EVENTS = [
    event("click", "ad_click", T0, "paid_search", " spring "),
    event("land_at_30min", "page_view", T0 + minutes(30), "paid_search", "spring"),  # landing, inclusive
    event("view_after_30min", "page_view", T0 + minutes(30) + MICRO, "paid_search", "spring"),
    event("view_other_campaign", "page_view", T0 + minutes(1), "paid_search", "autumn"),
    event("view_other_channel", "page_view", T0 + minutes(1), "paid_social", "spring"),
    event("view_before_click", "page_view", T0 - MICRO, "paid_search", "spring"),
    event("view_other_customer", "page_view", T0 + minutes(1), "paid_search", "spring", customer="c2"),
    event("mail_click", "email_click", T0 + days(1), "email", None),
    event("mail_landing_same_instant", "page_view", T0 + days(1), "email", None),  # both names missing
    event("direct_view", "page_view", T0 + days(2), "direct"),
    event("direct_click", "ad_click", T0 + days(2), "direct"),  # every click is a touchpoint
    event("organic_view", "page_view", T0 + days(2), "organic_search"),
    event("impression", "ad_impression", T0 + days(2), "display", "banner"),
    event("open", "email_open", T0 + days(2), "email"),
    event("send", "email_send", T0 + days(2), "email"),
    event("order", "order", T0 + days(2), "direct", order_id="o1", revenue=10.0),
    event("anonymous_click", "ad_click", T0 + days(2), "paid_search", customer=None),
]


def test_touchpoints_click_landing_and_event_types(spark):
    assert touch_ids(spark, LANDING_EVENTS) == sorted([
        "click", "view_after_30min", "view_other_campaign", "view_other_channel", "view_before_click",
        "view_other_customer", "mail_click", "direct_click", "organic_view",
    ])


def test_touchpoints_with_the_landing_rule_off_and_view_through_on(spark):
    no_landing = AttributionSettings(landing_window_minutes=0, view_through=True)
    assert touch_ids(spark, LANDING_EVENTS, no_landing) == sorted([
        "click", "land_at_30min", "view_after_30min", "view_other_campaign", "view_other_channel",
        "view_before_click", "view_other_customer", "mail_click", "mail_landing_same_instant", "direct_click",
        "organic_view", "impression",
    ])


def test_touchpoint_columns_and_trimmed_campaign(spark):
    rows = [event("e1", "ad_click", T0, "paid_social", "  summer sale "), event("e2", "ad_click", T0, None, "  ")]
    found = spark.createDataFrame(rows, EVENTS_SCHEMA).transform(touchpoints(DEFAULTS))
    expected = spark.createDataFrame(
        [("e1", "c1", T0, "paid_social", "summer sale"), ("e2", "c1", T0, "direct", None)],
        "touch_event_id string, customer_id string, touch_ts timestamp, channel string, campaign string")
    assert_df_equality(found, expected, ignore_row_order=True, ignore_nullable=True)


def test_conversions_take_the_smallest_ts_then_event_id_per_order(spark):
    rows = [
        event("o-late", "order", T0 + MICRO, order_id="A", revenue=99.0),
        event("o-b", "order", T0, order_id="A", revenue=20.0, customer="c2"),
        event("o-a", "order", T0, order_id=" A ", revenue=10.0),
        event("o-anon", "order", T0, order_id="B", revenue=5.0, customer=None),
        event("o-none", "order", T0, order_id=None, revenue=1.0),
        event("not-an-order", "page_view", T0, order_id="C", revenue=1.0),
    ]
    found = spark.createDataFrame(rows, EVENTS_SCHEMA).transform(conversions)
    expected = spark.createDataFrame(
        [("A", "o-a", "c1", T0, 10.0), ("B", "o-anon", None, T0, 5.0)],
        "conversion_id string, conversion_event_id string, customer_id string, conversion_ts timestamp, "
        "revenue double")
    assert_df_equality(found, expected, ignore_row_order=True, ignore_nullable=True)


def test_paths_lookback_inclusive_ties_by_code_point_and_other_customers(spark):
    conv_ts = T0 + days(40)
    lookback = dt.timedelta(seconds=30 * 86_400)
    rows = [
        event("at-lookback-start", "ad_click", conv_ts - lookback, "display"),
        event("before-lookback", "ad_click", conv_ts - lookback - MICRO, "display"),
        event("b", "ad_click", T0 + days(20), "email"),
        event("a", "ad_click", T0 + days(20), "paid_search"),
        event("B", "ad_click", T0 + days(20), "affiliate"),  # 'B' < 'a' < 'b' in code points
        event("at-conversion", "ad_click", conv_ts, "referral"),
        event("after-conversion", "ad_click", conv_ts + MICRO, "referral"),
        event("someone-else", "ad_click", T0 + days(20), "display", customer="c2"),
        event("order", "order", conv_ts, order_id="o1", revenue=50.0),
        event("anonymous-order", "order", conv_ts, order_id="o2", revenue=7.0, customer=None),
    ]
    events = spark.createDataFrame(rows, EVENTS_SCHEMA)
    paths = events.transform(conversions).transform(with_paths(events.transform(touchpoints(DEFAULTS)), DEFAULTS))
    found = {r["conversion_id"]: [p["touch_event_id"] for p in r["path"]] for r in paths.collect()}
    assert found == {"o1": ["at-lookback-start", "B", "a", "b", "at-conversion"], "o2": []}


def test_path_of_a_customer_whose_devices_were_merged(spark):
    # Two anonymous devices and a login: identity resolved them to one customer, so the clicks
    # seen on the phone before it was ever identified join the path of the order placed on the laptop.
    identity_map = spark.createDataFrame([
        ("anonymous_id", "phone-1", "cust-1"), ("anonymous_id", "laptop-1", "cust-1"),
        ("user_id", "u-1", "cust-1"), ("anonymous_id", "other", "cust-2"),
    ], "identifier_type string, identifier_value string, customer_id string")
    raw = spark.createDataFrame([
        ("e1", "ad_click", T0, "paid_social", "spring", "phone-1", None, None, None),
        ("e2", "email_click", T0 + days(1), "email", "news", "laptop-1", "u-1", None, None),
        ("e3", "ad_click", T0 + days(1), "display", None, "other", None, None, None),
        ("e4", "order", T0 + days(2), "direct", None, "laptop-1", None, "o1", 30.0),
    ], "event_id string, event_type string, event_ts timestamp, channel string, campaign_name string, "
       "anonymous_id string, user_id string, order_id string, revenue_reporting double")
    events = raw.selectExpr("*", "cast(null as string) as email", "cast(null as string) as phone").transform(
        attach_customer_id(identity_map))
    paths = events.transform(conversions).transform(with_paths(events.transform(touchpoints(DEFAULTS)), DEFAULTS))
    [row] = paths.collect()
    assert row["customer_id"] == "cust-1"
    assert [(p["touch_event_id"], p["channel"], p["campaign"]) for p in row["path"]] == [
        ("e1", "paid_social", "spring"), ("e2", "email", "news")]


def element(event_id, ts, channel, campaign=None):
    return (ts, event_id, channel, campaign)


CONV_TS = T0 + days(30)
HAND_PATHS = [
    ("empty", "order-0", None, CONV_TS, 40.0, []),
    ("one", "order-1", "c1", CONV_TS, 10.0, [element("t1", CONV_TS - days(3), "email", "news")]),
    ("two", "order-2", "c2", CONV_TS, 20.0, [
        element("t1", CONV_TS - days(14), "display", "banner"), element("t2", CONV_TS - days(7), "paid_search")]),
    ("repeat", "order-3", "c3", CONV_TS, 100.0, [
        element("t1", CONV_TS - days(21), "a"), element("t2", CONV_TS - days(14), "b"),
        element("t3", CONV_TS - days(7), "b"), element("t4", CONV_TS, "a")]),
    ("unknown", "order-4", "c4", CONV_TS, 8.0, [
        element("t1", CONV_TS - days(1), "x"), element("t2", CONV_TS - days(1), "y"),
        element("t3", CONV_TS - days(1), "y")]),
]
EFFECTS = {"a": 0.5, "b": 0.25, "email": 0.1, "display": 0.0, "paid_search": 0.2}

# (conversion, touch) -> credit per model, worked out by hand.
# time decay: weights 2^(-Δdays/7); "two": 1/4, 1/2 -> 1/3, 2/3; "repeat": 1/8, 1/4, 1/2, 1 -> /(15/8)
# markov "repeat": Σ RE = 0.75, a 0.5/0.75 split over 2 touches = 1/3 each, b 0.25/0.75 / 2 = 1/6 each
# markov "unknown": no removal effect for x or y -> equal split over channels, then touches
EXPECTED = {
    "first_touch": {("empty", None): 1, ("one", "t1"): 1, ("two", "t1"): 1, ("repeat", "t1"): 1,
                    ("unknown", "t1"): 1},
    "last_touch": {("empty", None): 1, ("one", "t1"): 1, ("two", "t2"): 1, ("repeat", "t4"): 1,
                   ("unknown", "t3"): 1},
    "linear": {("empty", None): 1, ("one", "t1"): 1, ("two", "t1"): 1 / 2, ("two", "t2"): 1 / 2,
               ("repeat", "t1"): 1 / 4, ("repeat", "t2"): 1 / 4, ("repeat", "t3"): 1 / 4, ("repeat", "t4"): 1 / 4,
               ("unknown", "t1"): 1 / 3, ("unknown", "t2"): 1 / 3, ("unknown", "t3"): 1 / 3},
    "position_based": {("empty", None): 1, ("one", "t1"): 1, ("two", "t1"): 1 / 2, ("two", "t2"): 1 / 2,
                       ("repeat", "t1"): 0.4, ("repeat", "t2"): 0.1, ("repeat", "t3"): 0.1, ("repeat", "t4"): 0.4,
                       ("unknown", "t1"): 0.4, ("unknown", "t2"): 0.2, ("unknown", "t3"): 0.4},
    "time_decay": {("empty", None): 1, ("one", "t1"): 1, ("two", "t1"): 1 / 3, ("two", "t2"): 2 / 3,
                   ("repeat", "t1"): 1 / 15, ("repeat", "t2"): 2 / 15, ("repeat", "t3"): 4 / 15,
                   ("repeat", "t4"): 8 / 15,
                   ("unknown", "t1"): 1 / 3, ("unknown", "t2"): 1 / 3, ("unknown", "t3"): 1 / 3},
    "markov": {("empty", None): 1, ("one", "t1"): 1, ("two", "t2"): 1,  # display has RE 0: no row
               ("repeat", "t1"): 1 / 3, ("repeat", "t2"): 1 / 6, ("repeat", "t3"): 1 / 6, ("repeat", "t4"): 1 / 3,
               ("unknown", "t1"): 1 / 2, ("unknown", "t2"): 1 / 4, ("unknown", "t3"): 1 / 4},
    "shapley": {("empty", None): 1, ("one", "t1"): 1, ("two", "t1"): 1 / 2, ("two", "t2"): 1 / 2,
                ("repeat", "t1"): 1 / 4, ("repeat", "t2"): 1 / 4, ("repeat", "t3"): 1 / 4, ("repeat", "t4"): 1 / 4,
                ("unknown", "t1"): 1 / 2, ("unknown", "t2"): 1 / 4, ("unknown", "t3"): 1 / 4},
}


@pytest.fixture(scope="module")
def hand_credits(spark):
    paths = spark.createDataFrame(HAND_PATHS, PATHS_SCHEMA)
    return paths, [r.asDict() for r in paths.transform(credits(DEFAULTS, EFFECTS)).collect()]


def test_every_model_on_hand_built_paths(hand_credits):
    _, rows = hand_credits
    revenue = {p[0]: p[4] for p in HAND_PATHS}
    for model in MODELS:
        found = {(r["conversion_id"], r["touch_event_id"]): r["credit"] for r in rows if r["model"] == model}
        assert found == pytest.approx(EXPECTED[model], abs=1e-12), model
        for r in (r for r in rows if r["model"] == model):
            assert r["revenue_credit"] == pytest.approx(r["credit"] * revenue[r["conversion_id"]], abs=1e-12)


def test_time_decay_with_a_short_half_life_and_old_touches_does_not_underflow(spark):
    """Half-life 0.01 days: the weights 2^(-1100) and 2^(-1200) of touches 11 and 12 days before the
    conversion are below the smallest double. Taken from the conversion they were both 0 and the
    credit 0/0 (DIVIDE_BY_ZERO under ANSI); their ratio is 2^100 : 1."""
    short = AttributionSettings(half_life_days=0.01)
    paths = spark.createDataFrame([
        ("old", "order-9", "c9", CONV_TS, 30.0, [element("t1", CONV_TS - days(12), "a"),
                                                  element("t2", CONV_TS - days(11), "b")]),
        ("lone", "order-8", "c8", CONV_TS, 5.0, [element("t1", CONV_TS - days(29), "a")]),
    ], PATHS_SCHEMA)
    found = {(r["conversion_id"], r["touch_event_id"]): r["credit"]
             for r in paths.transform(credits(short, EFFECTS)).where("model = 'time_decay'").collect()}
    assert found == {("old", "t1"): 1 / (2 ** 100 + 1), ("old", "t2"): 2 ** 100 / (2 ** 100 + 1), ("lone", "t1"): 1.0}


def test_credit_rows_carry_the_touchpoint_and_the_empty_path_is_direct(hand_credits):
    _, rows = hand_credits
    empty = sorted((r["model"], r["channel"], r["touch_ts"], r["campaign"], r["customer_id"], r["revenue_credit"])
                   for r in rows if r["conversion_id"] == "empty")
    assert empty == sorted((m, "direct", None, None, None, 40.0) for m in MODELS)
    two_last = [r for r in rows if r["model"] == "last_touch" and r["conversion_id"] == "two"]
    assert [(r["touch_ts"], r["channel"], r["campaign"], r["conversion_ts"], r["customer_id"]) for r in two_last] == [
        (as_collected(CONV_TS - days(7)), "paid_search", None, as_collected(CONV_TS), "c2")]
    assert list(two_last[0].keys()) == list(CREDIT_COLUMNS)


def test_invariants_hold_on_hand_credits_and_catch_each_violation(spark, hand_credits):
    paths, rows = hand_credits
    good = spark.createDataFrame(rows, paths.transform(credits(DEFAULTS, EFFECTS)).schema)
    assert_attribution_invariants(good, paths, lookback_micros(DEFAULTS))

    broken = [dict(r) for r in rows]
    for r in broken:
        if r["model"] == "linear" and r["conversion_id"] == "two":
            r["credit"] = 0.6  # sums to 1.1
        if r["model"] == "first_touch" and r["conversion_id"] == "one":
            r["credit"], r["revenue_credit"] = 1.5, 15.0
        if r["model"] == "last_touch" and r["conversion_id"] == "repeat":
            r["touch_ts"] = CONV_TS + MICRO
    broken = [r for r in broken if not (r["model"] == "shapley" and r["conversion_id"] == "empty")]
    frame = spark.createDataFrame(broken, good.schema)
    found = sorted((v["check"], v["model"], v["conversion_id"])
                   for v in attribution_violations(frame, paths, lookback_micros(DEFAULTS)).collect())
    assert found == sorted([
        ("credits_sum_to_one", "linear", "two"),
        ("credits_sum_to_one", "first_touch", "one"),
        ("credit_in_unit_interval", "first_touch", "one"),
        ("revenue_conserved", "first_touch", None),
        ("touch_inside_window", "last_touch", "repeat"),
        ("credits_sum_to_one", "shapley", "empty"),
        ("revenue_conserved", "shapley", None),
    ])
    with pytest.raises(AttributionInvariantError) as raised:
        assert_attribution_invariants(frame, paths, lookback_micros(DEFAULTS), shown=3)
    header, *shown = str(raised.value).splitlines()
    assert header == "attribution invariants violated (first 3 shown):"
    # the first three in (check, model, conversion_id) order, whatever the partitions
    assert [line.strip().rsplit(": ", 1)[0] for line in shown] == [
        "credit_in_unit_interval: model=first_touch conversion=one",
        "credits_sum_to_one: model=first_touch conversion=one",
        "credits_sum_to_one: model=linear conversion=two"]


def test_daily_sums_credits_per_conversion_date(spark, hand_credits):
    paths, rows = hand_credits
    frame = spark.createDataFrame(rows, paths.transform(credits(DEFAULTS, EFFECTS)).schema)
    found = [r for r in daily(frame).collect() if r["model"] in ("linear", "first_touch")]
    assert {r["date"] for r in found} == {CONV_TS.date()}
    expected = {  # (model, channel, campaign): (conversions, revenue)
        ("first_touch", "direct", None): (1, 40.0), ("first_touch", "email", "news"): (1, 10.0),
        ("first_touch", "display", "banner"): (1, 20.0), ("first_touch", "a", None): (1, 100.0),
        ("first_touch", "x", None): (1, 8.0),
        ("linear", "direct", None): (1, 40.0), ("linear", "email", "news"): (1, 10.0),
        ("linear", "display", "banner"): (0.5, 10.0), ("linear", "paid_search", None): (0.5, 10.0),
        ("linear", "a", None): (0.5, 50.0), ("linear", "b", None): (0.5, 50.0),
        ("linear", "x", None): (1 / 3, 8 / 3), ("linear", "y", None): (2 / 3, 16 / 3),
    }
    keys = [(r["model"], r["channel"], r["campaign"]) for r in found]
    assert sorted(keys, key=str) == sorted(expected, key=str)
    assert {k: r["conversions"] for k, r in zip(keys, found)} == pytest.approx(
        {k: v[0] for k, v in expected.items()}, abs=1e-12)
    assert {k: r["revenue"] for k, r in zip(keys, found)} == pytest.approx(
        {k: v[1] for k, v in expected.items()}, abs=1e-12)


def test_training_paths_with_null_paths_after_the_last_conversion(spark):
    as_of = dt.datetime(2026, 6, 1, tzinfo=UTC)
    lookback = dt.timedelta(days=30)
    training = dt.timedelta(days=90)
    convs = spark.createDataFrame([
        ("k1", "o", "c1", as_of - training, 10.0, [element("t1", as_of - training - days(1), "a")]),
        ("k2", "o", "c1", as_of - days(10), 5.0, [element("t2", as_of - days(12), "a"),
                                                  element("t3", as_of - days(11), "a"),
                                                  element("t4", as_of - days(10), "b")]),
        ("too-old", "o", "c2", as_of - training - MICRO, 1.0, [element("t5", as_of - training - days(2), "a")]),
        ("empty", "o", "c3", as_of - days(1), 3.0, []),
        ("k3", "o", "c4", as_of - days(2), 2.5, [element("t6", as_of - days(3), "a")]),
    ], PATHS_SCHEMA)
    touches = spark.createDataFrame([
        ("t4", "c1", as_of - days(10), "b", None),  # at the last conversion: not after it
        ("t7", "c1", as_of - days(10) + MICRO, "b", None),
        ("t8", "c1", as_of - days(1), "c", None),
        ("t9", "c2", as_of - lookback, "a", None),  # c2's last conversion is long ago: lookback applies
        ("t10", "c2", as_of - lookback - MICRO, "c", None),
        ("t11", "c2", as_of - days(1), "b", "x"),
        ("t12", "c5", as_of - days(3), "b", None),  # never converted: all recent touches
        ("t13", "c5", as_of - days(3), "a", None),
        ("t14", "c6", as_of - days(2), "b", None),
        ("t15", "c6", as_of - days(1), "a", None),
        ("t16", "c4", as_of - days(3), "a", None),  # before c4's conversion: no null path
    ], "touch_event_id string, customer_id string, touch_ts timestamp, channel string, campaign string")
    as_of_us = (as_of - dt.datetime(1970, 1, 1, tzinfo=UTC)) // MICRO
    found = training_paths(convs, touches, as_of_us, DEFAULTS)
    expected = spark.createDataFrame([
        ("a", 2, 12.5, 0), ("a > a > b", 1, 5.0, 0), ("b > c", 0, 0.0, 1), ("a > b", 0, 0.0, 1),
        ("b > a", 0, 0.0, 2),  # c5's tie on touch_ts is ordered by event id: t12 (b) before t13 (a)
    ], "path string, total_conversions long, total_conversion_value double, total_null long")
    assert_df_equality(found, expected, ignore_row_order=True, ignore_nullable=True)
