"""The reference agent against real servers: redis-server, Milvus Lite, the LLM stub.

Nothing is faked: every service is a real process on a free 127.0.0.1 port, the
knowledge base is loaded by the real ingest command, and the agent is served by uvicorn
exactly as agentverify runs a replica. Processes run in their own session and are
stopped by process group (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentverify.stack.host import free_port
from agentverify.stack.runstate import terminate_group

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
FIXTURE_KNOWLEDGE = REPO / "fixtures" / "knowledge"
API_KEY = "sk-integration-" + uuid.uuid4().hex[:8]
START_TIMEOUT = 60.0

# Environment the agent reads; scrubbed so the developer's shell cannot leak in.
_AGENT_VARS = (
    "AGENT_CONFIG", "REDIS_URL", "MILVUS_HOST", "MILVUS_PORT", "OPENAI_BASE_URL",
    "OPENAI_BACKUP_BASE_URL", "OPENAI_API_KEY", "OPENAI_BACKUP_API_KEY", "AGENT_VERSION",
    "AGENT_REPLICA", "AGENT_FAIL_HEALTH", "AGENT_ERROR_RATE", "AGENT_LATENCY_MS",
    "LLM_STUB_API_KEYS",
)


# --------------------------------------------------------------------------- processes


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _AGENT_VARS}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@dataclass
class Proc:
    """A child process in its own session, with its output in a log file."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=base_env)
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        log = self.log_path.open("wb")
        try:
            self.popen = subprocess.Popen(
                self.argv, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        finally:
            log.close()
        return self

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds. Idempotent."""
        if self.popen is None:
            return
        terminate_group(self.popen, grace=grace)


def wait_until(
    condition: Callable[[], bool], what: str, proc: Proc | None = None,
    timeout: float = START_TIMEOUT,
) -> None:
    """Poll ``condition`` until it is true; fail with the process' log otherwise."""
    __tracebackhide__ = True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc is not None and not proc.alive():
            pytest.fail(f"{proc.name} exited (code {proc.popen and proc.popen.returncode}) "
                        f"while waiting for {what}; its log:\n{proc.tail()}")
        time.sleep(0.05)
    log = f"; {proc.name} log:\n{proc.tail()}" if proc is not None else ""
    pytest.fail(f"timed out after {timeout:g}s waiting for {what}{log}")


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def http_status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=2.0).status_code
    except httpx.HTTPError:
        return None


def start_redis(tmp: Path, name: str = "redis") -> tuple[Proc, int]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("install redis-server (apt-get install redis-server)")
    port = free_port()
    proc = Proc(name, [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                       "--appendonly", "no", "--dir", str(tmp)], tmp / f"{name}.log").start()
    wait_until(lambda: port_open(port), f"{name} on 127.0.0.1:{port}", proc)
    return proc, port


def start_agent(tmp: Path, name: str, config: Path, **env: str) -> tuple[Proc, str]:
    port = free_port()
    proc = Proc(
        name,
        [sys.executable, "-m", "uvicorn", "agentverify.reference_agent.main:app",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        tmp / f"{name}.log",
        base_env(AGENT_CONFIG=str(config), OPENAI_API_KEY=API_KEY, **env),
    ).start()
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: http_status(url + "/version") == 200, f"{name} /version", proc)
    return proc, url


# --------------------------------------------------------------------------- the stack


@dataclass
class Stack:
    tmp: Path
    redis_port: int
    milvus_port: int
    llm_url: str
    config: Path
    knowledge: Path
    agent_url: str
    ingest_output: str
    procs: list[Proc]

    def ledger(self) -> dict[str, Any]:
        response = httpx.get(self.llm_url + "/ledger", timeout=5)
        response.raise_for_status()
        return response.json()  # type: ignore[no-any-return]

    def ingest(self) -> subprocess.CompletedProcess[str]:
        return run_ingest(self.config, self.knowledge)


def run_ingest(config: Path, knowledge: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentverify.reference_agent.ingest",
         "--config", str(config), "--knowledge", str(knowledge)],
        cwd=REPO, env=base_env(OPENAI_API_KEY=API_KEY, **env), capture_output=True,
        text=True, timeout=120, stdin=subprocess.DEVNULL, check=False,
    )


