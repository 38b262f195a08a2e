"""Analyst report: `touchpoint report --date D` -> one self-contained HTML page (docs/REPORT.md).

Reads the gold (and, when present, speed) tables with delta-rs and DuckDB: no JVM. Charts are
inline SVG drawn here, with no script or style from the network, so the file works offline and
can be mailed around. Every chart mark carries its exact value in `data-value`, and a few lines of
inline script count the marks the browser actually laid out (`data-visible-marks`), which is what
the browser test checks. A table that does not exist yet gives a "no data yet" panel, never an error.
"""

from __future__ import annotations

import datetime as dt
import html
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import duckdb
import pyarrow as pa

from touchpoint.core.catalog import TABLES
from touchpoint.core.config import Settings
from touchpoint.core.delta import rs_table

PALETTE = ("#4269d0", "#efb118", "#ff725c", "#6cc5b0", "#3ca951", "#ff8ab7", "#a463f2", "#97bbf5", "#9c6b4e",
           "#9498a0")
TOP_CAMPAIGNS = 6
# Campaign metric tables other parts may publish, first found wins; their metric columns are summed.
CAMPAIGN_TABLES = ("serving.campaign_daily", "gold.campaign_daily", "speed.campaign_daily")
CAMPAIGN_METRICS = ("impressions", "clicks", "orders", "revenue", "last_touch_revenue")
FRESHNESS_TABLE = "speed.freshness"


# ---- reading ------------------------------------------------------------------------------------

def read_table(name: str, settings: Settings) -> pa.Table | None:
    """The table's current snapshot, or None when the catalog does not know it or it was never written."""
    table = TABLES.get(name)
    if table is None:
        return None
    try:
        return rs_table(table.path(settings)).to_pyarrow_table()
    except Exception:  # missing folder or not a Delta table yet: the panel says so
        return None


def _number(value) -> str:
    """Counts as integers, amounts (double or decimal) with two decimals."""
    if value is None:
        return ""
    return f"{value:,}" if isinstance(value, int) else money(float(value))


def money(value: float) -> str:
    return f"{value:,.2f}"


def share(value: float) -> str:
    return f"{value:.4f}"


# ---- the sections' data -------------------------------------------------------------------------

@dataclass(frozen=True)
class Window:
    first: dt.date
    last: dt.date  # the report date D

    @property
    def as_of(self) -> dt.datetime:
        return dt.datetime.combine(self.last + dt.timedelta(days=1), dt.time(), tzinfo=dt.timezone.utc)


def revenue_by_channel_and_model(daily: pa.Table, window: Window) -> list[tuple[str, str, float]]:
    """(model, channel, revenue) over the window, from gold.attribution_daily."""
    return _query(
        "SELECT model, channel, SUM(revenue) FROM daily WHERE date BETWEEN ? AND ? "
        "GROUP BY model, channel ORDER BY model, channel", {"daily": daily}, [window.first, window.last])


def campaign_revenue_by_day(daily: pa.Table, window: Window) -> list[tuple[str, dt.date, float]]:
    """(campaign, date, last-touch revenue) for the window's top campaigns by that revenue."""
    return _query(
        """WITH lt AS (SELECT campaign, date, SUM(revenue) AS revenue FROM daily
                      WHERE model = 'last_touch' AND campaign IS NOT NULL AND date BETWEEN ? AND ?
                      GROUP BY campaign, date),
                top AS (SELECT campaign FROM lt GROUP BY campaign ORDER BY SUM(revenue) DESC, campaign LIMIT ?)
           SELECT campaign, date, revenue FROM lt WHERE campaign IN (SELECT campaign FROM top)
           ORDER BY campaign, date""",
        {"daily": daily}, [window.first, window.last, TOP_CAMPAIGNS])


