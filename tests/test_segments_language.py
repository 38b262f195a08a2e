"""The segment language: JSON Schema validation, error messages, every operator and combinator,
behaviour counts over windows, and injection attempts (BRIEF §6)."""

from __future__ import annotations

import datetime as dt
import re
import textwrap
from pathlib import Path

import pytest
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType, BooleanType, DateType, DoubleType, IntegerType, LongType, StringType, StructField, StructType,
    TimestampType,
)

from touchpoint.core import segments as seg
from touchpoint.core.segments import (
    SegmentDefinition, SegmentDefinitionError, compile_segment, compile_segments, load_segments, parse_segment,
)

# Segment rules compile to Spark expressions: these run with Spark's generated code, as in
# production (the rest of the suite runs interpreted, tests/conftest.py).
pytestmark = pytest.mark.usefixtures("production_codegen")

UTC = dt.timezone.utc
AS_OF = dt.datetime(2024, 5, 2, tzinfo=UTC)  # the run for 2024-05-01


def ts(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


PROFILE_SCHEMA = StructType([
    StructField("customer_id", StringType()),
    StructField("country", StringType()),
    StructField("lifetime_orders", LongType()),
    StructField("lifetime_revenue", DoubleType()),
    StructField("last_order_ts", TimestampType()),
    StructField("consent_email_marketing", BooleanType()),
    StructField("channels", ArrayType(StringType())),
    StructField("rfm_recency", IntegerType()),
    StructField("rfm_frequency", IntegerType()),
    StructField("rfm_segment", StringType()),
    StructField("signup_day", DateType()),
    StructField("note", StringType()),
])
PROFILES = [
    ("c1", "US", 3, 600.0, ts("2024-04-20T12:00:00"), True, ["email", "paid_search"], 5, 4, "champions", dt.date(2024, 1, 15),
     "x' OR '1'='1"),
    ("c2", "NO", 1, 80.0, ts("2024-01-01T00:00:00"), False, ["direct"], 2, 1, "hibernating", dt.date(2023, 6, 1), "vip"),
    ("c3", None, 0, 0.0, None, None, [], None, None, None, None, None),
    # last order exactly 90 days before AS_OF: inside a 90-day window, which includes its start
    ("c4", "SE", 5, 500.0, ts("2024-02-02T00:00:00"), True, ["email"], 4, 5, "loyal_customers", dt.date(2024, 5, 1), "very vip"),
]
EVENTS = [  # customer_id, event_type, event_ts, channel, campaign_name
    ("c1", "add_to_cart", ts("2024-05-01T10:00:00"), "paid_search", "Spring Sale"),
    ("c1", "add_to_cart", ts("2024-04-30T10:00:00"), "email", "Spring Sale "),
    ("c1", "order", ts("2024-05-02T00:00:00"), "direct", None),  # at as_of: not yet happened
    ("c2", "add_to_cart", ts("2024-04-29T00:00:00"), "direct", None),  # exactly 3 days back: inside
    ("c2", "order", ts("2024-04-30T00:00:00"), "direct", None),
    ("c3", "page_view", dt.datetime(2024, 5, 1, 23, 59, 59, 999999, tzinfo=UTC), "organic_search", None),
    ("c3", "add_to_cart", ts("2024-04-28T23:59:59"), "direct", None),  # 1 s before the 3-day window
    (None, "add_to_cart", ts("2024-05-01T11:00:00"), "direct", None),  # no customer: never counted
]

# (condition in YAML, expected members)
CASES = [
    ("{attribute: country, eq: US}", {"c1"}),
    ("{attribute: country, eq: NO}", {"c2"}),  # YAML 1.2 booleans: Norway stays a text
    ("{attribute: country, ne: US}", {"c2", "c4"}),  # a null country is not 'not US'
    ("{attribute: lifetime_revenue, gt: 500}", {"c1"}),
    ("{attribute: lifetime_revenue, gte: 500}", {"c1", "c4"}),
    ("{attribute: lifetime_revenue, lt: 80}", {"c3"}),
    ("{attribute: lifetime_revenue, lte: 80}", {"c2", "c3"}),
    ("{attribute: country, in: [US, SE]}", {"c1", "c4"}),
    ("{attribute: country, not_in: [US]}", {"c2", "c4"}),
    ("{attribute: lifetime_orders, between: [1, 3]}", {"c1", "c2"}),
    ("{attribute: country, is_null: true}", {"c3"}),
    ("{attribute: last_order_ts, not_null: true}", {"c1", "c2", "c4"}),
    ("{attribute: channels, contains: email}", {"c1", "c4"}),
    ("{attribute: note, contains: vip}", {"c2", "c4"}),
    ("{attribute: note, contains: '%'}", set()),  # a substring, not a LIKE pattern
    ("{attribute: last_order_ts, within_last_days: 90}", {"c1", "c4"}),
    ("{attribute: last_order_ts, within_last_days: 89.5}", {"c1"}),
    ("{attribute: last_order_ts, gt: '2024-04-01'}", {"c1"}),
    ("{attribute: last_order_ts, lt: '2024-02-02T00:00:00+01:00'}", {"c2"}),
    ("{attribute: last_order_ts, eq: '2024-02-02T00:00:00Z'}", {"c4"}),
    ("{attribute: consent_email_marketing, eq: true}", {"c1", "c4"}),
    ("{attribute: consent_email_marketing, eq: false}", {"c2"}),
    ("{not: {attribute: consent_email_marketing, eq: true}}", {"c2", "c3"}),
    ("{attribute: signup_day, within_last_days: 1}", {"c4"}),
    ("{attribute: signup_day, between: ['2024-01-01', '2024-03-31']}", {"c1"}),
    ("{attribute: rfm_frequency, in: [4, 5]}", {"c1", "c4"}),
    ("{all: [{attribute: lifetime_revenue, gte: 500}, {attribute: country, eq: US}]}", {"c1"}),
    ("{any: [{attribute: country, eq: NO}, {attribute: country, is_null: true}]}", {"c2", "c3"}),
    ("{not: {attribute: country, in: [US]}}", {"c2", "c3", "c4"}),
    ("{any: [{all: [{attribute: last_order_ts, not_null: true}, {attribute: rfm_recency, lt: 3}]},"
     " {attribute: country, eq: SE}]}", {"c2", "c4"}),
    ("{not: {not: {attribute: country, eq: US}}}", {"c1"}),
    # values are literals, whatever they contain
    ("{attribute: note, eq: \"x' OR '1'='1\"}", {"c1"}),
    ("{attribute: country, eq: \"US' OR 1=1 --\"}", set()),
    ("{attribute: country, in: [\"') OR ('a'='a\", '\"; DROP TABLE x; --']}", set()),
    # behaviour
    ("{behaviour: {event_type: add_to_cart, at_least: 2, within_last_days: 3}}", {"c1"}),
    ("{behaviour: {event_type: add_to_cart, at_least: 1, within_last_days: 3}}", {"c1", "c2"}),
    ("{behaviour: {event_type: add_to_cart, at_most: 0, within_last_days: 3}}", {"c3", "c4"}),
    ("{behaviour: {event_type: add_to_cart, at_least: 1, at_most: 1, within_last_days: 3}}", {"c2"}),
    ("{behaviour: {event_type: add_to_cart, at_least: 1, within_last_days: 3.01}}", {"c1", "c2", "c3"}),
    ("{behaviour: {event_type: order, at_least: 1, within_last_days: 3}}", {"c2"}),
    ("{behaviour: {event_type: add_to_cart, at_least: 1, within_last_days: 3, channel: email}}", {"c1"}),
    ("{behaviour: {event_type: add_to_cart, at_least: 2, within_last_days: 3, channel: [email, paid_search]}}",
     {"c1"}),
    ("{behaviour: {event_type: add_to_cart, at_least: 2, within_last_days: 3, campaign: 'Spring Sale'}}", {"c1"}),
    ("{behaviour: {event_type: add_to_cart, at_least: 1, within_last_days: 7, campaign: [\"x' OR 'a'='a\"]}}",
     set()),
    ("{behaviour: {event_type: [page_view, order], at_least: 1, within_last_days: 1}}", {"c3"}),
    ("{all: [{behaviour: {event_type: add_to_cart, at_least: 1, within_last_days: 3}},"
     " {behaviour: {event_type: order, at_most: 0, within_last_days: 3}}]}", {"c1"}),
    ("{not: {behaviour: {event_type: add_to_cart, at_least: 1, within_last_days: 3}}}", {"c3", "c4"}),
]


def definition(condition_yaml: str, name: str = "s") -> SegmentDefinition:
    return parse_segment(f"name: {name}\ncondition: {condition_yaml}\n", f"{name}.yaml")


@pytest.fixture(scope="module")
def profiles(spark):
    return spark.createDataFrame(PROFILES, PROFILE_SCHEMA)


@pytest.fixture(scope="module")
def events(spark):
    return spark.createDataFrame(EVENTS, "customer_id string, event_type string, event_ts timestamp, "
                                         "channel string, campaign_name string")


def evaluate(profiles, events, compiled):
    """Members of every compiled segment, in one Spark job."""
    behaviours = seg.behaviours_of(compiled)
    frame = profiles.transform(seg.with_behaviour_counts(events, behaviours, AS_OF))
    rows = frame.select("customer_id", *[c.predicate.alias(f"m{i}") for i, c in enumerate(compiled)]).collect()
    return [{r["customer_id"] for r in rows if r[f"m{i}"]} for i in range(len(compiled))]


def test_every_operator_combinator_and_behaviour(profiles, events):
    compiled = [compile_segment(definition(text), profiles.schema, AS_OF) for text, _ in CASES]
    # The speed layer passes the instant as a Column: same results.
    as_column = [compile_segment(definition(text), profiles.schema, F.lit(AS_OF)) for text, _ in CASES]
    results = evaluate(profiles, events, compiled + as_column)
    expected = [members for _, members in CASES]
    assert results[:len(CASES)] == expected
    assert results[len(CASES):] == expected


def test_segment_members_lists_each_membership(profiles, events):
    definitions = [definition("{attribute: country, in: [US, NO]}", "a"),
                   definition("{behaviour: {event_type: add_to_cart, at_least: 1, within_last_days: 3}}", "b"),
                   definition("{attribute: country, eq: XX}", "c")]
    compiled = compile_segments(definitions, profiles.schema, AS_OF)
    members = (profiles.transform(seg.with_behaviour_counts(events, seg.behaviours_of(compiled), AS_OF))
               .transform(seg.segment_members(compiled)))
    assert members.columns == ["segment", "customer_id"]
    assert sorted(tuple(r) for r in members.collect()) == [("a", "c1"), ("a", "c2"), ("b", "c1"), ("b", "c2")]


def test_identical_behaviours_share_one_count_column(profiles):
    a = compile_segment(definition("{behaviour: {event_type: order, at_least: 1, within_last_days: 30}}"),
                        profiles.schema, AS_OF)
    b = compile_segment(definition("{behaviour: {event_type: [order], at_most: 4, within_last_days: 30.0}}"),
                        profiles.schema, AS_OF)
    c = compile_segment(definition("{behaviour: {event_type: order, at_least: 1, within_last_days: 31}}"),
                        profiles.schema, AS_OF)
    assert a.behaviours == b.behaviours
    assert seg.behaviours_of([a, b, c]) == (a.behaviours[0], c.behaviours[0])
    assert seg.longest_window_days(seg.behaviours_of([a, b, c])) == 31


# ---------------------------------------------------------------- validation errors


def problems_of(text: str, source: str = "segments/bad.yaml") -> list[tuple[int | None, str, str, str]]:
    with pytest.raises(SegmentDefinitionError) as caught:
        parse_segment(textwrap.dedent(text), source)
    assert all(p.source == source for p in caught.value.problems)
    return [(p.line, seg.format_path(p.path), p.message, p.fix) for p in caught.value.problems]


def test_schema_errors_name_file_path_line_and_fix():
    assert problems_of("""\
        name: a
        condition:
          all:
            - attribute: country
              eq: US
            - attribute: lifetime_orders
              greater: 3
        """) == [(7, "condition.all[1].greater", "unknown key 'greater'",
                  "remove it or check the spelling; allowed here: attribute, between, contains, eq, gt, gte, in, "
                  "is_null, lt, lte, ne, not_in, not_null, within_last_days")]

    [(line, path, message, fix)] = problems_of("""\
        name: a
        condition:
          attribute: lifetime_orders
          gte: 1
          lte: 3
        """)
    assert (line, path, message) == (2, "condition", "too many keys (attribute, gte, lte)")
    assert fix.startswith("give exactly one operator next to 'attribute'")

    [(line, path, message, fix)] = problems_of("""\
        name: a
        condition:
          behaviour:
            event_type: purchase
            at_least: 1
            within_last_days: 7
        """)
    assert (line, path, message) == (4, "condition.behaviour.event_type", "'purchase' is not valid here")
    assert fix.startswith("use an event type (page_view,")

    assert problems_of("name: a\ncondition:\n  behaviour: {event_type: order, within_last_days: 0}\n") == [
        (3, "condition.behaviour", "none of the keys at_least, at_most is present", "add 'at_least: n', 'at_most: n' or both"),
        (3, "condition.behaviour.within_last_days", "0 is too small",
         "give a number of days greater than 0 and at most 36525 (100 years; fractions allowed, 1 day = 86,400 s)"),
    ]
    assert problems_of("name: Big-Spenders\ndescripton: typo\n") == [
        (2, "descripton", "unknown key 'descripton'",
         "remove it or check the spelling; allowed here: condition, description, name"),
        (1, "<root>", "missing key 'condition'", "add 'condition: ...'"),
        (1, "name", "'Big-Spenders' is not an allowed name",
         "use 1-63 lowercase letters, digits and _, starting with a letter (the name is also a folder name of exports)"),
    ]
    assert problems_of("name: a\ncondition: {}\n") == [
        (2, "condition", "none of the keys all, any, not, attribute, behaviour is present",
         "start the condition with one of the keys all, any, not, attribute, behaviour")]
    assert problems_of("name: a\ncondition: {attribute: country, in: US}\n") == [
        (2, "condition.in", "'US' is not a list", "give a non-empty list of values, e.g. [a, b]")]
    assert problems_of("name: a\ncondition: {attribute: country, is_null: false}\n") == [
        (2, "condition.is_null", "False is not allowed here",
         "write 'is_null: true' (for the opposite use 'not_null: true')")]
    assert problems_of("name: a\ncondition: {all: []}\n") == [
        (2, "condition.all", "the list has 0 item(s)", "give 'all' a non-empty list of conditions")]


def test_yaml_problems_are_reported_with_their_line():
    assert problems_of("name: a\ncondition:\n  attribute: country\n  eq: US\n  eq: SE\n") == [
        (5, "condition.eq", "key 'eq' appears twice in one mapping",
         "keep one; combine several conditions with all / any")]
    [(line, path, message, _)] = problems_of("name: a\ncondition: [\n")
    assert (line, path) == (3, "<root>") and message.startswith("not valid YAML")
    # no Python objects, no tags: safe loading only
    [(_, _, message, _)] = problems_of("name: !!python/object/apply:os.system ['true']\ncondition: {}\n")
    assert message.startswith("not valid YAML: could not determine a constructor")
    [(_, _, message, _)] = problems_of("")
    assert message == "the file is empty"


def test_numbers_are_read_as_yaml_1_2_reads_them():
    """As a JSON or YAML 1.2 reader of the file sees them (before session 47, YAML 1.1's rules: 010
    was octal 8, 1:30 base-60 90, 1_000 a thousand, 1e3 a text)."""
    assert definition("{behaviour: {event_type: order, at_least: 010, within_last_days: 1e1}}").condition == {
        "behaviour": {"event_type": "order", "at_least": 10, "within_last_days": 10.0}}
    assert definition("{attribute: lifetime_orders, in: [0x1F, 0o17, -07, +3]}").condition == {
        "attribute": "lifetime_orders", "in": [31, 15, -7, 3]}
    fix = "give a number of days greater than 0 and at most 36525 (100 years; fractions allowed, 1 day = 86,400 s)"
    for written in ("1:30", "1_000"):
        assert problems_of(f"name: a\ncondition: {{behaviour: {{event_type: order, at_least: 1, "
                           f"within_last_days: {written}}}}}\n") == [
            (2, "condition.behaviour.within_last_days", f"'{written}' is not a number", fix)]


def test_values_the_schema_lets_through_but_no_condition_can_use(tmp_path):
    """.nan and .inf pass JSON Schema's bounds; keys that are not names, and integers beyond 64 bits,
    made the checks or Spark raise without naming the file. Each is now a problem with its fix."""
    finite_fix = "write a number (.nan and .inf cannot be compared or counted)"
    assert problems_of("name: a\ncondition:\n  behaviour: {event_type: order, at_least: 1, within_last_days: .nan}\n") == [
        (3, "condition.behaviour.within_last_days", "nan is not a finite number", finite_fix)]
    assert problems_of("name: a\ncondition: {attribute: lifetime_revenue, gt: -.inf}\n") == [
        (2, "condition.gt", "-inf is not a finite number", finite_fix)]
    assert problems_of("name: a\ncondition: {attribute: lifetime_orders, gt: 99999999999999999999}\n") == [
        (2, "condition.gt", "99999999999999999999 is beyond 64-bit integers",
         "write a whole number between -9223372036854775807 and 9223372036854775807")]
    assert problems_of("name: a\ncondition:\n  behaviour: {event_type: order, at_least: 1, within_last_days: 1000000}\n") == [
        (3, "condition.behaviour.within_last_days", "1000000 is too large",
         "give a number of days greater than 0 and at most 36525 (100 years; fractions allowed, 1 day = 86,400 s)")]
    assert problems_of("name: a\ncondition:\n  behaviour: {event_type: order, at_least: 3000000000, within_last_days: 1}\n") == [
        (3, "condition.behaviour.at_least", "3000000000 is too large", "give a whole number of events, 0 to 2147483647")]
    key_fix = "write every key as a name (name, description, condition, all, any, not, attribute, behaviour, ...)"
    assert problems_of("name: a\ncondition: {attribute: country, eq: US}\n1: x\nfoo: y\n") == [
        (3, "<root>", "key 1 is not a name", key_fix)]
    assert problems_of("name: a\ncondition: {attribute: country, eq: US}\n? [a, b]\n: x\n") == [
        (3, "<root>", "a key is a list or a mapping, not a name", key_fix)]
    (tmp_path / "latin1.yaml").write_bytes("name: a\ndescription: caf\xe9\ncondition: {attribute: country, eq: US}\n"
                                           .encode("latin-1"))
    with pytest.raises(SegmentDefinitionError) as caught:
        load_segments(tmp_path)
    assert [(Path(p.source).name, p.message, p.fix) for p in caught.value.problems] == [
        ("latin1.yaml", "the file is not UTF-8 text (byte 24)", "save the file as UTF-8")]


def test_a_misspelt_channel_is_named_with_the_channels_of_the_rules(tmp_path):
    from touchpoint.core.channels import load_rules

    (tmp_path / "searchers.yaml").write_text(
        "name: searchers\ncondition:\n  any:\n"
        "    - behaviour: {event_type: ad_click, at_least: 1, within_last_days: 7, channel: paid-search}\n"
        "    - not: {behaviour: {event_type: order, at_most: 0, within_last_days: 3, channel: [email, Direct]}}\n")
    assert [d.name for d in load_segments(tmp_path)] == ["searchers"]  # without the rules: not checked
    with pytest.raises(SegmentDefinitionError) as caught:
        load_segments(tmp_path, load_rules().channels)
    fix = ("use a channel of the channel rules: affiliate, direct, display, email, organic_search, organic_social, "
           "paid_search, paid_social, referral")
    assert [(p.line, seg.format_path(p.path), p.message, p.fix) for p in caught.value.problems] == [
        (4, "condition.any[0].behaviour.channel", "unknown channel 'paid-search'", fix),
        (5, "condition.any[1].not.behaviour.channel", "unknown channel 'Direct'", fix)]


def compile_problems(spark, condition: str) -> list[tuple[int | None, str, str, str]]:
    profile_schema = spark.createDataFrame([], PROFILE_SCHEMA).schema
    with pytest.raises(SegmentDefinitionError) as caught:
        compile_segment(parse_segment(f"name: a\ncondition:\n{textwrap.indent(condition, '  ')}", "a.yaml"),
                        profile_schema, AS_OF)
    return [(p.line, seg.format_path(p.path), p.message, p.fix) for p in caught.value.problems]


def test_compile_errors_name_the_attribute_and_the_fix(spark):
    [(line, path, message, fix)] = compile_problems(spark, "attribute: revenue\ngt: 1\n")
    assert (line, path, message) == (3, "condition.attribute", "unknown attribute 'revenue'")
    assert fix == ("use one of: channels, consent_email_marketing, country, customer_id, last_order_ts, "
                   "lifetime_orders, lifetime_revenue, note, rfm_frequency, rfm_recency, rfm_segment, signup_day")
    assert compile_problems(spark, "attribute: country\neq: 5\n") == [
        (4, "condition.eq", "5 cannot be compared with 'country', which is a text", "quote it: '5'")]
    assert compile_problems(spark, "attribute: lifetime_orders\ngte: '3'\n") == [
        (4, "condition.gte", "'3' cannot be compared with 'lifetime_orders', which is a number",
         "give a number, e.g. 100")]
    assert compile_problems(spark, "attribute: consent_email_marketing\ngt: 1\n") == [
        (4, "condition.gt", "'gt' does not apply to 'consent_email_marketing', which is a boolean",
         "use eq, ne, in or not_in")]
    assert compile_problems(spark, "attribute: lifetime_orders\nwithin_last_days: 3\n") == [
        (4, "condition.within_last_days", "'within_last_days' does not apply to 'lifetime_orders', which is a number",
         "use within_last_days only on timestamp or date attributes")]
    assert compile_problems(spark, "attribute: lifetime_orders\nbetween: [5, 1]\n") == [
        (4, "condition.between", "low end 5 is above high end 1", "write [low, high]")]
    assert compile_problems(spark, "attribute: rfm_recency\ncontains: 1\n") == [
        (4, "condition.contains", "'contains' does not apply to 'rfm_recency', which is a number",
         "use contains only on text or list attributes")]
    assert compile_problems(spark, "attribute: channels\neq: email\n") == [
        (4, "condition.eq", "'eq' does not apply to 'channels', which is a list",
         "use contains, is_null or not_null")]
    [(_, path, message, _)] = compile_problems(spark, "attribute: last_order_ts\ngt: '2024-04-01T10:00:00'\n")
    assert (path, message) == ("condition.gt", "'2024-04-01T10:00:00' is not a date or timestamp for 'last_order_ts'")
    [(_, path, message, _)] = compile_problems(spark, "attribute: signup_day\nlt: '2024-02-30'\n")
    assert (path, message) == ("condition.lt", "'2024-02-30' is not a date for 'signup_day'")
    assert compile_problems(spark, "behaviour: {event_type: order, at_least: 3, at_most: 1, within_last_days: 9}\n") \
        == [(3, "condition.behaviour", "at_least 3 is above at_most 1", "make at_least ≤ at_most")]
    # every problem of a file at once, each with its own line
    problems = compile_problems(spark, "any:\n  - attribute: country\n    in: [US, 1]\n  - attribute: nope\n"
                                       "    is_null: true\n")
    assert [(line, path) for line, path, _, _ in problems] == [(5, "condition.any[0].in[1]"),
                                                              (6, "condition.any[1].attribute")]


def test_injection_in_attribute_names_is_rejected(spark):
    for name in ("'x) OR (1=1'", "'country; DROP TABLE t'", "'`country`'", "'country OR 1=1'", "'a.b'"):
        [(_, path, message, _)] = problems_of(f"name: a\ncondition: {{attribute: {name}, eq: 1}}\n")
        assert path == "condition.attribute" and message.endswith("is not an allowed name")
    # a well-formed name that is not a profile column is rejected by the compiler
    assert compile_problems(spark, "attribute: __behaviour_0\nis_null: true\n")[0][2] == \
        "unknown attribute '__behaviour_0'"


def test_compiler_never_builds_sql_text():
    source = Path(seg.__file__).read_text()
    for forbidden in ("F.expr(", "selectExpr(", ".sql(", "expr(", "where(\"", "filter(\""):
        assert forbidden not in source


# ---------------------------------------------------------------- files and the schema


def test_folder_collects_every_problem_and_duplicate_names(tmp_path):
    (tmp_path / "nested").mkdir()
    (tmp_path / "one.yaml").write_text("name: same\ncondition: {attribute: country, eq: US}\n")
    (tmp_path / "nested" / "two.yml").write_text("name: same\ncondition: {attribute: country, eq: SE}\n")
    (tmp_path / "broken.yaml").write_text("name: broken\ncondition: {attribute: country}\n")
    (tmp_path / "notes.txt").write_text("not a segment")
    with pytest.raises(SegmentDefinitionError) as caught:
        load_segments(tmp_path)
    assert [(Path(p.source).name, seg.format_path(p.path), p.line) for p in caught.value.problems] == [
        ("broken.yaml", "condition", 2), ("one.yaml", "name", 1)]  # files are read in path order
    assert str(caught.value).splitlines()[2].endswith(
        f"one.yaml:1: name: segment name 'same' is also used by {tmp_path / 'nested' / 'two.yml'}; "
        "fix: give every segment a unique name")
    with pytest.raises(SegmentDefinitionError, match="segments folder does not exist"):
        load_segments(tmp_path / "missing")


def test_shipped_segments_validate_and_compile(spark):
    definitions = load_segments("segments")
    names = {d.name for d in definitions}
    assert {"high_value_recent_buyers", "cart_abandoners", "lapsed_customers", "active_now"} <= names
    compiled = compile_segments(definitions, spark.createDataFrame([], PROFILE_SCHEMA).schema, AS_OF)
    assert len(compiled) == len(definitions)


def test_rfm_segments_follow_the_profiles_rfm_map(spark):
    """One built-in segment per label of the RFM map; every R x F cell lands in exactly one."""
    from touchpoint.core.rfm import RFM_SEGMENTS, rfm_segment

    rfm = [d for d in load_segments("segments") if d.name.startswith("rfm_")]
    assert sorted(d.name for d in rfm) == sorted(f"rfm_{label}" for label, _ in RFM_SEGMENTS)
    cells = [(f"{r}{f}", "US", 1, 1.0, None, None, [], r, f, None, None, None) for r in range(1, 6) for f in range(1, 6)]
    grid = spark.createDataFrame(cells, PROFILE_SCHEMA).withColumn(
        "rfm_segment", rfm_segment(F.col("rfm_recency"), F.col("rfm_frequency")))
    members = grid.transform(seg.segment_members(compile_segments(rfm, grid.schema, AS_OF))).collect()
    by_cell: dict[str, list[str]] = {}
    for row in members:
        by_cell.setdefault(row["customer_id"], []).append(row["segment"])
    assert sorted(by_cell) == sorted(c[0] for c in cells)
    assert all(len(v) == 1 for v in by_cell.values())
    assert (by_cell["55"], by_cell["11"], by_cell["15"], by_cell["51"], by_cell["33"]) == (
        ["rfm_champions"], ["rfm_hibernating"], ["rfm_cant_lose"], ["rfm_new_customers"], ["rfm_need_attention"])


def test_published_schema_lists_the_envelope_event_types():
    from touchpoint.schemas.envelope import event_types

    schema = seg.segment_schema()
    assert tuple(schema["$defs"]["event_type"]["enum"]) == tuple(event_types())
    assert re.fullmatch(schema["properties"]["name"]["pattern"], "rfm_champions")
