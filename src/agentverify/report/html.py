"""``reports/results.html``: the run in one self-contained file, in place of Grafana.

What an SRE reading a red CI run needs, in the order they need it:

1. the header: the first failing gate (scenario, gate, measured figure, threshold)
   when the run failed, then environment, backend, agent versions, run duration and
   "N of M scenarios passed";
2. the dashboard's four panels (request rate, p95 latency, error rate, token usage)
   drawn from Prometheus range queries over the whole run
   (:mod:`agentverify.report.panels`), with the scenarios as labelled bands and the
   timeline's rollouts, faults, alerts, drills, ... as labelled markers;
3. every scenario, failed ones first and open: gates (failures first, measured beside
   threshold), its series over time with their thresholds (probe latency and failed
   requests, load rps / p95 / users with the SLO lines), cost and budget use, steps
   with their timings, its error and the failing service's last log lines;
4. with ``compare``, every gate beside another run's figure and the change.

Plots are SVG written by :mod:`agentverify.report.svg` (no JavaScript, no fonts, nothing
from the network): real axes with units, elapsed time below and UTC above, bands and
annotations, a few kB each. Every id in a figure carries the figure's prefix, so several
SVGs live in one document. Rendering reads only the journal's JSON and is exact, so a
saved ``results.json`` renders byte for byte as the live run did (``agentverify report``).

Example:
    >>> write_html(journal, Path("reports/results.html"))                 # doctest: +SKIP
    >>> html = render_html(json.loads(Path("reports/results.json").read_text()))
"""

from __future__ import annotations

import html
import math
import os
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from agentverify.errors import ScenarioSchemaError
from agentverify.gates import Gate, format_value
from agentverify.report.journal import RunJournal
from agentverify.report.summary import first_failure, run_overview
from agentverify.report.svg import Chart, clock, points_of

__all__ = ["write_html", "render_html"]

e = html.escape

_CSS = """
:root{--red:#c5221f;--green:#137333;--amber:#b06000;--ink:#202124;--muted:#5f6368;--line:#dadce0}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;
 color:var(--ink);background:#f8f9fa}
main{max-width:1500px;margin:0 auto;padding:16px 24px 48px}
header{background:#fff;border:1px solid var(--line);border-radius:8px;padding:14px 18px;margin-bottom:18px}
.first-failure{background:#fce8e6;border-left:6px solid var(--red);padding:10px 14px;margin:-4px 0 12px;
 font-size:1.15em;border-radius:4px}
.first-failure b{color:var(--red)}
.all-passed{background:#e6f4ea;border-left:6px solid var(--green);padding:10px 14px;margin:-4px 0 12px;
 font-size:1.15em;border-radius:4px}
h1{font-size:1.35em;margin:.2em 0 .4em} h2{font-size:1.15em;margin:1.4em 0 .5em}
h3{font-size:1em;margin:1em 0 .4em;color:var(--muted)}
.facts{display:flex;flex-wrap:wrap;gap:6px 22px;color:var(--muted)} .facts b{color:var(--ink)}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-weight:600;font-size:.85em;
 color:#fff;vertical-align:1px}
.pass{color:var(--green)} .fail{color:var(--red);font-weight:600}
.badge.pass{background:var(--green);color:#fff} .badge.fail{background:var(--red);color:#fff}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:12px}
.grid.small{grid-template-columns:repeat(auto-fill,minmax(420px,1fr))}
figure{margin:0;background:#fff;border:1px solid var(--line);border-radius:6px;padding:6px}
figure svg{width:100%;height:auto;display:block}
figcaption{font-size:.8em;color:var(--muted);padding:0 4px;overflow-wrap:anywhere}
details.scenario{background:#fff;border:1px solid var(--line);border-radius:8px;margin:10px 0;padding:0 14px}
details.scenario[open]{padding-bottom:12px}
details.scenario.failed{border-left:6px solid var(--red)}
details.scenario.passed{border-left:6px solid var(--green)}
details.scenario>summary{cursor:pointer;padding:10px 0;font-size:1.05em}
summary .meta{color:var(--muted);font-size:.9em}
table{border-collapse:collapse;margin:.3em 0;background:#fff} td,th{border:1px solid var(--line);
 padding:3px 8px;text-align:left;vertical-align:top} th{background:#f1f3f4;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.failrow td{background:#fce8e6}
.err{background:#fce8e6;border:1px solid #f4c7c3;padding:.6em;white-space:pre-wrap;
 font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:.9em;border-radius:4px}
pre.log{background:#202124;color:#e8eaed;padding:.6em;overflow:auto;font-size:.8em;max-height:22em;border-radius:4px}
.bar{position:relative;height:12px;min-width:240px;background:#f1f3f4;border-radius:2px}
.bar span{position:absolute;top:0;bottom:0;background:#1a73e8;border-radius:2px;min-width:2px}
.bar span.failed{background:var(--red)}
.budget{height:14px;width:320px;background:#f1f3f4;border-radius:3px;overflow:hidden;display:inline-block;
 vertical-align:-2px} .budget span{display:block;height:100%;background:#1a73e8}
.budget span.over{background:var(--red)}
.note{color:var(--muted);font-style:italic}
.trend-worse{color:var(--red);font-weight:600} .trend-better{color:var(--green)}
.trend-new,.trend-gone{color:var(--amber)}
footer{color:var(--muted);font-size:.8em;margin-top:2em}
.inconclusive{color:var(--amber);font-weight:600}
"""

