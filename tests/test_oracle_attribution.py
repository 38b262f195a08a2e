"""Differential test of BRIEF §4 (touchpoints, conversions, attribution): an independent pure-Python
oracle, written from the brief's text (and docs/ATTRIBUTION.md where the brief is silent), against a
whole `touchpoint.jobs.attribution.run` on a lake, over seeded random adversarial data.

The oracle does not look at the project's implementation. It works on plain dicts, integer
microseconds and `fractions.Fraction` (the Markov chain is solved exactly in rationals), and it is
compared with gold.attribution_credits, gold.attribution_daily, gold.attribution_paths and
gold.markov_removal_effects (floats to 1e-9 relative).

Choices taken from docs/ATTRIBUTION.md where the brief is silent or ambiguous (followed by the oracle):
- campaign names are compared trimmed (and case-sensitively) in the landing rule; an empty or
  blank name is "no name", and two missing names count as the same name;
- a null channel is `direct`; every ad_click / email_click is a touchpoint whatever its channel;
- a conversion is one per *trimmed* order id (smallest (event_ts, event_id)); conversion_id is the
  trimmed order id;
- an event none of whose identifiers is in the identity map has no customer;
- Markov: a path channel without a removal effect counts as RE 0; when Σ RE over the path's channels
  is 0, the conversion falls back to the equal split over its distinct channels; with P = 0 every
  RE is 0; a customer's "last conversion" (null paths) is the last of all their conversions before
  the as-of, inside the training window or not.

Found by this test and mended (2026-12-06, `MarkovChain.carrying_channels`): a channel whose removal
effect is exactly 0 (seen only in null paths) got ~1e-16 from the float solve, which (a) wrote Markov
rows with credit ~1e-16 where BRIEF §4 writes none, and (b) gave a conversion whose path holds only
RE-0 channels all the credit to the noisy channel instead of the documented equal split
(`test_markov_channel_with_zero_removal_effect`).
"""

from __future__ import annotations

import datetime as dt
import math
import random
from collections import defaultdict
from fractions import Fraction

import pytest

UTC = dt.timezone.utc
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
US = 1
SECOND = 1_000_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 86_400 * SECOND

LOGICAL_DATE = dt.date(2026, 6, 10)
AS_OF = dt.datetime(2026, 6, 11, tzinfo=UTC)  # D + 1 00:00:00Z
LOOKBACK_DAYS = 30
HALF_LIFE_DAYS = 7
TRAINING_DAYS = 90
LANDING_MINUTES = 30
MODELS = ("first_touch", "last_touch", "linear", "position_based", "time_decay", "markov", "shapley")
CLICKS = ("ad_click", "email_click")


def to_us(instant: dt.datetime) -> int:
    return (instant - EPOCH) // dt.timedelta(microseconds=1)


def from_us(us: int) -> dt.datetime:
    return EPOCH + dt.timedelta(microseconds=us)


AS_OF_US = to_us(AS_OF)


# =====================================================================================================
# The oracle (BRIEF §4, read to the letter)
# =====================================================================================================

def _name(value):
    """Campaign name as written, trimmed; null when it has none."""
    if value is None:
        return None
    value = value.strip()
    return value or None


def _channel(value):
    return "direct" if value is None else value


def resolve_customer(event, identity):
    """The customer of an event: the customer of any of its identifiers that is in the map."""
    found = {identity[(kind, event.get(kind))] for kind in ("anonymous_id", "user_id")
             if event.get(kind) is not None and (kind, event.get(kind)) in identity}
    assert len(found) <= 1, f"test data error: {event['event_id']} resolves to {found}"
    return next(iter(found), None)


def oracle(events, identity, as_of_us=AS_OF_US, lookback_days=LOOKBACK_DAYS, half_life_days=HALF_LIFE_DAYS,
           training_days=TRAINING_DAYS, landing_minutes=LANDING_MINUTES):
    lookback = lookback_days * DAY
    landing = landing_minutes * MINUTE
    # As-of: the run covers the events with event_ts < as_of.
    seen = [dict(e, customer=resolve_customer(e, identity)) for e in events if e["ts"] < as_of_us]

    # ---- touchpoints ----
    clicks_by_customer = defaultdict(list)
    for e in seen:
        if e["event_type"] in CLICKS and e["customer"] is not None:
            clicks_by_customer[e["customer"]].append(e)

    def is_landing(view):
        if landing == 0:
            return False
        for click in clicks_by_customer.get(view["customer"], ()):
            if (_channel(click["channel"]) == _channel(view["channel"])
                    and _name(click["campaign_name"]) == _name(view["campaign_name"])
                    and view["ts"] - landing <= click["ts"] <= view["ts"]):
                return True
        return False

    touches = []
    for e in seen:
        if e["customer"] is None:
            continue
        kind = e["event_type"]
        if kind in CLICKS or (kind == "page_view" and _channel(e["channel"]) != "direct" and not is_landing(e)):
            touches.append({"touch_event_id": e["event_id"], "customer_id": e["customer"], "touch_ts": e["ts"],
                            "channel": _channel(e["channel"]), "campaign": _name(e["campaign_name"])})
    touches_by_customer = defaultdict(list)
    for t in touches:
        touches_by_customer[t["customer_id"]].append(t)
    for lst in touches_by_customer.values():
        lst.sort(key=lambda t: (t["touch_ts"], t["touch_event_id"]))  # Python str order = code points

    # ---- conversions: one per order id, the order with the smallest (event_ts, event_id) ----
    orders = defaultdict(list)
    for e in seen:
        if e["event_type"] == "order" and e["order_id"] is not None and e["order_id"].strip():
            orders[e["order_id"].strip()].append(e)
    convs = []
    for order_id, group in orders.items():
        win = min(group, key=lambda e: (e["ts"], e["event_id"]))
        conv_ts = win["ts"]
        customer = win["customer"]
        path = [] if customer is None else [
            t for t in touches_by_customer.get(customer, ()) if conv_ts - lookback <= t["touch_ts"] <= conv_ts]
        convs.append({"conversion_id": order_id, "customer_id": customer, "conversion_ts": conv_ts,
                      "revenue": win["revenue"], "path": path})

    # ---- Markov training set ----
    train_from = as_of_us - training_days * DAY
    paths_table = defaultdict(lambda: [0, Fraction(0), 0])  # path -> conversions, value, nulls
    training = []  # (channel list, conversions, nulls)
    for c in convs:
        if train_from <= c["conversion_ts"] < as_of_us and c["path"]:
            channels = [t["channel"] for t in c["path"]]
            row = paths_table[" > ".join(channels)]
            row[0] += 1
            row[1] += Fraction(c["revenue"])
            training.append((channels, 1, 0))
    last_conversion = {}
    for c in convs:
        if c["customer_id"] is not None:
            last_conversion[c["customer_id"]] = max(last_conversion.get(c["customer_id"], -math.inf),
                                                    c["conversion_ts"])
    for customer, lst in touches_by_customer.items():
        after = last_conversion.get(customer, -math.inf)
        null_path = [t for t in lst if as_of_us - lookback <= t["touch_ts"] < as_of_us and t["touch_ts"] > after]
        if null_path:
            channels = [t["channel"] for t in null_path]
            paths_table[" > ".join(channels)][2] += 1
            training.append((channels, 0, 1))

    effects = removal_effects(training)

    # ---- credits ----
    credit_rows = []
    for c in convs:
        base = {"conversion_id": c["conversion_id"], "customer_id": c["customer_id"],
                "conversion_ts": c["conversion_ts"]}
        path = c["path"]
        for model in MODELS:
            if not path:
                credit_rows.append(dict(base, model=model, touch_event_id=None, touch_ts=None, channel="direct",
                                        campaign=None, credit=1.0, revenue_credit=float(c["revenue"])))
                continue
            for t, credit in zip(path, model_credits(model, path, c["conversion_ts"], effects, half_life_days)):
                if credit == 0:
                    continue
                credit = float(credit)
                credit_rows.append(dict(base, model=model, touch_event_id=t["touch_event_id"],
                                        touch_ts=t["touch_ts"], channel=t["channel"], campaign=t["campaign"],
                                        credit=credit, revenue_credit=credit * c["revenue"]))

    # ---- daily: per UTC date of the conversion ----
    daily = defaultdict(lambda: [0.0, 0.0])
    for r in credit_rows:
        key = (from_us(r["conversion_ts"]).date(), r["model"], r["channel"], r["campaign"])
        daily[key][0] += r["credit"]
        daily[key][1] += r["revenue_credit"]

    return {
        "touchpoints": touches,
        "conversions": convs,
        "credits": credit_rows,
        "daily": {k: tuple(v) for k, v in daily.items()},
        "paths": {p: (v[0], float(v[1]), v[2]) for p, v in paths_table.items()},
        "removal_effects": {ch: float(re) for ch, re in effects.items()},
    }


