"""The wheel house the runtime image installs from, and the project's own wheel.

What is here: the project's runtime requirements (:func:`runtime_requirements`, dev-only
packages left out) and the hash that keys their wheel house
(:func:`requirements_hash`); the PEP 508 environment of the image's Python
(:func:`target_environment`) and the requirements no wheel satisfies for it
(:func:`unsatisfied_requirements`); :func:`ensure_dep_wheels` (``pip wheel`` into the
cache, offline first, completed for the image's Python) and
:func:`ensure_project_wheel` (agentverify's wheel, rebuilt when :func:`source_hash` of
``src/`` and ``pyproject.toml`` changes).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentverify.errors import BackendUnavailable, StackError, UsageError
from agentverify.images.naming import short_hash
from agentverify.images.workdirs import cache_dir, scratch_root

__all__ = ["ensure_dep_wheels", "ensure_project_wheel", "ensure_requirement_wheels",
           "file_sha256", "files_hash", "requirements_hash", "runtime_requirements",
           "source_hash", "target_environment", "tree_files", "unsatisfied_requirements"]

# Dev-only extras never go into the image: the containers need only the runtime deps.
_EXCLUDED_REQS = {"locust", "testcontainers", "docker", "pytest-timeout"}
_SOURCE_TOP = ("pyproject.toml", "setup.cfg", "setup.py", "MANIFEST.in", "README.md",
               "README.rst", "LICENSE")
_SKIP_DIRS = {"__pycache__", ".mypy_cache", ".pytest_cache"}


def tree_files(top: Path, base: Path, skip_dirs: set[str] = _SKIP_DIRS) -> list[Path]:
    """Every file under ``top``, relative to ``base``, sorted (``skip_dirs``, egg-info,
    bytecode and editor lock files left out)."""
    files = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = sorted(d for d in dirnames
                             if d not in skip_dirs and not d.endswith(".egg-info"))
        for name in filenames:
            if name.endswith((".pyc", ".pyo")) or name.startswith(".#"):
                continue
            files.append((Path(dirpath) / name).relative_to(base))
    return sorted(files, key=lambda p: p.as_posix())


def _source_files(project_dir: Path) -> list[Path]:
    """Files that make up the project's wheel, relative to ``project_dir``, sorted."""
    files = [Path(n) for n in _SOURCE_TOP if (project_dir / n).is_file()]
    files += tree_files(project_dir / "src", project_dir)
    return sorted(files, key=lambda p: p.as_posix())


def files_hash(root: Path, files: Sequence[Path]) -> str:
    """Hash of ``files`` (relative to ``root``): their paths and bytes."""
    h = hashlib.sha256()
    for rel in files:
        h.update(rel.as_posix().encode() + b"\0")
        h.update((root / rel).read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def source_hash(project_dir: Path) -> str:
    """Hash of every file under ``src/`` plus ``pyproject.toml`` (paths and bytes)."""
    return files_hash(project_dir, _source_files(project_dir))


def runtime_requirements(project_dir: Path) -> list[str]:
    """``[project].dependencies`` of pyproject.toml, without dev-only packages, sorted."""
    path = project_dir / "pyproject.toml"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"{path}: cannot read the project's dependencies ({exc})") from exc
    reqs = data.get("project", {}).get("dependencies", [])
    keep = []
    for req in reqs:
        name = re.split(r"[\s<>=!~;\[(]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")
        if name not in _EXCLUDED_REQS:
            keep.append(req.strip())
    return sorted(keep)


def requirements_hash(requirements: Sequence[str], python_version: str) -> str:
    """Key of a wheelhouse: the requirements and the image's exact Python version."""
    payload = json.dumps({"requirements": sorted(requirements), "python": python_version,
                          "machine": os.uname().machine}, sort_keys=True)
    return short_hash(hashlib.sha256(payload.encode()).hexdigest())


def target_environment(python_version: str) -> dict[str, str]:
    """PEP 508 marker environment of the image's interpreter (this machine's, but for the
    Python version): ``python_full_version`` differs between host and image (3.11.7 here,
    3.11.2 in bookworm), and redis needs async-timeout only below 3.11.3."""
    from packaging.markers import default_environment

    env = dict(default_environment())
    env.update(python_full_version=python_version,
               python_version=".".join(python_version.split(".")[:2]),
               implementation_name="cpython", implementation_version=python_version,
               platform_python_implementation="CPython", sys_platform="linux",
               platform_system="Linux", os_name="posix")
    return env


