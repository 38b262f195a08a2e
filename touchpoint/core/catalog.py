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
    # Where a data subject appears, as (column, kind) pairs: `touchpoint forget` deletes every row that
    # matches (docs/PRIVACY.md). Kinds: customer_id; email, phone, user_id, anonymous_id (normalised
    # values); identifier:<type column> (a value typed by another column); payload (raw event JSON);
    # email_sha256, phone_sha256 (hashed identifiers); text (free text that may quote an identifier).
    subject_columns: tuple[tuple[str, str], ...] = ()
    # Created with Delta's Change Data Feed on: the speed layer reads it. Switching the feed on later
    # is a metadata commit that fails a writer's concurrent append.
    change_feed: bool = False

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
          restricted=True, pii_columns=("payload",), partition_by=("ingest_date",),
          subject_columns=(("payload", "payload"),)),
    Table("silver.events", "streaming.ingest", "parsed, validated, normalised, enriched, deduplicated events",
          restricted=True, pii_columns=("email", "phone", "ip", "user_agent", "page_url", "referrer", "raw_payload",
                                        "user_id", "anonymous_id"),
          partition_by=("event_date",), keys=("event_id",), change_feed=True,
          subject_columns=(("email", "email"), ("phone", "phone"), ("user_id", "user_id"), ("anonymous_id", "anonymous_id")),),
    Table("silver.quarantine", "streaming.ingest", "every rejected record with its raw payload and reason",
          restricted=True, pii_columns=("payload",), partition_by=("ingest_date",),
          subject_columns=(("payload", "payload"),)),
    Table("silver.reconciliation", "streaming.ingest",
          "per micro-batch counts: bronze = silver + quarantine + duplicates", keys=("source", "batch_id")),
    Table("gold.identity_map", "jobs.identity", "identifier -> customer_id",
          restricted=True, pii_columns=("identifier_value",), keys=("identifier_type", "identifier_value"),
          subject_columns=(("identifier_value", "identifier:identifier_type"), ("customer_id", "customer_id"))),
    Table("gold.identity_merges", "jobs.identity", "component merges: old id -> surviving id",
          subject_columns=(("old_customer_id", "customer_id"), ("new_customer_id", "customer_id"))),
    Table("gold.identity_guardrails", "jobs.identity", "identifiers held back (blocklist, shared device) and why",
          restricted=True, pii_columns=("identifier_value",),
          subject_columns=(("identifier_value", "identifier:identifier_type"),)),
    Table("gold.identity_edges", "jobs.identity", "distinct co-occurring identifier pairs (identity graph state)", restricted=True, pii_columns=("a_value", "b_value"),
          subject_columns=(("a_value", "identifier:a_type"), ("b_value", "identifier:b_type"))),
    Table("gold.identity_splits", "jobs.identity", "component splits when a device becomes shared: old id -> split-off part",
          subject_columns=(("old_customer_id", "customer_id"), ("new_customer_id", "customer_id"))),
    Table("gold.identity_runs", "jobs.identity", "one row per identity run: mode, silver version read, state versions written", keys=("logical_date",)),
    Table("gold.customer_profiles", "jobs.profiles", "one row per customer, hashed identifiers only",
          keys=("customer_id",), subject_columns=(("customer_id", "customer_id"), ("email_sha256", "email_sha256"),
                                                   ("phone_sha256", "phone_sha256"))),
    Table("gold.attribution_credits", "jobs.attribution", "per conversion, model and touchpoint credit",
          subject_columns=(("customer_id", "customer_id"),)),
    Table("gold.attribution_daily", "jobs.attribution", "credits per day, model, channel, campaign"),
    Table("gold.markov_removal_effects", "jobs.attribution", "Markov removal effect per channel"),
    Table("gold.attribution_paths", "jobs.attribution", "Markov training paths, ChannelAttribution format"),
    Table("gold.attribution_touchpoints", "jobs.attribution", "touchpoints as of the last attribution run", keys=("touch_event_id",),
          subject_columns=(("customer_id", "customer_id"),)),
    Table("gold.attribution_conversions", "jobs.attribution", "conversions with their ordered paths", keys=("conversion_id",),
          subject_columns=(("customer_id", "customer_id"),)),
    Table("gold.attribution_runs", "jobs.attribution", "one row per attribution run: mode, settings, state versions, input versions read, customers re-derived", keys=("run_id",)),
    Table("gold.segment_membership", "jobs.segments", "segment membership history", keys=("segment", "customer_id"),
          subject_columns=(("customer_id", "customer_id"),)),
    Table("gold.segment_sizes", "jobs.segments", "segment sizes per day"),
    Table("gold.export_log", "jobs.exports", "one row per export run"),
    Table("gold.audit_results", "expectations.audit", "one row per expectation result of each audit run (write-audit-publish)", keys=("run_id", "table_name", "suite", "expectation_index"),
          subject_columns=(("observed_value_json", "text"),)),
    Table("gold.high_water_mark", "jobs.serving", "batch high-water mark H per run"),
    Table("speed.campaign_minute", "streaming.speed", "real-time campaign metrics per minute"),
    Table("speed.campaign_daily", "streaming.speed", "real-time campaign metrics per day"),
    Table("privacy.erasure_requests", "jobs.privacy", "queued `touchpoint forget` requests: hashed identifier only",
          keys=("request_id",)),
    Table("privacy.suppression", "jobs.privacy", "hashed identifiers of erased subjects: ingest quarantines their events",
          keys=("identifier_type", "identifier_sha256")),
    Table("gold.erasure_log", "jobs.privacy", "one row per erasure: hashed identifiers, rows removed per table, times",
          keys=("request_id",)),
    Table("speed.customer_activity", "streaming.speed", "real-time customer activity", subject_columns=(("customer_id", "customer_id"),)),
    Table("speed.campaign_conversions", "streaming.speed", "real-time last touch per conversion", keys=("conversion_id",), subject_columns=(("customer_id", "customer_id"),)),
    Table("speed.segment_membership", "streaming.speed", "real-time segment members at the stream's event-time clock", subject_columns=(("customer_id", "customer_id"),)),
    Table("speed.freshness", "streaming.speed", "per speed micro-batch: versions read, event-time clock, event-to-visible lag"),
    Table("gold.campaign_minute", "jobs.campaign_metrics", "batch campaign metrics per minute below H", keys=("minute", "campaign")),
    Table("gold.campaign_daily", "jobs.campaign_metrics", "batch campaign metrics per day below H", keys=("date", "campaign")),
    Table("gold.campaign_conversions", "jobs.campaign_metrics", "batch last touch per conversion below H", keys=("conversion_id",), subject_columns=(("customer_id", "customer_id"),)),
    Table("gold.customer_activity", "jobs.campaign_metrics", "batch customer activity as of H", keys=("customer_id",), subject_columns=(("customer_id", "customer_id"),)),
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
            "subject_columns": [list(pair) for pair in t.subject_columns],
            "description": t.description,
        }
        for t in _TABLES
    ]