def model_credits(model, path, conv_ts, effects, half_life_days):
    """Credits of the touchpoints of a non-empty path, in path order (exact where the rule is rational)."""
    n = len(path)
    if model == "first_touch":
        return [1] + [0] * (n - 1)
    if model == "last_touch":
        return [0] * (n - 1) + [1]
    if model == "linear":
        return [Fraction(1, n)] * n
    if model == "position_based":
        if n == 1:
            return [1]
        if n == 2:
            return [Fraction(1, 2)] * 2
        return [Fraction(2, 5)] + [Fraction(1, 5) / (n - 2)] * (n - 2) + [Fraction(2, 5)]
    if model == "time_decay":
        weights = [2.0 ** (-((conv_ts - t["touch_ts"]) / DAY) / half_life_days) for t in path]
        total = math.fsum(weights)
        return [w / total for w in weights]
    channels = [t["channel"] for t in path]
    per_channel_count = {ch: channels.count(ch) for ch in set(channels)}
    if model == "shapley":
        k = len(per_channel_count)
        return [Fraction(1, k) / per_channel_count[ch] for ch in channels]
    if model == "markov":
        total = sum((effects.get(ch, Fraction(0)) for ch in per_channel_count), Fraction(0))
        if total == 0:  # documented fallback: the equal split over the distinct channels
            k = len(per_channel_count)
            return [Fraction(1, k) / per_channel_count[ch] for ch in channels]
        return [effects.get(ch, Fraction(0)) / total / per_channel_count[ch] for ch in channels]
    raise ValueError(model)


def collapse(channels):
    out = []
    for ch in channels:
        if not out or out[-1] != ch:
            out.append(ch)
    return out


def conversion_probability(counts, removed=None):
    """P(start reaches (conversion)) of the absorbing chain given by transition counts, solved
    exactly (Gauss-Jordan over Fractions). `removed`: a channel whose incoming transitions go to null."""
    out_total = defaultdict(int)
    for (src, _dst), n in counts.items():
        out_total[src] += n
    states = sorted({s for s, _ in counts} - {"(start)", removed})
    if not out_total.get("(start)"):
        return Fraction(0)
    index = {s: i for i, s in enumerate(states)}
    size = len(states)
    # (I - Q) x = r
    matrix = [[Fraction(int(i == j)) for j in range(size)] + [Fraction(0)] for i in range(size)]
    for (src, dst), n in counts.items():
        if src not in index:
            continue
        p = Fraction(n, out_total[src])
        if dst == "(conversion)":
            matrix[index[src]][size] += p
        elif dst in index:
            matrix[index[src]][index[dst]] -= p
        # dst == (null) or the removed channel: absorbed without conversion
    for col in range(size):
        pivot = next(r for r in range(col, size) if matrix[r][col] != 0)
        matrix[col], matrix[pivot] = matrix[pivot], matrix[col]
        lead = matrix[col][col]
        matrix[col] = [v / lead for v in matrix[col]]
        for r in range(size):
            if r != col and matrix[r][col] != 0:
                f = matrix[r][col]
                matrix[r] = [a - f * b for a, b in zip(matrix[r], matrix[col])]
    x = {s: matrix[index[s]][size] for s in states}
    p = Fraction(0)
    for (src, dst), n in counts.items():
        if src == "(start)":
            prob = Fraction(n, out_total["(start)"])
            if dst == "(conversion)":
                p += prob
            elif dst in x:
                p += prob * x[dst]
    return p


def removal_effects(training):
    """Order-1 chain over collapsed paths -> {channel: RE} for every channel of the training paths."""
    counts = defaultdict(int)
    channels = set()
    for path, conversions, nulls in training:
        states = collapse(path)
        channels.update(states)
        prev = "(start)"
        for s in states:
            counts[(prev, s)] += conversions + nulls
            prev = s
        if conversions:
            counts[(prev, "(conversion)")] += conversions
        if nulls:
            counts[(prev, "(null)")] += nulls
    p = conversion_probability(counts)
    if p == 0:
        return {ch: Fraction(0) for ch in channels}
    return {ch: (p - conversion_probability(counts, removed=ch)) / p for ch in channels}


# =====================================================================================================
# Seeded adversarial silver events
# =====================================================================================================

