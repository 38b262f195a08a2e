"""The segment language (BRIEF §6): YAML files, validated against a published JSON Schema, compiled
into Spark Columns.

Shared by the batch job (jobs/segments.py) and the speed layer, so nothing here reads a table or
the clock: the evaluation instant `as_of` is always a parameter (a datetime, or a Column such as a
window end in a stream), and behaviour conditions are counts over any DataFrame of events that
carries `customer_id`, `event_type`, `event_ts`, `channel` and `campaign_name`.

Compilation never builds SQL text: attribute names are checked against a pattern and against the
profile schema, then referenced with F.col; every value from a file becomes a typed F.lit. A file
therefore cannot inject code, and a value with quotes is just a value.

    definitions = load_segments(settings.segments_dir)          # SegmentDefinitionError on any problem
    compiled = compile_segments(definitions, profiles.schema, as_of)
    members = (profiles.transform(with_behaviour_counts(events, behaviours_of(compiled), as_of))
               .transform(segment_members(compiled)))              # (segment, customer_id)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from functools import lru_cache, reduce
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import yaml
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType, BooleanType, DataType, DateType, NumericType, StringType, StructType, TimestampNTZType,
    TimestampType,
)

SCHEMA_FILE = Path(__file__).with_name("segment.schema.json")
SEGMENT_FILE_PATTERNS = ("*.yaml", "*.yml")
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
# Columns an events DataFrame needs for behaviour conditions.
EVENT_COLUMNS = ("customer_id", "event_type", "event_ts", "channel", "campaign_name")
_MICROS_PER_DAY = 86_400_000_000

Path_ = tuple[Any, ...]  # a location inside a segment file: keys and list indexes


# ---------------------------------------------------------------- problems


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a segment file: where, what, and how to fix it."""

    source: str
    path: Path_
    message: str
    fix: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        return f"{where}: {format_path(self.path)}: {self.message}; fix: {self.fix}"


class SegmentDefinitionError(ValueError):
    """Every problem found in the segment files, one per line."""

    def __init__(self, problems: Sequence[Problem]):
        self.problems = tuple(problems)
        super().__init__("invalid segment definitions:\n" + "\n".join(f"  {p}" for p in self.problems))


def format_path(path: Path_) -> str:
    """('condition', 'all', 1, 'gte') -> 'condition.all[1].gte'; the document itself is '<root>'."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "<root>"


# ---------------------------------------------------------------- YAML with locations


class _SegmentLoader(yaml.SafeLoader):
    """Safe YAML with the YAML 1.2 core schema's booleans and numbers, as a JSON or YAML 1.2 reader
    of the same file sees them: `NO` (Norway) stays text; `010` is ten, not octal eight; `1:30`
    (YAML 1.1's base 60) and `1_000` are text, which the schema then refuses by name; `1e3` is a
    number. Dates stay text (the compiler parses them against the attribute's type)."""


_YAML_1_1_ONLY = ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:int",
                  "tag:yaml.org,2002:float")
_SegmentLoader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag not in _YAML_1_1_ONLY]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_SegmentLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
# Integers before floats: a plain scalar takes the first tag whose pattern matches it.
_SegmentLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789"))
_SegmentLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def _yaml_1_2_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = loader.construct_scalar(node)
    if text.startswith(("0o", "0x")):
        return int(text[2:], 8 if text[1] == "o" else 16)
    return int(text, 10)  # leading zeros are decimal


def _yaml_1_2_float(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> float:
    text = loader.construct_scalar(node).lower()
    if text.lstrip("+-") == ".inf":
        return -math.inf if text.startswith("-") else math.inf
    return math.nan if text == ".nan" else float(text)


_SegmentLoader.add_constructor("tag:yaml.org,2002:int", _yaml_1_2_int)
_SegmentLoader.add_constructor("tag:yaml.org,2002:float", _yaml_1_2_float)


def _node_lines(node: yaml.Node, path: Path_, lines: dict[Path_, int], duplicates: list[tuple[Path_, int]]) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):  # a list or mapping as a key: never a name
                raise _NotAName(path, key_node.start_mark.line + 1)
            key = key_node.value
            if key in seen:
                duplicates.append((path + (key,), key_node.start_mark.line + 1))
            seen.add(key)
            lines[path + (key,)] = key_node.start_mark.line + 1
            _node_lines(value_node, path + (key,), lines, duplicates)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _node_lines(item, path + (index,), lines, duplicates)


