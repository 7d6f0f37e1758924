"""Render Prometheus, alert rule and Alertmanager configuration from agentverify config,
the alert rules' unit tests, and the checks every rendering passes.

What is here:

======================  ===============================================================
:func:`metric_names`    THE one place the alert rules learn the agent's metric names:
                        ``monitoring.metrics`` (the agent contract's mapping)
:func:`alert_rules`     the rules behind the seed's emergency plans, as data
                        (:class:`AlertRule`: the value compared, the threshold, ``for``)
:func:`alert_timing`    the rendered timings that explain how fast an alert is notified
``*_yml`` / ``*_yaml``  prometheus.yml, alert_rules.yml, alertmanager.yml and
                        alert_rules_test.yml (``promtool test rules``), per environment
:func:`check_rendered`  ``promtool check rules`` / ``check config`` and ``amtool
                        check-config`` on a rendering (when the binaries are on PATH)
:func:`run_rule_tests`  ``promtool test rules`` on a rendering: does every rule fire
                        above its threshold, and stay quiet below it?
======================  ===============================================================

Placeholders (``${addr:alertmanager}``, ``${confdir}``) are resolved by the backend.
Agent replicas are discovered through ``file_sd`` (``targets/agents.json``), which the
stack rewrites whenever replicas come and go; Prometheus notices the change by itself;
they are scraped at the contract's ``metrics_path``. A rule whose metric the agent does
not export (``monitoring.metrics.<key>: null``) is left out, with a comment in the file
saying why.
Alertmanager sends every notification to the stack's ``receiver`` (the rehearsal's
stand-in for the team's chat), and to ``monitoring.alert_webhook`` only when that is on
this machine: a rehearsal never pages a real team.

Example:
    >>> from agentverify.config import Config
    >>> rule = next(r for r in alert_rules(Config()) if r.name == "AgentHighLoad")
    >>> rule.expr
    'sum(rate(requests_total[5m])) > 500'
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import yaml

from agentverify.config import Config
from agentverify.errors import ConfigError
from agentverify.monitoring.metrics import MetricsMapping
from agentverify.seed import duration_seconds

__all__ = ["ALERT_NAMES", "CHECK_METRIC", "KNOWN_ANSWERS_CHECK", "AlertRule", "AlertTiming",
           "MetricNames", "RuleTestResult", "alert_rules", "alert_rules_test_yaml",
           "alert_rules_yaml", "alert_timing", "alertmanager_yml", "check_rendered",
           "left_out_rules", "metric_names", "prometheus_yml", "run_rule_tests"]

ALERT_NAMES = ("AgentReplicaDown", "AgentHighErrorRate", "AgentHighLatency", "AgentHighLoad",
               "AgentKnownAnswersWrong")
#: the receiver's gauge of failed synthetic checks (ours, not the agent's)
CHECK_METRIC = "agentverify_check_failed"
#: the check the data-corruption drill's known-answer prober reports
KNOWN_ANSWERS_CHECK = "known_answers"
RECEIVER_JOB = "agentverify-receiver"
_HEADER = "# Rendered by agentverify.\n"


# ------------------------------------------------------------------------------ names


@dataclass(frozen=True)
class MetricNames:
    """The agent's series as the alert rules and their tests query them.

    Attributes:
        mapping: ``monitoring.metrics`` (names, selectors, the error-kind label).
        job: the scrape job of the agent replicas.
        client_errors: error kinds that are the client's doing (a 429 is the rate limit
            working, not the service failing): left out of the error ratio
            (``monitoring.alerts.client_errors``).
        latency_buckets: bucket bounds in seconds the rule tests feed the latency
            histogram (a p95 above the largest cannot be measured, so an alert on it cannot
            fire: the rule tests prove it).
    """

    mapping: MetricsMapping = field(default_factory=MetricsMapping)
    job: str = "ai-agent"
    client_errors: tuple[str, ...] = ("rate_limited", "invalid_request")
    latency_buckets: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                                          5.0, 10.0)

    def missing(self, *keys: str) -> str | None:
        return next((why for k in keys if (why := self.mapping.missing(k))), None)

    def series(self, key: str, suffix: str = "", **labels: str) -> str:
        """A sample of ``key``'s series for a rule test: its selector's labels included."""
        entry = getattr(self.mapping, key)
        all_labels = {**entry.selector, **labels}
        inner = ", ".join(f'{k}="{v}"' for k, v in all_labels.items())
        return f"{entry.name}{suffix}{{{inner}}}"

    def server_errors_rate(self, window: str) -> str:
        """``sum(rate(errors[window]))`` without the kinds that are not the agent failing."""
        err = self.mapping.errors
        assert err is not None
        kinds = [*err.exclude, *(k for k in self.client_errors if k not in err.exclude)]
        excluded = [(err.label, k) for k in kinds] if err.label else []
        return f"sum(rate({err.series(exclude=excluded)}[{window}]))"


def metric_names(config: Config) -> MetricNames:
    """The one place alert rules (and their tests) take the agent's metric names from:
    ``monitoring.metrics`` and ``monitoring.alerts.client_errors``."""
    return MetricNames(mapping=config.monitoring.metrics,
                       client_errors=tuple(config.monitoring.alerts.client_errors))


# ------------------------------------------------------------------------------ rules


@dataclass(frozen=True)
class AlertRule:
    """One alerting rule: ``value op threshold`` held for ``for_``.

    ``value`` is kept apart so a drill whose alert does not fire can say what the
    expression measured against the threshold.
    """

    name: str
    value: str
    op: str
    threshold: float
    for_: str
    severity: str
    summary: str
    runbook: str | None = None
    #: labels the expression's result carries (the rule tests expect them)
    result_labels: tuple[str, ...] = ()

    @property
    def expr(self) -> str:
        return f"{self.value} {self.op} {self.threshold:g}"

    @property
    def labels(self) -> dict[str, str]:
        out = {"severity": self.severity}
        if self.runbook:
            out["runbook"] = self.runbook
        return out

    def holds(self, measured: float) -> bool:
        """Whether ``measured`` satisfies the condition (``value op threshold``)."""
        return {">": measured > self.threshold, "<": measured < self.threshold,
                "==": measured == self.threshold}[self.op]

    def to_yaml(self) -> dict[str, object]:
        return {"alert": self.name, "expr": self.expr, "for": self.for_,
                "labels": self.labels, "annotations": {"summary": self.summary}}


@dataclass(frozen=True)
class AlertTiming:
    """The rendered timings that decide how soon a condition becomes a notification.

    From the cause: the condition shows once ``rate()`` over ``window_s`` crosses the
    threshold (a scrape or two for a step change); it must then hold ``for_s``, checked
    every ``evaluation_s``; Prometheus sends it at that evaluation, and Alertmanager
    waits ``group_wait_s`` before the first notification of a group (``group_interval_s``
    before a change to it, such as resolved).
    """

    scrape_s: float
    evaluation_s: float
    window_s: float
    for_s: float
    group_wait_s: float
    group_interval_s: float
    repeat_interval_s: float

    @property
    def notify_after_firing_s(self) -> float:
        """Longest normal delay from firing at Prometheus to the webhook."""
        return self.evaluation_s + self.group_wait_s + 1.0

    @property
    def alert_timeout_s(self) -> float:
        """A generous bound on cause -> firing for a condition well over its threshold."""
        return self.window_s + self.for_s + 3 * self.evaluation_s + 2 * self.scrape_s + 10.0

    @property
    def resolve_timeout_s(self) -> float:
        """A bound on condition gone -> resolved notification."""
        return (self.window_s + 2 * self.evaluation_s + 2 * self.scrape_s
                + self.group_interval_s + 10.0)

    def describe(self) -> str:
        return (f"scrape {self.scrape_s:g}s, evaluation {self.evaluation_s:g}s, window "
                f"{self.window_s:g}s, for {self.for_s:g}s, group_wait {self.group_wait_s:g}s, "
                f"group_interval {self.group_interval_s:g}s")


def _for(config: Config) -> str:
    given = config.monitoring.alerts.for_
    if given is not None:
        return given
    return f"{int(max(2 * duration_seconds(config.monitoring.evaluation_interval), 2))}s"


def alert_timing(config: Config) -> AlertTiming:
    """The timings :func:`alert_rules_yaml` and :func:`alertmanager_yml` render."""
    mon = config.monitoring
    am = mon.alertmanager
    return AlertTiming(scrape_s=duration_seconds(mon.scrape_interval),
                       evaluation_s=duration_seconds(mon.evaluation_interval),
                       window_s=duration_seconds(mon.alerts.window),
                       for_s=duration_seconds(_for(config)),
                       group_wait_s=duration_seconds(am.group_wait),
                       group_interval_s=duration_seconds(am.group_interval),
                       repeat_interval_s=duration_seconds(am.repeat_interval))


def alert_rules(config: Config) -> list[AlertRule]:
    """Alerts behind the seed's emergency plans (high load, API errors, data corruption)
    and replicas down, with thresholds from ``monitoring.alerts`` (else the ``slo:``).
    A rule whose metric the agent does not export is not in the list
    (:func:`left_out_rules` says why)."""
    m = metric_names(config)
    a = config.monitoring.alerts
    w = a.window
    hold = _for(config)
    err = a.error_ratio if a.error_ratio is not None else \
        (config.slo.error_ratio if config.slo.error_ratio is not None else 0.05)
    p95_s = (a.p95_ms if a.p95_ms is not None else (config.slo.p95_ms or 2000.0)) / 1000.0
    rps = a.load_rps if a.load_rps is not None else \
        (config.slo.min_rps * 10 if config.slo.min_rps else 500.0)
    rules = [AlertRule("AgentReplicaDown", f'up{{job="{m.job}"}}', "==", 0, hold, "critical",
                       "agent replica {{ $labels.instance }} is down",
                       result_labels=("instance", "job"))]
    if not m.missing("errors", "requests"):
        rules.append(AlertRule(
            "AgentHighErrorRate",
            f"{m.server_errors_rate(w)} / clamp_min({m.mapping.requests_rate(w)}, 1e-9)",
            ">", err, hold, "critical",
            f"error ratio above {err:g} (client errors such as 429 not counted)",
            runbook="api_error"))
    if not m.missing("latency"):
        rules.append(AlertRule("AgentHighLatency", m.mapping.latency_p95(w), ">", p95_s, hold,
                               "warning", f"p95 latency above {p95_s:g}s", runbook="high_load"))
    if not m.missing("requests"):
        rules.append(AlertRule("AgentHighLoad", m.mapping.requests_rate(w), ">", rps, hold,
                               "warning",
                               f"request rate above {rps:g}/s, the rate the fleet is planned for",
                               runbook="high_load"))
    rules.append(AlertRule("AgentKnownAnswersWrong",
                           f'max({CHECK_METRIC}{{check="{KNOWN_ANSWERS_CHECK}"}})', ">", 0, hold,
                           "critical",
                           "known-answer questions are answered from the wrong documents",
                           runbook="data_corruption"))
    return rules


def left_out_rules(config: Config) -> dict[str, str]:
    """Rule name -> why it is not rendered (the agent does not export its metric)."""
    m = metric_names(config)
    out = {}
    for name, keys in (("AgentHighErrorRate", ("errors", "requests")),
                       ("AgentHighLatency", ("latency",)), ("AgentHighLoad", ("requests",))):
        why = m.missing(*keys)
        if why:
            out[name] = why
    return out


def alert_rules_yaml(config: Config) -> str:
    """``alert_rules.yml``: :func:`alert_rules` in Prometheus' rule file format."""
    data = {"groups": [{"name": "ai-agent", "rules": [r.to_yaml() for r in alert_rules(config)]}]}
    head = _HEADER + "".join(f"# {name} is left out: {why}\n"
                             for name, why in left_out_rules(config).items())
    return head + yaml.safe_dump(data, sort_keys=False)


