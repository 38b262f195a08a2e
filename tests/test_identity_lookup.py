"""attach_customer_id on hand-built frames: the first identifier in precedence order (user_id,
email, phone, anonymous_id) that is present and in the map gives the customer, through the shuffle
path and through the broadcast lookups alike. carrier_flag: which events carry an
identifier of a given set."""

import pytest
from chispa import assert_df_equality

from touchpoint.core.identity_lookup import attach_customer_id, carrier_flag

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


def test_carrier_flag_marks_events_carrying_an_identifier_of_the_set_once_each(spark):
    identifiers = spark.createDataFrame([
        ("email", "e@x.io"), ("anonymous_id", "a1"), ("anonymous_id", "a1"),  # repeated: still one row per event
        ("user_id", ""),  # an empty identifier is never carried
    ], "identifier_type string, identifier_value string")
    events = spark.createDataFrame([
        ("ev1", "u1", None, None, "a1", "email"),  # its anonymous id
        ("ev2", None, "e@x.io", None, None, "direct"),
        ("ev3", None, None, "e@x.io", None, "direct"),  # the same value as another type: not carried
        ("ev4", "", None, None, None, "direct"),
        ("ev5", None, None, None, None, "direct"),
        ("ev6", "u1", "other@x.io", None, "a2", "direct"),
    ], EVENTS)

    flagged = events.transform(carrier_flag(identifiers, "carries"))

    expected = spark.createDataFrame([
        ("ev1", "u1", None, None, "a1", "email", True),
        ("ev2", None, "e@x.io", None, None, "direct", True),
        ("ev3", None, None, "e@x.io", None, "direct", False),
        ("ev4", "", None, None, None, "direct", False),
        ("ev5", None, None, None, None, "direct", False),
        ("ev6", "u1", "other@x.io", None, "a2", "direct", False),
    ], f"{EVENTS}, carries boolean")
    assert_df_equality(flagged.orderBy("event_id"), expected, ignore_nullable=True)
