"""The report's SVG charts (agentverify.report.svg): scales, ticks, marks, ids, escaping."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from agentverify.report.svg import Chart, clock, nice_ticks, points_of, time_step

SVG = "{http://www.w3.org/2000/svg}"


def _chart(**kwargs: object) -> Chart:
    options: dict[str, object] = {"title": "Latency (ms)", "y_label": "ms", "span": 60.0,
                                  "y_max": 100.0, "x_label": "elapsed since run start (m:ss)",
                                  "origin": 1_700_000_000.0}
    options.update(kwargs)
    return Chart("p0", **options)  # type: ignore[arg-type]


def _numbers(d: str) -> list[float]:
    return [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", d)]


@pytest.mark.parametrize(("top", "ticks"), [
    (1000.0, [0, 200, 400, 600, 800, 1000]),
    (7.3, [0, 2, 4, 6]),
    (1.0, [0, 0.2, 0.4, 0.6, 0.8, 1.0]),
    (0.03, [0, 0.01, 0.02, 0.03]),
    (0.0, [0, 0.5, 1.0]),
    (3e-7, [0, 1e-7, 2e-7, 3e-7]),
    (1e-13, [0, 0.5, 1.0]),           # too small to scale: a unit axis, not ticks all at 0
    (float("inf"), [0, 0.5, 1.0]),
    (float("nan"), [0, 0.5, 1.0]),
])
def test_nice_ticks_start_at_zero_on_a_round_step(top: float, ticks: list[float]) -> None:
    got = nice_ticks(top)
    assert got == pytest.approx(ticks)
    assert 3 <= len(got) <= 6 and len(set(got)) == len(got)


def test_the_time_axis_reads_elapsed_and_utc() -> None:
    assert time_step(60) == 10 and time_step(5) == 1 and time_step(3 * 3600) == 1800
    assert clock(75) == "1:15" and clock(3725) == "1:02:05" and clock(-3) == "0:00"
    svg = _chart().render(label="x")
    texts = [t.text for t in ET.fromstring(svg).iter(f"{SVG}text")]
    assert ["0:00", "0:10", "0:20", "0:30", "0:40", "0:50", "1:00"] == \
        [t for t in texts if t and re.fullmatch(r"\d+:\d\d", t)]
    assert "22:13:20" in texts and "UTC" in texts  # 1_700_000_000 is 22:13:20 UTC
    assert "UTC" not in _chart(origin=None).render(label="x")


def test_a_line_breaks_at_a_gap_and_maps_values_onto_the_plot() -> None:
    chart = _chart()
    chart.line([(0, 0.0), (30, 100.0), (40, None), (60, 50.0)], colour="#123456", label="p95")
    root = ET.fromstring(chart.render(label="x"))
    group = next(g for g in root.iter(f"{SVG}g") if g.get("id") == "p0-series-0")
    d = group.find(f"{SVG}path").get("d")
    assert d.count("M") == 2 and d.count("L") == 1  # two pieces: 0-30, then 60 alone
    x0, y0, x1, y1, x2, y2 = _numbers(d)
    assert (x0, y0) == (chart.left, chart.bottom)         # (0, 0): bottom left
    assert (x2, y1) == (chart.right, chart.top)           # 60 s is the right edge, 100 the top
    assert x1 == pytest.approx((chart.left + chart.right) / 2)
    assert y2 == pytest.approx((chart.top + chart.bottom) / 2)
    assert "p95" in [t.text for t in root.iter(f"{SVG}text")]  # the legend


def test_dots_bars_thresholds_and_bands() -> None:
    chart = _chart()
    chart.dots(points_of([[1, 10.0], [2, None], [3, 20.0]]), colour="#1a73e8", label="ms")
    chart.bars([(5, 0.0), (6, 3.0), (7, None)], colour="#c5221f", label="failed")
    chart.hline(80.0, colour="#c5221f", label="gate p95_ms <= 80")
    chart.band(10, 20, fill="#e6f4ea")
    chart.band(70, 90, fill="#e6f4ea")  # wholly after the span: nothing drawn
    svg = chart.render(label="a <chart>")
    root = ET.fromstring(svg)  # well-formed, with the label escaped
    assert root.get("aria-label") == "a <chart>"
    paths = {g.get("id"): g.find(f"{SVG}path").get("d") for g in root.iter(f"{SVG}g")
             if g.get("id")}
    assert paths["p0-series-0"].count("M") == 2          # a dot per value
    assert paths["p0-series-1"].count("Z") == 1           # a bar per non-zero value
    assert "gate p95_ms <= 80" in [t.text for t in root.iter(f"{SVG}text")]
    assert len([r for r in root.iter(f"{SVG}rect") if r.get("fill") == "#e6f4ea"]) == 1


def test_ids_carry_the_prefix_and_drawing_is_exact() -> None:
    def draw(prefix: str) -> str:
        chart = Chart(prefix, title="t", y_label="u", span=10, y_max=5, x_label="x")
        chart.line([(0, 1.0), (5, 2.0)], colour="#000", label="a")
        chart.label(2, "rollout: v2 & more", colour="#e8710a", vertical=True)
        return chart.render(label="t")

    a, b = draw("s1-0"), draw("s2-0")
    assert a == draw("s1-0")
    ids = re.findall(r'\bid="([^"]+)"', a)
    assert ids and all(i.startswith("s1-0-") for i in ids)
    assert not set(ids) & set(re.findall(r'\bid="([^"]+)"', b))
    assert re.findall(r"url\(#([^)]+)\)", a) == ["s1-0-clip"] * 2
    assert "rollout: v2 &amp; more" in a


def test_an_empty_chart_says_so_in_the_middle_of_the_plot() -> None:
    chart = _chart(y_max=0.0)
    chart.note("no data in this run")
    note = next(t for t in ET.fromstring(chart.render(label="x")).iter(f"{SVG}text")
                if t.text == "no data in this run")
    assert float(note.get("x")) == pytest.approx((chart.left + chart.right) / 2)
    assert float(note.get("y")) == pytest.approx((chart.top + chart.bottom) / 2)


def test_input_that_is_not_a_number_draws_no_nan() -> None:
    chart = Chart("n", title="t", y_label="u", span=float("nan"), y_max=float("inf"),
                  x_label="x", origin=1_700_000_000.0)
    chart.line([(0, float("nan")), (1, float("inf")), (2, 3.0)], colour="#000", label="a")
    chart.hline(float("nan"), colour="#c5221f", label="never drawn")
    svg = chart.render(label="x")
    ET.fromstring(svg)
    assert "nan" not in svg.lower() and "inf" not in svg.lower()
    assert "never drawn" not in svg and chart.span == 1.0 and chart.y_max == 1.0
