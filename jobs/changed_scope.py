"""The changed-customer scope of an incremental profiles or attribution run, derived once per pipeline run.

Both jobs re-derive only the customers the changes since their previous run reach
(jobs.input_changes, jobs.attribution_scope). In marketing_daily both previous runs are D-1's, over
the same identity snapshot, and both runs of D read D's identity snapshot: they find the same changed
customers and need the same events of silver. So the first of them keeps its scope in the run's
staging namespace (`<lake>/staging/dYYYYMMDD/_scope/<key>`, parquet) and the second reads it instead
of diffing the maps and scanning silver again. Staging, and the kept scope with it, is dropped when
the run publishes, when the date is run again (prepare_staging) or by lake maintenance's staging
clean-up; an erasure removes every kept scope. Standalone runs keep nothing. Keeping is optional: a
scope that cannot be kept or read back is derived.

The key is a digest of everything the scope is a function of: the previous run's logical date and
input versions (with the map snapshot's fingerprint), this run's silver and map versions (and the
map's fingerprint), its as-of, and the format of what is kept. A job whose previous run read other
inputs derives its own.

What is kept holds no raw identifier (events are kept resolved to customer_id); an erasure removes
every kept scope whole (jobs.privacy).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Callable

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from touchpoint.core.config import Settings
from touchpoint.core.campaign_metrics import micros
from touchpoint.core.dates import epoch_micros
from touchpoint.core.delta import folder_exists, make_folder, remove_tree, snapshot_fingerprint, subfolders
from touchpoint.jobs.attribution_scope import (
    SEED_FLAG, changed_customers, scope_candidates, scope_identifiers, scope_seeds,
)
from touchpoint.jobs.input_changes import changes_since

log = logging.getLogger(__name__)

SCOPE_FOLDER = "_scope"
# The columns of a kept event: what profiles and attribution read of an event once it is resolved.
SCOPE_EVENT_COLUMNS = ("event_id", "event_type", "event_ts", "event_date", "channel", "campaign_name", "order_id",
                       "revenue_reporting", "country", "consent_email_marketing", "consent_ads_personalization",
                       "consent_analytics")
_PARTS = ("customers", "seeds", "candidates")
_COMPLETE = "_COMPLETE"  # written last: a folder without it is a crashed write, derived again
SCOPE_FORMAT = 1  # in the key: bump it when what is kept changes, so an older kept scope is not read


@dataclass(frozen=True)
class Scope:
    """customers: customer_id of every changed customer. seeds: (event_id, conversion_id) of the
    events in scope by themselves (attribution_scope.scope_seeds). candidates: SCOPE_EVENT_COLUMNS,
    customer_id and SEED_FLAG of every event before the as-of that is a seed or an order event with an
    order id (attribution_scope.scope_candidates), resolved through this run's map. kept_by: the job
    that derived it, when it was read from the pipeline run's staging."""

    customers: DataFrame
    seeds: DataFrame
    candidates: DataFrame
    kept_by: str | None = None


def scope_source(scope: Scope | None) -> str | None:
    """For a run's summary: where its scope came from (None: every customer was derived)."""
    if scope is None:
        return None
    return f"kept by {scope.kept_by}" if scope.kept_by else "derived"


def scope_key(previous: dict, versions: dict[str, int], map_fingerprint: str, as_of: dt.datetime) -> str:
    inputs = {
        "format": SCOPE_FORMAT,
        "previous": {name: str(previous.get(name)) for name in (
            "logical_date", "silver_version", "identity_map_version", "identity_map_fingerprint")},
        "silver_version": versions["silver.events"], "identity_map_version": versions["gold.identity_map"],
        "identity_map_fingerprint": map_fingerprint, "as_of": as_of.isoformat(),
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:32]


def _staging_root(settings: Settings) -> str | None:
    from touchpoint.jobs.pipeline import is_staging

    return f"{settings.lake_uri}/{settings.gold_namespace}" if is_staging(settings) else None


def before_as_of(as_of: dt.datetime) -> Callable[[DataFrame], DataFrame]:
    """Silver events -> those before the as-of (the date filter lets Delta prune partitions)."""
    last_date = (as_of - dt.timedelta(microseconds=1)).date()

    def transform(silver: DataFrame) -> DataFrame:
        return silver.where(F.col("event_date") <= F.lit(last_date)).where(micros("event_ts") < epoch_micros(as_of))

    return transform


