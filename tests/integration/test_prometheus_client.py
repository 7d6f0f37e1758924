"""PrometheusClient, AlertmanagerClient and the dashboard check against real servers.

A real ``prometheus`` (and ``prometheus-alertmanager``) binary scrapes a real HTTP server
exposing prometheus_client metrics under the metrics contract's names, every second.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from agentverify.errors import StackError
from agentverify.monitoring.dashboard import check_dashboard, load_dashboard
from agentverify.monitoring.prometheus import AlertmanagerClient, PrometheusClient
from agentverify.stack.host import free_port
from agentverify.stack.runstate import terminate_group

pytestmark = pytest.mark.integration

START_TIMEOUT = 30.0
STOP_GRACE = 10.0


def _binary(name: str, package: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK)
                                  else None)
    if path is None:
        pytest.fail(f"{name} not found: install {package} (apt-get install {package})")
    return path


@dataclass
class _Server:
    proc: subprocess.Popen
    url: str
    log: Path


def _start(args: list[str], url: str, ready_path: str, log: Path) -> _Server:
    """Start a server in its own session and wait (with a deadline) for its ready URL."""
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    server = _Server(proc, url, log)
    deadline = time.monotonic() + START_TIMEOUT
    with httpx.Client(timeout=1.0) as http:
        while True:
            if proc.poll() is not None:
                _stop(server)
                pytest.fail(f"{args[0]} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if http.get(url + ready_path).status_code == 200:
                    return server
            except httpx.TransportError:
                pass
            if time.monotonic() >= deadline:
                _stop(server)
                pytest.fail(f"{args[0]} not ready at {url}{ready_path} after "
                            f"{START_TIMEOUT:g}s:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)


def _stop(server: _Server) -> None:
    """SIGTERM the process group, SIGKILL it after a grace period; idempotent."""
    terminate_group(server.proc, grace=STOP_GRACE)


@dataclass
class _Agent:
    """A stand-in agent: a real /metrics endpoint with the contract's metric names."""

    address: str
    stop: threading.Event


@pytest.fixture(scope="module")
def agent_metrics() -> Iterator[_Agent]:
    registry = CollectorRegistry()
    requests = Counter("requests", "Requests handled", ["type"], registry=registry)
    latency = Histogram("request_latency_seconds", "Request latency", ["type"],
                        registry=registry)
    errors = Counter("requests_error", "Failed requests", ["error"], registry=registry)
    tokens = Counter("token_usage", "LLM tokens", ["model", "kind"], registry=registry)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    stop = threading.Event()

    def traffic() -> None:
        n = 0
        while not stop.wait(0.05):
            n += 1
            kind = "chat" if n % 3 else "search"
            requests.labels(kind).inc()
            latency.labels(kind).observe(0.05 + (n % 10) / 20)
            tokens.labels("gpt-4", "prompt").inc(120)
            tokens.labels("gpt-4", "completion").inc(40)
            if n % 7 == 0:
                errors.labels("timeout" if n % 2 else "llm_api").inc()

    worker = threading.Thread(target=traffic, name="fake-agent-traffic", daemon=True)
    worker.start()
    try:
        yield _Agent(f"127.0.0.1:{server.server_port}", stop)
    finally:
        stop.set()
        worker.join(timeout=5)
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory) -> Iterator[_Server]:
    binary = _binary("prometheus-alertmanager", "prometheus-alertmanager")
    root = tmp_path_factory.mktemp("alertmanager")
    config = root / "alertmanager.yml"
    config.write_text(yaml.safe_dump({
        "route": {"receiver": "default", "group_by": ["alertname"], "group_wait": "1s",
                  "group_interval": "5s", "repeat_interval": "1h"},
        "receivers": [{"name": "default"}],
    }))
    port = free_port()
    server = _start([binary, f"--config.file={config}", f"--storage.path={root / 'data'}",
                     f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
                    f"http://127.0.0.1:{port}", "/-/ready", root / "alertmanager.log")
    try:
        yield server
    finally:
        _stop(server)


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory, agent_metrics, alertmanager) -> Iterator[_Server]:
    binary = _binary("prometheus", "prometheus")
    root = tmp_path_factory.mktemp("prometheus")
    rules = root / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "test", "rules": [
        {"alert": "AlwaysFiring", "expr": "vector(1)", "labels": {"severity": "info"},
         "annotations": {"summary": "fires as soon as rules are evaluated"}},
        {"alert": "NeverFiring", "expr": "vector(1) == 0"},
        {"record": "job:requests:rate1m", "expr": "sum by (job) (rate(requests_total[1m]))"},
    ]}]}))
    config = root / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "alerting": {"alertmanagers": [{"static_configs": [
            {"targets": [alertmanager.url.removeprefix("http://")]}]}]},
        "scrape_configs": [{"job_name": "ai-agent", "metrics_path": "/metrics",
                            "static_configs": [{"targets": [agent_metrics.address]}]}],
    }))
    port = free_port()
    server = _start([binary, f"--config.file={config}", f"--storage.tsdb.path={root / 'tsdb'}",
                     f"--web.listen-address=127.0.0.1:{port}", "--web.enable-lifecycle",
                     # The first notification goes out before the Alertmanager is
                     # discovered and is dropped; the default resend delay is 1m.
                     "--rules.alert.resend-delay=1s"],
                    f"http://127.0.0.1:{port}", "/-/ready", root / "prometheus.log")
    try:
        yield server
    finally:
        _stop(server)


