"""The audit step of write–audit–publish: validate staged frames against their suites with Great
Expectations, persist every expectation result, build the Data Docs.

    result = audit(spark, settings, {"gold.attribution_credits": staged_credits,
                                     "gold.attribution_conversions": staged_conversions},
                   run_id="scheduled__2024-05-01T00:00:00+00:00", logical_date=date(2024, 5, 1))
    result.raise_if_failed()   # before publishing

Frames are keyed by table name (the suite file names, see touchpoint.expectations.suites). A frame
without a suite is only an input of views (gold.attribution_conversions, erased_customers) and is
listed in `AuditResult.unaudited` when nothing uses it. `erased_customers` may also be a plain list
of customer ids.

GX is imported on the first call only (it takes seconds), and one ephemeral GX context serves one
call. Results go to gold.audit_results in the published gold namespace (a staging namespace is
thrown away when an audit fails, its results must not be); re-running a run id replaces the rows of
the tables it audits again. validated_at is the run's as-of (D+1 00:00Z) unless a timestamp is given.

Data Docs: <reports_dir>/data_docs/index.html (reports_dir defaults to <state_dir>/reports). GX's
validation results are kept as JSON under <reports_dir>/gx_validations, so the index lists every
audit, not only the last one; a re-run of a run id overwrites its pages.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import BooleanType, DateType, IntegerType, StringType, StructField, StructType, TimestampType

from touchpoint.core.catalog import table_path
from touchpoint.core.config import Settings
from touchpoint.core.delta import ensure_table
from touchpoint.expectations.suites import (
    ExpectationSpec, TableSuite, as_of_for, load_suites, runtime_parameters,
)
from touchpoint.expectations.views import ERASED_CUSTOMERS, VIEWS

log = logging.getLogger(__name__)

RESULTS_TABLE = "gold.audit_results"
# Airflow run ids look like scheduled__2024-05-01T00:00:00+00:00; no quote can reach the replaceWhere.
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+\-]{0,199}$")

_S = StringType()
RESULTS_SCHEMA = StructType([StructField(name, kind, True) for name, kind in (
    ("run_id", _S), ("logical_date", DateType()), ("table_name", _S), ("view", _S), ("suite", _S),
    ("expectation_index", IntegerType()), ("expectation_type", _S), ("kwargs_json", _S), ("severity", _S),
    ("success", BooleanType()), ("observed_value_json", _S), ("exception_message", _S),
    ("validated_at", TimestampType()),
)])


class AuditFailed(RuntimeError):
    """A critical expectation failed: the staged tables must not be published."""

    def __init__(self, result: "AuditResult"):
        self.result = result
        failures = "; ".join(o.label for o in result.critical_failures)
        super().__init__(f"audit {result.run_id} ({result.logical_date}) failed: {failures}")


@dataclass(frozen=True)
class ExpectationOutcome:
    table: str
    view: str | None
    suite: str  # GX suite name: the table, or "<table>.<view>"
    index: int  # position in the suite file
    expectation_type: str
    kwargs: dict[str, Any]  # as validated: placeholders filled in
    severity: str
    success: bool
    observed: dict[str, Any]  # GX's result (counts, observed value, samples as configured)
    exception: str | None = None

    @property
    def columns(self) -> tuple[str, ...]:
        k = self.kwargs
        if "column" in k:
            return (k["column"],)
        if "column_list" in k:
            return tuple(k["column_list"])
        return tuple(k[c] for c in ("column_A", "column_B") if c in k)

    @property
    def label(self) -> str:
        return f"{self.suite}: {self.expectation_type}({', '.join(self.columns)})"


@dataclass(frozen=True)
class AuditResult:
    run_id: str
    logical_date: dt.date
    validated_at: dt.datetime
    outcomes: tuple[ExpectationOutcome, ...]
    unaudited: tuple[str, ...]  # frames given that no suite or view used
    data_docs_index: Path | None

    @property
    def critical_failures(self) -> tuple[ExpectationOutcome, ...]:
        return tuple(o for o in self.outcomes if not o.success and o.severity == "critical")

    @property
    def warnings(self) -> tuple[ExpectationOutcome, ...]:
        return tuple(o for o in self.outcomes if not o.success and o.severity == "warning")

    @property
    def success(self) -> bool:
        return not self.critical_failures

    @property
    def tables(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(o.table for o in self.outcomes))

    def raise_if_failed(self) -> None:
        if not self.success:
            raise AuditFailed(self)

    def summary(self) -> dict[str, Any]:
        """JSON-friendly summary for job and task logs."""
        return {
            "run_id": self.run_id, "logical_date": self.logical_date.isoformat(), "success": self.success,
            "tables": list(self.tables), "expectations": len(self.outcomes),
            "critical_failures": [o.label for o in self.critical_failures],
            "warnings": [o.label for o in self.warnings], "unaudited": list(self.unaudited),
            "data_docs": str(self.data_docs_index) if self.data_docs_index else None,
        }


# ---------------------------------------------------------------- locations


def reports_dir(settings: Settings) -> Path:
    return (settings.reports_dir or settings.state_dir / "reports").resolve()


def data_docs_dir(settings: Settings) -> Path:
    """The GX Data Docs site: index.html lists every audit whose results are under gx_validations."""
    return reports_dir(settings) / "data_docs"


def results_path(settings: Settings) -> str:
    """gold.audit_results in the published gold namespace, whatever namespace the run stages into."""
    published = Settings.model_fields["gold_namespace"].default
    return table_path(RESULTS_TABLE, settings.model_copy(update={"gold_namespace": published}))


# ---------------------------------------------------------------- JSON of GX values


def _json_default(value: Any) -> Any:
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def _clean(value: Any) -> Any:
    """NaN and infinities are not JSON: write them as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def to_json(value: Any) -> str:
    return json.dumps(_clean(value), default=_json_default, sort_keys=True, allow_nan=False)


