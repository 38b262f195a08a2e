"""Differential test of the batch identity job (BRIEF §5, the as-of rule of §4 and the identifier
normalisation of §2) against an independent pure-Python oracle, over consecutive logical dates.

The oracle is written from the brief's text plus the documented id *formula* (docs/IDENTITY.md,
"Customer ids": `cus_` + 32 hex of sha256("touchpoint-customer-v1:<type>:<value>") of a new
component's anchor, the identifier with the smallest (first_seen, type, value)). Everything else
(which events count, normalisation, guardrails, components, first/last seen, which id survives
across days, which merges are logged) is derived here without the project's code. Ids across days
follow the brief's history rule: a component keeps its previous id when it only grows, late data
included; when components merge the older one's id survives ("older" = the customer first seen
first in the previous run's map, the documented meaning). A split (a device that becomes shared
later, where the brief is silent) follows the documented choice: the part holding the identifier
the old id was minted from keeps it; a part without one keeps a previous id it holds, else takes
the id of its own anchor.

Raw events (JSON, with padding, mixed case, offsets, phone formats) become silver rows through
the ingest's own validator (`touchpoint.core.events.validate_payload`, pure Python, no stream), so
§2's normalisation is checked too; a few rows that the ingest cannot produce (all-zero phones) are
appended to silver directly.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from collections import defaultdict

import phonenumbers
import pytest
from pyspark.sql import functions as F

from test_identity_support import (append_silver, expected_customer_id, read_table, restore_delta_state,
                                   small_delta_state, table_rows)

UTC = dt.timezone.utc
TYPES = ("anonymous_id", "user_id", "email", "phone")
# BRIEF §5, default list; the all-zero rule separately.
BLOCKLIST = ("null", "undefined", "none", "nil", "nan", "n/a", "unknown", "test@example.com")
N_SHARED = 3
ARRIVAL = dt.datetime(2026, 3, 10, tzinfo=UTC)


@pytest.fixture(autouse=True, scope="module")
def _small_delta_state(spark):
    previous = small_delta_state(spark)
    yield
    restore_delta_state(spark, previous)


# ------------------------------------------------------------------------------------------------
# The oracle
# ------------------------------------------------------------------------------------------------

def parse_instant(text: str) -> dt.datetime:
    """RFC 3339 with offset -> aware UTC instant (microseconds)."""
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def as_of(day: dt.date) -> dt.datetime:
    """BRIEF §4: as_of = D+1 00:00:00Z."""
    return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), tzinfo=UTC)


def normalise(kind: str, raw, country):
    """BRIEF §2: ids trimmed (case kept), emails trimmed + lowercased, phones parsed with the
    event's country, kept when possible, as E.164; an empty value is absent."""
    if raw is None:
        return None
    if kind in ("anonymous_id", "user_id"):
        value = raw.strip()
    elif kind == "email":
        value = raw.strip().lower()
    else:
        try:
            number = phonenumbers.parse(raw, country)
        except phonenumbers.NumberParseException:
            return None
        if not phonenumbers.is_possible_number(number):
            return None
        value = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return value or None


def blocked(value: str) -> bool:
    """BRIEF §5 blocklist: compared after normalisation, case-insensitively, any type; all-zero ids
    are made only of `0 - + _` and spaces with at least one `0`."""
    if value.strip().lower() in BLOCKLIST:
        return True
    return "0" in value and all(ch in "0-+_ " for ch in value)


def oracle_event(raw: dict, stored: bool = False) -> dict:
    """An event as the oracle sees it: its instant, its normalised identifiers (usable or not).
    `stored`: the identifiers are silver's, already normalised (rows written to silver directly)."""
    country = (raw.get("context") or {}).get("country")
    ids = {kind: raw.get(kind) or None if stored else normalise(kind, raw.get(kind), country) for kind in TYPES}
    return {"event_id": raw["event_id"].strip(), "ts": parse_instant(raw["event_ts"]), "ids": ids}