def latest_removal_effects(effects: pa.Table, window: Window) -> tuple[dt.datetime | None, list[tuple[str, float]]]:
    """The removal effects of the latest Markov run with as_of at or before the report's as-of."""
    rows = _query(
        """SELECT as_of, channel, removal_effect FROM effects
           WHERE as_of = (SELECT MAX(as_of) FROM effects WHERE as_of <= ?)
           ORDER BY removal_effect DESC, channel""",
        {"effects": effects}, [window.as_of])
    return (rows[0][0] if rows else None), [(channel, value) for _, channel, value in rows]


def segment_members_by_day(sizes: pa.Table, window: Window) -> list[tuple[str, dt.date, int]]:
    return _query(
        "SELECT segment, date, members FROM sizes WHERE date BETWEEN ? AND ? ORDER BY segment, date",
        {"sizes": sizes}, [window.first, window.last])


def latest_audit(results: pa.Table, window: Window) -> tuple[str | None, list[tuple[str, int, int]]]:
    """(run id, [(suite, passed, failed)]) of the last audit run for a logical date up to D."""
    rows = _query(
        """WITH latest AS (SELECT run_id FROM results WHERE logical_date <= ?
                          ORDER BY validated_at DESC, run_id DESC LIMIT 1)
           SELECT run_id, suite, COUNT(*) FILTER (WHERE success), COUNT(*) FILTER (WHERE NOT success)
           FROM results WHERE run_id IN (SELECT run_id FROM latest) GROUP BY run_id, suite ORDER BY suite""",
        {"results": results}, [window.last])
    return (rows[0][0] if rows else None), [(suite, passed, failed) for _, suite, passed, failed in rows]


def _query(sql: str, tables: dict[str, pa.Table], params: list) -> list[tuple]:
    connection = duckdb.connect()
    try:
        connection.execute("SET TimeZone = 'UTC'")  # instants print as UTC whatever the machine's zone
        for name, table in tables.items():
            connection.register(name, table)
        return connection.execute(sql, params).fetchall()
    finally:
        connection.close()


# ---- SVG ----------------------------------------------------------------------------------------

