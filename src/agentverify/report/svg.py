"""The report's plots, written as SVG text: a time axis, a value axis, lines, dots, bars,
threshold lines and labelled bands (what :mod:`agentverify.report.html` draws).

A chart is drawn in data units: x is seconds since the chart's origin, y is the value.
Below the plot the elapsed time reads m:ss; above it, when the origin's wall-clock time
is known, UTC. The output is deterministic (the same input gives the same bytes), needs
no fonts, no JavaScript and nothing from the network, and every id in it carries the
chart's prefix, so several charts live in one page.

Example:
    >>> chart = Chart("p0", title="Latency (ms)", y_label="ms", span=60.0, y_max=120.0,
    ...               x_label="elapsed since run start (m:ss)", origin=1_700_000_000.0)
    >>> chart.line([(0, 10.0), (1, 12.0), (2, None), (3, 11.0)], colour="#1a73e8",
    ...            label="p95")
    >>> svg = chart.render(label="Latency over the run")
    >>> svg.startswith('<svg role="img"') and 'id="p0-series-0"' in svg
    True
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Callable, Iterable, Sequence

__all__ = ["Chart", "clock", "nice_ticks", "points_of", "time_step"]

e = html.escape

#: Grafana-style steps for a time axis, in seconds
TIME_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200)
MUTED = "#5f6368"
GRID = "#e8eaed"
AXIS = "#9aa0a6"
#: an estimate of a character's width in the sans-serif font, as a share of its size
CHAR_W = 0.58


def time_step(span: float) -> float:
    """The tick step of a time axis ``span`` seconds long: at most 8 ticks."""
    for step in TIME_STEPS:
        if span / step <= 8:
            return float(step)
    return float(TIME_STEPS[-1])


def clock(seconds: float) -> str:
    """Elapsed seconds as m:ss (h:mm:ss from an hour)."""
    seconds = max(seconds, 0.0)
    if seconds >= 3600:
        return f"{int(seconds // 3600)}:{int(seconds % 3600 // 60):02d}:{int(seconds % 60):02d}"
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def nice_ticks(top: float, *, most: int = 6) -> list[float]:
    """Ticks from 0 to ``top`` on a 1, 2, 2.5 or 5 x 10^k step, at most ``most`` of them
    (at least 3 where ``top`` > 0)."""
    if not top > 1e-12 or not math.isfinite(top):  # nothing to scale (or nonsense)
        return [0.0, 0.5, 1.0]
    raw = top / (most - 1)
    base = 10 ** math.floor(math.log10(raw))
    step = next(m * base for m in (1, 2, 2.5, 5, 10) if m * base >= raw)
    if top / step < 2:  # fewer than 3 ticks: halve the step
        step /= 2
    n = int(math.floor(top / step + 1e-9))
    digits = max(0, 3 - math.floor(math.log10(step)))  # exact to the step's own digits
    return [round(i * step, digits) for i in range(n + 1)]


def _num(v: float) -> str:
    return f"{v:.1f}".rstrip("0").rstrip(".") if v != int(v) else str(int(v))


class Chart:
    """One plot of ``width`` x ``height`` pixels (the page scales it with CSS).

    Args:
        prefix: makes every id of the chart unique on the page.
        title: drawn above the plot, on the left.
        y_label: the value axis' label (its unit).
        span: the time axis runs from 0 to ``span`` seconds.
        y_max: the value axis runs from 0 to ``y_max``.
        x_label: the time axis' label.
        origin: Unix seconds of x = 0; when given, a UTC axis is drawn above the plot.
        y_format: how a value tick reads.
        title_size: the title's font size (px).
    """

    def __init__(self, prefix: str, *, title: str, y_label: str, span: float, y_max: float,
                 x_label: str, origin: float | None = None, width: int = 640,
                 height: int = 310, y_format: Callable[[float], str] = _num,
                 title_size: float = 13.0) -> None:
        self.prefix = prefix
        self.title, self.title_size = title, title_size
        self.y_label, self.x_label = y_label, x_label
        self.span = max(span, 1.0) if math.isfinite(span) else 1.0
        self.y_ticks = nice_ticks(y_max)
        self.y_max = (max(y_max, self.y_ticks[-1]) if math.isfinite(y_max) and y_max > 1e-12
                      else self.y_ticks[-1])
        self.origin = origin
        self.width, self.height = width, height
        self.y_format = y_format
        self.left, self.right = 58, width - 14
        self.top = 46 if origin is not None else 30
        self.bottom = height - 40
        self._back: list[str] = []    # bands, under the grid
        self._data: list[str] = []    # series, clipped to the plot
        self._front: list[str] = []   # thresholds, event lines and labels, clipped
        self._legend: list[tuple[str, str]] = []
        self._series = 0

    # ------------------------------------------------------------------ scales

    def x(self, seconds: float) -> float:
        return self.left + (self.right - self.left) * seconds / self.span

    def y(self, value: float) -> float:
        return self.bottom - (self.bottom - self.top) * value / self.y_max

    def _xy(self, seconds: float, value: float) -> str:
        return f"{self.x(seconds):.1f} {self.y(value):.1f}"

    def _gid(self, label: str, colour: str) -> str:
        gid = f"{self.prefix}-series-{self._series}"
        self._series += 1
        self._legend.append((label, colour))
        return gid

    # ------------------------------------------------------------------ marks

    def line(self, points: Iterable[tuple[float, float | None]], *, colour: str, label: str,
             width: float = 1.5, markers: bool = False) -> None:
        """A line through ``points`` (a None value breaks it); ``markers``: a dot at each."""
        d, pen_down, dots = [], False, []
        for t, v in points:
            if v is None or not math.isfinite(v):
                pen_down = False
                continue
            d.append(("L" if pen_down else "M") + self._xy(t, v))
            pen_down = True
            if markers:
                dots.append(f"M{self._xy(t, v)}h0")
        gid = self._gid(label, colour)
        out = [f'<g id="{gid}"><path d="{" ".join(d)}" fill="none" stroke="{colour}" '
               f'stroke-width="{width}" stroke-linejoin="round"/>']
        if dots:
            out.append(f'<path d="{"".join(dots)}" stroke="{colour}" stroke-width="4.5" '
                       f'stroke-linecap="round"/>')
        self._data.append("".join(out) + "</g>")

    def dots(self, points: Iterable[tuple[float, float | None]], *, colour: str,
             label: str) -> None:
        """One dot per point (spread and outliers of per-request figures)."""
        d = "".join(f"M{self._xy(t, v)}h0" for t, v in points
                    if v is not None and math.isfinite(v))
        gid = self._gid(label, colour)
        self._data.append(f'<g id="{gid}"><path d="{d}" stroke="{colour}" stroke-width="3" '
                          f'stroke-linecap="round"/></g>')

    def bars(self, points: Iterable[tuple[float, float | None]], *, colour: str, label: str,
             width_s: float = 0.9) -> None:
        """A bar from each point's time, ``width_s`` seconds wide, up to its value."""
        base = self.y(0.0)
        d = "".join(f"M{self.x(t):.1f} {base:.1f}V{self.y(v):.1f}H{self.x(t + width_s):.1f}"
                    f"V{base:.1f}Z" for t, v in points if v and math.isfinite(v))
        gid = self._gid(label, colour)
        self._data.append(f'<g id="{gid}"><path d="{d}" fill="{colour}"/></g>')

    def hline(self, value: float, *, colour: str, label: str) -> None:
        """A dashed horizontal line at ``value`` (a threshold), labelled on the right;
        nothing for a value that is not a number."""
        if not math.isfinite(value):
            return
        y = self.y(value)
        self._front.append(f'<path d="M{self.left} {y:.1f}H{self.right}" stroke="{colour}" '
                           f'stroke-width="1.3" stroke-dasharray="5 3"/>'
                           f'<text x="{self.right - 2}" y="{y - 3:.1f}" font-size="10" '
                           f'fill="{colour}" text-anchor="end">{e(label)}</text>')

    def band(self, start: float, end: float, *, fill: str, opacity: float = 1.0) -> None:
        """A shaded span of time (a scenario, a fault held)."""
        x0, x1 = self.x(max(start, 0.0)), self.x(min(end, self.span))
        if x1 > x0:
            self._back.append(f'<rect x="{x0:.1f}" y="{self.top}" width="{x1 - x0:.1f}" '
                              f'height="{self.bottom - self.top}" fill="{fill}" '
                              f'fill-opacity="{opacity}"/>')

    def vline(self, at: float, *, colour: str, dashed: bool = False, width: float = 1.0,
              behind: bool = False) -> None:
        """A vertical line at ``at`` seconds (an event, a band's edge)."""
        dash = ' stroke-dasharray="4 3"' if dashed else ""
        mark = (f'<path d="M{self.x(at):.1f} {self.top}V{self.bottom}" stroke="{colour}" '
                f'stroke-width="{width}"{dash}/>')
        (self._back if behind else self._front).append(mark)

    def label(self, at: float, text: str, *, colour: str, vertical: bool, down_from: float = 0.0,
              size: float = 9.0) -> None:
        """Text just right of ``at`` seconds, ``down_from`` (a share of the plot's height)
        below the plot's top; ``vertical`` text runs down the plot, like a marker's tag."""
        x = self.x(at) + 3
        y = self.top + 2 + (self.bottom - self.top) * down_from
        if vertical:
            # read bottom to top, hanging from ``y``
            self._front.append(f'<text transform="translate({x + size * 0.8:.1f} {y:.1f}) '
                               f'rotate(-90)" font-size="{size}" fill="{colour}" '
                               f'text-anchor="end">{e(text)}</text>')
        else:
            self._front.append(f'<text x="{x:.1f}" y="{y + size:.1f}" font-size="{size}" '
                               f'fill="{colour}">{e(text)}</text>')

    def note(self, text: str) -> None:
        """A line of text in the middle of the plot (e.g. there is no data)."""
        self._front.append(f'<text x="{(self.left + self.right) / 2:.1f}" '
                           f'y="{(self.top + self.bottom) / 2:.1f}" font-size="12" '
                           f'fill="{MUTED}" text-anchor="middle">{e(text)}</text>')

    # ------------------------------------------------------------------ axes

    def _axes(self) -> list[str]:
        out = []
        for v in self.y_ticks:  # the value axis: grid lines and their labels
            y = self.y(v)
            out.append(f'<path d="M{self.left} {y:.1f}H{self.right}" stroke="{GRID}"/>'
                       f'<text x="{self.left - 5}" y="{y + 3.5:.1f}" font-size="10" '
                       f'fill="{MUTED}" text-anchor="end">{e(self.y_format(v))}</text>')
        mid = (self.top + self.bottom) / 2
        out.append(f'<text transform="translate(14 {mid:.1f}) rotate(-90)" font-size="11" '
                   f'text-anchor="middle" fill="{MUTED}">{e(self.y_label)}</text>')
        step = time_step(self.span)
        ticks = [i * step for i in range(int(self.span // step) + 1)]
        for t in ticks:  # the time axis: elapsed below, UTC above
            x = self.x(t)
            out.append(f'<path d="M{x:.1f} {self.bottom}v4" stroke="{AXIS}"/>'
                       f'<text x="{x:.1f}" y="{self.bottom + 15}" font-size="10" '
                       f'fill="{MUTED}" text-anchor="middle">{clock(t)}</text>')
            if self.origin is not None:
                utc = time.strftime("%H:%M:%S", time.gmtime(self.origin + t))
                out.append(f'<path d="M{x:.1f} {self.top}v-4" stroke="{AXIS}"/>'
                           f'<text x="{x:.1f}" y="{self.top - 7}" font-size="9" '
                           f'fill="{MUTED}" text-anchor="middle">{utc}</text>')
        out.append(f'<text x="{(self.left + self.right) / 2:.1f}" y="{self.bottom + 30}" '
                   f'font-size="11" fill="{MUTED}" text-anchor="middle">'
                   f'{e(self.x_label)}</text>')
        if self.origin is not None:
            out.append(f'<text x="{self.right}" y="{self.top - 19}" font-size="9" '
                       f'fill="{MUTED}" text-anchor="end">UTC</text>')
            out.append(f'<path d="M{self.left} {self.top}H{self.right}" stroke="{AXIS}"/>')
        out.append(f'<path d="M{self.left} {self.top}V{self.bottom}H{self.right}" '
                   f'stroke="{AXIS}" fill="none"/>')
        return out

    def _legend_rows(self) -> list[list[tuple[str, str, float]]]:
        """The legend's entries laid out in rows that fit the width: (label, colour, x)."""
        rows: list[list[tuple[str, str, float]]] = [[]]
        x = self.left
        for label, colour in self._legend:
            w = 22 + len(label) * 10 * CHAR_W + 14
            if rows[-1] and x + w > self.right:
                rows.append([])
                x = self.left
            rows[-1].append((label, colour, x))
            x += w
        return rows if rows[0] else []

    def render(self, *, label: str, legend: bool = True) -> str:
        """The chart as an inline ``<svg>`` element (``label``: its accessible name)."""
        rows = self._legend_rows() if legend else []
        height = self.height + 16 * len(rows) + (4 if rows else 0)
        clip = f"{self.prefix}-clip"
        out = [f'<svg role="img" aria-label="{e(label)}" xmlns="http://www.w3.org/2000/svg" '
               f'viewBox="0 0 {self.width} {height}" font-family="DejaVu Sans, sans-serif">',
               f'<defs><clipPath id="{clip}"><rect x="{self.left}" y="{self.top}" '
               f'width="{self.right - self.left}" height="{self.bottom - self.top}"/>'
               f'</clipPath></defs>',
               f'<rect width="{self.width}" height="{height}" fill="#fff"/>',
               f'<g clip-path="url(#{clip})">{"".join(self._back)}</g>',
               *self._axes(),
               f'<g clip-path="url(#{clip})">{"".join(self._data)}{"".join(self._front)}</g>',
               f'<text x="{self.left - 50}" y="{self.title_size + 2}" '
               f'font-size="{self.title_size}" font-weight="bold">{e(self.title)}</text>']
        for i, row in enumerate(rows):
            y = self.height + 10 + 16 * i
            for text, colour, x in row:
                out.append(f'<path d="M{x:.1f} {y - 4}h18" stroke="{colour}" stroke-width="2"/>'
                           f'<text x="{x + 22:.1f}" y="{y}" font-size="10">{e(text)}</text>')
        out.append("</svg>")
        return "".join(out)


def points_of(pairs: Sequence[Sequence[float | None]], shift: float = 0.0
              ) -> list[tuple[float, float | None]]:
    """A journal's ``[[t, v], ...]`` as chart points, ``shift`` seconds later."""
    return [(float(p[0]) + shift, None if p[1] is None else float(p[1])) for p in pairs]
