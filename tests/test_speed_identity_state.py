"""The identity map the customer-views speed query keeps between micro-batches (streaming.speed).

While nothing was published and silver only gained rows, the kept map is extended with the new
rows alone; a displaced or erased row, or a new publish, rebuilds it from the published map. Either
way the map must be the one a rebuild over every uncovered row gives.
"""

from __future__ import annotations

import hashlib

import pytest

from test_speed_serving import Lake, at, event

pytestmark = [pytest.mark.timeout(1200), pytest.mark.slow]


def provisional(identifier_type: str, value: str) -> str:
    """The provisional id as docs/SERVING.md states it: p- and the first 32 hex digits of a sha256."""
    return "p-" + hashlib.sha256(f"touchpoint-provisional-v1:{identifier_type}:{value}".encode()).hexdigest()[:32]


def with_email(row: dict, email: str) -> dict:
    return {**row, "email": email}


def test_the_kept_identity_map_is_extended_and_rebuilt_to_what_a_rebuild_gives(spark, settings):
    from delta.tables import DeltaTable

    from touchpoint.streaming.speed import SpeedSink

    lake = Lake(spark, settings)
    lake.identity({"u1": "c1", "u2": "c2"})
    sink = SpeedSink(settings, "speed_customers", views="customers")

    def step():
        return sink._identity(spark, sink._silver_snapshot(spark))

    def rows(state):
        return sorted(tuple(r) for r in state.frame.select("identifier_type", "identifier_value", "customer_id").collect())

    def rebuilt_now():
        fresh = SpeedSink(settings, "check", views="customers")
        try:
            return rows(fresh._identity(spark, fresh._silver_snapshot(spark)))
        finally:
            fresh.release()

    lake.arrive(event("e1", "page_view", at(2, 9), "u1", anonymous_id="a1"),
                event("e2", "page_view", at(2, 9, 5), None, anonymous_id="a2"))
    first = step()
    assert sink.identity_builds == {"rebuilt": 1, "extended": 0}
    assert rows(first) == [("anonymous_id", "a1", "c1"), ("anonymous_id", "a2", provisional("anonymous_id", "a2")),
                           ("user_id", "u1", "c1"), ("user_id", "u2", "c2")]

    # Two arrivals: a2 joins c2; a3 and an email form a new component (the smaller provisional id).
    lake.arrive(event("e3", "page_view", at(2, 10), "u2", anonymous_id="a2"))
    lake.arrive(with_email(event("e4", "page_view", at(2, 10, 5), None, anonymous_id="a3"), "x@example.com"))
    second = step()
    new_component = min(provisional("anonymous_id", "a3"), provisional("email", "x@example.com"))
    assert sink.identity_builds == {"rebuilt": 1, "extended": 1}
    assert second.silver_version == first.silver_version + 2
    assert rows(second) == [("anonymous_id", "a1", "c1"), ("anonymous_id", "a2", "c2"),
                            ("anonymous_id", "a3", new_component), ("email", "x@example.com", new_component),
                            ("user_id", "u1", "c1"), ("user_id", "u2", "c2")]
    assert rows(second) == rebuilt_now()

    # A link between a published customer and the provisional component: it takes c1.
    lake.arrive(with_email(event("e5", "order", at(2, 11), "u1", order_id="o1", revenue=10.0), "x@example.com"))
    third = step()
    assert sink.identity_builds == {"rebuilt": 1, "extended": 2}
    assert rows(third) == [("anonymous_id", "a1", "c1"), ("anonymous_id", "a2", "c2"),
                           ("anonymous_id", "a3", "c1"), ("email", "x@example.com", "c1"),
                           ("user_id", "u1", "c1"), ("user_id", "u2", "c2")]
    assert rows(third) == rebuilt_now()
    assert step() is third  # silver unchanged: the same map, nothing recomputed
    assert sink.identity_builds == {"rebuilt": 1, "extended": 2}

    # A removed row (as a displaced order or an erasure removes one) takes its links with it.
    DeltaTable.forPath(spark, lake.path("silver.events")).delete("event_id = 'e3'")
    fourth = step()
    assert sink.identity_builds == {"rebuilt": 2, "extended": 2}
    assert rows(fourth) == [("anonymous_id", "a1", "c1"), ("anonymous_id", "a2", provisional("anonymous_id", "a2")),
                            ("anonymous_id", "a3", "c1"), ("email", "x@example.com", "c1"),
                            ("user_id", "u1", "c1"), ("user_id", "u2", "c2")]
    assert rows(fourth) == rebuilt_now()

    # A new publish of the map: rebuilt from it.
    lake.identity({"u1": "c1", "u2": "c2", "u9": "c9"})
    fifth = step()
    assert sink.identity_builds == {"rebuilt": 3, "extended": 2}
    assert rows(fifth) == [("anonymous_id", "a1", "c1"), ("anonymous_id", "a2", provisional("anonymous_id", "a2")),
                           ("anonymous_id", "a3", "c1"), ("email", "x@example.com", "c1"),
                           ("user_id", "u1", "c1"), ("user_id", "u2", "c2"), ("user_id", "u9", "c9")]
    assert rows(fifth) == rebuilt_now()
    sink.release()


@pytest.mark.parametrize("fits_broadcast", [True, False])  # narrowed / every event kept
def test_events_of_keeps_the_events_the_affected_customers_and_changed_orders_can_own(spark, monkeypatch,
                                                                                      fits_broadcast):
    from chispa import assert_df_equality

    from touchpoint.streaming import speed
    from touchpoint.streaming.speed import IdentityState

    monkeypatch.setattr(speed, "BROADCAST_MAP_MAX_IDENTIFIERS", 4)
    identity_map = spark.createDataFrame([
        ("user_id", "u1", "c1"), ("anonymous_id", "a1", "c1"), ("user_id", "u2", "c2"),
        ("anonymous_id", "shared-tv", "c3"),  # a shared device: a customer of its own
    ], "identifier_type string, identifier_value string, customer_id string")
    # 4 identifiers fit the patched bound; claiming 5 makes the map too large to broadcast.
    state = IdentityState(published=(), silver_version=0, frame=identity_map, identifiers=4 if fits_broadcast else 5)
    columns = "event_id string, event_type string, order_id string, user_id string, email string, phone string, anonymous_id string"
    events = spark.createDataFrame([
        ("e1", "ad_click", None, None, None, None, "a1"),  # c1's by its anonymous id alone
        ("e2", "order", "o1", "u1", None, None, None),  # c1's
        ("e3", "order", "o2", "u2", None, None, "a1"),  # c2's (user_id first), carries c1's a1: kept, resolved later
        ("e4", "ad_click", None, "u2", None, None, None),  # c2's, not affected
        ("e5", "order", " o9 ", "u2", None, None, None),  # c2's, but of a changed order id
        ("e6", "page_view", None, None, None, None, "shared-tv"),  # c3's
        ("e7", "page_view", None, None, "nobody@x.io", None, None),  # no customer
    ], columns)
    affected = spark.createDataFrame([("c1",)], "customer_id string")
    order_ids = spark.createDataFrame([("o9",), ("o9",)], "conversion_id string")

    kept = events.transform(state.events_of(affected, order_ids))

    expected_ids = ["e1", "e2", "e3", "e5"] if fits_broadcast else ["e1", "e2", "e3", "e4", "e5", "e6", "e7"]
    expected = events.where(events.event_id.isin(expected_ids))
    assert_df_equality(kept.orderBy("event_id"), expected.orderBy("event_id"), ignore_nullable=True)
