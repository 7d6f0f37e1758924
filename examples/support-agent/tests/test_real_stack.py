"""The agent on real servers: redis-server, Milvus Lite and an OpenAI-compatible LLM endpoint.

The LLM endpoint is agentverify's LLM stub run as a separate server process (it counts
every request in ``GET /ledger`` and injects 429/5xx/latency through ``POST /faults``);
the agent only sees an OpenAI-compatible URL. Every process is started here in its own
session and stopped by its process group, also when a test fails.

Needs: ``redis-server`` on PATH (apt-get install redis-server), ``milvus-lite`` and the
``agentverify`` package (for its LLM stub) in this Python environment.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from support_agent.ingest import read_documents

pytestmark = pytest.mark.integration

PROJECT = Path(__file__).resolve().parents[1]
SRC = PROJECT / "src"
KNOWLEDGE = PROJECT / "knowledge"
API_KEY = "sk-test"
VERSION = "v1-test"
CHAT_MODEL = "gpt-4o-mini"
EMBED_MODEL = "text-embedding-3-small"
TITLES = {s.doc for s in read_documents(KNOWLEDGE)[1]}

CONFIG = f"""\
# the reference deployment's format; sections the agent does not use are ignored
environment: test
model:
  {{provider: openai, model_name: {CHAT_MODEL}, temperature: 0.2, max_tokens: 200, retry_count: 3, timeout: 10}}