@pytest.fixture
def prom(prometheus) -> Iterator[PrometheusClient]:
    with PrometheusClient(prometheus.url) as client:
        yield client


def test_ready(prom):
    assert prom.ready()


def test_targets_show_the_agent_up(prom, agent_metrics):
    up = prom.wait_for_targets("ai-agent", {agent_metrics.address}, timeout=20)
    assert [t.instance for t in up] == [agent_metrics.address]
    (target,) = prom.targets("ai-agent")
    assert (target.job, target.health, target.last_error) == ("ai-agent", "up", "")
    assert target.scrape_url == f"http://{agent_metrics.address}/metrics"
    assert prom.targets("no-such-job") == []
    assert prom.wait_for_targets("ai-agent", 1, timeout=5)[0].health == "up"


def test_query_up_returns_the_target(prom, agent_metrics):
    samples = prom.wait_for('up{job="ai-agent"}', timeout=20)
    assert [(s.labels["instance"], s.value) for s in samples] == [(agent_metrics.address, 1.0)]
    assert samples[0].timestamp > 0


def test_scalar_results_become_one_unlabelled_sample(prom):
    (sample,) = prom.query("scalar(vector(42))")
    assert (sample.labels, sample.value) == ({}, 42.0)


def test_wait_for_rate_returns_data_after_scrapes(prom):
    samples = prom.wait_for("sum by (type) (rate(requests_total[1m]))",
                            lambda s: {x.labels.get("type") for x in s} == {"chat", "search"}
                            and all(x.value > 0 for x in s), timeout=30)
    assert {s.labels["type"] for s in samples} == {"chat", "search"}


def test_query_range(prom):
    prom.wait_for("rate(requests_total[1m])", timeout=30)
    end = time.time()
    series = prom.query_range('up{job="ai-agent"}', end - 10, end, 1)
    assert len(series) == 1 and series[0].values
    assert all(value == 1.0 for _, value in series[0].values)
    assert prom.query_range("up", end - 10, end, "2s")[0].values


def test_shipped_dashboard_panels_all_return_data(prom):
    check = check_dashboard(load_dashboard(), prom, timeout=45, interval=0.5)
    assert check.passed, str(check)
    assert (check.panels_with_data, check.panels_total) == (4, 4)
    by_title = {p.title: p for p in check.panels}
    assert by_title["Request Rate"].series == 2
    assert by_title["Latency"].series == 1 and by_title["Latency"].sample["value"] > 0
    assert by_title["Token Usage"].series == 2
    assert "4/4 panel queries returned data" in str(check)