CHANNELS = ["paid_search", "paid_social", "display", "email", "affiliate", "organic_search", "referral",
            "organic_social", "direct", None]
CAMPAIGNS = [None, "", "  ", "spring", " spring ", "spring  ", "Spring", "brand", " news", "news", "summer sale",
             "summer  sale"]
ID_HEADS = list("AZaz09_-") + ["é", "€", "😀", "\uffef"]


class Generator:
    def __init__(self, seed, events=None, identity=None):
        self.rng = random.Random(seed)
        self.ns = f"{seed}-"  # several seeds can share one lake: their customers and orders stay apart
        self.events = [] if events is None else events
        self.identity = {} if identity is None else identity
        self.counter = 0
        self.orders = 0

    # -- helpers --
    def eid(self, head=None):
        self.counter += 1
        return f"{head or self.rng.choice(ID_HEADS)}{self.rng.choice(ID_HEADS)}{self.ns}{self.counter:04d}"

    def add(self, kind, ts, device, channel=None, campaign=None, order_id=None, revenue=None, user=None, head=None):
        if user is not None and self.rng.random() < 0.3:  # identified by the user id alone, or by the user id
            device = self.rng.choice([None, f"ghost-{self.rng.randint(0, 9)}"])  # plus an unknown device
        self.events.append({"event_id": self.eid(head), "event_type": kind, "ts": ts, "channel": channel,
                            "campaign_name": campaign, "anonymous_id": device, "user_id": user,
                            "order_id": order_id, "revenue": revenue})
        return self.events[-1]

    def order_id(self):
        self.orders += 1
        return f"ord-{self.ns}{self.orders:03d}"

    def revenue(self):
        return self.rng.choice([0.0, 1.0, 9.99, 19.5, 100.0, round(self.rng.uniform(0, 500), 2)])

    def channel(self, pool=None):
        return self.rng.choice(pool or CHANNELS)

    def campaign(self):
        return self.rng.choice(CAMPAIGNS)

    def touch_kind(self):
        return self.rng.choice(["ad_click", "ad_click", "email_click", "page_view", "page_view", "page_view"])

    def noise_kind(self):
        return self.rng.choice(["ad_impression", "email_open", "email_send", "add_to_cart", "signup"])

    def instant(self, lo, hi, grid=HOUR):
        """A random instant in [lo, hi], on a coarse grid most of the time (ties)."""
        if self.rng.random() < 0.7:
            steps = (hi - lo) // grid
            return lo + grid * self.rng.randint(0, max(steps, 0))
        return self.rng.randint(lo, hi)

    # -- the data set --
    def new_customer(self, k):
        customer = f"{self.ns}cust-{k:02d}"
        devices = [f"{self.ns}dev-{k:02d}-{j}" for j in range(self.rng.choice([1, 1, 2, 3]))]
        for d in devices:
            self.identity[("anonymous_id", d)] = customer
        user = None
        if self.rng.random() < 0.4:
            user = f"{self.ns}user-{k:02d}"
            self.identity[("user_id", user)] = customer
        return customer, devices, user

    def build(self, n_customers=12):
        rng = self.rng
        for k in range(n_customers):
            self.customer(*self.new_customer(k))
        # nobody's events (identifiers not in the map): never touchpoints, their orders have no customer
        for _ in range(rng.randint(2, 4)):
            ghost = f"ghost-{rng.randint(0, 99)}"
            ts = self.instant(AS_OF_US - 60 * DAY, AS_OF_US - 1)
            self.add("ad_click", ts, ghost, self.channel(), self.campaign())
            self.add("page_view", ts + rng.choice([0, MINUTE]), ghost, self.channel(), self.campaign())
            self.add("order", ts + rng.choice([0, HOUR]), ghost, order_id=self.order_id(), revenue=self.revenue())
        # customers whose conversions have empty paths: no touchpoint at all, or only outside the window
        # (31 days before, 1 µs before the lookback, after the conversion), or only landings and direct views
        for k in range(n_customers, n_customers + 2):
            _, devices, _ = self.new_customer(k)
            conv_ts = self.instant(AS_OF_US - 80 * DAY, AS_OF_US - 1)
            for offset in rng.sample([31 * DAY, LOOKBACK_DAYS * DAY + 1, -1, -HOUR], rng.randint(0, 3)):
                self.add(self.touch_kind(), conv_ts - offset, devices[0], self.channel(["email", "display"]),
                         self.campaign())
            self.add("page_view", conv_ts - DAY, devices[0], "direct", "spring")
            self.add("ad_impression", conv_ts - DAY, devices[0], "display", "spring")
            self.add("order", conv_ts, devices[-1], order_id=self.order_id(), revenue=self.revenue())
        # a channel seen only in null paths (RE 0) and one seen only before the training window (no RE):
        # their touchpoints get no Markov row, and a path made only of them falls back to the equal split
        _, never_devices, _ = self.new_customer(n_customers + 2)
        for offset in rng.sample([DAY, 2 * DAY, 5 * DAY, LOOKBACK_DAYS * DAY], rng.randint(1, 3)):
            self.add("ad_click", AS_OF_US - offset, never_devices[0], "partner_null", "x")
        _, old_devices, _ = self.new_customer(n_customers + 3)
        for conv_age, channels in ((100 * DAY, ["legacy"]), (95 * DAY, ["legacy", "partner_null"]),
                                   (93 * DAY, ["partner_null", "legacy", "email"]), (92 * DAY, ["partner_null"])):
            conv_ts = AS_OF_US - conv_age
            for j, ch in enumerate(channels):
                self.add("ad_click", conv_ts - (j + 1) * HOUR // 2, old_devices[0], ch, None)
            self.add("order", conv_ts, old_devices[0], order_id=self.order_id(), revenue=self.revenue())
        return self.events, self.identity

    def customer(self, customer, devices, user):
        rng = self.rng
        dev = lambda: rng.choice(devices)  # noqa: E731  stitched devices share the customer's paths
        # a few conversions (paths not reset), some far in the past (outside the training window),
        # some exactly at the window's edges, some after the as-of
        conv_times = []
        for _ in range(rng.choice([0, 1, 1, 2, 2, 3])):
            conv_times.append(rng.choice([
                self.instant(AS_OF_US - 120 * DAY, AS_OF_US - 1, grid=6 * HOUR),
                self.instant(AS_OF_US - 30 * DAY, AS_OF_US - 1, grid=HOUR),
                AS_OF_US - TRAINING_DAYS * DAY, AS_OF_US - TRAINING_DAYS * DAY - 1, AS_OF_US - 1,
                AS_OF_US - 2 * DAY, AS_OF_US + rng.choice([0, HOUR]),
            ]))
        # touches: random, plus the adversarial ones around each conversion
        pool = rng.sample([c for c in CHANNELS], rng.randint(2, 5))  # repeated channels within a customer
        for _ in range(rng.randint(3, 14)):
            ts = self.instant(AS_OF_US - 130 * DAY, AS_OF_US + DAY, grid=rng.choice([HOUR, 6 * HOUR, DAY]))
            kind = self.touch_kind() if rng.random() < 0.8 else self.noise_kind()
            self.add(kind, ts, dev(), self.channel(pool), self.campaign(), user=user if rng.random() < 0.3 else None)
        for conv_ts in conv_times:
            for offset in rng.sample([-LOOKBACK_DAYS * DAY, -LOOKBACK_DAYS * DAY - 1, 0, 1, -1, -DAY, -7 * DAY,
                                      -14 * DAY, -HOUR], rng.randint(0, 4)):
                self.add(self.touch_kind(), conv_ts + offset, dev(), self.channel(pool), self.campaign())
            if rng.random() < 0.5:  # ties on event_ts with several event ids
                tie = conv_ts - rng.choice([DAY, 3 * DAY])
                for head in rng.sample([None, None, "😀", "\uffef"], rng.randint(2, 3)):
                    self.add(rng.choice(CLICKS), tie, dev(), self.channel(pool), self.campaign(), head=head)
        # click landings: a view exactly 30 min after, one 30 min + 1 µs after, at the same instant,
        # 1 µs before; same channel, same campaign up to surrounding spaces or not
        for _ in range(rng.randint(0, 3)):
            click_ts = rng.choice(conv_times or [AS_OF_US - 5 * DAY]) - rng.choice([0, HOUR, 2 * DAY, 20 * MINUTE])
            ch = self.channel(pool)
            name = rng.choice(["spring", " spring ", None, "", "brand", "Spring"])
            self.add(rng.choice(CLICKS), click_ts, dev(), ch, name)
            for delta in rng.sample([30 * MINUTE, 30 * MINUTE + 1, 0, -1, 10 * MINUTE, 31 * MINUTE],
                                    rng.randint(1, 4)):
                view_name = rng.choice([name, (name or "").strip(), f" {name or ''} ", (name or "x").swapcase(),
                                        "other", None])
                view_ch = ch if rng.random() < 0.8 else self.channel()
                self.add("page_view", click_ts + delta, dev(), view_ch, view_name)
                if rng.random() < 0.3:  # someone else's (or nobody's) click with the same channel and name
                    other = rng.choice([f"{self.ns}dev-00-0", "ghost-1"])
                    self.add(rng.choice(CLICKS), click_ts + delta, other, view_ch, view_name)
        # touches after the last conversion (the null path), at the null window's edges too
        if rng.random() < 0.7:
            for offset in rng.sample([LOOKBACK_DAYS * DAY, LOOKBACK_DAYS * DAY + 1, 1, 2 * DAY, 3 * HOUR,
                                      0], rng.randint(1, 3)):
                self.add(self.touch_kind(), AS_OF_US - offset, dev(), self.channel(pool), self.campaign())
        # the orders, with duplicates of their order id (same or later instant, other event ids,
        # order ids with surrounding spaces, another customer's or nobody's copy)
        for conv_ts in conv_times:
            order_id = self.order_id()
            # same-instant copies: U+FFEF < U+1F600 in code points, but not in UTF-16 code units
            heads = rng.choice([(None, None), ("😀", "\uffef"), ("\uffef", "😀")])
            first = self.add("order", conv_ts, dev(), order_id=order_id, revenue=self.revenue(),
                             user=user if rng.random() < 0.5 else None, head=heads[0])
            for _ in range(rng.choice([0, 0, 1, 2])):
                copy_id = rng.choice([order_id, f" {order_id} ", f"{order_id} ", order_id.upper()])
                copy_dev = rng.choice([dev(), f"ghost-{rng.randint(0, 9)}", f"{self.ns}dev-00-0"])
                self.add("order", first["ts"] + rng.choice([0, 0, 1, HOUR, -1]), copy_dev, order_id=copy_id,
                         revenue=self.revenue(), head=heads[1])


# =====================================================================================================
# The project's code, run whole on a lake
# =====================================================================================================

def run_project(spark, settings, events, identity):
    from pyspark.sql import functions as F

    from touchpoint.core.catalog import table_path
    from touchpoint.core.delta import ensure_table
    from touchpoint.jobs import attribution
    from touchpoint.schemas.lake import SILVER_SCHEMA

    rows = []
    for e in events:
        row = {f.name: None for f in SILVER_SCHEMA}
        ts = from_us(e["ts"])
        row.update(event_id=e["event_id"], event_type=e["event_type"], event_ts=ts, event_date=ts.date(),
                   channel=e["channel"], campaign_name=e["campaign_name"], anonymous_id=e["anonymous_id"],
                   user_id=e["user_id"], order_id=e["order_id"], revenue_reporting=e["revenue"])
        if e["revenue"] is not None:  # paid in EUR: the conversion is valued in the reporting currency
            row.update(revenue=e["revenue"] * 0.92 + 0.5, currency="EUR", reporting_currency="USD")
        rows.append(row)
    silver = table_path("silver.events", settings)
    ensure_table(spark, silver, SILVER_SCHEMA, ["event_date"], "silver.events")
    spark.createDataFrame(rows, SILVER_SCHEMA).write.format("delta").mode("append").partitionBy(
        "event_date").save(silver)
    first = min(e["ts"] for e in events)
    spark.createDataFrame(
        [(kind, value, customer, from_us(first), AS_OF) for (kind, value), customer in identity.items()],
        "identifier_type string, identifier_value string, customer_id string, first_seen timestamp, "
        "last_seen timestamp").write.format("delta").mode("overwrite").save(table_path("gold.identity_map", settings))

    result = attribution.run(spark, settings, LOGICAL_DATE, mode="full")

    def read(name):
        return spark.read.format("delta").load(table_path(name, settings))

    credits = read("gold.attribution_credits").select(
        "model", "conversion_id", "customer_id", F.unix_micros("conversion_ts").alias("conversion_ts"),
        "touch_event_id", F.unix_micros("touch_ts").alias("touch_ts"), "channel", "campaign", "credit",
        "revenue_credit").collect()
    daily = read("gold.attribution_daily").collect()
    paths = read("gold.attribution_paths").collect()
    effects = read("gold.markov_removal_effects").select(
        F.unix_micros("as_of").alias("as_of"), "order", "channel", "removal_effect").collect()
    return {"result": result, "credits": [r.asDict() for r in credits], "daily": [r.asDict() for r in daily],
            "paths": [r.asDict() for r in paths], "effects": [r.asDict() for r in effects]}


# =====================================================================================================
# Comparison
# =====================================================================================================

def close(a, b):
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def compare(expected, found, table=None):
    """-> list of human-readable differences (empty when the project agrees with the oracle)."""
    if table is None:
        return [p for t in ("removal_effects", "paths", "credits", "daily") for p in compare(expected, found, t)]
    problems = []

    if table == "removal_effects":
        effects = {r["channel"]: r for r in found["effects"] if r["as_of"] == AS_OF_US}
        if set(effects) != set(expected["removal_effects"]):
            problems.append(f"removal-effect channels: project {sorted(effects)} oracle "
                            f"{sorted(expected['removal_effects'])}")
        for ch, re in sorted(expected["removal_effects"].items()):
            if ch in effects and (not close(effects[ch]["removal_effect"], re) or effects[ch]["order"] != 1):
                problems.append(f"RE({ch}): project {effects[ch]['removal_effect']!r} (order "
                                f"{effects[ch]['order']}) oracle {re!r}")

    if table == "paths":
        paths = {r["path"]: (r["total_conversions"], r["total_conversion_value"], r["total_null"])
                 for r in found["paths"]}
        if len(paths) != len(found["paths"]):
            problems.append("gold.attribution_paths has duplicate path strings")
        for p in sorted(set(paths) | set(expected["paths"])):
            a, b = paths.get(p), expected["paths"].get(p)
            if a is None or b is None or a[0] != b[0] or a[2] != b[2] or not close(a[1], b[1]):
                problems.append(f"path {p!r}: project {a} oracle {b}")

    if table == "credits":
        def key(r):
            return (r["model"], r["conversion_id"], r["touch_event_id"] or "")

        got = {}
        for r in found["credits"]:
            if key(r) in got:
                problems.append(f"duplicate credit row {key(r)}")
            got[key(r)] = r
        want = {key(r): r for r in expected["credits"]}
        for k in sorted(set(got) | set(want)):
            a, b = got.get(k), want.get(k)
            if a is None or b is None:
                problems.append(f"credit row {k}: project {a and a['credit']!r} oracle {b and b['credit']!r}")
                continue
            for col in ("customer_id", "conversion_ts", "touch_ts", "channel", "campaign"):
                if a[col] != b[col]:
                    problems.append(f"credit row {k} {col}: project {a[col]!r} oracle {b[col]!r}")
            for col in ("credit", "revenue_credit"):
                if not close(a[col], b[col]):
                    problems.append(f"credit row {k} {col}: project {a[col]!r} oracle {b[col]!r}")

    if table == "daily":
        got_daily = {(r["date"], r["model"], r["channel"], r["campaign"]): (r["conversions"], r["revenue"])
                     for r in found["daily"]}
        if len(got_daily) != len(found["daily"]):
            problems.append("gold.attribution_daily has duplicate keys")
        for k in sorted(set(got_daily) | set(expected["daily"]), key=str):
            a, b = got_daily.get(k), expected["daily"].get(k)
            if a is None or b is None or not (close(a[0], b[0]) and close(a[1], b[1])):
                problems.append(f"daily {k}: project {a} oracle {b}")
    return problems


# =====================================================================================================
# Self-checks of the oracle on hand-worked cases (so that a disagreement points at the project)
# =====================================================================================================

def _ev(event_id, kind, ts, channel=None, campaign=None, device="d1", order_id=None, revenue=None):
    return {"event_id": event_id, "event_type": kind, "ts": ts, "channel": channel, "campaign_name": campaign,
            "anonymous_id": device, "user_id": None, "order_id": order_id, "revenue": revenue}


def test_oracle_hand_worked_cases():
    ident = {("anonymous_id", "d1"): "c1", ("anonymous_id", "d2"): "c2"}
    t = AS_OF_US - 10 * DAY
    events = [
        _ev("click", "ad_click", t, "paid_search", " spring "),
        _ev("land", "page_view", t + 30 * MINUTE, "paid_search", "spring"),
        _ev("late", "page_view", t + 30 * MINUTE + 1, "paid_search", "spring"),
        _ev("B", "email_click", t + HOUR, "email", None),
        _ev("a", "email_click", t + HOUR, "email", None),
        _ev("edge", "ad_click", t + 2 * HOUR - 30 * DAY, "display", None),
        _ev("o", "order", t + 2 * HOUR, order_id="o1", revenue=100.0),
        _ev("o-dup", "order", t + 2 * HOUR, order_id=" o1 ", revenue=5.0, device="d2"),
        _ev("nobody", "order", t, order_id="o2", revenue=7.0, device="zz"),
        _ev("after", "ad_click", t + 3 * HOUR, "referral", None),
    ]
    out = oracle(events, ident)
    by = defaultdict(dict)
    for r in out["credits"]:
        by[(r["model"], r["conversion_id"])][r["touch_event_id"]] = r["credit"]
    assert [t["touch_event_id"] for t in out["conversions"][0]["path"]] == ["edge", "click", "late", "B", "a"]
    assert by[("linear", "o1")] == {k: 0.2 for k in ["edge", "click", "late", "B", "a"]}
    assert by[("position_based", "o1")] == pytest.approx({"edge": .4, "click": .2 / 3, "late": .2 / 3,
                                                          "B": .2 / 3, "a": .4})
    assert by[("shapley", "o1")] == pytest.approx({"edge": 1 / 3, "click": 1 / 6, "late": 1 / 6, "B": 1 / 6,
                                                   "a": 1 / 6})
    assert by[("markov", "o2")] == {None: 1.0}
    assert out["paths"] == {"display > paid_search > paid_search > email > email": (1, 100.0, 0),
                            "referral": (0, 0.0, 1)}
    # chain: start->display (2 paths) ... display->paid_search->email->conv; start->referral->null
    # P = 1/2; removing display, paid_search or email: 0 -> RE 1; referral: P stays -> RE 0
    assert out["removal_effects"] == {"display": 1.0, "paid_search": 1.0, "email": 1.0, "referral": 0.0}
    # time decay: weights 2^(-Δ/7d)
    w = [2 ** (-(t + 2 * HOUR - x) / DAY / 7) for x in (t + 2 * HOUR - 30 * DAY, t, t + 30 * MINUTE + 1,
                                                        t + HOUR, t + HOUR)]
    assert by[("time_decay", "o1")]["edge"] == pytest.approx(w[0] / sum(w), rel=1e-12)


def test_oracle_markov_against_a_closed_form():
    # a > b converts twice, b alone fails once: P(start) = 2/3 (a) ... computed by hand:
    # start: a 2/3, b 1/3; a -> b 1; b -> conv 2/3, null 1/3. P = 2/3.
    # without a: start->a goes to null: P = 1/3 * 2/3 = 2/9 -> RE(a) = (2/3-2/9)/(2/3) = 2/3
    # without b: P = 0 -> RE(b) = 1
    eff = removal_effects([(["a", "b"], 1, 0), (["a", "a", "b"], 1, 0), (["b"], 0, 1)])
    assert eff == {"a": Fraction(2, 3), "b": Fraction(1)}
    # a loop a > b > a: solved exactly (no step cut)
    eff = removal_effects([(["a", "b", "a"], 1, 0), (["b"], 0, 1)])
    # start: a 1/2, b 1/2; a: b 1/2, conv 1/2; b: a 1/2, null 1/2
    # x_a = 1/2 + 1/2 x_b, x_b = 1/2 x_a -> x_a = 2/3, x_b = 1/3 -> P = 1/2
    # without a: P = 0 -> 1; without b: x_a = 1/2 -> P = 1/4 -> RE 1/2
    assert eff == {"a": Fraction(1), "b": Fraction(1, 2)}


# =====================================================================================================
# The differential test
# =====================================================================================================

SEEDS = (11, 23, 47)


@pytest.fixture(scope="module")
def differential(spark, tmp_path_factory):
    """One lake holding the data of every seed (apart by customer and order ids; one Markov chain over
    all of them), attributed by one full run of the job, and the oracle over the same events."""
    from touchpoint.core.config import load_settings

    events, identity = [], {}
    for seed in SEEDS:
        Generator(seed, events, identity).build()
    settings = load_settings(lake_root=str(tmp_path_factory.mktemp("oracle") / "lake"), spark_shuffle_partitions=2)
    return events, identity, oracle(events, identity), run_project(spark, settings, events, identity)


def test_the_data_is_adversarial(differential):
    events, identity, expected, _ = differential
    convs = expected["conversions"]
    touch_ids = {t["touch_event_id"] for t in expected["touchpoints"]}
    by_id = {e["event_id"]: e for e in events}
    assert len(events) < 2000 and len(convs) >= 40
    assert sum(1 for c in convs if c["customer_id"] is None) >= 3  # nobody's orders
    assert sum(1 for c in convs if c["customer_id"] is not None and not c["path"]) >= 3  # empty paths
    assert any(len({t["channel"] for t in c["path"]}) < len(c["path"]) for c in convs)  # repeated channels
    assert sum(1 for c in convs if c["conversion_ts"] < AS_OF_US - TRAINING_DAYS * DAY) >= 4  # not trained on
    assert sum(v[2] for v in expected["paths"].values()) >= 10  # null paths
    assert expected["removal_effects"]["partner_null"] == 0
    ties = defaultdict(int)
    for c in convs:
        for t in c["path"]:
            ties[(c["conversion_id"], t["touch_ts"])] += 1
            assert c["conversion_ts"] - LOOKBACK_DAYS * DAY <= t["touch_ts"] <= c["conversion_ts"]
    assert max(ties.values()) >= 2
    assert any(t["touch_ts"] == c["conversion_ts"] - LOOKBACK_DAYS * DAY for c in convs for t in c["path"])
    assert any(t["touch_ts"] == c["conversion_ts"] for c in convs for t in c["path"])
    # landings, at the window's inclusive edge, and views 1 µs too late to be one
    clicks = defaultdict(set)
    for e in events:
        customer = resolve_customer(e, identity)
        if e["event_type"] in CLICKS and customer is not None:
            clicks[(customer, _channel(e["channel"]), _name(e["campaign_name"]))].add(e["ts"])
    views = [(e, clicks[(resolve_customer(e, identity), _channel(e["channel"]), _name(e["campaign_name"]))])
             for e in events if e["event_type"] == "page_view" and e["ts"] < AS_OF_US
             and _channel(e["channel"]) != "direct" and resolve_customer(e, identity) is not None]
    landings = [(v, ts) for v, ts in views if v["event_id"] not in touch_ids]
    assert len(landings) >= 5
    assert any(v["ts"] - LANDING_MINUTES * MINUTE in ts for v, ts in landings)
    assert any(v["ts"] in ts for v, ts in landings)
    assert any(v["ts"] - LANDING_MINUTES * MINUTE - 1 in ts for v, ts in views if v["event_id"] in touch_ids)
    assert any(_name(v["campaign_name"]) != v["campaign_name"] for v, _ in landings)
    # campaign names with surrounding spaces reached the credits, trimmed
    assert any(by_id[r["touch_event_id"]]["campaign_name"] != r["campaign"] and r["campaign"]
               for r in expected["credits"] if r["touch_event_id"])


@pytest.mark.parametrize("table", ["removal_effects", "paths", "credits", "daily"])
def test_project_matches_the_oracle(differential, table):
    _, _, expected, found = differential
    problems = compare(expected, found, table)
    assert not problems, f"{len(problems)} differences in {table}:\n" + "\n".join(problems[:60])


# Other windows: a fractional lookback, a training window shorter than it (so "the last conversion"
# of a null path may lie outside the training window), another half-life and landing window. The
# settings reach the job through `[attribution]`, the oracle through its arguments. Run once by hand
# also with (30, 7, 45, landing 0) and (0.5, 0.25, 1, 7.5) over five seeds: no difference (session 44).
OTHER_WINDOWS = dict(lookback_days=12.5, half_life_days=3.0, training_days=10, landing_minutes=45)


def test_project_matches_the_oracle_under_other_windows(spark, tmp_path):
    from touchpoint.core.config import load_settings

    events, identity = [], {}
    for seed in SEEDS:
        Generator(seed, events, identity).build()
    base = load_settings(lake_root=str(tmp_path / "lake"), spark_shuffle_partitions=2)
    settings = base.model_copy(update={"attribution": base.attribution.model_copy(update=dict(
        lookback_days=OTHER_WINDOWS["lookback_days"], half_life_days=OTHER_WINDOWS["half_life_days"],
        markov_training_days=OTHER_WINDOWS["training_days"],
        landing_window_minutes=OTHER_WINDOWS["landing_minutes"]))})
    expected = oracle(events, identity, **OTHER_WINDOWS)
    assert compare(expected, _oracle_output_as_found(oracle(events, identity)))  # the windows change results
    problems = compare(expected, run_project(spark, settings, events, identity))
    assert not problems, f"{len(problems)} differences:\n" + "\n".join(problems[:60])


# =====================================================================================================
# The data tells misreadings apart: each mutant oracle encodes one plausible misreading of BRIEF §4 and
# must disagree with the oracle on the differential data (else a project with that bug would pass).
# Two misreadings are left out because they cannot change any result under the default settings:
# collapsing repeats (for order 1 it only removes self-loops, which leave absorption probabilities
# unchanged) and "a null path starts after the last conversion *of the training window*" (with a
# training window of 90 days ≥ a lookback of 30 days, every touch of the null window is after it).
# =====================================================================================================

MISREADINGS = {  # name: (the oracle's code, the misread code)
    'landing 30min end exclusive': (
        'view["ts"] - landing <= click["ts"]',
        'view["ts"] - landing < click["ts"]'),
    'landing same instant excluded': (
        'click["ts"] <= view["ts"]):',
        'click["ts"] < view["ts"]):'),
    'landing window 1us longer': (
        'view["ts"] - landing <= click["ts"]',
        'view["ts"] - landing - 1 <= click["ts"]'),
    'landing campaign untrimmed': (
        '_name(click["campaign_name"]) == _name(view["campaign_name"])',
        '(click["campaign_name"] or None) == (view["campaign_name"] or None)'),
    'landing null names differ': (
        '_name(click["campaign_name"]) == _name(view["campaign_name"])',
        '(_name(click["campaign_name"]) == _name(view["campaign_name"]) and _name(view["campaign_name"]) is not None)'),
    'landing case-insensitive': (
        '_name(click["campaign_name"]) == _name(view["campaign_name"])',
        '(_name(click["campaign_name"]) or "").lower() == (_name(view["campaign_name"]) or "").lower()'),
    'landing ignores channel': (
        '_channel(click["channel"]) == _channel(view["channel"])',
        'True'),
    "landing any customer's click": (
        'clicks_by_customer.get(view["customer"], ())',
        '[c for l in clicks_by_customer.values() for c in l]'),
    'landing rule off': (
        'if landing == 0:\n            return False',
        'return False'),
    'direct page views are touches': (
        '_channel(e["channel"]) != "direct" and not',
        'not'),
    'path lower bound exclusive': (
        'conv_ts - lookback <= t["touch_ts"] <= conv_ts',
        'conv_ts - lookback < t["touch_ts"] <= conv_ts'),
    'path upper bound exclusive': (
        'conv_ts - lookback <= t["touch_ts"] <= conv_ts',
        'conv_ts - lookback <= t["touch_ts"] < conv_ts'),
    'path lookback 1us longer': (
        'conv_ts - lookback <= t["touch_ts"] <= conv_ts',
        'conv_ts - lookback - 1 <= t["touch_ts"] <= conv_ts'),
    'ties by UTF-16': (
        'lst.sort(key=lambda t: (t["touch_ts"], t["touch_event_id"]))',
        'lst.sort(key=lambda t: (t["touch_ts"], t["touch_event_id"].encode("utf-16-be")))'),
    'ties case-insensitive': (
        'lst.sort(key=lambda t: (t["touch_ts"], t["touch_event_id"]))',
        'lst.sort(key=lambda t: (t["touch_ts"], t["touch_event_id"].lower(), t["touch_event_id"]))'),
    'ties reversed': (
        'lst.sort(key=lambda t: (t["touch_ts"], t["touch_event_id"]))',
        'lst.sort(key=lambda t: (t["touch_ts"], [-ord(c) for c in t["touch_event_id"]]))'),
    'ties unordered (by ts only, generation order)': (
        'lst.sort(key=lambda t: (t["touch_ts"], t["touch_event_id"]))',
        'lst.sort(key=lambda t: t["touch_ts"])'),
    'order dedup latest': (
        'win = min(group, key=lambda e: (e["ts"], e["event_id"]))',
        'win = max(group, key=lambda e: (e["ts"], e["event_id"]))'),
    'order dedup tie by largest id': (
        'win = min(group, key=lambda e: (e["ts"], e["event_id"]))',
        'win = min(group, key=lambda e: (e["ts"], [-ord(c) for c in e["event_id"]]))'),
    'order dedup tie by UTF-16': (
        'win = min(group, key=lambda e: (e["ts"], e["event_id"]))',
        'win = min(group, key=lambda e: (e["ts"], e["event_id"].encode("utf-16-be")))'),
    'order dedup first event generated': (
        'win = min(group, key=lambda e: (e["ts"], e["event_id"]))',
        'win = group[0]'),
    'order id untrimmed': (
        'orders[e["order_id"].strip()].append(e)',
        'orders[e["order_id"]].append(e)'),
    'order id case-insensitive': (
        'orders[e["order_id"].strip()].append(e)',
        'orders[e["order_id"].strip().lower()].append(e)'),
    'as-of inclusive': (
        'if e["ts"] < as_of_us]',
        'if e["ts"] <= as_of_us]'),
    'customer by anonymous_id only': (
        'for kind in ("anonymous_id", "user_id")',
        'for kind in ("anonymous_id",)'),
    'training window lower exclusive': (
        'if train_from <= c["conversion_ts"] < as_of_us and c["path"]',
        'if train_from < c["conversion_ts"] < as_of_us and c["path"]'),
    'training window 1us longer': (
        'if train_from <= c["conversion_ts"] < as_of_us and c["path"]',
        'if train_from - 1 <= c["conversion_ts"] < as_of_us and c["path"]'),
    'no training window': (
        'if train_from <= c["conversion_ts"] < as_of_us and c["path"]',
        'if c["path"]'),
    'null path non-strict': (
        'and t["touch_ts"] > after]',
        'and t["touch_ts"] >= after]'),
    'null path lower exclusive': (
        'if as_of_us - lookback <= t["touch_ts"] < as_of_us and t["touch_ts"] > after',
        'if as_of_us - lookback < t["touch_ts"] < as_of_us and t["touch_ts"] > after'),
    'null path without lookback': (
        'if as_of_us - lookback <= t["touch_ts"] < as_of_us and t["touch_ts"] > after',
        'if t["touch_ts"] < as_of_us and t["touch_ts"] > after'),
    'null path after last order event (dedup losers too)': (
        '    for c in convs:\n        if c["customer_id"] is not None:\n            last_conversion[c["customer_id"]] = max(last_conversion.get(c["customer_id"], -math.inf),\n                                                    c["conversion_ts"])',
        '    for c in [dict(customer_id=e["customer"], conversion_ts=e["ts"]) for e in seen if e["event_type"] == "order"]:\n        if c["customer_id"] is not None:\n            last_conversion[c["customer_id"]] = max(last_conversion.get(c["customer_id"], -math.inf),\n                                                    c["conversion_ts"])'),
    "null paths for all customers' recent touches": (
        'and t["touch_ts"] > after]',
        ']'),
    'time decay whole days': (
        '2.0 ** (-((conv_ts - t["touch_ts"]) / DAY) / half_life_days)',
        '2.0 ** (-((conv_ts - t["touch_ts"]) // DAY) / half_life_days)'),
    'time decay exp(-d/hl)': (
        '2.0 ** (-((conv_ts - t["touch_ts"]) / DAY) / half_life_days)',
        'math.exp(-((conv_ts - t["touch_ts"]) / DAY) / half_life_days)'),
    'markov per touch': (
        '        total = sum((effects.get(ch, Fraction(0)) for ch in per_channel_count), Fraction(0))',
        '        total = sum((effects.get(ch, Fraction(0)) for ch in channels), Fraction(0))\n        per_channel_count = {ch: 1 for ch in per_channel_count}'),
    'markov fallback linear': (
        '        if total == 0:  # documented fallback: the equal split over the distinct channels\n            k = len(per_channel_count)\n            return [Fraction(1, k) / per_channel_count[ch] for ch in channels]',
        '        if total == 0:\n            return [Fraction(1, n)] * n'),
    'markov fallback last touch': (
        '        if total == 0:  # documented fallback: the equal split over the distinct channels\n            k = len(per_channel_count)\n            return [Fraction(1, k) / per_channel_count[ch] for ch in channels]',
        '        if total == 0:\n            return [0] * (n - 1) + [1]'),
    'shapley = linear': (
        '    if model == "shapley":\n        k = len(per_channel_count)\n        return [Fraction(1, k) / per_channel_count[ch] for ch in channels]',
        '    if model == "shapley":\n        return [Fraction(1, n)] * n'),
    'position_based middle 0.2 each': (
        '[Fraction(1, 5) / (n - 2)] * (n - 2)',
        '[Fraction(1, 5)] * (n - 2)'),
    'empty path row has no customer': (
        '                credit_rows.append(dict(base, model=model, touch_event_id=None',
        '                credit_rows.append(dict(base, customer_id=None, model=model, touch_event_id=None'),
    'daily by touch date': (
        'key = (from_us(r["conversion_ts"]).date(), r["model"]',
        'key = (from_us(r["touch_ts"] or r["conversion_ts"]).date(), r["model"]'),
    'credit campaign untrimmed': (
        '"channel": _channel(e["channel"]), "campaign": _name(e["campaign_name"])}',
        '"channel": _channel(e["channel"]), "campaign": e["campaign_name"] or None}'),
    'paths value as count': (
        'row[1] += Fraction(c["revenue"])',
        'row[1] += 1'),
}


def _oracle_output_as_found(out):
    return {"effects": [{"as_of": AS_OF_US, "order": 1, "channel": c, "removal_effect": v}
                        for c, v in out["removal_effects"].items()],
            "paths": [{"path": p, "total_conversions": v[0], "total_conversion_value": v[1], "total_null": v[2]}
                      for p, v in out["paths"].items()],
            "credits": out["credits"],
            "daily": [{"date": k[0], "model": k[1], "channel": k[2], "campaign": k[3], "conversions": v[0],
                       "revenue": v[1]} for k, v in out["daily"].items()]}


def test_the_data_tells_misreadings_apart(differential):
    import inspect
    import sys

    events, identity, expected, _ = differential
    source = inspect.getsource(sys.modules[__name__])
    oracle_source = source[source.index("def _name(value):"):source.index("# ====", source.index("def _name(value):"))]
    survivors = []
    for name, (right, wrong) in MISREADINGS.items():
        assert oracle_source.count(right) >= 1, f"stale misreading {name!r}"
        namespace = dict(globals())
        exec(compile(oracle_source.replace(right, wrong), f"<misreading: {name}>", "exec"), namespace)
        if not compare(namespace["oracle"](events, identity), _oracle_output_as_found(expected)):
            survivors.append(name)
    assert survivors == []


# =====================================================================================================
# A minimal case found by the differential test (with `markov_training_days = 10`, seed 601): a channel
# seen only in a null path has RE exactly 0, but the project's floating-point solve can leave rounding
# noise (~1e-16) in it. A conversion whose path holds only channels of RE 0 (here outside the training
# window) must then get the documented equal split, not "all to the noisy channel"; and a touchpoint of
# an RE-0 channel next to a channel with a real RE must get no row (BRIEF §4: rows with credit 0 are not
# written).
# =====================================================================================================

def minimal_zero_effect_events():
    ident, events = {}, []

    def customer(name, channels, order_ts=None, revenue=10.0):
        ident[("anonymous_id", name)] = name
        start = (order_ts or AS_OF_US - DAY) - (len(channels) + 1) * HOUR
        for j, ch in enumerate(channels):
            events.append(_ev(f"{name}-{j}", "ad_click", start + j * HOUR, ch, device=name))
        if order_ts:
            events.append(_ev(f"{name}-o", "order", order_ts, order_id=f"o-{name}", revenue=revenue, device=name))

    recent = AS_OF_US - 2 * DAY
    for name, path in (("c1", "aca"), ("c2", "aea"), ("c3", "e"), ("c4", "ad"), ("c5", "bab")):
        customer(name, list(path), recent)
    customer("c6", ["p"])  # never converts: the only path through p is a null path
    customer("old1", ["p", "legacy"], AS_OF_US - 100 * DAY, 50.0)  # outside the training window
    customer("old2", ["p", "a"], AS_OF_US - 100 * DAY, 20.0)
    return events, ident


def test_markov_channel_with_zero_removal_effect(spark, tmp_path):
    from touchpoint.core.config import load_settings

    events, ident = minimal_zero_effect_events()
    expected = oracle(events, ident)
    assert expected["removal_effects"]["p"] == 0.0
    markov = {(r["conversion_id"], r["touch_event_id"]): r["credit"] for r in expected["credits"]
              if r["model"] == "markov" and r["conversion_id"] in ("o-old1", "o-old2")}
    assert markov == {("o-old1", "old1-0"): 0.5, ("o-old1", "old1-1"): 0.5, ("o-old2", "old2-1"): 1.0}
    found = run_project(spark, load_settings(lake_root=str(tmp_path / "lake"), spark_shuffle_partitions=2),
                        events, ident)
    problems = compare(expected, found)
    assert not problems, f"{len(problems)} differences:\n" + "\n".join(problems)