def prometheus_yml(config: Config, *, alertmanager: bool = True, receiver: bool = True) -> str:
    mon = config.monitoring
    m = metric_names(config)
    data: dict = {
        "global": {"scrape_interval": mon.scrape_interval,
                   "evaluation_interval": mon.evaluation_interval},
        "rule_files": ["${confdir}/alert_rules.yml"],
        "scrape_configs": [
            {   # the seed's job name and path; every replica instead of localhost:8000
                "job_name": m.job,
                "metrics_path": config.stack.agent.contract.metrics_path or "/metrics",
                "file_sd_configs": [{"files": ["${confdir}/targets/*.json"],
                                     "refresh_interval": "5s"}],
            },
            {"job_name": "llm", "metrics_path": "/metrics",
             "static_configs": [{"targets": ["${addr:llm}"]}]},
        ],
    }
    if receiver:  # synthetic checks (known answers) are reported to the receiver
        data["scrape_configs"].append({"job_name": RECEIVER_JOB, "metrics_path": "/metrics",
                                       "static_configs": [{"targets": ["${addr:receiver}"]}]})
    if alertmanager:
        data["alerting"] = {"alertmanagers": [
            {"static_configs": [{"targets": ["${addr:alertmanager}"]}]}]}
    return _HEADER + yaml.safe_dump(data, sort_keys=False)