def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _color(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def bar_panel(chart: str, title: str, series: str, bars: list[tuple[str, float]], scale_max: float,
              label=money, width: int = 260) -> str:
    """One horizontal bar chart: a label, a bar and the value per category, on a shared scale."""
    row, label_w, value_w = 20, 100, 70
    plot_w = width - label_w - value_w
    height = 24 + row * len(bars)
    parts = [f'<svg class="chart-svg" data-chart="{_e(chart)}" data-series="{_e(series)}" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}">',
             f'<text x="0" y="14" class="panel-title">{_e(title)}</text>']
    for i, (category, value) in enumerate(bars):
        y = 22 + i * row
        bar_w = 0.0 if scale_max <= 0 else plot_w * max(value, 0.0) / scale_max
        parts.append(f'<text x="{label_w - 4}" y="{y + 13}" text-anchor="end" class="axis-label">{_e(category)}</text>')
        parts.append(f'<rect class="mark bar" data-chart="{_e(chart)}" data-series="{_e(series)}" '
                     f'data-category="{_e(category)}" '
                     f'data-value="{value!r}" x="{label_w}" y="{y + 2}" width="{bar_w:.2f}" height="{row - 5}" '
                     f'fill="{_color(i)}"><title>{_e(category)}: {_e(label(value))}</title></rect>')
        parts.append(f'<text class="value-label" data-chart="{_e(chart)}" data-series="{_e(series)}" '
                     f'data-category="{_e(category)}" '
                     f'x="{label_w + bar_w + 4:.2f}" y="{y + 13}">{_e(label(value))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def line_chart(chart: str, title: str, days: list[dt.date], lines: dict[str, dict[dt.date, float]],
               label=money, width: int = 820, height: int = 280) -> str:
    """Lines over days, one per series, a marker (with its value) at each point that has data."""
    left, right, top, bottom = 70, 220, 24, 30  # the right margin holds the legend
    height = max(height, top + 16 * len(lines) + bottom)  # room for every legend entry
    plot_w, plot_h = width - left - right, height - top - bottom
    top_value = max((v for points in lines.values() for v in points.values()), default=0.0)
    top_value = top_value if top_value > 0 else 1.0

    def x(day: dt.date) -> float:
        span = max(len(days) - 1, 1)
        return left + plot_w * days.index(day) / span

    def y(value: float) -> float:
        return top + plot_h * (1 - value / top_value)

    parts = [f'<svg class="chart-svg" data-chart="{_e(chart)}" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}">',
             f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" class="axis"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" class="axis"/>',
             f'<text x="{left - 6}" y="{top + 4}" text-anchor="end" class="axis-label">{_e(label(top_value))}</text>',
             f'<text x="{left - 6}" y="{top + plot_h}" text-anchor="end" class="axis-label">0</text>',
             f'<text x="{left}" y="{height - 8}" class="axis-label">{days[0].isoformat()}</text>',
             f'<text x="{left + plot_w}" y="{height - 8}" text-anchor="end" class="axis-label">'
             f'{days[-1].isoformat()}</text>']
    for i, (name, points) in enumerate(lines.items()):
        color = _color(i)
        ordered = sorted(points.items())
        coords = " ".join(f"{x(day):.2f},{y(value):.2f}" for day, value in ordered)
        parts.append(f'<polyline class="series-line" data-series="{_e(name)}" points="{coords}" fill="none" '
                     f'stroke="{color}" stroke-width="2"/>')
        for day, value in ordered:
            parts.append(f'<circle class="mark point" data-chart="{_e(chart)}" data-series="{_e(name)}" '
                         f'data-category="{day.isoformat()}" '
                         f'data-value="{value!r}" cx="{x(day):.2f}" cy="{y(value):.2f}" r="3.5" fill="{color}">'
                         f'<title>{_e(name)} {day.isoformat()}: {_e(label(value))}</title></circle>')
        legend_y = top + 16 * i + 8
        parts.append(f'<rect x="{left + plot_w + 12}" y="{legend_y - 8}" width="10" height="10" fill="{color}"/>'
                     f'<text x="{left + plot_w + 26}" y="{legend_y + 1}" class="legend">{_e(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


# ---- HTML ---------------------------------------------------------------------------------------

def _panel(key: str, title: str, body: str, note: str = "") -> str:
    note_html = f'<p class="note">{note}</p>' if note else ""
    return f'<section class="panel" data-panel="{key}"><h2>{_e(title)}</h2>{note_html}{body}</section>'


def _no_data(key: str, title: str, why: str) -> str:
    return (f'<section class="panel no-data" data-panel="{key}"><h2>{_e(title)}</h2>'
            f'<p class="no-data-message">No data yet: {_e(why)}.</p></section>')


def _figure(chart: str, inner: str) -> str:
    return f'<figure class="chart" data-chart="{_e(chart)}">{inner}</figure>'


def _table(header: Iterable[str], rows: Iterable[Iterable], css: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def attribution_section(settings: Settings, window: Window) -> str:
    key, title = "revenue-by-channel", "Revenue by channel under each attribution model"
    daily = read_table("gold.attribution_daily", settings)
    if daily is None:
        return _no_data(key, title, "gold.attribution_daily does not exist (run the attribution job)")
    rows = revenue_by_channel_and_model(daily, window)
    if not rows:
        return _no_data(key, title, f"no conversions between {window.first} and {window.last}")
    models = sorted({model for model, _, _ in rows})
    channels = sorted({channel for _, channel, _ in rows})
    revenue = {(model, channel): value for model, channel, value in rows}
    scale = max(revenue.values())
    panels = "".join(bar_panel(key, model, model, [(c, revenue.get((model, c), 0.0)) for c in channels], scale)
                     for model in models)
    note = (f"Attributed revenue ({_e(settings.reporting_currency)}) of conversions from {window.first} to "
            f"{window.last}; every model distributes the same total.")
    return _panel(key, title, _figure(key, f'<div class="small-multiples">{panels}</div>'), note)


def campaign_section(settings: Settings, window: Window, days: list[dt.date]) -> str:
    key, title = "campaign-performance", "Campaign performance over time"
    daily = read_table("gold.attribution_daily", settings)
    parts, notes = [], []
    if daily is not None:
        rows = campaign_revenue_by_day(daily, window)
        if rows:
            lines: dict[str, dict[dt.date, float]] = {}
            for campaign, day, value in rows:
                lines.setdefault(campaign, {})[day] = value
            parts.append(_figure(key, line_chart(key, title, days, lines)))
            notes.append(f"Last-touch attributed revenue per day of the top {TOP_CAMPAIGNS} campaigns.")
    metrics = campaign_metrics_table(settings, window)
    if metrics:
        parts.append(metrics)
    if not parts:
        return _no_data(key, title, "no campaign revenue in gold.attribution_daily and no campaign metrics table")
    return _panel(key, title, "".join(parts), " ".join(notes))


def campaign_metrics_table(settings: Settings, window: Window) -> str:
    """Totals over the window of the first campaign metrics table found (its schema is read, not assumed)."""
    for name in CAMPAIGN_TABLES:
        table = read_table(name, settings)
        if table is None or "campaign" not in table.column_names or "date" not in table.column_names:
            continue
        metrics = [m for m in CAMPAIGN_METRICS if m in table.column_names]
        if not metrics:
            continue
        sums = ", ".join(f'SUM("{m}")' for m in metrics)
        rows = _query(f"SELECT campaign, {sums} FROM t WHERE date BETWEEN ? AND ? GROUP BY campaign "
                      "ORDER BY campaign NULLS LAST", {"t": table}, [window.first, window.last])
        if rows:
            body = [[_e(r[0] if r[0] is not None else "(none)"), *(_e(_number(v)) for v in r[1:])] for r in rows]
            return f'<h3>{_e(name)}</h3>' + _table(["campaign", *metrics], body, "metrics")
    return ""


def markov_section(settings: Settings, window: Window) -> str:
    key, title = "markov-removal-effects", "Markov removal effects"
    effects = read_table("gold.markov_removal_effects", settings)
    if effects is None:
        return _no_data(key, title, "gold.markov_removal_effects does not exist (run the attribution job)")
    as_of, rows = latest_removal_effects(effects, window)
    if not rows:
        return _no_data(key, title, f"no Markov run as of {window.as_of.isoformat()}")
    chart = bar_panel(key, "removal effect", "removal_effect", rows, max(max(v for _, v in rows), 1e-12),
                      label=share, width=420)
    return _panel(key, title, _figure(key, chart), f"Markov chain trained as of {_e(as_of)}.")


def segments_section(settings: Settings, window: Window, days: list[dt.date]) -> str:
    key, title = "segment-sizes", "Segment sizes over time"
    sizes = read_table("gold.segment_sizes", settings)
    if sizes is None:
        return _no_data(key, title, "gold.segment_sizes does not exist (run the segments job)")
    rows = segment_members_by_day(sizes, window)
    if not rows:
        return _no_data(key, title, f"no segment runs between {window.first} and {window.last}")
    lines: dict[str, dict[dt.date, float]] = {}
    for segment, day, members in rows:
        lines.setdefault(segment, {})[day] = members
    return _panel(key, title, _figure(key, line_chart(key, title, days, lines, label=lambda v: f"{v:,.0f}")),
                  "Members per segment at each daily run.")


def freshness_section(settings: Settings, window: Window) -> str:
    key, title = "freshness", "Pipeline freshness"
    rows = []
    marks = read_table("gold.high_water_mark", settings)
    if marks is not None and marks.num_rows:
        latest = _query("SELECT MAX(high_water_mark), MAX(logical_date) FROM marks", {"marks": marks}, [])[0]
        rows.append(["batch high-water mark H", _e(latest[0]), f"last published logical date {_e(latest[1])}"])
    else:
        rows.append(["batch high-water mark H", "no data yet", "no batch run has been published"])
    speed = read_table(FRESHNESS_TABLE, settings)
    if speed is not None and speed.num_rows and {"processed_at", "batch_id"} <= set(speed.column_names):
        last = max(speed.to_pylist(), key=lambda r: (r["processed_at"], r["batch_id"]))
        shown = ", ".join(f"{_e(k)} {_e(last[k])}" for k in ("query", "batch_id", "lag_seconds", "clock") if k in last)
        rows.append(["speed layer: last micro-batch", _e(last["processed_at"]), f"{shown} ({FRESHNESS_TABLE})"])
    else:
        rows.append(["speed layer", '<span class="no-data-message">no speed layer data</span>', ""])
    return _panel(key, title, _table(["what", "value", "detail"], rows, "freshness"))


def quality_section(settings: Settings, window: Window) -> str:
    key, title = "data-quality", "Data quality"
    results = read_table("gold.audit_results", settings)
    if results is None:
        return _no_data(key, title, "gold.audit_results does not exist (no audit has run)")
    run_id, suites = latest_audit(results, window)
    if not suites:
        return _no_data(key, title, f"no audit run for a logical date up to {window.last}")
    table = _table(["suite", "passed", "failed", "status"], [
        [_e(suite), passed, failed,
         f'<span class="status {"failed" if failed else "passed"}" data-suite="{_e(suite)}">'
         f'{"failed" if failed else "passed"}</span>'] for suite, passed, failed in suites], "quality")
    return _panel(key, title, table, f"Latest audit run: {_e(run_id)}.")


STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1b1e23;background:#fafafa}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:0 0 8px} h3{font-size:14px}
.panel{background:#fff;border:1px solid #dde;border-radius:6px;padding:14px 18px;margin:14px 0}
.no-data-message{color:#8a5a00;font-style:italic}
.small-multiples{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0} .panel-title{font-weight:600;font-size:13px}
.axis-label,.value-label,.legend{font-size:11px;fill:#333} .axis{stroke:#999}
table{border-collapse:collapse} td,th{border-bottom:1px solid #eee;padding:3px 10px;text-align:left}
.status.passed{color:#1a7f37;font-weight:600} .status.failed{color:#c62828;font-weight:600}
.note{color:#555;font-size:12px;margin:0 0 8px}
"""

# Counts the marks the browser laid out with a non-empty box, per chart: evidence of rendering.
RENDER_CHECK = """
document.addEventListener('DOMContentLoaded', function () {
  var charts = document.querySelectorAll('figure.chart');
  charts.forEach(function (chart) {
    var visible = 0;
    chart.querySelectorAll('.mark').forEach(function (mark) {
      var box = mark.getBBox();
      if (box.width > 0 && box.height > 0) { visible += 1; }
    });
    chart.setAttribute('data-visible-marks', String(visible));
  });
  document.documentElement.setAttribute('data-rendered-charts', String(charts.length));
});
"""


def build_report(settings: Settings, report_date: dt.date, days: int = 30) -> str:
    window = Window(report_date - dt.timedelta(days=days - 1), report_date)
    day_list = [window.first + dt.timedelta(days=i) for i in range(days)]
    generated = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
    sections = [
        attribution_section(settings, window),
        campaign_section(settings, window, day_list),
        markov_section(settings, window),
        segments_section(settings, window, day_list),
        freshness_section(settings, window),
        quality_section(settings, window),
    ]
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>touchpoint report {report_date.isoformat()}</title>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<style>{STYLE}</style></head><body>"
        f"<h1>touchpoint analyst report: {report_date.isoformat()}</h1>"
        f'<p class="note">Window {window.first} to {window.last} (UTC dates). Generated {generated} from '
        f"{_e(settings.lake_uri)}.</p>"
        + "".join(sections)
        + f"<script>{RENDER_CHECK}</script></body></html>"
    )


def report_path(settings: Settings, report_date: dt.date) -> Path:
    folder = (settings.reports_dir or settings.state_dir / "reports").resolve()
    return folder / f"report-{report_date.isoformat()}.html"


def write_report(settings: Settings, report_date: dt.date, days: int = 30) -> Path:
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    path = report_path(settings, report_date)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".html.tmp")
    partial.write_text(build_report(settings, report_date, days), encoding="utf-8")
    partial.replace(path)  # readers never see half a page
    return path
