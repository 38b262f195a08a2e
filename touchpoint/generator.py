"""Realistic synthetic marketing traffic (issue 3), deterministic by seed.

The model is a discrete-event simulation over simulated time. Customers own several
devices, browse anonymously, identify later (signup, login, email click, checkout),
see campaigns on every channel and convert with a probability that depends on the
channels they have seen. Display is an *assist-only* channel: display clicks raise a
customer's conversion probability, but every order is preceded, on the order's own
device, by a non-display touchpoint that comes after the customer's last display event
(docs/GENERATOR.md explains why this survives identity resolution).

Output is ordered by arrival time. Each valid event can arrive late, be re-sent
byte-identically (duplicate) or be followed by a malformed sibling of a requested kind;
the run report counts all of it under the ingestion's quarantine error codes.

Depends only on touchpoint.schemas, confluent-kafka, rich and typer; never imports Spark.
Public entry points: ``GeneratorConfig``, ``iter_records``, ``generate``,
``generate_jsonl``, ``generate_kafka`` and the typer command ``generate_command``.
"""

from __future__ import annotations

import base64
import bisect
import heapq
import json
import logging
import math
import random
import sys
import time
import zlib
from dataclasses import asdict, dataclass, field, replace
from datetime import date, datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Optional
from urllib.parse import quote

import typer

from touchpoint.schemas import event_types

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------
# Contract with the ingestion: malformed kinds, named exactly as its quarantine error_code.
# ----------------------------------------------------------------------------------------
MALFORMED_KINDS: tuple[str, ...] = (
    "invalid_utf8", "not_json", "truncated_json", "not_object", "missing_event_id",
    "missing_event_type", "missing_event_ts", "unknown_event_type", "wrong_type", "no_identifier",
    "bad_timestamp", "timestamp_without_offset", "timestamp_too_old", "timestamp_in_future",
    "negative_revenue", "unknown_currency", "payload_too_large", "consent_without_flags",
    "order_missing_fields",
)
MAX_PAYLOAD_BYTES = 1_048_576  # the ingestion quarantines anything larger as payload_too_large
# Oversize payloads are ~1.1 MB each, so they take only every 10th round of the malformed
# rotation (the first round included): every kind still appears once enough are requested.
OVERSIZE_EVERY_ROUNDS = 10

EVENT_TYPES: tuple[str, ...] = event_types()
CHANNELS = ("paid_search", "paid_social", "display", "email", "affiliate", "organic_social",
            "organic_search", "referral", "direct")

_US = 1_000_000
_MS = 1_000
_MINUTE = 60 * _US
_HOUR = 3600 * _US
_DAY = 86_400 * _US
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_LOG_HOUR, _LOG_3_DAYS = math.log(_HOUR), math.log(3 * _DAY)

# ----------------------------------------------------------------------------------------
# Catalogs. Hosts use the reserved .example TLD or well-known public referrers; emails use
# the reserved example.{com,org,net} domains; IPs come from the documentation ranges.
# ----------------------------------------------------------------------------------------
SITE = "https://www.acmeshop.example"
SITE_BARE = "https://acmeshop.example"  # same host once a leading www. is stripped

# (code, weight, currency, timezone offsets in minutes that devices there may report)
_COUNTRIES = (
    ("US", 38, "USD", (-300, -240, -420)), ("GB", 14, "GBP", (0, 60)), ("DE", 12, "EUR", (60, 120)),
    ("FR", 10, "EUR", (60, 120)), ("IN", 9, "INR", (330,)), ("CA", 7, "CAD", (-300, -240)),
    ("JP", 5, "JPY", (540,)), ("AU", 5, "AUD", (600, 660)),
)
# Approximate USD -> currency factors used to price carts in local currency.
_FX = {"USD": 1.0, "EUR": 0.92, "GBP": 0.79, "JPY": 150.0, "CAD": 1.36, "AUD": 1.52, "INR": 83.0,
       "CHF": 0.90, "SEK": 10.5}
_ZERO_DECIMAL = {"JPY"}
_US_AREA_CODES = ("212", "415", "312", "617", "206", "305", "512", "303", "404", "702", "718", "213", "646", "619",
                  "503", "612", "801", "215", "214", "602")
_WHOLE_UNITS = {"JPY", "INR"}  # priced in whole units
CURRENCIES = tuple(_FX)  # every currency valid orders use (the reporting rates table needs them all)

_UA_DESKTOP = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.51",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/123.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
)
_UA_MOBILE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.6367.82 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 13; SM-S911B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/24.0 Chrome/117.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/124.0.6367.88 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_3 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 Instagram 323.0.3.23.54",
)
_UA_TABLET = (
    "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 13; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
)
_UA_MAIL = (
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17425; Pro)",
)

_SEARCH_REFERRERS = ("https://www.google.com/", "https://www.google.co.uk/", "https://www.google.de/",
                     "https://www.bing.com/", "https://duckduckgo.com/", "https://search.yahoo.com/",
                     "https://yandex.ru/", "https://www.baidu.com/")
_SOCIAL_REFERRERS = ("https://l.facebook.com/", "https://lm.facebook.com/", "https://www.instagram.com/",
                     "https://www.linkedin.com/", "https://x.com/", "https://www.reddit.com/r/running/",
                     "https://www.pinterest.com/", "https://www.tiktok.com/")
_NEWS_REFERRERS = ("https://www.nytimes.com/2024/03/02/well/move/running-shoes.html",
                   "https://www.theguardian.com/lifeandstyle/running", "https://news.ycombinator.com/item?id=39581342",
                   "https://www.runnersworld.example/gear/best-trail-shoes", "https://blog.trailnotes.example/spring-picks",
                   "https://www.wired.com/gallery/best-running-shoes/")
_AFFILIATE_REFERRERS = ("https://www.retailmenot.com/view/acmeshop.example", "https://www.couponfollow.example/acme",
                        "https://www.topcashback.co.uk/acmeshop/")
_PUBLISHER_REFERRERS = ("https://www.weather.example/forecast", "https://www.recipes.example/pasta",
                        "https://www.dailynews.example/sports")
_CLICK_ID_PARAM = {"google": "gclid", "bing": "msclkid", "facebook": "fbclid", "instagram": "fbclid",
                   "linkedin": "li_fat_id", "tiktok": "ttclid"}
_PAID_SEARCH_REFERRER = {"google": "https://www.google.com/", "bing": "https://www.bing.com/"}
_PAID_SOCIAL_REFERRER = {"facebook": "https://l.facebook.com/", "instagram": "https://l.instagram.com/",
                         "linkedin": "https://www.linkedin.com/", "tiktok": "https://www.tiktok.com/"}

_PATHS = ("/", "/category/running", "/category/trail", "/category/apparel", "/sale", "/blog/how-to-choose-running-shoes",
          "/search?q=shoes", "/stores", "/help/shipping")
_FIRST_NAMES = ("james", "mary", "robert", "patricia", "john", "jennifer", "michael", "linda", "david", "elizabeth",
                "william", "barbara", "richard", "susan", "joseph", "jessica", "thomas", "sarah", "charles", "karen",
                "lukas", "anna", "leon", "marie", "hugo", "chloe", "arjun", "priya", "yuki", "haruto", "oliver", "amelia")
_LAST_NAMES = ("smith", "johnson", "williams", "brown", "jones", "garcia", "miller", "davis", "wilson", "taylor",
               "mueller", "schmidt", "schneider", "martin", "bernard", "dubois", "sharma", "patel", "singh", "sato",
               "suzuki", "tanaka", "evans", "walker", "roberts", "clarke", "nguyen", "murphy", "oconnor", "lopez")
_EMAIL_DOMAINS = ("example.com", "example.org", "example.net")


class Campaign(NamedTuple):
    channel: str
    source: str
    medium: str
    name: str
    term: Optional[str] = None
    content: Optional[str] = None


# Names include spaces, '%', '&', '+' and non-ASCII characters so URL decoding is exercised.
CAMPAIGNS: tuple[Campaign, ...] = (
    Campaign("paid_search", "google", "cpc", "brand_search", "acme shop", "text_ad_a"),
    Campaign("paid_search", "google", "cpc", "spring sale – search", "running shoes sale", "text_ad_b"),
    Campaign("paid_search", "bing", "cpc", "generic_running", "trail running shoes", None),
    Campaign("paid_social", "facebook", "paid", "spring_sale_fb", None, "carousel_1"),
    Campaign("paid_social", "instagram", "paid", "Reels & Stories: 20% off", None, "reel_15s"),
    Campaign("paid_social", "linkedin", "cpc", "b2b_team_orders", None, "sponsored_post"),
    Campaign("paid_social", "tiktok", "paidsocial", "tiktok_launch", None, "ugc_video"),
    Campaign("display", "google", "display", "retargeting_dynamic", None, "banner_300x250"),
    Campaign("display", "criteo", "cpm", "retargeting_criteo", None, "dynamic_728x90"),
    Campaign("display", "dv360", "banner", "prospecting+lookalike", None, "hero_970x250"),
    Campaign("email", "newsletter", "email", "weekly_newsletter", None, "header_cta"),
    Campaign("email", "newsletter", "email", "spring_promo_email", None, "hero_button"),
    Campaign("email", "crm", "email", "cart_reminder", None, "cart_items"),
    Campaign("affiliate", "awin", "affiliate", "coupon_partners", None, "10pct_code"),
    Campaign("affiliate", "rakuten", "affiliate", "cashback_spring", None, None),
)
_BY_CHANNEL: dict[str, tuple[int, ...]] = {
    ch: tuple(i for i, c in enumerate(CAMPAIGNS) if c.channel == ch) for ch in CHANNELS
}
_CART_REMINDER = next(i for i, c in enumerate(CAMPAIGNS) if c.name == "cart_reminder")
_NEWSLETTERS = tuple(i for i in _BY_CHANNEL["email"] if i != _CART_REMINDER)

# Session entry channel weights (a customer without email consent or display targeting
# never enters via email / display). Closers are the non-display touchpoint channels that
# customers with a pending display touch come back through.
_ENTRY_WEIGHTS = {"direct": 20, "organic_search": 18, "paid_search": 15, "organic_social": 6, "paid_social": 8,
                  "referral": 6, "affiliate": 4, "email": 12, "display": 20}
_FIRST_SESSION_DISPLAY_WEIGHT = 10  # prospecting display clicks bring some customers in
_CLOSER_WEIGHTS = {"paid_search": 40, "organic_search": 22, "email": 25, "affiliate": 8, "paid_social": 5}
# Per-session conversion multipliers by entry channel.
_ENTRY_INTENT = {"direct": 1.2, "organic_search": 1.0, "paid_search": 1.6, "organic_social": 0.6,
                 "paid_social": 0.9, "referral": 0.8, "affiliate": 2.0, "email": 1.5, "display": 0.0}
_BASE_ORDER_PROBABILITY = 0.035
_DISPLAY_CLICK_LIFT = 3.0  # display is assist-only: it lifts later sessions, never closes
_DISPLAY_SEEN_LIFT = 1.5
# Measured events per session (exposures and emails included): turns events_per_customer into sessions.
_EVENTS_PER_SESSION = 5.5

_BLOCKLISTED_ANON_IDS = ("undefined", "null", "00000000-0000-0000-0000-000000000000", "0")
_UNKNOWN_EVENT_TYPES = ("purchase", "pageview", "session_start", "ad_view", "checkout_started")
_UNKNOWN_CURRENCIES = ("XYZ", "BTC", "RMB", "NTD")
_NOT_JSON = ("<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>",
             "GET /collect?event_id={id}&event_type=page_view HTTP/1.1",
             "event_id={id}&event_type=page_view&anonymous_id=abc",
             "undefined", "'event_id': '{id}'")