# ------------------------------------------------------------------------------ alertmanager


def is_local_url(url: str | None) -> bool:
    """Whether ``url`` names this machine's loopback (the only webhook a rehearsal calls)."""
    if not url:
        return False
    host = urlparse(url).hostname or ""
    return host in {"127.0.0.1", "localhost", "::1"}


def alertmanager_yml(config: Config, *, backend: str = "local", receiver: bool = True) -> str:
    """Alertmanager's route to the stack's receiver (timings from ``monitoring.alertmanager``).

    ``monitoring.alert_webhook`` is added only when it is on 127.0.0.1 and Alertmanager
    runs on this machine's loopback (``local`` backend): inside a container 127.0.0.1 is
    the container itself, so on docker a loopback webhook would reach nothing and is left
    out. A rehearsal never pages a real team; notifications stay readable at the
    receiver and through Alertmanager's API.
    """
    am = config.monitoring.alertmanager
    hooks: list[dict[str, object]] = []
    if receiver:
        hooks.append({"url": "http://${addr:receiver}/alerts", "send_resolved": True})
    webhook = config.monitoring.alert_webhook
    if is_local_url(webhook) and backend == "local":
        hooks.append({"url": webhook, "send_resolved": True})
    entry: dict[str, object] = {"name": "default"}
    if hooks:
        entry["webhook_configs"] = hooks
    data = {
        "route": {"receiver": "default", "group_by": ["alertname"],
                  "group_wait": am.group_wait, "group_interval": am.group_interval,
                  "repeat_interval": am.repeat_interval},
        "receivers": [entry],
    }
    return _HEADER + yaml.safe_dump(data, sort_keys=False)