# colours per timeline kind (Google's palette: readable on white, distinct when printed)
_KIND_COLOURS = {"rollout": "#e8710a", "fault": "#c5221f", "alert": "#d93025",
                 "notify": "#9334e6", "drill": "#1967d2", "runbook": "#188038",
                 "kill": "#202124"}
_SERIES_COLOURS = ["#1a73e8", "#e8710a", "#188038", "#9334e6", "#c5221f", "#12b5cb", "#f9ab00",
                   "#5f6368"]
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # colour codes in service logs


# ------------------------------------------------------------------------------ figures


def _bands(chart: Chart, events: Iterable[dict[str, Any]], origin: float) -> None:
    """Scenario bands (green passed, red failed) and labelled timeline events."""
    span = chart.span
    narrow = span * 0.12
    for ev in events:
        x0 = ev["t"] - origin
        x1 = (ev["end"] - origin) if ev.get("end") is not None else None
        if x0 > span or (x1 if x1 is not None else x0) < 0:
            continue
        if ev["kind"] == "scenario":
            failed = ev.get("detail", {}).get("passed") is False
            chart.band(x0, x1 or x0, fill="#fce8e6" if failed else "#e6f4ea")
            chart.vline(x0, colour="#bdc1c6", width=0.6, behind=True)
            chart.label(x0, ev["label"], colour="#c5221f" if failed else "#137333",
                        vertical=(x1 or x0) - x0 < narrow, size=8.5)
            continue
        colour = _KIND_COLOURS.get(ev["kind"], "#5f6368")
        if x1 is not None and x1 - x0 > span * 0.004:
            chart.band(x0, x1, fill=colour, opacity=0.16)
        chart.vline(x0, colour=colour, dashed=True)
        chart.label(x0, f"{ev['kind']}: {ev['label']}", colour=colour, vertical=True,
                    down_from=0.2, size=8)


def _y_top(values: Iterable[float | None], floor: float = 0.0, headroom: float = 1.18) -> float:
    """The top of a value axis: the largest value (or ``floor``) and some room above."""
    top = max([v for v in values if v is not None and math.isfinite(v)] + [floor, 0.0])
    return top * headroom if top > 0 else 1.0


def _panel_svg(index: int, title: str, panel: dict[str, Any], timeline: list[dict[str, Any]],
               origin: float, span: float) -> str:
    unit = panel.get("unit", "")
    values = [v for s in panel.get("series", []) for _t, v in s.get("points", [])]
    chart = Chart(f"panel{index}", title=f"{title} ({unit})" if unit else title,
                  y_label=unit or "value", span=span, y_max=_y_top(values),
                  x_label="elapsed since run start (m:ss)", origin=origin,
                  y_format=lambda v: format_value(float(v)))
    _bands(chart, [ev for ev in timeline if ev["kind"] != "step"], origin)
    drawn = 0
    for i, s in enumerate(panel.get("series", [])):
        if any(v is not None and math.isfinite(v) for _t, v in s.get("points", [])):
            chart.line(points_of(s["points"], -origin),
                       colour=_SERIES_COLOURS[i % len(_SERIES_COLOURS)],
                       label=s.get("legend") or "series")
            drawn += 1
    if not drawn:
        chart.note("no data in this run")
    return chart.render(label=f"{title} over the run")


