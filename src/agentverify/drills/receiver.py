"""The stack's webhook receiver: where a rehearsal's alerts and notifications land.

Alertmanager's webhooks and the runbooks' ``notify`` operations are sent here instead of
to a team (a rehearsal never pages anyone), so "the team was told" is a recorded fact
with a receive time. It is a service of the stack (``receiver``), started by the backend
like every other: ``python -m agentverify.drills.receiver --host 127.0.0.1 --port N``
(in a container it binds its network alias' address, so Alertmanager reaches it as
``receiver:9095``).

==============================  =========================================================
``POST /alerts``                Alertmanager's webhook (payload version 4: ``status``,
                                ``groupKey``, ``alerts[]`` with ``labels``,
                                ``annotations``, ``startsAt``, ``endsAt``, ``fingerprint``)
``POST /notify``                a Slack-style message ``{"text": ...}`` (422 without text)
``POST /<anything else>``       recorded as a plain webhook
``GET /records?since=N``        every record after sequence number N, oldest first:
                                ``{"records": [{seq, received, path, kind, body}],
                                "last": N}``; ``kind`` is ``alertmanager``, ``notify``
                                or ``webhook``; ``received`` is unix seconds
``PUT /checks/NAME``            a synthetic check's result ``{"failed", "total"}``
``DELETE /checks/NAME``         forget a check
``GET /metrics``                ``agentverify_check_failed{check}``,
                                ``agentverify_check_total{check}`` (Prometheus scrapes
                                them: a check that fails raises an alert) and
                                ``agentverify_receiver_records_total{kind}``
``GET /health``                 200
==============================  =========================================================

The last 10,000 records are kept, in memory.

Example:
    >>> client = ReceiverClient("http://127.0.0.1:9095")                 # doctest: +SKIP
    >>> client.notify("high load: scaled to 5 replicas")                # doctest: +SKIP
    >>> [r.text for r in client.records(kind="notify")]                  # doctest: +SKIP
    ['high load: scaled to 5 replicas']
"""

# No `from __future__ import annotations`: FastAPI resolves the route annotations (Request)
# of create_app's closures at definition time, and fastapi is imported only there, so the
# agentverify process can use ReceiverClient without importing the server's stack.
import argparse
import contextlib
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["ALERT_KEYS", "MAX_RECORDS", "PAYLOAD_KEYS", "Notification", "ReceiverClient", "Record",
           "create_app", "main", "payload_problems"]

MAX_RECORDS = 10_000
#: a webhook body larger than this is refused (Alertmanager's are a few kB)
MAX_BODY = 1_000_000


def _kind(path: str, body: Any) -> str:
    if isinstance(body, dict) and str(body.get("version")) == "4" \
            and isinstance(body.get("alerts"), list):
        return "alertmanager"
    if path == "/notify":
        return "notify"
    return "webhook"


def create_app(max_records: int = MAX_RECORDS) -> Any:
    """The receiver's FastAPI app (the last ``max_records`` in memory; one worker)."""
    import json

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

    app = FastAPI(title="agentverify receiver")
    records: deque[dict[str, Any]] = deque(maxlen=max_records)
    state = {"seq": 0}
    registry = CollectorRegistry()
    received = Counter("agentverify_receiver_records", "Webhooks received, by kind.", ["kind"],
                       registry=registry)
    failed = Gauge("agentverify_check_failed", "Failed cases of a synthetic check.", ["check"],
                   registry=registry)
    total = Gauge("agentverify_check_total", "Cases of a synthetic check.", ["check"],
                  registry=registry)
    for kind in ("alertmanager", "notify", "webhook"):
        received.labels(kind=kind)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/records")
    async def list_records(since: int = 0, kind: str | None = None,
                           limit: int = MAX_RECORDS) -> dict[str, Any]:
        chosen = [r for r in records if r["seq"] > since and (kind is None or r["kind"] == kind)]
        return {"records": chosen[:max(0, limit)], "last": state["seq"]}

    @app.put("/checks/{name}")
    async def put_check(name: str, request: Request) -> Any:
        try:
            body = json.loads(await request.body())
            n_failed, n_total = int(body["failed"]), int(body.get("total", body["failed"]))
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": 'expected {"failed": N, "total": M}'}, 422)
        failed.labels(check=name).set(n_failed)
        total.labels(check=name).set(n_total)
        return {"check": name, "failed": n_failed, "total": n_total}

    @app.delete("/checks/{name}")
    async def delete_check(name: str) -> dict[str, str]:
        for gauge in (failed, total):
            with contextlib.suppress(KeyError):
                gauge.remove(name)
        return {"check": name}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/{path:path}")
    async def record(path: str, request: Request) -> Any:
        raw = await request.body()
        if len(raw) > MAX_BODY:
            return JSONResponse({"error": f"body over {MAX_BODY} bytes"}, 413)
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", errors="replace")
        where = "/" + path
        if where == "/notify" and not (isinstance(body, dict) and isinstance(body.get("text"), str)):
            return JSONResponse({"error": 'expected a Slack-style {"text": "..."}'}, 422)
        kind = _kind(where, body)
        state["seq"] += 1
        records.append({"seq": state["seq"], "received": time.time(), "path": where,
                        "kind": kind, "body": body})
        received.labels(kind=kind).inc()
        return {"seq": state["seq"], "kind": kind}

    return app