# ------------------------------------------------------------------------------ rule tests


def _values(start: float, step: float, n: int) -> str:
    """promtool's expanding notation: ``start`` then ``n`` samples ``step`` apart."""
    sign = "+" if step >= 0 else "-"
    return f"{start:g}{sign}{abs(step):g}x{n}"


def _case(name: str, series: dict[str, str], rule: AlertRule, eval_s: int, fires: bool,
          labels: dict[str, str] | None = None, summary: str | None = None) -> dict[str, object]:
    exp: list[dict[str, object]] = []
    if fires:
        exp.append({"exp_labels": {**rule.labels, **(labels or {})},
                    "exp_annotations": {"summary": summary or rule.summary}})
    return {"name": name, "interval": "1s",
            "input_series": [{"series": s, "values": v} for s, v in series.items()],
            "alert_rule_test": [{"eval_time": f"{eval_s}s", "alertname": rule.name,
                                 "exp_alerts": exp}]}


def alert_rules_test_yaml(config: Config) -> str:
    """``alert_rules_test.yml``: each rule fires on realistic input beyond its threshold
    and stays quiet below it (``promtool test rules``, beside ``alert_rules.yml``).

    The input is what the agent could really report: at most every request failing,
    latencies the histogram can hold. A threshold that no such input crosses (an error
    ratio of 1 or more, a p95 beyond the largest bucket) fails its test: that rule could
    never fire in production either.
    """
    m = metric_names(config)
    rules = {r.name: r for r in alert_rules(config)}
    t = alert_timing(config)
    # long enough for a full window and the hold, sampled every second
    n = int(t.window_s + t.for_s + 10)
    tests: list[dict[str, object]] = []
    job = m.job

    down = rules["AgentReplicaDown"]
    tests.append(_case("AgentReplicaDown: a replica stops answering scrapes", {
        f'up{{job="{job}", instance="agent-0"}}': f"1x9 0x{n}",
        f'up{{job="{job}", instance="agent-1"}}': f"1x{n + 10}"},
        down, n, True, {"job": job, "instance": "agent-0"},
        "agent replica agent-0 is down"))
    tests.append(_case("AgentReplicaDown: every replica answers", {
        f'up{{job="{job}", instance="agent-0"}}': f"1x{n}"}, down, n, False))

    rate = 10.0  # requests per second
    req_labels = {m.mapping.requests.label: "chat"} if m.mapping.requests and \
        m.mapping.requests.label else {}
    err = rules.get("AgentHighErrorRate")
    if err is not None:
        kind = m.mapping.errors.label or "error"
        hi = min(1.0, max(4 * err.threshold, err.threshold + 0.05))  # never above every request
        lo = err.threshold / 4
        tests.append(_case("AgentHighErrorRate: server errors above the threshold", {
            m.series("requests", **req_labels): _values(0, rate, n),
            m.series("errors", **{kind: "llm_error"}): _values(0, rate * hi, n)},
            err, n, True))
        quiet = {m.series("requests", **req_labels): _values(0, rate, n),
                 m.series("errors", **{kind: "llm_error"}): _values(0, rate * lo, n)}
        for client in m.client_errors:  # every request refused by the rate limit: no outage
            quiet[m.series("errors", **{kind: client})] = _values(0, rate, n)
        tests.append(_case("AgentHighErrorRate: few server errors, many client errors (429)",
                           quiet, err, n, False))

    lat = rules.get("AgentHighLatency")
    if lat is not None:
        bounds = [*m.latency_buckets, float("inf")]
        # every request slower than the threshold: in the first bucket that starts at or
        # above it, or beyond the largest bucket (the histogram then says its bound)
        slot = next((i for i, b in enumerate(bounds[:-1]) if b >= lat.threshold),
                    len(bounds) - 2)
        slow = {m.series("latency", "_bucket", le=_le(b)):
                (_values(0, rate, n) if b > bounds[slot] else f"0x{n}") for b in bounds}
        fast = {m.series("latency", "_bucket", le=_le(b)): _values(0, rate, n) for b in bounds}
        tests.append(_case("AgentHighLatency: every request slower than the threshold", slow,
                           lat, n, True))
        tests.append(_case("AgentHighLatency: every request in the fastest bucket", fast, lat,
                           n, False))

    load = rules.get("AgentHighLoad")
    if load is not None:
        tests.append(_case("AgentHighLoad: twice the planned request rate", {
            m.series("requests", **req_labels): _values(0, 2 * load.threshold, n)},
            load, n, True))
        tests.append(_case("AgentHighLoad: half the planned request rate", {
            m.series("requests", **req_labels): _values(0, load.threshold / 2, n)},
            load, n, False))

    known = rules["AgentKnownAnswersWrong"]
    series = f'{CHECK_METRIC}{{check="{KNOWN_ANSWERS_CHECK}"}}'
    tests.append(_case("AgentKnownAnswersWrong: a known answer cites the wrong document",
                       {series: f"0x4 1x{n}"}, known, n, True))
    tests.append(_case("AgentKnownAnswersWrong: every known answer is right",
                       {series: f"0x{n}"}, known, n, False))
    data = {"rule_files": ["alert_rules.yml"], "evaluation_interval": "1s", "tests": tests}
    return ("# Rendered by agentverify: unit tests of alert_rules.yml (promtool test rules\n"
            "# alert_rules_test.yml, from this directory).\n"
            + yaml.safe_dump(data, sort_keys=False, width=100))


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else f"{bound:g}"