# ---------------------------------------------------------------- GX


def _gx_context(docs_dir: Path, validations_dir: Path):
    """A GX context held in memory except for two folders: the validation results (JSON, the source
    of the Data Docs, so that the docs of earlier audits survive) and the Data Docs site."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig, InMemoryStoreBackendDefaults, ProgressBarsConfig,
    )

    defaults = InMemoryStoreBackendDefaults(init_temp_docs_sites=False)
    defaults.stores[defaults.validation_results_store_name]["store_backend"] = {
        "class_name": "TupleFilesystemStoreBackend", "base_directory": str(validations_dir)}
    config = DataContextConfig(
        store_backend_defaults=defaults,
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
        data_docs_sites={"touchpoint": {
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }},
    )
    return gx.get_context(project_config=config, mode="ephemeral")


def _add_suites(context, suites: Iterable[TableSuite]) -> dict[str, Any]:
    """Every suite into the context (the Data Docs index drops the pages of suites it does not know)."""
    import great_expectations as gx

    added = {}
    for suite in suites:
        for view in suite.views:
            specs = suite.expectations_on(view)
            name = suite.gx_suite_name(view)
            gx_suite = gx.ExpectationSuite(name=name, expectations=[s.gx_config() for s in specs],
                                           meta={"table": suite.table, "view": view})
            if len(gx_suite.expectations) != len(specs):  # GX logs and skips an invalid entry: refuse instead
                raise RuntimeError(f"{suite.path}: GX rejected {len(specs) - len(gx_suite.expectations)} "
                                   f"expectation(s) of {name}; see the GX log above")
            added[name] = context.suites.add(gx_suite)
    return added


def _build_data_docs(context, run_id: str, suite_names: Iterable[str]) -> None:
    """Render the pages of every suite and of this run's validations, then the index of all runs."""
    from great_expectations.data_context.types.resource_identifiers import ExpectationSuiteIdentifier

    names = list(suite_names)
    validations = [k for k in context.validation_results_store.list_keys()
                   if k.run_id.run_name == run_id and k.expectation_suite_identifier.name in names]
    context.build_data_docs(resource_identifiers=[ExpectationSuiteIdentifier(name=n) for n in names] + validations)


