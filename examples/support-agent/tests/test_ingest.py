"""The ingest's document splitting, its errors, and the shipped knowledge base and prompts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support_agent.ingest import IngestError, main, read_documents, split_document

PROJECT = Path(__file__).resolve().parents[1]

DOC = """# Guest network

A guest network gives visitors access.

## Turning it on
Open Settings.

## Time limits
It can switch itself off.
"""


def test_a_document_is_its_intro_and_sections_under_its_title() -> None:
    sections = split_document("guest-network.md", DOC)
    assert [s.doc for s in sections] == ["Guest network"] * 3
    assert [s.body for s in sections] == [
        "A guest network gives visitors access.", "Turning it on\nOpen Settings.",
        "Time limits\nIt can switch itself off.",
    ]


def test_ids_are_stable_positive_int64_and_distinct() -> None:
    first = [s.pk for s in split_document("guest-network.md", DOC)]
    edited = [s.pk for s in split_document("guest-network.md", DOC.replace("Open Settings.", "Open the app."))]
    other = [s.pk for s in split_document("other.md", DOC)]
    assert first == edited
    assert len(set(first + other)) == 6
    assert all(0 < pk < 2**63 for pk in first)


def test_a_document_without_a_heading_is_titled_from_its_file_name() -> None:
    assert [s.doc for s in split_document("slow-wifi.md", "Restart it.")] == ["Slow wifi"]


def test_missing_or_empty_directories_are_refused(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="not a directory"):
        read_documents(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(IngestError, match="no .md documents"):
        read_documents(tmp_path)


@pytest.mark.parametrize(("env", "expected"), [
    ({"OPENAI_API_KEY": ""}, "support-agent-ingest: OPENAI_API_KEY: not set"),
    ({"OPENAI_API_KEY": "sk-x"}, "support-agent-ingest: --docs /nonexistent/docs: not a directory"),
])
def test_main_prints_one_line_and_exits_1(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                          env: dict[str, str], expected: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SUPPORT_CONFIG", raising=False)
    assert main(["--docs", "/nonexistent/docs"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(expected) and err.count("\n") == 1


def test_the_shipped_knowledge_base() -> None:
    count, sections = read_documents(PROJECT / "knowledge")
    assert 5 <= count <= 8
    titles = {s.doc for s in sections}
    assert len(titles) == count  # every document has its own "# " title
    assert len({s.pk for s in sections}) == len(sections)


def test_the_shipped_prompts() -> None:
    lines = (PROJECT / "prompts.jsonl").read_text(encoding="utf-8").splitlines()
    prompts = [json.loads(line)["prompt"] for line in lines]
    assert len(prompts) >= 40 and len(set(prompts)) == len(prompts)
    assert all(isinstance(p, str) and p.endswith("?") for p in prompts)
