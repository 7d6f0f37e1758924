"""The compose rendering: the checked-in files are a fresh rendering, with the seed's shape."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from agentverify.cli import main
from agentverify.compose import compose_spec, render_compose, render_compose_files
from agentverify.config import Config, load_config

REPO = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO / "compose"


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(REPO / "agentverify.yaml", "production", environ={})


@pytest.fixture(scope="module")
def files(config: Config) -> dict[str, str]:
    return render_compose_files(compose_spec(config), config, output_dir=COMPOSE_DIR)


@pytest.fixture(scope="module")
def compose(files: dict[str, str]) -> dict[str, Any]:
    return yaml.safe_load(files["docker-compose.yml"])


def test_checked_in_files_equal_a_fresh_rendering(files: dict[str, str]) -> None:
    stale = [name for name, content in files.items()
             if not (COMPOSE_DIR / name).is_file()
             or (COMPOSE_DIR / name).read_text(encoding="utf-8") != content]
    assert not stale, (f"compose/ is out of date for {stale}: re-render with "
                       "`agentverify compose --env production` and commit the result")


def test_every_rendered_yaml_parses(files: dict[str, str]) -> None:
    for name, content in files.items():
        if name.endswith((".yml", ".yaml")):
            assert yaml.safe_load(content), name


def test_the_seed_shape(compose: dict[str, Any]) -> None:
    assert compose["version"] == "3.8"
    services = compose["services"]
    assert {"llm", "redis", "milvus", "ingest", "agent", "lb", "prometheus",
            "alertmanager", "grafana"} <= set(services)
    agent = services["agent"]
    assert agent["deploy"]["replicas"] == 3
    assert agent["deploy"]["resources"] == {
        "limits": {"cpus": "1", "memory": "2G"},
        "reservations": {"cpus": "0.5", "memory": "1G"}}
    assert agent["environment"]["ENVIRONMENT"] == "production"
    assert set(agent["depends_on"]) >= {"redis", "milvus"}
    assert services["grafana"]["image"].startswith("grafana/grafana")
    assert "127.0.0.1:3000:3000" in services["grafana"]["ports"]
    assert set(compose["volumes"]) == {"redis_data", "milvus_data", "prometheus_data",
                                       "grafana_data"}
    assert "redis_data:/agentverify/data" in services["redis"]["volumes"]
    assert list(compose["networks"]) == ["ai-agent-network"]
    assert all(s["networks"] == ["ai-agent-network"] for s in services.values())


def test_ports_are_on_loopback_only(compose: dict[str, Any]) -> None:
    ports = [p for s in compose["services"].values() for p in s.get("ports", [])]
    assert ports and all(p.startswith("127.0.0.1:") for p in ports)
    assert "ports" not in compose["services"]["agent"]  # replicas are reached through lb


def test_api_keys_are_references_never_values(config: Config, files: dict[str, str]) -> None:
    env = yaml.safe_load(files["docker-compose.yml"])["services"]["agent"]["environment"]
    assert env["OPENAI_API_KEY"] == "${OPENAI_API_KEY}"
    spec = compose_spec(config)
    leaked = spec["llm"].with_env(LLM_STUB_API_KEYS="sk-real-secret-value-123")
    from dataclasses import replace

    text = render_compose(replace(spec, services=tuple(
        leaked if s.name == "llm" else s for s in spec.services)), config)
    assert "sk-real-secret-value-123" not in text
    assert "LLM_STUB_API_KEYS: ${LLM_STUB_API_KEYS}" in text


def test_peers_by_dns_name_and_replicas_by_dns_sd(files: dict[str, str]) -> None:
    prom = yaml.safe_load(files["prometheus.yml"])
    agent_job = next(j for j in prom["scrape_configs"] if j["job_name"] == "ai-agent")
    assert agent_job["dns_sd_configs"] == [{"names": ["agent"], "type": "A", "port": 8000,
                                            "refresh_interval": "5s"}]
    assert prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == \
        ["alertmanager:9093"]
    assert "server agent:8000;" in files["upstream.conf"]
    agent_cfg = yaml.safe_load(files["agent-config.yaml"])
    assert agent_cfg["cache"]["url"] == "redis://redis:6379/0"
    assert agent_cfg["vector_store"]["host"] == "milvus"
    # every placeholder is resolved; the dashboard is copied as is (its ${datasource} is
    # Grafana's own template variable)
    assert "${" not in "".join(v for k, v in files.items()
                               if k not in {"docker-compose.yml", "grafana/agent.json"})


def test_cli_writes_the_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "deploy" / "docker-compose.yml"
    assert main(["compose", "--config", str(REPO / "agentverify.yaml"), "--env", "staging",
                 "--output", str(out)]) == 0
    data = yaml.safe_load(out.read_text())
    assert data["services"]["agent"]["deploy"]["replicas"] == 3
    assert (out.parent / "prometheus.yml").is_file()
    assert (out.parent / "grafana/provisioning/datasources/prometheus.yml").is_file()
    knowledge = next(v for v in data["services"]["ingest"]["volumes"] if "knowledge" in v)
    assert (out.parent / knowledge.split(":")[0]).resolve() == \
        (REPO / "fixtures" / "knowledge").resolve()
    assert "wrote" in capsys.readouterr().out
