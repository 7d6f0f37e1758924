"""A self-contained HTML report (no external assets) with a plot per measured series."""

from __future__ import annotations

import html
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentverify.gates import format_value
from agentverify.report.journal import RunJournal

__all__ = ["write_html", "render_html", "svg_plot"]

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}
h1{font-size:1.4em} h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
.pass{color:#137333;font-weight:600} .fail{color:#c5221f;font-weight:600}
.inconclusive{color:#b06000;font-weight:600}
.err{background:#fce8e6;padding:.5em;white-space:pre-wrap;font-family:monospace}
svg{background:#fafafa;border:1px solid #ddd;margin:.3em 1em .3em 0}
"""


def svg_plot(points: list[list[float]], *, title: str, width: int = 420,
             height: int = 140) -> str:
    """A line plot of (x, y) points as inline SVG."""
    if not points:
        return ""
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    x0, x1 = min(xs), max(xs) or 1.0
    y0, y1 = min(0.0, min(ys)), max(ys)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y1 = y0 + 1
    pad = 28

    def sx(x: float) -> float:
        return pad + (x - x0) / (x1 - x0) * (width - 2 * pad)

    def sy(y: float) -> float:
        return height - pad + (y0 - y) / (y1 - y0) * (height - 2 * pad)

    path = " ".join(f"{'M' if i == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}"
                    for i, (x, y) in enumerate(zip(xs, ys, strict=True)))
    return (f'<svg width="{width}" height="{height}" role="img">'
            f'<title>{html.escape(title)}</title>'
            f'<text x="{pad}" y="14" font-size="12">{html.escape(title)} '
            f'(max {format_value(max(ys))})</text>'
            f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" '
            f'stroke="#999"/>'
            f'<text x="{pad}" y="{height - 8}" font-size="10">{format_value(x0)}s</text>'
            f'<text x="{width - pad - 30}" y="{height - 8}" font-size="10">'
            f'{format_value(x1)}s</text>'
            f'<path d="{path}" fill="none" stroke="#1a73e8" stroke-width="1.5"/></svg>')


def render_html(data: dict[str, Any], series: dict[str, dict[str, list[list[float]]]]) -> str:
    e = html.escape
    verdict = "pass" if data["passed"] else "fail"
    out = [f"<!doctype html><meta charset=utf-8><title>agentverify {e(data['env'])}</title>",
           f"<style>{_CSS}</style>",
           f"<h1>agentverify — {e(data['env'])} on {e(data['backend'])}: "
           f"<span class={verdict}>{'PASSED' if data['passed'] else 'FAILED'}</span></h1>",
           f"<p>started {e(data['started'])}; {len(data['scenarios'])} scenario(s)</p>"]
    for s in data["scenarios"]:
        cls = "pass" if s["passed"] else "fail"
        out.append(f"<h2>{e(s['name'])} <span class={cls}>"
                   f"{'PASSED' if s['passed'] else 'FAILED'}</span> in {s['seconds']:.1f}s</h2>")
        if s.get("error"):
            out.append(f"<div class=err>{e(s['error'])}</div>")
        if s["gates"]:
            out.append("<table><tr><th>gate</th><th>measured</th><th>threshold</th>"
                       "<th>verdict</th></tr>")
            for g in s["gates"]:
                # an inconclusive gate is never shown as passed, even when allowed
                word = g.get("verdict") or ("pass" if g["passed"] else "fail")
                gc = {"pass": "pass", "fail": "fail"}.get(word, "inconclusive")
                out.append(f"<tr><td>{e(g['name'])}</td><td>{e(format_value(g['measured']))}"
                           f"</td><td>{e(g['threshold'])}</td><td class={gc}>"
                           f"{'pass' if word == 'pass' else word.upper()}</td></tr>")
            out.append("</table>")
        for name, points in series.get(s["name"], {}).items():
            out.append(svg_plot(points, title=name))
        if s["facts"]:
            out.append("<details><summary>all facts</summary><table>")
            for k, v in sorted(s["facts"].items()):
                out.append(f"<tr><td>{e(k)}</td><td>{e(format_value(v))}</td></tr>")
            out.append("</table></details>")
        if s["steps"]:
            out.append("<details><summary>steps</summary><table><tr><th>#</th><th>step</th>"
                       "<th>seconds</th><th>error</th></tr>")
            for st in s["steps"]:
                out.append(f"<tr><td>{st['index']}</td><td>{e(st['type'])}</td>"
                           f"<td>{st['seconds']:.2f}</td><td>{e(st['error'] or '')}</td></tr>")
            out.append("</table></details>")
    return "\n".join(out) + "\n"


def write_html(journal: RunJournal, path: Path,
               redact: Callable[[Any], Any] = lambda d: d) -> Path:
    data = redact(journal.to_json())
    series = {s.name: s.series for s in journal.scenarios}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render_html(data, series), encoding="utf-8")
    os.replace(tmp, path)
    return path
