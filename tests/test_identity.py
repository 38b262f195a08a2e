"""Identity resolution (BRIEF §5): exact components on hand-built graphs, guardrails, stable ids,
incremental runs equal to a full rebuild, and agreement with an independent union-find."""

from __future__ import annotations

import random
import shutil

import pytest
from pyspark.sql import functions as F

from touchpoint.core.catalog import table_path

from test_identity_support import (
    append_silver, customer_of, date, expected_customer_id, identity_rows, partition_of, read_table,
    restore_delta_state, rows_of, small_delta_state, table_rows, ts, union_find_partition,
)

BLOCKLIST = {"null", "undefined", "none", "nil", "nan", "n/a", "unknown", "test@example.com"}


@pytest.fixture(autouse=True, scope="module")
def _small_delta_state(spark):
    previous = small_delta_state(spark)
    yield
    restore_delta_state(spark, previous)


def _ev(event_id, event_ts, **identifiers):
    return {"event_id": event_id, "event_ts": event_ts, **identifiers}


def A(value):
    return ("anonymous_id", value)


def U(value):
    return ("user_id", value)


def E(value):
    return ("email", value)


def P(value):
    return ("phone", value)


HAND_BUILT = [
    # a chain through every identifier type
    _ev("c1", ts(1, 1, 0), anonymous_id="ch-a1", user_id="ch-u1"),
    _ev("c2", ts(1, 1, 10), anonymous_id="ch-a1", email="ch1@x.io"),
    _ev("c3", ts(1, 1, 20), email="ch1@x.io", phone="+15550001"),
    _ev("c4", ts(1, 1, 30), phone="+15550001", anonymous_id="ch-a2"),
    _ev("c5", ts(1, 1, 40), anonymous_id="ch-a2", user_id="ch-u2"),
    # a star around one email
    *[_ev(f"s{i}", ts(1, 2, i), email="hub@x.io", anonymous_id=f"st-a{i}") for i in range(1, 5)],
    # blocklisted values (any case, any type) and all-zero ids are absent: they link nothing
    _ev("b1", ts(1, 3, 0), anonymous_id="bl-a1", user_id="NULL"),
    _ev("b2", ts(1, 3, 1), anonymous_id="bl-a2", user_id="null"),
    _ev("b3", ts(1, 3, 2), anonymous_id="bl-a3", email="test@example.com"),
    _ev("b4", ts(1, 3, 3), anonymous_id="bl-a4", email="test@example.com"),
    _ev("b5", ts(1, 3, 4), anonymous_id="N/A", user_id="bl-u5"),
    _ev("b6", ts(1, 3, 5), anonymous_id="Undefined", user_id="bl-u6"),
    _ev("b7", ts(1, 3, 6), anonymous_id="00000000-0000-0000-0000-000000000000", user_id="bl-u7"),
    _ev("b8", ts(1, 3, 7), anonymous_id="bl-a8", user_id="0"),
    _ev("b9", ts(1, 3, 8), anonymous_id="bl-a9", phone="+000000"),
    _ev("b10", ts(1, 3, 9), anonymous_id="bl-a10", user_id="0 0_-+"),
    _ev("b11", ts(1, 3, 10), anonymous_id="--__", user_id="bl-u11"),  # no 0: not all-zero, it links
    _ev("b12", ts(1, 3, 11), user_id="nan"),  # nothing usable: no customer
    # a device with exactly 3 users still links
    *[_ev(f"l{i}", ts(1, 4, i), anonymous_id="dev-3", user_id=f"lim-u{i}") for i in range(1, 4)],
    # a device with 4 users is shared: it links nothing and is its own customer
    *[_ev(f"o{i}", ts(1, 5, i), anonymous_id="dev-4", user_id=f"ovr-u{i}") for i in range(1, 5)],
    _ev("o5", ts(1, 5, 5), anonymous_id="dev-4", email="ovr@x.io"),
    _ev("o6", ts(1, 5, 6), anonymous_id="dev-4"),
    # blocklisted user_ids do not count towards the limit
    *[_ev(f"k{i}", ts(1, 6, i), anonymous_id="dev-b", user_id=f"bc-u{i}") for i in range(1, 4)],
    _ev("k4", ts(1, 6, 4), anonymous_id="dev-b", user_id="unknown"),
    _ev("k5", ts(1, 6, 5), anonymous_id="dev-b", user_id="UNKNOWN"),
    # identifier types are separate namespaces
    _ev("n1", ts(1, 7, 0), anonymous_id="same", email="ns@x.io"),
    _ev("n2", ts(1, 7, 1), user_id="same"),
]

