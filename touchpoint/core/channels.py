"""Channel grouping (BRIEF §3) compiled from a rules file into Spark Columns.

Both layers call `with_channel(rules)`, so batch and speed views group alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce
from pathlib import Path
from typing import Any, Callable

import yaml
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from touchpoint.schemas.envelope import CAMPAIGN_COLUMNS, event_types

DEFAULT_RULES_FILE = Path(__file__).parent / "channel_rules.yaml"
_CONDITIONS = {"medium_in", "source_in", "source_is", "referrer_is", "event_type_in", "no_campaign"}
_KINDS = {"search_engine", "social_network"}


class ChannelRulesError(ValueError):
    pass


@dataclass(frozen=True)
class ChannelRules:
    search_engines: tuple[str, ...]
    social_networks: tuple[str, ...]
    rules: tuple[tuple[str, tuple[dict[str, Any], ...]], ...]  # (channel, alternatives of AND-conditions)
    default: str

    @property
    def channels(self) -> tuple[str, ...]:
        """Every channel these rules can give an event."""
        return tuple(dict.fromkeys([*(channel for channel, _ in self.rules), self.default]))


def _names(value: Any, allow_empty: bool = False) -> bool:
    return (isinstance(value, list) and (allow_empty or bool(value))
            and all(isinstance(v, str) and v.strip() for v in value))


def load_rules(path: str | Path | None = None) -> ChannelRules:
    """Read and check a rules file; errors name the file, the rule and the fix."""
    path = Path(path or DEFAULT_RULES_FILE)
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ChannelRulesError(f"{path}: cannot read channel rules ({error})") from None
    if not isinstance(document, dict):
        raise ChannelRulesError(f"{path}: expected a mapping with search_engines, social_networks, rules, default")
    for key in ("search_engines", "social_networks", "rules", "default"):
        if key not in document:
            raise ChannelRulesError(f"{path}: missing key '{key}'")
    for key in ("search_engines", "social_networks"):
        if not _names(document[key], allow_empty=True):
            raise ChannelRulesError(f"{path}: {key} must be a list of names, e.g. [google, bing]")
    if not isinstance(document["default"], str) or not document["default"].strip():
        raise ChannelRulesError(f"{path}: default must be a channel name, e.g. direct")
    if ">" in document["default"]:
        raise ChannelRulesError(f"{path}: default: a channel name cannot hold '>' (paths join channels with ' > ')")
    if not isinstance(document["rules"], list):
        raise ChannelRulesError(f"{path}: rules must be a list of rules (channel plus when or any)")
    rules = []
    for index, rule in enumerate(document["rules"]):
        where = f"{path}: rules[{index}]"
        if not isinstance(rule, dict) or "channel" not in rule or ("when" in rule) == ("any" in rule):
            raise ChannelRulesError(f"{where}: needs 'channel' and exactly one of 'when' (all of) or 'any' (list)")
        if not isinstance(rule["channel"], str) or not rule["channel"].strip():
            raise ChannelRulesError(f"{where}: channel must be a name, e.g. paid_search")
        if ">" in rule["channel"]:  # the Markov chain reads its states back from paths joined by ' > '
            raise ChannelRulesError(f"{where}: channel {rule['channel']!r} cannot hold '>' (paths join channels "
                                    "with ' > '); name it e.g. paid_social")
        alternatives = [rule["when"]] if "when" in rule else rule["any"]
        if not isinstance(alternatives, list) or not alternatives:
            raise ChannelRulesError(f"{where}: 'any' must be a non-empty list of conditions")
        for alternative in alternatives:
            if not isinstance(alternative, dict) or not alternative:
                raise ChannelRulesError(f"{where}: a condition must be a non-empty mapping, e.g. {{medium_in: [cpc]}}")
            unknown = set(alternative) - _CONDITIONS
            if unknown:
                raise ChannelRulesError(f"{where}: unknown condition {sorted(unknown)}; use {sorted(_CONDITIONS)}")
            for key in ("medium_in", "source_in", "event_type_in"):
                if key in alternative and not _names(alternative[key]):
                    raise ChannelRulesError(f"{where}: {key} must be a list of names, e.g. {key}: [a, b]")
            if "no_campaign" in alternative and alternative["no_campaign"] is not True:
                raise ChannelRulesError(f"{where}: no_campaign can only be true (leave it out otherwise)")
            for key in ("source_is", "referrer_is"):
                allowed = _KINDS | ({"external"} if key == "referrer_is" else set())
                if key in alternative and alternative[key] not in allowed:
                    raise ChannelRulesError(f"{where}: {key} must be one of {sorted(allowed)}")
            bad_types = set(alternative.get("event_type_in", [])) - set(event_types())
            if bad_types:
                raise ChannelRulesError(f"{where}: unknown event types {sorted(bad_types)}")
        rules.append((rule["channel"].strip(), tuple(alternatives)))
    return ChannelRules(
        tuple(s.lower() for s in document["search_engines"]),
        tuple(s.lower() for s in document["social_networks"]),
        tuple(rules),
        document["default"].strip(),
    )


# ---- Column -> Column building blocks --------------------------------------------------------

def normalised_name(value: Column) -> Column:
    """Trimmed and lowercased, for exact-name matching of source and medium."""
    return F.lower(F.trim(value))


def url_host(url: Column) -> Column:
    """Lowercased host of a URL without a leading 'www.'; null when there is none."""
    return bare_host(raw_host(url))


# scheme "://" [userinfo "@"] host, where host is a bracketed IPv6 literal or runs up to ":", "/", "?" or
# "#". Read off the authority rather than by a strict URI parser: a referrer such as
# "https://www.google.com/search?q=red shoes" (a raw space) has a plain host, which BRIEF §3 groups by.
_URL_HOST = r"^\s*[A-Za-z][A-Za-z0-9+.-]*://(?:[^/?#]*@)?(\[[^\]/?#]*\]|[^:/?#]*)"


def raw_host(url: Column) -> Column:
    """Lowercased host of a URL as written; null when the URL has no scheme and authority or an empty host."""
    host = F.lower(F.regexp_extract(url, _URL_HOST, 1))
    return F.when(F.length(host) > 0, host)


def bare_host(host: Column) -> Column:
    """A lowercased host without a leading 'www.'; null when nothing is left."""
    # A prefix test, not a regular expression: it runs on every ingested row, twice.
    stripped = F.when(host.startswith("www."), host.substr(F.lit(5), F.length(host))).otherwise(host)
    return F.when(F.length(stripped) > 0, stripped)


def host_matches_any_label(host: Column, names: tuple[str, ...]) -> Column:
    """True when any dot-label of the host except the last is one of `names`."""
    labels = F.split(host, r"\.")
    leading = F.slice(labels, 1, F.greatest(F.size(labels) - 1, F.lit(0)))
    return F.coalesce(F.arrays_overlap(leading, F.array(*[F.lit(n) for n in names])), F.lit(False))


def has_campaign(columns: tuple[str, ...] = CAMPAIGN_COLUMNS) -> Column:
    return reduce(lambda a, b: a | b, [F.coalesce(F.length(F.trim(F.col(c))) > 0, F.lit(False)) for c in columns])


# Per-row facts the conditions test. with_channel computes each one it needs once per row, in a
# projection before the rules: inline, a URL would be parsed again by every rule that looks at it
# (five times per row with the default rules), and that was most of ingestion's channel cost.
_FACT_PREFIX = "__channel_"
_FACTS: dict[str, Callable[[], Column]] = {
    "source": lambda: normalised_name(F.col("campaign_source")),
    "medium": lambda: normalised_name(F.col("campaign_medium")),
    "has_campaign": has_campaign,
    "referrer_host": lambda: raw_host(F.col("referrer")),
    "page_host": lambda: url_host(F.col("page_url")),
}


def _condition(rules: ChannelRules, key: str, value: Any, fact: Callable[[str], Column]) -> Column:
    if key == "medium_in":
        return F.coalesce(fact("medium").isin([str(v).lower() for v in value]), F.lit(False))
    if key == "source_in":
        return F.coalesce(fact("source").isin([str(v).lower() for v in value]), F.lit(False))
    if key == "source_is":
        names = rules.search_engines if value == "search_engine" else rules.social_networks
        return F.coalesce(fact("source").isin(list(names)), F.lit(False))
    if key == "event_type_in":
        return F.col("event_type").isin(list(value))
    if key == "no_campaign":
        return ~fact("has_campaign") if value else fact("has_campaign")
    if key == "referrer_is":
        referrer_host = fact("referrer_host")
        if value == "external":
            ref_host = bare_host(referrer_host)
            return ref_host.isNotNull() & (fact("page_host").isNull() | (ref_host != fact("page_host")))
        names = rules.search_engines if value == "search_engine" else rules.social_networks
        return referrer_host.isNotNull() & host_matches_any_label(referrer_host, names)
    raise ChannelRulesError(f"unknown condition {key}")


def _channel_case(rules: ChannelRules, fact: Callable[[str], Column]) -> Column:
    """The rules, first match wins, over the fact columns."""
    expression: Column | None = None
    for channel, alternatives in rules.rules:
        matched = reduce(
            lambda a, b: a | b,
            [reduce(lambda x, y: x & y, [_condition(rules, k, v, fact) for k, v in alt.items()])
             for alt in alternatives],
        )
        expression = F.when(matched, F.lit(channel)) if expression is None else expression.when(matched, F.lit(channel))
    return F.lit(rules.default) if expression is None else expression.otherwise(F.lit(rules.default))


def with_channel(rules: ChannelRules) -> Callable[[DataFrame], DataFrame]:
    """Adds `channel` to rows holding silver's campaign, referrer, page_url and event_type."""
    used: list[str] = []

    def fact(name: str) -> Column:
        if name not in used:
            used.append(name)
        return F.col(_FACT_PREFIX + name)

    channel = _channel_case(rules, fact)

    def transform(events: DataFrame) -> DataFrame:
        facts = {_FACT_PREFIX + name: _FACTS[name]() for name in used}
        # Spark keeps the two projections apart: a fact used by several rules is not cheap to inline.
        return events.withColumns(facts).withColumn("channel", channel).drop(*facts)

    return transform