def _exception_message(info: Any) -> str | None:
    """GX reports exceptions as {raised_exception, exception_message} or nested per metric."""
    if not isinstance(info, dict):
        return None
    if "raised_exception" in info:
        return info.get("exception_message") if info.get("raised_exception") else None
    messages = [m for m in (_exception_message(v) for v in info.values()) if m]
    return "; ".join(messages) or None


def _failed(suite: TableSuite, view: str | None, specs: Iterable[ExpectationSpec], reason: str) -> list[ExpectationOutcome]:
    """Outcomes of expectations that could not run: failed, with the reason."""
    return [ExpectationOutcome(suite.table, view, suite.gx_suite_name(view), s.index, s.type, s.kwargs, s.severity,
                               False, {}, reason) for s in specs]


def _validate(context, datasource, gx_suite, suite: TableSuite, view: str | None, frame: DataFrame,
              parameters: Mapping[str, Any], run_identifier) -> list[ExpectationOutcome]:
    import great_expectations as gx

    specs = suite.expectations_on(view)
    name = suite.gx_suite_name(view)
    batch = datasource.add_dataframe_asset(name=name).add_batch_definition_whole_dataframe("whole")
    definition = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=gx_suite))

    def run(samples: int):
        return definition.run(
            batch_parameters={"dataframe": frame},
            expectation_parameters=dict(parameters),
            result_format={"result_format": "BASIC", "partial_unexpected_count": samples},
            run_id=run_identifier,
        )

    # Sampling unexpected values costs GX a Spark job per expectation even when there are none, so
    # samples are asked for only when some expectation found unexpected values. The second run
    # stores its result under the same key: the kept result is exactly a sampled run's.
    validation = run(0)
    if suite.unexpected_samples and any(_has_unexpected(item.result) for item in validation.results):
        validation = run(suite.unexpected_samples)
    by_index = {s.index: s for s in specs}
    outcomes = []
    for item in validation.results:
        config = item.expectation_config
        spec = by_index[config.meta["index"]]
        kwargs = {k: v for k, v in config.kwargs.items() if k != "batch_id"}
        exception = _exception_message(item.exception_info)
        outcomes.append(ExpectationOutcome(
            suite.table, view, name, spec.index, spec.type, json.loads(to_json(kwargs)), spec.severity,
            bool(item.success) and exception is None, json.loads(to_json(item.result or {})), exception,
        ))
    return sorted(outcomes, key=lambda o: o.index)


def _has_unexpected(result: Mapping[str, Any] | None) -> bool:
    count = (result or {}).get("unexpected_count")
    return isinstance(count, (int, float)) and count > 0


# ---------------------------------------------------------------- the runner


def _frames(spark: SparkSession, frames: Mapping[str, Any]) -> dict[str, DataFrame]:
    prepared = {}
    for key, value in frames.items():
        if key == ERASED_CUSTOMERS and not isinstance(value, DataFrame):
            value = spark.createDataFrame([(str(v),) for v in value], "customer_id string")
        if not isinstance(value, DataFrame):
            raise TypeError(f"frame {key!r} must be a Spark DataFrame, got {type(value).__name__}")
        prepared[key] = value
    return prepared