HAND_BUILT_PARTITION = {
    frozenset({A("ch-a1"), U("ch-u1"), E("ch1@x.io"), P("+15550001"), A("ch-a2"), U("ch-u2")}),
    frozenset({E("hub@x.io"), A("st-a1"), A("st-a2"), A("st-a3"), A("st-a4")}),
    *[frozenset({A(v)}) for v in ("bl-a1", "bl-a2", "bl-a3", "bl-a4", "bl-a8", "bl-a9", "bl-a10")],
    *[frozenset({U(v)}) for v in ("bl-u5", "bl-u6", "bl-u7")],
    frozenset({A("--__"), U("bl-u11")}),
    frozenset({A("dev-3"), U("lim-u1"), U("lim-u2"), U("lim-u3")}),
    frozenset({A("dev-4")}), *[frozenset({U(f"ovr-u{i}")}) for i in range(1, 5)], frozenset({E("ovr@x.io")}),
    frozenset({A("dev-b"), U("bc-u1"), U("bc-u2"), U("bc-u3")}),
    frozenset({A("same"), E("ns@x.io")}), frozenset({U("same")}),
}


def test_hand_built_graphs_resolve_exactly(spark, settings):
    from touchpoint.jobs import identity

    append_silver(spark, settings, HAND_BUILT)
    summary = identity.run(spark, settings, date(1))
    assert (summary["mode"], summary["shared_devices"], summary["blocklisted"]) == ("full", 1, 12)

    rows = identity_rows(settings)
    assert partition_of(rows) == HAND_BUILT_PARTITION
    assert partition_of(rows) == union_find_partition(HAND_BUILT, BLOCKLIST, 3)  # the independent reference
    ids = customer_of(rows)
    # The id comes from the anchor: smallest (first_seen, type, value). ch-a1 and ch-u1 tie at 01:00.
    assert ids[A("ch-a1")] == expected_customer_id("anonymous_id", "ch-a1")
    assert ids[E("hub@x.io")] == expected_customer_id("anonymous_id", "st-a1")  # ties with the email at 02:01
    assert ids[A("dev-4")] == expected_customer_id("anonymous_id", "dev-4")
    seen = {(r[0], r[1]): (r[3], r[4]) for r in rows}
    assert seen[E("hub@x.io")] == (ts(1, 2, 1), ts(1, 2, 4))
    assert seen[A("dev-4")] == (ts(1, 5, 1), ts(1, 5, 6))

    guardrails = table_rows(settings, "gold.identity_guardrails", "identifier_type",
                            "identifier_value", "reason", "distinct_user_ids", "first_seen", "last_seen")
    assert guardrails == sorted([
        ("user_id", "NULL", "blocklist", None, ts(1, 3, 0), ts(1, 3, 0)),
        ("user_id", "null", "blocklist", None, ts(1, 3, 1), ts(1, 3, 1)),
        ("email", "test@example.com", "blocklist", None, ts(1, 3, 2), ts(1, 3, 3)),
        ("anonymous_id", "N/A", "blocklist", None, ts(1, 3, 4), ts(1, 3, 4)),
        ("anonymous_id", "Undefined", "blocklist", None, ts(1, 3, 5), ts(1, 3, 5)),
        ("anonymous_id", "00000000-0000-0000-0000-000000000000", "all_zero", None, ts(1, 3, 6), ts(1, 3, 6)),
        ("user_id", "0", "all_zero", None, ts(1, 3, 7), ts(1, 3, 7)),
        ("phone", "+000000", "all_zero", None, ts(1, 3, 8), ts(1, 3, 8)),
        ("user_id", "0 0_-+", "all_zero", None, ts(1, 3, 9), ts(1, 3, 9)),
        ("user_id", "nan", "blocklist", None, ts(1, 3, 11), ts(1, 3, 11)),
        ("user_id", "unknown", "blocklist", None, ts(1, 6, 4), ts(1, 6, 4)),
        ("user_id", "UNKNOWN", "blocklist", None, ts(1, 6, 5), ts(1, 6, 5)),
        ("anonymous_id", "dev-4", "shared_device", 4, ts(1, 5, 1), ts(1, 5, 6)),
    ])