class _NotAName(Exception):
    def __init__(self, path: Path_, line: int):
        self.path, self.line = path, line


_KEY_FIX = "write every key as a name (name, description, condition, all, any, not, attribute, behaviour, ...)"
_LARGEST_INTEGER = 2 ** 63 - 1


def _unusable_values(document: Any, source: str, lines: Mapping[Path_, int], path: Path_ = ()) -> list[Problem]:
    """What JSON Schema lets through but no condition can use: keys that are not text, numbers that
    are not finite (YAML's .nan and .inf pass every bound), integers beyond 64 bits."""
    problems = []
    if isinstance(document, dict):
        for key, value in document.items():
            if not isinstance(key, str):
                line = lines.get(path + (str(key),)) or _line(lines, path)  # lines are keyed by the key's text
                problems.append(Problem(source, path, f"key {_short(key)} is not a name", _KEY_FIX, line))
                continue
            problems += _unusable_values(value, source, lines, path + (key,))
    elif isinstance(document, list):
        for index, item in enumerate(document):
            problems += _unusable_values(item, source, lines, path + (index,))
    elif isinstance(document, float) and not math.isfinite(document):
        problems.append(Problem(source, path, f"{document} is not a finite number",
                                "write a number (.nan and .inf cannot be compared or counted)", _line(lines, path)))
    elif isinstance(document, int) and not isinstance(document, bool) and abs(document) > _LARGEST_INTEGER:
        problems.append(Problem(source, path, f"{_short(document)} is beyond 64-bit integers",
                                f"write a whole number between {-_LARGEST_INTEGER} and {_LARGEST_INTEGER}",
                                _line(lines, path)))
    return problems


def _read_yaml(text: str, source: str) -> tuple[Any, dict[Path_, int]]:
    loader = _SegmentLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise SegmentDefinitionError([Problem(source, (), "the file is empty",
                                                  "write a segment: name, description, condition")])
        lines: dict[Path_, int] = {}
        duplicates: list[tuple[Path_, int]] = []
        _node_lines(node, (), lines, duplicates)
        if duplicates:
            raise SegmentDefinitionError([
                Problem(source, path, f"key {path[-1]!r} appears twice in one mapping",
                        "keep one; combine several conditions with all / any", line)
                for path, line in duplicates
            ])
        return loader.construct_document(node), lines
    except _NotAName as error:
        raise SegmentDefinitionError([Problem(source, error.path, "a key is a list or a mapping, not a name",
                                              _KEY_FIX, error.line)]) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        reason = getattr(error, "problem", None) or str(error)
        raise SegmentDefinitionError([Problem(
            source, (), f"not valid YAML: {reason}",
            "fix the YAML syntax (plain mappings, lists and scalars only; no tags)",
            mark.line + 1 if mark is not None else None,
        )]) from None
    finally:
        loader.dispose()


# ---------------------------------------------------------------- JSON Schema validation


@lru_cache(maxsize=1)
def segment_schema() -> dict:
    """The published JSON Schema of segment files."""
    return json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def _validator():
    from jsonschema import Draft202012Validator

    return Draft202012Validator(segment_schema())


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_JSON_TYPE_NAMES = {"object": "mapping", "array": "list", "string": "text", "number": "number",
                    "integer": "whole number", "boolean": "true/false"}