# ------------------------------------------------------------------------------ checks


def _tool(name: str) -> str | None:
    return shutil.which(name)


_PLACEHOLDER = re.compile(r"\$\{(addr|url|host):[^}]+\}")


def _resolved(text: str, confdir: Path) -> str:
    """A rendering with placeholders made concrete enough for promtool and amtool."""
    text = text.replace("${confdir}", str(confdir))

    def sub(match: re.Match[str]) -> str:
        return {"addr": "127.0.0.1:9", "url": "http://127.0.0.1:9",
                "host": "127.0.0.1"}[match.group(1)]

    return _PLACEHOLDER.sub(sub, text)


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"{' '.join(cmd[:3])}: {exc}", source="monitoring") from exc


def _first_problem(output: str) -> str:
    """The informative line of a tool's complaint (not the bare ``FAILED:`` headline)."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    bad = [ln for ln in lines if ln.rstrip(":").upper() not in ("FAILED", "SUCCESS")
           and any(w in ln.lower() for w in ("error", "failed", "invalid", "not a valid"))]
    return (bad or lines or ["no output"])[0][:300]


@functools.lru_cache(maxsize=64)
def _check(rules: str, prometheus: str, alertmanager: str | None) -> tuple[str, ...]:
    problems: list[str] = []
    promtool, amtool = _tool("promtool"), _tool("amtool")
    with tempfile.TemporaryDirectory(prefix="agentverify-promcheck-") as tmp:
        d = Path(tmp)
        (d / "targets").mkdir()
        (d / "alert_rules.yml").write_text(_resolved(rules, d))
        (d / "prometheus.yml").write_text(_resolved(prometheus, d))
        if promtool:
            res = _run([promtool, "check", "rules", "alert_rules.yml"], d)
            if res.returncode != 0:
                problems.append("alert_rules.yml: promtool check rules: "
                                + _first_problem(res.stdout + res.stderr))
            res = _run([promtool, "check", "config", "prometheus.yml"], d)
            if res.returncode != 0:
                problems.append("prometheus.yml: promtool check config: "
                                + _first_problem(res.stdout + res.stderr))
        if alertmanager is not None and amtool:
            (d / "alertmanager.yml").write_text(_resolved(alertmanager, d))
            res = _run([amtool, "check-config", "alertmanager.yml"], d)
            if res.returncode != 0:
                problems.append("alertmanager.yml: amtool check-config: "
                                + _first_problem(res.stdout + res.stderr))
    return tuple(problems)


def check_rendered(config: Config, *, rules: str, prometheus: str,
                   alertmanager: str | None) -> list[str]:
    """Run ``promtool check rules``, ``promtool check config`` and ``amtool check-config``
    on a rendering (each when its binary is on PATH; about 0.1 s each, once per content).

    Returns:
        The tools that were missing (nothing was checked with them).

    Raises:
        ConfigError: a tool rejected a file: names the file, the tool and its message.
    """
    problems = _check(rules, prometheus, alertmanager)
    if problems:
        raise ConfigError(f"environment {config.environment!r}: rendered {problems[0]}",
                          source=config.source, key="monitoring")
    return [name for name in ("promtool", "amtool") if _tool(name) is None]


@dataclass
class RuleTestResult:
    """What ``promtool test rules`` said about one rendering."""

    tests: int
    failed: list[str] = field(default_factory=list)
    output: str = ""

    @property
    def passed(self) -> bool:
        return not self.failed


def run_rule_tests(config: Config, *, rules: str | None = None, tests: str | None = None,
               ) -> RuleTestResult:
    """``promtool test rules`` on the rendered rules of ``config`` (or the texts given).

    Raises:
        ConfigError: promtool is not installed (package ``prometheus``).
    """
    promtool = _tool("promtool")
    if promtool is None:
        raise ConfigError("promtool is not installed: apt-get install prometheus (it "
                          "ships promtool)", source="alert_rules_test")
    rules = rules if rules is not None else alert_rules_yaml(config)
    tests = tests if tests is not None else alert_rules_test_yaml(config)
    names = [t["name"] for t in (yaml.safe_load(tests) or {}).get("tests", [])]
    with tempfile.TemporaryDirectory(prefix="agentverify-ruletest-") as tmp:
        d = Path(tmp)
        (d / "alert_rules.yml").write_text(rules)
        (d / "alert_rules_test.yml").write_text(tests)
        res = _run([promtool, "test", "rules", "alert_rules_test.yml"], d)
    output = (res.stdout + res.stderr).strip()
    failed = _failed_tests(output, names) if res.returncode != 0 else []
    if res.returncode != 0 and not failed:
        failed = [_first_problem(output)]
    return RuleTestResult(len(names), failed, output)


def _failed_tests(output: str, names: list[str]) -> list[str]:
    """The failing cases of promtool's output, as ``TEST NAME (at Ns): got ...``."""
    out = []
    for match in re.finditer(r"name: (.+?),\s*alertname: (\w+), time: ([0-9a-z]+),(.*?)got:\[(.*?)\]",
                             output, re.S):
        name, _, at, _, got = match.groups()
        fired = "it fired" if "Labels:" in got else "it did not fire"
        out.append(f"{name.strip()} (at {at}): {fired}")
    return out