vector_store: {{type: milvus, collection: support_kb, dim: 64, top_k: 3}}
cache: {{type: redis, ttl: 600}}
monitoring: {{prometheus_port: 9090}}
"""


# ----------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], Any], timeout: float, what: str, proc: Proc | None = None) -> Any:
    """Poll ``check`` until it returns a truthy value; fail naming ``what`` after ``timeout``."""
    __tracebackhide__ = True
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            pytest.fail(f"{proc.name} exited with {proc.popen.returncode} waiting for {what}:\n{proc.tail()}")
        try:
            result = check()
            if result:
                return result
            last = result
        except (httpx.HTTPError, OSError) as exc:
            last = exc
        time.sleep(0.1)
    pytest.fail(f"{what} not reached in {timeout:.0f}s (last: {last!r})" + (f"\n{proc.tail()}" if proc else ""))


class Proc:
    """A child process in its own session, output in a file, stopped by its process group."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logdir: Path) -> None:
        self.name = name
        self.log = logdir / f"{name}.log"
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True)

    def tail(self, lines: int = 20) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, sig)

    def stop(self, grace: float = 10.0) -> int:
        """SIGTERM the group, SIGKILL it after ``grace`` seconds; the exit status."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        return int(self.popen.returncode)


@contextlib.contextmanager
def started(name: str, argv: list[str], env: dict[str, str], logdir: Path) -> Iterator[Proc]:
    proc = Proc(name, argv, env, logdir)
    try:
        yield proc
    finally:
        proc.stop()


def require(binary: str | None = None, module: str | None = None, hint: str = "") -> None:
    __tracebackhide__ = True
    if binary is not None and shutil.which(binary) is None:
        pytest.fail(f"{binary} not found on PATH: {hint}")
    if module is not None and importlib.util.find_spec(module) is None:
        pytest.fail(f"Python module {module} not installed in {sys.executable}: {hint}")


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")}
    env["PYTHONPATH"] = str(SRC)
    return env


# ----------------------------------------------------------------------------- servers


class Redis:
    """A redis-server that a test may stop and start again on the same port."""

    def __init__(self, logdir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.logdir = logdir
        self.proc: Proc | None = None

    def start(self) -> None:
        self.proc = Proc("redis", ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port),
                                   "--save", "", "--appendonly", "no", "--dir", str(self.logdir)],
                         base_env(), self.logdir)
        wait_until(self.ping, 10, f"redis-server on port {self.port}", self.proc)

    def ping(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None


class Agent:
    """One agent process and an HTTP client on it."""

    def __init__(self, proc: Proc, port: int, log_file: Path | None) -> None:
        self.proc = proc
        self.url = f"http://127.0.0.1:{port}"
        self.log_file = log_file
        self.http = httpx.Client(base_url=self.url, timeout=60)

    def ask(self, question: str, **kwargs: Any) -> httpx.Response:
        return self.http.post("/v1/ask", json={"question": question, "conversation_id": "t-1"}, **kwargs)

    def tokens(self) -> dict[tuple[str, str], float]:
        found = {}
        for line in self.http.get("/metrics").text.splitlines():
            if line.startswith("support_agent_llm_tokens_total{"):
                labels, value = line[len("support_agent_llm_tokens_total{"):].split("} ")
                pairs = dict(p.split("=") for p in labels.split(","))
                found[(pairs["model"].strip('"'), pairs["direction"].strip('"'))] = float(value)
        return found


@pytest.fixture(scope="module")
def logdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="module")
def redis(logdir: Path) -> Iterator[Redis]:
    require(binary="redis-server", hint="apt-get install redis-server")
    server = Redis(logdir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def milvus(logdir: Path) -> Iterator[str]:
    require(module="milvus_lite", hint="pip install milvus-lite")
    port = free_port()
    argv = [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(logdir / "milvus"),
            "--host", "127.0.0.1", "--port", str(port)]
    with started("milvus", argv, base_env(), logdir) as proc:
        def accepts() -> bool:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        wait_until(accepts, 30, f"Milvus Lite on port {port}", proc)
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def llm(logdir: Path) -> Iterator[httpx.Client]:
    require(module="agentverify", hint="pip install -e . in the agentverify checkout (its LLM stub)")
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "agentverify.llm_stub.app:app", "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "warning"]
    env = {**base_env(), "LLM_STUB_API_KEYS": API_KEY}
    env.pop("PYTHONPATH")
    with started("llm-stub", argv, env, logdir) as proc, \
            httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        wait_until(lambda: client.get("/health").status_code == 200, 30, "the LLM stub's /health", proc)
        yield client


@pytest.fixture(scope="module")
def config_file(logdir: Path) -> Path:
    path = logdir / "config.yaml"
    path.write_text(CONFIG, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def agent_env(redis: Redis, milvus: str, llm: httpx.Client, config_file: Path) -> dict[str, str]:
    return {**base_env(), "OPENAI_BASE_URL": str(llm.base_url).rstrip("/") + "/v1",
            "OPENAI_API_KEY": API_KEY, "REDIS_URL": redis.url, "MILVUS_URI": milvus,
            "SUPPORT_CONFIG": str(config_file), "APP_VERSION": VERSION, "HOST": "127.0.0.1"}


def run_ingest(env: dict[str, str], docs: Path = KNOWLEDGE) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "support_agent.ingest", "--docs", str(docs)],
                          env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def ingested(agent_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = run_ingest(agent_env)
    assert result.returncode == 0, result.stderr
    return result


@contextlib.contextmanager
def agent_process(env: dict[str, str], logdir: Path, name: str, **extra: str) -> Iterator[Agent]:
    port = free_port()
    log_file = logdir / f"{name}-requests.log"
    full = {**env, "PORT": str(port), "SUPPORT_LOG_FILE": str(log_file), "INSTANCE_ID": name, **extra}
    with started(name, [sys.executable, "-m", "support_agent"], full, logdir) as proc:
        agent = Agent(proc, port, log_file)
        try:
            wait_until(lambda: agent.http.get("/healthz").status_code == 200, 60, f"{name} /healthz 200", proc)
            yield agent
        finally:
            agent.http.close()


@pytest.fixture(scope="module")
def agent(agent_env: dict[str, str], ingested: Any, logdir: Path) -> Iterator[Agent]:
    with agent_process(agent_env, logdir, "agent-a") as a:
        yield a


def ledger(llm: httpx.Client) -> dict[str, Any]:
    return llm.get("/ledger").json()


@contextlib.contextmanager
def llm_faults(llm: httpx.Client, **settings: Any) -> Iterator[None]:
    assert llm.post("/faults", json=settings).status_code == 200
    try:
        yield
    finally:
        llm.delete("/faults")


def new_question() -> str:
    # a question nobody asked yet, so it cannot come from the cache
    return f"How do I set up the guest network for visitor {uuid.uuid4().hex[:8]}?"


# ----------------------------------------------------------------------------- tests


def test_ingest_loads_every_passage_and_is_idempotent(ingested: Any, agent_env: dict[str, str],
                                                       milvus: str) -> None:
    from pymilvus import MilvusClient

    count, sections = read_documents(KNOWLEDGE)
    lines = ingested.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"ingested {len(sections)} passages from {count} documents into support_kb (dim 64, 0 stale removed)")
    again = run_ingest(agent_env)
    assert again.returncode == 0 and "0 stale removed" in again.stdout and again.stderr == ""
    client = MilvusClient(uri=milvus)
    try:
        rows = client.query("support_kb", filter="pk >= 0", output_fields=["pk", "doc"])
        assert sorted(r["pk"] for r in rows) == sorted(s.pk for s in sections)
        assert {r["doc"] for r in rows} == TITLES
    finally:
        client.close()


def test_ingest_removes_passages_of_deleted_documents(agent_env: dict[str, str], logdir: Path,
                                                      milvus: str) -> None:
    from pymilvus import MilvusClient

    docs = logdir / "scratch-docs"
    docs.mkdir()
    for name in ("guest-network.md", "orbit-plus.md"):
        shutil.copy(KNOWLEDGE / name, docs / name)
    config = logdir / "scratch.yaml"
    config.write_text("vector_store: {collection: support_scratch, dim: 32}\n")
    env = {**agent_env, "SUPPORT_CONFIG": str(config)}
    assert run_ingest(env, docs).returncode == 0
    (docs / "orbit-plus.md").unlink()
    result = run_ingest(env, docs)
    keep = read_documents(docs)[1]
    assert result.returncode == 0 and "(dim 32, 4 stale removed)" in result.stdout, result.stdout
    client = MilvusClient(uri=milvus)
    try:
        rows = client.query("support_scratch", filter="pk >= 0", output_fields=["pk"])
        assert sorted(r["pk"] for r in rows) == sorted(s.pk for s in keep)
    finally:
        client.close()


def test_ingest_error_is_one_line_and_exit_1(agent_env: dict[str, str]) -> None:
    result = run_ingest({**agent_env, "MILVUS_URI": f"http://127.0.0.1:{free_port()}"})
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("support-agent-ingest: Milvus at http://127.0.0.1:")
    assert result.stderr.count("\n") == 1 and API_KEY not in result.stderr


def test_knowledge_check_against_milvus(ingested: Any, milvus: str) -> None:
    import asyncio

    from pymilvus import MilvusClient
    from pymilvus.client.types import LoadState

    from support_agent.knowledge import KnowledgeBase, KnowledgeError

    async def check(collection: str) -> None:
        kb = KnowledgeBase(milvus, collection, 5)
        try:
            await kb.check()
        finally:
            await kb.close()

    client = MilvusClient(uri=milvus)
    try:
        client.release_collection("support_kb")
        assert client.get_load_state("support_kb")["state"] == LoadState.NotLoad
        asyncio.run(check("support_kb"))  # loads it again
        assert client.get_load_state("support_kb")["state"] == LoadState.Loaded
    finally:
        client.close()
    with pytest.raises(KnowledgeError, match="no collection 'support_missing' \\(run the ingest\\)"):
        asyncio.run(check("support_missing"))


def test_answers_with_citations_and_version(agent: Agent) -> None:
    resp = agent.ask("How long is the Orbit warranty?")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["text"] and body["citations"]
    assert {c["doc"] for c in body["citations"]} <= TITLES
    assert all(isinstance(c["score"], float) and -1.0 <= c["score"] <= 1.0 for c in body["citations"])
    assert body["meta"] == {"build": VERSION, "cached": False, "model": CHAT_MODEL}
    assert resp.headers["X-App-Version"] == VERSION and resp.headers["X-Served-By"] == "agent-a"


def test_repeat_is_cached_without_an_llm_call(agent: Agent, llm: httpx.Client) -> None:
    question = new_question()
    before = ledger(llm)["requests"]
    first = agent.ask(question)
    after_first = ledger(llm)["requests"]
    second = agent.ask(question)
    assert after_first - before == 2  # one embedding, one chat completion
    assert ledger(llm)["requests"] == after_first
    assert first.json()["meta"]["cached"] is False and second.json()["meta"]["cached"] is True
    assert second.json()["text"] == first.json()["text"]


def test_tokens_metric_equals_the_ledger(agent: Agent, llm: httpx.Client) -> None:
    metric_before, ledger_before = agent.tokens(), ledger(llm)["models"]
    for _ in range(3):
        assert agent.ask(new_question()).status_code == 200
    metric_after, ledger_after = agent.tokens(), ledger(llm)["models"]

    def delta(model: str, key: str) -> int:
        return ledger_after[model][key] - ledger_before.get(model, {}).get(key, 0)

    got = {k: metric_after[k] - metric_before.get(k, 0) for k in metric_after}
    assert got[(CHAT_MODEL, "prompt")] == delta(CHAT_MODEL, "prompt_tokens") > 0
    assert got[(CHAT_MODEL, "completion")] == delta(CHAT_MODEL, "completion_tokens") > 0
    assert got[(EMBED_MODEL, "prompt")] == delta(EMBED_MODEL, "embedding_tokens") > 0


@pytest.mark.parametrize("status", [429, 503])
def test_sdk_retries_meet_llm_errors(agent: Agent, llm: httpx.Client, status: int) -> None:
    errors_before = ledger(llm)["errors"]
    with llm_faults(llm, error_rate=0.5, status_code=status):
        answers = [agent.ask(new_question()) for _ in range(2)]
        injected = llm.get("/faults").json()["injected"]
    assert [r.status_code for r in answers] == [200, 200], [r.text for r in answers]
    assert injected >= 2 and ledger(llm)["errors"] - errors_before == injected


def test_llm_down_after_retries_is_502(agent: Agent, llm: httpx.Client) -> None:
    with llm_faults(llm, error_rate=1.0, status_code=500, endpoints=["chat"]):
        resp = agent.ask(new_question())
    assert resp.status_code == 502 and "answered 500 after 3 retries" in resp.json()["error"]


def test_health_503_when_redis_stops_and_answers_go_on(agent: Agent, redis: Redis) -> None:
    redis.stop()
    try:
        health = agent.http.get("/healthz")
        assert health.status_code == 503 and health.json()["failing"] == ["redis"], health.text
        assert health.json()["deps"]["milvus"] == "ok"
        question = new_question()
        answers = [agent.ask(question), agent.ask(question)]
        assert [r.status_code for r in answers] == [200, 200]
        assert [r.json()["meta"]["cached"] for r in answers] == [False, False]
    finally:
        redis.start()
    wait_until(lambda: agent.http.get("/healthz").status_code == 200, 10, "healthz 200 after Redis is back")


def test_rate_limit_is_shared_by_replicas(agent_env: dict[str, str], ingested: Any, logdir: Path) -> None:
    config = logdir / "limited.yaml"
    config.write_text(CONFIG + "rate_limit: {enabled: true, requests_per_second: 1, burst: 4}\n")
    env = {**agent_env, "SUPPORT_CONFIG": str(config)}
    with agent_process(env, logdir, "agent-l1") as one, agent_process(env, logdir, "agent-l2") as two:
        customer = {"X-Customer-Id": f"acme-{uuid.uuid4().hex[:6]}"}
        assert one.ask("How much does Orbit Plus cost?").status_code == 200  # warm the cache
        started_at = time.monotonic()
        answers = [(a.proc.name, a.ask("How much does Orbit Plus cost?", headers=customer))
                   for a in [one, two] * 6]
        elapsed = time.monotonic() - started_at
        allowed = [name for name, r in answers if r.status_code == 200]
        limited = [(name, r) for name, r in answers if r.status_code == 429]
        assert len(allowed) + len(limited) == 12
        # one bucket for both replicas: the burst plus what refilled while we sent
        assert 4 <= len(allowed) <= 4 + math.ceil(elapsed * 1), (len(allowed), elapsed)
        assert {name for name, _ in limited} == {"agent-l1", "agent-l2"}
        assert all(int(r.headers["Retry-After"]) >= 1 for _, r in limited)
        assert two.ask("How much does Orbit Plus cost?", headers={"X-Customer-Id": "globex"}).status_code == 200


def test_sigterm_lets_the_request_in_flight_finish(agent_env: dict[str, str], ingested: Any,
                                                   llm: httpx.Client, logdir: Path) -> None:
    with agent_process(agent_env, logdir, "agent-t") as a:
        result: dict[str, httpx.Response] = {}
        with llm_faults(llm, latency_ms=2000, endpoints=["chat"]):
            worker = threading.Thread(target=lambda: result.setdefault("r", a.ask(new_question())))
            worker.start()
            wait_until(lambda: llm.get("/faults").json()["matched"] >= 1, 10, "the chat call at the LLM")
            a.proc.signal(signal.SIGTERM)
            worker.join(30)
        assert result["r"].status_code == 200 and result["r"].json()["text"]
        # uvicorn ends by the signal it shut down for, after the shutdown completed
        assert a.proc.popen.wait(20) == -signal.SIGTERM, a.proc.tail()
        assert "support agent v1-test (agent-t) stopped" in a.proc.tail()


def test_every_request_logged_once_across_rotation(agent: Agent) -> None:
    assert agent.log_file is not None
    rotated = agent.log_file.with_name(agent.log_file.name + ".1")
    ids = [agent.ask("How do I pause the internet?").headers["X-Request-Id"] for _ in range(3)]
    agent.log_file.rename(rotated)  # logrotate without copytruncate, then its postrotate SIGHUP
    agent.proc.signal(signal.SIGHUP)
    ids += [agent.http.get("/healthz").headers["X-Request-Id"]]
    ids += [agent.ask("How do I pause the internet?").headers["X-Request-Id"] for _ in range(3)]
    assert agent.proc.popen.poll() is None, "SIGHUP must not stop the agent"
    old = [json.loads(line)["request_id"] for line in rotated.read_text().splitlines()]
    new = [json.loads(line)["request_id"] for line in agent.log_file.read_text().splitlines()]
    assert len(old + new) == len(set(old + new)), "a request was logged twice"
    assert set(ids[:3]) <= set(old) and set(ids[3:]) <= set(new)
