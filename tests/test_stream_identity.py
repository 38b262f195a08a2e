"""`core.stream_identity.extend_identity_map`: the published identity map extended with the links
of events it does not cover (docs/SERVING.md, "Identity in the speed layer")."""

from __future__ import annotations

import hashlib
from contextlib import ExitStack

import pytest


def provisional(identifier_type: str, value: str) -> str:
    """The provisional id as docs/SERVING.md states it: p- and the first 32 hex digits of a sha256."""
    return "p-" + hashlib.sha256(f"touchpoint-provisional-v1:{identifier_type}:{value}".encode()).hexdigest()[:32]


COLUMNS = "event_id string, anonymous_id string, user_id string, email string, phone string"


@pytest.mark.parametrize("driver_labels_max_nodes", [None, 0], ids=["driver", "spark"])
def test_a_long_chain_of_links_is_one_customer_under_its_least_id(spark, monkeypatch, driver_labels_max_nodes):
    """61 identifiers in one path (device, user, device, user, ...), labelled by the driver's
    union-find or by Spark's connected components; the checkpoints of either are freed when the
    caller's stack closes. Plus a published customer joined by a new device, a blocklisted and an
    all-zero value that link nothing, and a shared device held back: its two users stay apart and
    it gets no customer."""
    from touchpoint.core import stream_identity
    from touchpoint.core.stream_identity import extend_identity_map

    if driver_labels_max_nodes is not None:
        monkeypatch.setattr(stream_identity, "DRIVER_LABELS_MAX_NODES", driver_labels_max_nodes)

    chain = []
    for k in range(30):
        chain.append((f"c{k}a", f"d{k}", f"u{k}", None, None))
        chain.append((f"c{k}b", f"d{k + 1}", f"u{k}", None, None))
    others = [
        ("k1", "d-known", None, "z@x.io", None),  # joins the published customer cus_z
        ("b1", "d-lone", None, "test@example.com", None),  # blocklisted email: links nothing
        ("b2", "d-zero", None, None, "000-000"),  # all-zero phone: links nothing
        ("s1", "tv", "u-a", None, None),  # a shared device (held back): u-a and u-b stay apart
        ("s2", "tv", "u-b", None, None),
    ]
    events = spark.createDataFrame(chain + others, COLUMNS)
    published = spark.createDataFrame([("email", "z@x.io", "cus_z")],
                                      "identifier_type string, identifier_value string, customer_id string")
    held_back = spark.createDataFrame([("anonymous_id", "tv")], "identifier_type string, identifier_value string")

    jsc = spark.sparkContext._jsc
    kept_before = set(jsc.getPersistentRDDs().keys())
    with ExitStack() as checkpoints:
        extended = sorted(tuple(r)[:3] for r in extend_identity_map(
            published, events, ["test@example.com"], held_back, checkpoints).collect())
    # only what this call kept counts: the context cleaner may free other tests' frames meanwhile
    assert set(jsc.getPersistentRDDs().keys()) - kept_before == set()

    path = [("anonymous_id", f"d{k}") for k in range(31)] + [("user_id", f"u{k}") for k in range(30)]
    path_customer = min(provisional(kind, value) for kind, value in path)
    expected = sorted([(kind, value, path_customer) for kind, value in path] + [
        ("email", "z@x.io", "cus_z"), ("anonymous_id", "d-known", "cus_z"),
        ("anonymous_id", "d-lone", provisional("anonymous_id", "d-lone")),
        ("anonymous_id", "d-zero", provisional("anonymous_id", "d-zero")),
        ("user_id", "u-a", provisional("user_id", "u-a")), ("user_id", "u-b", provisional("user_id", "u-b")),
    ])
    assert extended == expected


def customer(identifier_type: str, value: str) -> str:
    """A batch-minted id as docs/IDENTITY.md states it: cus_ and the first 32 hex digits of a sha256."""
    return "cus_" + hashlib.sha256(f"touchpoint-customer-v1:{identifier_type}:{value}".encode()).hexdigest()[:32]


