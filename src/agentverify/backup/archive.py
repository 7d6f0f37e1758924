"""The backup archive format: one tar.gz with a manifest, written and verified whole.

What is here: :func:`write_archive` (every staged file plus ``manifest.json``, renamed
into place), :func:`read_archive` (one streaming pass that checks gzip, tar structure,
safe member names and every member's size and sha256 against the manifest),
:func:`open_backup` / :class:`OpenedBackup` (verify, then extract into a temporary
directory), and the JSON-lines encoding the members use (bytes kept as base64, numpy
values as plain numbers).
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from agentverify.errors import BackupRestoreError

__all__ = ["FORMAT", "FORMAT_VERSION", "MANIFEST", "OpenedBackup", "dump_line", "load_line",
           "member_info", "open_backup", "read_archive", "read_jsonl", "write_archive"]

FORMAT = "agentverify-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"

_CHUNK = 1 << 20
_MANIFEST_MAX = 16 << 20
_BYTES_TAG = "__agentverify_bytes__"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def member_info(name: str, size: int, mtime: float) -> tarfile.TarInfo:
    """The tar header of one member: a regular file, 0644, owned by nobody in particular."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = int(mtime)
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_archive(staging: Path, dest: Path, manifest: dict[str, Any]) -> Path:
    """Pack every file under ``staging`` into ``dest`` (tar.gz) with a manifest.

    ``manifest`` gets ``format``, ``format_version`` and ``files`` (relative path ->
    ``{"bytes", "sha256"}``) filled in; ``manifest.json`` is the archive's first member.
    The archive is written next to ``dest`` and renamed into place, so a crash never
    leaves a half-written archive under the final name.

    Raises:
        BackupRestoreError: ``dest`` cannot be written.
    """
    files: dict[str, dict[str, Any]] = {}
    paths = sorted(p for p in staging.rglob("*") if p.is_file())
    for p in paths:
        rel = p.relative_to(staging).as_posix()
        if rel == MANIFEST:
            raise BackupRestoreError(f"{dest.name}: {MANIFEST}: reserved name in staging")
        files[rel] = {"bytes": p.stat().st_size, "sha256": _sha256_file(p)}
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest,
                "files": files}
    body = (json.dumps(manifest, indent=2, sort_keys=False) + "\n").encode()
    mtime = time.time()
    tmp = dest.with_name(f".{dest.name}.partial")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
            tar.addfile(member_info(MANIFEST, len(body), mtime), io.BytesIO(body))
            for p in paths:
                rel = p.relative_to(staging).as_posix()
                with open(p, "rb") as fh:
                    tar.addfile(member_info(rel, files[rel]["bytes"], mtime), fh)
        os.replace(tmp, dest)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise BackupRestoreError(f"{dest}: cannot write the archive ({exc.strerror or exc})") \
            from exc
    return dest


def _safe_member_name(name: str) -> bool:
    p = PurePosixPath(name)
    return bool(name) and not p.is_absolute() and ".." not in p.parts and "\\" not in name


def read_archive(path: Path, extract_to: Path | None = None) -> dict[str, Any]:
    """Verify an archive completely; optionally extract it; return its manifest.

    Checks, in one streaming pass: gzip integrity (CRC, no trailing garbage), tar
    structure (a truncated archive fails while reading), only regular files with safe
    relative names, no duplicates; then against the manifest: a known format and
    version, every listed file present with the listed size and sha256, nothing extra.

    Args:
        path: the archive.
        extract_to: an (empty) directory to write the members into as they are read;
            the caller must discard it when this raises.

    Raises:
        BackupRestoreError: one line, ``ARCHIVE: MEMBER: problem``.
    """
    name = path.name
    seen: dict[str, tuple[int, str]] = {}
    manifest_bytes: bytes | None = None
    trailer_error: BaseException | None = None
    current = "(archive header)"
    try:
        with open(path, "rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as gz, \
                tarfile.open(fileobj=gz, mode="r|") as tar:
            for member in tar:
                current = member.name
                if not member.isfile():
                    raise BackupRestoreError(
                        f"{name}: {member.name}: unexpected member type (only regular files "
                        f"belong in a backup archive)")
                if not _safe_member_name(member.name):
                    raise BackupRestoreError(f"{name}: {member.name}: unsafe member name")
                if member.name in seen:
                    raise BackupRestoreError(f"{name}: {member.name}: duplicate member")
                fh = tar.extractfile(member)
                assert fh is not None  # a regular file always has a file object
                h = hashlib.sha256()
                size = 0
                keep = member.name == MANIFEST
                buf = bytearray()
                out = None
                if extract_to is not None and not keep:
                    target = extract_to / member.name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    out = open(target, "wb")
                try:
                    while chunk := fh.read(_CHUNK):
                        h.update(chunk)
                        size += len(chunk)
                        if keep:
                            if size > _MANIFEST_MAX:
                                raise BackupRestoreError(
                                    f"{name}: {MANIFEST}: larger than {_MANIFEST_MAX} bytes")
                            buf += chunk
                        if out is not None:
                            out.write(chunk)
                finally:
                    if out is not None:
                        out.close()
                if size != member.size:
                    raise BackupRestoreError(
                        f"{name}: {member.name}: truncated ({size} of {member.size} bytes)")
                seen[member.name] = (size, h.hexdigest())
                if keep:
                    manifest_bytes = bytes(buf)
                current = f"(after {member.name})"
            current = "(end of archive)"
            # The tar reader stops at the end-of-archive blocks; read the gzip stream to
            # its end so its CRC and length are checked and trailing garbage is seen.
            try:
                while gz.read(_CHUNK):
                    pass
            except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as exc:
                trailer_error = exc
    except BackupRestoreError:
        raise
    except FileNotFoundError:
        raise BackupRestoreError(f"{path}: no such archive") from None
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, OSError) as exc:
        reason = str(exc) or type(exc).__name__
        raise BackupRestoreError(
            f"{name}: {current}: unreadable, truncated or corrupted ({reason})") from exc
    try:
        manifest = _check_manifest(name, manifest_bytes, seen)
    except BackupRestoreError as exc:
        raise exc from trailer_error
    if trailer_error is not None:
        # every member matched its sha256, yet the gzip stream is damaged after them
        reason = str(trailer_error) or type(trailer_error).__name__
        raise BackupRestoreError(f"{name}: (end of archive): unreadable, truncated or "
                                 f"corrupted ({reason})") from trailer_error
    return manifest


