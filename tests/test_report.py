"""Analyst report rendered in headless Chromium: every chart present, its marks laid out by the
browser, and its numbers equal to sums this test computes itself from the gold tables."""

import datetime as dt
import shutil
import subprocess
from collections import defaultdict
from html.parser import HTMLParser

import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable

from touchpoint.core.catalog import table_path
from touchpoint.core.config import load_settings
from touchpoint.report import money, report_path, share, write_report

from shared_history import FIRST_DAY, HISTORY_DAY

# The shared lake (tests/conftest.py: published_history) was published for this date.
REPORT_DATE = dt.date.fromisoformat(HISTORY_DAY)
MODELS = ["first_touch", "last_touch", "linear", "markov", "position_based", "shapley", "time_decay"]

# Run alone, the shared lake is built first: two pipeline runs, minutes on a busy 2-core machine.
pytestmark = pytest.mark.timeout(1800)


class Dom(HTMLParser):
    """Elements with their attributes, plus the text of value labels and status badges."""

    def __init__(self, text: str):
        super().__init__()
        self.elements: list[dict] = []
        self._open: list[dict] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        element = {"tag": tag, **{k: v or "" for k, v in attrs}, "text": ""}
        self.elements.append(element)
        if {"value-label", "status"} & set(element.get("class", "").split()):
            self._open.append(element)

    def handle_endtag(self, tag):
        if self._open and self._open[-1]["tag"] == tag:
            self._open.pop()

    def handle_data(self, data):
        if self._open:
            self._open[-1]["text"] += data

    def find(self, tag=None, css=None, **attrs):
        return [e for e in self.elements
                if (tag is None or e["tag"] == tag) and (css is None or css in e.get("class", "").split())
                and all(e.get(k.replace("_", "-")) == v for k, v in attrs.items())]


def render(path, tmp_path) -> Dom:
    assert shutil.which("chromium"), "Debian package chromium is missing (make test installs it)"
    result = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'chromium'}",
         "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return Dom(result.stdout)


def gold(settings, name):
    return DeltaTable(table_path(name, settings)).to_pyarrow_table()


@pytest.fixture
def lake(published_history, tmp_path):
    """The shared published lake, read only; the report is written under this test's folder."""
    return load_settings(lake_root=str(published_history / "lake"), reports_dir=str(tmp_path / "reports"),
                         spark_shuffle_partitions=2)