# Multi-day scenario. Rows are appended between runs as the ingest would, late arrivals included.
DAY_1 = [
    _ev("x1", ts(1, 9), anonymous_id="x-a", user_id="x-u"),
    _ev("y1", ts(1, 10), anonymous_id="y-a", email="y@x.io"),
    _ev("du1", ts(1, 8), user_id="d-u1"),
    _ev("dv1", ts(1, 11), anonymous_id="dev", user_id="d-u1"),
    _ev("dv2", ts(1, 11, 10), anonymous_id="dev", user_id="d-u2"),
    _ev("dv3", ts(1, 11, 20), anonymous_id="dev", user_id="d-u3"),
    _ev("z1", ts(1, 12), anonymous_id="z-a", phone="+4420"),
    _ev("f1", ts(2, 5), anonymous_id="fut-a"),  # already arrived, but after the as-of of day 1
]
DAY_2 = [
    _ev("m1", ts(2, 10), user_id="x-u", email="y@x.io"),  # merges X and Y: X is older
    _ev("late1", ts(1, 13), anonymous_id="z-a", user_id="z-u"),  # late row for day 1: Z only grows
]
DAY_3 = [
    _ev("dv4", ts(3, 9), anonymous_id="dev", user_id="d-u4"),  # dev now has 4 users: shared, stops linking
]
DAY_4 = [
    _ev("late2", ts(1, 8, 30), anonymous_id="early-a", user_id="x-u"),  # earlier than x-a: X only grows
    _ev("w1", ts(4, 9), anonymous_id="w-a"),
]


def _full_rebuild_map(spark, settings, day, previous_rows):
    """What a full rebuild over the current silver gives, via the pure resolver (no tables written),
    keeping the ids of the previous run's map (`previous_rows`, as identity_rows gives them)."""
    from touchpoint.jobs.identity import IDENTITY_MAP_SCHEMA, resolve
    from touchpoint.core.identity_graph import LakeCheckpointer
    from touchpoint.jobs.identity_rules import Guardrails
    from touchpoint.core.dates import as_of_for

    events = read_table(spark, settings, "silver.events").where(F.col("event_ts") < F.lit(as_of_for(date(day))))
    previous_map = spark.createDataFrame(previous_rows, IDENTITY_MAP_SCHEMA)
    with LakeCheckpointer(spark, str(settings.state_path / "scratch"), local=True) as checkpoint:
        result = resolve(events, None, Guardrails.from_settings(settings.identity), checkpoint,
                         previous_map=previous_map)
        return rows_of(result.identity_map,
                       "identifier_type", "identifier_value", "customer_id", "first_seen", "last_seen")


def _merges(settings):
    return table_rows(settings, "gold.identity_merges",
                      "old_customer_id", "new_customer_id", "merged_at", "linking_event_id", "kind", "as_of")