def _schema_problem(error, source: str, lines: Mapping[Path_, int]) -> Problem:
    path: Path_ = tuple(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    kind, value = error.validator, error.instance
    hint = schema.get("x-fix")
    if kind == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        unexpected = sorted(k for k in value if k not in allowed)
        path = path + (unexpected[0],)
        message = f"unknown key {', '.join(repr(k) for k in unexpected)}"
        fix = f"remove it or check the spelling; allowed here: {', '.join(allowed)}"
        if set(unexpected) & {"all", "any", "not", "attribute", "behaviour"}:
            fix += "; a condition holds one of all / any / not / attribute / behaviour, nest several under all or any"
    elif kind == "required":
        missing = next(k for k in error.validator_value if k not in value)
        message, fix = f"missing key {missing!r}", f"add '{missing}: ...'"
    else:
        if kind == "type":
            expected = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
            message = f"{_short(value)} is not a {' or '.join(_JSON_TYPE_NAMES.get(t, t) for t in expected)}"
        elif kind == "enum":
            message = f"{_short(value)} is not one of {', '.join(map(str, error.validator_value))}"
        elif kind == "const":
            message = f"{_short(value)} is not allowed here"
        elif kind == "pattern":
            message = f"{_short(value)} is not an allowed name"
        elif kind in ("minProperties", "maxProperties"):
            message = f"{'too few' if kind == 'minProperties' else 'too many'} keys ({', '.join(map(str, value))})"
        elif kind in ("minItems", "maxItems"):
            message = f"the list has {len(value)} item(s)"
        elif kind in ("minimum", "exclusiveMinimum", "minLength"):
            message = f"{_short(value)} is too small"
        elif kind in ("maximum", "exclusiveMaximum", "maxLength"):
            message = f"{_short(value)} is too large"
        elif kind == "anyOf" and all(set(branch) == {"required"} for branch in error.validator_value):
            keys = [k for branch in error.validator_value for k in branch["required"]]
            message = f"none of the keys {', '.join(keys)} is present"
        elif kind == "anyOf":
            message = f"{_short(value)} is not valid here"
        else:
            message = error.message if len(error.message) < 160 else error.message[:157] + "..."
        fix = hint or "see touchpoint/core/segment.schema.json and docs/SEGMENTS.md"
    return Problem(source, path, message, fix, _line(lines, path))


def _line(lines: Mapping[Path_, int], path: Path_) -> int | None:
    while path not in lines and path:
        path = path[:-1]
    return lines.get(path)


# ---------------------------------------------------------------- definitions


@dataclass(frozen=True)
class SegmentDefinition:
    name: str
    condition: Mapping[str, Any]
    description: str = ""
    source: str = "<inline>"
    lines: Mapping[Path_, int] = field(default_factory=dict, compare=False, repr=False)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the canonical definition: changes exactly when the meaning may change."""
        canonical = json.dumps({"name": self.name, "condition": self.condition}, sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def problem(self, path: Path_, message: str, fix: str) -> Problem:
        return Problem(self.source, path, message, fix, _line(self.lines, path))


def parse_segment(text: str, source: str = "<inline>") -> SegmentDefinition:
    """Parse and validate one segment file's text; SegmentDefinitionError names file, path and fix."""
    document, lines = _read_yaml(text, source)
    unusable = _unusable_values(document, source, lines)
    if unusable:  # the schema's checks would stumble over them
        raise SegmentDefinitionError(unusable)
    errors = sorted(_validator().iter_errors(document),
                    key=lambda e: ([str(p) for p in e.absolute_path], str(e.validator)))
    if errors:
        raise SegmentDefinitionError([_schema_problem(e, source, lines) for e in errors])
    return SegmentDefinition(document["name"], document["condition"], document.get("description", ""),
                             source, lines)


def segment_files(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    return sorted({p for pattern in SEGMENT_FILE_PATTERNS for p in folder.rglob(pattern) if p.is_file()})


def load_segments(folder: str | Path, channels: Iterable[str] | None = None) -> list[SegmentDefinition]:
    """Every segment file under `folder` (recursively, *.yaml / *.yml), validated; sorted by name.
    With `channels` (the channel rules' names), a behaviour's `channel` must be one of them: a
    misspelt channel would count no event, silently.

    All problems of all files are collected before raising, so one run lists everything to fix.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SegmentDefinitionError([Problem(str(folder), (), "the segments folder does not exist",
                                              "create it or set segments_dir (TOUCHPOINT_SEGMENTS_DIR)")])
    problems: list[Problem] = []
    definitions: list[SegmentDefinition] = []
    for path in segment_files(folder):
        try:
            definitions.append(parse_segment(path.read_text(encoding="utf-8"), str(path)))
        except SegmentDefinitionError as error:
            problems.extend(error.problems)
        except UnicodeDecodeError as error:
            problems.append(Problem(str(path), (), f"the file is not UTF-8 text (byte {error.start})",
                                    "save the file as UTF-8"))
    by_name: dict[str, SegmentDefinition] = {}
    for definition in definitions:
        if definition.name in by_name:
            problems.append(definition.problem(
                ("name",), f"segment name {definition.name!r} is also used by {by_name[definition.name].source}",
                "give every segment a unique name"))
        by_name.setdefault(definition.name, definition)
        if channels is not None:
            problems += _unknown_channels(definition, set(channels))
    if problems:
        raise SegmentDefinitionError(problems)
    return sorted(definitions, key=lambda d: d.name)


def _unknown_channels(definition: SegmentDefinition, channels: set[str]) -> list[Problem]:
    problems = []

    def visit(node: Any, path: Path_) -> None:
        if isinstance(node, dict):
            if path[-1:] == ("behaviour",) and "channel" in node:
                named = node["channel"]
                problems.extend(definition.problem(path + ("channel",), f"unknown channel {name!r}",
                                                   f"use a channel of the channel rules: {', '.join(sorted(channels))}")
                                for name in ([named] if isinstance(named, str) else named) if name not in channels)
            for key, value in node.items():
                visit(value, path + (key,))
        elif isinstance(node, list):
            for index, item in enumerate(node):
                visit(item, path + (index,))

    visit(definition.condition, ("condition",))
    return problems


# ---------------------------------------------------------------- compilation


@dataclass(frozen=True)
class Behaviour:
    """Count of a customer's events of some types (optionally some channels / campaigns) in the
    window [as_of - window_days, as_of). Identical behaviours share one count column."""

    event_types: tuple[str, ...]
    window_days: float
    channels: tuple[str, ...] | None = None
    campaigns: tuple[str, ...] | None = None

    @property
    def column(self) -> str:
        canonical = json.dumps([self.event_types, self.window_days, self.channels, self.campaigns])
        return "__behaviour_" + hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def event_filter(self, as_of: dt.datetime | Column) -> Column:
        condition = (F.col("event_type").isin(*[F.lit(t) for t in self.event_types])
                     & (F.col("event_ts") >= window_start(as_of, self.window_days))
                     & (F.col("event_ts") < _instant(as_of)))
        if self.channels is not None:
            condition &= F.col("channel").isin(*[F.lit(c) for c in self.channels])
        if self.campaigns is not None:
            condition &= F.trim(F.col("campaign_name")).isin(*[F.lit(c) for c in self.campaigns])
        return condition


@dataclass(frozen=True)
class CompiledSegment:
    name: str
    predicate: Column  # never null: true exactly for members
    behaviours: tuple[Behaviour, ...]
    fingerprint: str


def _instant(as_of: dt.datetime | Column) -> Column:
    if isinstance(as_of, Column):
        return as_of
    if as_of.tzinfo is None:
        raise ValueError(f"as_of must be timezone-aware (UTC), got {as_of!r}")
    return F.lit(as_of).cast(TimestampType())


def window_start(as_of: dt.datetime | Column, days: float) -> Column:
    """as_of minus `days` × 86,400 s, exact to the microsecond."""
    micros = round(days * _MICROS_PER_DAY)
    if isinstance(as_of, Column):
        return F.timestamp_micros(F.unix_micros(as_of) - F.lit(micros))
    return _instant(as_of - dt.timedelta(microseconds=micros))


_ORDER_OPS = {"gt": Column.__gt__, "gte": Column.__ge__, "lt": Column.__lt__, "lte": Column.__le__}
_OPERATORS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "between", "is_null", "not_null",
              "contains", "within_last_days")


def _kind(data_type: DataType) -> str:
    if isinstance(data_type, BooleanType):
        return "boolean"
    if isinstance(data_type, NumericType):
        return "number"
    if isinstance(data_type, StringType):
        return "text"
    if isinstance(data_type, (TimestampType, TimestampNTZType)):
        return "timestamp"
    if isinstance(data_type, DateType):
        return "date"
    if isinstance(data_type, ArrayType):
        return "list"
    return "other"


_EXAMPLES = {"number": "a number, e.g. 100", "text": "a text, e.g. 'US'", "boolean": "true or false",
             "timestamp": "an RFC 3339 timestamp with offset or a date, e.g. '2024-05-01T00:00:00Z'",
             "date": "a date, e.g. '2024-05-01'"}


class _Invalid(Exception):
    def __init__(self, path: Path_, message: str, fix: str):
        self.path, self.message, self.fix = path, message, fix


def _literal(value: Any, kind: str, path: Path_, attribute: str) -> Column:
    """A typed literal for a value compared with an attribute of the given kind."""
    mismatch = _Invalid(path, f"{_short(value)} cannot be compared with {attribute!r}, which is a {kind}",
                        f"give {_EXAMPLES.get(kind, 'a value of the same type')}")
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise mismatch
        return F.lit(value)
    if kind == "text":
        if not isinstance(value, str):
            if isinstance(value, (bool, int, float)):
                mismatch.fix = f"quote it: '{str(value).lower() if isinstance(value, bool) else value}'"
            raise mismatch
        return F.lit(value)
    if kind == "boolean":
        if not isinstance(value, bool):
            raise mismatch
        return F.lit(value)
    if kind in ("timestamp", "date"):
        if not isinstance(value, str):
            raise mismatch
        return F.lit(_parse_instant(value, kind, path, attribute))
    raise mismatch


def _parse_instant(text: str, kind: str, path: Path_, attribute: str) -> dt.date | dt.datetime:
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            day = dt.date.fromisoformat(text)
            return day if kind == "date" else dt.datetime.combine(day, dt.time(), tzinfo=dt.timezone.utc)
        if kind == "timestamp":
            instant = dt.datetime.fromisoformat(text.replace("z", "Z"))
            if instant.tzinfo is not None:
                return instant.astimezone(dt.timezone.utc)
    except ValueError:
        pass
    raise _Invalid(path, f"{_short(text)} is not a {'date' if kind == 'date' else 'date or timestamp'} "
                         f"for {attribute!r}", f"give {_EXAMPLES[kind]}")


def _compile_attribute(node: Mapping[str, Any], path: Path_, schema: StructType,
                       as_of: dt.datetime | Column) -> Column:
    name = node["attribute"]
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or name not in schema.fieldNames():
        known = ", ".join(sorted(f for f in schema.fieldNames() if not f.startswith("__")))
        raise _Invalid(path + ("attribute",), f"unknown attribute {name!r}", f"use one of: {known}")
    data_type = schema[name].dataType
    kind = _kind(data_type)
    op = next(k for k in node if k != "attribute")
    value = node[op]
    column = F.col(name)
    at = path + (op,)

    def unsupported(allowed: str) -> _Invalid:
        return _Invalid(at, f"{op!r} does not apply to {name!r}, which is a {kind}", f"use {allowed}")

    if op == "is_null":
        return column.isNull()
    if op == "not_null":
        return column.isNotNull()
    if kind in ("list", "other") and op != "contains":
        raise unsupported("contains, is_null or not_null" if kind == "list" else "is_null or not_null")
    if op == "eq":
        condition = column == _literal(value, kind, at, name)
    elif op == "ne":
        condition = column != _literal(value, kind, at, name)
    elif op in _ORDER_OPS:
        if kind == "boolean":
            raise unsupported("eq, ne, in or not_in")
        condition = _ORDER_OPS[op](column, _literal(value, kind, at, name))
    elif op in ("in", "not_in"):
        values = [_literal(v, kind, at + (i,), name) for i, v in enumerate(value)]
        condition = column.isin(*values)
        condition = ~condition if op == "not_in" else condition
    elif op == "between":
        if kind == "boolean":
            raise unsupported("eq, ne, in or not_in")
        low, high = (_literal(v, kind, at + (i,), name) for i, v in enumerate(value))
        if _comparable(value[0], kind) > _comparable(value[1], kind):
            raise _Invalid(at, f"low end {_short(value[0])} is above high end {_short(value[1])}",
                           "write [low, high]")
        condition = (column >= low) & (column <= high)
    elif op == "contains":
        if kind == "text":
            condition = column.contains(_literal(value, "text", at, name))  # substring, not a pattern
        elif kind == "list":
            element = _kind(data_type.elementType)
            condition = F.array_contains(column, _literal(value, element, at, name))
        else:
            raise unsupported("contains only on text or list attributes")
    elif op == "within_last_days":
        if kind not in ("timestamp", "date"):
            raise unsupported("within_last_days only on timestamp or date attributes")
        instant = column.cast(TimestampType()) if kind == "date" else column
        condition = (instant >= window_start(as_of, value)) & (instant < _instant(as_of))
    else:  # the schema admits no other operator
        raise _Invalid(at, f"unknown operator {op!r}", f"use one of {', '.join(_OPERATORS)}")
    # Two-valued logic: a comparison with a missing (null) attribute is false, so `not` is a true complement.
    return F.coalesce(condition, F.lit(False))


def _comparable(value: Any, kind: str) -> Any:
    return _parse_instant(value, kind, (), "") if kind in ("timestamp", "date") else value


def _as_tuple(value: str | list[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    return tuple(sorted({value} if isinstance(value, str) else set(value)))


def _compile_behaviour(node: Mapping[str, Any], path: Path_, found: list[Behaviour]) -> Column:
    spec = node["behaviour"]
    at_least, at_most = spec.get("at_least"), spec.get("at_most")
    if at_least is not None and at_most is not None and at_least > at_most:
        raise _Invalid(path + ("behaviour",), f"at_least {at_least} is above at_most {at_most}",
                       "make at_least ≤ at_most")
    campaigns = spec.get("campaign")
    behaviour = Behaviour(
        event_types=_as_tuple(spec["event_type"]),
        window_days=float(spec["within_last_days"]),
        channels=_as_tuple(spec.get("channel")),
        # campaign names compare as written, trimmed (BRIEF §4)
        campaigns=_as_tuple([c.strip() for c in ([campaigns] if isinstance(campaigns, str) else campaigns)])
        if campaigns is not None else None,
    )
    found.append(behaviour)
    count = F.coalesce(F.col(behaviour.column), F.lit(0))  # no events at all: a count of 0
    condition = F.lit(True)
    if at_least is not None:
        condition &= count >= F.lit(int(at_least))
    if at_most is not None:
        condition &= count <= F.lit(int(at_most))
    return condition


def _compile_condition(node: Mapping[str, Any], path: Path_, schema: StructType, as_of, found: list[Behaviour],
                       problems: list[tuple[Path_, str, str]]) -> Column:
    try:
        if "all" in node:
            parts = [_compile_condition(c, path + ("all", i), schema, as_of, found, problems)
                     for i, c in enumerate(node["all"])]
            return reduce(lambda a, b: a & b, parts)
        if "any" in node:
            parts = [_compile_condition(c, path + ("any", i), schema, as_of, found, problems)
                     for i, c in enumerate(node["any"])]
            return reduce(lambda a, b: a | b, parts)
        if "not" in node:
            return ~_compile_condition(node["not"], path + ("not",), schema, as_of, found, problems)
        if "attribute" in node:
            return _compile_attribute(node, path, schema, as_of)
        return _compile_behaviour(node, path, found)
    except _Invalid as invalid:
        problems.append((invalid.path, invalid.message, invalid.fix))
        return F.lit(False)


def compile_segment(definition: SegmentDefinition, profile_schema: StructType,
                    as_of: dt.datetime | Column) -> CompiledSegment:
    """Compile one definition against the columns of a profiles DataFrame, as of an instant."""
    problems: list[tuple[Path_, str, str]] = []
    found: list[Behaviour] = []
    predicate = _compile_condition(definition.condition, ("condition",), profile_schema, as_of, found, problems)
    if problems:
        raise SegmentDefinitionError([definition.problem(*p) for p in problems])
    return CompiledSegment(definition.name, predicate, tuple(dict.fromkeys(found)), definition.fingerprint)


def compile_segments(definitions: Iterable[SegmentDefinition], profile_schema: StructType,
                     as_of: dt.datetime | Column) -> list[CompiledSegment]:
    compiled, problems = [], []
    for definition in definitions:
        try:
            compiled.append(compile_segment(definition, profile_schema, as_of))
        except SegmentDefinitionError as error:
            problems.extend(error.problems)
    if problems:
        raise SegmentDefinitionError(problems)
    return compiled


# ---------------------------------------------------------------- evaluation (pure transforms)


def behaviours_of(compiled: Iterable[CompiledSegment]) -> tuple[Behaviour, ...]:
    return tuple(dict.fromkeys(b for segment in compiled for b in segment.behaviours))


def behaviour_windows(definition: SegmentDefinition) -> list[tuple[Path_, float]]:
    """(path, within_last_days) of every behaviour condition of a loaded (valid) definition."""
    found = []

    def walk(node: Any, path: Path_) -> None:
        if isinstance(node, Mapping):
            if "behaviour" in node:
                found.append((path + ("behaviour", "within_last_days"), float(node["behaviour"]["within_last_days"])))
            for key in ("all", "any"):
                for index, child in enumerate(node.get(key) or ()):
                    walk(child, path + (key, index))
            if "not" in node:
                walk(node["not"], path + ("not",))

    walk(definition.condition, ("condition",))
    return found


def longest_window_days(behaviours: Iterable[Behaviour]) -> float | None:
    """How far back behaviour conditions look; None when no segment counts events."""
    return max((b.window_days for b in behaviours), default=None)


def behaviour_counts(behaviours: Sequence[Behaviour], as_of: dt.datetime | Column) -> Callable[[DataFrame], DataFrame]:
    """Events (with customer_id) -> one row per customer with one count column per behaviour."""

    def transform(events: DataFrame) -> DataFrame:
        counts = [F.count_if(b.event_filter(as_of)).alias(b.column) for b in behaviours]
        return events.where(F.col("customer_id").isNotNull()).groupBy("customer_id").agg(*counts)

    return transform


def with_behaviour_counts(events: DataFrame, behaviours: Sequence[Behaviour],
                          as_of: dt.datetime | Column) -> Callable[[DataFrame], DataFrame]:
    """Profiles -> profiles plus the behaviour count columns (null, read as 0, without events)."""

    def transform(profiles: DataFrame) -> DataFrame:
        if not behaviours:
            return profiles
        return profiles.join(events.transform(behaviour_counts(behaviours, as_of)), "customer_id", "left")

    return transform


def segment_members(compiled: Sequence[CompiledSegment]) -> Callable[[DataFrame], DataFrame]:
    """Profiles with behaviour counts -> (segment, customer_id), one row per membership."""

    def transform(profiles: DataFrame) -> DataFrame:
        if not compiled:
            return profiles.select(F.lit(None).cast("string").alias("segment"), "customer_id").limit(0)
        names = F.array(*[F.when(s.predicate, F.lit(s.name)) for s in compiled])
        return (profiles.select("customer_id", F.explode(F.filter(names, lambda n: n.isNotNull())).alias("segment"))
                .select("segment", "customer_id"))

    return transform
