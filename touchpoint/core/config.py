"""One typed settings object for the whole platform (BRIEF §9).

Sources, highest priority first: keyword arguments, ``TOUCHPOINT_*`` environment
variables (nested keys with ``__``, e.g. ``TOUCHPOINT_ATTRIBUTION__LOOKBACK_DAYS``),
then ``touchpoint.toml`` (path from ``TOUCHPOINT_CONFIG``, else ``./touchpoint.toml``).
Unknown keys and bad values fail at load time with the key named.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

DEFAULT_CONFIG_FILE = "touchpoint.toml"
_BOOTSTRAP_RE = re.compile(r"^[A-Za-z0-9.\-]+:\d{1,5}$")


class ConfigError(ValueError):
    """A bad setting: the message names the key and the fix, on one line."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # inf passed gt=0, then crashed


class AttributionSettings(_Section):
    lookback_days: float = Field(30, gt=0, description="path lookback, in days of 86,400 s")
    half_life_days: float = Field(7, gt=0, description="time-decay half-life in days")
    markov_order: int = Field(1, ge=1, le=3)
    markov_training_days: float = Field(90, gt=0)
    landing_window_minutes: float = Field(30, ge=0, description="0 disables the click-landing rule")
    view_through: bool = False
    touchpoint_event_types: tuple[str, ...] = Field(
        ("ad_click", "email_click", "page_view"),
        description="ad_click and email_click, plus page_view unless page views are never touchpoints "
                    "(impressions come with view_through)")

    @field_validator("touchpoint_event_types")
    @classmethod
    def _touchpoint_types(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # BRIEF §4: every click is a touchpoint; impressions only with view-through; opens, sends and
        # orders never. Only the page views may be left out.
        unknown = [kind for kind in value if kind not in ("ad_click", "email_click", "page_view")]
        if unknown:
            raise ValueError(f"{unknown} cannot be touchpoints; list ad_click, email_click and optionally "
                             "page_view (set view_through = true for ad impressions)")
        missing = [kind for kind in ("ad_click", "email_click") if kind not in value]
        if missing:
            raise ValueError(f"every click is a touchpoint: add {missing}")
        return value


class IdentitySettings(_Section):
    blocklist: tuple[str, ...] = (
        "null", "undefined", "none", "nil", "nan", "n/a", "unknown", "test@example.com",
    )
    shared_device_max_user_ids: int = Field(3, ge=1)
    checkpoint: Literal["auto", "lake", "local"] = Field(
        "auto", description="how connected components cut lineage: scratch files under the lake, or "
                            "localCheckpoint; auto = localCheckpoint on a local master, the lake otherwise")
    full_rebuild: bool = Field(False, description="identity: rebuild from all of silver, not incrementally")
    driver_labels_max_edges: int = Field(
        1_000_000, ge=0, description="identity: a linking graph of up to this many edges is labelled by union-find "
        "on the driver (one collect); a larger one by large-star/small-star rounds on the executors; 0: always "
        "the rounds. The labels are the same either way")


class ProfileSettings(_Section):
    incremental_min_events: int = Field(
        1_000_000, ge=0, description="profiles: below this many silver events every customer is derived (cheaper "
        "on a small lake than finding the changed ones); 0: always incremental when possible")


class StreamSettings(_Section):
    trigger_seconds: float = Field(2.0, gt=0)
    customer_trigger_seconds: float | None = Field(
        30.0, gt=0, description="trigger of the speed layer's customer-views query (identity, last touch, activity, "
                                "segments); unset (\"none\") = one speed query for every view at trigger_seconds")
    max_offsets_per_trigger: int = Field(
        500_000, gt=0, description="cap on the Kafka records of one ingest micro-batch: bounds a catch-up batch "
                                   "(a live stream's batches are what arrived in a trigger interval)")
    speed_max_bytes_per_trigger: int = Field(
        32 * 2**20, gt=0, description="soft bound on the silver bytes one speed micro-batch reads (Delta's "
                                      "maxBytesPerTrigger; at least one file): bounds its memory after a backlog")
    starting_offsets: Literal["earliest", "latest"] = "earliest"
    realtime_segments: tuple[str, ...] = Field(("active_now", "cart_abandoners"),
                                               description="segments the speed layer evaluates in real time")
    activity_horizon_days: float = Field(30, gt=0, description="customer activity looks this far back (open carts)")
    min_partitions: int | None = Field(
        None, ge=1, description="Spark tasks per micro-batch read from Kafka; unset = one per Kafka partition")
    keyed_dedup: bool = Field(
        True, description="ingest looks a batch's keys up in its in-memory mirror of silver's dedup keys "
                          "(docs/INGESTION.md); false = every batch scans its dates' partitions of silver")
    backfill_grace_days: float = Field(
        7, ge=0, le=3650,
        description="speed rows the published batch already holds are kept this many days below its cut, so "
                    "that a backfill of a date that recent moves the serving cut back without a gap "
                    "(docs/SERVING.md); 0 = expire them as soon as the batch holds them")

    @field_validator("customer_trigger_seconds", mode="before")
    @classmethod
    def _unset_by_name(cls, value):
        # TOML has no null, and an environment variable is text: "none" (or "null", "") unsets it.
        if isinstance(value, str) and value.strip().lower() in ("", "none", "null"):
            return None
        return value


class S3Settings(_Section):
    """S3A for an s3a:// lake root. No credentials here: the AWS SDK's default chain reads them from
    the environment, a web-identity token or the instance profile."""

    endpoint: str | None = Field(None, pattern=r"^https?://[^/\s]+$",
                                 description="S3-compatible store, e.g. http://minio:9000; unset = AWS S3")
    path_style_access: bool | None = Field(None, description="bucket in the path; default: on with endpoint, off on AWS")
    region: str | None = Field(None, pattern=r"^[a-z0-9-]+$", description="bucket region; unset = the SDK's region chain")


class RetentionSettings(_Section):
    bronze_days: int = Field(90, gt=0)
    quarantine_days: int = Field(30, gt=0)
    vacuum_hours: int = Field(168, ge=0)
    kafka_retention_hours: int = Field(168, gt=0)
    kafka_retention_bytes: int = Field(1 << 30, ge=-1, description="per partition; -1: bounded by time only")
    erasure_vacuum_hours: int = Field(0, ge=0, description="VACUUM LITE retention of `touchpoint forget` (docs/PRIVACY.md)")


class ExportTarget(_Section):
    segment: str = Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")
    destination: Literal["google_customer_match", "meta_custom_audience", "esp", "jsonl"]


class ExportSettings(_Section):
    max_rows_per_file: int = Field(100_000, ge=1, description="export files are split at this many rows")
    daily: tuple[ExportTarget, ...] = Field((), description="(segment, destination) pairs the daily exports job sends")


class CollectorSettings(_Section):
    """The HTTP collector (`touchpoint collect`). API keys come from the environment or a keys file
    outside the repository, never from a committed touchpoint.toml."""

    host: str = Field("127.0.0.1", description="bind address; loopback unless put behind a proxy")
    port: int = Field(8088, ge=0, lt=65536)
    api_keys: Annotated[dict[str, SecretStr], NoDecode] = Field(
        default_factory=dict, description="source=key pairs, comma-separated in TOUCHPOINT_COLLECTOR__API_KEYS")
    api_keys_file: Path | None = Field(None, description="file of source=key lines, merged with api_keys")
    # At most the ingest limit for one record (core.events.MAX_PAYLOAD_BYTES): any stored record then fits Kafka.
    max_request_bytes: int = Field(1024 * 1024, gt=0, le=1024 * 1024, description="larger bodies are answered 413")
    max_batch_events: int = Field(500, gt=0)
    rate_per_second: float = Field(50.0, gt=0, description="token bucket refill per API key, requests/s")
    rate_burst: int = Field(100, gt=0, description="token bucket size per API key")
    produce_timeout_seconds: float = Field(10.0, gt=0, description="wait for the broker's ack before 503")

    @field_validator("api_keys", mode="before")
    @classmethod
    def _source_key_pairs(cls, value):
        if isinstance(value, str):
            return parse_source_keys(value.replace(",", "\n"), "TOUCHPOINT_COLLECTOR__API_KEYS")
        return value


def parse_source_keys(text: str, origin: str) -> dict[str, str]:
    """'source=key' lines (blank lines and # comments skipped) -> {source: key}; the error never quotes a key."""
    pairs: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        source, sep, key = (part.strip() for part in line.partition("="))
        if not sep or not re.match(r"^[a-z][a-z0-9_\-]{0,62}$", source) or len(key) < 16:
            raise ValueError(f"{origin} entry {number} must be source=key with a lowercase source name "
                             "and a key of at least 16 characters")
        pairs[source] = key
    return pairs


class Settings(BaseSettings):
    """Platform settings. Every field can be set in touchpoint.toml or as TOUCHPOINT_<NAME>."""

    model_config = SettingsConfigDict(
        env_prefix="TOUCHPOINT_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        allow_inf_nan=False,
    )

    state_dir: Path = Field(Path(".state"), description="git-ignored folder for jars, broker data, checkpoints")
    jars_dir: Path = Field(Path(".state/jars"), description="where `make jars` puts the Maven-resolved jars")
    lake_root: str = Field(".state/lake", description="local folder or s3a:// URI of the Delta lake")
    gold_namespace: str = Field("gold", pattern=r"^[a-z_]+(/[a-z_0-9\-]+)*$",
                                description="folder of gold tables under the lake root; write-audit-publish "
                                "runs jobs against a staging namespace, then publishes into 'gold'")
    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_controller_port: int = Field(9093, gt=0, lt=65536)
    kafka_topic: str = Field("events.raw", pattern=r"^[A-Za-z0-9._\-]{1,249}$",
                             description="Kafka topic name: letters, digits, '.', '_', '-'")
    kafka_partitions: int = Field(2, ge=1)
    spark_master: str = "local[2]"
    spark_driver_memory: str = Field("2g", pattern=r"^[1-9][0-9]*[kmgtKMGT]?$",
                                     description="JVM size, e.g. 2g or 512m")
    spark_shuffle_partitions: int = Field(4, ge=1)
    spark_ui: bool = False
    spark_jvm_options: str = Field("", description="more JVM options for Spark drivers, executors and the local "
                                   "cluster's master and workers (e.g. -XX:TieredStopAtLevel=1 for short-lived jobs)")
    spark_conf: dict[str, str] = Field({}, description="more Spark settings (spark.* keys) for every session and "
                                       "spark-submit, e.g. {\"spark.sql.adaptive.enabled\" = \"false\"}; keys the "
                                       "platform sets itself are refused (use their own settings)")
    cluster_master_port: int = Field(7077, gt=0, lt=65536)
    cluster_workers: int = Field(2, ge=1)
    spark_driver_host: str = Field("127.0.0.1", description="address executors reach the driver at; '' leaves it "
                                   "to Spark (a driver pod on Kubernetes, a remote cluster)")
    airflow_port: int = Field(8080, gt=0, lt=65536, description="port of the local Airflow (`touchpoint airflow`) on 127.0.0.1")
    reporting_currency: str = Field("USD", pattern=r"^[A-Z]{3}$")
    channel_rules_file: Path | None = Field(None, description="YAML channel rules; default: built-in BRIEF §3 rules")
    segments_dir: Path = Path("segments")
    exports_dir: Path | None = Field(None, description="local folder of activation exports; default <lake_root>/../exports")
    reports_dir: Path | None = Field(None, description="data-quality reports (GX Data Docs); default <state_dir>/reports")
    attribution: AttributionSettings = AttributionSettings()
    identity: IdentitySettings = IdentitySettings()
    profiles: ProfileSettings = ProfileSettings()
    stream: StreamSettings = StreamSettings()
    retention: RetentionSettings = RetentionSettings()
    s3: S3Settings = S3Settings()
    exports: ExportSettings = ExportSettings()
    collector: CollectorSettings = CollectorSettings()

    @field_validator("state_dir", "jars_dir", "segments_dir", mode="before")
    @classmethod
    def _path_is_not_empty(cls, value):
        # An empty value would be the working directory ("" -> "."): state or jars written anywhere.
        if isinstance(value, str) and not value.strip():
            raise ValueError("expected a path, got an empty value; give a folder, or remove the key")
        return value

    @field_validator("channel_rules_file", "exports_dir", "reports_dir", mode="before")
    @classmethod
    def _empty_path_is_unset(cls, value):
        # These have a default when unset; an empty value was the working directory ("" -> ".").
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("reporting_currency")
    @classmethod
    def _has_a_rate(cls, value: str) -> str:
        from touchpoint.core.events import FX_RATES_FILE, currencies

        rates = currencies().usd_per_unit
        if value not in rates:  # every order would be quarantined as fx_rate_missing
            raise ValueError(f"{value!r} has no exchange rate in {FX_RATES_FILE.name}; use one of "
                             f"{', '.join(sorted(rates))}")
        return value

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap_is_host_port(cls, value: str) -> str:
        servers = [server.strip() for server in value.split(",")]  # spaces and a trailing newline are no part of one
        for server in servers:
            if not _BOOTSTRAP_RE.fullmatch(server) or not 0 < int(server.rsplit(":", 1)[1]) < 65536:
                raise ValueError(f"expected host:port[,host:port...] with ports 1-65535, got {value!r}")
        return ",".join(servers)

    @field_validator("lake_root")
    @classmethod
    def _lake_root_scheme(cls, value: str) -> str:
        if "://" in value and not value.startswith(("s3a://", "file://")):
            raise ValueError(f"expected a local path, file:// or s3a:// URI, got {value!r}")
        if value.startswith("file://") and not value.startswith("file:///"):
            raise ValueError(f"expected file:///path (a folder on this host), got {value!r}")
        if re.match(r"(?i)(file|s3a?):(?!//)", value):  # Hadoop's file:/x would be a folder named "file:"
            raise ValueError(f"expected a local path, file:// or s3a:// URI, got {value!r}; write file:///x "
                             "(or the path /x) for file:/x")
        if not value.strip() or re.fullmatch(r"(s3a|file)://[/]*", value.strip()):
            raise ValueError(f"expected a folder or a bucket (s3a://bucket/lake), got {value!r}")
        return value

    @field_validator("spark_conf")
    @classmethod
    def _spark_conf_keys(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not re.match(r"^spark\.[A-Za-z0-9_.\-]+$", key):
                raise ValueError(f"expected Spark setting names starting with 'spark.', got {key!r}")
        return value

    @field_validator("spark_master")
    @classmethod
    def _spark_master(cls, value: str) -> str:
        if not re.match(r"^(local(\[(\*|[1-9]\d*)\])?|spark://.+|yarn|k8s://.+)$", value):
            raise ValueError(f"expected local[N], spark://host:port, yarn or k8s://..., got {value!r}")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = Path(os.environ.get("TOUCHPOINT_CONFIG", DEFAULT_CONFIG_FILE))
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=toml_file))

    # Derived locations: computed, never configured twice.
    @property
    def state_path(self) -> Path:
        return self.state_dir.resolve()

    @property
    def lake_uri(self) -> str:
        if "://" in self.lake_root:
            return self.lake_root.rstrip("/")
        return str(Path(self.lake_root).resolve())

    @property
    def checkpoint_root(self) -> str:
        return f"{self.lake_uri}/_checkpoints"


