"""agentverify.yaml (the worked example of pointing agentverify at this agent) matches the agent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from support_agent.app import create_app
from support_agent.config import FAULTS, load_settings
from support_agent.metrics import Metrics

PROJECT = Path(__file__).resolve().parents[1]
DOC: dict[str, Any] = yaml.safe_load((PROJECT / "agentverify.yaml").read_text(encoding="utf-8"))


def test_paths_exist() -> None:
    assert (PROJECT / DOC["stack"]["knowledge_dir"]).is_dir()
    assert (PROJECT / DOC["load"]["prompts"]).is_file()
    assert DOC["stack"]["agent"]["command"] == ["{python}", "-m", "support_agent"]
    assert DOC["stack"]["agent"]["ingest"][:3] == ["{python}", "-m", "support_agent.ingest"]


def test_contract_routes_and_variables_are_the_agents() -> None:
    agent = DOC["stack"]["agent"]
    app = create_app(load_settings({"OPENAI_API_KEY": "sk-x"}))
    routes = {(method, r.path) for r in app.routes for method in getattr(r, "methods", ())}
    contract = agent["contract"]
    assert (contract["chat"]["method"], contract["chat"]["path"]) in routes
    assert ("GET", contract["health_path"]) in routes and ("GET", contract["metrics_path"]) in routes
    assert set(contract["chat"]["body"]) == {"question", "conversation_id"}
    assert contract["reply"]["version"] == "header:X-App-Version"
    assert contract["reply"]["replica"] == "header:X-Served-By"
    assert contract["client_id_header"] == "X-Customer-Id"
    assert agent["variables"]["version"] == "APP_VERSION"
    assert agent["variables"]["replica"] == "INSTANCE_ID"
    assert agent["variables"]["config"] == "SUPPORT_CONFIG"
    assert agent["variables"]["log_file"] == "SUPPORT_LOG_FILE"
    s = load_settings({"OPENAI_API_KEY": "k", "APP_VERSION": "v9", "INSTANCE_ID": "agent-1",
                       "SUPPORT_CONFIG": str(PROJECT / "config.yaml")})
    assert (s.version, s.instance) == ("v9", "agent-1")


def test_fault_versions_use_the_agents_flags() -> None:
    flags = {v.get("env", {}).get("SUPPORT_AGENT_FAULT") for v in DOC["stack"]["versions"].values()}
    assert flags - {None} == set(FAULTS)


def test_metric_names_are_the_agents() -> None:
    m = Metrics()
    m.tokens("gpt-4o-mini", prompt=1, completion=1)
    m.duration.observe(0.1)
    exposed = m.render().decode()
    wanted = {k: v for k, v in DOC["monitoring"]["metrics"].items() if v is not None}
    assert set(wanted) == {"requests", "latency", "errors", "tokens"}  # no cache / cost counter
    for entry in wanted.values():
        assert f"\n{entry['name']}" in exposed or f"\n{entry['name']}_bucket" in exposed, entry["name"]
    assert 'route="/v1/ask"' in exposed and wanted["requests"]["selector"] == {"route": "/v1/ask"}
    assert 'reason="' in exposed and 'direction="prompt"' in exposed
    assert (wanted["errors"]["label"], wanted["tokens"]["kind_label"]) == ("reason", "direction")


def test_sections_written_for_the_agent_are_valid_agent_config(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({k: DOC[k] for k in ("model", "cache", "vector_store", "rate_limit")}))
    s = load_settings({"OPENAI_API_KEY": "k", "SUPPORT_CONFIG": str(path)})
    assert (s.vector_store.collection, s.vector_store.dim) == ("support_kb", 64)
    assert s.model.model_name == DOC["model"]["model_name"]