def usable_ids(event: dict) -> list[tuple[str, str]]:
    return [(kind, value) for kind, value in event["ids"].items() if value is not None and not blocked(value)]


def customer_id_of(identifier: tuple[str, str]) -> str:
    return expected_customer_id(*identifier)


class Resolution:
    """Components over every event before the as-of (BRIEF §5), no ids yet."""

    def __init__(self, events: list[dict], cutoff: dt.datetime):
        self.events = sorted((e for e in events if e["ts"] < cutoff), key=lambda e: (e["ts"], e["event_id"]))
        users = defaultdict(set)
        for event in self.events:
            ids = dict(usable_ids(event))
            if "anonymous_id" in ids and "user_id" in ids:
                users[ids["anonymous_id"]].add(ids["user_id"])
        self.shared = {device for device, seen in users.items() if len(seen) > N_SHARED}
        self.seen: dict[tuple, list] = {}
        parent: dict[tuple, tuple] = {}

        def find(x):
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for event in self.events:
            ids = usable_ids(event)
            for node in ids:
                parent.setdefault(node, node)
                span = self.seen.setdefault(node, [event["ts"], event["ts"]])
                span[0], span[1] = min(span[0], event["ts"]), max(span[1], event["ts"])
            for a in self.linking(ids)[1:]:
                parent[find(a)] = find(self.linking(ids)[0])
        groups = defaultdict(set)
        for node in parent:
            groups[find(node)].add(node)
        self.components = [frozenset(members) for members in groups.values()]
        self.component_of = {node: comp for comp in self.components for node in comp}

    def guardrails(self) -> list[tuple]:
        """What is reported (documented columns): each absent value as stored, with its reason and
        sightings; each shared device with its number of distinct user_ids and sightings."""
        spans, users = {}, defaultdict(set)
        for event in self.events:
            ids = dict(usable_ids(event))
            if ids.get("anonymous_id") in self.shared and "user_id" in ids:
                users[ids["anonymous_id"]].add(ids["user_id"])
            for kind, value in event["ids"].items():
                if value is not None and blocked(value):
                    reason = "blocklist" if value.strip().lower() in BLOCKLIST else "all_zero"
                    span = spans.setdefault((kind, value, reason, None), [event["ts"], event["ts"]])
                    span[0], span[1] = min(span[0], event["ts"]), max(span[1], event["ts"])
        rows = [(*key, *span) for key, span in spans.items()]
        rows += [("anonymous_id", d, "shared_device", len(users[d]), *self.seen[("anonymous_id", d)])
                 for d in self.shared]
        return sorted(rows, key=lambda r: tuple((v is None, v) for v in r))

    def linking(self, ids):
        """A shared device links nothing."""
        return [node for node in ids if not (node[0] == "anonymous_id" and node[1] in self.shared)]

    def key(self, node):
        return (self.seen[node][0], node[0], node[1])

    def anchor(self, component):
        return min(component, key=self.key)


