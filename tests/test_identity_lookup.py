"""attach_customer_id on hand-built frames: the first identifier in precedence order (user_id,
email, phone, anonymous_id) that is present and in the map gives the customer, through the shuffle
path and through the broadcast lookups alike."""

import pytest
from chispa import assert_df_equality

from touchpoint.core.identity_lookup import attach_customer_id

EVENTS = "event_id string, user_id string, email string, phone string, anonymous_id string, channel string"
MAP = [("user_id", "u1", "c-user"), ("email", "e@x.io", "c-email"), ("phone", "+447900000001", "c-phone"),
       ("anonymous_id", "a1", "c-anon"), ("anonymous_id", "a2", "c-anon2"), ("anonymous_id", "", "c-empty")]


@pytest.mark.parametrize("broadcast", [False, True])
def test_precedence_absent_and_empty_identifiers(spark, broadcast):
    identity_map = spark.createDataFrame(MAP, "identifier_type string, identifier_value string, customer_id string")
    events = spark.createDataFrame([
        ("ev1", "u1", None, None, "a1", "email"),  # user_id first
        ("ev2", "u-unknown", None, None, "a1", "direct"),  # not in the map: the next one
        ("ev3", None, "e@x.io", None, "", "direct"),  # an empty identifier is absent
        ("ev4", None, None, None, "a2", "direct"),
        ("ev5", "", None, None, "zz", "direct"),  # nothing usable in the map
        ("ev6", None, None, None, None, "direct"),  # no identifier at all
        ("ev7", None, None, "+447900000001", "a1", "direct"),  # phone before anonymous_id
        ("ev8", None, "e@x.io", "+447900000001", None, "direct"),  # email before phone
    ], EVENTS)

    resolved = events.transform(attach_customer_id(identity_map, broadcast=broadcast))

    expected = spark.createDataFrame([
        ("ev1", "u1", None, None, "a1", "email", "c-user"),
        ("ev2", "u-unknown", None, None, "a1", "direct", "c-anon"),
        ("ev3", None, "e@x.io", None, "", "direct", "c-email"),
        ("ev4", None, None, None, "a2", "direct", "c-anon2"),
        ("ev5", "", None, None, "zz", "direct", None),
        ("ev6", None, None, None, None, "direct", None),
        ("ev7", None, None, "+447900000001", "a1", "direct", "c-phone"),
        ("ev8", None, "e@x.io", "+447900000001", None, "direct", "c-email"),
    ], f"{EVENTS}, customer_id string")
    assert_df_equality(resolved.orderBy("event_id"), expected, ignore_nullable=True)
    if broadcast:  # (on frames this small Spark may pick broadcast joins for the other path too)
        assert resolved._jdf.queryExecution().analyzed().toString().count("strategy=broadcast") == 4