def test_incremental_days_equal_full_rebuild_with_merges_splits_and_late_data(spark, settings):
    from touchpoint.jobs import identity, profiles

    cid = expected_customer_id
    append_silver(spark, settings, DAY_1)
    first = identity.run(spark, settings, date(1))
    day1 = identity_rows(settings)
    assert first["mode"] == "full"
    assert partition_of(day1) == {
        frozenset({A("x-a"), U("x-u")}), frozenset({A("y-a"), E("y@x.io")}),
        frozenset({U("d-u1"), A("dev"), U("d-u2"), U("d-u3")}), frozenset({A("z-a"), P("+4420")}),
    }

    append_silver(spark, settings, DAY_2)
    second = identity.run(spark, settings, date(2))
    day2 = identity_rows(settings)
    assert (second["mode"], second["partitions_read"]) == ("incremental", ["2026-03-01", "2026-03-02"])
    assert day2 == _full_rebuild_map(spark, settings, 2, day1)
    ids = customer_of(day2)
    assert ids[E("y@x.io")] == ids[A("x-a")] == cid("anonymous_id", "x-a")  # the older id survives
    assert ids[U("z-u")] == ids[A("z-a")] == cid("anonymous_id", "z-a")  # grew: kept its id
    assert ids[A("fut-a")] == cid("anonymous_id", "fut-a")
    assert _merges(settings) == [
        (cid("anonymous_id", "y-a"), cid("anonymous_id", "x-a"), ts(2, 10), "m1", "merge", ts(3)),
    ]

    append_silver(spark, settings, DAY_3)
    third = identity.run(spark, settings, date(3))
    day3 = identity_rows(settings)
    assert (third["partitions_read"], third["shared_devices"], third["splits"]) == (["2026-03-03"], 1, 3)
    assert day3 == _full_rebuild_map(spark, settings, 3, day2)
    ids = customer_of(day3)
    # The part holding the anchor (d-u1, seen first) keeps the id; the others get their own.
    assert ids[U("d-u1")] == cid("user_id", "d-u1")
    assert {ids[A("dev")], ids[U("d-u2")], ids[U("d-u3")], ids[U("d-u4")]} == {
        cid("anonymous_id", "dev"), cid("user_id", "d-u2"), cid("user_id", "d-u3"), cid("user_id", "d-u4")}
    splits = table_rows(settings, "gold.identity_splits", "old_customer_id", "new_customer_id", "as_of")
    assert splits == sorted((cid("user_id", "d-u1"), new, ts(4)) for new in (
        cid("anonymous_id", "dev"), cid("user_id", "d-u2"), cid("user_id", "d-u3")))

    append_silver(spark, settings, DAY_4)
    fourth = identity.run(spark, settings, date(4))
    day4 = identity_rows(settings)
    assert fourth["partitions_read"] == ["2026-03-01", "2026-03-04"]
    assert day4 == _full_rebuild_map(spark, settings, 4, day3)
    # early-a, seen before x-a (the anchor that minted X's id), joined X late: X only grew and keeps its id
    assert customer_of(day4)[A("early-a")] == customer_of(day4)[A("x-a")] == cid("anonymous_id", "x-a")
    assert customer_of(day4)[A("w-a")] == cid("anonymous_id", "w-a")
    # ... whereas with no previous map the anchor, early-a, mints the id
    assert customer_of(_full_rebuild_map(spark, settings, 4, []))[A("x-a")] == cid("anonymous_id", "early-a")
    merges = _merges(settings)
    assert merges == [(cid("anonymous_id", "y-a"), cid("anonymous_id", "x-a"), ts(2, 10), "m1", "merge", ts(3))]

    # Profiles from the incremental state equal profiles from a forced full rebuild of the same date,
    # which also rewrites the same map and (replacing its own slice) the same merges.
    profiles.run(spark, settings, date(4))
    incremental_profiles = rows_of(read_table(spark, settings, "gold.customer_profiles"))
    rebuilt = identity.run(spark, settings, date(4), full_rebuild=True)
    assert rebuilt["mode"] == "full"
    assert identity_rows(settings) == day4
    assert _merges(settings) == merges
    profiles.run(spark, settings, date(4))
    assert rows_of(read_table(spark, settings, "gold.customer_profiles")) == incremental_profiles
    assert len(incremental_profiles) == len(set(customer_of(day4).values()))


@pytest.fixture(scope="module")
def x_after_day_1(spark, _small_delta_state, tmp_path_factory, lake_settings):
    """A lake where x1 (x-a with x-u, day 1) arrived and identity ran for day 1: the shared start of
    the two rerun tests below, built once; each copies it (shutil.copytree) to its own lake."""
    from touchpoint.jobs import identity

    lake_dir = tmp_path_factory.mktemp("x_after_day_1") / "lake"
    settings = lake_settings(lake_dir)
    append_silver(spark, settings, [_ev("x1", ts(1, 9), anonymous_id="x-a", user_id="x-u")])
    identity.run(spark, settings, date(1))
    return lake_dir


