"""Backup and restore against the real stack, on every backend.

A real backup of the shared staging stack (Redis SAVE + RDB, Milvus through pymilvus)
is restored into a fresh real stack and compared key by key, entity by entity, search
by search; damaged copies are refused before the live stack is touched; and the
bundled ``scenarios/backup_restore.yaml`` passes as a pytest run of its own.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentverify.backup import TAMPER_MODES, read_archive, service_name, snapshot_redis
from agentverify.scenarios import backup_restore as steps
from agentverify.scenarios.runner import ScenarioContext
from agentverify.session import AgentVerifySession

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]

PREFIX = "agentverify:itest:"


@pytest.fixture
def ctx(av_session: AgentVerifySession, stack: Any, tmp_path: Path) -> Iterator[ScenarioContext]:
    """A scenario context on the shared stack; seeded data is removed afterwards."""
    context = ScenarioContext(stack, av_session.config, env=av_session.env,
                              report_dir=tmp_path, say=lambda line: print(line),
                              backend=av_session.backend_name,
                              new_stack=av_session.fresh_stack)
    yield context
    errors = context.run_cleanups()
    context.close()
    assert not errors


def test_restore_into_a_fresh_stack_loses_nothing(ctx: ScenarioContext, tmp_path: Path) -> None:
    seeded = steps.seed_data(ctx, steps.SeedParams(keys=200, entities=16, prefix=PREFIX))
    assert seeded == {"seeded_keys": 200, "seeded_entities": 16}

    backed_up = steps.backup(ctx, steps.BackupParams())
    archives = list((tmp_path / "backups").glob("backup_*.tar.gz"))
    assert archives == [ctx.state["backup_archive"]]
    assert backed_up["redis_keys"] >= 200
    assert backed_up["entities"] >= 16 + 1  # the seeded ones and the ingested knowledge
    assert backed_up["archive_bytes"] == archives[0].stat().st_size

    manifest = read_archive(archives[0])
    assert manifest["source"]["backend"] == ctx.backend
    assert manifest["redis"]["keys"] == backed_up["redis_keys"]
    knowledge = ctx.config.vector_store.collection
    assert manifest["milvus"]["collections"][knowledge]["entities"] == backed_up["entities"] \
        - sum(c["entities"] for n, c in manifest["milvus"]["collections"].items()
              if n != knowledge)
    assert len(manifest["search"]) >= 5
    with tarfile.open(archives[0], "r:gz") as tar:
        names = set(tar.getnames())
        rdb = tar.extractfile("redis/dump.rdb").read(5)  # type: ignore[union-attr]
    assert rdb == b"REDIS"
    assert {"manifest.json", "redis/dump.rdb", "redis/keys.jsonl",
            f"milvus/{knowledge}/schema.json", f"milvus/{knowledge}/entities.jsonl"} <= names
    with tarfile.open(archives[0], "r:gz") as tar:
        lines = tar.extractfile("redis/keys.jsonl").read().decode()  # type: ignore[union-attr]
    keys = [json.loads(line) for line in lines.splitlines()]
    seeded_keys = [k for k in keys if k.get("key", "").startswith(PREFIX)]
    assert len(seeded_keys) == 200
    assert sum(k["pttl"] > 0 for k in seeded_keys) == 100
    assert sum(k["pttl"] == -1 for k in seeded_keys) == 100

    facts = steps.restore_verify(ctx, steps.RestoreParams())
    print(f"backup {backed_up['backup_seconds']}s, restore {facts['restore_seconds']}s, "
          f"archive {backed_up['archive_bytes']} bytes")
    assert facts["keys_lost"] == 0
    assert facts["keys_changed"] == 0
    assert facts["ttl_mismatches"] == 0
    assert facts["entities_lost"] == 0
    assert facts["entities_changed"] == 0
    assert facts["entities_extra"] == 0
    assert facts["search_mismatches"] == 0
    assert facts["search_queries"] == len(manifest["search"])
    assert facts["restored_keys"] >= 200
    assert facts["restored_entities"] == backed_up["entities"]
    assert facts["restore_seconds"] < 60


def test_damaged_archives_are_refused_and_the_live_stack_is_untouched(
        ctx: ScenarioContext, stack: Any) -> None:
    steps.seed_data(ctx, steps.SeedParams(keys=60, entities=4, prefix=PREFIX))
    steps.backup(ctx, steps.BackupParams(search_queries=2))
    for mode in TAMPER_MODES:
        steps.tamper_archive(ctx, steps.TamperParams(mode=mode))
    redis_before = stack.service(service_name(stack, "cache"))
    keys_before = snapshot_redis(redis_before.url()).keys

    facts = steps.restore_expect_refused(ctx, steps.RefusedParams())

    assert facts == {"tampered_archives": len(TAMPER_MODES), "tampered_refused": True,
                     "tampered_refused_count": len(TAMPER_MODES), "live_untouched": True}
    redis_after = stack.service(service_name(stack, "cache"))
    assert redis_after is redis_before
    assert {k: r.digest for k, r in snapshot_redis(redis_after.url()).keys.items()} == \
        {k: r.digest for k, r in keys_before.items()}


def test_the_bundled_scenario_passes(state_dir: Path, tmp_path: Path) -> None:
    """``pytest scenarios/backup_restore.yaml --agentverify-env staging`` (local backend)."""
    missing = [b for b in ("redis-server", "nginx", "prometheus", "prometheus-alertmanager")
               if shutil.which(b) is None]
    if missing:
        pytest.fail(f"the local backend needs {missing}: scripts/bootstrap installs them",
                    pytrace=False)
    env = {**os.environ, "AGENTVERIFY_STATE_DIR": str(state_dir)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "scenarios/backup_restore.yaml",
         "--agentverify-env", "staging", "--agentverify-backend", "local",
         "--agentverify-report-dir", str(tmp_path / "reports"), "-q", "-p", "no:cacheprovider"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert "backup-restore: PASSED" in output
    results = json.loads((tmp_path / "reports" / "results.json").read_text())
    facts = results["scenarios"][0]["facts"]
    assert facts["keys_lost"] == facts["entities_lost"] == facts["search_mismatches"] == 0
    assert facts["tampered_refused"] is True and facts["live_untouched"] is True
    assert list((tmp_path / "reports" / "backups").glob("backup_*.tar.gz"))
