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
        extended = sorted(tuple(r) for r in extend_identity_map(
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


@pytest.mark.parametrize("driver_labels_max_nodes", [None, 0], ids=["driver", "spark"])
def test_a_new_event_linking_two_published_customers_and_a_new_identifier_gives_them_the_smaller_id(
        spark, monkeypatch, driver_labels_max_nodes):
    """The same map whether the driver's union-find labels the components or (for an input above
    DRIVER_LABELS_MAX_NODES, here every input) Spark's connected components do."""
    from touchpoint.core import stream_identity
    from touchpoint.core.stream_identity import extend_identity_map

    if driver_labels_max_nodes is not None:
        monkeypatch.setattr(stream_identity, "DRIVER_LABELS_MAX_NODES", driver_labels_max_nodes)

    published = spark.createDataFrame([("user_id", "u1", "cus_b"), ("email", "b@x.io", "cus_b"),
                                       ("user_id", "u2", "cus_a"), ("user_id", "u3", "cus_c")],
                                      "identifier_type string, identifier_value string, customer_id string")
    # e4's identifiers are both cus_b's: it links nothing, and cus_b still joins cus_a through e1, e2.
    events = spark.createDataFrame([("e1", "d1", "u1", None, None), ("e2", "d1", "u2", None, None),
                                    ("e3", None, "u3", None, "555-1"), ("e4", None, "u1", "b@x.io", None)], COLUMNS)

    extended = extend_identity_map(published, events, [])

    assert sorted(tuple(r) for r in extended.collect()) == [
        ("anonymous_id", "d1", "cus_a"), ("email", "b@x.io", "cus_a"), ("phone", "555-1", "cus_c"),
        ("user_id", "u1", "cus_a"), ("user_id", "u2", "cus_a"), ("user_id", "u3", "cus_c")]


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