_BAD_TIMESTAMPS = ("yesterday", "2024-03-01T25:61:00Z", "32/13/2024 10:00", "not-a-timestamp", "soon™")
_INVALID_UTF8 = (b"Caf\xe9 cr\xe8me", b"\xff\xfe\xfd", b"trunc\xe2\x82", b"\xc3\x28 bad")
_WRONG_REVENUE = ("twelve dollars", "12,99 €", "free", "N/A USD")


# ----------------------------------------------------------------------------------------
# Configuration and records
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GeneratorConfig:
    """Every knob of a run. The same config (seed included) gives byte-identical output."""

    seed: int = 42
    customers: int = 1_000
    days: int = 7
    start_date: date = date(2024, 3, 4)
    events_per_customer: float = 20.0
    late_rate: float = 0.02
    duplicate_rate: float = 0.01
    malformed_rate: float = 0.005
    malformed_kinds: tuple[str, ...] = MALFORMED_KINDS
    impossible_phone_rate: float = 0.08  # share of phone-owning customers with an impossible phone
    max_events: Optional[int] = None  # stop after this many output lines
    # Numbers customers from here (emails, user ids, phones, kiosk personas): a shard of a run
    # started by `generate(processes=N)` takes a disjoint range, so shards share no identifier.
    customer_offset: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.start_date, str):
            object.__setattr__(self, "start_date", date.fromisoformat(self.start_date))
        object.__setattr__(self, "malformed_kinds", tuple(self.malformed_kinds))
        if self.customers < 1:
            raise ValueError(f"customers must be >= 1, got {self.customers}")
        if self.days < 1:
            raise ValueError(f"days must be >= 1, got {self.days}")
        if self.events_per_customer <= 0:
            raise ValueError(f"events_per_customer must be > 0, got {self.events_per_customer}")
        for name in ("late_rate", "duplicate_rate", "malformed_rate", "impossible_phone_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value}")
        unknown = [k for k in self.malformed_kinds if k not in MALFORMED_KINDS]
        if unknown:
            raise ValueError(f"unknown malformed kind(s) {unknown}; choose from {', '.join(MALFORMED_KINDS)}")
        if self.malformed_rate > 0 and not self.malformed_kinds:
            raise ValueError("malformed_rate > 0 needs at least one malformed kind")
        if self.max_events is not None and self.max_events < 0:
            raise ValueError(f"max_events must be >= 0, got {self.max_events}")
        if self.customer_offset < 0:
            raise ValueError(f"customer_offset must be >= 0, got {self.customer_offset}")

    @property
    def start_us(self) -> int:
        start = datetime(self.start_date.year, self.start_date.month, self.start_date.day, tzinfo=timezone.utc)
        return int((start - _EPOCH).total_seconds()) * _US

    @property
    def end_us(self) -> int:
        return self.start_us + self.days * _DAY


class Record(NamedTuple):
    """One output line / Kafka record: raw bytes, the Kafka key and the arrival time."""

    payload: bytes
    key: Optional[bytes]
    timestamp_ms: int
    kind: str  # "valid", "duplicate" or a malformed kind (an ingestion error_code)


# ----------------------------------------------------------------------------------------
# Timestamps
# ----------------------------------------------------------------------------------------
_DATE_CACHE: dict[int, str] = {}
_OFFSET_SUFFIX: dict[int, str] = {}


def _date_str(day: int) -> str:
    text = _DATE_CACHE.get(day)
    if text is None:
        text = date.fromordinal(719_163 + day).isoformat()  # 719163 = ordinal of 1970-01-01
        _DATE_CACHE[day] = text
    return text


def _suffix(offset_minutes: int) -> str:
    text = _OFFSET_SUFFIX.get(offset_minutes)
    if text is None:
        if offset_minutes == 0:
            text = "Z"
        else:
            sign = "+" if offset_minutes > 0 else "-"
            h, m = divmod(abs(offset_minutes), 60)
            text = f"{sign}{h:02d}:{m:02d}"
        _OFFSET_SUFFIX[offset_minutes] = text
    return text


_UUID_VARIANT = {d: "89ab"[int(d, 16) & 3] for d in "0123456789abcdef"}  # RFC 4122 variant nibble
_MILLIS = tuple(f".{ms:03d}" for ms in range(1000))
_HMS = tuple(f"{h:02d}:{m:02d}:{s:02d}" for h in range(24) for m in range(60) for s in range(60))


def format_ts(us: int, offset_minutes: int = 0, fraction: bool = True, suffix: bool = True) -> str:
    """RFC 3339 text of an instant (µs since epoch), written in a given UTC offset, ms precision."""
    day, rest = divmod(us + offset_minutes * _MINUTE, _DAY)
    seconds, micros = divmod(rest, _US)
    text = f"{_date_str(day)}T{_HMS[seconds]}"
    if fraction:
        text = f"{text}.{micros // 1000:03d}"
    return text + _suffix(offset_minutes) if suffix else text


# ----------------------------------------------------------------------------------------
# Simulation state
# ----------------------------------------------------------------------------------------
class _Device:
    __slots__ = ("anon", "ua", "ip", "tz", "country", "context_tail", "banner_done", "logged_in")

    def __init__(self, anon: str, ua: str, ip: str, tz: int, country: str):
        self.anon, self.ua, self.ip, self.tz, self.country = anon, ua, ip, tz, country
        # The constant end of this device's context object, rendered once.
        self.context_tail = (f',"user_agent":{_json_string(ua)},"ip":{_json_string(ip)},'
                             f'"country":{_json_string(country)}}}')
        self.banner_done = False
        self.logged_in = False


class _Customer:
    __slots__ = ("idx", "country", "currency", "email", "user_id", "has_account", "subscribed", "phone_raw",
                 "phone_bad", "devices", "intent", "display_target", "social_target", "sessions_left",
                 "journey_end", "last_display_us", "closer_us", "display_clicked", "display_seen", "cart",
                 "email_engaged", "pending_email")


class _Event:
    """A valid event waiting in the output queue; serialised when it leaves the queue."""

    __slots__ = ("etype", "event_id", "ts", "tz", "fraction", "sent", "body", "context", "key", "late",
                 "dup_delays", "bad_phone", "blocklisted")


class _Malformed:
    __slots__ = ("kind", "base", "event_id", "variant", "key")


@lru_cache(maxsize=None)
def _entry_table(kind: str, subscribed: bool, display_target: bool) -> tuple[tuple[str, ...], list[float]]:
    """Cumulative entry-channel weights for a first, next or closing session of a customer."""
    weights = dict(_CLOSER_WEIGHTS if kind == "closer" else _ENTRY_WEIGHTS)
    if kind == "first":
        weights["display"] = _FIRST_SESSION_DISPLAY_WEIGHT
    if not subscribed and "email" in weights:
        weights["email"] = 0
    if not display_target and "display" in weights:
        weights["display"] = 0
    return _cumulative(weights)


def _cumulative(weights: dict[str, float]) -> tuple[tuple[str, ...], list[float]]:
    names = tuple(weights)
    cum, total = [], 0.0
    for name in names:
        total += weights[name]
        cum.append(total)
    return names, cum


