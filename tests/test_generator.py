"""Synthetic traffic generator: determinism, report reconciliation, contract with ingestion.

No Spark here. The checks re-derive everything from the raw output lines with small
independent implementations (validator, BRIEF §3 channel rules, §4 touchpoints, §5
identity components), never from the generator's own helpers.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qsl, urlsplit

import phonenumbers
import pytest

from touchpoint.generator import (
    MALFORMED_KINDS, GenerationReport, GeneratorConfig, Pacer, arrivals_fit_kafka, generate, generate_command,
    iter_records, merge_reports, shard_configs,
)

EVENT_TYPES = ("page_view", "ad_impression", "ad_click", "email_send", "email_open", "email_click",
               "add_to_cart", "order", "signup", "identify", "consent")
ISO_SAMPLE = {"USD", "EUR", "GBP", "JPY", "CAD", "AUD", "INR", "CHF", "SEK", "CNY", "BRL", "MXN"}
IDENTIFIERS = ("anonymous_id", "user_id", "email", "phone")
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")
NO_OFFSET = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?$")
BLOCKLIST = {"null", "undefined", "none", "nil", "nan", "n/a", "unknown", "test@example.com"}
SEARCH = {"google", "bing", "yahoo", "duckduckgo", "baidu", "yandex"}
SOCIAL = {"facebook", "instagram", "linkedin", "tiktok", "twitter", "x", "pinterest", "reddit"}
HOUR = timedelta(hours=1)


# ------------------------------------------------------------------ independent re-derivations
def parse_ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def classify(line: bytes) -> str:
    """'valid' or the quarantine error code the ingestion must give this line."""
    if len(line) > 1_048_576:
        return "payload_too_large"
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return "invalid_utf8"
    try:
        obj = json.loads(text)
    except ValueError:
        return "truncated_json" if text.startswith("{") else "not_json"
    if not isinstance(obj, dict):
        return "not_object"
    for name in ("event_id", "event_type", "event_ts"):
        if name not in obj:
            return f"missing_{name}"
    if obj["event_type"] not in EVENT_TYPES:
        return "unknown_event_type"
    props = obj.get("properties") or {}
    if any(obj.get(k) is not None and not isinstance(obj[k], str) for k in IDENTIFIERS):
        return "wrong_type"
    if "revenue" in props and (isinstance(props["revenue"], bool) or not isinstance(props["revenue"], (int, float))):
        return "wrong_type"
    if not any(isinstance(obj.get(k), str) and obj[k].strip() for k in IDENTIFIERS):
        return "no_identifier"
    if NO_OFFSET.match(obj["event_ts"]):
        return "timestamp_without_offset"
    if not RFC3339.match(obj["event_ts"]):
        return "bad_timestamp"
    try:
        ts = parse_ts(obj["event_ts"])
    except ValueError:
        return "bad_timestamp"
    if ts.year < 2000:
        return "timestamp_too_old"
    if "sent_ts" in obj and ts > parse_ts(obj["sent_ts"]) + timedelta(days=1):
        return "timestamp_in_future"
    if obj["event_type"] == "order":
        if "order_id" not in props:
            return "order_missing_fields"
        if props["revenue"] < 0:
            return "negative_revenue"
        if props["currency"] not in ISO_SAMPLE:
            return "unknown_currency"
    if obj["event_type"] == "consent":
        consent = obj.get("consent") or {}
        if not any(isinstance(consent.get(k), bool) for k in ("email_marketing", "ads_personalization", "analytics")):
            return "consent_without_flags"
    return "valid"


def campaign_of(ev: dict) -> dict:
    obj = ev.get("campaign") or {}
    fields = {k: obj.get(k) or "" for k in ("source", "medium", "name", "term", "content")}
    if any(fields.values()):
        return fields
    url = (ev.get("context") or {}).get("page_url") or ""
    params = {k.lower(): v for k, v in parse_qsl(urlsplit(url).query, keep_blank_values=True)}
    return {"source": params.get("utm_source", ""), "medium": params.get("utm_medium", ""),
            "name": params.get("utm_campaign", ""), "term": params.get("utm_term", ""),
            "content": params.get("utm_content", "")}


def _host(url: str | None) -> str:
    return (urlsplit(url).hostname or "") if url else ""


def _is_listed(host: str, names: set[str]) -> bool:
    return any(label in names for label in host.split(".")[:-1])


def channel_of(ev: dict) -> str:
    camp = campaign_of(ev)
    source, medium = camp["source"].strip().lower(), camp["medium"].strip().lower()
    tagged = any(camp.values())
    ctx = ev.get("context") or {}
    ref_host = _host(ctx.get("referrer"))
    page_host = _host(ctx.get("page_url"))
    external = bool(ref_host) and (not page_host or ref_host.removeprefix("www.") != page_host.removeprefix("www."))
    if medium in {"cpc", "ppc", "paidsearch"} and source in SEARCH:
        return "paid_search"
    if medium in {"cpc", "ppc", "paid", "paidsocial"} and source in SOCIAL:
        return "paid_social"
    if medium in {"display", "banner", "cpm"}:
        return "display"
    if medium == "email" or ev["event_type"] in {"email_click", "email_open"}:
        return "email"
    if medium == "affiliate":
        return "affiliate"
    if medium == "social" or (not tagged and external and _is_listed(ref_host, SOCIAL)):
        return "organic_social"
    if not tagged and external and _is_listed(ref_host, SEARCH):
        return "organic_search"
    if not tagged and external:
        return "referral"
    return "direct"


def _usable(kind: str, value) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    value = value.strip().lower() if kind == "email" else value.strip()
    if value.lower() in BLOCKLIST or (set(value) <= set("0-+_ ") and "0" in value):
        return None
    return value


def identifiers_of(ev: dict) -> list[tuple[str, str]]:
    found = []
    for kind in IDENTIFIERS:
        value = _usable(kind, ev.get(kind))
        if value is None:
            continue
        if kind == "phone":
            try:
                number = phonenumbers.parse(value, (ev.get("context") or {}).get("country"))
            except phonenumbers.NumberParseException:
                continue
            if not phonenumbers.is_possible_number(number):
                continue
            value = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        found.append((kind, value))
    return found


def components(events: list[dict]) -> dict[tuple[str, str], tuple[str, str]]:
    """Union-find over co-occurring identifiers, with the shared-device guardrail (N = 3)."""
    users_per_device = defaultdict(set)
    for ev in events:
        ids = dict(identifiers_of(ev))
        if "anonymous_id" in ids and "user_id" in ids:
            users_per_device[ids["anonymous_id"]].add(ids["user_id"])
    shared = {d for d, users in users_per_device.items() if len(users) > 3}
    parent: dict = {}

    def find(x):
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for ev in events:
        ids = identifiers_of(ev)
        linking = [i for i in ids if not (i[0] == "anonymous_id" and i[1] in shared)] or ids
        for other in linking[1:]:
            parent[find(other)] = find(linking[0])
        for i in ids:
            find(i)
    return {x: find(x) for x in parent}


def customer_of(ev: dict, comp: dict) -> tuple[str, str] | None:
    ids = identifiers_of(ev)
    return comp[ids[0]] if ids else None


def markov_removal_shares(converting: Counter, null: Counter) -> dict[str, float]:
    """First-order absorbing chain over collapsed paths; removal effects normalised to sum 1."""
    import numpy as np

    channels = sorted({c for p in list(converting) + list(null) for c in p})
    index = {s: i for i, s in enumerate(["start", *channels, "conv", "null"])}
    counts = np.zeros((len(index), len(index)))
    for paths, end in ((converting, "conv"), (null, "null")):
        for path, n in paths.items():
            states = ["start"] + [c for i, c in enumerate(path) if i == 0 or path[i - 1] != c]
            for a, b in zip(states, states[1:]):
                counts[index[a], index[b]] += n
            counts[index[states[-1]], index[end]] += n

    def conversion_probability(removed: str | None) -> float:
        t = counts.copy()
        if removed:
            t[:, index["null"]] += t[:, index[removed]]
            t[:, index[removed]] = 0
        live = [index["start"]] + [index[c] for c in channels if c != removed]
        q = t[np.ix_(live, live)] / np.maximum(t[live].sum(axis=1, keepdims=True), 1)
        to_conv = t[live, index["conv"]] / np.maximum(t[live].sum(axis=1), 1)
        return float(np.linalg.solve(np.eye(len(live)) - q, to_conv)[0])

    base = conversion_probability(None)
    effects = {c: (base - conversion_probability(c)) / base for c in channels}
    return {c: e / sum(effects.values()) for c, e in effects.items()}


def attribution(events: list[dict]) -> tuple[Counter, Counter, dict, dict]:
    """Last-touch and linear credit per channel, converting paths, Markov removal-effect shares
    (BRIEF §4: 30-day lookback, 30-minute landing rule, null paths after the last order)."""
    comp = components(events)
    touches = defaultdict(list)
    clicks = defaultdict(list)
    for ev in sorted(events, key=lambda e: (parse_ts(e["event_ts"]), e["event_id"])):
        cust = customer_of(ev, comp)
        if cust is None:
            continue
        ts, channel = parse_ts(ev["event_ts"]), channel_of(ev)
        name = campaign_of(ev)["name"].strip()
        if ev["event_type"] in ("ad_click", "email_click"):
            clicks[cust].append((ts, channel, name))
            touches[cust].append((ts, ev["event_id"], channel))
        elif ev["event_type"] == "page_view" and channel != "direct":
            landing = any(c == channel and n == name and ts - timedelta(minutes=30) <= t <= ts
                          for t, c, n in clicks[cust])
            if not landing:
                touches[cust].append((ts, ev["event_id"], channel))
    last, linear, paths = Counter(), Counter(), {}
    last_order: dict = {}
    for ev in events:
        if ev["event_type"] != "order":
            continue
        conv_ts = parse_ts(ev["event_ts"])
        cust = customer_of(ev, comp)
        last_order[cust] = max(conv_ts, last_order.get(cust, conv_ts))
        path = sorted(t for t in touches[cust] if conv_ts - timedelta(days=30) <= t[0] <= conv_ts)
        paths[ev["event_id"]] = [t[2] for t in path]
        if not path:
            last["direct"] += 1
            linear["direct"] += 1
            continue
        last[path[-1][2]] += 1
        for t in path:
            linear[t[2]] += 1 / len(path)
    null_paths = Counter()  # touches after a customer's last order (all of them without one)
    for cust, customer_touches in touches.items():
        after = tuple(t[2] for t in sorted(customer_touches) if cust not in last_order or t[0] > last_order[cust])
        if after:
            null_paths[after] += 1
    markov = markov_removal_shares(Counter(tuple(p) for p in paths.values() if p), null_paths)
    return last, linear, paths, markov


def read_lines(path) -> list[bytes]:
    data = path.read_bytes()
    assert data.endswith(b"\n")
    return data[:-1].split(b"\n")


def valid_originals(lines: list[bytes]) -> list[dict]:
    seen, events = set(), []
    for line in lines:
        if classify(line) == "valid":
            ev = json.loads(line)
            if ev["event_id"] not in seen:
                seen.add(ev["event_id"])
                events.append(ev)
    return events


# ------------------------------------------------------------------ shared runs
@pytest.fixture(scope="module")
def medium_run(tmp_path_factory):
    """One run with every kind of defect turned up, reused by the reconciliation tests."""
    path = tmp_path_factory.mktemp("gen") / "events.jsonl"
    config = GeneratorConfig(seed=7, customers=400, days=6, events_per_customer=20, late_rate=0.05,
                             duplicate_rate=0.04, malformed_rate=0.02)
    report = generate(config, output="jsonl", path=str(path))
    return config, report, path, read_lines(path)


@pytest.fixture(scope="module")
def attribution_run():
    config = GeneratorConfig(seed=11, customers=1500, days=14, events_per_customer=20, late_rate=0.02,
                             duplicate_rate=0.0, malformed_rate=0.0)
    return valid_originals([r.payload for r in iter_records(config)])


# ------------------------------------------------------------------ tests
def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    config = GeneratorConfig(seed=3, customers=60, days=3, malformed_rate=0.05, duplicate_rate=0.05, late_rate=0.05)
    first, second, other = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    report_a = generate(config, output="jsonl", path=str(first))
    report_b = generate(config, output="jsonl", path=str(second))
    generate(GeneratorConfig(**{**config.__dict__, "seed": 4}), output="jsonl", path=str(other))
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes() != other.read_bytes()
    strip = ("elapsed_seconds", "lines_per_second", "output")
    assert {k: v for k, v in report_a.items() if k not in strip} == \
        {k: v for k, v in report_b.items() if k not in strip}


def test_report_reconciles_with_lines(medium_run):
    _, report, _, lines = medium_run
    assert report["lines"] == len(lines) == report["valid_unique_events"] + report["duplicates_injected"] + \
        report["malformed_total"]
    codes = Counter(classify(line) for line in lines)
    valid_lines = codes.pop("valid")
    assert dict(codes) == {k: v for k, v in report["malformed"].items() if v}
    assert set(codes) == set(MALFORMED_KINDS)  # every kind produced, each counted under its code
    assert report["expected_quarantine"] == report["malformed_total"] == sum(codes.values())
    ids = Counter(json.loads(line)["event_id"] for line in lines if classify(line) == "valid")
    assert len(ids) == report["valid_unique_events"] == report["expected_silver"]
    assert valid_lines - len(ids) == report["duplicates_injected"] == report["expected_duplicates"] > 0
    by_type = Counter(json.loads(line)["event_type"] for line in lines if classify(line) == "valid")
    dup_types = Counter()
    seen = set()
    for line in lines:
        if classify(line) == "valid":
            ev = json.loads(line)
            if ev["event_id"] in seen:
                dup_types[ev["event_type"]] += 1
            seen.add(ev["event_id"])
    assert {t: by_type[t] - dup_types[t] for t in EVENT_TYPES} == report["events_by_type"]
    assert all(n > 0 for n in report["events_by_type"].values())


def test_duplicates_are_byte_identical_and_malformed_ids_unique(medium_run):
    _, _, _, lines = medium_run
    first_copy: dict[str, bytes] = {}
    duplicates = 0
    for line in lines:
        if classify(line) != "valid":
            continue
        event_id = json.loads(line)["event_id"]
        if event_id in first_copy:
            assert line == first_copy[event_id]
            duplicates += 1
        else:
            first_copy[event_id] = line
    assert duplicates > 0
    malformed_ids = []
    for line in lines:
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and classify(line) != "valid" and isinstance(obj.get("event_id"), str):
            malformed_ids.append(obj["event_id"])
    assert len(malformed_ids) > 0
    assert len(set(malformed_ids)) == len(malformed_ids)
    assert not set(malformed_ids) & set(first_copy)


def test_arrival_order_and_late_events(medium_run):
    _, report, _, lines = medium_run
    events = valid_originals(lines)
    sent = [parse_ts(ev["sent_ts"]) for ev in events if "sent_ts" in ev]
    assert sent == sorted(sent)  # originals leave in arrival order (sent_ts = arrival)
    late = [ev for ev in events if "sent_ts" in ev and parse_ts(ev["sent_ts"]) - parse_ts(ev["event_ts"]) >= HOUR]
    assert len(late) == report["late_events"] > 0
    for ev in late:
        assert timedelta(hours=1) <= parse_ts(ev["sent_ts"]) - parse_ts(ev["event_ts"]) <= timedelta(days=3)
    start = datetime(2024, 3, 4, tzinfo=timezone.utc)
    # Each late event arriving while traffic still flows comes after events that happened later.
    running_max, overtaken, checked = None, 0, 0
    late_ids = {ev["event_id"] for ev in late}
    for ev in events:
        ts = parse_ts(ev["event_ts"])
        if ev["event_id"] in late_ids and parse_ts(ev["sent_ts"]) < start + timedelta(days=5):
            checked += 1
            overtaken += running_max is not None and running_max > ts
        running_max = ts if running_max is None else max(running_max, ts)
    assert overtaken == checked > 0.5 * len(late)
    assert all(start <= parse_ts(ev["event_ts"]) < start + timedelta(days=6) for ev in events)


def test_timestamps_offsets_and_formats(medium_run):
    _, _, _, lines = medium_run
    events = valid_originals(lines)
    offsets = Counter(ev["event_ts"][-6:] if not ev["event_ts"].endswith("Z") else "Z" for ev in events)
    assert offsets["Z"] / len(events) > 0.6
    assert len(offsets) >= 4  # some +02:00 / -05:00 / +05:30 style offsets for the same instants
    assert all(RFC3339.match(ev["event_ts"]) for ev in events)


def test_identity_material(medium_run):
    _, report, _, lines = medium_run
    events = valid_originals(lines)
    raw_emails = [ev["email"] for ev in events if "email" in ev]
    assert any(e != e.strip() for e in raw_emails) and any(e.strip() != e.strip().lower() for e in raw_emails)
    devices_per_user = defaultdict(set)
    for ev in events:
        if "user_id" in ev and "anonymous_id" in ev:
            devices_per_user[ev["user_id"]].add(ev["anonymous_id"])
    assert sum(1 for d in devices_per_user.values() if len(d) >= 2) >= 5  # cross-device identities
    impossible, bad_values, countries = 0, set(), set()
    for ev in events:
        if "phone" not in ev:
            continue
        country = ev["context"]["country"]
        try:
            possible = phonenumbers.is_possible_number(phonenumbers.parse(ev["phone"], country))
        except phonenumbers.NumberParseException:
            possible = False
        if possible:
            countries.add(country)
        else:
            impossible += 1
            bad_values.add(ev["phone"])
    assert impossible == report["impossible_phone_events"]
    assert len(bad_values) == report["impossible_phones"]
    assert countries >= {"US", "GB"}
    emails_per_phone = defaultdict(set)  # a number shared by two people would merge them
    for ev in events:
        ids = dict(identifiers_of(ev))
        if "phone" in ids and "email" in ids:
            emails_per_phone[ids["phone"]].add(ids["email"])
    assert emails_per_phone and all(len(e) == 1 for e in emails_per_phone.values())
    national = [ev["phone"] for ev in events if "phone" in ev and not ev["phone"].startswith("+")]
    assert national  # national formats that need context.country
    blocklisted = sum(1 for ev in events if ev.get("anonymous_id", "").lower() in BLOCKLIST | {"0"}
                      or set(ev.get("anonymous_id", "x")) <= set("0-"))
    assert blocklisted == report["blocklisted_identifier_events"]


def test_campaign_tagging(medium_run):
    _, _, _, lines = medium_run
    events = valid_originals(lines)
    modes = Counter()
    for ev in events:
        obj = ev.get("campaign") or {}
        url = (ev.get("context") or {}).get("page_url") or ""
        params = {k.lower(): v for k, v in parse_qsl(urlsplit(url).query)}
        in_url = {k[4:]: v for k, v in params.items() if k.startswith("utm_")}
        in_obj = {k: v for k, v in obj.items() if v}
        if in_obj and in_url:
            modes["both"] += 1
            renamed = {("name" if k == "campaign" else k): v for k, v in in_url.items()}
            assert renamed == {k: v.strip().lower() if k in ("source", "medium") else v for k, v in in_obj.items()}
        elif in_url:
            modes["url"] += 1
            assert set(in_url) >= {"source", "medium", "campaign"}
        elif in_obj:
            modes["object"] += 1
    assert modes["url"] and modes["object"] and modes["both"]
    names = {k for line in lines if classify(line) == "valid"
             for k, _ in parse_qsl(urlsplit(json.loads(line).get("context", {}).get("page_url", "")).query)}
    assert any(n.startswith("UTM_") for n in names) and any(n.startswith("Utm_") for n in names)
    channels = Counter(channel_of(ev) for ev in events)
    assert set(channels) == {"paid_search", "paid_social", "display", "email", "affiliate", "organic_social",
                             "organic_search", "referral", "direct"}
    for ev in events:
        if ev["event_type"] == "order":
            props = ev["properties"]
            assert props["revenue"] >= 0 and props["currency"] in ISO_SAMPLE and props["order_id"]
        if ev["event_type"] == "add_to_cart":
            assert {"product_id", "price", "quantity"} <= set(ev["properties"])
        if ev["event_type"] == "consent":
            assert any(isinstance(v, bool) for v in ev["consent"].values())
    order_ids = [ev["properties"]["order_id"] for ev in events if ev["event_type"] == "order"]
    assert len(order_ids) == len(set(map(str, order_ids)))
    assert len({ev["properties"]["currency"] for ev in events if ev["event_type"] == "order"}) >= 4


def test_landing_page_follows_click_with_same_campaign(medium_run):
    _, _, _, lines = medium_run
    events = valid_originals(lines)
    by_device = defaultdict(list)
    for ev in events:
        if "anonymous_id" in ev:
            by_device[ev["anonymous_id"]].append(ev)
    clicks = landed = 0
    for device_events in by_device.values():
        device_events.sort(key=lambda e: parse_ts(e["event_ts"]))
        for before, after in zip(device_events, device_events[1:]):
            if before["event_type"] in ("ad_click", "email_click"):
                clicks += 1
                gap = parse_ts(after["event_ts"]) - parse_ts(before["event_ts"])
                if after["event_type"] == "page_view" and gap <= timedelta(seconds=5) and \
                        campaign_of(after)["name"] == campaign_of(before)["name"] and \
                        channel_of(after) == channel_of(before):
                    landed += 1
    assert clicks > 20 and landed == clicks


def test_display_is_assist_only(attribution_run):
    events = attribution_run
    last, linear, paths, markov = attribution(events)
    orders = sum(last.values())
    assert orders > 200
    assert last["display"] == 0  # never the last touch before an order
    assert linear["display"] / orders > 0.05  # but a real share of multi-touch credit
    assert markov["display"] > 0.05
    with_display = sum(1 for p in paths.values() if "display" in p)
    assert with_display / orders > 0.15
    # Customers who clicked display convert at a clearly higher rate than the rest.
    comp = components(events)
    clicked, converted, seen = set(), set(), set()
    for ev in events:
        cust = customer_of(ev, comp)
        if cust is None:
            continue
        if ev["event_type"] in ("ad_click", "page_view"):
            seen.add(cust)
        if ev["event_type"] == "ad_click" and channel_of(ev) == "display":
            clicked.add(cust)
        if ev["event_type"] == "order":
            converted.add(cust)
    rate_display = len(clicked & converted) / len(clicked)
    rate_other = len((seen - clicked) & converted) / len(seen - clicked)
    assert rate_display > 1.5 * rate_other


def test_jsonl_framing_with_garbage_lines(medium_run):
    _, report, path, lines = medium_run
    data = path.read_bytes()
    assert data.count(b"\n") == report["lines"] == len(lines)
    assert any(classify(line) == "invalid_utf8" for line in lines)
    assert any(classify(line) == "not_json" for line in lines)
    oversized = [line for line in lines if len(line) > 1_048_576]
    assert len(oversized) == report["malformed"]["payload_too_large"] >= 1
    assert all(len(line) < 2_000_000 for line in lines)
    assert report["bytes"] + report["lines"] == len(data)


def test_malformed_kinds_on_demand():
    config = GeneratorConfig(seed=5, customers=40, days=2, malformed_rate=0.1,
                             malformed_kinds=("negative_revenue", "timestamp_in_future"), duplicate_rate=0.0)
    records = list(iter_records(config))
    kinds = Counter(r.kind for r in records if r.kind != "valid")
    assert set(kinds) == {"negative_revenue", "timestamp_in_future"}
    assert abs(kinds["negative_revenue"] - kinds["timestamp_in_future"]) <= 1  # round-robin
    assert all(classify(r.payload) == r.kind for r in records)
    with pytest.raises(ValueError, match="unknown malformed kind"):
        GeneratorConfig(malformed_kinds=("bogus",))


def test_max_events_truncates_and_report_still_reconciles():
    config = GeneratorConfig(seed=2, customers=50, days=2, max_events=300, malformed_rate=0.05, duplicate_rate=0.05)
    from touchpoint.generator import GenerationReport

    report = GenerationReport()
    records = list(iter_records(config, report))
    assert len(records) == 300 == report.lines and report.stopped_early
    assert report.valid_unique_events + report.duplicates_injected + report.malformed_total == 300


def test_pacer_schedule_with_burst():
    pacer = Pacer(rate=100, burst_factor=10, burst_start=2, burst_seconds=1, now=lambda: 0.0, sleep=lambda s: None)
    assert pacer.due(0) == 0 and pacer.due(100) == 1.0 and pacer.due(200) == 2.0
    assert pacer.due(700) == pytest.approx(2.5)  # 10x rate inside the burst
    assert pacer.due(1200) == pytest.approx(3.0)
    assert pacer.due(1300) == pytest.approx(4.0)


def test_realtime_mode_stamps_now_and_keeps_lateness():
    clock = {"t": 1_800_000_000.0}

    def sleep(seconds):
        clock["t"] += seconds

    pacer = Pacer(rate=50, now=lambda: clock["t"], sleep=sleep, duration=30)
    config = GeneratorConfig(seed=9, customers=200, days=2, late_rate=0.2, malformed_rate=0.0, duplicate_rate=0.0)
    records = list(iter_records(config, clock=pacer, stop=pacer.expired))
    assert 1400 <= len(records) <= 1501  # 50 lines/s for 30 simulated wall seconds
    late = on_time = 0
    for record in records:
        ev = json.loads(record.payload)
        ts, arrival = parse_ts(ev["event_ts"]), datetime.fromtimestamp(record.timestamp_ms / 1000).astimezone()
        if arrival - ts >= HOUR:
            late += 1
        else:
            # On-time events happen "now" (server-side events carry whole seconds).
            assert ts == (arrival if "." in ev["event_ts"] else arrival.replace(microsecond=0))
            on_time += 1
    assert late > 0 and on_time > late


def test_lookahead_simulates_while_the_pacer_waits_and_sends_the_same_events():
    config = GeneratorConfig(seed=9, customers=200, days=2, duplicate_rate=0.05, malformed_rate=0.01)

    def run(lookahead: int):
        clock = {"t": 1_800_000_000.0}

        def sleep(seconds):
            clock["t"] += seconds

        pacer = Pacer(rate=50, now=lambda: clock["t"], sleep=sleep, duration=30)
        return list(iter_records(config, clock=pacer, stop=pacer.expired, lookahead=lookahead)), pacer

    plain, _ = run(0)
    ahead, pacer = run(300)
    # this clock stands still while the buffer fills: every wait fills it to the limit (the line
    # the stop left unsent was the one taken from it last)
    assert len(pacer.idle.__self__.buffer) == 300 - 1
    assert len(ahead) == len(plain) and 1400 <= len(plain) <= 1501
    # The same events in the same order. A duplicate waits behind the buffered lines, so within the
    # same 30 s fewer of them and more new events go out; each is still a byte copy of a line sent before.
    def valid_ids(records):
        return [json.loads(r.payload)["event_id"] for r in records if r.kind == "valid"]

    shared = min(len(valid_ids(ahead)), len(valid_ids(plain)))
    assert shared > 1000 and valid_ids(ahead)[:shared] == valid_ids(plain)[:shared]
    kinds_ahead, kinds_plain = Counter(r.kind for r in ahead), Counter(r.kind for r in plain)
    assert 0 < kinds_ahead["duplicate"] <= kinds_plain["duplicate"]
    assert kinds_ahead["valid"] - kinds_plain["valid"] == kinds_plain["duplicate"] - kinds_ahead["duplicate"]
    sent = set()
    for record in ahead:
        assert record.kind != "duplicate" or record.payload in sent
        sent.add(record.payload)
    with pytest.raises(ValueError, match="lookahead must be >= 0 lines, got -1"):
        generate(config, output="jsonl", path="unused.jsonl", lookahead=-1)


def test_generate_command_is_typer_compatible(tmp_path):
    import typer
    from typer.testing import CliRunner

    app = typer.Typer()
    app.command()(generate_command)
    out = tmp_path / "cli.jsonl"
    report = tmp_path / "report.json"
    result = CliRunner().invoke(app, ["--customers", "20", "--days", "2", "--path", str(out), "--report", str(report),
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    written = json.loads(report.read_text())
    assert written["lines"] == out.read_bytes().count(b"\n") > 0
    assert written["expected_silver"] == written["valid_unique_events"]
    bad = CliRunner().invoke(app, ["--output", "jsonl"])
    assert bad.exit_code == 2


def test_kafka_timestamps_only_when_the_broker_keeps_them():
    config = GeneratorConfig(start_date="2024-03-04", days=2, late_rate=0.01, duplicate_rate=0.0)
    start = datetime(2024, 3, 4, tzinfo=timezone.utc).timestamp()
    day = 86_400
    # Late arrivals reach 3 days past the 2-day window; the broker refuses > 1 h ahead of its clock.
    assert arrivals_fit_kafka(config, retention_hours=168, now=start + 5 * day + 60)
    assert not arrivals_fit_kafka(config, retention_hours=168, now=start + 4 * day)
    # Time retention deletes records older than 7 days as soon as the broker checks.
    assert not arrivals_fit_kafka(config, retention_hours=168, now=start + 7 * day)
    assert arrivals_fit_kafka(config, retention_hours=24 * 30, now=start + 7 * day)


@pytest.mark.kafka
def test_kafka_output_round_trip(settings, kafka_topic, tmp_path):
    # A window the broker keeps: arrival timestamps older than its retention would be deleted
    # within minutes, ones more than an hour ahead of its clock rejected.
    start = (datetime.now(timezone.utc) - timedelta(days=5)).date()
    config = GeneratorConfig(seed=21, customers=40, days=1, start_date=start, malformed_rate=0.05,
                             duplicate_rate=0.05)
    expected = list(iter_records(config))
    report = generate(config, output="kafka", topic=kafka_topic, bootstrap=settings.kafka_bootstrap,
                      kafka_timestamps="arrival")
    assert report["lines"] == len(expected) == report["output"]["delivered"]
    assert report["output"]["record_timestamps"] == "arrival"
    received = _consume(settings, kafka_topic, len(expected))
    assert sorted(received) == sorted((r.payload, r.key, r.timestamp_ms) for r in expected)
    assert any(len(value) > 1_048_576 for value, _, _ in received)


@pytest.mark.kafka
def test_kafka_output_names_a_missing_topic_and_a_bad_codec(settings, kafka_topic):
    from touchpoint.infra import kafka

    config = GeneratorConfig(seed=21, customers=5, days=1)
    missing = kafka_topic + ".missing"
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=re.escape(f"Kafka topic '{missing}' does not exist; create it first")
                       + ".*UNKNOWN_TOPIC_OR_PART"):
        generate(config, output="kafka", topic=missing, bootstrap=settings.kafka_bootstrap)
    # Named after the unknown-topic grace (5 s), not after the whole metadata timeout (20 s).
    assert time.monotonic() - started < 15
    # Asking for its partitions did not create it (the broker's auto-creation is off).
    assert kafka.ensure_topic(missing, partitions=1, settings=settings) is True
    kafka.delete_topic(missing, settings=settings)
    with pytest.raises(ValueError, match="compression must be one of none, gzip, snappy, lz4, zstd or auto, got 'lzma'"):
        generate(config, output="kafka", topic=kafka_topic, bootstrap=settings.kafka_bootstrap, compression="lzma")


@pytest.mark.kafka
def test_kafka_output_stops_on_records_the_broker_rejects(settings, kafka_topic):
    # The broker refuses record timestamps more than an hour ahead of its clock.
    config = GeneratorConfig(seed=3, customers=20, days=1,
                             start_date=datetime.now(timezone.utc).date() + timedelta(days=10))
    with pytest.raises(RuntimeError, match=r"Kafka (records were not delivered to|rejected records for) "
                                           + re.escape(kafka_topic) + r": KafkaError\{code=INVALID_RECORD"):
        generate(config, output="kafka", topic=kafka_topic, bootstrap=settings.kafka_bootstrap,
                 kafka_timestamps="arrival")


def test_shards_split_customers_and_events_with_seeds_of_their_own():
    config = GeneratorConfig(seed=7, customers=10, max_events=101, customer_offset=5)
    shards = shard_configs(config, 3)
    assert [(s.seed, s.customers, s.customer_offset, s.max_events) for s in shards] == [
        (7000, 4, 5, 34), (7001, 3, 9, 34), (7002, 3, 12, 33)]
    assert {s.days for s in shards} == {config.days} and {s.late_rate for s in shards} == {config.late_rate}
    assert shard_configs(config, 1) == [config]
    with pytest.raises(ValueError, match=re.escape("processes (11) must not exceed customers (10)")):
        shard_configs(config, 11)
    with pytest.raises(ValueError, match="customer_offset must be >= 0, got -1"):
        GeneratorConfig(customer_offset=-1)
    with pytest.raises(ValueError, match="processes > 1 needs output kafka: a JSONL file has one writer"):
        generate(config, output="jsonl", path="unused.jsonl", processes=2)


def test_a_merged_report_sums_the_shards_and_keeps_the_extremes():
    def shard_report(seed, offset, lines, valid, revenue, first, last, elapsed, stopped):
        report = GenerationReport(seed=seed, lines=lines, valid_unique_events=valid, customers=10,
                                  revenue_by_currency=revenue, first_event_ts=first, last_event_ts=last,
                                  first_arrival=first, last_arrival=last, elapsed_seconds=elapsed,
                                  stopped_early=stopped, parameters={"customer_offset": offset})
        report.events_by_type["order"] = valid // 10
        return {**report.as_dict(), "output": {"kind": "kafka", "topic": "t", "delivered": lines}}

    config = GeneratorConfig(seed=3, customers=20)
    merged = merge_reports(config, [
        shard_report(3000, 0, 120, 100, {"USD": 10.25, "EUR": 1.0}, "2026-12-06T10:00:01.000Z",
                     "2026-12-06T10:00:09.000Z", 4.0, False),
        shard_report(3001, 10, 60, 50, {"USD": 0.1}, "2026-12-06T10:00:00.500Z", "2026-12-06T10:00:08.000Z",
                     6.0, True)])
    assert (merged["seed"], merged["customers"], merged["lines"], merged["valid_unique_events"]) == (3, 20, 180, 150)
    assert merged["expected_silver"] == 150 and merged["events_by_type"]["order"] == 15
    assert merged["revenue_by_currency"] == {"EUR": 1.0, "USD": 10.35}
    assert (merged["first_event_ts"], merged["last_event_ts"]) == ("2026-12-06T10:00:00.500Z", "2026-12-06T10:00:09.000Z")
    assert (merged["elapsed_seconds"], merged["lines_per_second"], merged["stopped_early"]) == (6.0, 30.0, True)
    assert merged["shards"] == [
        {"seed": 3000, "customers": 10, "customer_offset": 0, "lines": 120, "expected_silver": 100},
        {"seed": 3001, "customers": 10, "customer_offset": 10, "lines": 60, "expected_silver": 50}]
    assert merged["output"] == {"kind": "kafka", "topic": "t", "delivered": 180}
    assert merged["parameters"]["customers"] == 20


def _numbers(lines: list[bytes]) -> dict[str, set[int]]:
    """The customer numbers the identifiers carry: user ids u<100000 + n>, emails <name><n>@,
    kiosk personas kiosk<n>-visitor<p>."""
    found = {"user_id": set(), "email": set(), "kiosk": set()}
    for line in lines:
        if classify(line) != "valid":
            continue
        event = json.loads(line)
        user, email = event.get("user_id"), (event.get("email") or "").strip().lower()
        if user and re.fullmatch(r"u\d+", user):
            found["user_id"].add(int(user[1:]) - 100_000)
        elif user and user.startswith("kiosk"):
            found["kiosk"].add(int(user[5:user.index("-")]))
        if re.fullmatch(r"[a-z]+\.[a-z]+\d+@[a-z.]+", email):
            found["email"].add(int(re.search(r"(\d+)@", email).group(1)))
    return found


def test_an_offset_renumbers_the_customers_and_nothing_else():
    base = GeneratorConfig(seed=5, customers=60, days=2)
    moved = GeneratorConfig(seed=5, customers=60, days=2, customer_offset=999)  # 999 % 3 == 0: same email domains
    base_lines = [r.payload for r in iter_records(base)]
    moved_lines = [r.payload for r in iter_records(moved)]
    assert len(moved_lines) == len(base_lines)
    base_numbers, moved_numbers = _numbers(base_lines), _numbers(moved_lines)
    assert base_numbers["user_id"] and base_numbers["email"] and base_numbers["kiosk"] == {0}
    assert {kind: {n + 999 for n in numbers} for kind, numbers in base_numbers.items()} == moved_numbers
    assert max(base_numbers["user_id"] | base_numbers["email"]) < 60
    # Without the identifiers made from a customer's number, every valid event is the same.
    def without_numbered(lines):
        events = [json.loads(line) for line in lines if classify(line) == "valid"]
        return [{k: v for k, v in event.items() if k not in ("user_id", "email", "phone")} for event in events]

    assert without_numbered(moved_lines) == without_numbered(base_lines)
    assert [classify(line) for line in moved_lines] == [classify(line) for line in base_lines]


def _consume(settings, topic: str, count: int) -> list[tuple]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=10_000, max_partition_fetch_bytes=4 << 20,
                             fetch_max_bytes=8 << 20)
    received = []
    for message in consumer:
        received.append((message.value, message.key, message.timestamp))
        if len(received) == count:
            break
    consumer.close()
    return received


def _wait_for_records(settings, topic: str, count: int) -> None:
    """Until the topic holds `count` records; bounded, so a watcher thread never outlives its test."""
    from bench.collector_load import topic_records
    from bench.faults import wait_for

    wait_for(lambda: topic_records(settings.kafka_bootstrap, topic) >= count, timeout=120, interval=0.2,
             what=f"{count} records in {topic}")


@pytest.mark.kafka
def test_processes_send_their_shards_and_one_report_sums_them(settings, kafka_topic):
    start = (datetime.now(timezone.utc) - timedelta(days=5)).date()
    config = GeneratorConfig(seed=21, customers=60, days=1, start_date=start, malformed_rate=0.05,
                             duplicate_rate=0.05)
    shard_reports = [GenerationReport() for _ in range(2)]
    shard_lines = [[r for r in iter_records(shard, report)]
                   for shard, report in zip(shard_configs(config, 2), shard_reports)]
    expected = shard_lines[0] + shard_lines[1]
    report = generate(config, output="kafka", topic=kafka_topic, bootstrap=settings.kafka_bootstrap,
                      kafka_timestamps="arrival", processes=2)
    assert report["lines"] == len(expected) == report["output"]["delivered"]
    assert report["shards"] == [
        {"seed": 21000 + i, "customers": 30, "customer_offset": 30 * i, "lines": len(shard_lines[i]),
         "expected_silver": shard_reports[i].valid_unique_events} for i in range(2)]
    assert sorted(_consume(settings, kafka_topic, len(expected))) == sorted(
        (r.payload, r.key, r.timestamp_ms) for r in expected)
    # the report is the sum of the shards' own reports; the shards share no customer
    assert report["events_by_type"] == {t: sum(r.events_by_type[t] for r in shard_reports) for t in EVENT_TYPES}
    assert report["malformed"] == {k: sum(r.malformed[k] for r in shard_reports) for k in MALFORMED_KINDS}
    assert (report["expected_silver"], report["expected_quarantine"], report["expected_duplicates"]) == (
        sum(r.valid_unique_events for r in shard_reports), sum(r.malformed_total for r in shard_reports),
        sum(r.duplicates_injected for r in shard_reports))
    assert report["seed"] == 21 and report["parameters"]["customers"] == 60
    numbers = [_numbers([r.payload for r in lines]) for lines in shard_lines]
    assert numbers[0]["user_id"] and max(numbers[0]["user_id"] | numbers[0]["email"]) < 30
    assert numbers[1]["user_id"] and min(numbers[1]["user_id"] | numbers[1]["email"]) >= 30

    # a shard's failure fails the run, named
    with pytest.raises(RuntimeError, match=re.escape(
            "generator shard(s) failed: shard 0 (seed 21000): ValueError: compression must be one of none, gzip, "
            "snappy, lz4, zstd or auto, got 'lzma'; shard 1 (seed 21001): ValueError: compression must be")):
        generate(config, output="kafka", topic=kafka_topic, bootstrap=settings.kafka_bootstrap, compression="lzma",
                 processes=2)


@pytest.mark.kafka
def test_processes_share_the_rate_and_stop_on_the_event(settings, kafka_topic):
    import multiprocessing
    import threading

    config = GeneratorConfig(seed=4, customers=400, days=2)
    # 2 processes at 100 lines/s each for 3 s: at most 301 lines each (one more than are due).
    paced = generate(config, output="kafka", topic=kafka_topic, bootstrap=settings.kafka_bootstrap, rate=200,
                     duration=3, processes=2)
    assert 300 <= paced["lines"] <= 602 and [s["lines"] <= 301 for s in paced["shards"]] == [True, True]
    assert paced["realtime"]["processes"] == 2 and paced["stopped_early"]
    # Stopped once the topic holds 100 more records; the run would take about 40 s.
    stop = multiprocessing.get_context("spawn").Event()

    def stop_when_sending() -> None:
        _wait_for_records(settings, kafka_topic, paced["lines"] + 100)
        stop.set()

    watcher = threading.Thread(target=stop_when_sending, daemon=True)
    watcher.start()
    stopped = generate(config, output="kafka", topic=kafka_topic, bootstrap=settings.kafka_bootstrap, rate=200,
                       processes=2, stop_event=stop)
    watcher.join(5)
    assert stop.is_set() and stopped["stopped_early"] and 100 <= stopped["lines"] < 2_000


@pytest.mark.kafka
def test_a_shard_killed_while_sending_fails_the_run_and_the_other_stops(settings, kafka_topic):
    import multiprocessing
    import os
    import signal
    import threading

    import psutil

    def spawned_children() -> set[int]:
        pids = set()
        for child in psutil.Process().children():
            try:
                if "spawn_main" in " ".join(child.cmdline()):  # not multiprocessing's resource tracker
                    pids.add(child.pid)
            except psutil.Error:  # exited or a zombie meanwhile: not a shard of this run
                pass
        return pids

    # About 1,200 s at 200 lines/s: the kill lands while both shards send, however slow the machine.
    config = GeneratorConfig(seed=4, customers=400, days=60)
    before = spawned_children()  # a spawned child left by an earlier test is not a shard of this run
    stop = multiprocessing.get_context("spawn").Event()
    killed: list[int] = []
    killer_failure: list[BaseException] = []

    def kill_a_shard_once_sending() -> None:
        try:
            _wait_for_records(settings, kafka_topic, 50)
            shards = spawned_children() - before
            assert len(shards) == 2, f"expected this run's 2 shards, found {sorted(shards)}"
            victim = min(shards)
            os.kill(victim, signal.SIGKILL)  # a child of this process, by its PID
            killed.append(victim)
        except BaseException as error:  # reported by the test below, and the run stopped, not left to send
            killer_failure.append(error)
            stop.set()

    killer = threading.Thread(target=kill_a_shard_once_sending, daemon=True)
    killer.start()
    started = time.monotonic()
    try:
        generate(config, output="kafka", topic=kafka_topic, bootstrap=settings.kafka_bootstrap, rate=200,
                 processes=2, stop_event=stop)
        outcome: BaseException | None = None
    except RuntimeError as error:
        outcome = error
    elapsed = time.monotonic() - started
    killer.join(130)
    assert not killer.is_alive() and not killer_failure, f"the killer thread failed: {killer_failure!r}"
    assert len(killed) == 1
    assert outcome is not None and re.fullmatch(
        r"generator shard\(s\) failed: shard [01] \(seed 400[01]\): exited with code -9 before reporting",
        str(outcome)), outcome
    assert elapsed < 30  # the other shard stopped, not ran its 1,200 s
    assert not spawned_children() - before


def test_generator_imports_neither_spark_nor_jobs():
    import subprocess
    import sys

    code = ("import sys, touchpoint.generator; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('pyspark', 'delta') "
            "or m.startswith(('touchpoint.jobs', 'touchpoint.streaming', 'touchpoint.core.spark'))]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