def knowledge_dir(tmp: Path) -> Path:
    """The project's fixtures/knowledge when it has documents, else a generated set."""
    if any(FIXTURE_KNOWLEDGE.glob("*.md")) or any(FIXTURE_KNOWLEDGE.glob("*.txt")):
        return FIXTURE_KNOWLEDGE
    own = tmp / "knowledge"
    own.mkdir()
    docs = {
        "password-reset.md": "# Resetting your password\n\nClick *Forgot password* on the "
        "sign-in page; the reset link expires after 30 minutes.\n\nA new password needs at "
        "least 12 characters.",
        "webhooks.md": "# Webhooks\n\nWebhooks are signed with HMAC-SHA256; verify the "
        "signature header before trusting a delivery.\n\nFailed deliveries retry 5 times.",
        "billing.md": "# Billing and invoices\n\nInvoices are issued on the first day of "
        "each month and can be downloaded as PDF from the billing page.",
    }
    for name, text in docs.items():
        (own / name).write_text(text)
    return own


def first_title(path: Path) -> str:
    for line in path.read_text().splitlines():
        match = re.match(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$", line)
        if match:
            return match.group(1)
    raise AssertionError(f"{path} has no heading")


def write_config(tmp: Path, redis_port: int, milvus_port: int, llm_url: str,
                 name: str = "config.yaml", collection: str = "agent_knowledge") -> Path:
    path = tmp / name
    path.write_text(
        "environment: staging\n"
        "log_level: info\n"
        "model: {provider: openai, model_name: gpt-4, temperature: 0.7, max_tokens: 300,\n"
        f"        retry_count: 2, timeout: 10, base_url: \"{llm_url}/v1\",\n"
        "        api_key_env: OPENAI_API_KEY,\n"
        "        backup: {model_name: gpt-3.5-turbo, api_key_env: OPENAI_BACKUP_API_KEY}}\n"
        f"vector_store: {{type: milvus, host: 127.0.0.1, port: {milvus_port},\n"
        f"               collection: {collection}, dim: 64, top_k: 3}}\n"
        f"cache: {{type: redis, url: \"redis://127.0.0.1:{redis_port}/0\", ttl: 3600}}\n"
        "rate_limit: {enabled: false, requests_per_second: 20.0, burst: 20}\n"
        "cost: {embedding_model: text-embedding-3-small}\n"
        "stack: {replicas: 3}\n"  # someone else's section: must be ignored
    )
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("reference-agent")
    procs: list[Proc] = []
    try:
        redis, redis_port = start_redis(tmp)
        procs.append(redis)

        milvus_port = free_port()
        milvus = Proc("milvus-lite", [sys.executable, "-m", "milvus_lite", "server",
                                      "--data-dir", str(tmp / "milvus"), "--host", "127.0.0.1",
                                      "--port", str(milvus_port)], tmp / "milvus.log").start()
        procs.append(milvus)
        wait_until(lambda: port_open(milvus_port), "Milvus Lite port", milvus)

        llm_port = free_port()
        llm = Proc(
            "llm-stub",
            [sys.executable, "-m", "uvicorn", "agentverify.llm_stub.app:app",
             "--host", "127.0.0.1", "--port", str(llm_port)],
            tmp / "llm.log", base_env(LLM_STUB_API_KEYS=API_KEY),
        ).start()
        procs.append(llm)
        llm_url = f"http://127.0.0.1:{llm_port}"
        wait_until(lambda: http_status(llm_url + "/ledger") == 200, "LLM stub /ledger", llm)

        config = write_config(tmp, redis_port, milvus_port, llm_url)
        knowledge = knowledge_dir(tmp)
        result = run_ingest(config, knowledge)
        assert result.returncode == 0, f"ingest failed: {result.stderr}"

        agent, agent_url = start_agent(tmp, "agent", config, AGENT_VERSION="v1",
                                       AGENT_REPLICA="0")
        procs.append(agent)
        yield Stack(tmp, redis_port, milvus_port, llm_url, config, knowledge, agent_url,
                    result.stdout, procs)
    finally:
        for proc in reversed(procs):
            proc.stop()


def metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        head, value = line.rsplit(" ", 1)
        got = dict(re.findall(r'(\w+)="([^"]*)"', head))
        if got == labels:
            return float(value)
    raise AssertionError(f"no series {name}{labels}")


def agent_tokens(url: str) -> dict[tuple[str, str], float]:
    """``{(kind, model): tokens}`` from the agent's token_usage_total series."""
    text = httpx.get(url + "/metrics", timeout=5).text
    out: dict[tuple[str, str], float] = {}
    for head, value in re.findall(r"^token_usage_total(\{[^}]*\}) (\S+)$", text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', head))
        if float(value):
            out[(labels["kind"], labels["model"])] = float(value)
    return out


def ledger_tokens(ledger: dict[str, Any]) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for model, counts in ledger["models"].items():
        for kind, key in (("prompt", "prompt_tokens"), ("completion", "completion_tokens"),
                          ("embedding", "embedding_tokens")):
            if counts.get(key):
                out[(kind, model)] = float(counts[key])
    return out


def diff(after: dict[tuple[str, str], float], before: dict[tuple[str, str], float]
         ) -> dict[tuple[str, str], float]:
    keys = set(after) | set(before)
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in keys}
    return {k: v for k, v in delta.items() if v}


def chat(url: str, message: str, **headers: str) -> httpx.Response:
    return httpx.post(url + "/chat", json={"message": message}, headers=headers, timeout=30)


# --------------------------------------------------------------------------- tests


def test_ingest_is_idempotent(stack: Stack) -> None:
    first = re.fullmatch(r"ingested (\d+) passages from (\d+) documents into agent_knowledge\n",
                         stack.ingest_output)
    assert first, stack.ingest_output
    again = stack.ingest()
    assert again.returncode == 0, again.stderr
    assert again.stdout == stack.ingest_output
    assert milvus_count(stack.milvus_port, "agent_knowledge") == int(first.group(1))


def milvus_count(port: int, collection: str) -> int:
    """Rows in a collection, counted by a child process (keeps grpc out of pytest)."""
    result = subprocess.run(
        [sys.executable, "-c",
         "from pymilvus import MilvusClient; "
         f"c = MilvusClient(uri='http://127.0.0.1:{port}'); "
         f"print(c.query('{collection}', filter='', output_fields=['count(*)'])[0]['count(*)'])"],
        capture_output=True, text=True, timeout=60, check=True, env=base_env(),
    )
    return int(result.stdout.strip())


def test_ingest_prunes_passages_a_document_lost(stack: Stack, tmp_path: Path) -> None:
    config = write_config(tmp_path, stack.redis_port, stack.milvus_port, stack.llm_url,
                          collection="prune_test")
    docs = tmp_path / "docs"
    docs.mkdir()
    paragraph = "A paragraph long enough to stand alone as a passage of its own. " * 6
    (docs / "guide.md").write_text("# Guide\n\n" + "\n\n".join([paragraph] * 3))
    first = run_ingest(config, docs)
    assert first.stdout == "ingested 3 passages from 1 documents into prune_test\n", first.stderr
    (docs / "guide.md").write_text("# Guide\n\n" + paragraph)
    second = run_ingest(config, docs)
    assert second.stdout == "ingested 1 passages from 1 documents into prune_test\n"
    assert milvus_count(stack.milvus_port, "prune_test") == 1


def test_ingest_errors_are_one_line(stack: Stack, tmp_path: Path) -> None:
    empty = run_ingest(stack.config, tmp_path)
    assert empty.returncode == 1
    assert empty.stderr.startswith("ingest: error:") and empty.stderr.count("\n") == 1
    dead = run_ingest(stack.config, stack.knowledge, MILVUS_PORT=str(free_port()))
    assert dead.returncode == 1 and "Traceback" not in dead.stderr
    assert dead.stderr.count("\n") == 1 and "unreachable" in dead.stderr
    no_llm = run_ingest(stack.config, stack.knowledge,
                        OPENAI_BASE_URL=f"http://127.0.0.1:{free_port()}/v1")
    assert no_llm.returncode == 1 and "embedding failed" in no_llm.stderr
    assert no_llm.stderr.count("\n") == 1


def test_health_ok(stack: Stack) -> None:
    response = httpx.get(stack.agent_url + "/health", timeout=5)
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ok", "version": "v1", "replica": "0",
                               "checks": {"redis": "ok", "milvus": "ok"}}
    assert response.headers["X-Agent-Version"] == "v1"