def _gate_threshold(gates: list[dict[str, Any]], name: str | None) -> tuple[float | None, str]:
    for g in gates:
        if g["name"] == name:
            try:
                gate = Gate.parse(name, g["threshold"])
            except ScenarioSchemaError:
                return None, ""
            value = gate.value
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value), f"gate {name} {g['threshold']}"
    return None, ""


def _series_svg(prefix: str, name: str, series: dict[str, Any], scenario: dict[str, Any],
                events: list[dict[str, Any]]) -> str:
    unit = series.get("unit", "")
    start = scenario.get("started")
    t0 = series.get("t0")
    shift = (t0 - start) if (t0 is not None and start is not None) else 0.0
    pts = points_of(series.get("points", []), shift)
    threshold = series.get("threshold")
    label = f"{series.get('threshold_label') or 'threshold'} {format_value(threshold)}"
    if threshold is None:
        threshold, label = _gate_threshold(scenario.get("gates", []), series.get("gate"))
    if threshold is not None and not math.isfinite(threshold):
        threshold = None  # e.g. a gate "<= inf": no line to draw
    span = max(scenario.get("seconds") or 0.0, max((t for t, _v in pts), default=0.0), 1.0)
    chart = Chart(prefix, title=f"{name} ({unit})" if unit and unit != name else name,
                  y_label=unit or "value", span=span,
                  y_max=_y_top((v for _t, v in pts), threshold or 0.0, 1.15),
                  x_label="elapsed since scenario start (m:ss)", origin=start, width=460,
                  height=250, y_format=lambda v: format_value(float(v)), title_size=12)
    if start is not None:
        _bands(chart, events, start)
    if unit.startswith("failed"):
        chart.bars(pts, colour="#c5221f", label=name)
    elif len(pts) > 200:  # one point per request: dots show spread and outliers
        chart.dots(pts, colour="#1a73e8", label=name)
    else:
        chart.line(pts, colour="#1a73e8", label=name, markers=True)
    if threshold is not None:
        chart.hline(threshold, colour="#c5221f", label=label)
    return chart.render(label=f"{name} over the scenario", legend=False)


# ------------------------------------------------------------------------------ sections


def _header(data: dict[str, Any]) -> str:
    ov = run_overview(data)
    failure = first_failure(data)
    out = ["<header>"]
    if failure is not None:
        if failure.gate is not None:
            out.append(
                f'<div class="first-failure" id="first-failure"><b>FAILED</b> — first failing '
                f'gate: <b class="scenario">{e(failure.scenario)}</b> › '
                f'<b class="gate">{e(failure.gate)}</b>: measured '
                f'<b class="measured">{e(format_value(failure.measured))}</b>, threshold '
                f'<b class="threshold">{e(str(failure.threshold))}</b></div>')
        else:
            out.append(f'<div class="first-failure" id="first-failure"><b>FAILED</b> — '
                       f'<b class="scenario">{e(failure.scenario)}</b>: '
                       f'{e(str(failure.error).splitlines()[0])}</div>')
    elif ov["verdict"]:
        out.append('<div class="all-passed" id="first-failure"><b>PASSED</b> — every gate of '
                   'every scenario held</div>')
    verdict = "PASSED" if ov["verdict"] else "FAILED"
    out.append(f'<h1>agentverify — {e(ov["env"])} on {e(ov["backend"])}: '
               f'<span class="badge {"pass" if ov["verdict"] else "fail"}">{verdict}</span> '
               f'{ov["passed"]} of {ov["total"]} scenarios passed</h1>')
    facts = [("environment", ov["env"]), ("backend", ov["backend"]),
             ("agent versions", ov["versions"]), ("started", ov["started"]),
             ("run duration", f"{ov['duration_s']:.1f} s ({clock(ov['duration_s'])})"),
             ("scenarios passed", f"{ov['passed']} of {ov['total']}")]
    run_id = (data.get("stack") or {}).get("run_id")
    if run_id:
        facts.append(("run", run_id))
    out.append('<div class="facts">' + "".join(f"<span>{e(k)}: <b>{e(str(v))}</b></span>"
                                               for k, v in facts) + "</div>")
    out.append("</header>")
    return "\n".join(out)


