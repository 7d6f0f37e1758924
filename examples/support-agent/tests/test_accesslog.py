"""The request log file survives logrotate (rename, no copytruncate) and SIGHUP."""

from __future__ import annotations

import json
from pathlib import Path

from support_agent.accesslog import AccessLog


def ids(path: Path) -> list[str]:
    return [json.loads(line)["request_id"] for line in path.read_text().splitlines()]


def test_lines_go_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.log"
    log = AccessLog(str(path))
    log.write({"request_id": "r1", "status": 200})
    log.write({"request_id": "r2", "message": "100% done"})
    assert ids(path) == ["r1", "r2"]
    assert json.loads(path.read_text().splitlines()[1])["message"] == "100% done"
    log.close()


def test_a_renamed_file_is_reopened_on_the_next_line(tmp_path: Path) -> None:
    path = tmp_path / "agent.log"
    log = AccessLog(str(path))
    log.write({"request_id": "before"})
    path.rename(tmp_path / "agent.log.1")  # what logrotate does without copytruncate
    log.write({"request_id": "after"})
    assert ids(tmp_path / "agent.log.1") == ["before"] and ids(path) == ["after"]
    log.close()


def test_request_reopen_reopens_the_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.log"
    log = AccessLog(str(path))
    log.write({"request_id": "a"})
    path.unlink()
    path.write_text("")  # replaced by another file of the same name
    log.request_reopen()
    log.write({"request_id": "b"})
    assert ids(path) == ["b"]
    log.close()
