"""The expectation suites: one JSON file per audited table, next to this module.

A file is a Great Expectations 1.x suite in GX's own configuration format, loadable as is with
`gx.ExpectationSuite(**json.load(file))`:

    {"name": "<table>",                    # also the file name: <table>.json
     "meta": {"table": "<table>", "unexpected_samples": 0, "description": "..."},
     "suite_parameters": {"name": value},  # optional constants of this suite
     "expectations": [
        {"type": "expect_...", "kwargs": {...},
         "meta": {"severity": "critical" | "warning", "view": "<view name>"},   # view optional
         "notes": "..."}]}

- `severity`: a failing critical expectation fails the audit; a warning is only reported.
- `view`: the expectation runs on a derived DataFrame (touchpoint.expectations.views) instead of the
  table itself; cross-row invariants (sums per group, the column list) are checked that way.
- `{"$PARAMETER": "name"}` in kwargs is GX's own placeholder. Its value comes from the suite's
  `suite_parameters` or, for what the platform defines elsewhere, from `runtime_parameters` (the
  event types of the schema, the channels of the channel rules, the run's as-of bounds, ...), so
  no list is typed twice.
- `unexpected_samples`: how many unexpected values GX keeps per expectation. 0 for tables holding
  raw PII: sample values end up in the results table and the Data Docs.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

from touchpoint.core.config import Settings

SUITES_DIR = Path(__file__).parent
SEVERITIES = ("critical", "warning")
_TOP_LEVEL_KEYS = {"name", "meta", "expectations", "suite_parameters", "notes"}
_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)?$")
_EXPECTATION_KEYS = {"type", "kwargs", "meta", "notes", "description"}

# Filled in at run time by `runtime_parameters`: the contract lives elsewhere, never in a suite file.
RUNTIME_PARAMETERS = ("event_types", "channels", "identifier_types", "raw_pii_columns", "event_ts_min",
                      "event_ts_max")


class SuiteError(ValueError):
    """A suite file that cannot be used: the message names the file, the expectation and the fix."""


@dataclass(frozen=True)
class ExpectationSpec:
    index: int  # position in the suite file; identifies the expectation within its suite
    type: str
    kwargs: dict[str, Any]
    severity: str
    view: str | None
    config: dict[str, Any]  # the file's entry, as GX reads it

    def gx_config(self) -> dict[str, Any]:
        """The entry for GX, with its position added to meta so results map back to it."""
        return {**self.config, "meta": {**self.config.get("meta", {}), "index": self.index}}


@dataclass(frozen=True)
class TableSuite:
    table: str  # key of the audited frame: a catalog table name, or "exports"
    path: Path
    expectations: tuple[ExpectationSpec, ...]
    suite_parameters: dict[str, Any]
    unexpected_samples: int

    @property
    def views(self) -> tuple[str | None, ...]:
        """None (the table itself) first, then the views in the order the file first names them."""
        seen: list[str | None] = [None]
        for spec in self.expectations:
            if spec.view not in seen:
                seen.append(spec.view)
        return tuple(seen)

    @property
    def inputs(self) -> tuple[str, ...]:
        """Frames the suite's views need besides its own table (pass them to the audit too)."""
        from touchpoint.expectations.views import VIEWS

        return tuple(dict.fromkeys(i for v in self.views if v for i in VIEWS[v].inputs))

    def expectations_on(self, view: str | None) -> tuple[ExpectationSpec, ...]:
        return tuple(s for s in self.expectations if s.view == view)

    def gx_suite_name(self, view: str | None) -> str:
        return self.table if view is None else f"{self.table}.{view}"