def _format_error(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"]) or "<root>"
        if item["type"] == "extra_forbidden":
            parts.append(f"unknown key '{key}': remove it or check the spelling (see docs/CONFIG.md)")
        else:
            env = "TOUCHPOINT_" + "__".join(str(p) for p in item["loc"]).upper()
            message = item["msg"].removeprefix("Value error, ")
            if item["type"] != "value_error":  # our own validators already quote the input
                message += f", got {item.get('input')!r}"
            parts.append(f"key '{key}' (env {env}): {message}")
    return "invalid configuration: " + "; ".join(parts)


def require_kafka(settings: Settings, timeout: float = 2.0) -> None:
    """Fail fast, naming the key, when the configured broker does not answer."""
    import socket

    host, port = settings.kafka_bootstrap.split(",")[0].strip().rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return
    except OSError as error:
        raise ConfigError(
            f"key 'kafka_bootstrap' (env TOUCHPOINT_KAFKA_BOOTSTRAP): {settings.kafka_bootstrap} is unreachable "
            f"({error.strerror or error}); start the local broker with `touchpoint up` or point it at a live broker"
        ) from None


# TOUCHPOINT_* variables that are not settings: the config file's path and the image's version (and TOUCHPOINT_TEST_*, the tests' own).
_NOT_SETTINGS = ("CONFIG", "VERSION")


def _environment_problems() -> list[str]:
    """A TOUCHPOINT_* variable that names no setting (a typo is otherwise silently ignored), and a
    TOUCHPOINT_CONFIG naming no file (otherwise the defaults load silently)."""
    import difflib

    problems = []
    config = os.environ.get("TOUCHPOINT_CONFIG")
    if config is not None and not Path(config).is_file():
        problems.append(f"env TOUCHPOINT_CONFIG: {config} is not a file; point it at a touchpoint.toml or unset it")
    fields = sorted(Settings.model_fields)
    for name in sorted(os.environ):
        rest = name.upper().removeprefix("TOUCHPOINT_")
        if rest == name.upper() or rest in _NOT_SETTINGS or rest.startswith("TEST_"):
            continue
        field = rest.split("__", 1)[0].lower()
        if field not in fields:
            close = difflib.get_close_matches(field, fields, n=1)
            hint = f"did you mean TOUCHPOINT_{close[0].upper()}?" if close else "see docs/CONFIG.md for the settings"
            problems.append(f"env {name} is not a setting: {hint} Rename or unset it")
    return problems


def load_settings(**overrides) -> Settings:
    """Load settings, turning every problem into one readable ConfigError line that names the key."""
    import tomllib

    problems = _environment_problems()
    if problems:
        raise ConfigError("invalid configuration: " + "; ".join(problems))
    try:
        return Settings(**overrides)
    except ValidationError as error:
        raise ConfigError(_format_error(error)) from None
    except tomllib.TOMLDecodeError as error:
        config = os.environ.get("TOUCHPOINT_CONFIG", DEFAULT_CONFIG_FILE)
        raise ConfigError(f"invalid configuration: {config} is not valid TOML ({error}); fix its syntax") from None
    except SettingsError as error:  # a value pydantic-settings could not parse, e.g. a list that is not JSON
        field = re.search(r'field "([^"]+)"', str(error))
        names = [n for n in sorted(os.environ) if field and n.upper().removeprefix("TOUCHPOINT_").split("__")[0]
                 == field.group(1).upper()]
        raise ConfigError(f"invalid configuration: {', '.join(names) or 'a TOUCHPOINT_* variable'} could not be read "
                          f"({error}); lists and mappings are JSON, e.g. "
                          "TOUCHPOINT_IDENTITY__BLOCKLIST='[\"null\", \"n/a\"]'") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()


# Sections never handed over in the environment: they hold secrets (read by the driver itself).
_NOT_FORWARDED = frozenset({"collector"})


def settings_env(settings: Settings) -> dict[str, str]:
    """TOUCHPOINT_* variables for every setting given explicitly (keyword, file or environment), so
    a process started with them (a submitted driver, a restarted stream) loads the same settings."""
    import json

    dumped = settings.model_dump(mode="json")
    env = {}
    for name in sorted(settings.model_fields_set - _NOT_FORWARDED):
        value = dumped[name]
        if value is None:
            continue
        if isinstance(value, (dict, list)):
            env[f"TOUCHPOINT_{name.upper()}"] = json.dumps(value)
        elif isinstance(value, bool):
            env[f"TOUCHPOINT_{name.upper()}"] = str(value).lower()
        else:
            env[f"TOUCHPOINT_{name.upper()}"] = str(value)
    return env