def _check_manifest(name: str, manifest_bytes: bytes | None,
                    seen: dict[str, tuple[int, str]]) -> dict[str, Any]:
    """The manifest parsed and every member checked against it (see read_archive)."""
    if manifest_bytes is None:
        raise BackupRestoreError(f"{name}: {MANIFEST}: missing (not an agentverify backup?)")
    try:
        manifest = json.loads(manifest_bytes)
    except ValueError as exc:
        raise BackupRestoreError(f"{name}: {MANIFEST}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupRestoreError(f"{name}: {MANIFEST}: not an {FORMAT} manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BackupRestoreError(
            f"{name}: {MANIFEST}: unknown format version {version!r} (this agentverify "
            f"reads version {FORMAT_VERSION}; restore with the agentverify that wrote it)")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise BackupRestoreError(f"{name}: {MANIFEST}: no 'files' table")
    for rel, want in files.items():
        if rel not in seen:
            raise BackupRestoreError(f"{name}: {rel}: missing from the archive")
        size, digest = seen[rel]
        if not isinstance(want, dict) or size != want.get("bytes"):
            want_bytes = want.get("bytes") if isinstance(want, dict) else None
            raise BackupRestoreError(
                f"{name}: {rel}: size {size} bytes, manifest says {want_bytes} "
                f"(archive altered?)")
        if digest != want.get("sha256"):
            raise BackupRestoreError(f"{name}: {rel}: sha256 mismatch (archive altered?)")
    extra = sorted(set(seen) - set(files) - {MANIFEST})
    if extra:
        raise BackupRestoreError(
            f"{name}: {extra[0]}: unexpected member, not in the manifest (archive altered?)")
    return manifest


@dataclass
class OpenedBackup:
    """A verified archive, extracted into a temporary directory."""

    path: Path
    manifest: dict[str, Any]
    dir: Path

    @property
    def collections(self) -> dict[str, dict[str, Any]]:
        return dict(self.manifest.get("milvus", {}).get("collections", {}))


@contextlib.contextmanager
def open_backup(path: Path | str, workdir: Path | None = None) -> Iterator[OpenedBackup]:
    """Verify and extract an archive; the extracted files are removed on exit.

    Nothing outside ``workdir`` (a fresh temporary directory) is written, so a
    :class:`~agentverify.errors.BackupRestoreError` from here means nothing live was
    touched.
    """
    path = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix="agentverify-restore-", dir=workdir))
    try:
        manifest = read_archive(path, extract_to=tmp)
        yield OpenedBackup(path, manifest, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------- JSON lines of members


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {_BYTES_TAG: base64.b64encode(bytes(value)).decode()}
    if hasattr(value, "tolist"):  # numpy scalars / arrays
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot store a {type(value).__name__} in a backup")


def _json_hook(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and _BYTES_TAG in obj:
        return base64.b64decode(obj[_BYTES_TAG])
    return obj


def dump_line(value: Any) -> str:
    """One JSON line of a member (``entities.jsonl``, ``keys.jsonl``)."""
    return json.dumps(value, default=_json_default, separators=(",", ":"),
                      ensure_ascii=False)


def load_line(line: str) -> Any:
    """The value :func:`dump_line` wrote (bytes come back as bytes)."""
    return json.loads(line, object_hook=_json_hook)


def read_jsonl(path: Path) -> Iterator[Any]:
    """Every value of a JSON-lines member, blank lines skipped."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield load_line(line)