def audit(spark: SparkSession, settings: Settings, frames: Mapping[str, DataFrame], run_id: str,
          logical_date: dt.date, *, validated_at: dt.datetime | None = None) -> AuditResult:
    """Validate every frame that has a suite, persist the results, build the Data Docs.

    Returns the AuditResult; it does not raise on failing expectations (call raise_if_failed()).
    Raises ValueError for a bad run id or when no frame has a suite.
    """
    if not RUN_ID_PATTERN.match(run_id or ""):
        raise ValueError(f"run_id must match {RUN_ID_PATTERN.pattern}, got {run_id!r}")
    suites = load_suites()
    prepared = _frames(spark, frames)
    audited = [suites[t] for t in sorted(prepared) if t in suites]
    if not audited:
        raise ValueError(f"no frame to audit: got {sorted(prepared)}; suites exist for {', '.join(sorted(suites))}")
    used = {s.table for s in audited} | {i for s in audited for v in s.views if v for i in VIEWS[v].inputs}
    validated_at = validated_at or as_of_for(logical_date)
    runtime = runtime_parameters(settings, logical_date)

    from great_expectations.core.run_identifier import RunIdentifier

    docs_dir = data_docs_dir(settings)
    context = _gx_context(docs_dir, reports_dir(settings) / "gx_validations")
    gx_suites = _add_suites(context, suites.values())
    # The runner persists each frame itself and releases it after its validation.
    datasource = context.data_sources.add_spark(name="touchpoint", persist=False)
    run_identifier = RunIdentifier(run_name=run_id, run_time=validated_at)
    started = time.monotonic()
    outcomes: list[ExpectationOutcome] = []
    for suite in audited:
        parameters = {**suite.suite_parameters, **runtime}
        for view in suite.views:
            specs = suite.expectations_on(view)
            missing = [] if view is None else [i for i in VIEWS[view].inputs if i not in prepared]
            if missing:
                outcomes += _failed(suite, view, specs, f"missing input frame(s) for view {view}: {', '.join(missing)}")
                continue
            try:
                frame = prepared[suite.table] if view is None else VIEWS[view].build(prepared, parameters, suite.table)
            except Exception as error:  # e.g. a column the view needs is absent: the checks fail, visibly
                outcomes += _failed(suite, view, specs, f"view {view} could not be built: {error}")
                continue
            frame = frame.persist()
            try:
                outcomes += _validate(context, datasource, gx_suites[suite.gx_suite_name(view)], suite, view, frame,
                                      parameters, run_identifier)
            except Exception as error:  # GX could not run the suite at all: fail closed, say why
                log.exception("validation of %s failed to run", suite.gx_suite_name(view))
                outcomes += _failed(suite, view, specs, f"validation could not run: {error}")
            finally:
                frame.unpersist()
    log.info("audit %s: %d expectations on %s in %.1fs", run_id, len(outcomes), [s.table for s in audited],
             time.monotonic() - started)

    result_without_docs = AuditResult(run_id, logical_date, validated_at, tuple(outcomes),
                                      tuple(sorted(set(prepared) - used)), None)
    persist_results(spark, settings, result_without_docs)
    _build_data_docs(context, run_id, gx_suites)
    index = docs_dir / "index.html"
    return AuditResult(run_id, logical_date, validated_at, tuple(outcomes), result_without_docs.unaudited,
                       index if index.exists() else None)


def result_rows(result: AuditResult) -> list[tuple]:
    return [
        (result.run_id, result.logical_date, o.table, o.view, o.suite, o.index, o.expectation_type,
         to_json(o.kwargs), o.severity, o.success, to_json(o.observed), o.exception, result.validated_at)
        for o in result.outcomes
    ]


def persist_results(spark: SparkSession, settings: Settings, result: AuditResult, attempts: int = 3) -> str:
    """Write the result rows, replacing those of (run_id, audited tables) in one Delta commit."""
    from delta.exceptions import DeltaConcurrentModificationException

    path = results_path(settings)
    ensure_table(spark, path, RESULTS_SCHEMA, catalog_name=RESULTS_TABLE)
    tables = ", ".join(f"'{t}'" for t in result.tables)  # suite names: [a-z_.] only
    predicate = f"run_id = '{result.run_id}' AND table_name IN ({tables})"
    rows = spark.createDataFrame(result_rows(result), RESULTS_SCHEMA).coalesce(1)
    for attempt in range(1, attempts + 1):
        try:
            rows.write.format("delta").mode("overwrite").option("replaceWhere", predicate).save(path)
            return path
        except DeltaConcurrentModificationException:
            # another audit of the same run wrote meanwhile; the write is idempotent, so retry
            if attempt == attempts:
                raise
            log.warning("concurrent write to %s, retrying (%d/%d)", path, attempt, attempts)
    return path