def test_a_rebuild_without_the_previous_state_keeps_the_ids_of_the_map(spark, settings, x_after_day_1):
    """Late data made an id's origin other than its anchor; a rerun without the previous run's state
    (its log or tables gone: vacuumed, re-staged) rebuilds from silver and still keeps the map's ids."""
    from delta.tables import DeltaTable

    from touchpoint.core.catalog import table_path
    from touchpoint.jobs import identity

    cid = expected_customer_id
    shutil.copytree(x_after_day_1, settings.lake_uri)  # x1 arrived, identity ran for day 1
    append_silver(spark, settings, [_ev("late", ts(1, 8, 30), anonymous_id="early-a", user_id="x-u"),
                                    _ev("y1", ts(2, 9), anonymous_id="y-a")])
    assert identity.run(spark, settings, date(2))["mode"] == "incremental"
    kept = identity_rows(settings)
    assert set(customer_of(kept).values()) == {cid("anonymous_id", "x-a"), cid("anonymous_id", "y-a")}
    # the run log of day 1 is gone: day 2's rerun has no previous run to start from
    DeltaTable.forPath(spark, table_path("gold.identity_runs", settings)).delete("logical_date < DATE'2026-03-02'")
    rerun = identity.run(spark, settings, date(2))
    assert (rerun["mode"], rerun["reason"], rerun["merges"], rerun["splits"]) == ("full", "no previous run", 0, 0)
    assert identity_rows(settings) == kept


def test_a_rerun_after_vacuum_removed_the_previous_state_rebuilds_instead_of_failing(spark, settings, x_after_day_1):
    """Day 1's state is still in the log but VACUUM deleted its files (a rerun of a date older than
    the VACUUM retention): the rerun of day 2 takes it as gone, rebuilds and keeps the map's ids."""
    from touchpoint.core.catalog import table_path
    from touchpoint.jobs import identity
    from touchpoint.jobs.privacy import purge_files

    shutil.copytree(x_after_day_1, settings.lake_uri)  # x1 arrived, identity ran for day 1
    append_silver(spark, settings, [_ev("x2", ts(2, 9), anonymous_id="x-a", email="x@x.io"),
                                    _ev("y1", ts(2, 9), anonymous_id="y-a")])
    assert identity.run(spark, settings, date(2))["mode"] == "incremental"
    kept = identity_rows(settings)
    for name in ("gold.identity_map", "gold.identity_edges", "gold.identity_guardrails"):
        purge_files(spark, table_path(name, settings), 0)
    rerun = identity.run(spark, settings, date(2))
    assert (rerun["mode"], rerun["merges"], rerun["splits"]) == ("full", 0, 0)
    assert identity_rows(settings) == kept


def test_a_rerun_without_the_previous_state_keeps_the_merges_its_date_logged(spark, settings):
    """Day 1's state gone (VACUUM here; on an object-store lake every re-staged rerun): the map as it
    stands is day 2's own output, against which day 2 merged nothing. Before, the rerun replaced
    day 2's logged merge with that empty diff, and segments and erasures lost the retired id."""
    from touchpoint.core.catalog import table_path
    from touchpoint.jobs import identity
    from touchpoint.jobs.privacy import purge_files

    cid = expected_customer_id
    append_silver(spark, settings, [_ev("r1", ts(1, 9), anonymous_id="r-a1", user_id="r-u1"),
                                    _ev("r2", ts(1, 10), anonymous_id="r-a2"),
                                    _ev("r4", ts(1, 11), anonymous_id="r-a4")])
    identity.run(spark, settings, date(1))
    append_silver(spark, settings, [_ev("r3", ts(2, 9), anonymous_id="r-a2", user_id="r-u1")])
    assert identity.run(spark, settings, date(2))["merges"] == 1
    kept = identity_rows(settings)
    merge = (cid("anonymous_id", "r-a2"), cid("anonymous_id", "r-a1"), ts(2, 9), "r3", "merge", ts(3))
    assert _merges(settings) == [merge]
    for name in ("gold.identity_map", "gold.identity_edges", "gold.identity_guardrails"):
        purge_files(spark, table_path(name, settings), 0)

    rerun = identity.run(spark, settings, date(2))

    assert (rerun["mode"], rerun["reason"], rerun["merges"], rerun["splits"]) == (
        "full", "previous state not found", 1, 0)
    assert _merges(settings) == [merge]
    assert identity_rows(settings) == kept

    # A late event of day 2 merges r-a4 too: against the map as it stands (day 2's own output, the
    # latest date run) the rerun logs that merge beside the one kept.
    append_silver(spark, settings, [_ev("r5", ts(2, 12), anonymous_id="r-a4", user_id="r-u1")])
    again = identity.run(spark, settings, date(2))
    assert (again["mode"], again["merges"]) == ("full", 2)
    assert _merges(settings) == sorted(
        [merge, (cid("anonymous_id", "r-a4"), cid("anonymous_id", "r-a1"), ts(2, 12), "r5", "merge", ts(3))])