def _run_span(data: dict[str, Any]) -> tuple[float, float] | None:
    times = [p[0] for panel in data.get("panels", {}).values()
             for s in panel.get("series", []) for p in s.get("points", [])]
    times += [ev["t"] for ev in data.get("timeline", [])]
    times += [ev["end"] for ev in data.get("timeline", []) if ev.get("end") is not None]
    if not times:
        return None
    origin = min(times)
    return origin, max(max(times) - origin, 1.0)


def _caption(panel: dict[str, Any]) -> str:
    query, expr = panel.get("query") or panel.get("expr", ""), panel.get("expr", "")
    text = f"{e(query)} · step {format_value(panel.get('step', 0.0))} s"
    if query != expr:
        text += f" · dashboard: {e(expr)} (rate window sized to the run)"
    return text


def _dashboard(data: dict[str, Any]) -> str:
    out = ['<section id="dashboard"><h2>Dashboard: the seed\'s panels over the run</h2>']
    panels = data.get("panels") or {}
    span = _run_span(data)
    if not panels or span is None:
        why = data.get("panels_error") or "captured at the end of a run, before its stack is torn down"
        out.append(f'<p class="note">No dashboard panels in this journal ({e(why)}).</p></section>')
        return "\n".join(out)
    origin, width = span
    timeline = data.get("timeline", [])
    out.append('<div class="grid">')
    for i, (title, panel) in enumerate(panels.items()):
        points = sum(len(s.get("points", [])) for s in panel.get("series", []))
        out.append(f'<figure class="panel" data-panel="{e(title)}" data-points="{points}">'
                   f"{_panel_svg(i, title, panel, timeline, origin, width)}"
                   f"<figcaption>{_caption(panel)}</figcaption></figure>")
    out.append("</div>")
    if data.get("panels_error"):
        out.append(f'<p class="note">{e(data["panels_error"])}</p>')
    out.append("</section>")
    return "\n".join(out)


def _timeline_table(data: dict[str, Any]) -> str:
    events = [ev for ev in data.get("timeline", []) if ev["kind"] not in ("step",)]
    if not events:
        return ""
    origin = data.get("started_unix") or events[0]["t"]
    rows = []
    for ev in events:
        dur = f"{ev['end'] - ev['t']:.1f} s" if ev.get("end") is not None else ""
        detail = ", ".join(f"{k}={format_value(v)}" for k, v in (ev.get("detail") or {}).items()
                           if v is not None)
        rows.append(f"<tr><td class=num>{clock(ev['t'] - origin)}</td>"
                    f"<td>{time.strftime('%H:%M:%S', time.gmtime(ev['t']))}</td>"
                    f"<td>{e(ev['kind'])}</td><td>{e(ev['label'])}</td>"
                    f"<td>{e(ev.get('scenario') or '')}</td><td class=num>{dur}</td>"
                    f"<td>{e(detail)}</td></tr>")
    return ('<details id="timeline"><summary><b>Timeline</b> '
            f'({len(events)} events: scenarios, rollouts, faults, alerts, …)</summary>'
            "<table><tr><th>elapsed</th><th>UTC</th><th>kind</th><th>what</th><th>scenario</th>"
            "<th>lasted</th><th>detail</th></tr>" + "".join(rows) + "</table></details>")


def _compare(data: dict[str, Any], other: dict[str, Any], other_label: str) -> str:
    from agentverify.report.compare import compare_runs, worse_first

    rows = compare_runs(data, other)
    worse = sum(1 for r in rows if r.trend == "worse")
    out = [f'<section id="compare"><h2>Compared with {e(other_label)} '
           f'<span class="meta">({worse} of {len(rows)} figures worse)</span></h2>',
           "<table><tr><th>scenario</th><th>figure</th><th>threshold</th><th>this run</th>"
           "<th>other run</th><th>change</th><th>trend</th></tr>"]
    for r in worse_first(rows):
        out.append(f"<tr><td>{e(r.scenario)}</td><td>{e(r.name)}</td>"
                   f"<td>{e(r.threshold or 'not gated')}</td>"
                   f"<td class=num>{e(format_value(r.measured))}</td>"
                   f"<td class=num>{e(format_value(r.other))}</td>"
                   f"<td class=num>{e(r.change_text)}</td>"
                   f'<td class="trend-{r.trend}">{r.trend}</td></tr>')
    out.append("</table></section>")
    return "\n".join(out)


