"""``reports/junit.xml``: one JUnit testcase per scenario, every gate as a property.

CI systems that read JUnit XML (Jenkins, GitLab, GitHub test reporters) show a red
rehearsal with its failing gates, without knowing agentverify::

    <testsuites name="agentverify" tests="2" failures="1" errors="0" time="61.3">
      <testsuite name="agentverify staging local" tests="2" failures="1" errors="0" ...>
        <properties><property name="env" value="staging"/>...</properties>
        <testcase classname="smoke" name="smoke" time="31.200">
          <properties>
            <property name="gate.chat_status" value="200|== 201|fail"/>
          </properties>
          <failure type="GateFailed" message="chat_status: measured 200, threshold == 201">...
          <system-out>last log lines of the failing service</system-out>
        </testcase>

The layout is the common JUnit format (Ant / Surefire, as Jenkins and GitLab read it):
``properties`` first in a testcase, then ``failure`` / ``error``, then ``system-out``.
A scenario with an error carries ``<error>`` (and counts as an error, not a failure);
its failed gates are still listed in a ``<failure>``. Text is stripped of the control
characters XML 1.0 cannot carry (ANSI colours in logs). pytest's own ``--junitxml``
is a separate file and keeps working.

Example:
    >>> write_junit(journal, Path("reports/junit.xml"))                   # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
import socket
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentverify.report.journal import RunJournal
from agentverify.report.summary import gate_line

__all__ = ["render_junit", "write_junit"]

_XML_INVALID = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _text(value: Any) -> str:
    return _XML_INVALID.sub("", str(value))


def _raw(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "not measured"
    return str(value)


def _iso(unix: float | None) -> str | None:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(unix)) if unix is not None else None


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: Any) -> ET.Element:
    el = ET.SubElement(parent, tag, {k: _text(v) for k, v in attrs.items() if v is not None})
    if text is not None:
        el.text = _text(text)
    return el


def _testcase(suite: ET.Element, s: dict[str, Any]) -> None:
    classname = Path(s.get("file") or "").stem or "agentverify"
    case = _sub(suite, "testcase", classname=classname, name=s["name"],
                time=f"{s.get('seconds', 0.0):.3f}")
    if s.get("gates"):
        props = _sub(case, "properties")
        for g in s["gates"]:
            verdict = "pass" if g["passed"] else "fail"
            _sub(props, "property", name=f"gate.{g['name']}",
                 value=f"{_raw(g['measured'])}|{g['threshold']}|{verdict}")
    failed = [g for g in s.get("gates", []) if not g["passed"]]
    if failed:
        message = "; ".join(gate_line(g)[5:] for g in failed)  # without the "FAIL " mark
        _sub(case, "failure", "\n".join(gate_line(g) for g in s["gates"]),
             type="GateFailed", message=message)
    if s.get("error"):
        _sub(case, "error", s["error"], type="ScenarioError",
             message=s["error"].splitlines()[0] if s["error"] else "")
    if s.get("logs"):
        _sub(case, "system-out", "\n".join(f"== {name}: last log lines ==\n{text}"
                                           for name, text in s["logs"].items()))


def render_junit(data: dict[str, Any]) -> ET.ElementTree:
    """The JUnit document of a journal's JSON (:meth:`RunJournal.to_json`).

    Example:
        >>> root = render_junit(journal.to_json()).getroot()              # doctest: +SKIP
        >>> [c.get("name") for c in root.iter("testcase")]                # doctest: +SKIP
        ['smoke', 'always-red']
    """
    scenarios = data.get("scenarios", [])
    errors = sum(1 for s in scenarios if s.get("error"))
    failures = sum(1 for s in scenarios if not s.get("passed") and not s.get("error"))
    total_time = f"{sum(s.get('seconds', 0.0) for s in scenarios):.3f}"
    counts = {"tests": str(len(scenarios)), "failures": str(failures), "errors": str(errors)}
    root = ET.Element("testsuites", {"name": "agentverify", "time": total_time, **counts})
    suite = _sub(root, "testsuite", name=f"agentverify {data.get('env', '?')} "
                                         f"{data.get('backend', '?')}",
                 skipped="0", time=total_time, timestamp=_iso(data.get("started_unix")),
                 hostname=socket.gethostname(), **counts)
    props = _sub(suite, "properties")
    for key in ("env", "backend"):
        _sub(props, "property", name=key, value=data.get(key, ""))
    run_id = (data.get("stack") or {}).get("run_id")
    if run_id:
        _sub(props, "property", name="run_id", value=run_id)
    for s in scenarios:
        _testcase(suite, s)
    ET.indent(root)
    return ET.ElementTree(root)


def write_junit(journal: RunJournal | dict[str, Any], path: Path,
                redact: Callable[[Any], Any] = lambda d: d) -> Path:
    """Write ``junit.xml`` atomically from a journal (or its JSON).

    Example:
        >>> write_junit(json.loads(Path("reports/results.json").read_text()),
        ...             Path("reports/junit.xml"))                          # doctest: +SKIP
    """
    data = redact(journal.to_json() if isinstance(journal, RunJournal) else journal)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    render_junit(data).write(tmp, encoding="utf-8", xml_declaration=True)
    os.replace(tmp, path)
    return path