@dataclass(frozen=True)
class _WheelDist:
    name: str
    version: Any
    requires: tuple[str, ...]


def _wheel_metadata(path: Path) -> _WheelDist:
    from email.parser import HeaderParser

    from packaging.utils import canonicalize_name
    from packaging.version import Version

    with zipfile.ZipFile(path) as zf:
        meta = next((n for n in zf.namelist()
                     if n.count("/") == 1 and n.endswith(".dist-info/METADATA")), None)
        if meta is None:
            raise StackError(f"{path.name}: not a wheel (no .dist-info/METADATA)")
        msg = HeaderParser().parsestr(zf.read(meta).decode("utf-8", errors="replace"))
    return _WheelDist(canonicalize_name(msg["Name"]), Version(msg["Version"]),
                      tuple(msg.get_all("Requires-Dist") or ()))


def unsatisfied_requirements(wheels: Sequence[Path], requirements: Sequence[str],
                             environment: Mapping[str, str]) -> list[str]:
    """Requirements the image's pip will ask for that no wheel in ``wheels`` satisfies.

    Walks the dependency closure of ``requirements`` through the wheels' metadata with
    markers evaluated for ``environment`` (see :func:`target_environment`).

    Example:
        >>> unsatisfied_requirements([], ["redis>=5"], target_environment("3.11.2"))
        ['redis>=5']
    """
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    dists: dict[str, list[_WheelDist]] = {}
    for path in wheels:
        dist = _wheel_metadata(path)
        dists.setdefault(dist.name, []).append(dist)
    queue = [Requirement(r) for r in requirements]
    seen: set[tuple[str, str, frozenset[str]]] = set()
    missing: list[str] = []
    while queue:
        req = queue.pop(0)
        if req.marker is not None and not req.marker.evaluate({**environment, "extra": ""}):
            continue
        name = canonicalize_name(req.name)
        key = (name, str(req.specifier), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        match = next((d for d in dists.get(name, [])
                      if req.specifier.contains(d.version, prereleases=True)), None)
        if match is None:
            extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
            missing.append(f"{req.name}{extras}{req.specifier}")
            continue
        for text in match.requires:
            dep = Requirement(text)
            if dep.marker is None or any(dep.marker.evaluate({**environment, "extra": e})
                                         for e in {"", *req.extras}):
                dep.marker = None
                queue.append(dep)
    return sorted(set(missing))


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _pip(args: list[str], what: str, log_path: Path) -> None:
    """Run the host's pip (its config, constraints and indexes apply, as for any install)."""
    argv = [sys.executable, "-m", "pip", *args]
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    with log_path.open("w", encoding="utf-8") as log:
        proc = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              env=env, check=False)
    if proc.returncode != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-12:]
        raise StackError(f"{what} failed (pip exited {proc.returncode}; full log: {log_path}):\n"
                         + "\n".join(tail))


_MANIFEST = "manifest.json"


def _read_manifest(directory: Path) -> dict[str, str] | None:
    try:
        data = json.loads((directory / _MANIFEST).read_text(encoding="utf-8"))
        wheels = dict(data["wheels"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if all((directory / name).is_file() for name in wheels):
        return wheels
    return None


def _write_manifest(directory: Path, wheels: Mapping[str, str], **extra: Any) -> None:
    tmp = directory / (_MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"wheels": dict(sorted(wheels.items())), **extra}, indent=1),
                   encoding="utf-8")
    tmp.replace(directory / _MANIFEST)


def _check_host_python(python_version: str) -> None:
    want = tuple(int(x) for x in python_version.split(".")[:2])
    if sys.version_info[:2] != want:
        raise BackendUnavailable(
            f"the wheelhouse is built with the host's Python, which must be "
            f"{want[0]}.{want[1]} like the image's python3 {python_version} (this is "
            f"{sys.version_info[0]}.{sys.version_info[1]}): run agentverify from a "
            f"python{want[0]}.{want[1]} virtualenv")


def ensure_dep_wheels(project_dir: Path, python_version: str, progress: Callable[[str], None],
                      ) -> tuple[Path, dict[str, str], list[str], int]:
    """Third-party wheels for the runtime requirements, cached per requirements hash.

    -> (wheelhouse dir, wheel name -> sha256, requirements, how many wheels are new)
    """
    return ensure_requirement_wheels(runtime_requirements(project_dir), python_version,
                                     progress)