class Oracle:
    """Day-by-day ids with the brief's survival rule, the identity map and the merges log."""

    def __init__(self, events: list[dict]):
        self.events = events
        self.ids: dict[frozenset, str] = {}  # previous run: component -> id
        self.anchor_of: dict[str, tuple] = {}  # previous run: id -> its anchor identifier
        self.prev_map: dict[tuple, str] = {}
        self.prev_seen: dict[tuple, dt.datetime] = {}  # previous run: identifier -> first_seen
        self.prev_as_of = None
        self.merges: list[tuple] = []
        self.resolution = None

    def run(self, day: dt.date):
        cutoff = as_of(day)
        res = Resolution(self.events, cutoff)
        members_of_prev = defaultdict(set)
        for node, cid in self.prev_map.items():
            members_of_prev[cid].add(node)
        ids: dict[frozenset, str] = {}
        for comp in sorted(res.components, key=lambda c: res.key(res.anchor(c))):
            candidates = []
            # previous customers whose anchor (the identifier their id was minted from) is in this
            # component: it grew or merged, and the older survives: DOC the customer first seen first
            # in the previous run's map, ties by that identifier. A part of a split customer without
            # its anchor has no claim: the component keeps a previous id if it holds one.
            for cid, anchor in self.anchor_of.items():
                if anchor in comp:
                    since = min(self.prev_seen[node] for node in members_of_prev[cid])
                    candidates.append(((since, anchor[0], anchor[1]), cid, anchor))
            if candidates:
                _, cid, anchor = min(candidates)
            else:
                anchor = res.anchor(comp)
                cid = customer_id_of(anchor)
            ids[comp] = cid
        assert len(set(ids.values())) == len(ids), "oracle: two components with one id"
        new_map = {node: ids[comp] for comp in res.components for node in comp}
        new_anchor = {}
        for comp, cid in ids.items():
            # the identifier the id stands for: its anchor if it is still in the component
            old = self.anchor_of.get(cid)
            new_anchor[cid] = old if old in comp else res.anchor(comp)

        # merges: every previous id that disappears (BRIEF §5: logged in gold.identity_merges)
        if self.prev_as_of is not None:
            run_events = [e for e in res.events if e["ts"] >= self.prev_as_of]
            for old_id, members in members_of_prev.items():
                if old_id in set(ids.values()):
                    continue
                new_id = new_map[self.anchor_of[old_id]]
                new_comp = res.component_of[self.anchor_of[old_id]]
                holders = {self.prev_map[n] for n in new_comp if n in self.prev_map}
                kind = "merge" if len(holders) > 1 else "rekey"
                links = []
                for event in run_events:
                    linking = res.linking(usable_ids(event))
                    if any(n in members for n in linking) and any(n not in members for n in linking):
                        links.append((event["ts"], event["event_id"]))
                at, event_id = min(links)
                self.merges.append((old_id, new_id, at, event_id, kind, cutoff))

        self.ids, self.anchor_of, self.prev_map, self.prev_as_of = ids, new_anchor, new_map, cutoff
        self.prev_seen = {node: res.seen[node][0] for node in new_map}
        self.resolution = res
        return sorted((node[0], node[1], new_map[node], res.seen[node][0], res.seen[node][1]) for node in new_map)

    def customer_of_event(self, event: dict):
        """BRIEF §5: an event with a shared device plus other identifiers belongs to the customer of
        the others; one with only the device, to the device's customer; nothing usable, no one."""
        ids = usable_ids(event)
        if not ids:
            return None
        others = self.resolution.linking(ids) or ids
        found = {self.prev_map[node] for node in others}
        assert len(found) == 1
        return found.pop()


# ------------------------------------------------------------------------------------------------
# Adversarial data
# ------------------------------------------------------------------------------------------------

def t(day: int, hour: int = 0, minute: int = 0, second: int = 0, micro: int = 0) -> dt.datetime:
    return dt.datetime(2026, 3, day, hour, minute, second, micro, tzinfo=UTC)


def rfc3339(instant: dt.datetime, offset_minutes: int = 0) -> str:
    local = instant.astimezone(dt.timezone(dt.timedelta(minutes=offset_minutes)))
    text = local.isoformat()
    return text.replace("+00:00", "Z") if offset_minutes == 0 else text


def ev(event_id: str, instant, offset: int = 0, country=None, **identifiers) -> dict:
    raw = {"event_id": event_id, "event_type": "page_view",
           "event_ts": instant if isinstance(instant, str) else rfc3339(instant, offset)}
    raw.update({k: v for k, v in identifiers.items()})
    if country:
        raw["context"] = {"country": country}
    return raw


