"""What the agent under test is given and how it is run: variables, command, ingest job,
config file, images — for the reference agent and for the example support agent."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agentverify.config import load_config, with_overrides
from agentverify.errors import ConfigError
from agentverify.stack.spec import (
    agent_environment,
    agent_spec,
    build_stack_spec,
    default_images,
    required_variables,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "support-agent" / "agentverify.yaml"
KEYS = {"OPENAI_API_KEY": "sk-primary-0123456789", "OPENAI_BACKUP_API_KEY": "sk-backup-0123456789"}


def reference(**overrides: object):
    return load_config(REPO / "agentverify.yaml", env="dev", overrides=overrides)


def example(**overrides: object):
    return load_config(EXAMPLE, env="staging", overrides=overrides)


def test_the_reference_agent_gets_every_default_variable() -> None:
    env = agent_environment(reference(), version="v2", api_keys=KEYS)
    assert env == {
        "ENVIRONMENT": "dev", "AGENT_CONFIG": "${confdir}/config.yaml", "AGENT_VERSION": "v2",
        "AGENT_FAIL_HEALTH": "0", "AGENT_ERROR_RATE": "0.0", "AGENT_LATENCY_MS": "0",
        "AGENT_HEALTH_IGNORE": "", "AGENT_CACHE_REQUIRED": "0", "AGENT_CACHE_NO_TTL": "0",
        "AGENT_DROP_MAX_TOKENS": "0", "AGENT_LOG_FILE": "${datadir}/agent.log",
        "MILVUS_HOST": "${host:milvus}", "MILVUS_PORT": "${port:milvus:grpc}",
        "MILVUS_URI": "${url:milvus:grpc}", "REDIS_URL": "redis://${addr:redis}/0",
        "OPENAI_BASE_URL": "${url:llm}/v1", "HOST": "${bind}", "PORT": "${port:http}",
        **KEYS}
    spec = agent_spec(reference(), version="v2", api_key_env=KEYS)
    assert spec.replica_env == ("AGENT_REPLICA",)
    assert spec.for_replica("agent-1").env["AGENT_REPLICA"] == "agent-1"
    assert spec.command[:4] == ("${python}", "-m", "uvicorn", "agentverify.reference_agent.main:app")
    assert spec.secret_env == frozenset(KEYS)


def test_the_example_gets_its_own_names_and_no_variable_it_does_not_read() -> None:
    env = agent_environment(example(), version="v3-errors", api_keys=KEYS)
    assert env["APP_VERSION"] == "v3-errors" and "AGENT_VERSION" not in env
    assert env["SUPPORT_CONFIG"] == "${confdir}/config.yaml" and "AGENT_CONFIG" not in env
    assert env["SUPPORT_LOG_FILE"] == "${datadir}/agent.log"
    assert env["MILVUS_URI"] == "${url:milvus:grpc}"
    assert "MILVUS_HOST" not in env and "MILVUS_PORT" not in env
    assert (env["HOST"], env["PORT"]) == ("${bind}", "${port:http}")
    assert env["SUPPORT_AGENT_FAULT"] == "errors"  # the version's own env
    spec = agent_spec(example(), version="v1", api_key_env=KEYS)
    assert spec.for_replica("agent-2").env["INSTANCE_ID"] == "agent-2"
    assert spec.command == ("${python}", "-m", "support_agent")
    assert spec.health is not None and spec.health.path == "/healthz"  # type: ignore[attr-defined]


def test_placeholders_in_env_and_command_use_the_stacks_machinery() -> None:
    cfg = example(**{"stack.agent.command": ["node", "server.js", "--port={port}",
                                             "--bind", "{host}", "--tag", "{version}"],
                     "stack.agent.env": {"LOG": "{datadir}/x.log", "JSON": "{{\"a\": 1}}"}})
    spec = agent_spec(cfg, version="v2", api_key_env=KEYS)
    assert spec.command == ("node", "server.js", "--port=${port:http}", "--bind", "${bind}",
                            "--tag", "v2")
    assert spec.env["LOG"] == "${datadir}/x.log" and spec.env["JSON"] == '{"a": 1}'


def test_the_key_variables_follow_the_model_in_use() -> None:
    cfg = example()
    switched = with_overrides(cfg, {"model.model_name": "gpt-4o",
                                    "model.api_key_env": "OPENAI_BACKUP_API_KEY"})
    # the agent reads one fixed name: after the switch it carries the backup's key
    assert agent_environment(cfg, version="v1", api_keys=KEYS)["OPENAI_API_KEY"] == \
        KEYS["OPENAI_API_KEY"]
    assert agent_environment(switched, version="v1", api_keys=KEYS)["OPENAI_API_KEY"] == \
        KEYS["OPENAI_BACKUP_API_KEY"]
    named = example(**{"stack.agent.variables.model": "OPENAI_MODEL"})
    assert agent_environment(named, version="v1", api_keys=KEYS)["OPENAI_MODEL"] == "gpt-4o-mini"


def test_the_seed_required_variables_are_the_agents_names() -> None:
    assert required_variables(reference()) == ["OPENAI_API_KEY", "MILVUS_HOST", "REDIS_URL"]
    assert required_variables(example()) == ["OPENAI_API_KEY", "MILVUS_URI", "REDIS_URL"]


def test_the_agents_own_ingest_job_replaces_ours_with_the_agents_variables() -> None:
    spec = build_stack_spec(example(), api_keys=KEYS)
    ingest = spec["ingest"]
    assert ingest.command == ("${python}", "-m", "support_agent.ingest", "--docs",
                              "${confdir}/knowledge")
    assert ingest.image == spec["agent"].image == "agentverify/agent:local"
    assert ingest.env["MILVUS_URI"] == "${url:milvus:grpc}"
    assert ingest.env["OPENAI_API_KEY"] == KEYS["OPENAI_API_KEY"]
    assert "PORT" not in ingest.env and "SUPPORT_LOG_FILE" not in ingest.env
    assert set(ingest.depends_on) == {"redis", "milvus", "llm"}
    assert sorted(f for f in ingest.files if f.startswith("knowledge/"))[0] == \
        "knowledge/adding-satellites.md"
    ours = build_stack_spec(reference(), api_keys=KEYS)["ingest"]
    assert ours.command[2] == "agentverify.reference_agent.ingest"


def test_agent_only_keys_are_merged_into_the_written_config_file() -> None:
    written = yaml.safe_load(build_stack_spec(example(), api_keys=KEYS)["agent"]
                             .files["config.yaml"])
    assert written["vector_store"]["embedding_model"] == "text-embedding-3-small"
    assert written["cache"] == {"type": "redis", "url": "redis://${addr:redis}/0",
                                "ttl": 3600, "timeout": 1.0}
    assert "metrics" not in written["monitoring"]  # only agentverify reads the mapping
    assert written["model"]["model_name"] == "gpt-4o-mini"


def test_image_names_follow_the_tag_and_the_agent_source() -> None:
    assert default_images(reference())["redis"] == "agentverify/redis:local"
    assert default_images(reference(**{"stack.image_tag": "mine"}))["agent"] == \
        "agentverify/python:mine"
    names = default_images(example(**{"stack.image_tag": "mine"}))
    assert (names["agent"], names["ingest"], names["milvus"]) == (
        "agentverify/agent:mine", "agentverify/agent:mine", "agentverify/python:mine")


@pytest.mark.parametrize(("overrides", "expected"), [
    ({"stack.agent.command": ["x", "{prt}"]},
     "stack.agent.command: item 1 ('{prt}'): unknown placeholder {prt}; expected one of"),
    ({"stack.agent.ingest": ["x", "--port", "{port}"]},
     "stack.agent.ingest: item 2 ('{port}'): unknown placeholder {port}"),
    ({"stack.agent.command": ["x"], "stack.agent.app": "my.app:app"},
     "give app (an ASGI app served by uvicorn) or command (any program), not both"),
    ({"stack.agent.command": ["x"], "stack.agent.workers": 4},
     "workers applies to app (uvicorn --workers)"),
    ({"stack.agent.variables.port": "HOST"},
     "host and port are both 'HOST': one variable cannot carry two values"),
    ({"stack.agent.variables.version": "app-version"},
     "stack.agent.variables.version: expected text matching"),
    ({"stack.versions.v9.env": {"BAD NAME": "1"}},
     "stack.versions.v9.env: 'BAD NAME' is not an environment variable name"),
    ({"stack.image_tag": "a:b"}, "stack.image_tag: expected text matching"),
])
def test_a_bad_agent_section_is_one_line(overrides: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        example(**overrides)
    assert "\n" not in str(err.value) and expected in str(err.value), str(err.value)


def test_a_missing_agent_source_is_one_line_naming_the_key(tmp_path: Path) -> None:
    from agentverify.images.agent import agent_source_dir

    cfg = example(**{"stack.agent.source": str(tmp_path / "nope")})
    with pytest.raises(ConfigError, match=r"stack.agent.source: directory not found"):
        agent_source_dir(cfg)
    (tmp_path / "empty").mkdir()
    cfg = example(**{"stack.agent.source": str(tmp_path / "empty")})
    with pytest.raises(ConfigError, match="neither a pyproject.toml nor a requirements.txt"):
        agent_source_dir(cfg)
