"""A stream's report of one period: volumes, anomalies, trend and a short forecast, as JSON and as one
self-contained HTML page with matplotlib charts (PNG embedded as base64, so the page needs nothing else),
both written to the object store under `reports/<tenant>/<stream>/<report id>.{json,html}`.

It reads what the stream worker stored (core/streams/history.py: closed window aggregates and anomalous
verdicts); `build_report` works on those records alone, so it is checked without any service.
"""
from __future__ import annotations

import base64
import html
import io
import json
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import select

from cortex_tasks.core.errors import CortexError
from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.storage.db import session_scope
from cortex_tasks.core.storage.object_store import get_object_store
from cortex_tasks.core.storage.tables import StreamDeclaration, StreamReport
from cortex_tasks.core.streams.history import (
    VerdictRecord,
    WindowAggregate,
    verdicts_between,
    windows_between,
)
from cortex_tasks.core.tenancy import current_tenant

log = logging.getLogger(__name__)
TOP = 10
MIN_FORECAST_POINTS = 8  # ARIMA on fewer windows than this says nothing worth printing


@dataclass(frozen=True)
class ReportInput:
    stream: str
    start: datetime
    end: datetime
    windows: list[WindowAggregate]
    anomalies: list[VerdictRecord]


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def volume_series(windows: list[WindowAggregate]) -> tuple[list[datetime], list[int], list[float | None]]:
    """Events and the mean value per window start, summed over keys (windows overlap: each event is
    counted in every window that holds it, as the stream's own aggregates count it)."""
    counts: dict[datetime, int] = defaultdict(int)
    totals: dict[datetime, float] = defaultdict(float)
    for window in windows:
        counts[window.window_start] += window.count
        totals[window.window_start] += window.total
    starts = sorted(counts)
    return starts, [counts[s] for s in starts], [totals[s] / counts[s] if counts[s] else None for s in starts]


def trend_of(starts: list[datetime], counts: list[int]) -> dict[str, Any]:
    """A least-squares line through the events per window: its slope per hour, and the change it implies
    over the period relative to the mean (a plain, robust-enough summary of direction)."""
    if len(counts) < 3:
        return {"direction": "unknown", "slope_per_hour": None, "relative_change": None, "points": len(counts)}
    hours = np.array([(s - starts[0]).total_seconds() / 3600 for s in starts])
    slope, _ = np.polyfit(hours, np.asarray(counts, dtype=float), 1)
    mean = float(np.mean(counts))
    change = float(slope * (hours[-1] - hours[0]) / mean) if mean else 0.0
    direction = "rising" if change > 0.1 else "falling" if change < -0.1 else "flat"
    return {"direction": direction, "slope_per_hour": round(float(slope), 4), "relative_change": round(change, 4),
            "points": len(counts)}


def forecast_of(starts: list[datetime], counts: list[int], points: int) -> dict[str, Any]:
    """The next `points` windows' volume from the catalogue's ARIMA forecaster (runtime/models/timeseries)."""
    if len(counts) < MIN_FORECAST_POINTS:
        return {"method": "arima", "available": False,
                "reason": f"{len(counts)} windows; a forecast needs at least {MIN_FORECAST_POINTS}"}
    from cortex_tasks.core.validation.timeseries import Series, SeriesParams
    from cortex_tasks.runtime.models.timeseries import forecast

    step = (starts[-1] - starts[0]) / (len(starts) - 1)
    try:
        # Undated steps: window starts are regular by construction, and ARIMA needs no calendar.
        answer = forecast(Series([float(count) for count in counts]), SeriesParams(method="arima", horizon=points))
    except (CortexError, ValueError, ArithmeticError, np.linalg.LinAlgError) as exc:
        return {"method": "arima", "available": False, "reason": str(exc)}
    stamps = [_iso(starts[-1] + step * (index + 1)) for index in range(points)]
    return {"method": "arima", "available": True, "window_starts": stamps,
            "yhat": [max(0.0, value) for value in answer["yhat"]],
            "yhat_lower": [max(0.0, value) for value in answer["yhat_lower"]],
            "yhat_upper": answer["yhat_upper"], "order": answer.get("order"), "period": answer.get("period")}