def _gates_table(gates: list[dict[str, Any]]) -> str:
    if not gates:
        return '<p class="note">No gates.</p>'
    ordered = sorted(gates, key=lambda g: g["passed"])  # stable: failures first, in order

    def verdict(g: dict[str, Any]) -> tuple[str, str]:
        # an inconclusive gate is never shown as passed, even where it is allowed
        word = g.get("verdict") or ("pass" if g["passed"] else "fail")
        if word == "inconclusive":
            return "inconclusive", "INCONCLUSIVE" + (f": {g['reason']}" if g.get("reason") else "")
        return ("pass", "pass") if word == "pass" else ("fail", "FAIL")

    rows = "".join(
        f'<tr class="{"" if g["passed"] else "failrow"}"><td>{e(g["name"])}</td>'
        f'<td class=num>{e(format_value(g["measured"]))}</td><td>{e(g["threshold"])}</td>'
        f'<td class="{verdict(g)[0]}">{e(verdict(g)[1])}'
        f"</td></tr>" for g in ordered)
    return ("<table class=gates><tr><th>gate</th><th>measured</th><th>threshold</th>"
            f"<th>verdict</th></tr>{rows}</table>")


def _cost(facts: dict[str, Any]) -> str:
    names = [k for k in facts if k.startswith(("cost_", "budget_", "metric_cost"))
             and facts[k] is not None and not isinstance(facts[k], str)]
    if not any(k.startswith("cost_") for k in names):
        return ""
    rows = "".join(f"<tr><td>{e(k)}</td><td class=num>{e(_usd(k, facts[k]))}</td></tr>"
                   for k in sorted(names))
    out = ["<h3>Cost</h3>", f"<table>{rows}</table>"]
    cost, budget = facts.get("cost_usd"), facts.get("budget_usd")
    if isinstance(cost, (int, float)) and isinstance(budget, (int, float)) and budget > 0:
        used = cost / budget
        out.append(f'<p>budget use: <span class="budget"><span class="{"over" if used > 1 else ""}" '
                   f'style="width:{min(used, 1.0) * 100:.1f}%"></span></span> '
                   f"<b>{used:.1%}</b> of ${budget:,.2f} (spent ${cost:,.4f})</p>")
    return "\n".join(out)