SCRIPTED = [
    # chains that merge across days: A (older, day 1 08:00) and B (day 1 09:00) merge on day 3
    ev("a1", t(1, 8), anonymous_id="chainA-1", user_id="cA"),
    ev("b1", t(1, 9), 60, anonymous_id=" chainB-1 ", email=" ChainB@X.io "),
    ev("a2", t(1, 10), -330, user_id="cA", email="CA@x.io"),
    ev("b2", t(2, 7, 30), email="chainb@x.io ", phone="020 7946 0000", country="GB"),
    ev("ab", t(3, 12), anonymous_id="chainB-1", user_id="cA"),
    # three components merge on day 4 in one event: C (day 2), D (day 2), new identifiers
    ev("c1", t(2, 9), anonymous_id="C-a", user_id="C-u"),
    ev("d1", t(2, 8, 59, 59, 999999), anonymous_id="D-a", email="d@x.io"),
    ev("cde", t(4, 1), anonymous_id="C-a", email="D@X.IO", phone="+1 (415) 555-0177"),
    ev("cde2", t(4, 2), phone="4155550177", country="US", user_id="E-u"),
    # same first_seen: the anchor is decided by (type, value); merge on day 2
    ev("tie1", t(1, 15), anonymous_id="tie", user_id="tie-x"),
    ev("tie2", t(1, 15), user_id="tie-u"),
    ev("tie3", t(2, 15), user_id="tie-u", email="tie@x.io"),
    ev("tie4", t(2, 16), email="tie@x.io", user_id="tie-x"),
    # the as-of: exactly D+1 00:00:00Z is outside D's run, whatever the offset it is written with
    ev("edge1", "2026-03-02T00:00:00Z", anonymous_id="edge-a", user_id="cA"),
    ev("edge2", "2026-03-02T01:00:00+01:00", anonymous_id="edge-b", email="ca@x.io"),
    ev("edge3", "2026-03-01T19:00:00-05:00", anonymous_id="edge-c", user_id="tie-u"),
    ev("edge4", "2026-03-01T23:59:59.999999Z", anonymous_id="edge-d", user_id="C-u"),
    ev("edge5", "2026-03-02T00:59:59.999999+01:00", anonymous_id="edge-e"),
    ev("edge6", "2026-03-04T00:00:00Z", anonymous_id="edge-f", email="d@x.io"),
    # blocklisted values in every type, any case and padding; all-zero ids; `--` is not all-zero
    ev("bl1", t(1, 11), user_id=" NULL ", anonymous_id="bl-a1"),
    ev("bl2", t(1, 11, 1), email="Test@Example.com ", anonymous_id="bl-a2"),
    ev("bl3", t(1, 11, 2), anonymous_id=" n/a ", user_id="bl-u3"),
    ev("bl4", t(1, 11, 3), user_id="000-000", anonymous_id="bl-a4"),
    ev("bl5", t(1, 11, 4), anonymous_id="0", email="bl5@x.io"),
    ev("bl6", t(1, 11, 5), user_id="+0 0", anonymous_id="bl-a6"),
    ev("bl7", t(1, 11, 6), anonymous_id="--", user_id="dash-u"),  # links
    ev("bl8", t(1, 11, 7), user_id="_0_", email=" UNKNOWN "),  # nothing usable
    ev("bl9", t(1, 11, 8), anonymous_id="NaN", user_id="bl-u9"),
    ev("bl10", t(1, 11, 9), user_id="None", email="nil"),
    ev("bl11", t(1, 11, 10), anonymous_id="Undefined", phone="+1 415 555 0101"),
    ev("bl12", t(1, 11, 11), user_id="__--", anonymous_id="bl-a12"),  # no 0: usable, links
    ev("bl13", t(1, 11, 12), anonymous_id="  0  ", user_id="bl-u13"),
    ev("bl14", t(2, 11, 13), anonymous_id="bl-a1", user_id="Null"),
    ev("bl15", t(2, 11, 14), anonymous_id="--", email="test@EXAMPLE.com"),
    ev("bl16", t(3, 11, 15), user_id="dash-u", phone="null", country="US"),
    # an anonymous_id with exactly 3 distinct user_ids still links (ids case-sensitive, trimmed;
    # a blocklisted user_id does not count)
    ev("k1", t(1, 13), anonymous_id="dev3", user_id="k-u1"),
    ev("k2", t(1, 13, 1), anonymous_id="dev3", user_id="K-U1"),
    ev("k3", t(2, 13, 2), anonymous_id="dev3", user_id=" k-u1 "),
    ev("k4", t(3, 13, 3), anonymous_id="dev3", user_id="k-u2"),
    ev("k5", t(3, 13, 4), anonymous_id="dev3", user_id="NULL"),
    ev("k6", t(4, 13, 5), anonymous_id="dev3", user_id="0"),
    ev("k7", t(4, 13, 6), anonymous_id="dev3", email="k@x.io"),
    # a device with 3 users on days 1-2 that gets a 4th on day 3: shared, it stops linking (a split)
    ev("s0", t(1, 13, 59), user_id="s-u1"),
    ev("s1", t(1, 14), anonymous_id="dev4", user_id="s-u1"),
    ev("s2", t(1, 14, 1), anonymous_id="dev4", user_id="s-u2"),
    ev("s3", t(1, 14, 2), anonymous_id="dev4", user_id="s-u3", email="s3@x.io"),
    ev("s4", t(1, 14, 3), anonymous_id="dev4"),
    ev("s5", t(2, 14, 4), anonymous_id="dev4", email="s5@x.io"),
    ev("w1", t(2, 20), user_id="w-u", anonymous_id="w-a"),  # W, younger than dev4's component
    ev("s6", t(3, 14, 5), anonymous_id="dev4", user_id="s-u4"),  # the 4th user
    ev("s7", t(3, 14, 6), user_id="s-u3", anonymous_id="w-a"),  # a fragment of dev4's part joins W
    ev("s8", t(3, 14, 7), anonymous_id="dev4", email="s8@x.io"),  # belongs to s8@x.io's customer
    ev("s9", t(4, 14, 8), anonymous_id="dev4"),  # only the device: the device's own customer
    ev("s10", t(4, 14, 9), anonymous_id="dev4", user_id="NULL", email="Test@Example.com"),  # same: others absent
    # a device that is the anchor of its component becomes shared on day 2 (documented: it keeps the id)
    ev("v0", t(1, 19), anonymous_id="dev5"),
    *[ev(f"v{i}", t(1, 19, i), anonymous_id="dev5", user_id=f"v-u{i}") for i in (1, 2, 3)],
    ev("v5", t(1, 19, 5), user_id="v-u1", email="v1@x.io"),
    ev("v4", t(2, 19), anonymous_id="dev5", user_id="v-u4"),
    # a device shared from day 1
    *[ev(f"x{i}", t(1, 16, i), anonymous_id="devX", user_id=f"x-u{i}") for i in range(5)],
    ev("x9", t(2, 16, 9), anonymous_id="devX", phone="+44 20 7946 0999"),
    # separate namespaces; emails differing by case and spaces; phones in several formats
    ev("n1", t(1, 17), anonymous_id="same-v", email=" Mixed.Case@Example.ORG "),
    ev("n2", t(2, 17), user_id="same-v", email="mixed.case@example.org"),
    ev("n3", t(2, 17, 1), phone="(212) 555-0188", country="US", user_id="ph-u"),
    ev("n4", t(3, 17, 2), phone="+1 212-555-0188", anonymous_id="ph-a"),
    ev("n5", t(3, 17, 3), phone="(212) 555-0199", anonymous_id="ph-b"),  # no country: dropped
    ev("n6", t(3, 17, 4), phone="12", country="US", anonymous_id="ph-c"),  # not possible: dropped
]

