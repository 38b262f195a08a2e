"""The event envelope JSON Schema and what is derived from it (never written twice)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

SCHEMA_FILE = Path(__file__).parent / "event.v1.json"


@lru_cache(maxsize=1)
def envelope_schema() -> dict:
    return json.loads(SCHEMA_FILE.read_text())


def schema_version() -> str:
    return envelope_schema()["x-schema-version"]


@lru_cache(maxsize=1)
def event_types() -> tuple[str, ...]:
    return tuple(envelope_schema()["properties"]["event_type"]["enum"])


@dataclass(frozen=True)
class Field:
    """One leaf of the envelope and the silver column it lands in."""

    path: tuple[str, ...]  # e.g. ("context", "page_url")
    column: str  # silver column
    json_types: tuple[str, ...]
    spark_type: str  # simple Spark SQL type name
    identifier: bool = False
    pii: bool = False
    required: bool = False


_JSON_TO_SPARK = {"string": "string", "number": "double", "integer": "long", "boolean": "boolean"}


def _leaves(node: dict, path: tuple[str, ...], required: set[str]) -> list[Field]:
    fields = []
    for name, spec in node.get("properties", {}).items():
        types = spec["type"] if isinstance(spec["type"], list) else [spec["type"]]
        here = (*path, name)
        if "object" in types:
            fields.extend(_leaves(spec, here, set(spec.get("required", []))))
            continue
        concrete = [t for t in types if t != "null"]
        spark_type = spec.get("x-spark-type") or _JSON_TO_SPARK[concrete[0]]
        fields.append(
            Field(here, spec["x-column"], tuple(types), spark_type, bool(spec.get("x-identifier")),
                  bool(spec.get("x-pii")), name in required and not path)
        )
    return fields


@lru_cache(maxsize=1)
def envelope_fields() -> tuple[Field, ...]:
    schema = envelope_schema()
    return tuple(_leaves(schema, (), set(schema["required"])))


def field_by_column(column: str) -> Field:
    return {f.column: f for f in envelope_fields()}[column]


@lru_cache(maxsize=1)
def identifier_columns() -> tuple[str, ...]:
    return tuple(f.column for f in envelope_fields() if f.identifier)


@lru_cache(maxsize=1)
def pii_columns() -> tuple[str, ...]:
    return tuple(f.column for f in envelope_fields() if f.pii)


CAMPAIGN_COLUMNS = tuple(f"campaign_{p}" for p in ("source", "medium", "name", "term", "content"))