def _usd(name: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return format_value(value)
    if name.endswith("usd"):
        return f"${value:,.6f}" if abs(value) < 0.01 else f"${value:,.4f}"
    return format_value(value)


def _steps(s: dict[str, Any]) -> str:
    steps = s.get("steps", [])
    if not steps:
        return ""
    start = s.get("started")
    span = max(s.get("seconds") or 0.0, sum(st["seconds"] for st in steps), 0.001)
    rows = []
    for st in steps:
        offset = (st["started"] - start) if (st.get("started") is not None and start is not None) \
            else None
        left = (offset or 0.0) / span * 100
        width = st["seconds"] / span * 100
        cls = "failed" if st.get("error") else ""
        rows.append(
            f'<tr class="{"failrow" if st.get("error") else ""}"><td class=num>{st["index"]}</td>'
            f"<td>{e(st['type'])}</td>"
            f"<td class=num>{'' if offset is None else f'+{offset:.1f} s'}</td>"
            f"<td class=num>{st['seconds']:.2f} s</td>"
            f'<td><div class="bar"><span class="{cls}" style="left:{left:.1f}%;'
            f'width:{width:.1f}%"></span></div></td>'
            f"<td>{e(st.get('error') or '')}</td></tr>")
    return ("<h3>Steps</h3><table><tr><th>#</th><th>step</th><th>starts</th><th>took</th>"
            "<th>timing</th><th>error</th></tr>" + "".join(rows) + "</table>")


def _scenario_section(index: int, s: dict[str, Any], events: list[dict[str, Any]]) -> str:
    ok = bool(s.get("passed"))
    failed_gates = [g for g in s.get("gates", []) if not g["passed"]]
    meta = (f"{len(failed_gates)} of {len(s.get('gates', []))} gates failed" if not ok
            else f"{len(s.get('gates', []))} gates held")
    out = [f'<details class="scenario {"passed" if ok else "failed"}" id="scenario-{index}"'
           f'{"" if ok else " open"} data-scenario="{e(s["name"])}">',
           f'<summary><span class="badge {"pass" if ok else "fail"}">'
           f'{"PASSED" if ok else "FAILED"}</span> <b>{e(s["name"])}</b> '
           f'<span class="meta">— {meta} · {s.get("seconds", 0.0):.1f} s · '
           f'{e(Path(s.get("file") or "").name)}</span></summary>']
    if s.get("error"):
        out.append(f'<h3>Error</h3><div class="err">{e(s["error"])}</div>')
    out.append("<h3>Gates</h3>" + _gates_table(s.get("gates", [])))
    series = s.get("series") or {}
    if series:
        out.append('<h3>Over time</h3><div class="grid small">')
        for j, (name, ser) in enumerate(series.items()):
            if not ser.get("points"):
                continue
            out.append(f'<figure class="series" data-series="{e(name)}">'
                       f"{_series_svg(f's{index}-{j}', name, ser, s, events)}</figure>")
        out.append("</div>")
    out.append(_cost(s.get("facts", {})))
    out.append(_steps(s))
    for instance, text in (s.get("logs") or {}).items():
        text = _ANSI.sub("", text).strip() or "(no output)"
        out.append(f"<h3>{e(instance)}: last log lines</h3><pre class=log>{e(text)}</pre>")
    facts = s.get("facts") or {}
    if facts:
        rows = "".join(f"<tr><td>{e(k)}</td><td>{e(format_value(v))}</td></tr>"
                       for k, v in sorted(facts.items()))
        out.append(f"<details><summary>all {len(facts)} facts</summary><table>{rows}</table>"
                   "</details>")
    out.append("</details>")
    return "\n".join(out)


# ------------------------------------------------------------------------------ public


def render_html(data: dict[str, Any], *, compare: dict[str, Any] | None = None,
                compare_label: str = "the other run") -> str:
    """The report page of a journal's JSON (:meth:`RunJournal.to_json`, or a saved
    ``results.json``); with ``compare``, a section beside that other run's journal.

    Example:
        >>> page = render_html(json.loads(Path("reports/results.json").read_text()))
        ...                                                                # doctest: +SKIP
    """
    scenarios = list(enumerate(data.get("scenarios", [])))
    ordered = [x for x in scenarios if not x[1].get("passed")] + \
        [x for x in scenarios if x[1].get("passed")]
    timeline = data.get("timeline", [])
    title = (f"agentverify {data.get('env', '?')}: "
             f"{'PASSED' if run_overview(data)['verdict'] else 'FAILED'}")
    out = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{e(title)}</title><style>{_CSS}</style></head><body><main>",
           _header(data)]
    if compare is not None:
        out.append(_compare(data, compare, compare_label))
    out.append(_dashboard(data))
    out.append(_timeline_table(data))
    out.append("<h2>Scenarios <span class=\"meta\">(failed first)</span></h2>")
    for i, s in ordered:
        events = [ev for ev in timeline if ev.get("scenario") == s["name"]
                  and ev["kind"] not in ("step", "scenario")]
        out.append(_scenario_section(i, s, events))
    out.append(f"<footer>agentverify report · journal started {e(str(data.get('started', '')))}"
               " · every figure on this page comes from the run's journal (results.json)"
               "</footer></main></body></html>")
    return "\n".join(x for x in out if x) + "\n"


def write_html(journal: RunJournal | dict[str, Any], path: Path,
               redact: Callable[[Any], Any] = lambda d: d, *,
               compare: dict[str, Any] | None = None, compare_label: str = "the other run"
               ) -> Path:
    """Write ``results.html`` atomically from a journal (or its JSON).

    Example:
        >>> write_html(session.journal, Path("reports/results.html"),
        ...            redact=session.redactor.scrub)                       # doctest: +SKIP
    """
    data = redact(journal.to_json() if isinstance(journal, RunJournal) else journal)
    page = render_html(data, compare=compare, compare_label=compare_label)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return path
