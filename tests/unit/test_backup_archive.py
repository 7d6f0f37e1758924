"""The backup archive: written with a manifest, refused whole when anything is off.

No servers: archives are built from temporary files. Every refusal must be one line
naming the archive and the member, so an operator knows which file to distrust.
"""

from __future__ import annotations

import io
import json
import random
import tarfile
from datetime import UTC
from pathlib import Path

import pytest

from agentverify.backup import (
    FORMAT_VERSION,
    MANIFEST,
    TAMPER_MODES,
    KeyRecord,
    open_backup,
    read_archive,
    tamper,
    write_archive,
)
from agentverify.backup.comparison import values_close
from agentverify.backup.milvus import _search_differs
from agentverify.backup.operations import _archive_path
from agentverify.backup.redis import _digest
from agentverify.errors import BackupRestoreError, ScenarioError

ENTITIES = "milvus/agent_knowledge/entities.jsonl"


@pytest.fixture
def staging(tmp_path: Path) -> Path:
    rng = random.Random(7)
    root = tmp_path / "staging"
    (root / "redis").mkdir(parents=True)
    (root / "milvus" / "agent_knowledge").mkdir(parents=True)
    # incompressible content, so a byte flipped mid-archive lands inside a member
    (root / "redis" / "dump.rdb").write_bytes(rng.randbytes(48_000))
    (root / "redis" / "keys.jsonl").write_text('{"db": 0, "key_b64": "YQ=="}\n')
    (root / "milvus" / "agent_knowledge" / "schema.json").write_text('{"fields": []}\n')
    lines = [json.dumps({"id": i, "vector": [rng.random() for _ in range(8)]})
             for i in range(400)]
    (root / ENTITIES).write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def archive(staging: Path, tmp_path: Path) -> Path:
    return write_archive(staging, tmp_path / "backup_20250101T000000Z.tar.gz",
                         {"created": "2025-01-01T00:00:00Z", "redis": {"keys": 1}})


def refusal(path: Path) -> str:
    with pytest.raises(BackupRestoreError) as info:
        read_archive(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path.name}: ")
    return message


# ------------------------------------------------------------------------- a good archive