def test_an_id_whose_origin_is_blocklisted_is_logged_against_the_customers_of_the_rest(spark, settings):
    """A blocklist that now names an id's origin: no component can keep that id, so
    gold.identity_merges logs it (kind 'origin_removed') against each new customer of its other
    identifiers, for segments and erasure to follow. Before, the id vanished unlogged."""
    from touchpoint.jobs import identity

    cid = expected_customer_id
    append_silver(spark, settings, [
        _ev("h0", ts(1, 1), email="hub@x.io"),  # seen first: the origin of the hub's id
        _ev("h1", ts(1, 2), email="hub@x.io", anonymous_id="h-a1"),
        _ev("h2", ts(1, 3), email="hub@x.io", anonymous_id="h-a2"),
        _ev("k1", ts(1, 4), anonymous_id="k-a", user_id="k-u"),
    ])
    identity.run(spark, settings, date(1))
    assert set(customer_of(identity_rows(settings)).values()) == {
        cid("email", "hub@x.io"), cid("anonymous_id", "k-a")}
    blocked = settings.model_copy(update={"identity": settings.identity.model_copy(
        update={"blocklist": (*settings.identity.blocklist, "hub@x.io")})})
    append_silver(spark, settings, [_ev("k2", ts(2, 1), anonymous_id="k-a")])

    second = identity.run(spark, blocked, date(2))

    assert (second["mode"], second["merges"], second["splits"]) == ("full", 2, 0)
    assert customer_of(identity_rows(blocked)) == {
        A("h-a1"): cid("anonymous_id", "h-a1"), A("h-a2"): cid("anonymous_id", "h-a2"),
        A("k-a"): cid("anonymous_id", "k-a"), U("k-u"): cid("anonymous_id", "k-a")}
    # without a linking event, the first event of the new customer's anchor
    assert _merges(blocked) == [
        (cid("email", "hub@x.io"), cid("anonymous_id", "h-a1"), ts(1, 2), "h1", "origin_removed", ts(3)),
        (cid("email", "hub@x.io"), cid("anonymous_id", "h-a2"), ts(1, 3), "h2", "origin_removed", ts(3)),
    ]


def _random_events(seed: int, count: int) -> list[dict]:
    rng = random.Random(seed)
    pools = {
        "anonymous_id": [f"a{i}" for i in range(700)] + ["dev-x", "dev-y", "NONE", "0-0"],
        "user_id": [f"u{i}" for i in range(500)] + ["Null", "000"],
        "email": [f"m{i}@x.io" for i in range(400)] + ["TEST@EXAMPLE.COM"],
        "phone": [f"+1555{i:04d}" for i in range(300)],
    }
    events = []
    for i in range(count):
        day = rng.choice((1, 1, 2))
        event = _ev(f"r{i}", ts(day, rng.randrange(24), rng.randrange(60)))
        kinds = rng.sample(list(pools), rng.choice((1, 2, 2, 3)))
        for kind in kinds:
            # the two devices get many users: both become shared
            event[kind] = rng.choice(pools[kind]) if not (kind == "anonymous_id" and rng.random() < 0.04) else \
                rng.choice(("dev-x", "dev-y"))
        events.append(event)
    return events