# Rows the ingest never produces (its phones are E.164 of a possible number) but silver can hold:
# all-zero phones, written to silver directly with already-normalised identifiers.
DIRECT = [
    ev("z1", t(1, 18), phone="+000000", anonymous_id="z-a1"),
    ev("z2", t(2, 18), phone="+0", user_id="z-u2"),
    ev("z3", t(2, 18, 1), phone="+000000", anonymous_id="z-a1", user_id="z-u2"),
]


def random_events(seed: int, count: int) -> list[dict]:
    rng = random.Random(seed)
    people = 25

    def value(kind, person):
        k = rng.randrange(2)
        if kind == "anonymous_id":
            return rng.choice([f"r{person}-a{k}", f" r{person}-a{k}  "])
        if kind == "user_id":
            return rng.choice([f"R{person}", f"R{person} "])
        if kind == "email":
            base = f"p{person}.{k}@mail.io"
            return rng.choice([base, base.upper(), " " + base.title() + " "])
        number = f"41555502{person:02d}"
        return rng.choice([(f"({number[:3]}) {number[3:6]}-{number[6:]}", "US"), (f"+1 {number}", None),
                           (number, "US"), (f"+1-{number[:3]}-{number[3:]}", "GB")])

    noise = {"anonymous_id": ["NULL", " undefined ", "0000", "-0-", "--"],
             "user_id": [" n/a", "Unknown", "0", "+_-", "nil "],
             "email": ["TEST@example.COM", "null", " none "], "phone": [("0", "US"), ("000-000", "US")]}
    events = []
    for i in range(count):
        day = rng.choice((1, 2, 3, 4))
        if rng.random() < 0.08:
            instant = t(day + 1) if day < 4 else t(4)  # exactly at a midnight
        else:
            instant = t(day, rng.randrange(24), rng.randrange(60), rng.randrange(60), rng.randrange(1_000_000))
        persons = [rng.randrange(people)] * 3
        if rng.random() < 0.12:
            persons[rng.randrange(3)] = rng.randrange(people)  # a bridge between two people
        kinds = rng.sample(TYPES, rng.choice((1, 2, 2, 3)))
        if rng.random() < 0.12:  # a device event: one of two devices with a user (they become shared)
            kinds = ["anonymous_id", "user_id"] + rng.sample(("email", "phone", "none"), 1)
            kinds = [k for k in kinds if k != "none"]
        identifiers, country = {}, None
        for slot, kind in enumerate(kinds):
            if rng.random() < 0.08:
                picked = rng.choice(noise[kind])
            elif kind == "anonymous_id" and rng.random() < 0.15:
                picked = rng.choice(("rdev-1", "rdev-2"))  # devices that many people use
            else:
                picked = value(kind, persons[slot])
            if kind == "phone":
                picked, country = picked
            identifiers[kind] = picked
        events.append(ev(f"r{i:04d}", instant, rng.choice((0, 0, 60, -300, 330)), country, **identifiers))
    return events