def test_manifest_lists_every_file_with_size_and_sha256(archive: Path, staging: Path) -> None:
    manifest = read_archive(archive)
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["redis"] == {"keys": 1}
    assert sorted(manifest["files"]) == sorted(
        p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
    rdb = manifest["files"]["redis/dump.rdb"]
    assert rdb["bytes"] == 48_000
    assert len(rdb["sha256"]) == 64


def test_manifest_is_the_first_member(archive: Path) -> None:
    with tarfile.open(archive, "r:gz") as tar:
        names = tar.getnames()
    assert names[0] == MANIFEST
    assert len(names) == len(set(names)) == 5


def test_open_backup_extracts_identical_files_and_cleans_up(archive: Path,
                                                            staging: Path) -> None:
    with open_backup(archive) as opened:
        extracted = opened.dir
        for rel in opened.manifest["files"]:
            assert (extracted / rel).read_bytes() == (staging / rel).read_bytes()
        assert not (extracted / MANIFEST).exists()
    assert not extracted.exists()


def test_open_backup_cleans_up_after_a_refusal(archive: Path, tmp_path: Path) -> None:
    bad = tamper(archive, tmp_path / "bad.tar.gz", "altered_member")
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(BackupRestoreError), open_backup(bad, workdir=work):
        pass
    assert list(work.iterdir()) == []


def test_no_partial_file_is_left_when_the_destination_is_unwritable(staging: Path,
                                                                    tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(BackupRestoreError, match="cannot write the archive"):
        write_archive(staging, blocker / "backup.tar.gz", {})


def test_archive_names_are_unique_per_second(tmp_path: Path) -> None:
    from datetime import datetime

    now = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
    first = _archive_path(tmp_path, now)
    assert first.name == "backup_20250304T050607Z.tar.gz"
    first.write_text("x")
    assert _archive_path(tmp_path, now).name == "backup_20250304T050607Z-2.tar.gz"


# ------------------------------------------------------------------------- refusals


def test_truncated_archive_is_refused(archive: Path, tmp_path: Path) -> None:
    message = refusal(tamper(archive, tmp_path / "t.tar.gz", "truncate"))
    assert "truncated or corrupted" in message or "truncated (" in message


def test_truncated_archive_names_the_member_being_read(archive: Path, tmp_path: Path) -> None:
    data = archive.read_bytes()
    cut = tmp_path / "cut.tar.gz"
    # members are sorted: the incompressible dump.rdb fills most of the archive's tail
    cut.write_bytes(data[: int(len(data) * 0.9)])
    assert refusal(cut).startswith("cut.tar.gz: redis/dump.rdb: unreadable, truncated or "
                                   "corrupted (")


def test_flipped_byte_is_refused_naming_the_damaged_member(archive: Path,
                                                           tmp_path: Path) -> None:
    # the middle of the archive is inside dump.rdb, stored raw by deflate (random bytes):
    # the flip decompresses cleanly, so the gzip CRC fails only at the end; the member's
    # sha256 is what names it
    message = refusal(tamper(archive, tmp_path / "f.tar.gz", "flip_byte"))
    assert message == "f.tar.gz: redis/dump.rdb: sha256 mismatch (archive altered?)"


@pytest.mark.parametrize("offset", [0.25, 0.5, 0.75, 0.99])
def test_a_flipped_byte_anywhere_is_refused(archive: Path, tmp_path: Path,
                                            offset: float) -> None:
    data = bytearray(archive.read_bytes())
    data[int(len(data) * offset)] ^= 0x01
    bad = tmp_path / "flip.tar.gz"
    bad.write_bytes(bytes(data))
    refusal(bad)


def test_altered_member_is_a_sha256_mismatch(archive: Path, tmp_path: Path) -> None:
    bad = tamper(archive, tmp_path / "backup_x.tar.gz", "altered_member")
    assert refusal(bad) == f"backup_x.tar.gz: {ENTITIES}: sha256 mismatch (archive altered?)"


def test_extra_member_is_refused(archive: Path, tmp_path: Path) -> None:
    message = refusal(tamper(archive, tmp_path / "e.tar.gz", "extra_member"))
    assert message.endswith("redis/notes.txt: unexpected member, not in the manifest "
                            "(archive altered?)")


def test_missing_member_is_refused(archive: Path, tmp_path: Path) -> None:
    message = refusal(tamper(archive, tmp_path / "m.tar.gz", "missing_member"))
    assert message.endswith(f"{ENTITIES}: missing from the archive")


def test_unknown_format_version_is_refused(archive: Path, tmp_path: Path) -> None:
    message = refusal(tamper(archive, tmp_path / "v.tar.gz", "bad_version"))
    assert f"{MANIFEST}: unknown format version {FORMAT_VERSION + 98}" in message


def rebuild(src: Path, dst: Path, edit) -> Path:
    with tarfile.open(src, "r:gz") as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar]  # type: ignore[union-attr]
    members = edit(members)
    with tarfile.open(dst, "w:gz") as tar:
        for name, body in members:
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return dst


def test_size_mismatch_is_refused(archive: Path, tmp_path: Path) -> None:
    def grow(members):
        return [(n, b + b"\n" if n == "redis/keys.jsonl" else b) for n, b in members]

    message = refusal(rebuild(archive, tmp_path / "s.tar.gz", grow))
    assert "redis/keys.jsonl: size" in message and "manifest says" in message


def test_missing_manifest_is_refused(archive: Path, tmp_path: Path) -> None:
    bad = rebuild(archive, tmp_path / "n.tar.gz",
                  lambda ms: [(n, b) for n, b in ms if n != MANIFEST])
    assert refusal(bad).endswith(f"{MANIFEST}: missing (not an agentverify backup?)")


def test_manifest_that_is_not_json_is_refused(archive: Path, tmp_path: Path) -> None:
    bad = rebuild(archive, tmp_path / "j.tar.gz",
                  lambda ms: [(n, b"{nope" if n == MANIFEST else b) for n, b in ms])
    assert f"{MANIFEST}: not valid JSON" in refusal(bad)


def test_unsafe_member_name_is_refused(archive: Path, tmp_path: Path) -> None:
    bad = rebuild(archive, tmp_path / "u.tar.gz", lambda ms: [*ms, ("../evil.sh", b"rm\n")])
    assert refusal(bad).endswith("../evil.sh: unsafe member name")


def test_duplicate_member_is_refused(archive: Path, tmp_path: Path) -> None:
    bad = rebuild(archive, tmp_path / "d.tar.gz",
                  lambda ms: [*ms, ("redis/dump.rdb", b"shadow")])
    assert refusal(bad).endswith("redis/dump.rdb: duplicate member")


def test_trailing_garbage_is_refused(archive: Path, tmp_path: Path) -> None:
    bad = tmp_path / "g.tar.gz"
    bad.write_bytes(archive.read_bytes() + b"garbage after the gzip stream")
    assert "(end of archive)" in refusal(bad)


def test_not_a_gzip_file_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "backup_junk.tar.gz"
    bad.write_bytes(b"this is not an archive at all" * 10)
    refusal(bad)


def test_missing_archive_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(BackupRestoreError, match="no such archive"):
        read_archive(tmp_path / "backup_none.tar.gz")


def test_every_tamper_mode_is_refused(archive: Path, tmp_path: Path) -> None:
    for mode in TAMPER_MODES:
        refusal(tamper(archive, tmp_path / f"{mode}.tar.gz", mode))


def test_backup_restore_error_is_a_scenario_error() -> None:
    assert issubclass(BackupRestoreError, ScenarioError)


# ------------------------------------------------------------------------- verification helpers


def test_value_digest_ignores_set_and_hash_order() -> None:
    assert _digest("set", {b"a", b"b"}) == _digest("set", {b"b", b"a"})
    assert _digest("hash", {b"x": b"1", b"y": b"2"}) == _digest("hash", {b"y": b"2", b"x": b"1"})
    assert _digest("list", [b"a", b"b"]) != _digest("list", [b"b", b"a"])
    assert _digest("string", b"ab") != _digest("list", [b"ab"])
    # length-prefixed: the split between items matters
    assert _digest("list", [b"ab", b"c"]) != _digest("list", [b"a", b"bc"])


def test_key_record_round_trips_binary_keys() -> None:
    record = KeyRecord(3, b"\xff\x00key", "string", "d" * 32, 1500)
    data = json.loads(json.dumps(record.to_json()))
    assert "key" not in data  # not UTF-8: only the base64 form
    assert KeyRecord.from_json(data) == record
    assert KeyRecord(0, b"plain", "set", "d", -1).to_json()["key"] == "plain"


def test_vectors_compare_within_tolerance() -> None:
    assert values_close({"id": 1, "v": [0.1, 0.2]}, {"id": 1, "v": [0.1 + 1e-9, 0.2]}, 1e-6)
    assert not values_close({"id": 1, "v": [0.1, 0.2]}, {"id": 1, "v": [0.1, 0.21]}, 1e-6)
    assert not values_close({"id": 1, "t": "a"}, {"id": 1, "t": "b"}, 1e-6)
    assert not values_close({"id": 1}, {"id": 1, "extra": 2}, 1e-6)
    assert not values_close(True, 1.0, 1e-6)


def hits(*pairs: tuple[int, float]) -> list[dict[str, float]]:
    return [{"id": i, "score": s} for i, s in pairs]


def test_search_results_must_match_in_order() -> None:
    want = hits((1, 1.0), (2, 0.9), (3, 0.8))
    assert _search_differs(want, hits((1, 1.0), (2, 0.90005), (3, 0.8)), 1e-4) is None
    assert "score" in _search_differs(want, hits((1, 1.0), (2, 0.89), (3, 0.8)), 1e-4)
    assert "ids" in _search_differs(want, hits((1, 1.0), (3, 0.9), (2, 0.8)), 1e-4)
    assert "hits" in _search_differs(want, hits((1, 1.0)), 1e-4)


def test_tied_scores_may_come_back_in_either_order() -> None:
    want = hits((1, 1.0), (2, 0.5), (3, 0.5), (4, 0.1))
    assert _search_differs(want, hits((1, 1.0), (3, 0.5), (2, 0.5), (4, 0.1)), 1e-4) is None
    # a tie at the cut-off may bring in another id of the same score
    assert _search_differs(hits((1, 1.0), (2, 0.5)), hits((1, 1.0), (9, 0.5)), 1e-4) is None
    assert _search_differs(want, hits((1, 1.0), (3, 0.5), (9, 0.5), (4, 0.1)), 1e-4)