def test_random_graph_matches_independent_union_find(spark, settings):
    from touchpoint.jobs import identity

    # The rounds on the executors, full and incremental (every other test's graph is labelled on
    # the driver; test_driver_and_executor_labels_are_the_same compares the two).
    settings = settings.model_copy(update={"identity": settings.identity.model_copy(
        update={"driver_labels_max_edges": 0})})
    events = _random_events(seed=20260301, count=1500)
    # Day 1's rows first; day 2's rows and a third of day 1's arrive late, before the run of day 2.
    early = [e for i, e in enumerate(events) if e["event_ts"] < ts(2) and i % 3]
    late = [e for i, e in enumerate(events) if not (e["event_ts"] < ts(2) and i % 3)]
    append_silver(spark, settings, early)
    identity.run(spark, settings, date(1))
    assert partition_of(identity_rows(settings)) == union_find_partition(early, BLOCKLIST, 3)

    # Replace the state tables by copies with other Delta versions, as the write-audit-publish
    # pipeline does on an object store (a Spark copy into staging, an overwrite on publish): the
    # state is still found.
    for name in ("gold.identity_map", "gold.identity_edges", "gold.identity_guardrails"):
        path = table_path(name, settings)
        read_table(spark, settings, name).write.format("delta").save(path + "-copy")
        shutil.rmtree(path)
        shutil.move(path + "-copy", path)

    append_silver(spark, settings, late)
    summary = identity.run(spark, settings, date(2))
    assert (summary["mode"], summary["reason"]) == ("incremental", "incremental")
    users_per_device = {}
    for event in events:
        if event.get("anonymous_id") and event.get("user_id") and event["user_id"].lower() not in BLOCKLIST \
                and event["user_id"] != "000":
            users_per_device.setdefault(event["anonymous_id"], set()).add(event["user_id"])
    shared = {device for device, users in users_per_device.items() if len(users) > 3}
    assert {"dev-x", "dev-y"} <= shared
    assert summary["shared_devices"] == len(shared)
    assert partition_of(identity_rows(settings)) == union_find_partition(events, BLOCKLIST, 3)
    runs = read_table(spark, settings, "gold.identity_runs").orderBy("logical_date").collect()
    assert all(run["cc_rounds"] > 0 for run in runs) and len(runs) == 2  # the executors' rounds ran