def _parameter_names(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        if set(value) == {"$PARAMETER"}:
            yield value["$PARAMETER"]
            return
        for item in value.values():
            yield from _parameter_names(item)
    elif isinstance(value, list):
        for item in value:
            yield from _parameter_names(item)


def parse_suite(document: dict[str, Any], path: Path) -> TableSuite:
    """Check a suite document and return it as a TableSuite; SuiteError names what is wrong."""
    from touchpoint.expectations.views import VIEWS

    where = str(path)
    if not isinstance(document, dict):
        raise SuiteError(f"{where}: expected a JSON object with name, meta and expectations")
    unknown = set(document) - _TOP_LEVEL_KEYS
    if unknown:
        raise SuiteError(f"{where}: unknown keys {sorted(unknown)}; a suite file holds {sorted(_TOP_LEVEL_KEYS)}")
    name, meta = document.get("name"), document.get("meta") or {}
    if not isinstance(name, str) or name != path.stem:
        raise SuiteError(f"{where}: 'name' must equal the file name without .json ({path.stem!r}), got {name!r}")
    if not _NAME_PATTERN.match(name):
        raise SuiteError(f"{where}: a suite is named after its table, like layer.table_name; got {name!r}")
    if meta.get("table") != name:
        raise SuiteError(f"{where}: meta.table must be the audited table {name!r}, got {meta.get('table')!r}")
    samples = meta.get("unexpected_samples", 0)
    if not isinstance(samples, int) or isinstance(samples, bool) or not 0 <= samples <= 20:
        raise SuiteError(f"{where}: meta.unexpected_samples must be an integer from 0 to 20, got {samples!r}")
    suite_parameters = document.get("suite_parameters") or {}
    clash = set(suite_parameters) & set(RUNTIME_PARAMETERS)
    if clash:
        raise SuiteError(f"{where}: suite_parameters {sorted(clash)} are filled at run time; rename them")
    known_parameters = set(suite_parameters) | set(RUNTIME_PARAMETERS)
    entries = document.get("expectations")
    if not isinstance(entries, list) or not entries:
        raise SuiteError(f"{where}: 'expectations' must be a non-empty list")

    specs = []
    for index, entry in enumerate(entries):
        at = f"{where}: expectations[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("type"), str) or not entry["type"].startswith("expect_"):
            raise SuiteError(f"{at}: needs 'type' (an expect_... name), 'kwargs' and 'meta'")
        extra = set(entry) - _EXPECTATION_KEYS
        if extra:
            raise SuiteError(f"{at}: unknown keys {sorted(extra)}; allowed {sorted(_EXPECTATION_KEYS)}")
        kwargs, entry_meta = entry.get("kwargs"), entry.get("meta")
        if not isinstance(kwargs, dict) or not isinstance(entry_meta, dict):
            raise SuiteError(f"{at}: 'kwargs' and 'meta' must be objects")
        severity = entry_meta.get("severity")
        if severity not in SEVERITIES:
            raise SuiteError(f"{at}: meta.severity must be one of {list(SEVERITIES)}, got {severity!r}")
        view = entry_meta.get("view")
        if view is not None and view not in VIEWS:
            raise SuiteError(f"{at}: unknown view {view!r}; known views: {', '.join(sorted(VIEWS))}")
        missing = set(_parameter_names(kwargs)) - known_parameters
        if missing:
            raise SuiteError(f"{at}: unknown $PARAMETER {sorted(missing)}; define it in suite_parameters "
                             f"or use one filled at run time: {', '.join(RUNTIME_PARAMETERS)}")
        specs.append(ExpectationSpec(index, entry["type"], kwargs, severity, view, entry))
    return TableSuite(name, path, tuple(specs), dict(suite_parameters), samples)


def load_suite_file(path: str | Path) -> TableSuite:
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise SuiteError(f"{path}: cannot read the suite ({error})") from None
    return parse_suite(document, path)


@lru_cache(maxsize=1)
def load_suites() -> dict[str, TableSuite]:
    """Every suite shipped in this package, keyed by the table it audits."""
    suites = [load_suite_file(p) for p in sorted(SUITES_DIR.glob("*.json"))]
    return {s.table: s for s in suites}


def suite_for(table: str) -> TableSuite:
    suites = load_suites()
    if table not in suites:
        raise KeyError(f"no expectation suite for {table!r}; suites: {', '.join(sorted(suites))}")
    return suites[table]


# ---------------------------------------------------------------- run-time parameters


def as_of_for(logical_date: dt.date) -> dt.datetime:
    """A run for D covers event_ts < D+1 00:00:00Z (BRIEF §4)."""
    return dt.datetime.combine(logical_date + dt.timedelta(days=1), dt.time(0), tzinfo=dt.timezone.utc)


def channel_names(settings: Settings) -> tuple[str, ...]:
    """Every channel the configured rules can produce: the rules' channels, then the default."""
    from touchpoint.core.channels import load_rules

    rules = load_rules(settings.channel_rules_file)
    names = [channel for channel, _ in rules.rules] + [rules.default]
    return tuple(dict.fromkeys(names))


def runtime_parameters(settings: Settings, logical_date: dt.date) -> dict[str, Any]:
    """The values of the placeholders no suite file may hold itself (RUNTIME_PARAMETERS)."""
    from touchpoint.core.events import MAX_FUTURE, OLDEST_EVENT
    from touchpoint.schemas import event_types, identifier_columns, pii_columns

    return {
        "event_types": list(event_types()),
        "channels": list(channel_names(settings)),
        "identifier_types": list(identifier_columns()),
        "raw_pii_columns": list(pii_columns()),
        # ingestion rejects events before 2000-01-01 and more than a day after their arrival
        "event_ts_min": OLDEST_EVENT,
        "event_ts_max": as_of_for(logical_date) + MAX_FUTURE,
    }
