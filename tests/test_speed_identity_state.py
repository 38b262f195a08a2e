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