def test_driver_and_executor_labels_are_the_same(spark):
    """Each node gets the least id of its component, whichever side labels the graph: exact labels
    on a hand-built graph, and the same labels on a random one."""
    from chispa import assert_df_equality

    from touchpoint.core.identity_graph import connected_components, least_labels

    def labels(edges, nodes, driver_max_edges):
        found, rounds = connected_components(
            spark.createDataFrame(edges, "src long, dst long"), spark.createDataFrame([(n,) for n in nodes], "id long"),
            lambda frame: frame.localCheckpoint(), driver_max_edges=driver_max_edges)
        return found, rounds

    # {1, 5, 9}; {2, 3} (a duplicate, a reversed copy and a self-loop); a chain 40-30-20-10; 7 alone.
    edges = [(9, 5), (5, 1), (2, 3), (3, 2), (2, 3), (3, 3), (40, 30), (20, 30), (10, 20)]
    nodes = [1, 2, 3, 5, 7, 9, 10, 20, 30, 40]
    expected = spark.createDataFrame([(1, 1), (5, 1), (9, 1), (2, 2), (3, 2), (7, 7), (10, 10), (20, 10), (30, 10),
                                      (40, 10)], "id long, component long")
    on_driver, driver_rounds = labels(edges, nodes, 1_000)
    on_executors, executor_rounds = labels(edges, nodes, 0)
    assert (driver_rounds, executor_rounds > 0) == (0, True)
    assert_df_equality(on_driver, expected, ignore_row_order=True, ignore_nullable=True)
    assert_df_equality(on_executors, expected, ignore_row_order=True, ignore_nullable=True)
    assert least_labels([("b", "c"), ("c", "a"), ("d",)]) == {"a": "a", "b": "a", "c": "a", "d": "d"}

    rng = random.Random(11)
    random_edges = [(rng.randrange(400), rng.randrange(400)) for _ in range(300)]
    random_nodes = list(range(450))
    on_driver, _ = labels(random_edges, random_nodes, len(random_edges))  # at the bound: still the driver
    on_executors, _ = labels(random_edges, random_nodes, len(random_edges) // 2)
    assert_df_equality(on_driver, on_executors, ignore_row_order=True, ignore_nullable=True)


def test_guardrail_reasons(spark):
    from touchpoint.jobs.identity_rules import held_back_reason

    values = ["null", "NULL", "Null", "n/a", "N/A", "test@example.com", "Test@Example.com", "0", "000", "0-0",
              "+0", "_0_", "0 0", "-", "--", "+", "", "x0", "00a", "nil", "NaN", "None", "undefined", "ok"]
    frame = spark.createDataFrame([(v,) for v in values], "value string")
    got = dict(frame.select("value", held_back_reason(F.col("value"), sorted(BLOCKLIST)).alias("r")).collect())
    expected = {v: None for v in values}
    expected.update({v: "blocklist" for v in ("null", "NULL", "Null", "n/a", "N/A", "test@example.com",
                                              "Test@Example.com", "nil", "NaN", "None", "undefined")})
    expected.update({v: "all_zero" for v in ("0", "000", "0-0", "+0", "_0_", "0 0")})
    assert got == expected


def test_checkpoint_auto_is_local_on_a_local_master_only(spark):
    """`identity.checkpoint = auto`: the test session's master is local, so local checkpoints; the
    spark-submitted pipeline in tests/test_cluster_submit.py runs on spark:// and so on scratch files."""
    from touchpoint.core.config import IdentitySettings
    from touchpoint.core.identity_graph import local_checkpoints

    assert IdentitySettings().checkpoint == "auto" and spark.sparkContext.master == "local[2]"
    assert [local_checkpoints(spark, mode) for mode in ("auto", "local", "lake")] == [True, True, False]


@pytest.mark.slow
def test_scale_smoke_chain_of_1000_and_many_components(spark):
    """The in-suite size of bench/identity_scale.py (which runs >= 1M identifiers): 5,000 customers
    of 4 identifiers and a chain of 1,000 devices and users with far-apart labels."""
    import importlib.util
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "bench" / "identity_scale.py"
    spec = importlib.util.spec_from_file_location("identity_scale", bench)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.check(spark, groups=5_000, chain=1_000, local_checkpoint=False, driver_max_edges=0)
    assert (result["identifiers"], result["customers"], result["chain_identifiers"]) == (22_000, 5_001, 2_000)
    assert result["ok"] and result["rounds"] > 0


def test_increment_plan_finds_late_rows_and_falls_back_on_deletes(spark, settings):
    """Which silver partitions an incremental run reads, and when it must rebuild instead."""
    from delta.tables import DeltaTable

    from touchpoint.core.dates import as_of_for
    from touchpoint.core.delta import latest_version
    from touchpoint.jobs.identity_state import BaseRun, plan_increment

    path = table_path("silver.events", settings)

    def base_at(version, day=1):
        return BaseRun(date(day), as_of_for(date(day)), version, "-", 0, 0, 0, 0, 0, 0)

    append_silver(spark, settings, [_ev("a", ts(1, 9), anonymous_id="a"), _ev("b", ts(1, 10), anonymous_id="b"),
                                    _ev("c", ts(3, 9), anonymous_id="c")])
    base = base_at(latest_version(spark, path))
    append_silver(spark, settings, [_ev("late", ts(1, 11), anonymous_id="late"), _ev("d2", ts(2, 9), user_id="d")])
    plan = plan_increment(spark, path, base, latest_version(spark, path), date(2))
    assert (plan.dates, plan.reason) == ([date(1), date(2)], "incremental")
    assert plan_increment(spark, path, base, latest_version(spark, path), date(4)).dates == [
        date(1), date(2), date(3), date(4)]

    # Compaction rewrites files without losing rows: still incremental (the partition is re-read).
    DeltaTable.forPath(spark, path).optimize().executeCompaction()
    plan = plan_increment(spark, path, base, latest_version(spark, path), date(2))
    assert (plan.dates, plan.reason) == ([date(1), date(2)], "incremental")

    # A row deleted after the base run: in a partition it never read, harmless; in one it read, a rebuild.
    DeltaTable.forPath(spark, path).delete("event_id = 'c'")
    assert plan_increment(spark, path, base, latest_version(spark, path), date(2)).reason == "incremental"
    DeltaTable.forPath(spark, path).delete("event_id = 'a'")
    plan = plan_increment(spark, path, base, latest_version(spark, path), date(2))
    assert (plan.full, plan.reason) == (True, "rows read by the previous run were deleted from silver")

    # With deletion vectors a delete keeps the file path: the commit metrics give it away.
    spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ('delta.enableDeletionVectors' = 'true')")
    base = base_at(latest_version(spark, path), day=2)
    DeltaTable.forPath(spark, path).delete("event_id = 'b'")
    plan = plan_increment(spark, path, base, latest_version(spark, path), date(3))
    assert (plan.full, plan.reason) == (True, "rows were deleted from silver in place (deletion vectors)")
