"""What changed in a batch job's inputs since its previous run: the lake edge of the changed-customer
scope (jobs.attribution_scope holds the pure transforms). Attribution and profiles re-derive only
the customers these changes reach; docs/ATTRIBUTION.md has the argument.
"""

from __future__ import annotations

import datetime as dt
import logging

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from touchpoint.core.dates import as_of_for, epoch_micros
from touchpoint.core.delta import read_version, snapshot_fingerprint
from touchpoint.jobs.attribution_models import micros
from touchpoint.jobs.attribution_scope import CHANGED_EVENT_COLUMNS, identity_changes

log = logging.getLogger(__name__)


def changes_since(spark: SparkSession, job: str, previous: dict, inputs: dict[str, DataFrame],
                  versions: dict[str, int], paths: dict[str, str],
                  as_of: dt.datetime) -> tuple[tuple[DataFrame, DataFrame] | None, str]:
    """(changed events, identity changes) between the inputs `previous` recorded (its logical_date,
    silver_version, identity_map_version and identity_map_fingerprint) and `inputs` (silver.events
    and gold.identity_map, pinned at `versions`), or (None, why they cannot be known): then the job
    re-derives every customer."""
    silver_before, map_before = previous.get("silver_version"), previous.get("identity_map_version")
    if silver_before is None or map_before is None:
        return None, "the last run recorded no input versions"
    if silver_before > versions["silver.events"]:
        return None, "silver.events is at an older version than at the last run"
    map_path = paths["gold.identity_map"]
    # Publish may re-create a gold table (an object store, a diverged table), and then an old version
    # number names another snapshot: the one the last run read is recognised by its files.
    try:
        same_map = snapshot_fingerprint(map_path, map_before) == previous.get("identity_map_fingerprint")
    except Exception as missing:  # the log of that version is gone, or the table was replaced
        return None, f"gold.identity_map version {map_before} cannot be read ({type(missing).__name__})"
    if not same_map:
        return None, f"gold.identity_map version {map_before} is not the snapshot the last run read"
    current_map = inputs["gold.identity_map"]
    if map_before == versions["gold.identity_map"]:  # a rerun, or identity changed nothing: no diff
        changes = identity_changes(current_map.limit(0), current_map.limit(0))
    else:
        changes = identity_changes(read_version(spark, map_path, map_before), current_map)

    silver = inputs["silver.events"]
    changed = silver.select(*CHANGED_EVENT_COLUMNS).limit(0)
    if silver_before < versions["silver.events"]:
        changed = (spark.read.format("delta").option("readChangeFeed", "true")
                   .option("startingVersion", silver_before + 1).option("endingVersion", versions["silver.events"])
                   .load(paths["silver.events"]).select(*CHANGED_EVENT_COLUMNS))
    earlier, later = sorted((as_of_for(previous["logical_date"]), as_of))
    if earlier < later:  # events that crossed the as-of, one way or the other
        changed = changed.unionByName(
            silver.where(F.col("event_date").between(earlier.date(), (later - dt.timedelta(microseconds=1)).date()))
            .where((micros("event_ts") >= epoch_micros(earlier)) & (micros("event_ts") < epoch_micros(later)))
            .select(*CHANGED_EVENT_COLUMNS))
    try:  # the feed is read lazily: a gap in it (switched off, vacuumed) shows on the first read
        changed.limit(1).collect()
    except Exception as unreadable:
        log.warning("%s: silver's change data feed since version %s cannot be read: %s",
                    job, silver_before + 1, unreadable)
        return None, (f"silver.events' change data feed since version {silver_before + 1} cannot be read "
                      f"({type(unreadable).__name__})")
    return (changed, changes), ""