@pytest.mark.parametrize("driver_labels_max_nodes", [None, 0], ids=["driver", "spark"])
def test_published_customers_linked_by_new_events_keep_the_id_of_the_one_first_seen_first(
        spark, monkeypatch, driver_labels_max_nodes):
    """BRIEF §5, the older id survives, as the next batch run decides it: the customer first seen
    first, ties by its origin identifier (type, then value), not the smaller id. The same map
    whether the driver's union-find labels the components or (above DRIVER_LABELS_MAX_NODES, here
    every input) Spark's connected components do, and whether the links come in one micro-batch
    or two (a kept map extended again)."""
    import datetime as dt

    from touchpoint.core import stream_identity
    from touchpoint.core.stream_identity import extend_identity_map

    if driver_labels_max_nodes is not None:
        monkeypatch.setattr(stream_identity, "DRIVER_LABELS_MAX_NODES", driver_labels_max_nodes)

    def at(hour: int, minute: int = 0) -> dt.datetime:
        return dt.datetime(2026, 3, 1, hour, minute)

    a, b = customer("user_id", "u-a"), customer("user_id", "u-b")
    tied_user, tied_email = customer("user_id", "new"), customer("email", "e@x.io")
    # the smaller id would pick the other one in both cases
    assert min(a, b) == b and min(tied_user, tied_email) == tied_user
    published = spark.createDataFrame([
        ("user_id", "u-a", a, at(10), at(11)), ("anonymous_id", "d-a", a, at(9), at(9)),  # a: first seen 09:00
        ("user_id", "u-b", b, at(9, 30), at(12)), ("email", "b@x.io", b, at(9, 45), at(9, 45)),  # b: 09:30
        ("user_id", "new", tied_user, at(8), at(8)),  # both first seen at 08:00: email < user_id
        ("email", "e@x.io", tied_email, at(8), at(8)),
    ], "identifier_type string, identifier_value string, customer_id string, first_seen timestamp, "
       "last_seen timestamp")
    first = spark.createDataFrame([("e1", "d-new", "u-b", None, None),  # a new device joins b
                                   ("e2", None, "new", "e@x.io", None)], COLUMNS)  # the tie merges
    second = spark.createDataFrame([("e3", "d-new", "u-a", None, None)], COLUMNS)  # and now a with b

    expected = [
        ("anonymous_id", "d-a", a), ("anonymous_id", "d-new", a), ("email", "b@x.io", a),
        ("email", "e@x.io", tied_email), ("user_id", "new", tied_email), ("user_id", "u-a", a), ("user_id", "u-b", a)]

    def rows(frame):
        return sorted(tuple(r) for r in frame.select("identifier_type", "identifier_value", "customer_id").collect())

    assert rows(extend_identity_map(published, first.unionByName(second), [])) == expected
    kept = extend_identity_map(published, first, [])
    assert rows(kept) == [
        ("anonymous_id", "d-a", a), ("anonymous_id", "d-new", b), ("email", "b@x.io", b),
        ("email", "e@x.io", tied_email), ("user_id", "new", tied_email), ("user_id", "u-a", a), ("user_id", "u-b", b)]
    assert rows(extend_identity_map(kept, second, [])) == expected


def test_only_distinct_sets_of_two_or_more_nodes_link(spark):
    from chispa import assert_df_equality

    from touchpoint.core.stream_identity import linking_node_sets

    nodes = spark.createDataFrame([
        ("same", "cus_a"), ("same", "cus_a"),  # two identifiers of one known customer
        ("lone", "p-1"),  # one new identifier
        ("joins", "cus_a"), ("joins", "p-2"),  # a new identifier for a known customer
        ("merges", "cus_c"), ("merges", "cus_b"), ("merges", "cus_b"),  # two customers, one of them twice
        ("merges again", "cus_b"), ("merges again", "cus_c"),  # the same two: the same set, kept once
        ("joins more", "p-2"), ("joins more", "cus_a"), ("joins more", "p-3"),  # a larger set
    ], "identifier_set string, node string")

    expected = spark.createDataFrame([(["cus_a", "p-2"],), (["cus_b", "cus_c"],), (["cus_a", "p-2", "p-3"],)],
                                     "nodes array<string>")
    assert_df_equality(linking_node_sets(nodes), expected, ignore_row_order=True, ignore_nullable=True)