def test_chat_retrieves_then_caches_without_llm_calls(stack: Stack) -> None:
    doc = sorted(stack.knowledge.glob("*.md"))[0]
    title = first_title(doc)
    question = f"Can you explain {title.lower()}?"
    before = stack.ledger()

    first = chat(stack.agent_url, question)
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["cached"] is False and body["answer"]
    assert body["sources"], body
    assert title in [s["title"] for s in body["sources"]], body["sources"]
    assert all(set(s) == {"id", "title", "source", "score"} for s in body["sources"])
    assert body["usage"]["total_tokens"] == (
        body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]) > 0
    assert (body["version"], body["replica"], body["model"]) == ("v1", "0", "gpt-4")
    after_first = stack.ledger()
    assert after_first["requests"] == before["requests"] + 2  # one embedding, one chat

    again = chat(stack.agent_url, "  " + question.upper() + " ")
    assert again.status_code == 200
    assert again.json()["cached"] is True
    assert again.json()["answer"] == body["answer"]
    assert again.json()["usage"] == body["usage"]
    assert stack.ledger() == after_first  # the cache hit cost nothing


def test_metrics_tokens_equal_the_ledger(stack: Stack) -> None:
    ledger_before = ledger_tokens(stack.ledger())
    metrics_before = agent_tokens(stack.agent_url)
    for n, question in enumerate(["What does an invoice contain?", "How are webhooks signed?",
                                  "What does an invoice contain?", "Where is my data stored?"]):
        response = chat(stack.agent_url, f"{question} (run {uuid.uuid4().hex[:6]} {n})")
        assert response.status_code == 200, response.text
    ledger_delta = diff(ledger_tokens(stack.ledger()), ledger_before)
    metrics_delta = diff(agent_tokens(stack.agent_url), metrics_before)
    assert ledger_delta, "the questions cost no tokens?"
    assert set(ledger_delta) == {("prompt", "gpt-4"), ("completion", "gpt-4"),
                                 ("embedding", "text-embedding-3-small")}
    assert metrics_delta == ledger_delta

    text = httpx.get(stack.agent_url + "/metrics", timeout=5).text
    assert metric(text, "llm_cost_usd_total", model="gpt-4") > 0
    assert metric(text, "requests_total", type="chat") >= 4
    assert metric(text, "agent_info", version="v1", replica="0") == 1


