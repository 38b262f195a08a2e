"""Which customers and events an incremental attribution run re-derives (jobs.attribution_scope),
on hand-built frames with exact expected rows."""

from chispa import assert_df_equality

from touchpoint.jobs.attribution_scope import (
    SEED_FLAG, changed_customers, conversions_in_scope, events_in_scope, identity_changes, scope_candidates,
    scope_conversion_ids, scope_identifiers, scope_seeds,
)

MAP_SCHEMA = "identifier_type string, identifier_value string, customer_id string"
CHANGES_SCHEMA = "identifier_type string, identifier_value string, previous_customer_id string, customer_id string"
EVENTS_SCHEMA = ("event_id string, event_type string, order_id string, anonymous_id string, user_id string, "
                 "email string, phone string")


def test_identity_changes_moved_disappeared_and_new_identifiers(spark):
    previous = spark.createDataFrame([("anonymous_id", "a1", "c1"), ("anonymous_id", "a2", "c2"),
                                      ("user_id", "u3", "c3"), ("email", "x@y.z", "c1")], MAP_SCHEMA)
    current = spark.createDataFrame([("anonymous_id", "a1", "c1"), ("anonymous_id", "a2", "c1"),
                                     ("phone", "+15550100", "c4"), ("email", "x@y.z", "c1")], MAP_SCHEMA)
    expected = spark.createDataFrame([("anonymous_id", "a2", "c2", "c1"), ("phone", "+15550100", None, "c4"),
                                      ("user_id", "u3", "c3", None)], CHANGES_SCHEMA)
    assert_df_equality(identity_changes(previous, current).orderBy("identifier_type", "identifier_value"),
                       expected.orderBy("identifier_type", "identifier_value"), ignore_nullable=True)


def test_changed_customers_from_both_sides_of_a_change_and_from_changed_events(spark):
    changes = spark.createDataFrame([("anonymous_id", "a2", "c2", "c1"), ("user_id", "u3", "c3", None)],
                                    CHANGES_SCHEMA)
    resolved = spark.createDataFrame([("c5",), (None,), ("c1",)], "customer_id string")
    assert sorted(r["customer_id"] for r in changed_customers(changes, resolved).collect()) == ["c1", "c2", "c3", "c5"]


def test_scope_identifiers_are_the_changed_customers_and_the_changed_identifiers(spark):
    current = spark.createDataFrame([("anonymous_id", "a1", "c1"), ("user_id", "u1", "c1"),
                                     ("anonymous_id", "a9", "c9")], MAP_SCHEMA)
    customers = spark.createDataFrame([("c1",)], "customer_id string")
    changes = spark.createDataFrame([("user_id", "u3", "c3", None)], CHANGES_SCHEMA)
    expected = spark.createDataFrame([("anonymous_id", "a1"), ("user_id", "u1"), ("user_id", "u3")],
                                     "identifier_type string, identifier_value string")
    assert_df_equality(scope_identifiers(current, customers, changes).orderBy("identifier_type", "identifier_value"),
                       expected.orderBy("identifier_type", "identifier_value"), ignore_nullable=True)


def test_events_in_scope_take_every_event_of_an_order_id_in_scope(spark):
    events = spark.createDataFrame([
        ("e1", "page_view", None, "a1", None, None, None),  # carries a scope identifier
        ("e2", "order", " o1 ", "b1", None, None, None),  # changed itself
        ("e3", "order", "o1", "b2", None, None, None),  # same trimmed order id as e2
        ("e4", "page_view", None, "b3", None, None, None),  # out of scope
        ("e5", "order", "o2", "b4", None, None, None),  # order id of a deleted changed event
        ("e6", "order", "o3", None, "u1", None, None),  # user_id in scope, anonymous id not
        ("e7", "order", "o4", "b5", None, None, None),  # out of scope
        ("e8", "page_view", "o3", "b6", None, None, None),  # an order id, but not an order
        ("e9", "order", "  ", "a1", None, None, None),  # in scope; a blank order id is no conversion
    ], EVENTS_SCHEMA)
    identifiers = spark.createDataFrame([("anonymous_id", "a1"), ("user_id", "u1")],
                                        "identifier_type string, identifier_value string")
    changed = spark.createDataFrame([("e2", "order", " o1 ", "b1", None, None, None),
                                     ("e10", "order", "o2", "b9", None, None, None)], EVENTS_SCHEMA)
    candidates = events.transform(scope_candidates(identifiers, changed))
    # one scan of silver keeps the seeds and every order event with an order id, flagged
    assert candidates.columns == [*events.columns, SEED_FLAG]
    assert sorted((r["event_id"], r[SEED_FLAG]) for r in candidates.collect()) == [
        ("e1", True), ("e2", True), ("e3", False), ("e5", False), ("e6", True), ("e7", False), ("e9", True)]
    seeds = candidates.transform(scope_seeds(changed))
    expected = spark.createDataFrame([("e1", None), ("e10", "o2"), ("e2", "o1"), ("e6", "o3"), ("e9", None)],
                                     "event_id string, conversion_id string")
    assert_df_equality(seeds.orderBy("event_id"), expected, ignore_nullable=True)
    assert sorted(r["conversion_id"] for r in scope_conversion_ids(seeds).collect()) == ["o1", "o2", "o3"]
    in_scope = candidates.transform(events_in_scope(seeds))
    assert in_scope.columns == events.columns
    assert sorted(r["event_id"] for r in in_scope.collect()) == ["e1", "e2", "e3", "e5", "e6", "e9"]


def test_conversions_in_scope_by_order_id_or_customer(spark):
    stored = spark.createDataFrame([("o1", "c1"), ("o2", "c2"), ("o3", None), ("o4", "c4")],
                                   "conversion_id string, customer_id string")
    scope_ids = spark.createDataFrame([("o3",), ("o9",)], "conversion_id string")
    customers = spark.createDataFrame([("c1",)], "customer_id string")
    expected = spark.createDataFrame([("o1", "c1"), ("o3", None)], "conversion_id string, customer_id string")
    assert_df_equality(stored.transform(conversions_in_scope(scope_ids, customers)).orderBy("conversion_id"),
                       expected, ignore_nullable=True)
