"""The lake catalog: every table's name, path, owner and privacy class, in one place."""

from __future__ import annotations

from dataclasses import dataclass, field

from touchpoint.core.config import Settings, get_settings


@dataclass(frozen=True)
class Table:
    name: str  # "layer.table"
    owner: str  # the component that writes it
    description: str
    restricted: bool = False  # holds raw PII (email, phone, ip or raw payloads)
    pii_columns: tuple[str, ...] = ()
    partition_by: tuple[str, ...] = ()
    keys: tuple[str, ...] = field(default=())

    @property
    def layer(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def short_name(self) -> str:
        return self.name.split(".", 1)[1]

    def path(self, settings: Settings | None = None) -> str:
        settings = settings or get_settings()
        folder = settings.gold_namespace if self.layer == "gold" else self.layer
        return f"{settings.lake_uri}/{folder}/{self.short_name}"


_TABLES = [
    Table("bronze.events", "streaming.ingest", "raw Kafka payloads with their coordinates, append-only",
          restricted=True, pii_columns=("payload",), partition_by=("ingest_date",)),
    Table("silver.events", "streaming.ingest", "parsed, validated, normalised, enriched, deduplicated events",
          restricted=True, pii_columns=("email", "phone", "ip", "user_agent", "page_url", "referrer", "raw_payload"),
          partition_by=("event_date",), keys=("event_id",)),
    Table("silver.quarantine", "streaming.ingest", "every rejected record with its raw payload and reason",
          restricted=True, pii_columns=("payload",), partition_by=("ingest_date",)),
    Table("silver.reconciliation", "streaming.ingest",
          "per micro-batch counts: bronze = silver + quarantine + duplicates", keys=("source", "batch_id")),
    Table("gold.identity_map", "jobs.identity", "identifier -> customer_id",
          restricted=True, pii_columns=("identifier_value",), keys=("identifier_type", "identifier_value")),
    Table("gold.identity_merges", "jobs.identity", "component merges: old id -> surviving id"),
    Table("gold.identity_guardrails", "jobs.identity", "identifiers held back (blocklist, shared device) and why",
          restricted=True, pii_columns=("identifier_value",)),
    Table("gold.identity_edges", "jobs.identity", "distinct co-occurring identifier pairs (identity graph state)", restricted=True, pii_columns=("a_value", "b_value")),
    Table("gold.identity_splits", "jobs.identity", "component splits when a device becomes shared: old id -> split-off part"),
    Table("gold.identity_runs", "jobs.identity", "one row per identity run: mode, silver version read, state versions written", keys=("logical_date",)),
    Table("gold.customer_profiles", "jobs.profiles", "one row per customer, hashed identifiers only",
          keys=("customer_id",)),
    Table("gold.attribution_credits", "jobs.attribution", "per conversion, model and touchpoint credit"),
    Table("gold.attribution_daily", "jobs.attribution", "credits per day, model, channel, campaign"),
    Table("gold.markov_removal_effects", "jobs.attribution", "Markov removal effect per channel"),
    Table("gold.attribution_paths", "jobs.attribution", "Markov training paths, ChannelAttribution format"),
    Table("gold.attribution_touchpoints", "jobs.attribution", "touchpoints as of the last attribution run", keys=("touch_event_id",)),
    Table("gold.attribution_conversions", "jobs.attribution", "conversions with their ordered paths", keys=("conversion_id",)),
    Table("gold.attribution_runs", "jobs.attribution", "one row per attribution run: mode, settings, state versions", keys=("run_id",)),
    Table("gold.segment_membership", "jobs.segments", "segment membership history", keys=("segment", "customer_id")),
    Table("gold.segment_sizes", "jobs.segments", "segment sizes per day"),
    Table("gold.export_log", "jobs.exports", "one row per export run"),
    Table("gold.audit_results", "expectations.audit", "one row per expectation result of each audit run (write-audit-publish)", keys=("run_id", "table_name", "suite", "expectation_index")),
    Table("gold.high_water_mark", "jobs.serving", "batch high-water mark H per run"),
    Table("speed.campaign_minute", "streaming.speed", "real-time campaign metrics per minute"),
    Table("speed.campaign_daily", "streaming.speed", "real-time campaign metrics per day"),
    Table("speed.customer_activity", "streaming.speed", "real-time customer activity"),
]

TABLES: dict[str, Table] = {t.name: t for t in _TABLES}


def table(name: str) -> Table:
    try:
        return TABLES[name]
    except KeyError:
        known = ", ".join(sorted(TABLES))
        raise KeyError(f"unknown table {name!r}; known tables: {known}") from None


def table_path(name: str, settings: Settings | None = None) -> str:
    return table(name).path(settings)


def describe_tables(settings: Settings | None = None) -> list[dict]:
    """What `touchpoint tables --json` prints."""
    settings = settings or get_settings()
    return [
        {
            "name": t.name,
            "path": t.path(settings),
            "layer": t.layer,
            "owner": t.owner,
            "restricted": t.restricted,
            "pii_columns": list(t.pii_columns),
            "description": t.description,
        }
        for t in _TABLES
    ]
