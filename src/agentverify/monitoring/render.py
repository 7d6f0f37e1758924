"""Render Prometheus, alert rule and Alertmanager configuration from agentverify config.

Placeholders (``${addr:alertmanager}``, ``${confdir}``) are resolved by the backend.
Agent replicas are discovered through ``file_sd`` (``targets/agents.json``), which the
stack rewrites whenever replicas come and go; Prometheus notices the change by itself;
they are scraped at the contract's ``metrics_path``. The alert rules query the agent's
own series (``monitoring.metrics``); a rule whose metric the agent does not export is
left out, with a comment in the file saying why.
"""

from __future__ import annotations

from urllib.parse import urlparse

import yaml

from agentverify.config import Config

__all__ = ["prometheus_yml", "alert_rules_yaml", "alertmanager_yml", "ALERT_NAMES"]

ALERT_NAMES = ("AgentReplicaDown", "AgentHighErrorRate", "AgentHighLatency", "AgentHighLoad")


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for unit in ("ms", "s", "m", "h"):
        if duration.endswith(unit):
            return float(duration[: -len(unit)]) * units[unit]
    return float(duration)


def prometheus_yml(config: Config, *, alertmanager: bool = True) -> str:
    mon = config.monitoring
    data: dict = {
        "global": {"scrape_interval": mon.scrape_interval,
                   "evaluation_interval": mon.evaluation_interval},
        "rule_files": ["${confdir}/alert_rules.yml"],
        "scrape_configs": [
            {   # the seed's job name and path; every replica instead of localhost:8000
                "job_name": "ai-agent",
                "metrics_path": config.stack.agent.contract.metrics_path or "/metrics",
                "file_sd_configs": [{"files": ["${confdir}/targets/*.json"],
                                     "refresh_interval": "5s"}],
            },
            {"job_name": "llm", "metrics_path": "/metrics",
             "static_configs": [{"targets": ["${addr:llm}"]}]},
        ],
    }
    if alertmanager:
        data["alerting"] = {"alertmanagers": [
            {"static_configs": [{"targets": ["${addr:alertmanager}"]}]}]}
    return "# Rendered by agentverify.\n" + yaml.safe_dump(data, sort_keys=False)


def alert_rules_yaml(config: Config) -> str:
    """Alerts behind the seed's emergency plans (high load, API errors, replicas down)."""
    eval_s = _seconds(config.monitoring.evaluation_interval)
    hold = f"{int(max(2 * eval_s, 2))}s"
    p95_s = (config.slo.p95_ms or 2000.0) / 1000.0
    err = config.slo.error_ratio if config.slo.error_ratio is not None else 0.05
    rps = config.slo.min_rps * 10 if config.slo.min_rps else 500.0
    metrics = config.monitoring.metrics
    rules = [
        {"alert": "AgentReplicaDown", "expr": 'up{job="ai-agent"} == 0', "for": hold,
         "labels": {"severity": "critical"},
         "annotations": {"summary": "agent replica {{ $labels.instance }} is down"}},
    ]
    left_out = []
    if metrics.errors is not None and metrics.requests is not None:
        rules.append(
            {"alert": "AgentHighErrorRate",
             "expr": f"{metrics.errors_rate('1m')} / clamp_min({metrics.requests_rate('1m')}, "
                     f"1e-9) > {err}",
             "for": hold, "labels": {"severity": "critical", "runbook": "api_error"},
             "annotations": {"summary": f"error ratio above {err}"}})
    else:
        left_out.append(("AgentHighErrorRate", metrics.missing("errors")
                         or metrics.missing("requests")))
    if metrics.latency is not None:
        rules.append(
            {"alert": "AgentHighLatency", "expr": f"{metrics.latency_p95('1m')} > {p95_s}",
             "for": hold, "labels": {"severity": "warning", "runbook": "high_load"},
             "annotations": {"summary": f"p95 latency above {p95_s}s"}})
    else:
        left_out.append(("AgentHighLatency", metrics.missing("latency")))
    if metrics.requests is not None:
        rules.append(
            {"alert": "AgentHighLoad", "expr": f"{metrics.requests_rate('1m')} > {rps}",
             "for": hold, "labels": {"severity": "warning", "runbook": "high_load"},
             "annotations": {"summary": f"request rate above {rps}/s"}})
    else:
        left_out.append(("AgentHighLoad", metrics.missing("requests")))
    data = {"groups": [{"name": "ai-agent", "rules": rules}]}
    head = "# Rendered by agentverify.\n" + "".join(
        f"# {name} is left out: {why}\n" for name, why in left_out)
    return head + yaml.safe_dump(data, sort_keys=False)


def _is_local(url: str | None) -> bool:
    if not url:
        return False
    host = urlparse(url).hostname or ""
    return host in {"127.0.0.1", "localhost", "::1"}


def alertmanager_yml(config: Config) -> str:
    """One receiver. The configured webhook is used only when it is on this machine:
    a rehearsal must never page a real team (alerts stay readable via the API)."""
    receiver: dict = {"name": "default"}
    if _is_local(config.monitoring.alert_webhook):
        receiver["webhook_configs"] = [{"url": config.monitoring.alert_webhook,
                                        "send_resolved": True}]
    data = {
        "route": {"receiver": "default", "group_by": ["alertname"], "group_wait": "1s",
                  "group_interval": "5s", "repeat_interval": "1h"},
        "receivers": [receiver],
    }
    return "# Rendered by agentverify.\n" + yaml.safe_dump(data, sort_keys=False)