def ensure_requirement_wheels(reqs: list[str], python_version: str,
                              progress: Callable[[str], None],
                              ) -> tuple[Path, dict[str, str], list[str], int]:
    """Wheels of ``reqs`` for the image's Python, cached per requirements hash (every
    wheel house shares the cache: one already downloaded is not fetched again).

    -> (wheelhouse dir, wheel name -> sha256, requirements, how many wheels are new)
    """
    root = cache_dir() / "wheelhouse"
    target = root / requirements_hash(reqs, python_version)
    wheels = _read_manifest(target)
    if wheels is not None:
        return target, wheels, reqs, 0
    _check_host_python(python_version)
    target.mkdir(parents=True, exist_ok=True)
    known = {p.name for p in root.glob("*/*.whl") if p.parent != target}
    req_file = target / "requirements.txt"
    req_file.write_text("\n".join(reqs) + "\n", encoding="utf-8")
    log = target / "pip.log"
    links = [arg for d in sorted(p for p in root.iterdir() if p.is_dir() and p != target)
             for arg in ("--find-links", str(d))]
    try:
        if not links:
            raise StackError("no cached wheels yet")
        # Offline first: wheels cached for earlier requirement sets are not fetched again.
        _pip(["wheel", "--no-index", *links, "-w", str(target), "-r", str(req_file)],
             "pip wheel (offline, from the cache)", log)
    except StackError:
        _pip(["wheel", *links, "-w", str(target), "-r", str(req_file)],
             "pip wheel of the runtime requirements", log)
    # The host's pip resolved for the host's interpreter; markers on python_full_version
    # can ask for more inside the image (redis: async-timeout below 3.11.3).
    env = target_environment(python_version)
    for _ in range(5):
        missing = unsatisfied_requirements(sorted(target.glob("*.whl")), reqs, env)
        if not missing:
            break
        progress(f"wheelhouse: adding {', '.join(missing)} for Python {python_version}")
        _pip(["wheel", "--find-links", str(target), *links, "-w", str(target), *missing],
             f"pip wheel {' '.join(missing)}", log)
    else:
        raise StackError(f"the wheelhouse {target} still lacks {', '.join(missing)} for "
                         f"Python {python_version}; see {log}")
    wheels = {p.name: file_sha256(p) for p in sorted(target.glob("*.whl"))}
    _write_manifest(target, wheels, requirements=reqs, python=python_version)
    return target, wheels, reqs, len([n for n in wheels if n not in known])


def ensure_project_wheel(project_dir: Path, progress: Callable[[str], None], *,
                         files: list[Path] | None = None, digest: str | None = None,
                         cache: str = "project", what: str = "the agentverify wheel",
                         ) -> tuple[Path, bool]:
    """The project's wheel, rebuilt only when a source file changed. -> (wheel, built).

    ``files`` (relative to ``project_dir``) and ``digest`` default to agentverify's own
    (:func:`source_hash`); an agent built from ``stack.agent.source`` passes its own, and
    a ``cache`` directory of its own.
    """
    files = _source_files(project_dir) if files is None else files
    digest = source_hash(project_dir) if digest is None else digest
    root = cache_dir() / cache
    target = root / short_hash(digest)
    found = _read_manifest(target)
    if found:
        return target / next(iter(found)), False
    with tempfile.TemporaryDirectory(prefix="agentverify-src-", dir=scratch_root(0)) as tmp:
        # Build from a copy: an in-tree build would leave build/ and egg-info in the
        # working tree other people are editing.
        copy = Path(tmp) / "src-copy"
        for rel in files:
            (copy / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(project_dir / rel, copy / rel)
        out = Path(tmp) / "out"
        out.mkdir()
        _pip(["wheel", "--no-deps", "-w", str(out), str(copy)],
             f"building {what}", Path(tmp) / "pip.log")
        built = sorted(out.glob("*.whl"))
        if len(built) != 1:
            raise StackError(f"building {what} produced {len(built)} wheels")
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(built[0], target / built[0].name)
        _write_manifest(target, {built[0].name: file_sha256(target / built[0].name)},
                        source_sha256=digest)
    # keep the five most recent project wheels
    olds = sorted((p for p in root.iterdir() if p.is_dir() and p != target),
                  key=lambda p: p.stat().st_mtime, reverse=True)
    for old in olds[4:]:
        shutil.rmtree(old, ignore_errors=True)
    return target / built[0].name, True