class _Simulation:
    """Customer journeys on an agenda ordered by time; events leave in arrival order."""

    def __init__(self, cfg: GeneratorConfig):
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.start_us, self.end_us = cfg.start_us, cfg.end_us
        self.seq = 0
        self.agenda: list = []
        self.out: list = []
        self.order_seq = 0
        self.malformed_count = 0
        self.rotation = cfg.malformed_kinds
        self.country_names, self.country_cum = _cumulative({c[0]: c[1] for c in _COUNTRIES})
        self.country_info = {c[0]: c for c in _COUNTRIES}
        rng = self.rng
        self.products = tuple((f"sku-{i:04d}", round(rng.uniform(8, 220), 2)) for i in range(60))
        self.url_cache: dict[tuple[int, int], str] = {}
        self.entry_stats = {ch: 0 for ch in CHANNELS}
        # A repeated chunk: realistic for a runaway debug dump, and cheap to compress and checksum.
        self.oversize_blob = base64.b64encode(random.Random(cfg.seed ^ 0x5EED).randbytes(3_000)).decode() * 400
        self._schedule_population()

    # -- agenda ------------------------------------------------------------------------
    def _push(self, t: int, handler: Callable, *args) -> None:
        self.seq += 1
        heapq.heappush(self.agenda, (t, self.seq, handler, args))

    def _out(self, arrival: int, item) -> None:
        self.seq += 1
        heapq.heappush(self.out, (arrival, self.seq, item))

    def _schedule_population(self) -> None:
        rng, cfg = self.rng, self.cfg
        window = self.end_us - self.start_us
        mean_sessions = max(1.0, cfg.events_per_customer / _EVENTS_PER_SESSION)
        for idx in range(cfg.customers):
            sessions = 1 + int(rng.expovariate(1.0 / (mean_sessions - 0.5))) if mean_sessions > 1.0 else 1
            if sessions > 1:
                span = min(window - 2 * _HOUR, int(rng.expovariate(1 / (4 * _DAY)) + sessions * 2 * _HOUR))
            else:
                span = 0
            latest_start = self.end_us - span - 2 * _HOUR
            start = self.start_us + int(rng.random() * max(_MINUTE, latest_start - self.start_us))
            start -= start % _MS
            self._push(start, self._first_session, idx, sessions, start + span)
        # Shared devices: a kiosk used by more users than the shared-device guardrail allows.
        for kiosk in range(max(cfg.customers // 1000, 1 if cfg.customers >= 50 else 0)):
            device = self._device(kind="desktop", country="US")
            # numbered within the customers' range: fewer kiosks than customers, so shards never share one
            personas = [f"kiosk{cfg.customer_offset + kiosk}-visitor{p}" for p in range(6)]
            for p, user_id in enumerate(personas):
                first = self.start_us + int(rng.random() * 12 * _HOUR)  # all six appear on day one
                self._push(first - first % _MS, self._kiosk_visit, device, user_id)
                for _ in range(rng.randint(1, 3)):
                    t = self.start_us + int(rng.random() * (window - _HOUR))
                    self._push(t - t % _MS, self._kiosk_visit, device, user_id)
        # Broken trackers sending placeholder ids (blocklisted by identity resolution).
        for _ in range(cfg.customers // 40):
            t = self.start_us + int(rng.random() * (window - _HOUR))
            self._push(t - t % _MS, self._junk_visit)

    # -- fast random helpers (random.randint/choice are several times slower) -------------
    def _span(self, lo: int, hi: int) -> int:
        """A random duration in [lo, hi] µs, in whole milliseconds."""
        return lo + int(self.rng.random() * ((hi - lo) // _MS + 1)) * _MS

    def _below(self, n: int) -> int:
        return int(self.rng.random() * n)

    def _choice(self, seq):
        return seq[int(self.rng.random() * len(seq))]

    # -- identities --------------------------------------------------------------------
    def _uuid(self) -> str:
        h = "%032x" % self.rng.getrandbits(128)
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_UUID_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"

    def _ip(self) -> str:
        rng = self.rng
        r = rng.random()
        if r < 0.2:
            return f"2001:db8:{rng.getrandbits(16):x}:{rng.getrandbits(16):x}::{rng.getrandbits(16):x}"
        prefix = ("192.0.2", "198.51.100", "203.0.113")[int(r * 10) % 3]
        return f"{prefix}.{rng.randint(1, 254)}"

    def _device(self, kind: str, country: str) -> _Device:
        rng = self.rng
        ua_list = _UA_DESKTOP if kind == "desktop" else _UA_MOBILE if kind == "mobile" else _UA_TABLET
        offsets = self.country_info[country][3]
        tz = 0 if rng.random() < 0.75 else self._choice(offsets)
        return _Device(self._uuid(), self._choice(ua_list), self._ip(), tz, country)

    @staticmethod
    def _phone(country: str, idx: int) -> tuple[str, str, str]:
        """(E.164, national, international spaced) forms of a possible number, one-to-one with the
        customer index: a number shared by two customers would merge them in identity resolution."""
        if country == "US":
            area = _US_AREA_CODES[idx % len(_US_AREA_CODES)]
            rest = idx // len(_US_AREA_CODES)
            exchange, line = 200 + (rest // 10_000) % 800, f"{rest % 10_000:04d}"
            return f"+1{area}{exchange}{line}", f"({area}) {exchange}-{line}", f"+1 {area}-{exchange}-{line}"
        if country == "GB":
            prefix, line = 7400 + (idx // 1_000_000) % 600, f"{idx % 1_000_000:06d}"
            return f"+44{prefix}{line}", f"0{prefix} {line}", f"+44 {prefix} {line}"
        if country == "DE":
            digits = f"{idx % 100_000_000:08d}"
            return f"+49151{digits}", f"0151 {digits}", f"+49 151 {digits}"
        if country == "FR":
            d = f"{idx % 100_000_000:08d}"
            return f"+336{d}", f"06 {d[:2]} {d[2:4]} {d[4:6]} {d[6:]}", f"+33 6 {d[:2]} {d[2:4]} {d[4:6]} {d[6:]}"
        digits = f"{idx % 1_000_000_000:09d}"  # IN mobile: 9 followed by nine digits
        return f"+919{digits}", f"09{digits[:4]} {digits[4:]}", f"+91 9{digits[:4]} {digits[4:]}"

    def _impossible_phone(self, country: str) -> str:
        rng = self.rng
        code = {"US": "1", "GB": "44", "DE": "49", "FR": "33", "IN": "91"}[country]
        r = rng.random()
        if r < 0.4 and country != "DE":  # far too short (German numbers of 2-3 digits are possible)
            return f"{rng.randint(10, 999)}"
        if r < 0.7:  # longer than any E.164 number
            return f"+{code} {rng.randint(100, 999)} {rng.randint(1000, 9999)} {rng.randint(1000, 9999)} " \
                   f"{rng.randint(100000, 999999)}"
        return self._choice(("call me", "no phone", "tbd", "---"))

    def _new_customer(self, idx: int, sessions: int, journey_end: int) -> _Customer:
        rng = self.rng
        c = _Customer()
        c.idx = idx = self.cfg.customer_offset + idx
        c.country = self.country_names[bisect.bisect(self.country_cum, rng.random() * self.country_cum[-1])]
        home_currency = self.country_info[c.country][2]
        c.currency = home_currency if rng.random() < 0.9 else self._choice(("USD", "EUR", "GBP", "CHF", "SEK"))
        first, last = self._choice(_FIRST_NAMES), self._choice(_LAST_NAMES)
        c.email = f"{first}.{last}{idx}@{_EMAIL_DOMAINS[idx % 3]}"
        c.user_id = f"u{100_000 + idx}"
        c.has_account = rng.random() < 0.3
        c.subscribed = rng.random() < 0.35
        c.phone_raw, c.phone_bad = None, False
        if c.country in ("US", "GB", "DE", "FR", "IN") and rng.random() < 0.4:
            if rng.random() < self.cfg.impossible_phone_rate:
                c.phone_raw, c.phone_bad = (self._impossible_phone(c.country),) * 3, True
            else:
                c.phone_raw = self._phone(c.country, idx)
        r = rng.random()
        kinds = ("mobile",) if r < 0.35 else ("desktop",) if r < 0.5 else \
            ("mobile", "desktop") if r < 0.85 else ("mobile", "desktop", "tablet")
        c.devices = [self._device(k, c.country) for k in kinds]
        c.intent = math.exp(rng.gauss(0, 0.5))
        c.display_target = rng.random() < 0.55
        c.social_target = rng.random() < 0.5
        c.sessions_left = sessions
        c.journey_end = journey_end
        c.last_display_us = None
        c.closer_us = {}
        c.display_clicked = c.display_seen = c.email_engaged = False
        c.cart = []
        c.pending_email = None
        return c

    def _email_value(self, c: _Customer) -> str:
        """The customer's email as a form or SDK sends it: sometimes mixed case or padded."""
        r = self.rng.random()
        if r < 0.8:
            return c.email
        if r < 0.88:
            local, domain = c.email.split("@")
            return f"{local.title()}@{domain.capitalize()}"
        if r < 0.94:
            return f" {c.email} "
        return c.email.upper()

    def _phone_value(self, c: _Customer) -> str:
        r = self.rng.random()
        return c.phone_raw[0] if r < 0.5 else c.phone_raw[1] if r < 0.9 else c.phone_raw[2]

    # -- event emission ------------------------------------------------------------------
    def _emit(self, etype: str, ts: int, body: dict, key: Optional[str], *, tz: int = 0, server: bool = False,
              late_ok: bool = True, bad_phone: bool = False, blocklisted: bool = False) -> None:
        rng, cfg = self.rng, self.cfg
        ev = _Event()
        ev.etype, ev.ts, ev.tz, ev.body = etype, ts, tz, body
        context = body.pop("context", None)  # JSON text, spliced in when serialised
        ev.context = context if context is None or type(context) is str else _ENCODE(context)
        ev.event_id = self._uuid()
        ev.fraction = not server
        ev.key = (key or ev.event_id).encode()
        ev.bad_phone, ev.blocklisted = bad_phone, blocklisted
        ev.late = late_ok and rng.random() < cfg.late_rate
        if ev.late:  # an offline device flushing its queue: log-uniform 1 h .. 3 days
            lateness = int(math.exp(rng.uniform(_LOG_HOUR, _LOG_3_DAYS)))
            arrival = ts + max(_HOUR, lateness - lateness % _MS)
            ev.sent = True
        elif server:
            arrival = ts + self._span(0, 200 * _MS)
            ev.sent = False
        else:
            arrival = ts + self._span(20 * _MS, 2500 * _MS)
            ev.sent = rng.random() < 0.92
        arrival -= arrival % _MS
        ev.dup_delays = None
        if rng.random() < cfg.duplicate_rate:  # retries within seconds; replays hours later
            copies = 1 if rng.random() < 0.9 else 2
            ev.dup_delays = [self._span(50 * _MS, 30 * _US) if rng.random() < 0.9 else self._span(_HOUR, 24 * _HOUR)
                             for _ in range(copies)]
        self._out(arrival, ev)
        if cfg.malformed_rate and rng.random() < cfg.malformed_rate:
            self._malformed(ev, arrival)

    def _malformed(self, ev: _Event, arrival: int) -> None:
        rotation = self.rotation
        while True:
            position = self.malformed_count
            self.malformed_count += 1
            kind = rotation[position % len(rotation)]
            round_no = position // len(rotation)
            if kind != "payload_too_large" or round_no % OVERSIZE_EVERY_ROUNDS == 0 or len(rotation) == 1:
                break
        m = _Malformed()
        m.kind, m.base = kind, ev
        m.event_id = self._uuid()
        m.variant = self.rng.getrandbits(16)
        m.key = ev.key
        self._out(arrival + self._span(1 * _MS, 1000 * _MS), m)

    # -- context helpers -------------------------------------------------------------------
    @staticmethod
    def _ctx(dev: _Device, url: Optional[str], referrer: Optional[str]) -> str:
        """The context object as JSON text (page_url, referrer, then the device's constant part)."""
        if url is None:
            if referrer is None:
                return "{" + dev.context_tail[1:]
            return f'{{"referrer":{_json_string(referrer)}{dev.context_tail}'
        if referrer is None:
            return f'{{"page_url":{_json_string(url)}{dev.context_tail}'
        return f'{{"page_url":{_json_string(url)},"referrer":{_json_string(referrer)}{dev.context_tail}'


    def _ids(self, c: _Customer, dev: Optional[_Device], *, user: bool = False, email: bool = False,
             phone: bool = False) -> dict:
        body = {}
        if dev is not None:
            body["anonymous_id"] = dev.anon
        if user:
            body["user_id"] = c.user_id
        if email:
            body["email"] = self._email_value(c)
        if phone and c.phone_raw is not None:
            body["phone"] = self._phone_value(c)
        return body

    def _campaign_object(self, camp: Campaign) -> dict:
        rng = self.rng
        source, medium = camp.source, camp.medium
        r = rng.random()
        if r < 0.08:
            source, medium = source.capitalize(), medium.upper()
        elif r < 0.11:
            source = f" {source} "
        obj = {"source": source, "medium": medium, "name": camp.name}
        if camp.term is not None:
            obj["term"] = camp.term
        if camp.content is not None:
            obj["content"] = camp.content
        return obj

    def _utm_query(self, camp_idx: int, variant: int) -> str:
        """utm_* query string; parameter names in one of three casings, values percent-encoded."""
        cached = self.url_cache.get((camp_idx, variant))
        if cached is None:
            camp = CAMPAIGNS[camp_idx]
            pairs = [("source", camp.source), ("medium", camp.medium), ("campaign", camp.name),
                     ("term", camp.term), ("content", camp.content)]
            parts = []
            for i, (name, value) in enumerate(pairs):
                if value is None:
                    continue
                prefix = ("utm_", "UTM_", "Utm_" if i % 2 else "utm_")[variant]
                pname = f"{prefix}{name}" if variant != 1 else f"{prefix}{name.upper()}"
                parts.append(f"{pname}={quote(value, safe='')}")
            cached = "&".join(parts)
            self.url_cache[(camp_idx, variant)] = cached
        return cached

    def _tagged(self, body: dict, camp_idx: int, path: str, click_param: Optional[str]) -> str:
        """Place UTMs: campaign object only, page_url query only, or both in full (never split)."""
        rng = self.rng
        r = rng.random()
        if r < 0.55:  # object only; the URL may carry a click id but no utm_*
            body["campaign"] = self._campaign_object(CAMPAIGNS[camp_idx])
            if click_param:
                return f"{SITE}{path}?{click_param}={self._token()}"
            return f"{SITE}{path}"
        query = self._utm_query(camp_idx, self._below(3))
        if r < 0.85:  # URL only: campaign absent, null or all blank
            q = rng.random()
            if q < 0.15:
                body["campaign"] = None
            elif q < 0.3:
                body["campaign"] = {"source": "", "medium": "", "name": "", "term": "", "content": ""}
        else:
            body["campaign"] = self._campaign_object(CAMPAIGNS[camp_idx])
            camp = CAMPAIGNS[camp_idx]
            body["campaign"].update(source=camp.source, medium=camp.medium)  # identical to the URL values
        return f"{SITE}{path}?{query}"

    def _token(self) -> str:
        return base64.urlsafe_b64encode(self.rng.getrandbits(96).to_bytes(12, "big")).decode()

    def _product_path(self) -> tuple[str, float]:
        sku, price = self.products[self._below(len(self.products))]
        return f"/products/{sku}", price

    # -- agenda handlers -------------------------------------------------------------------
    def _first_session(self, t: int, idx: int, sessions: int, journey_end: int) -> None:
        c = self._new_customer(idx, sessions, journey_end)
        entry = self._pick_channel(_entry_table("first", c.subscribed, c.display_target))
        if entry == "email":  # a subscriber whose journey starts in the inbox
            c.pending_email = self._choice(_NEWSLETTERS)
            click = t + self._span(2 * _MINUTE, 60 * _MINUTE)
            self._email_send(t, c, c.pending_email, opened=True, open_before=click)
            t = click
        self._session(t, c, entry, 0)

    def _pick_channel(self, table: tuple[tuple[str, ...], list[float]]) -> str:
        names, cum = table
        return names[bisect.bisect(cum, self.rng.random() * cum[-1])]

    def _session(self, t: int, c: _Customer, entry: str, dev_i: int) -> None:
        rng = self.rng
        dev = c.devices[dev_i]
        self.entry_stats[entry] += 1
        # Decide the outcome first so the closing touch of an ordering session is never late.
        if entry == "display":
            p = 0.0
        else:
            p = _BASE_ORDER_PROBABILITY * c.intent * _ENTRY_INTENT[entry]
            if c.display_clicked:
                p *= _DISPLAY_CLICK_LIFT
            elif c.display_seen:
                p *= _DISPLAY_SEEN_LIFT
            if c.cart:
                p *= 1.5
            if c.email_engaged:
                p *= 1.3
            if entry == "direct" and c.last_display_us is not None and \
                    c.closer_us.get(dev_i, -1) <= c.last_display_us:
                p = 0.0  # the last touch would be display: assist-only forbids ordering here
        will_order = rng.random() < min(p, 0.7)
        logged_in = dev.logged_in
        key = dev.anon
        if entry in ("paid_search", "paid_social", "display"):
            camp_idx = self._choice(_BY_CHANNEL[entry])
            camp = CAMPAIGNS[camp_idx]
            if entry != "paid_search":
                body = self._ids(c, dev, user=logged_in)
                body["context"] = self._ctx(dev, None, self._choice(_PUBLISHER_REFERRERS)
                                            if entry == "display" else None)
                body["campaign"] = self._campaign_object(camp)
                self._emit("ad_impression", t, body, key, tz=dev.tz)
                if entry == "display":
                    c.display_seen = True
                t += self._span(2 * _US, 31 * _US)
            path, _ = self._product_path() if rng.random() < 0.6 else ("/sale", 0)
            body = self._ids(c, dev, user=logged_in)
            click_param = _CLICK_ID_PARAM.get(camp.source)
            url = self._tagged(body, camp_idx, path, click_param)
            referrer = _PAID_SEARCH_REFERRER.get(camp.source) if entry == "paid_search" else \
                _PAID_SOCIAL_REFERRER.get(camp.source) if entry == "paid_social" else self._choice(_PUBLISHER_REFERRERS)
            body["context"] = self._ctx(dev, url, referrer)
            self._emit("ad_click", t, body, key, tz=dev.tz, late_ok=not will_order)
            touch_ts = t
            t += self._span(800 * _MS, 4000 * _MS)
            body = self._ids(c, dev, user=logged_in)
            body["context"] = self._ctx(dev, self._tagged(body, camp_idx, path, click_param), referrer)
            self._emit("page_view", t, body, key, tz=dev.tz)
            if entry == "display":
                c.display_clicked = True
                c.last_display_us = t  # the landing is the customer's latest display event
            else:
                c.closer_us[dev_i] = touch_ts
            url_prev = url.split("?")[0]
        elif entry == "email":
            camp_idx = c.pending_email if c.pending_email is not None else self._choice(_NEWSLETTERS)
            c.pending_email = None
            path, _ = self._product_path() if rng.random() < 0.5 else ("/sale", 0)
            body = self._ids(c, dev, user=True, email=True)
            url = self._tagged(body, camp_idx, path, None)
            body["context"] = self._ctx(dev, url, None)
            self._emit("email_click", t, body, key, tz=dev.tz, late_ok=not will_order)
            c.closer_us[dev_i] = t
            c.email_engaged = True
            t += self._span(800 * _MS, 4000 * _MS)
            body = self._ids(c, dev, user=logged_in)
            body["context"] = self._ctx(dev, self._tagged(body, camp_idx, path, None), None)
            self._emit("page_view", t, body, key, tz=dev.tz)
            url_prev = url.split("?")[0]
        elif entry == "affiliate":
            camp_idx = self._choice(_BY_CHANNEL["affiliate"])
            path, _ = self._product_path()
            body = self._ids(c, dev, user=logged_in)
            url = self._tagged(body, camp_idx, path, None)
            body["context"] = self._ctx(dev, url, self._choice(_AFFILIATE_REFERRERS))
            self._emit("page_view", t, body, key, tz=dev.tz, late_ok=not will_order)
            c.closer_us[dev_i] = t
            url_prev = url.split("?")[0]
        else:
            referrer = None
            if entry == "organic_search":
                referrer = self._choice(_SEARCH_REFERRERS)
            elif entry == "organic_social":
                referrer = self._choice(_SOCIAL_REFERRERS)
            elif entry == "referral":
                referrer = self._choice(_NEWS_REFERRERS)
            path = self._choice(_PATHS) if rng.random() < 0.5 else self._product_path()[0]
            url = f"{SITE}{path}"
            body = self._ids(c, dev, user=logged_in)
            body["context"] = self._ctx(dev, url, referrer)
            self._emit("page_view", t, body, key, tz=dev.tz, late_ok=not will_order)
            if entry != "direct":
                c.closer_us[dev_i] = t
            url_prev = url.split("?")[0]
        # Cookie banner on a device's first visit.
        if not dev.banner_done:
            dev.banner_done = True
            if rng.random() < 0.6:
                t += self._span(2 * _US, 20 * _US)
                body = self._ids(c, dev, user=logged_in)
                body["context"] = self._ctx(dev, url_prev, None)
                body["consent"] = {"analytics": rng.random() < 0.8, "ads_personalization": rng.random() < 0.6}
                self._emit("consent", t, body, key, tz=dev.tz)
        # Browsing: same-host navigation (direct, never a touchpoint).
        for _ in range(self._geometric(2.5)):
            t += self._span(5 * _US, 121 * _US)
            path = self._product_path()[0] if rng.random() < 0.6 else self._choice(_PATHS)
            url = f"{SITE}{path}"
            body = self._ids(c, dev, user=dev.logged_in)
            body["context"] = self._ctx(dev, url, url_prev if rng.random() < 0.85 else
                                        SITE_BARE + url_prev[len(SITE):])
            self._emit("page_view", t, body, key, tz=dev.tz)
            url_prev = url
        # Identification: login on a device of an existing account, or signup.
        if c.has_account and not dev.logged_in and rng.random() < 0.5:
            t += self._span(5 * _US, 60 * _US)
            body = self._ids(c, dev, user=True, email=rng.random() < 0.3, phone=rng.random() < 0.2)
            body["context"] = self._ctx(dev, f"{SITE}/account/login", url_prev)
            self._emit("identify", t, body, key, tz=dev.tz, bad_phone=c.phone_bad and "phone" in body)
            dev.logged_in = True
        elif not c.has_account and rng.random() < (0.35 if will_order else 0.1):
            t += self._span(20 * _US, 180 * _US)
            body = self._ids(c, dev, user=True, email=True, phone=rng.random() < 0.5)
            body["context"] = self._ctx(dev, f"{SITE}/account/signup", url_prev)
            body["properties"] = {"method": self._choice(("email", "google", "apple"))}
            self._emit("signup", t, body, key, tz=dev.tz, bad_phone=c.phone_bad and "phone" in body)
            c.has_account = dev.logged_in = True
            t += self._span(1 * _US, 10 * _US)
            opt_in = rng.random() < 0.55
            body = self._ids(c, dev, user=True)
            body["context"] = self._ctx(dev, f"{SITE}/account/welcome", None)
            body["consent"] = {"email_marketing": opt_in, "ads_personalization": rng.random() < 0.5,
                               "analytics": True}
            self._emit("consent", t, body, key, tz=dev.tz)
            c.subscribed = c.subscribed or opt_in
        # Cart and order.
        if will_order or rng.random() < 0.2 * c.intent:
            for _ in range(1 if rng.random() < 0.6 else rng.randint(2, 3)):
                t += self._span(10 * _US, 90 * _US)
                sku, price = self.products[self._below(len(self.products))]
                quantity = 1 if rng.random() < 0.8 else rng.randint(2, 4)
                local_price = self._price(price, c.currency)
                product_id = sku if rng.random() < 0.9 else int(sku[4:])
                body = self._ids(c, dev, user=dev.logged_in)
                body["context"] = self._ctx(dev, f"{SITE}/products/{sku}", url_prev)
                body["properties"] = {"product_id": product_id, "price": local_price, "quantity": quantity,
                                      "currency": c.currency}
                self._emit("add_to_cart", t, body, key, tz=dev.tz)
                c.cart.append((local_price, quantity))
        if will_order:
            t += self._span(60 * _US, 400 * _US)
            self.order_seq += 1
            revenue = sum(p * q for p, q in c.cart)
            if rng.random() < 0.03:
                revenue = 0  # fully discounted
            revenue = int(round(revenue)) if c.currency in _ZERO_DECIMAL else round(revenue, 2)
            order_id = 700_000_000 + self.order_seq if rng.random() < 0.1 else f"ORD-{self.order_seq:09d}"
            body = self._ids(c, dev, user=dev.logged_in, email=True, phone=rng.random() < 0.3)
            body["context"] = self._ctx(dev, f"{SITE}/checkout/complete", f"{SITE}/checkout")
            body["properties"] = {"order_id": order_id, "revenue": revenue, "currency": c.currency,
                                  "items": sum(q for _, q in c.cart)}
            self._emit("order", t, body, key, tz=dev.tz, bad_phone=c.phone_bad and "phone" in body)
            c.cart = []
        # Occasional consent change (unsubscribe, or withdraw ads personalisation).
        if rng.random() < 0.02:
            t += self._span(5 * _US, 60 * _US)
            body = self._ids(c, dev, user=dev.logged_in)
            body["context"] = self._ctx(dev, f"{SITE}/account/privacy", url_prev)
            if c.subscribed and rng.random() < 0.6:
                body["consent"] = {"email_marketing": False}
                c.subscribed = False
            else:
                body["consent"] = {"ads_personalization": rng.random() < 0.3}
            self._emit("consent", t, body, key, tz=dev.tz)
        c.sessions_left -= 1
        self._schedule_next(t + _MINUTE, c)

    @staticmethod
    def _price(usd: float, currency: str) -> float:
        value = usd * _FX[currency]
        return float(int(round(value))) if currency in _WHOLE_UNITS else round(value, 2)

    def _geometric(self, mean: float) -> int:
        return int(self.rng.expovariate(1.0 / mean))

    def _schedule_next(self, now: int, c: _Customer) -> None:
        rng = self.rng
        if c.sessions_left <= 0:
            return
        horizon = max(c.journey_end, now + _HOUR)
        # The next of k uniform points in (now, horizon) is the minimum: Beta(1, k).
        fraction = 1.0 - rng.random() ** (1.0 / c.sessions_left)
        t_next = now + 2 * _MINUTE + int((horizon - now) * fraction)
        if t_next > self.end_us - _HOUR:
            return
        display_pending = c.last_display_us is not None and max(c.closer_us.values(), default=-1) <= c.last_display_us
        # Retargeted customers mostly come back through search or email.
        kind = "closer" if display_pending and rng.random() < 0.7 else "next"
        entry = self._pick_channel(_entry_table(kind, c.subscribed, c.display_target))
        dev_i = 0 if rng.random() < 0.6 else self._below(len(c.devices))
        gap_end = t_next
        if entry == "email":
            send = max(now + _MINUTE, t_next - self._span(5 * _MINUTE, 720 * _MINUTE))
            send -= send % _US
            t_next = max(t_next, send + 3 * _MINUTE)
            c.pending_email = _CART_REMINDER if c.cart else self._choice(_NEWSLETTERS)
            self._push(send, self._email_item, c, c.pending_email, t_next - _MINUTE, True)
            gap_end = send
        gap = gap_end - now
        if gap > 20 * _MINUTE:
            days = gap / _DAY
            if c.display_target:
                for _ in range(min(3, self._poisson(0.8 * days))):
                    at = now + int(rng.random() * (gap - 15 * _MINUTE))
                    self._push(at - at % _MS, self._exposure, c, "display")
            if c.social_target:
                for _ in range(min(2, self._poisson(0.5 * days))):
                    at = now + int(rng.random() * (gap - 15 * _MINUTE))
                    self._push(at - at % _MS, self._exposure, c, "paid_social")
            if c.subscribed:
                for _ in range(min(2, self._poisson(days / 3))):
                    at = now + int(rng.random() * (gap - 15 * _MINUTE))
                    self._push(at - at % _US, self._email_item, c, self._choice(_NEWSLETTERS), gap_end - _MINUTE,
                               False)
        self._push(t_next, self._session, c, entry, dev_i)

    def _poisson(self, lam: float) -> int:
        if lam <= 0:
            return 0
        limit, k, p = math.exp(-lam), 0, self.rng.random()
        while p > limit:
            k += 1
            p *= self.rng.random()
        return k

    def _email_send(self, t: int, c: _Customer, camp_idx: int, opened: bool, open_before: Optional[int] = None) -> None:
        rng = self.rng
        camp = CAMPAIGNS[camp_idx]
        body = {"user_id": c.user_id} if c.has_account else {}
        body["email"] = c.email
        body["campaign"] = {"source": camp.source, "medium": camp.medium, "name": camp.name}
        if camp.content is not None:
            body["campaign"]["content"] = camp.content
        body["properties"] = {"message_id": f"msg-{rng.getrandbits(48):012x}"}
        self._emit("email_send", t, body, None, server=True)
        if opened or rng.random() < 0.3:
            deadline = open_before if open_before is not None else t + 6 * _HOUR
            at = t + int((deadline - t) * rng.uniform(0.05, 0.9))
            at -= at % _MS
            body = {"user_id": c.user_id} if c.has_account else {}
            body["email"] = c.email
            body["context"] = {"user_agent": self._choice(_UA_MAIL), "ip": self._ip(), "country": c.country}
            body["campaign"] = {"source": camp.source, "medium": camp.medium, "name": camp.name}
            self._emit("email_open", at, body, None)

    def _email_item(self, t: int, c: _Customer, camp_idx: int, open_before: int, opened: bool) -> None:
        self._email_send(t, c, camp_idx, opened, open_before)

    def _exposure(self, t: int, c: _Customer, channel: str) -> None:
        rng = self.rng
        dev = c.devices[self._below(len(c.devices))]
        camp = CAMPAIGNS[self._choice(_BY_CHANNEL[channel])]
        for _ in range(rng.randint(1, 3)):
            body = self._ids(c, dev, user=dev.logged_in)
            body["context"] = self._ctx(dev, None, None)
            body["campaign"] = self._campaign_object(camp)
            self._emit("ad_impression", t, body, dev.anon, tz=dev.tz)
            if channel == "display":
                c.display_seen = True
                c.last_display_us = t if c.last_display_us is None else max(c.last_display_us, t)
            t += self._span(5 * _US, 40 * _US)

    def _kiosk_visit(self, t: int, dev: _Device, user_id: str) -> None:
        rng = self.rng
        body = {"anonymous_id": dev.anon, "context": self._ctx(dev, f"{SITE}/stores", None)}
        self._emit("page_view", t, body, dev.anon)
        t += self._span(10 * _US, 60 * _US)
        body = {"anonymous_id": dev.anon, "user_id": user_id,
                "context": self._ctx(dev, f"{SITE}/account/login", f"{SITE}/stores")}
        self._emit("identify", t, body, dev.anon)
        for _ in range(rng.randint(1, 3)):
            t += self._span(10 * _US, 90 * _US)
            body = {"anonymous_id": dev.anon, "user_id": user_id,
                    "context": self._ctx(dev, f"{SITE}{self._product_path()[0]}", f"{SITE}/stores")}
            self._emit("page_view", t, body, dev.anon)

    def _junk_visit(self, t: int) -> None:
        rng = self.rng
        anon = self._choice(_BLOCKLISTED_ANON_IDS)
        country = self.country_names[bisect.bisect(self.country_cum, rng.random() * self.country_cum[-1])]
        dev = _Device(anon, self._choice(_UA_DESKTOP + _UA_MOBILE), self._ip(), 0, country)
        for _ in range(rng.randint(1, 2)):
            body = {"anonymous_id": anon, "context": self._ctx(dev, f"{SITE}{self._choice(_PATHS)}", None)}
            self._emit("page_view", t, body, anon, blocklisted=True)
            t += self._span(5 * _US, 90 * _US)

    # -- the output stream -------------------------------------------------------------------
    def pending(self) -> Iterator[tuple[int, object]]:
        """(arrival_us, item) in arrival order: an agenda item can only add arrivals >= its time."""
        agenda, out = self.agenda, self.out
        pop = heapq.heappop
        while agenda:
            horizon = agenda[0][0]
            while out and out[0][0] < horizon:
                arrival, _, item = pop(out)
                yield arrival, item
            t, _, handler, args = pop(agenda)
            handler(t, *args)
        while out:
            arrival, _, item = pop(out)
            yield arrival, item

    @property
    def sim_time(self) -> int:
        return self.agenda[0][0] if self.agenda else self.end_us


# ----------------------------------------------------------------------------------------
# Serialisation (valid and malformed)
# ----------------------------------------------------------------------------------------
def _no_default(value):
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _make_encoder() -> Callable[[object], str]:
    """Compact JSON, UTF-8 kept as is; the C encoder built once (json.dumps rebuilds it per call)."""
    from json import encoder

    if encoder.c_make_encoder is None:
        return json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    c_encoder = encoder.c_make_encoder(None, _no_default, encoder.encode_basestring, None, ":", ",", False, False, True)
    return lambda value: "".join(c_encoder(value, 0))


_ENCODE = _make_encoder()
_json_string = json.encoder.encode_basestring  # a JSON string literal, non-ASCII kept (as _ENCODE does)


def _event_json(ev: _Event, ts: int, sent: int) -> str:
    day, rest = divmod(ts + ev.tz * _MINUTE, _DAY)
    seconds, micros = divmod(rest, _US)
    date_text = _DATE_CACHE.get(day) or _date_str(day)
    if ev.fraction:
        event_ts = f"{date_text}T{_HMS[seconds]}{_MILLIS[micros // 1000]}{_OFFSET_SUFFIX.get(ev.tz) or _suffix(ev.tz)}"
    else:
        event_ts = f"{date_text}T{_HMS[seconds]}{_OFFSET_SUFFIX.get(ev.tz) or _suffix(ev.tz)}"
    head = f'{{"event_id":"{ev.event_id}","event_type":"{ev.etype}","event_ts":"{event_ts}"'
    if ev.sent:
        day, rest = divmod(sent, _DAY)
        seconds, micros = divmod(rest, _US)
        head = f'{head},"sent_ts":"{_DATE_CACHE.get(day) or _date_str(day)}T{_HMS[seconds]}{_MILLIS[micros // 1000]}Z"'
    body = _ENCODE(ev.body)
    if ev.context is not None:
        return f'{head},{body[1:-1]},"context":{ev.context}}}' if len(body) > 2 else f'{head},"context":{ev.context}}}'
    return head + "}" if body == "{}" else head + "," + body[1:]


def _event_dict(ev: _Event, ts: int, sent: int) -> dict:
    """A fresh, deep-enough copy of an event as a dict (only for rare malformed siblings)."""
    d = {"event_id": ev.event_id, "event_type": ev.etype, "event_ts": format_ts(ts, ev.tz, ev.fraction)}
    if ev.sent:
        d["sent_ts"] = format_ts(sent)
    for k, v in ev.body.items():
        d[k] = dict(v) if isinstance(v, dict) else v
    if ev.context is not None:
        d["context"] = json.loads(ev.context)
    return d


def _ensure_identifier(d: dict, m: _Malformed) -> None:
    """A wrong-typed id must not also make the event no_identifier: keep one clean identifier."""
    if not any(isinstance(d.get(k), str) and d[k].strip() for k in ("anonymous_id", "user_id", "email", "phone")):
        d["email"] = f"visitor.{m.event_id[:8]}@example.net"


def _order_fields(d: dict, m: _Malformed) -> dict:
    """Turn a malformed sibling's base into an otherwise valid order with its own order id."""
    d["event_type"] = "order"
    d.pop("consent", None)
    d["properties"] = {"order_id": f"BAD-{m.event_id[:13]}", "revenue": 42.5 + (m.variant % 100),
                       "currency": "USD"}
    return d


def _malformed_bytes(m: _Malformed, ts: int, sent: int, blob: str) -> bytes:
    ev, v, kind = m.base, m.variant, m.kind
    d = _event_dict(ev, ts, sent)
    d["event_id"] = m.event_id
    if ev.etype == "order":
        d = _order_fields(d, m)
    if kind == "invalid_utf8":
        d["properties"] = dict(d.get("properties") or {}, title="__BAD_BYTES__")
        raw = _ENCODE(d).encode()
        return raw.replace(b"__BAD_BYTES__", _INVALID_UTF8[v % len(_INVALID_UTF8)])
    if kind == "not_json":
        return _NOT_JSON[v % len(_NOT_JSON)].replace("{id}", m.event_id).encode()
    if kind == "truncated_json":
        text = _ENCODE(d)
        cut = 10 + v % max(1, len(text) - 11)  # anywhere before the closing brace
        return text[:cut].encode()
    if kind == "not_object":
        choice = v % 4
        if choice == 0:
            other = dict(d, event_id=m.event_id[::-1])
            return _ENCODE([d, other]).encode()
        return ("42", '"page_view"', "true", "3.14")[choice].encode()
    if kind == "missing_event_id":
        del d["event_id"]
    elif kind == "missing_event_type":
        del d["event_type"]
    elif kind == "missing_event_ts":
        del d["event_ts"]
    elif kind == "unknown_event_type":
        d["event_type"] = _UNKNOWN_EVENT_TYPES[v % len(_UNKNOWN_EVENT_TYPES)]
    elif kind == "wrong_type":
        choice = v % 3
        if choice == 0:
            d = _order_fields(d, m)
            d["properties"]["revenue"] = _WRONG_REVENUE[(v >> 2) % len(_WRONG_REVENUE)]
        elif choice == 1:
            d["anonymous_id"] = {"id": d.get("anonymous_id") or m.event_id}
            _ensure_identifier(d, m)
        else:
            d["user_id"] = {"value": d.get("user_id") or "u0", "source": "crm"}
            _ensure_identifier(d, m)
    elif kind == "no_identifier":
        choice = v % 3
        for k in ("anonymous_id", "user_id", "email", "phone"):
            d.pop(k, None)
        if choice == 1:
            d["anonymous_id"], d["email"] = "", "   "
        elif choice == 2:
            d["user_id"], d["phone"] = None, " "
    elif kind == "bad_timestamp":
        d["event_ts"] = _BAD_TIMESTAMPS[v % len(_BAD_TIMESTAMPS)]
    elif kind == "timestamp_without_offset":
        d["event_ts"] = format_ts(ts, 0, fraction=bool(v % 2), suffix=False)
    elif kind == "timestamp_too_old":
        # A day from 1970-01-01 to 1999-12-30: before 2000 as an instant and as written in any offset.
        d["event_ts"] = format_ts((v % 10_956) * _DAY + (v % 86_400) * _US, (0, 60, -300)[v % 3])
    elif kind == "timestamp_in_future":
        # A broken device clock: years ahead of any arrival (robust to the arrival the reader uses).
        future = (43_829 + v % 3_650) * _DAY + (v % 86_400) * _US  # 2090 .. 2099
        d["event_ts"] = format_ts(future, 0)
        d["sent_ts"] = format_ts(sent)
    elif kind == "negative_revenue":
        d = _order_fields(d, m)
        d["properties"]["revenue"] = -round(1 + (v % 5000) / 100, 2)
    elif kind == "unknown_currency":
        d = _order_fields(d, m)
        d["properties"]["currency"] = _UNKNOWN_CURRENCIES[v % len(_UNKNOWN_CURRENCIES)]
    elif kind == "payload_too_large":
        size = MAX_PAYLOAD_BYTES + 1 + (v % 100_000)
        d["properties"] = dict(d.get("properties") or {}, debug_dump="")
        base = len(_ENCODE(d).encode())
        d["properties"]["debug_dump"] = (blob * (1 + size // len(blob)))[: max(0, size - base)]
    elif kind == "consent_without_flags":
        d["event_type"] = "consent"
        d.pop("properties", None)
        choice = v % 3
        if choice == 0:
            d.pop("consent", None)
        elif choice == 1:
            d["consent"] = {}
        else:
            d["consent"] = {"email_marketing": None, "ads_personalization": None, "analytics": None}
    elif kind == "order_missing_fields":
        d = _order_fields(d, m)
        del d["properties"]["order_id"]
    return _ENCODE(d).encode()


# ----------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------
@dataclass
class GenerationReport:
    """What a run produced; the expected_* numbers are what ingestion must end up with."""

    seed: int = 0
    parameters: dict = field(default_factory=dict)
    lines: int = 0
    bytes: int = 0
    events_by_type: dict = field(default_factory=lambda: {t: 0 for t in EVENT_TYPES})
    valid_unique_events: int = 0
    duplicates_injected: int = 0
    late_events: int = 0
    malformed: dict = field(default_factory=lambda: {k: 0 for k in MALFORMED_KINDS})
    malformed_total: int = 0
    impossible_phone_events: int = 0
    impossible_phones: int = 0
    blocklisted_identifier_events: int = 0
    customers: int = 0
    sessions_by_entry_channel: dict = field(default_factory=dict)
    orders: int = 0
    revenue_by_currency: dict = field(default_factory=dict)
    first_event_ts: Optional[str] = None
    last_event_ts: Optional[str] = None
    first_arrival: Optional[str] = None
    last_arrival: Optional[str] = None
    elapsed_seconds: float = 0.0
    lines_per_second: float = 0.0
    stopped_early: bool = False

    @property
    def expected_silver(self) -> int:
        return self.valid_unique_events

    @property
    def expected_quarantine(self) -> int:
        return self.malformed_total

    @property
    def expected_duplicates(self) -> int:
        return self.duplicates_injected

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(expected_silver=self.expected_silver, expected_quarantine=self.expected_quarantine,
                 expected_duplicates=self.expected_duplicates)
        return d


# ----------------------------------------------------------------------------------------
# Driving a run
# ----------------------------------------------------------------------------------------
Clock = Callable[[], int]  # returns "now" in µs for the next line (and paces before returning)


def _parameters(config: GeneratorConfig) -> dict:
    return {k: (str(v) if isinstance(v, date) else list(v) if isinstance(v, tuple) else v)
            for k, v in asdict(config).items()}


class _Lookahead:
    """The simulation run ahead into a buffer while a real-time pacer would sleep, so a burst
    costs only rendering and sending: 9-10 µs of CPU a line from the buffer against 24 µs with the
    simulation, before the producer's 7 (docs/GENERATOR.md). A duplicate queued meanwhile comes out
    after the buffered lines instead of among them: its payload is the same bytes, sent a little later."""

    def __init__(self, items: Iterator[tuple[int, object]], limit: int):
        from collections import deque

        self.items, self.limit, self.buffer, self.exhausted = items, limit, deque(), False

    def fill(self, deadline: float, now: Callable[[], float]) -> None:
        buffer, items, append = self.buffer, self.items, self.buffer.append
        while not self.exhausted and len(buffer) < self.limit and now() < deadline:
            try:
                for _ in range(min(32, self.limit - len(buffer))):
                    append(next(items))
            except StopIteration:
                self.exhausted = True

    def __iter__(self) -> "_Lookahead":
        return self

    def __next__(self) -> tuple[int, object]:
        return self.buffer.popleft() if self.buffer else next(self.items)


def iter_records(config: GeneratorConfig, report: Optional[GenerationReport] = None,
                 clock: Optional[Clock] = None, stop: Optional[Callable[[], bool]] = None,
                 on_progress: Optional[Callable[[int, int], None]] = None, lookahead: int = 0) -> Iterator[Record]:
    """Every output record in arrival order, counted into ``report`` as it is yielded.

    Historical mode (``clock`` None): arrival = simulated arrival. Real-time mode: ``clock``
    paces and returns wall-clock now; event_ts becomes now (late events: now - lateness).
    ``lookahead`` (real time, with a ``Pacer``): simulate up to that many lines ahead while the
    pacer waits (``_Lookahead``; about 2.3 KB of memory a line).
    The report is complete once the iterator is exhausted or closed.
    """
    report = report if report is not None else GenerationReport()
    sim = _Simulation(config)
    report.seed = config.seed
    report.parameters = _parameters(config)
    report.customers = config.customers
    by_type = dict.fromkeys(EVENT_TYPES, 0)
    malformed = dict.fromkeys(MALFORMED_KINDS, 0)
    bad_phones: set[str] = set()
    revenue: dict[str, float] = {}
    limit = config.max_events
    blob = sim.oversize_blob
    lines = nbytes = valid = duplicates = late = bad_phone_events = blocklisted = 0
    min_ts = max_ts = first_arrival = last_arrival = None
    started = time.perf_counter()
    items = sim.pending()
    if lookahead > 0 and isinstance(clock, Pacer):
        items = _Lookahead(items, lookahead)
        clock.idle = items.fill
    try:
        for arrival, item in items:
            if (limit is not None and lines >= limit) or (stop is not None and stop()):
                report.stopped_early = True
                break
            now = arrival if clock is None else clock()
            if type(item) is _Event:
                ev = item
                ts = ev.ts if clock is None else (now - (arrival - ev.ts) if ev.late else now)
                payload = _event_json(ev, ts, now).encode()
                valid += 1
                by_type[ev.etype] += 1
                if ev.late:
                    late += 1
                if ev.bad_phone:
                    bad_phone_events += 1
                    bad_phones.add(ev.body["phone"])
                if ev.blocklisted:
                    blocklisted += 1
                if ev.etype == "order":
                    props = ev.body["properties"]
                    revenue[props["currency"]] = revenue.get(props["currency"], 0) + props["revenue"]
                if min_ts is None:
                    min_ts = max_ts = ts
                elif ts < min_ts:
                    min_ts = ts
                elif ts > max_ts:
                    max_ts = ts
                if ev.dup_delays:
                    for delay in ev.dup_delays:
                        sim._out(arrival + delay, (payload, ev.key))
                kind, key = "valid", ev.key
            elif type(item) is tuple:
                payload, key = item
                duplicates += 1
                kind = "duplicate"
            else:
                m = item
                payload = _malformed_bytes(m, m.base.ts if clock is None else now, now, blob)
                malformed[m.kind] += 1
                kind, key = m.kind, m.key
            if b"\n" in payload:  # JSON never needs a raw newline; guard the line framing anyway
                raise AssertionError(f"payload of kind {kind} contains a newline")
            lines += 1
            nbytes += len(payload)
            if first_arrival is None:
                first_arrival = now
            last_arrival = now
            if on_progress is not None and lines % 5000 == 0:
                on_progress(lines, sim.sim_time)
            yield Record(payload, key, now // _MS, kind)
    finally:
        report.lines, report.bytes = lines, nbytes
        report.events_by_type = by_type
        report.valid_unique_events = valid
        report.duplicates_injected = duplicates
        report.late_events = late
        report.malformed = malformed
        report.malformed_total = sum(malformed.values())
        report.impossible_phone_events = bad_phone_events
        report.impossible_phones = len(bad_phones)
        report.blocklisted_identifier_events = blocklisted
        report.orders = by_type["order"]
        report.revenue_by_currency = {k: round(revenue[k], 2) for k in sorted(revenue)}
        report.sessions_by_entry_channel = dict(sim.entry_stats)
        report.first_event_ts = format_ts(min_ts) if min_ts is not None else None
        report.last_event_ts = format_ts(max_ts) if max_ts is not None else None
        report.first_arrival = format_ts(first_arrival) if first_arrival is not None else None
        report.last_arrival = format_ts(last_arrival) if last_arrival is not None else None
        report.elapsed_seconds = round(time.perf_counter() - started, 3)
        report.lines_per_second = round(lines / report.elapsed_seconds, 1) if report.elapsed_seconds else 0.0


class Pacer:
    """Wall-clock pacing for real-time mode: ``rate`` lines/s, ``burst_factor`` x during a burst.
    The schedule counts from ``start`` (epoch seconds; default: now), so the shards of one run,
    each with its own pacer, burst together."""

    def __init__(self, rate: float, burst_factor: float = 1.0, burst_start: float = 0.0, burst_seconds: float = 0.0,
                 duration: Optional[float] = None, now: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep, start: Optional[float] = None):
        if rate <= 0:
            raise ValueError(f"rate must be > 0 events/s, got {rate}")
        if burst_factor <= 0:
            raise ValueError(f"burst_factor must be > 0, got {burst_factor}")
        self.rate, self.factor = rate, burst_factor
        self.burst_start, self.burst_end = burst_start, burst_start + burst_seconds
        self.duration = duration
        self._now, self._sleep = now, sleep
        self.t0 = now() if start is None else start
        self.sent = 0
        # work to do instead of sleeping, until a deadline: idle(deadline, now) (iter_records' lookahead)
        self.idle: Optional[Callable[[float, Callable[[], float]], None]] = None

    def due(self, n: int) -> float:
        """Seconds after start at which line n (0-based) is due under the rate/burst schedule."""
        r, f, b0, b1 = self.rate, self.factor, self.burst_start, self.burst_end
        before = r * b0  # lines due by the burst start
        if n < before or b1 <= b0:
            return n / r
        during = r * f * (b1 - b0)
        if n < before + during:
            return b0 + (n - before) / (r * f)
        return b1 + (n - before - during) / r

    def __call__(self) -> int:
        due = self.t0 + self.due(self.sent)
        if self.idle is not None and due - self._now() > 0.001:
            self.idle(due - 0.0005, self._now)
        wait = due - self._now()
        if wait > 0.001:
            self._sleep(wait)
        self.sent += 1
        return int(self._now() * 1000) * _MS

    def expired(self) -> bool:
        return self.duration is not None and self._now() - self.t0 >= self.duration


def arrival_bounds(config: GeneratorConfig) -> tuple[int, int]:
    """Earliest and latest possible arrival (µs) of a historical run: late events arrive up to
    3 days after the window, replayed duplicates up to a day after that."""
    latest = config.end_us + 5 * _US
    if config.late_rate > 0:
        latest += 3 * _DAY
    if config.duplicate_rate > 0:
        latest += 24 * _HOUR
    if config.malformed_rate > 0:
        latest += _US
    return config.start_us, latest


def arrivals_fit_kafka(config: GeneratorConfig, retention_hours: float, now: Optional[float] = None) -> bool:
    """Whether arrival record timestamps survive the broker: it rejects timestamps more than an
    hour ahead of its clock, and time retention deletes records older than retention_hours."""
    now_us = int((time.time() if now is None else now) * _US)
    earliest, latest = arrival_bounds(config)
    return earliest > now_us - int(retention_hours * 0.9 * _HOUR) and latest < now_us + 30 * _MINUTE


def _open_sink(output: str, path: Optional[str], topic: Optional[str], bootstrap: Optional[str], compression: str,
               arrival_timestamps: bool):
    if output == "jsonl":
        if not path:
            raise ValueError("output jsonl needs a path")
        return _JsonlSink(path)
    if output == "kafka":
        if not topic or not bootstrap:
            raise ValueError("output kafka needs a topic and a bootstrap server")
        return KafkaSink(bootstrap, topic, compression, arrival_timestamps)
    raise ValueError(f"output must be 'jsonl' or 'kafka', got {output!r}")


class _JsonlSink:
    def __init__(self, path: str):
        self.path = path
        if path == "-":
            self.file = sys.stdout.buffer
        else:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.file = open(path, "wb", buffering=1 << 20)

    def write(self, record: Record) -> None:
        self.file.write(record.payload + b"\n")

    def close(self) -> dict:
        if self.file is sys.stdout.buffer:
            self.file.flush()
        else:
            self.file.close()
        return {"path": self.path}

    def abort(self) -> None:
        if self.file is not sys.stdout.buffer:
            self.file.close()


class KafkaSink:
    """The generator's producer: librdkafka, idempotent with acks=all (core.kafka_producer), which
    costs the real-time generator a fifth of kafka-python's CPU a line; the benchmarks run the
    generator on the streams' 2 cores. At most MAX_QUEUED_RECORDS wait for their delivery report; a
    full queue makes `write` wait, serving reports, so memory stays bounded while the broker is
    away. The first delivery error stops the run."""

    MAX_QUEUED_RECORDS = 50_000
    MAX_QUEUED_KIB = 256 * 1024  # oversize (malformed) payloads are ~1.1 MB each

    def __init__(self, bootstrap: str, topic: str, compression: str = "auto", arrival_timestamps: bool = True,
                 metadata_timeout: float = 20.0):
        from confluent_kafka import Producer

        from touchpoint.core.kafka_producer import compression_codec, producer_config, topic_partitions

        self.topic, self.compression = topic, compression_codec(compression)
        self.arrival_timestamps = arrival_timestamps
        self.producer = Producer(producer_config(
            bootstrap, self.compression, linger_ms=20, batch_size=256 * 1024, request_timeout_ms=60_000,
            message_timeout_ms=300_000, queue_buffering_max_messages=self.MAX_QUEUED_RECORDS,
            queue_buffering_max_kbytes=self.MAX_QUEUED_KIB))
        # Partition chosen here (CRC-32 of the key, same key -> same partition, so a device's events
        # stay in order), as every earlier run of the generator did.
        self.partitions = topic_partitions(self.producer, topic, bootstrap, metadata_timeout)
        self.delivered = 0
        self.errors: list[str] = []

    def _done(self, error, _message) -> None:
        if error is None:
            self.delivered += 1
        else:
            self.errors.append(str(error) if len(self.errors) < 10 else "")

    def write(self, record: Record) -> None:
        if self.errors:  # e.g. a broker rejecting record timestamps: stop at the first failure
            raise RuntimeError(f"Kafka rejected records for {self.topic}: {self.errors[0]}")
        partition = self.partitions[zlib.crc32(record.key) % len(self.partitions)]
        timestamp = record.timestamp_ms if self.arrival_timestamps else 0  # 0: the send time
        while True:
            try:
                self.producer.produce(self.topic, record.payload, record.key, partition=partition,
                                      timestamp=timestamp, on_delivery=self._done)
                break
            except BufferError:  # the queue is full: wait for deliveries
                self.producer.poll(0.05)
        self.producer.poll(0)  # serve delivery reports (the callback runs here, in this thread)

    def abort(self) -> None:
        self.producer.flush(5)
        self.producer.purge()
        self.producer.poll(0)

    def close(self) -> dict:
        # Every queued record ends delivered or failed within message.timeout.ms.
        while self.producer.flush(10):
            pass
        failed = len(self.errors)
        if failed:
            shown = "; ".join(dict.fromkeys(e for e in self.errors[:10] if e))  # distinct reasons
            raise RuntimeError(f"{failed} Kafka records were not delivered to {self.topic}: {shown}")
        return {"topic": self.topic, "delivered": self.delivered, "compression": self.compression,
                "record_timestamps": "arrival" if self.arrival_timestamps else "send time"}


def generate(config: GeneratorConfig, output: str = "jsonl", path: Optional[str] = None, topic: Optional[str] = None,
             bootstrap: Optional[str] = None, rate: Optional[float] = None, burst_factor: float = 1.0,
             burst_start: float = 0.0, burst_seconds: float = 0.0, duration: Optional[float] = None,
             compression: str = "auto", kafka_timestamps: str = "auto", retention_hours: float = 168,
             report_path: Optional[str] = None, progress: bool = False, processes: int = 1,
             lookahead: int = 0, stop_event=None) -> dict:
    """Run the generator into a JSONL file or a Kafka topic; returns the report as a dict.

    ``kafka_timestamps``: "arrival" (record timestamp = simulated arrival), "now" (send time;
    the payload, sent_ts included, is unchanged) or "auto" (arrival when every arrival of the
    run fits the broker's window, see ``arrivals_fit_kafka``, else send time).
    ``processes``: that many generator processes into the topic, one per shard of the customers
    (``shard_configs``), each paced at rate / processes from one common start; one Python process
    makes about 30,000 lines/s (bench/generator_producer.py), short of a 10x burst of 5,000/s.
    The report is the shards' sum (``merge_reports``).
    ``lookahead``: real time only, lines simulated ahead while the pacing waits, split over the
    processes (``iter_records``): a burst then costs about half the CPU a line.
    ``stop_event``: a ``multiprocessing`` Event (of the "spawn" context when processes > 1): once
    set, the run stops early.
    """
    if kafka_timestamps not in ("arrival", "now", "auto"):
        raise ValueError(f"kafka_timestamps must be arrival, now or auto, got {kafka_timestamps!r}")
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    if lookahead < 0:
        raise ValueError(f"lookahead must be >= 0 lines, got {lookahead}")
    use_arrival = kafka_timestamps == "arrival" or rate is not None or (
        kafka_timestamps == "auto" and arrivals_fit_kafka(config, retention_hours))
    pacing = {"burst_factor": burst_factor, "burst_start": burst_start, "burst_seconds": burst_seconds,
              "duration": duration}
    if processes == 1:
        sink = _open_sink(output, path, topic, bootstrap, compression, use_arrival)
        pacer = Pacer(rate, **pacing) if rate else None
        result = _drive(config, output, sink, pacer, _stop_check(pacer, stop_event), progress, lookahead)
    else:
        if output != "kafka":
            raise ValueError("processes > 1 needs output kafka: a JSONL file has one writer (to write files in "
                             "parallel, run one generator per file, each with its own customer_offset)")
        if not topic or not bootstrap:
            raise ValueError("output kafka needs a topic and a bootstrap server")
        result = _generate_sharded(config, shard_configs(config, processes), (bootstrap, topic, compression, use_arrival),
                                   rate and rate / processes, pacing, -(-lookahead // processes), stop_event)
    if rate is not None:
        result["realtime"] = {"rate": rate, **pacing, "processes": processes, "lookahead": lookahead}
    if report_path:
        Path(report_path).parent.mkdir(parents=True, exist_ok=True)
        Path(report_path).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return result


def _stop_check(pacer: Optional[Pacer], stop_event) -> Optional[Callable[[], bool]]:
    """The run's stop test, called before each line: an Event is a lock round trip, so it is
    looked at every 100 lines."""
    if stop_event is None:
        return pacer.expired if pacer is not None else None
    calls = 0

    def stop() -> bool:
        nonlocal calls
        calls += 1
        return (pacer is not None and pacer.expired()) or (calls % 100 == 1 and stop_event.is_set())

    return stop


def _drive(config: GeneratorConfig, output: str, sink, pacer: Optional[Pacer],
           stop: Optional[Callable[[], bool]], progress: bool, lookahead: int = 0) -> dict:
    """One process's run into an open sink; the sink is closed (or aborted) here."""
    report = GenerationReport()
    progress_bar = _progress(config, pacer) if progress else None
    update = progress_bar[1] if progress_bar else None
    try:
        if progress_bar:
            progress_bar[0].start()
        for record in iter_records(config, report, clock=pacer, stop=stop, on_progress=update, lookahead=lookahead):
            sink.write(record)
        sink_info = sink.close()
    except BaseException:
        sink.abort()
        raise
    finally:
        if progress_bar:
            progress_bar[0].stop()
    result = report.as_dict()
    result["output"] = {"kind": output, **sink_info}
    return result


def shard_configs(config: GeneratorConfig, processes: int) -> list[GeneratorConfig]:
    """The run split for ``processes`` generators: consecutive customer ranges (the first ones one
    customer larger when they do not divide), ``max_events`` split the same way, and seeds
    ``seed * 1000 + shard``. One process keeps the config as it is."""
    if processes == 1:
        return [config]
    if processes > config.customers:
        raise ValueError(f"processes ({processes}) must not exceed customers ({config.customers}): "
                         "each process simulates its own customers")
    shards, offset = [], config.customer_offset
    for index in range(processes):
        customers = config.customers // processes + (index < config.customers % processes)
        max_events = None if config.max_events is None else (
            config.max_events // processes + (index < config.max_events % processes))
        shards.append(replace(config, seed=config.seed * 1000 + index, customers=customers, customer_offset=offset,
                              max_events=max_events))
        offset += customers
    return shards


SUMMED = ("lines", "bytes", "valid_unique_events", "duplicates_injected", "late_events", "malformed_total",
          "impossible_phone_events", "impossible_phones", "blocklisted_identifier_events", "customers", "orders")
SUMMED_BY_KEY = ("events_by_type", "malformed", "sessions_by_entry_channel", "revenue_by_currency")


def merge_reports(config: GeneratorConfig, reports: list[dict]) -> dict:
    """One report for a run made by shards: counts summed (``impossible_phones`` is the sum of
    each shard's distinct ones), first/last times the extremes, the rate over the longest shard;
    each shard's seed, customers and lines under "shards" (enough to generate its lines again).
    The expected_* numbers follow from the sums, as in any ``GenerationReport``."""
    merged = GenerationReport(seed=config.seed, parameters=_parameters(config),
                              **{name: sum(r[name] for r in reports) for name in SUMMED})
    for name in SUMMED_BY_KEY:
        totals: dict = {}
        for report in reports:
            for key, value in report[name].items():
                totals[key] = totals.get(key, 0) + value
        setattr(merged, name, {k: round(v, 2) for k, v in sorted(totals.items())}
                if name == "revenue_by_currency" else totals)
    for name, pick in (("first_event_ts", min), ("last_event_ts", max), ("first_arrival", min),
                       ("last_arrival", max)):
        values = [r[name] for r in reports if r[name] is not None]  # one format, so text order is time order
        setattr(merged, name, pick(values) if values else None)
    merged.elapsed_seconds = max(r["elapsed_seconds"] for r in reports)
    merged.lines_per_second = round(merged.lines / merged.elapsed_seconds, 1) if merged.elapsed_seconds else 0.0
    merged.stopped_early = any(r["stopped_early"] for r in reports)
    result = merged.as_dict()
    result["shards"] = [{"seed": r["seed"], "customers": r["customers"],
                         "customer_offset": r["parameters"]["customer_offset"], "lines": r["lines"],
                         "expected_silver": r["expected_silver"]} for r in reports]
    outputs = [r["output"] for r in reports]
    result["output"] = {**outputs[0], "delivered": sum(o["delivered"] for o in outputs)}
    return result


def _generate_sharded(config: GeneratorConfig, shards: list[GeneratorConfig], sink_args: tuple,
                      rate: Optional[float], pacing: dict, lookahead: int, stop_event) -> dict:
    """Each shard in a process of its own ("spawn": the caller may hold threads and a JVM). The
    shards open their producers, then start together; the first failure stops the others."""
    import multiprocessing
    import queue

    context = multiprocessing.get_context("spawn")
    stop_event = stop_event if stop_event is not None else context.Event()
    go, start_at, messages = context.Event(), context.Value("d", 0.0), context.Queue()
    workers = [context.Process(target=_shard_main, name=f"generator-shard-{index}", daemon=True,
                               args=(index, shard, sink_args, rate, pacing, lookahead, start_at, go, stop_event,
                                     messages))
               for index, shard in enumerate(shards)]
    for worker in workers:
        worker.start()
    reports: dict[int, dict] = {}
    errors: dict[int, str] = {}
    ready, silent = 0, set()
    try:
        while len(reports) + len(errors) < len(workers):
            try:
                kind, index, body = messages.get(timeout=1.0)
            except queue.Empty:
                # A shard's last message is in the pipe before it exits; one more wait tells a
                # shard that died without a word (killed) from a message still on its way.
                gone = {i for i, w in enumerate(workers) if not w.is_alive()} - set(reports) - set(errors)
                for index in gone & silent:
                    errors[index] = f"exited with code {workers[index].exitcode} before reporting"
                    stop_event.set()
                    go.set()
                silent = gone
                continue
            if kind == "ready":
                ready += 1
                if ready == len(workers):
                    start_at.value = time.time() + 0.05
                    go.set()
            elif kind == "done":
                reports[index] = body
            else:
                errors[index] = body
                stop_event.set()
                go.set()
    except BaseException:
        stop_event.set()
        go.set()
        raise
    finally:
        for worker in workers:
            worker.join(timeout=60)
            if worker.is_alive():
                worker.terminate()
                worker.join()
    if errors:
        raise RuntimeError("generator shard(s) failed: " + "; ".join(
            f"shard {index} (seed {shards[index].seed}): {error}" for index, error in sorted(errors.items())))
    return merge_reports(config, [reports[index] for index in range(len(workers))])


class _Orphaned:
    """A shard's stop signal: the run's stop event, or its parent gone (SIGKILLed, say)."""

    def __init__(self, stop_event):
        import multiprocessing

        self.stop_event, self.parent = stop_event, multiprocessing.parent_process()

    def is_set(self) -> bool:
        return self.stop_event.is_set() or (self.parent is not None and not self.parent.is_alive())


def _shard_main(index: int, config: GeneratorConfig, sink_args: tuple, rate: Optional[float], pacing: dict,
                lookahead: int, start_at, go, stop_event, messages) -> None:
    try:
        stop = _Orphaned(stop_event)
        sink = KafkaSink(*sink_args)
        messages.put(("ready", index, None))
        while not go.wait(1.0):
            if stop.is_set():
                break
        pacer = Pacer(rate, start=start_at.value or None, **pacing) if rate else None
        messages.put(("done", index, _drive(config, "kafka", sink, pacer, _stop_check(pacer, stop), False,
                                            lookahead)))
    except BaseException as error:  # reported to the parent, which stops the other shards
        messages.put(("error", index, f"{type(error).__name__}: {error}"))


def generate_jsonl(path: str, config: GeneratorConfig, **kwargs) -> dict:
    return generate(config, output="jsonl", path=path, **kwargs)


def generate_kafka(topic: str, bootstrap: str, config: GeneratorConfig, **kwargs) -> dict:
    return generate(config, output="kafka", topic=topic, bootstrap=bootstrap, **kwargs)


def _progress(config: GeneratorConfig, pacer: Optional[Pacer]):
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("[bold]generate[/bold] {task.description}"), BarColumn(),
                   TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(), transient=False)
    window = config.end_us - config.start_us
    task = bar.add_task("", total=100)

    def update(lines: int, sim_us: int) -> None:
        done = min(100.0, 100.0 * (sim_us - config.start_us) / window)
        if pacer is not None and pacer.duration:
            done = min(100.0, 100.0 * (pacer._now() - pacer.t0) / pacer.duration)
        bar.update(task, completed=done, description=f"{lines:,} lines")

    return bar, update


def render_report(result: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title="generator report", show_header=True)
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name in ("lines", "valid_unique_events", "duplicates_injected", "late_events", "malformed_total",
                 "impossible_phone_events", "impossible_phones", "blocklisted_identifier_events", "orders",
                 "lines_per_second"):
        table.add_row(name, f"{result[name]:,}")
    for t, n in result["events_by_type"].items():
        table.add_row(f"  event {t}", f"{n:,}")
    for k, n in result["malformed"].items():
        if n:
            table.add_row(f"  malformed {k}", f"{n:,}")
    for name in ("expected_silver", "expected_quarantine", "expected_duplicates"):
        table.add_row(f"[bold]{name}[/bold]", f"[bold]{result[name]:,}[/bold]")
    console.print(table)


# ----------------------------------------------------------------------------------------
# Command line (registered by the CLI as `touchpoint generate`)
# ----------------------------------------------------------------------------------------
def generate_command(
    seed: int = typer.Option(42, help="random seed: same seed and options give byte-identical output"),
    customers: int = typer.Option(1000, min=1, help="number of simulated customers"),
    days: int = typer.Option(7, min=1, help="simulated days [start-date, start-date + days)"),
    start_date: str = typer.Option("2024-03-04", help="first simulated day (UTC, YYYY-MM-DD)"),
    events_per_customer: float = typer.Option(20.0, min=0.1, help="average valid events per customer (volume knob)"),
    late_rate: float = typer.Option(0.02, min=0.0, max=1.0, help="share of valid events arriving 1 h to 3 days late"),
    duplicate_rate: float = typer.Option(0.01, min=0.0, max=1.0, help="share of valid events re-sent byte-identically"),
    malformed_rate: float = typer.Option(0.005, min=0.0, max=1.0, help="malformed lines per valid event"),
    malformed_kind: Optional[list[str]] = typer.Option(
        None, help="restrict malformed lines to these kinds (repeatable)"),
    output: Optional[str] = typer.Option(None, help="kafka or jsonl (default: jsonl when --path is given, else kafka)"),
    path: Optional[str] = typer.Option(None, help="JSONL file to write ('-' for stdout) when --output jsonl"),
    topic: Optional[str] = typer.Option(None, help="Kafka topic (default: settings kafka_topic)"),
    bootstrap: Optional[str] = typer.Option(None, help="Kafka bootstrap servers (default: settings kafka_bootstrap)"),
    compression: str = typer.Option(
        "auto", help="Kafka compression: auto (lz4), gzip, none, zstd, lz4, snappy"),
    kafka_timestamps: str = typer.Option(
        "auto", help="Kafka record timestamps: arrival (simulated arrival time), now (send time) or auto (arrival "
                     "when the broker keeps and accepts them: within retention and not in the future; else now)"),
    rate: Optional[float] = typer.Option(None, min=0.001, help="real-time mode: lines per second, event_ts = now"),
    burst_factor: float = typer.Option(1.0, min=0.001, help="real-time: multiply the rate by this during the burst"),
    burst_start: float = typer.Option(0.0, min=0.0, help="real-time: seconds after start when the burst begins"),
    burst_seconds: float = typer.Option(0.0, min=0.0, help="real-time: length of the burst in seconds"),
    duration: Optional[float] = typer.Option(None, min=0.0, help="real-time: stop after this many seconds"),
    max_events: Optional[int] = typer.Option(None, min=0, help="stop after this many output lines"),
    customer_offset: int = typer.Option(
        0, min=0, help="number customers from here: runs with disjoint ranges share no email, user id or phone"),
    processes: int = typer.Option(
        1, min=1, help="Kafka only: this many generator processes, each a shard of the customers (seed "
                       "seed*1000+shard) at rate/processes; one process makes about 30,000 lines/s"),
    lookahead: int = typer.Option(
        0, min=0, help="real-time: simulate up to this many lines ahead while the pacing waits (a burst then "
                       "costs about half the CPU a line; about 2.3 KB of memory a line)"),
    report: Optional[str] = typer.Option(None, help="also write the report as JSON to this path"),
    progress: bool = typer.Option(True, help="show a progress bar"),
) -> None:
    """Generate realistic synthetic marketing traffic into Kafka or a JSONL file."""
    from rich.console import Console

    err = Console(stderr=True)
    output = output or ("jsonl" if path else "kafka")
    if output == "kafka":
        from touchpoint.core.config import get_settings

        settings = get_settings()
        topic = topic or settings.kafka_topic
        bootstrap = bootstrap or settings.kafka_bootstrap
        retention_hours = settings.retention.kafka_retention_hours
    else:
        retention_hours = 168
    try:
        config = GeneratorConfig(
            seed=seed, customers=customers, days=days, start_date=date.fromisoformat(start_date),
            events_per_customer=events_per_customer, late_rate=late_rate, duplicate_rate=duplicate_rate,
            malformed_rate=malformed_rate, malformed_kinds=tuple(malformed_kind) if malformed_kind else MALFORMED_KINDS,
            max_events=max_events, customer_offset=customer_offset,
        )
        if output == "jsonl" and not path:
            raise ValueError("--path is required with --output jsonl")
        result = generate(config, output=output, path=path, topic=topic, bootstrap=bootstrap, rate=rate,
                          burst_factor=burst_factor, burst_start=burst_start, burst_seconds=burst_seconds,
                          duration=duration, compression=compression, kafka_timestamps=kafka_timestamps,
                          retention_hours=retention_hours, report_path=report, progress=progress and path != "-",
                          processes=processes, lookahead=lookahead)
    except (ValueError, RuntimeError) as error:
        err.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None
    render_report(result, console=err if path == "-" else None)
    if output == "kafka" and rate is None and result["output"]["record_timestamps"] != "arrival":
        err.print("note: Kafka record timestamps are send times, because the simulated arrivals fall outside what "
                  f"the broker keeps ({retention_hours} h retention) or accepts (at most 1 h ahead); sent_ts in "
                  "each payload still carries the simulated arrival. Pick a --start-date within the retention "
                  "window (and far enough back for late arrivals) to keep arrival timestamps.")


if __name__ == "__main__":
    typer.run(generate_command)