def changed_scope(spark: SparkSession, settings: Settings, job: str, previous: dict, inputs: dict[str, DataFrame],
                  versions: dict[str, int], paths: dict[str, str], as_of: dt.datetime,
                  resolve: Callable[[DataFrame], DataFrame],
                  keep: Callable[[DataFrame], DataFrame]) -> tuple[Scope | None, str]:
    """The scope of an incremental run of `job` (kept by the other job of this pipeline run, or
    derived), or (None, why the changes cannot be known): then the job re-derives every customer.
    `resolve` attaches customer_id through this run's map; `keep` materialises a frame for the run."""
    root = _staging_root(settings)
    folder = None
    if root is not None:
        try:
            fingerprint = snapshot_fingerprint(paths["gold.identity_map"], versions["gold.identity_map"])
            folder = f"{root}/{SCOPE_FOLDER}/{scope_key(previous, versions, fingerprint, as_of)}"
        except Exception as unreadable:  # changes_since says why, below
            log.info("%s: no kept scope (%s)", job, unreadable)
        kept = _read_kept(spark, folder) if folder is not None else None
        if kept is not None:
            return kept, ""

    changes_found, reason = changes_since(spark, job, previous, inputs, versions, paths, as_of)
    if changes_found is None:
        return None, reason
    try:  # files a VACUUM removed (an old map version, change feed files) show on reading
        changed_events, changes = keep(changes_found[0]), keep(changes_found[1])
        changed_events.count(), changes.count()  # `keep` may be lazy
        customers = keep(changed_customers(changes, changed_events.transform(resolve).select("customer_id")))
    except Exception as unreadable:
        log.warning("%s: the changes since the last run cannot be read: %s", job, unreadable)
        return None, f"the changes since the last run cannot be read ({type(unreadable).__name__})"
    # kept: each identifier type's broadcast probe reads it (else each would read the map again)
    identifiers = keep(scope_identifiers(inputs["gold.identity_map"], customers, changes))
    # one scan of silver: every event either job re-derives is among these
    candidates = keep(
        inputs["silver.events"].transform(before_as_of(as_of))
        .transform(scope_candidates(identifiers, changed_events))
        .transform(resolve)
        .select(*SCOPE_EVENT_COLUMNS, "customer_id", SEED_FLAG))
    seeds = keep(candidates.transform(scope_seeds(changed_events)))
    scope = Scope(customers, seeds, candidates)
    if folder is not None:
        try:
            _keep_in_staging(spark, folder, scope, job)
        except Exception as failed:  # the other job derives its own
            log.warning("%s: the scope could not be kept in %s: %s", job, folder, failed)
    return scope, ""


def _read_kept(spark: SparkSession, folder: str) -> Scope | None:
    """The scope kept in `folder`, None when there is none or its write did not finish."""
    try:
        if not folder_exists(spark, f"{folder}/{_COMPLETE}"):
            return None
        marks = spark.read.parquet(f"{folder}/{_COMPLETE}").collect()
        parts = {part: spark.read.parquet(f"{folder}/{part}") for part in _PARTS}
    except Exception as unreadable:  # e.g. the marker's own write crashed half way
        log.warning("the scope kept in %s cannot be read, deriving it: %s", folder, unreadable)
        return None
    return Scope(**parts, kept_by=marks[0]["job"]) if marks else None


def _keep_in_staging(spark: SparkSession, folder: str, scope: Scope, job: str) -> None:
    remove_tree(spark, folder)  # a crashed write's leftovers
    make_folder(spark, folder)
    for part in _PARTS:
        getattr(scope, part).write.mode("overwrite").parquet(f"{folder}/{part}")
    spark.createDataFrame([(job,)], "job string").coalesce(1).write.mode("overwrite").parquet(f"{folder}/{_COMPLETE}")


def discard_kept_scopes(spark: SparkSession, settings: Settings) -> list[str]:
    """Remove the scopes kept in every staging namespace (an erasure: they hold resolved events)."""
    removed = []
    for namespace in subfolders(spark, f"{settings.lake_uri}/staging"):
        folder = f"{settings.lake_uri}/staging/{namespace}/{SCOPE_FOLDER}"
        if folder_exists(spark, folder):
            remove_tree(spark, folder)
            removed.append(folder)
    return removed
