"""The README's worked example is the example agent's agentverify.yaml, word for word."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_worked_example_is_the_example_agents_file() -> None:
    example = (REPO / "examples" / "support-agent" / "agentverify.yaml").read_text()
    readme = (REPO / "README.md").read_text()
    agent = example[example.index("  agent:\n"):example.index("\nmonitoring:")]
    metrics = example[example.index("monitoring:\n"):example.index("\n# --- gates")]
    assert agent in readme and metrics in readme


def test_every_variable_and_contract_key_is_documented() -> None:
    from agentverify.config import AgentVariables
    from agentverify.contract import ContractSection, ReplySection
    from agentverify.monitoring.metrics import MetricsMapping

    readme = (REPO / "README.md").read_text()
    for key in AgentVariables.model_fields:
        assert f"`{key}`" in readme, key
    for key in ContractSection.model_fields:
        assert f"`{key}" in readme, key
    for key in ReplySection.model_fields:
        assert f"reply.{key}" in readme or f".{key}`" in readme, key
    for key in MetricsMapping.model_fields:
        assert f"| `{key}` |" in readme, key