def test_rate_limit_returns_429_beyond_the_burst(stack: Stack) -> None:
    admin = stack.agent_url + "/admin/rate-limit"
    set_to = httpx.post(admin, json={"enabled": True, "requests_per_second": 0.2, "burst": 3},
                        timeout=5)
    assert set_to.status_code == 200, set_to.text
    try:
        assert httpx.get(admin, timeout=5).json() == {
            "enabled": True, "requests_per_second": 0.2, "burst": 3}
        client = f"client-{uuid.uuid4().hex[:8]}"
        codes = [chat(stack.agent_url, "How do refunds work?", **{"X-Client-Id": client})
                 for _ in range(5)]
        assert [r.status_code for r in codes] == [200, 200, 200, 429, 429]
        assert codes[3].json() == {"error": "rate_limited"}
        assert int(codes[3].headers["Retry-After"]) >= 1
        other = chat(stack.agent_url, "How do refunds work?", **{"X-Client-Id": client + "x"})
        assert other.status_code == 200
        text = httpx.get(stack.agent_url + "/metrics", timeout=5).text
        assert metric(text, "requests_error_total", error="rate_limited") >= 2
    finally:
        httpx.post(admin, json={"enabled": False}, timeout=5)


def test_fail_health_knob(stack: Stack) -> None:
    proc, url = start_agent(stack.tmp, "agent-failing", stack.config, AGENT_FAIL_HEALTH="1",
                            AGENT_REPLICA="1")
    try:
        response = httpx.get(url + "/health", timeout=5)
        assert response.status_code == 503
        assert response.json()["status"] == "failing"
        assert response.json()["reason"] == "AGENT_FAIL_HEALTH"
    finally:
        proc.stop()


def test_stopping_redis_makes_health_503(stack: Stack) -> None:
    redis, port = start_redis(stack.tmp, "redis-2")
    config = write_config(stack.tmp, port, stack.milvus_port, stack.llm_url, "config-2.yaml")
    agent, url = start_agent(stack.tmp, "agent-2", config, AGENT_REPLICA="2")
    try:
        wait_until(lambda: http_status(url + "/health") == 200, "agent-2 healthy", agent)
        redis.stop()
        response = httpx.get(url + "/health", timeout=10)
        assert response.status_code == 503, response.text
        checks = response.json()["checks"]
        assert checks["milvus"] == "ok" and checks["redis"] != "ok"
        assert "API_KEY" not in response.text and API_KEY not in response.text
    finally:
        agent.stop()
        redis.stop()
    assert API_KEY not in agent.log_path.read_text(errors="replace")