def silver_rows(raw_events: list[dict]) -> list[dict]:
    """Raw events -> silver rows through the ingest's own validator (no stream, no Kafka)."""
    from touchpoint.core.events import validate_payload
    from touchpoint.schemas.lake import SILVER_SCHEMA

    names = set(SILVER_SCHEMA.fieldNames())
    rows = []
    for raw in raw_events:
        row = validate_payload(json.dumps(raw).encode(), ARRIVAL)
        assert isinstance(row, dict), (raw, row)
        rows.append({k: v for k, v in row.items() if k in names and k != "event_date" and v is not None})
    return rows


def direct_rows(raw_events: list[dict]) -> list[dict]:
    return [{"event_id": r["event_id"], "event_ts": parse_instant(r["event_ts"]),
             **{k: r[k] for k in TYPES if k in r}} for r in raw_events]


def _map(settings):
    return table_rows(settings, "gold.identity_map",
                      "identifier_type", "identifier_value", "customer_id", "first_seen", "last_seen")


def _merges(settings):
    import os

    from touchpoint.core.catalog import table_path

    if not os.path.exists(table_path("gold.identity_merges", settings)):
        return []  # not written yet (the first run merges nothing)
    return table_rows(settings, "gold.identity_merges",
                      "old_customer_id", "new_customer_id", "merged_at", "linking_event_id", "kind", "as_of")


