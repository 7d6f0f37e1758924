"""The webhook receiver: it records Alertmanager's payloads and Slack-style notifications
with their receive time, serves them back in order, and turns synthetic checks into
metrics Prometheus scrapes. Its client reads what the drill needs from the records."""

from __future__ import annotations

import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from agentverify.drills.receiver import MAX_RECORDS, ReceiverClient, create_app, payload_problems
from agentverify.errors import StackError


def _alertmanager(status: str = "firing", name: str = "AgentHighLoad") -> dict[str, Any]:
    """A webhook as Alertmanager 0.25 sends it (payload version 4)."""
    alert = {"status": status, "labels": {"alertname": name, "severity": "warning"},
             "annotations": {"summary": "request rate above 100/s"},
             "startsAt": "2026-12-01T09:20:00.000Z",
             "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2026-12-01T09:21:00Z",
             "generatorURL": "http://prometheus/graph", "fingerprint": "7f3a9c2d1e0b4a56"}
    return {"receiver": "default", "status": status, "alerts": [alert],
            "groupLabels": {"alertname": name}, "commonLabels": alert["labels"],
            "commonAnnotations": alert["annotations"], "externalURL": "http://am:9093",
            "version": "4", "groupKey": '{}:{alertname="%s"}' % name, "truncatedAlerts": 0}


@pytest.fixture
def http() -> TestClient:
    return TestClient(create_app(), base_url="http://receiver")


@pytest.fixture
def client(http: TestClient) -> ReceiverClient:
    c = ReceiverClient("http://receiver")
    c._http = http  # the app in process, through the client's own code
    return c


def test_records_come_back_in_order_with_their_kind_and_receive_time(http: TestClient) -> None:
    t0 = time.time()
    assert http.post("/alerts", json=_alertmanager()).json() == {"seq": 1, "kind": "alertmanager"}
    assert http.post("/notify", json={"text": "scaled to 5"}).json() == {"seq": 2,
                                                                          "kind": "notify"}
    assert http.post("/other/hook", json={"anything": 1}).json()["kind"] == "webhook"
    body = http.get("/records").json()
    assert body["last"] == 3
    assert [(r["seq"], r["path"], r["kind"]) for r in body["records"]] == \
        [(1, "/alerts", "alertmanager"), (2, "/notify", "notify"), (3, "/other/hook", "webhook")]
    assert all(t0 <= r["received"] <= time.time() for r in body["records"])
    assert [r["seq"] for r in http.get("/records", params={"since": 1}).json()["records"]] == [2, 3]
    assert [r["seq"] for r in http.get("/records", params={"kind": "notify"}).json()["records"]] \
        == [2]


def test_a_notification_without_text_is_refused(http: TestClient) -> None:
    resp = http.post("/notify", json={"message": "no text key"})
    assert resp.status_code == 422
    assert "text" in resp.json()["error"]
    assert http.get("/records").json()["records"] == []


def test_checks_become_metrics_and_can_be_taken_away(http: TestClient) -> None:
    assert http.put("/checks/known_answers", json={"failed": 2, "total": 3}).status_code == 200
    http.post("/alerts", json=_alertmanager())
    text = http.get("/metrics").text
    assert 'agentverify_check_failed{check="known_answers"} 2.0' in text
    assert 'agentverify_check_total{check="known_answers"} 3.0' in text
    assert 'agentverify_receiver_records_total{kind="alertmanager"} 1.0' in text
    assert http.put("/checks/x", json={"total": 3}).status_code == 422
    http.delete("/checks/known_answers")
    assert "known_answers" not in http.get("/metrics").text


def test_the_client_reads_alert_notifications_and_posts_texts(client: ReceiverClient,
                                                              http: TestClient) -> None:
    http.post("/alerts", json=_alertmanager("firing"))
    record = client.notify("high load: scaled to 5 replicas")
    http.post("/alerts", json=_alertmanager("resolved"))
    http.post("/alerts", json=_alertmanager("firing", name="AgentReplicaDown"))
    assert record.seq == 2 and client.last_seq() == 4
    notes = client.notifications()
    assert [(n.name, n.status) for n in notes] == [("AgentHighLoad", "firing"),
                                                   ("AgentHighLoad", "resolved"),
                                                   ("AgentReplicaDown", "firing")]
    first = notes[0]
    assert first.fingerprint == "7f3a9c2d1e0b4a56" and first.starts_at.startswith("2026-12-01")
    assert first.annotations["summary"] == "request rate above 100/s"
    assert first.payload_problems == ()
    assert [n.seq for n in client.notifications(since=2)] == [3, 4]
    assert [r.text for r in client.records(kind="notify")] == ["high load: scaled to 5 replicas"]


def test_an_incomplete_payload_is_named() -> None:
    body = _alertmanager()
    del body["groupKey"]
    body["version"] = "3"
    alert = dict(body["alerts"][0])
    del alert["fingerprint"]
    assert payload_problems(body, alert) == ["no groupKey", "version '3', not 4",
                                             "alert has no fingerprint"]


def test_only_the_last_records_are_kept() -> None:
    assert MAX_RECORDS == 10_000
    http = TestClient(create_app(max_records=20), base_url="http://receiver")
    for i in range(25):
        http.post("/notify", json={"text": f"n{i}"})
    body = http.get("/records").json()
    assert len(body["records"]) == 20 and body["records"][0]["seq"] == 6 and body["last"] == 25


def test_an_unreachable_receiver_is_a_stack_error() -> None:
    client = ReceiverClient("http://127.0.0.1:9", timeout=0.5)
    with pytest.raises(StackError, match=r"receiver at http://127\.0\.0\.1:9: GET /records"):
        client.records()
    client.close()