def build_report(given: ReportInput, forecast_points: int) -> dict[str, Any]:
    starts, counts, means = volume_series(given.windows)
    per_key: Counter[str] = Counter()
    for window in given.windows:
        per_key[window.key] += window.count
    by_detector = Counter(verdict.detector for verdict in given.anomalies)
    by_key = Counter(verdict.key for verdict in given.anomalies)
    flagged_events = len({verdict.event_id for verdict in given.anomalies})
    strongest = sorted(given.anomalies, key=lambda verdict: -(abs(verdict.score) if verdict.score is not None else 0))
    return {
        "stream": given.stream,
        "period": {"from": _iso(given.start), "to": _iso(given.end)},
        "generated_at": _iso(datetime.now(UTC)),
        "volumes": {
            "windows": len(starts),
            "keys": len(per_key),
            "events_in_windows": int(sum(counts)),
            "series": [{"window_start": _iso(s), "events": c, "mean": round(m, 6) if m is not None else None}
                       for s, c, m in zip(starts, counts, means)],
            "top_keys": [{"key": key, "events": count} for key, count in per_key.most_common(TOP)],
        },
        "anomalies": {
            "verdicts": len(given.anomalies),
            "events": flagged_events,
            "by_detector": dict(by_detector.most_common()),
            "top_keys": [{"key": key, "anomalies": count} for key, count in by_key.most_common(TOP)],
            "strongest": [{"event_id": v.event_id, "key": v.key, "detector": v.detector, "score": v.score,
                           "value": v.value, "expected": v.expected, "event_time": _iso(v.event_time)}
                          for v in strongest[:20]],
        },
        "trend": trend_of(starts, counts),
        "forecast": forecast_of(starts, counts, forecast_points),
    }


# --- HTML ---


def _chart(draw: Any) -> str:
    import matplotlib

    matplotlib.use("Agg")  # no display on a worker
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(9, 3.2), dpi=100)
    try:
        draw(axes)
        figure.autofmt_xdate()
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
    finally:
        pyplot.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _volume_chart(data: dict[str, Any], anomalies: list[VerdictRecord]) -> str:
    series = data["volumes"]["series"]
    forecast = data["forecast"]

    def draw(axes: Any) -> None:
        starts = [datetime.fromisoformat(point["window_start"]) for point in series]
        axes.plot(starts, [point["events"] for point in series], label="events per window", color="#1976d2")
        if forecast.get("available"):
            future = [datetime.fromisoformat(stamp) for stamp in forecast["window_starts"]]
            axes.plot(future, forecast["yhat"], "--", color="#6a1b9a", label="forecast (ARIMA)")
            axes.fill_between(future, forecast["yhat_lower"], forecast["yhat_upper"], color="#6a1b9a", alpha=0.15)
        if anomalies and starts:
            per_start = Counter(_bucket(verdict.event_time, starts) for verdict in anomalies)
            marked = [start for start in starts if per_start.get(start)]
            heights = {point_start: point["events"] for point_start, point in zip(starts, series)}
            axes.scatter(marked, [heights[start] for start in marked], color="#d32f2f", zorder=3,
                         label="windows with anomalies")
        axes.set_ylabel("events")
        axes.legend(loc="upper left", fontsize=8)

    return _chart(draw)


def _bucket(moment: datetime, starts: list[datetime]) -> datetime:
    index = int(np.searchsorted(np.array([s.timestamp() for s in starts]), moment.timestamp(), side="right")) - 1
    return starts[max(index, 0)]


def _detector_chart(data: dict[str, Any]) -> str:
    by_detector = data["anomalies"]["by_detector"]

    def draw(axes: Any) -> None:
        axes.bar(list(by_detector), list(by_detector.values()), color="#d32f2f")
        axes.set_ylabel("anomalous verdicts")

    return _chart(draw)


def render_html(data: dict[str, Any], anomalies: list[VerdictRecord]) -> str:
    escape = html.escape
    volumes, found, trend, forecast = data["volumes"], data["anomalies"], data["trend"], data["forecast"]
    rows = "".join(f"<tr><td>{escape(item['key'])}</td><td>{item['events']}</td></tr>" for item in volumes["top_keys"])
    strongest = "".join(
        f"<tr><td>{escape(item['event_time'])}</td><td>{escape(item['key'])}</td><td>{escape(item['detector'])}</td>"
        f"<td>{item['score'] if item['score'] is not None else ''}</td>"
        f"<td>{item['value'] if item['value'] is not None else ''}</td></tr>" for item in found["strongest"])
    charts = f'<img alt="events per window" src="data:image/png;base64,{_volume_chart(data, anomalies)}">'
    if found["by_detector"]:
        charts += f'<img alt="anomalies per detector" src="data:image/png;base64,{_detector_chart(data)}">'
    forecast_text = (f"next {len(forecast['yhat'])} windows: " + ", ".join(f"{value:.0f}" for value in forecast["yhat"])
                     if forecast.get("available") else f"not available ({escape(forecast.get('reason', ''))})")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Stream report: {escape(data['stream'])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:60em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.2em .6em;text-align:left}}img{{max-width:100%;display:block;margin:1em 0}}</style>