def _arrivals(raw_events, rows, days, seed):
    """Per run, the rows that have arrived: everything before its as-of, plus some future rows
    early (they must wait for their own date). No late data: nothing arrives after its run."""
    rng = random.Random(seed)
    early = {raw["event_id"] for raw in raw_events if rng.random() < 0.3}
    batches, sent = [], set()
    for day in days:
        batch = [row for raw, row in zip(raw_events, rows) if raw["event_id"] not in sent
                 and (parse_instant(raw["event_ts"]) < as_of(day) or raw["event_id"] in early)]
        sent |= {row["event_id"] for row in batch}
        batches.append(batch)
    return batches


# ------------------------------------------------------------------------------------------------
# The tests
# ------------------------------------------------------------------------------------------------

DAYS = [dt.date(2026, 3, d) for d in (1, 2, 3, 4)]


def test_oracle_on_scripted_cases_alone():
    """Pure Python: the oracle's own reading of the scripted cases, checked by hand."""
    oracle = Oracle([oracle_event(r) for r in SCRIPTED] + [oracle_event(r, stored=True) for r in DIRECT])
    A, U, E, P = (lambda v: ("anonymous_id", v)), (lambda v: ("user_id", v)), (lambda v: ("email", v)), \
        (lambda v: ("phone", v))
    day1 = {(r[0], r[1]): r[2:] for r in oracle.run(DAYS[0])}
    assert A("edge-a") not in day1 and A("edge-b") not in day1 and A("edge-c") not in day1
    assert A("edge-d") in day1 and A("edge-e") in day1  # 23:59:59.999999Z is in
    for absent in (U("NULL"), E("test@example.com"), A("n/a"), U("000-000"), A("0"), U("+0 0"), U("_0_"),
                   E("unknown"), A("NaN"), U("None"), E("nil"), A("Undefined"), P("+000000")):
        assert absent not in day1
    assert day1[A("--")][0] == day1[U("dash-u")][0] and day1[A("bl-a12")][0] == day1[U("__--")][0]
    assert day1[A("dev3")][0] == day1[U("k-u1")][0] == day1[U("K-U1")][0]
    assert day1[U("tie-u")][0] == customer_id_of(U("tie-u")) and day1[A("tie")][0] == customer_id_of(A("tie"))
    assert day1[E("mixed.case@example.org")][0] == day1[A("same-v")][0]
    assert len({day1[U(f"x-u{i}")][0] for i in range(5)} | {day1[A("devX")][0]}) == 6
    oracle.run(DAYS[1])
    day2 = dict(((r[0], r[1]), r[2]) for r in oracle.run(DAYS[1]))  # a rerun changes nothing
    assert day2[U("tie-u")] == customer_id_of(A("tie"))  # same first_seen: anonymous_id < user_id
    assert day2[A("dev4")] == day2[U("s-u3")] == day2[E("s5@x.io")] == customer_id_of(U("s-u1"))
    assert day2[U("w-u")] == customer_id_of(A("w-a"))
    day3 = dict(((r[0], r[1]), r[2]) for r in oracle.run(DAYS[2]))
    assert day3[U("cA")] == day3[A("chainB-1")] == customer_id_of(A("chainA-1"))  # the older id survives
    assert day3[U("s-u1")] == customer_id_of(U("s-u1"))  # the part with the old anchor keeps the id
    assert day3[A("dev4")] == customer_id_of(A("dev4")) != day3[E("s8@x.io")]
    # the fragment {s-u3, s3@x.io} of the split customer holds no previous id's anchor: W only grew
    assert day3[A("w-a")] == day3[U("s-u3")] == customer_id_of(A("w-a"))
    assert not [m for m in oracle.merges if m[0] == customer_id_of(A("w-a"))]
    assert day3[P("+12125550188")] == day3[U("ph-u")] == day3[A("ph-a")]
    assert day3[U("k-u2")] == day3[A("dev3")]