# ------------------------------------------------------------------------------ client


@dataclass(frozen=True)
class Notification:
    """One alert of an Alertmanager webhook, with the time the receiver got it."""

    seq: int
    received: float
    status: str  # firing | resolved (the alert's own status)
    name: str
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: str
    ends_at: str
    fingerprint: str
    group_key: str
    #: what the webhook lacks of Alertmanager's payload (version 4); empty when complete
    payload_problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class Record:
    """One POST the receiver recorded."""

    seq: int
    received: float
    path: str
    kind: str
    body: Any

    @property
    def text(self) -> str | None:
        """The text of a Slack-style notification."""
        return self.body.get("text") if isinstance(self.body, dict) else None

    def notifications(self) -> Iterator[Notification]:
        """The alerts of an Alertmanager webhook (none for other kinds)."""
        if self.kind != "alertmanager":
            return
        for alert in self.body.get("alerts", []):
            labels = dict(alert.get("labels") or {})
            yield Notification(self.seq, self.received, str(alert.get("status", "")),
                               labels.get("alertname", ""), labels,
                               dict(alert.get("annotations") or {}),
                               str(alert.get("startsAt", "")), str(alert.get("endsAt", "")),
                               str(alert.get("fingerprint", "")),
                               str(self.body.get("groupKey", "")),
                               tuple(payload_problems(self.body, alert)))


#: what Alertmanager's webhook (payload version 4) carries, on the message and per alert
PAYLOAD_KEYS = ("version", "groupKey", "status", "receiver", "groupLabels", "commonLabels",
                "commonAnnotations", "externalURL", "alerts")
ALERT_KEYS = ("status", "labels", "annotations", "startsAt", "endsAt", "generatorURL",
              "fingerprint")


def payload_problems(body: Any, alert: Any) -> list[str]:
    """What one webhook lacks of Alertmanager's payload version 4 for ``alert``.

    Example:
        >>> payload_problems({"version": "4"}, {"status": "firing"})[:2]
        ['no groupKey', 'no status']
    """
    problems = [f"no {k}" for k in PAYLOAD_KEYS if not isinstance(body, dict) or k not in body]
    if isinstance(body, dict) and str(body.get("version")) != "4":
        problems.append(f"version {body.get('version')!r}, not 4")
    problems += [f"alert has no {k}" for k in ALERT_KEYS
                 if not isinstance(alert, dict) or k not in alert]
    if isinstance(alert, dict) and not (alert.get("labels") or {}).get("alertname"):
        problems.append("alert has no alertname label")
    return problems


class ReceiverClient:
    """Reads and writes the stack's receiver.

    Args:
        base_url: where it listens (``stack.endpoints["receiver"]``).
        timeout: seconds per HTTP call.
    """

    def __init__(self, base_url: str, *, timeout: float = 5.0) -> None:
        from agentverify import _http

        self.base_url = base_url.rstrip("/")
        self._http = _http.new_client(base_url=self.base_url, timeout=timeout)

    def __repr__(self) -> str:
        return f"ReceiverClient({self.base_url!r})"

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        from agentverify.errors import StackError

        try:
            resp = self._http.request(method, path, **kwargs)
            resp.raise_for_status()
            return resp.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise StackError(f"receiver at {self.base_url}: {method} {path}: {exc}") from exc

    def records(self, since: int = 0, kind: str | None = None) -> list[Record]:
        """Records after sequence number ``since`` (of one ``kind``), oldest first."""
        params: dict[str, Any] = {"since": since}
        if kind:
            params["kind"] = kind
        body = self._call("GET", "/records", params=params)
        return [Record(r["seq"], float(r["received"]), r["path"], r["kind"], r["body"])
                for r in body.get("records", [])]

    def last_seq(self) -> int:
        """The sequence number of the latest record (0: none yet)."""
        return int(self._call("GET", "/records", params={"limit": 0})["last"])

    def notifications(self, since: int = 0) -> list[Notification]:
        """Every alert of every Alertmanager webhook after ``since``."""
        return [n for r in self.records(since, kind="alertmanager") for n in r.notifications()]

    def notify(self, text: str) -> Record:
        """Post a Slack-style notification (what a runbook's ``notify`` does)."""
        body = self._call("POST", "/notify", json={"text": text})
        return Record(int(body["seq"]), time.time(), "/notify", "notify", {"text": text})

    def set_check(self, name: str, failed: int, total: int) -> None:
        """Report a synthetic check's result (Prometheus scrapes it from /metrics)."""
        self._call("PUT", f"/checks/{name}", json={"failed": failed, "total": total})

    def clear_check(self, name: str) -> None:
        self._call("DELETE", f"/checks/{name}")


# ------------------------------------------------------------------------------ main


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m agentverify.drills.receiver --host H --port P``."""
    parser = argparse.ArgumentParser(prog="python -m agentverify.drills.receiver",
                                     description="agentverify's webhook receiver")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9095)
    args = parser.parse_args(argv)
    import uvicorn

    uvicorn.run(create_app(), host=args.host, port=args.port, log_level="warning",
                access_log=False, timeout_graceful_shutdown=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