def test_report_charts_render_with_the_gold_numbers(lake, tmp_path):
    path = write_report(lake, REPORT_DATE, days=30)
    assert path == report_path(lake, REPORT_DATE) and path.name == "report-2026-03-04.html"
    html = path.read_text()
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html  # offline
    dom = render(path, tmp_path)
    assert dom.find("html")[0]["data-rendered-charts"] == "4"  # the inline script ran in the browser

    # Revenue by channel, per model: sums computed here from gold.attribution_daily.
    daily = gold(lake, "gold.attribution_daily").to_pylist()
    expected = defaultdict(float)
    for row in daily:
        if REPORT_DATE - dt.timedelta(days=29) <= row["date"] <= REPORT_DATE:
            expected[(row["model"], row["channel"])] += row["revenue"]
    channels = sorted({channel for _, channel in expected})
    assert sorted({model for model, _ in expected}) == MODELS
    for model in MODELS:
        labels = {e["data-category"]: e["text"]
                  for e in dom.find("text", "value-label", data_chart="revenue-by-channel", data_series=model)}
        want = {channel: money(expected.get((model, channel), 0.0)) for channel in channels}
        assert labels == want, model
        bars = {e["data-category"]: float(e["data-value"]) for e in dom.find("rect", "bar", data_chart="revenue-by-channel",
                                                                            data_series=model)}
        assert bars == pytest.approx({c: expected.get((model, c), 0.0) for c in channels}, rel=1e-9)
    totals = {m: sum(v for (model, _), v in expected.items() if model == m) for m in MODELS}
    assert max(totals.values()) - min(totals.values()) < 1e-6 and totals["linear"] > 0
    figure = dom.find("figure", "chart", data_chart="revenue-by-channel")[0]
    nonzero = sum(1 for v in expected.values() if v > 0)
    assert int(figure["data-visible-marks"]) == nonzero > 0

    # Markov removal effects of the latest run.
    effects = gold(lake, "gold.markov_removal_effects")
    latest = pc.max(effects["as_of"]).as_py()
    want = {r["channel"]: r["removal_effect"] for r in effects.to_pylist() if r["as_of"] == latest}
    shown = {e["data-category"]: float(e["data-value"])
             for e in dom.find("rect", "bar", data_chart="markov-removal-effects")}
    assert shown == pytest.approx(want, rel=1e-12) and want
    labels = {e["data-category"]: e["text"] for e in dom.find("text", "value-label",
                                                                        data_chart="markov-removal-effects")}
    assert labels == {channel: share(value) for channel, value in want.items()}
    figure = dom.find("figure", "chart", data_chart="markov-removal-effects")[0]
    assert int(figure["data-visible-marks"]) == sum(1 for v in want.values() if v > 0)

    # Segment sizes: one point per segment and run date.
    sizes = {(r["segment"], r["date"].isoformat()): r["members"] for r in gold(lake, "gold.segment_sizes").to_pylist()}
    points = {(e["data-series"], e["data-category"]): float(e["data-value"])
              for e in dom.find("circle", "point", data_chart="segment-sizes")}
    assert points == {key: float(members) for key, members in sizes.items()}
    # the shared lake was backfilled: FIRST_DAY, then REPORT_DATE (tests/shared_history.py)
    assert {day for _, day in points} == {FIRST_DAY, REPORT_DATE.isoformat()} and len(points) >= 8
    figure = dom.find("figure", "chart", data_chart="segment-sizes")[0]
    assert int(figure["data-visible-marks"]) == len(sizes)

    # Campaign performance: last-touch revenue per campaign and day (the top campaigns only).
    last_touch = defaultdict(float)
    for row in daily:
        if row["model"] == "last_touch" and row["campaign"] is not None:
            last_touch[(row["campaign"], row["date"].isoformat())] += row["revenue"]
    campaign_points = {(e["data-series"], e["data-category"]): float(e["data-value"])
                       for e in dom.find("circle", "point", data_chart="campaign-performance")}
    ranked = sorted({c for c, _ in last_touch},
                    key=lambda c: (-sum(v for (k, _), v in last_touch.items() if k == c), c))[:6]
    assert campaign_points == pytest.approx({k: v for k, v in last_touch.items() if k[0] in ranked}, rel=1e-9)
    figure = dom.find("figure", "chart", data_chart="campaign-performance")[0]
    assert int(figure["data-visible-marks"]) == len(campaign_points) > 0

    # Data quality of the latest audit run, and freshness from the high-water mark.
    audit = gold(lake, "gold.audit_results").to_pylist()
    last_run = max(audit, key=lambda r: (r["validated_at"], r["run_id"]))["run_id"]
    assert last_run == "marketing_daily-20260304"
    failed = defaultdict(bool)
    for row in audit:
        if row["run_id"] == last_run:
            failed[row["suite"]] |= not row["success"]
    statuses = {e["data-suite"]: e["text"] for e in dom.find("span", "status")}
    assert statuses == {suite: "failed" if bad else "passed" for suite, bad in failed.items()}
    assert "2026-03-05 00:00:00" in html and "no speed layer data" in html


def test_empty_lake_gives_no_data_panels_and_still_renders(tmp_path):
    settings = load_settings(lake_root=str(tmp_path / "lake"), reports_dir=str(tmp_path / "reports"))
    path = write_report(settings, REPORT_DATE)
    dom = render(path, tmp_path)
    assert dom.find("html")[0]["data-rendered-charts"] == "0"
    empty = sorted(e["data-panel"] for e in dom.find("section", "no-data"))
    assert empty == ["campaign-performance", "data-quality", "markov-removal-effects", "revenue-by-channel",
                     "segment-sizes"]
    assert "no speed layer data" in path.read_text()