def test_seed_literal_queries_return_nothing(prom, tmp_path):
    # The seed's dashboard named series prometheus_client never exposes.
    prom.wait_for("rate(requests_error_total[5m])", timeout=30)  # the real one has data
    assert prom.query("rate(requests_error[5m])") == []
    assert prom.query("rate(token_usage[5m])") == []
    assert prom.query("histogram_quantile(0.95, rate(request_latency_bucket[5m]))") == []
    seed = tmp_path / "seed.json"
    seed.write_text(json.dumps({"title": "AI Agent Dashboard", "panels": [
        {"type": "timeseries", "title": "Error Rate",
         "targets": [{"refId": "A", "expr": "rate(requests_error[5m])"}]},
        {"type": "timeseries", "title": "Request Rate",
         "targets": [{"refId": "A", "expr": "rate(requests_total[$__rate_interval])"}]},
    ]}))
    check = check_dashboard(load_dashboard(seed), prom, timeout=3, interval=0.5)
    assert not check.passed
    assert [(p.title, p.passed) for p in check.panels] == [("Error Rate", False),
                                                          ("Request Rate", True)]
    assert "FAIL Error Rate" in str(check)


def test_bad_expression_is_a_stack_error(prom):
    with pytest.raises(StackError, match=r"Prometheus at http://127\.0\.0\.1:\d+: .*bad_data"):
        prom.query("sum(rate(")
    with pytest.raises(StackError, match="bad_data"):
        prom.wait_for("sum(rate(", timeout=5)


def test_wait_for_timeout_names_expr_result_and_timeout(prom):
    with pytest.raises(StackError) as info:
        prom.wait_for("requests_error", timeout=1.0, interval=0.2)
    message = str(info.value)
    assert "'requests_error'" in message and "empty result" in message and "1s" in message


def test_wait_for_targets_timeout_lists_targets(prom, agent_metrics):
    with pytest.raises(StackError, match=rf"expected 2 target\(s\) to be up.*"
                                         rf"ai-agent/{agent_metrics.address}: up"):
        prom.wait_for_targets("ai-agent", 2, timeout=1.0)


def test_unreachable_prometheus_is_a_stack_error():
    url = f"http://127.0.0.1:{free_port()}"
    with PrometheusClient(url, timeout=1.0) as client:
        assert not client.ready()
        with pytest.raises(StackError, match=rf"Prometheus at {url}: cannot connect") as info:
            client.query("up")
        assert isinstance(info.value.__cause__, httpx.ConnectError)
        with pytest.raises(StackError, match="did not reach the expected result within"):
            client.wait_for("up", timeout=0.5)


def test_rules_and_alerts(prom):
    rules = {r.name: r for r in prom.rules()}
    assert rules["AlwaysFiring"].type == "alerting"
    assert rules["job:requests:rate1m"].type == "recording"
    deadline = time.monotonic() + 20
    while not any(a.name == "AlwaysFiring" and a.state == "firing" for a in prom.alerts()):
        assert time.monotonic() < deadline, f"AlwaysFiring not firing: {prom.alerts()}"
        time.sleep(0.25)
    (alert,) = [a for a in prom.alerts() if a.name == "AlwaysFiring"]
    assert alert.labels["severity"] == "info"
    assert alert.annotations["summary"].startswith("fires")
    assert "NeverFiring" not in {a.name for a in prom.alerts()}


def test_reload(prom):
    prom.reload()
    assert prom.ready()


def test_alertmanager_receives_the_alert(prometheus, alertmanager):
    with AlertmanagerClient(alertmanager.url) as am:
        alert = am.wait_for_alert("AlwaysFiring", timeout=30)
        assert alert["labels"]["severity"] == "info"
        assert alert["status"]["state"] == "active"
        assert "AlwaysFiring" in {a["labels"]["alertname"] for a in am.alerts(active=False)}
        with pytest.raises(StackError, match=r"alert 'NoSuchAlert' did not arrive.*AlwaysFiring"):
            am.wait_for_alert("NoSuchAlert", timeout=1.0)