def test_identity_job_matches_oracle_over_four_days(spark, settings):
    from touchpoint.core.identity_lookup import attach_customer_id
    from touchpoint.jobs import identity

    raw = SCRIPTED + random_events(seed=2, count=160)
    rows = silver_rows(raw)
    oracle_events = [oracle_event(r) for r in raw]
    # §2 first: the silver identifiers are the oracle's normalised values, the instants the same.
    for row, event in zip(rows, oracle_events):
        assert row["event_ts"] == event["ts"], row["event_id"]
        assert {k: row.get(k) for k in TYPES} == event["ids"], row["event_id"]

    direct = direct_rows(DIRECT)
    oracle = Oracle(oracle_events + [oracle_event(r, stored=True) for r in DIRECT])
    batches = _arrivals(raw, rows, DAYS, seed=7)
    mismatches = []
    for index, (day, batch) in enumerate(zip(DAYS, batches)):
        append_silver(spark, settings, batch + (direct if index == 0 else []))
        summary = identity.run(spark, settings, day)
        expected_map = oracle.run(day)
        got_map = _map(settings)
        if got_map != expected_map:
            missing = sorted(set(expected_map) - set(got_map))
            extra = sorted(set(got_map) - set(expected_map))
            mismatches.append((str(day), "map", missing[:10], extra[:10]))
        got_merges = _merges(settings)
        if got_merges != sorted(oracle.merges):
            mismatches.append((str(day), "merges", sorted(set(oracle.merges) - set(got_merges)),
                               sorted(set(got_merges) - set(oracle.merges))))
        res = oracle.resolution
        got_guardrails = table_rows(settings, "gold.identity_guardrails", "identifier_type",
                                    "identifier_value", "reason", "distinct_user_ids", "first_seen", "last_seen")
        if got_guardrails != res.guardrails():
            mismatches.append((str(day), "guardrails", sorted(set(res.guardrails()) - set(got_guardrails)),
                               sorted(set(got_guardrails) - set(res.guardrails()))))
        assert summary["shared_devices"] == len(res.shared), (day, summary)
        assert summary["customers"] == len(res.components), (day, summary)

    # Events resolved against the last map: BRIEF §5 (device + others -> the others' customer).
    final = read_table(spark, settings, "gold.identity_map")
    events = read_table(spark, settings, "silver.events").where(F.col("event_ts") < F.lit(as_of(DAYS[-1])))
    got = dict(events.transform(attach_customer_id(final, broadcast=True)).select("event_id", "customer_id")
               .collect())
    expected = {e["event_id"]: oracle.customer_of_event(e) for e in oracle.resolution.events}
    assert got == expected
    assert not mismatches, mismatches
    assert len(oracle.merges) >= 4 and len(res.shared) >= 2


def test_late_arrival_that_only_grows_a_component_keeps_its_id(spark, settings):
    """BRIEF §5: "it keeps its id when it only grows". Rows for day 1 arrive after day 1's run:
    G gains an identifier (first seen before G's anchor); H gains nothing, only an earlier sighting
    of a non-anchor identifier. Neither component changes otherwise, so both keep their ids."""
    from touchpoint.jobs import identity

    day1 = [ev("g1", t(1, 10), anonymous_id="g-a", user_id="g-u"),
            ev("h1", t(1, 10), anonymous_id="h-a", user_id="h-u")]
    late = [ev("g0", t(1, 9), user_id="g-u", email="g@x.io"), ev("g2", t(2, 10), anonymous_id="g-a"),
            ev("h0", t(1, 9), user_id="h-u")]
    append_silver(spark, settings, silver_rows(day1))
    identity.run(spark, settings, DAYS[0])
    assert {r[2] for r in _map(settings)} == {customer_id_of(("anonymous_id", "g-a")),
                                              customer_id_of(("anonymous_id", "h-a"))}
    append_silver(spark, settings, silver_rows(late))
    identity.run(spark, settings, DAYS[1])
    got = _map(settings)
    oracle = Oracle([oracle_event(r) for r in day1])
    oracle.run(DAYS[0])
    oracle.events = [oracle_event(r) for r in day1 + late]
    expected = oracle.run(DAYS[1])
    got_merges = _merges(settings)
    assert (got, got_merges) == (expected, []), "\n".join(
        ["project map:", *map(str, got), "oracle map:", *map(str, expected), "project merges:", *map(str, got_merges)])