</head><body>
<h1>Stream report: {escape(data['stream'])}</h1>
<p>{escape(data['period']['from'])} to {escape(data['period']['to'])} (generated {escape(data['generated_at'])})</p>
<h2>Volumes</h2>
<p>{volumes['windows']} windows, {volumes['keys']} keys, {volumes['events_in_windows']} events counted in windows.</p>
<h2>Anomalies</h2>
<p>{found['events']} events flagged ({found['verdicts']} anomalous verdicts).</p>
<h2>Trend and forecast</h2>
<p>Trend: {escape(trend['direction'])}{f", {trend['slope_per_hour']} events per window per hour" if trend['slope_per_hour'] is not None else ''}.
Forecast: {forecast_text}.</p>
{charts}
<h2>Busiest keys</h2><table><tr><th>key</th><th>events</th></tr>{rows}</table>
<h2>Strongest anomalies</h2><table><tr><th>time</th><th>key</th><th>detector</th><th>score</th><th>value</th></tr>{strongest}</table>
</body></html>
"""


# --- writing one report ---


def object_names(tenant: str, stream: str, report_id: str) -> tuple[str, str]:
    base = f"reports/{tenant}/{stream}/{report_id}"
    return f"{base}.json", f"{base}.html"


def write_report(report_id: str) -> dict[str, Any]:
    """Build and store one queued report (in its tenant); the row says ready with its objects, or failed
    with why. Idempotent: a ready report is left as it is."""
    tenant = current_tenant()
    with session_scope() as session:
        row = session.execute(select(StreamReport).where(StreamReport.id == report_id)).scalar()
        if row is None or row.status == "ready":
            return {"report_id": report_id, "status": "ready" if row else "unknown"}
        row.status = "running"
        stream, start, end = row.stream, row.period_start, row.period_end
    try:
        given = ReportInput(stream, start, end, windows_between(stream, start, end),
                            verdicts_between(stream, start, end, anomalous_only=True))
        data = build_report(given, get_settings().alerts.report_forecast_points)
        data["report_id"] = report_id
        page = render_html(data, given.anomalies)
        json_name, html_name = object_names(tenant, stream, report_id)
        store = get_object_store()
        store.put(json_name, json.dumps(data).encode(), "application/json")
        store.put(html_name, page.encode(), "text/html; charset=utf-8")
    except Exception as exc:
        log.exception("report %s of stream %s failed", report_id, stream)
        with session_scope() as session:
            row = session.execute(select(StreamReport).where(StreamReport.id == report_id)).scalar_one()
            row.status, row.error, row.finished_at = "failed", f"{type(exc).__name__}: {exc}"[:2000], datetime.now(UTC)
        raise
    summary = {"windows": data["volumes"]["windows"], "events_in_windows": data["volumes"]["events_in_windows"],
               "anomalous_events": data["anomalies"]["events"], "trend": data["trend"]["direction"],
               "forecast": data["forecast"].get("available", False)}
    with session_scope() as session:
        row = session.execute(select(StreamReport).where(StreamReport.id == report_id)).scalar_one()
        row.status, row.json_key, row.html_key, row.summary = "ready", json_name, html_name, summary
        row.finished_at, row.error = datetime.now(UTC), None
    return {"report_id": report_id, "status": "ready", **summary}


def period_ending(now: datetime, period_seconds: float) -> tuple[datetime, datetime]:
    """The last whole period before `now`, aligned on multiples of the period since the epoch (a daily
    report covers one UTC day)."""
    end_ts = (now.timestamp() // period_seconds) * period_seconds
    end = datetime.fromtimestamp(end_ts, UTC)
    return end - timedelta(seconds=period_seconds), end


def due_streams(start: datetime, end: datetime) -> list[tuple[str, str]]:
    """(tenant, stream) of every declared stream without a report of this period (called for all
    tenants)."""
    with session_scope() as session:
        streams = session.execute(select(StreamDeclaration.tenant, StreamDeclaration.name)).all()
        done = set(session.execute(select(StreamReport.tenant, StreamReport.stream).where(
            StreamReport.period_start == start, StreamReport.period_end == end,
            StreamReport.trigger == "schedule")).all())
    return [(tenant, name) for tenant, name in streams if (tenant, name) not in done]
