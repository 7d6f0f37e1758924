"""The agent contract: reply paths, request templates, reading replies, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentverify.config import load_config
from agentverify.contract import AgentContract, ContractSection, ReplyPath, render_template
from agentverify.errors import ConfigError, ContractError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "support-agent" / "agentverify.yaml"

SUPPORT_REPLY = {"text": "Hold the button for 10 s.",
                 "citations": [{"doc": "Getting started", "score": 0.8},
                               {"doc": "Slow Wi-Fi", "score": 0.5}],
                 "meta": {"build": "v2", "cached": True, "model": "gpt-4o-mini"}}
SUPPORT_HEADERS = {"X-App-Version": "v2", "X-Served-By": "agent-1", "X-Request-Id": "r1"}


def support() -> AgentContract:
    return AgentContract.from_config(load_config(EXAMPLE, env="dev"))


# ------------------------------------------------------------------------------ paths


@pytest.mark.parametrize(("path", "body", "expected"), [
    ("answer", {"answer": "hi"}, "hi"),
    ("meta.cached", {"meta": {"cached": False}}, False),
    ("items.0.title", {"items": [{"title": "A"}, {"title": "B"}]}, "A"),
    ("items.-1.title", {"items": [{"title": "A"}, {"title": "B"}]}, "B"),
    ("$", ["a", "b"], ["a", "b"]),
])
def test_a_path_reads_keys_and_list_items(path: str, body: object, expected: object) -> None:
    assert ReplyPath.parse(path).get({}, body) == expected


def test_a_header_path_is_case_insensitive_through_the_parser() -> None:
    contract = AgentContract(ContractSection(reply={"version": "header:x-app-VERSION"}))
    reply = contract.parse(200, {"X-App-Version": "v7"}, json.dumps(
        {"answer": "a", "sources": [], "cached": False}))
    assert reply.version == "v7"


@pytest.mark.parametrize(("path", "body", "problem"), [
    ("text", {"answer": "x", "sources": []}, "no key 'text' in the body (keys: answer, sources)"),
    ("meta.cached", {"meta": "x"}, "meta is a string, not an object"),
    ("items.3", {"items": [1]}, "items has 1 item(s), no item 3"),
    ("a.0", {"a": {"b": 1}}, "a is an object, not a list"),
])
def test_a_path_that_does_not_resolve_says_where_it_stopped(path: str, body: object,
                                                             problem: str) -> None:
    from agentverify.contract import _Missing

    with pytest.raises(_Missing, match=problem.replace("(", r"\(").replace(")", r"\)")):
        ReplyPath.parse(path).get({}, body)


@pytest.mark.parametrize(("text", "problem"), [
    ("", "expected a reply path"),
    ("a..b", "empty segment"),
    ("header:", "expected header:NAME"),
    ("header:bad name", "expected header:NAME"),
])
def test_a_bad_path_is_refused(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        ReplyPath.parse(text)


# ---------------------------------------------------------------------------- requests


def test_the_default_request_is_the_reference_agents() -> None:
    req = AgentContract.default().request("How do I reset?", session="s-1", client_id="c")
    assert (req.method, req.path) == ("POST", "/chat")
    assert req.json == {"message": "How do I reset?", "session_id": "s-1"}
    assert req.headers == {"X-Client-Id": "c"}


def test_the_example_request_fills_its_own_body_and_client_header() -> None:
    req = support().request("Warranty?", client_id="acme")
    assert (req.method, req.path) == ("POST", "/v1/ask")
    # a placeholder alone keeps its type: no conversation is JSON null
    assert req.json == {"question": "Warranty?", "conversation_id": None}
    assert req.headers == {"X-Customer-Id": "acme"}


def test_templates_substitute_inside_strings_and_keep_literal_braces() -> None:
    out = render_template({"q": "Q: {message}", "n": ["{session}", 3], "j": "{{x}}"},
                          {"message": "hi", "session": None})
    assert out == {"q": "Q: hi", "n": [None, 3], "j": "{x}"}


def test_a_get_contract_sends_the_template_as_the_query_string() -> None:
    contract = AgentContract(ContractSection(chat={"method": "get", "path": "/ask?v=1",
                                                   "body": {"q": "{message}", "s": "{session}"}}))
    req = contract.request("a b")
    assert (req.method, req.path, req.json) == ("GET", "/ask?v=1&q=a+b", None)


# ----------------------------------------------------------------------------- replies


def test_the_example_reply_is_read_through_its_paths() -> None:
    reply = support().parse(200, SUPPORT_HEADERS, json.dumps(SUPPORT_REPLY))
    assert reply.ok and reply.answer == "Hold the button for 10 s."
    assert reply.sources == ("Getting started", "Slow Wi-Fi")
    assert (reply.version, reply.replica, reply.cached) == ("v2", "agent-1", True)
    assert reply.completion_tokens is None  # not mapped: the reply carries no usage


def test_an_error_reply_keeps_status_version_and_message() -> None:
    reply = support().parse(502, SUPPORT_HEADERS, '{"error": "chat at the LLM answered 500"}')
    assert not reply.ok and reply.status == 502
    assert reply.error == "chat at the LLM answered 500" and reply.version == "v2"
    assert "502 from agent-1 (v2) chat at the LLM" in reply.describe()


def test_a_reply_that_does_not_match_is_one_line_quoting_it() -> None:
    body = {"answer": "x" * 1000, "sources": []}  # the reference shape, not the example's
    with pytest.raises(ContractError) as err:
        support().parse(200, SUPPORT_HEADERS, json.dumps(body))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("the agent's reply does not match "
                              "stack.agent.contract.reply.answer ('text'): no key 'text'")
    assert "POST /v1/ask answered 200: '{\"answer\": \"xxx" in message
    assert message.endswith("...'") and len(message) < 600  # the reply is truncated


def test_non_json_and_wrong_types_are_contract_errors() -> None:
    with pytest.raises(ContractError, match="the body is not JSON"):
        support().parse(200, SUPPORT_HEADERS, "<html>ok</html>")
    wrong = dict(SUPPORT_REPLY, citations={"doc": "x"})
    with pytest.raises(ContractError, match=r"reply.sources \('citations'\): expected a list"):
        support().parse(200, SUPPORT_HEADERS, json.dumps(wrong))
    wrong = dict(SUPPORT_REPLY, meta={"cached": "yes"})
    with pytest.raises(ContractError, match="expected true or false, got a string"):
        support().parse(200, SUPPORT_HEADERS, json.dumps(wrong))
    missing_header = {k: v for k, v in SUPPORT_HEADERS.items() if k != "X-App-Version"}
    with pytest.raises(ContractError, match="no header 'x-app-version'"):
        support().parse(200, missing_header, json.dumps(SUPPORT_REPLY))


def test_lenient_parsing_leaves_what_is_missing_empty() -> None:
    reply = support().parse(200, {}, "not json", strict=False)
    assert reply.ok and reply.answer is None and reply.version is None


def test_sources_without_a_title_path_are_the_items_themselves() -> None:
    contract = AgentContract(ContractSection(reply={"sources": "refs", "source_title": None}))
    reply = contract.parse(200, {"X-Agent-Version": "v1"},
                           json.dumps({"answer": "a", "refs": ["A", "B"], "cached": False}))
    assert reply.sources == ("A", "B")


def test_identity_reads_version_and_replica_of_any_reply_cheaply() -> None:
    assert support().identity(SUPPORT_HEADERS, "garbage") == ("v2", "agent-1")
    body_paths = AgentContract(ContractSection(reply={"version": "version",
                                                      "replica": "replica"}))
    assert body_paths.identity({}, '{"version": "v3", "replica": "agent-2"}') == ("v3", "agent-2")
    assert body_paths.identity({}, "not json") == (None, None)


def test_the_contract_travels_as_plain_data() -> None:
    contract = support()
    data = json.loads(json.dumps(contract.to_json()))
    again = AgentContract.from_json(data)
    assert again.request("q").json == contract.request("q").json
    assert again.maps("cached") and not again.maps("completion_tokens")
    assert AgentContract.from_json({}).request("q").path == "/chat"


# ------------------------------------------------------------------------------ config


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("stack.agent.contract.reply.answer", "a..b", "stack.agent.contract.reply.answer: 'a..b': "
                                                  "empty segment"),
    ("stack.agent.contract.chat.body", {"q": "{question}"},
     "stack.agent.contract.chat.body: unknown placeholder {question} in the request template"),
    ("stack.agent.contract.chat.body", {"q": "fixed"},
     "stack.agent.contract.chat.body: the body template must hold the question"),
    ("stack.agent.contract.chat.path", "v1/ask", "stack.agent.contract.chat.path: expected text "
                                                 "matching ^/"),
    ("stack.agent.contract.cache_keys", ["*"], "stack.agent.contract.cache_keys: '*' would "
                                               "match every key"),
    ("stack.agent.contract.colour", "red", "stack.agent.contract.colour: unknown key; expected "
                                           "one of: admin, cache_keys, chat"),
])
def test_a_bad_contract_is_one_line_naming_the_key(key: str, value: object,
                                                   expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(EXAMPLE, env="dev", overrides={key: value})
    assert "\n" not in str(err.value)
    assert expected in str(err.value)
    assert str(err.value).startswith("command line: ")


def test_admin_null_means_no_admin_endpoint_at_all() -> None:
    admin = support().admin
    assert (admin.rate_limit, admin.clear_cache, admin.switch_llm) == (None, None, None)
    assert AgentContract.default().admin.rate_limit == "/admin/rate-limit"
