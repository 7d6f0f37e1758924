"""Build every image the stack needs without a container registry.

``agentverify images build`` makes one *runtime* image that holds every server the stack
runs in containers (redis-server, nginx, prometheus, prometheus-alertmanager, and a
Python venv with agentverify, Milvus Lite, uvicorn ...) and tags each ``agentverify/*``
image name the configuration uses onto it. Nothing is ever pulled:

1. **base** ``agentverify/base:<hash>`` — ``debootstrap --variant=minbase`` of Debian
   bookworm with the server packages, imported with ``docker import``. The mirror is read
   from this machine's apt sources (or ``AGENTVERIFY_DEBIAN_MIRROR``) and is not part of
   the hash, so the same package list gives the same tag on every machine.
2. **wheelhouse** — ``pip wheel`` of the project's runtime dependencies on the host into
   ``~/.cache/agentverify/wheelhouse/<hash of the requirements>`` (reused as long as the
   requirements do not change), completed for the *image's* Python (markers such as
   ``python_full_version < "3.11.3"`` differ from the host's), plus the project's own
   wheel, rebuilt when a file under ``src/`` or ``pyproject.toml`` changes.
3. **runtime** ``agentverify/runtime:<hash>`` — a two-stage ``docker build`` (network
   ``none``, ``FROM`` the local base, never pulled): the third-party wheels go into the
   venv ``/opt/agentverify`` in a cached stage, the project's wheel on top, and no wheel
   file stays in the image. The hash covers the base tag, every wheel and the Dockerfile.
4. **role tags** — ``agentverify/python:local``, ``agentverify/redis:local`` ... all point
   at the runtime image. Names outside ``agentverify/`` are the user's: only checked.

Every stage is skipped when its content-hash tag already exists, so a second build with
nothing changed only hashes the sources and asks the engine a few questions.

Example:
    >>> from agentverify.config import load_config
    >>> roles = ensure_images(load_config())            # doctest: +SKIP
    base image agentverify/base:3f9c0a1b2d4e: present
    ...
    >>> roles["redis"]                                  # doctest: +SKIP
    'sha256:...'
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentverify.config import Config
from agentverify.errors import AgentVerifyError, BackendUnavailable, StackError, UsageError

__all__ = [
    "BASE_PACKAGES",
    "DebianMirror",
    "ImageBuildReport",
    "add_images_cli",
    "base_image_tag",
    "cmd_images",
    "configured_images",
    "ensure_images",
    "build_images",
    "find_debian_mirror",
    "images_present",
    "parse_deb822_sources",
    "parse_sources_list",
    "render_dockerfile",
    "requirements_hash",
    "runtime_content_hash",
    "runtime_requirements",
    "source_hash",
    "target_environment",
    "unsatisfied_requirements",
]

SUITE = "bookworm"
#: What the containers run (same argv as the local backend). python3-venv: Debian's
#: python3 has no ensurepip; the venv is made in the runtime layer with ``python3 -m venv``.
BASE_PACKAGES: tuple[str, ...] = (
    "ca-certificates",
    "curl",
    "nginx-light",
    "procps",
    "prometheus",
    "prometheus-alertmanager",
    "python3",
    "python3-venv",
    "redis-server",
)
#: Bumped whenever the base recipe (cleanup, image config) changes: it changes the tag.
BASE_RECIPE = "3"
BASE_REPO = "agentverify/base"
RUNTIME_REPO = "agentverify/runtime"
OWN_PREFIX = "agentverify/"
LABEL = "agentverify.image"
HASH_LABEL = "agentverify.content-hash"
PYTHON_LABEL = "agentverify.python"
VENV = "/opt/agentverify"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MIRROR_ENV = "AGENTVERIFY_DEBIAN_MIRROR"
PROJECT_ENV = "AGENTVERIFY_PROJECT_DIR"
#: label of the runtime image: hash of the agentverify sources it was built from
SOURCE_LABEL = "agentverify.source-hash"
MIN_FREE_BYTES = 2 * 1024**3  # a rootfs is ~300 MB, its tar stream is not written to disk
# Dev-only extras never go into the image: the containers need only the runtime deps.
# matplotlib only draws results.html, on the host (~40 MB with numpy that no service uses).
_EXCLUDED_REQS = {"locust", "testcontainers", "docker", "pytest-timeout", "matplotlib"}
_HASH_LEN = 12

Progress = Callable[[str], None]


# ------------------------------------------------------------------------- Debian mirror


@dataclass(frozen=True)
class DebianMirror:
    """Where debootstrap fetches packages from, and the keyring apt uses for it."""

    url: str
    signed_by: str | None = None
    source: str = ""


def _usable_uri(uri: str) -> bool:
    return uri.split(":", 1)[0] in {"http", "https", "file"}


def parse_deb822_sources(text: str, suite: str = SUITE, *, source: str = "") -> DebianMirror | None:
    """The first ``Types: deb`` entry of a deb822 ``.sources`` text serving ``suite``/main.

    Example:
        >>> parse_deb822_sources("Types: deb\\nURIs: http://m/debian\\n"
        ...                      "Suites: bookworm bookworm-updates\\nComponents: main\\n").url
        'http://m/debian'
    """
    paragraphs: list[dict[str, str]] = [{}]
    last_key: str | None = None
    for raw in text.splitlines():
        line = raw.rstrip()
        if line.lstrip().startswith("#"):
            continue
        if not line.strip():
            if paragraphs[-1]:
                paragraphs.append({})
            last_key = None
            continue
        if line[0] in " \t" and last_key is not None:  # folded continuation line
            paragraphs[-1][last_key] = f"{paragraphs[-1][last_key]} {line.strip()}".strip()
            continue
        key, sep, value = line.partition(":")
        if not sep:
            continue
        last_key = key.strip().lower()
        paragraphs[-1][last_key] = value.strip()
    for para in paragraphs:
        if para.get("enabled", "yes").lower() == "no":
            continue
        if "deb" not in para.get("types", "").split():
            continue
        if suite not in para.get("suites", "").split():
            continue
        if "main" not in para.get("components", "").split():
            continue
        for uri in para.get("uris", "").split():
            if _usable_uri(uri):
                return DebianMirror(uri.rstrip("/"), para.get("signed-by") or None, source)
    return None


def parse_sources_list(text: str, suite: str = SUITE, *, source: str = "") -> DebianMirror | None:
    """The first one-line ``deb [options] URI suite main`` entry serving ``suite``.

    Example:
        >>> parse_sources_list("deb [arch=amd64 signed-by=/k.gpg] http://m/debian bookworm main").url
        'http://m/debian'
    """
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        tokens = line.split()
        if not tokens or tokens[0] != "deb":
            continue
        tokens = tokens[1:]
        options: dict[str, str] = {}
        if tokens and tokens[0].startswith("["):
            # "[a=b c=d]" or "[ a=b ]": options run up to the token that ends with "]"
            opts: list[str] = []
            while tokens:
                tok = tokens.pop(0)
                opts.append(tok)
                if tok.endswith("]"):
                    break
            for opt in " ".join(opts).strip("[] ").split():
                k, _, v = opt.partition("=")
                options[k.lower()] = v
        if len(tokens) < 3:
            continue
        uri, line_suite, components = tokens[0], tokens[1], tokens[2:]
        if line_suite == suite and "main" in components and _usable_uri(uri):
            return DebianMirror(uri.rstrip("/"), options.get("signed-by") or None, source)
    return None


def find_debian_mirror(
    suite: str = SUITE,
    *,
    environ: Mapping[str, str] | None = None,
    apt_dir: Path = Path("/etc/apt"),
) -> DebianMirror:
    """The Debian mirror of this machine: ``AGENTVERIFY_DEBIAN_MIRROR``, else apt's sources.

    deb822 files in ``sources.list.d/*.sources`` are read first, then one-line
    ``sources.list`` and ``sources.list.d/*.list``. The URL is used at build time only and
    never written anywhere in the repository.

    Raises:
        BackendUnavailable: no entry serves ``suite`` with component ``main``.
    """
    environ = os.environ if environ is None else environ
    override = environ.get(MIRROR_ENV, "").strip()
    if override:
        return DebianMirror(override.rstrip("/"), None, MIRROR_ENV)
    candidates: list[tuple[Path, Callable[..., DebianMirror | None]]] = []
    candidates += [(p, parse_deb822_sources) for p in sorted(apt_dir.glob("sources.list.d/*.sources"))]
    candidates.append((apt_dir / "sources.list", parse_sources_list))
    candidates += [(p, parse_sources_list) for p in sorted(apt_dir.glob("sources.list.d/*.list"))]
    for path, parse in candidates:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        found = parse(text, suite, source=str(path))
        if found is not None:
            return found
    raise BackendUnavailable(
        f"no Debian mirror serving {suite}/main in {apt_dir}/sources.list(.d); "
        f"set {MIRROR_ENV}=http://deb.debian.org/debian (or your mirror)")


# ------------------------------------------------------------------------------ hashing


def _short(digest: str) -> str:
    return digest[:_HASH_LEN]


def base_image_tag(packages: Sequence[str] = BASE_PACKAGES, suite: str = SUITE) -> str:
    """``agentverify/base:<hash>`` of (suite, sorted packages, recipe): mirror-independent."""
    payload = json.dumps({"suite": suite, "packages": sorted(set(packages)),
                          "variant": "minbase", "recipe": BASE_RECIPE}, sort_keys=True)
    return f"{BASE_REPO}:{_short(hashlib.sha256(payload.encode()).hexdigest())}"


_SOURCE_TOP = ("pyproject.toml", "setup.cfg", "setup.py", "MANIFEST.in", "README.md",
               "README.rst", "LICENSE")
_SKIP_DIRS = {"__pycache__", ".mypy_cache", ".pytest_cache"}


def _source_files(project_dir: Path) -> list[Path]:
    """Files that make up the project's wheel, relative to ``project_dir``, sorted."""
    files = [Path(n) for n in _SOURCE_TOP if (project_dir / n).is_file()]
    src = project_dir / "src"
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = sorted(d for d in dirnames
                             if d not in _SKIP_DIRS and not d.endswith(".egg-info"))
        for name in filenames:
            if name.endswith((".pyc", ".pyo")) or name.startswith(".#"):
                continue
            files.append((Path(dirpath) / name).relative_to(project_dir))
    return sorted(files, key=lambda p: p.as_posix())


def source_hash(project_dir: Path) -> str:
    """Hash of every file under ``src/`` plus ``pyproject.toml`` (paths and bytes)."""
    h = hashlib.sha256()
    for rel in _source_files(project_dir):
        h.update(rel.as_posix().encode() + b"\0")
        h.update((project_dir / rel).read_bytes())
        h.update(b"\0")
    return h.hexdigest()


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
    return _short(hashlib.sha256(payload.encode()).hexdigest())


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


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------- Dockerfile

_DOCKERFILE = """\
# Generated by `agentverify images build`; built with --network none, FROM a local image.
# Stage 1 installs the third-party wheels: its layers stay cached while only the project
# changes, and the wheels never reach the final image.
FROM {base} AS deps
LABEL {label}=deps-stage {hash_label}={deps_hash}
COPY wheels /wheelhouse
RUN python3 -m venv {venv} \\
 && {venv}/bin/pip install --no-index --no-cache-dir --disable-pip-version-check \\
      --find-links /wheelhouse -r /wheelhouse/requirements.txt

FROM {base}
COPY --from=deps {venv} {venv}
COPY project /tmp/agentverify-wheel
RUN {venv}/bin/pip install --no-index --no-deps --no-cache-dir --disable-pip-version-check \\
      /tmp/agentverify-wheel/*.whl \\
 && rm -rf /tmp/agentverify-wheel \\
 && {venv}/bin/pip check --disable-pip-version-check \\
 && {venv}/bin/python -c "import agentverify"
ENV PATH={venv}/bin:{path} VIRTUAL_ENV={venv} LANG=C.UTF-8 PYTHONUNBUFFERED=1
LABEL {label}=runtime {hash_label}={content_hash} agentverify.base={base} \
      {source_label}={source_hash}
"""


def render_dockerfile(base: str, content_hash: str = "", deps_hash: str = "",
                      source: str = "") -> str:
    """The runtime image's Dockerfile (the hashes only land in LABELs)."""
    return _DOCKERFILE.format(base=base, venv=VENV, path=DEFAULT_PATH, label=LABEL,
                              hash_label=HASH_LABEL, content_hash=content_hash or "-",
                              deps_hash=deps_hash or "-", source_label=SOURCE_LABEL,
                              source_hash=source or "-")


def runtime_content_hash(base: str, wheels: Mapping[str, str], project_wheel_sha: str,
                         requirements: Sequence[str] = ()) -> str:
    """Hash of the base tag, every dependency wheel (name -> sha256), the requirements,
    the project wheel and the Dockerfile recipe."""
    payload = json.dumps({"base": base, "wheels": dict(sorted(wheels.items())),
                          "requirements": sorted(requirements),
                          "project": project_wheel_sha, "dockerfile": render_dockerfile(base)},
                         sort_keys=True)
    return _short(hashlib.sha256(payload.encode()).hexdigest())


# --------------------------------------------------------------------------- tool checks


def _require_debootstrap() -> str:
    # a non-root PATH often lacks /usr/sbin, where Debian puts debootstrap
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    path = shutil.which("debootstrap", path=search)
    if path is None:
        raise BackendUnavailable("debootstrap not found: install debootstrap: "
                                 "apt-get install debootstrap")
    if os.geteuid() != 0:
        raise BackendUnavailable("debootstrap needs root: run `agentverify images build` as root "
                                 "(sudo), or have root run scripts/bootstrap once")
    return path


# ------------------------------------------------------------------------ docker engine


class _Engine:
    """The few Docker engine calls images.py makes; every docker error is mapped here."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.api = client.api

    @classmethod
    def connect(cls) -> _Engine:
        try:
            import docker
        except ImportError:
            raise BackendUnavailable("the docker Python SDK is missing: install it: "
                                     "pip install 'agentverify[docker]'") from None
        try:
            client = docker.from_env(timeout=900)
            client.ping()
        except Exception as exc:  # DockerException, requests errors: the engine is not there
            raise BackendUnavailable(_engine_hint(exc)) from exc
        return cls(client)

    @contextlib.contextmanager
    def _mapped(self, what: str) -> Iterator[None]:
        import docker.errors
        import requests.exceptions

        try:
            yield
        except (requests.exceptions.ConnectionError, docker.errors.DockerException) as exc:
            if isinstance(exc, docker.errors.APIError):
                raise StackError(f"docker engine: {what} failed: {exc.explanation or exc}") from exc
            raise BackendUnavailable(_engine_hint(exc)) from exc

    def inspect(self, name: str) -> dict[str, Any] | None:
        import docker.errors

        try:
            with self._mapped(f"inspecting image {name}"):
                return self.api.inspect_image(name)
        except StackError as exc:
            if isinstance(exc.__cause__, docker.errors.ImageNotFound | docker.errors.NotFound):
                return None
            raise

    def image_id(self, name: str) -> str | None:
        info = self.inspect(name)
        return None if info is None else str(info["Id"])

    def import_stream(self, chunks: Iterator[bytes], name: str, changes: list[str]) -> None:
        repo, tag = _split_name(name)
        with self._mapped(f"importing {name}"):
            out = self.api.import_image_from_stream(chunks, repository=repo, tag=tag,
                                                    changes=changes)
        if '"error' in str(out):
            raise StackError(f"docker import of {name} failed: {str(out)[-500:]}")

    def build(self, context: Path, tag: str, *, nocache: bool, log: Callable[[str], None]) -> str:
        lines: list[str] = []
        with self._mapped(f"building {tag}"):
            stream = self.api.build(path=str(context), tag=tag, pull=False, rm=True,
                                    forcerm=True, nocache=nocache, network_mode="none",
                                    decode=True)
            for chunk in stream:
                if "error" in chunk:
                    tail = "".join(lines[-15:]).rstrip()
                    raise StackError(f"docker build of {tag} failed: "
                                     f"{str(chunk['error']).strip()}\n{tail}")
                text = chunk.get("stream")
                if text:
                    lines.append(text)
                    if text.startswith("Step "):
                        log(text.strip())
        image_id = self.image_id(tag)
        if image_id is None:
            raise StackError(f"docker build of {tag} reported success but the tag is missing")
        return image_id

    def tag(self, image_id: str, name: str) -> None:
        repo, tag = _split_name(name)
        with self._mapped(f"tagging {name}"):
            self.api.tag(image_id, repo, tag, force=True)

    def labelled(self, value: str) -> list[dict[str, Any]]:
        with self._mapped("listing images"):
            return list(self.api.images(filters={"label": f"{LABEL}={value}"}))

    def remove(self, name: str) -> bool:
        import docker.errors

        try:
            self.api.remove_image(name)
        except docker.errors.APIError:  # in use by a container: keep it, no harm done
            return False
        return True


def _engine_hint(exc: BaseException) -> str:
    if shutil.which("dockerd") is None and not os.environ.get("DOCKER_HOST"):
        return ("no Docker engine here: install it: apt-get install docker.io, "
                "then start the Docker engine: dockerd (scripts/bootstrap does both)")
    reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    return ("the Docker engine does not answer: start the Docker engine: dockerd "
            f"(scripts/bootstrap does it) [{reason}]")


def _split_name(name: str) -> tuple[str, str]:
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        repo, _, tag = name.rpartition(":")
        return repo, tag
    return name, "latest"


# ------------------------------------------------------------------------ the cache dir


def _cache_dir() -> Path:
    root = os.environ.get("AGENTVERIFY_CACHE_DIR")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "agentverify"


@contextlib.contextmanager
def _build_lock(progress: Progress) -> Iterator[None]:
    """One image build at a time on this machine (two would debootstrap twice)."""
    cache = _cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "images.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"waiting for another `agentverify images build` ({cache / 'images.lock'})")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _scratch_root(need: int = MIN_FREE_BYTES) -> Path:
    """/var/tmp (usually on the big disk; /tmp may be a small tmpfs), else the temp dir."""
    for candidate in (os.environ.get("AGENTVERIFY_BUILD_DIR"), "/var/tmp", tempfile.gettempdir()):
        if candidate and os.path.isdir(candidate) and os.access(candidate, os.W_OK):
            free = shutil.disk_usage(candidate).free
            if free < need:
                raise BackendUnavailable(
                    f"{candidate} has {free / 1024**3:.1f} GiB free; the image build needs "
                    f"{need / 1024**3:.1f} GiB: free space or set AGENTVERIFY_BUILD_DIR")
            return Path(candidate)
    raise BackendUnavailable("no writable scratch directory: set AGENTVERIFY_BUILD_DIR")


# ------------------------------------------------------------------------------ stages


@dataclass
class ImageBuildReport:
    """What one ``images build`` found and did; ``built`` is empty when nothing changed."""

    roles: dict[str, str] = field(default_factory=dict)       # role -> image id
    names: dict[str, str] = field(default_factory=dict)       # role -> image name
    built: list[str] = field(default_factory=list)            # image names built this run
    tagged: list[str] = field(default_factory=list)           # names (re)tagged this run
    present: list[str] = field(default_factory=list)          # already up to date
    missing: list[str] = field(default_factory=list)          # user images not on the engine
    removed: list[str] = field(default_factory=list)          # superseded runtime images
    base: str | None = None
    runtime: str | None = None
    runtime_id: str | None = None
    runtime_size: int | None = None
    wheels: int = 0
    new_wheels: int = 0
    seconds: float = 0.0

    def __repr__(self) -> str:
        return (f"ImageBuildReport(runtime={self.runtime!r}, built={self.built}, "
                f"tagged={self.tagged}, missing={self.missing}, seconds={self.seconds:.1f})")


def configured_images(config: Config) -> dict[str, str]:
    """role -> image name the stack uses: ``stack.images`` over the defaults, plus
    ``agent@VERSION`` for versions that name their own image."""
    from agentverify.stack.spec import DEFAULT_IMAGES

    names = {role: config.stack.images.get(role, default)
             for role, default in DEFAULT_IMAGES.items()}
    for role, name in config.stack.images.items():
        names.setdefault(role, name)
    for version, knobs in sorted(config.stack.versions.items()):
        if knobs.image:
            names[f"agent@{version}"] = knobs.image
    return names


def _is_ours(name: str) -> bool:
    return name.startswith(OWN_PREFIX)


def _mount_points_under(path: Path) -> list[str]:
    prefix = str(path.resolve()).rstrip("/") + "/"
    found = []
    try:
        with open("/proc/self/mounts", encoding="utf-8") as fh:
            for line in fh:
                point = line.split()[1].replace("\\040", " ")
                if point.startswith(prefix):
                    found.append(point)
    except OSError:
        pass
    return sorted(found, key=len, reverse=True)


def _remove_rootfs(path: Path) -> None:
    """Delete a debootstrap target, unmounting what a failed run left mounted inside."""
    for point in _mount_points_under(path):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)
    if _mount_points_under(path):
        return  # never rm -rf through a mounted /proc or /sys: leave it for the admin
    shutil.rmtree(path, ignore_errors=True)


def _clean_rootfs(rootfs: Path) -> None:
    """Drop apt caches, docs and logs: ~60 MB nobody reads inside a container."""
    globs = ["var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*_*",
             "usr/share/doc/*", "usr/share/man/*", "usr/share/info/*", "usr/share/locale/*",
             "var/cache/debconf/*-old", "var/lib/dpkg/*-old", "debootstrap",
             # libjs-moment-timezone ships 218 MB of per-zone data; Prometheus' UI loads
             # only moment-timezone-with-data.min.js, which stays.
             "usr/share/javascript/moment-timezone/data"]
    for pattern in globs:
        for p in rootfs.glob(pattern):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
    for log in rootfs.glob("var/log/**/*"):
        if log.is_file() and not log.is_symlink():
            log.write_bytes(b"")
    # Docker mounts its own; the host's must not be baked into the image.
    for name in ("etc/hostname", "etc/resolv.conf"):
        p = rootfs / name
        if p.is_file() and not p.is_symlink():
            p.write_text("")


def _debootstrap(rootfs: Path, mirror: DebianMirror, packages: Sequence[str],
                 progress: Progress, log_path: Path) -> None:
    exe = _require_debootstrap()
    argv = [exe, "--variant=minbase", f"--include={','.join(sorted(packages))}",
            "--components=main"]
    if mirror.signed_by and mirror.signed_by.startswith("/") and os.path.isfile(mirror.signed_by):
        argv.append(f"--keyring={mirror.signed_by}")
    argv += [SUITE, str(rootfs), mirror.url]
    start = time.monotonic()
    last_report = start
    tail: list[str] = []
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"}
    with log_path.open("w", encoding="utf-8") as log, subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            text=True, errors="replace", env=env) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            tail = [*tail[-19:], line.rstrip()]
            now = time.monotonic()
            if line.startswith("I: ") and now - last_report >= 10.0:
                last_report = now
                progress(f"  debootstrap {now - start:5.1f}s  {line[3:].strip()}")
        rc = proc.wait()
    if rc != 0:
        keep = _cache_dir() / "logs" / f"debootstrap-{time.strftime('%Y%m%d-%H%M%S')}.log"
        keep.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log_path, keep)
        hint = ("" if mirror.source == MIRROR_ENV else
                f"; the mirror came from {mirror.source}, set {MIRROR_ENV} to use another")
        raise StackError(f"debootstrap {SUITE} from {mirror.url} exited {rc} (full log: {keep}"
                         f"{hint}):\n" + "\n".join(tail[-12:]))


def _tar_chunks(rootfs: Path) -> Iterator[bytes]:
    with subprocess.Popen(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", "-", "."],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        yield from iter(lambda: proc.stdout.read(1 << 20), b"")
        err = proc.stderr.read().decode(errors="replace")
        if proc.wait() != 0:
            raise StackError(f"tar of {rootfs} failed: {err.strip()[-500:]}")


def rootfs_python_version(rootfs: Path) -> str:
    """Upstream version of the rootfs' python3.X-minimal package, from dpkg's status."""
    status = (rootfs / "var/lib/dpkg/status").read_text(encoding="utf-8", errors="replace")
    return _python_version_from_dpkg_status(status)


def _python_version_from_dpkg_status(status: str) -> str:
    for para in status.split("\n\n"):
        pkg = re.search(r"^Package: python3\.\d+-minimal$", para, re.M)
        ver = re.search(r"^Version: (\d+\.\d+\.\d+)", para, re.M)
        if pkg and ver and "install ok installed" in para:
            return ver.group(1)
    raise StackError("the base rootfs has no python3.X-minimal package installed")


def _base_python(engine: _Engine, tag: str) -> str | None:
    info = engine.inspect(tag) or {}
    return ((info.get("Config") or {}).get("Labels") or {}).get(PYTHON_LABEL)


def _ensure_base(engine: _Engine, report: ImageBuildReport, progress: Progress, *,
                 rebuild: bool) -> tuple[str, str]:
    """-> (base tag, the exact Python version inside it)."""
    tag = base_image_tag()
    report.base = tag
    python = None if rebuild else _base_python(engine, tag)
    if python is not None:
        progress(f"base image {tag}: present (python {python})")
        return tag, python
    _require_debootstrap()
    mirror = find_debian_mirror()
    scratch = Path(tempfile.mkdtemp(prefix="agentverify-rootfs-", dir=_scratch_root()))
    rootfs = scratch / "rootfs"
    start = time.monotonic()
    progress(f"debootstrap {SUITE} ({len(BASE_PACKAGES)} packages) into {rootfs} ...")
    try:
        _debootstrap(rootfs, mirror, BASE_PACKAGES, progress, scratch / "debootstrap.log")
        _clean_rootfs(rootfs)
        python = rootfs_python_version(rootfs)
        progress(f"debootstrap {SUITE} ({len(BASE_PACKAGES)} packages) ... "
                 f"{time.monotonic() - start:.1f}s")
        t_import = time.monotonic()
        changes = [f"ENV PATH={DEFAULT_PATH}", "ENV LANG=C.UTF-8",
                   f"LABEL {LABEL}=base {HASH_LABEL}={tag.rpartition(':')[2]} "
                   f"{PYTHON_LABEL}={python}",
                   'CMD ["/bin/bash"]']
        engine.import_stream(_tar_chunks(rootfs), tag, changes)
        progress(f"base image {tag}: imported in {time.monotonic() - t_import:.1f}s")
    finally:
        _remove_rootfs(rootfs)
        shutil.rmtree(scratch, ignore_errors=True)
    report.built.append(tag)
    return tag, python


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


def _ensure_dep_wheels(project_dir: Path, python_version: str, report: ImageBuildReport,
                       progress: Progress) -> tuple[Path, dict[str, str], list[str]]:
    """Third-party wheels for the runtime requirements, cached per requirements hash.

    -> (wheelhouse dir, wheel name -> sha256, requirements)
    """
    reqs = runtime_requirements(project_dir)
    root = _cache_dir() / "wheelhouse"
    target = root / requirements_hash(reqs, python_version)
    wheels = _read_manifest(target)
    if wheels is not None:
        report.wheels = len(wheels)
        return target, wheels, reqs
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
    wheels = {p.name: _file_sha256(p) for p in sorted(target.glob("*.whl"))}
    _write_manifest(target, wheels, requirements=reqs, python=python_version)
    report.wheels = len(wheels)
    report.new_wheels = len([n for n in wheels if n not in known])
    return target, wheels, reqs


def _ensure_project_wheel(project_dir: Path, progress: Progress) -> tuple[Path, bool]:
    """The project's wheel, rebuilt only when a source file changed. -> (wheel, built)."""
    digest = source_hash(project_dir)
    root = _cache_dir() / "project"
    target = root / _short(digest)
    found = _read_manifest(target)
    if found:
        return target / next(iter(found)), False
    with tempfile.TemporaryDirectory(prefix="agentverify-src-", dir=_scratch_root(0)) as tmp:
        # Build from a copy: an in-tree build would leave build/ and egg-info in the
        # working tree other people are editing.
        copy = Path(tmp) / "src-copy"
        for rel in _source_files(project_dir):
            (copy / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(project_dir / rel, copy / rel)
        out = Path(tmp) / "out"
        out.mkdir()
        _pip(["wheel", "--no-deps", "-w", str(out), str(copy)],
             "building the agentverify wheel", Path(tmp) / "pip.log")
        built = sorted(out.glob("*.whl"))
        if len(built) != 1:
            raise StackError(f"building the agentverify wheel produced {len(built)} wheels")
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(built[0], target / built[0].name)
        _write_manifest(target, {built[0].name: _file_sha256(target / built[0].name)},
                        source_sha256=digest)
    # keep the five most recent project wheels
    olds = sorted((p for p in root.iterdir() if p.is_dir() and p != target),
                  key=lambda p: p.stat().st_mtime, reverse=True)
    for old in olds[4:]:
        shutil.rmtree(old, ignore_errors=True)
    return target / built[0].name, True


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _ensure_runtime(engine: _Engine, base: str, python_version: str, project_dir: Path,
                    report: ImageBuildReport, progress: Progress, *, rebuild: bool) -> str:
    t0 = time.monotonic()
    deps_dir, wheels, reqs = _ensure_dep_wheels(project_dir, python_version, report, progress)
    project_wheel, project_built = _ensure_project_wheel(project_dir, progress)
    progress(f"wheelhouse: {len(wheels) + 1} wheels ({report.new_wheels} new"
             f"{', agentverify rebuilt' if project_built else ''}) {time.monotonic() - t0:.1f}s")
    content = runtime_content_hash(base, wheels, _file_sha256(project_wheel), reqs)
    tag = f"{RUNTIME_REPO}:{content}"
    report.runtime = tag
    existing = None if rebuild else engine.image_id(tag)
    if existing is not None:
        progress(f"runtime image {tag}: present")
        return existing
    if engine.image_id(base) is None:  # never let the builder fall back to a pull
        raise StackError(f"base image {base} vanished before the runtime build; run again")
    t1 = time.monotonic()
    progress(f"runtime image {tag}: building (docker build, network none) ...")
    with tempfile.TemporaryDirectory(prefix="agentverify-ctx-", dir=_scratch_root()) as tmp:
        ctx = Path(tmp)
        (ctx / "wheels").mkdir()
        (ctx / "project").mkdir()
        for name in [*wheels, "requirements.txt"]:
            _link_or_copy(deps_dir / name, ctx / "wheels" / name)
        _link_or_copy(project_wheel, ctx / "project" / project_wheel.name)
        (ctx / "Dockerfile").write_text(
            render_dockerfile(base, content, deps_dir.name, source_hash(project_dir)),
            encoding="utf-8")
        image_id = engine.build(ctx, tag, nocache=rebuild,
                                log=lambda line: progress(f"  {line[:110]}"))
    progress(f"runtime image {tag}: built in {time.monotonic() - t1:.1f}s")
    report.built.append(tag)
    _prune_deps_stages(engine, keep=deps_dir.name)
    return image_id


def _prune_deps_stages(engine: _Engine, *, keep: str) -> None:
    """Drop the build cache of superseded wheelhouses (untagged stage-1 images, ~900 MB
    each); the current one stays so a source-only change rebuilds in seconds."""
    for img in engine.labelled("deps-stage"):
        labels = img.get("Labels") or {}
        tags = [t for t in img.get("RepoTags") or [] if t != "<none>:<none>"]
        if not tags and labels.get(HASH_LABEL) != keep:
            engine.remove(img["Id"])


def _prune_runtime(engine: _Engine, keep_id: str, report: ImageBuildReport,
                   progress: Progress) -> None:
    """Remove superseded runtime images that no role name points at any more."""
    for img in engine.labelled("runtime"):
        if img["Id"] == keep_id:
            continue
        tags = [t for t in img.get("RepoTags") or [] if t != "<none>:<none>"]
        if any(not t.startswith(RUNTIME_REPO + ":") for t in tags):
            continue  # a role or a user name still points here
        if all(engine.remove(t) for t in tags) and tags:
            report.removed.extend(tags)
            progress(f"removed superseded {', '.join(tags)}")


def _find_project_dir(project_dir: str | os.PathLike[str] | None) -> Path:
    candidates = [project_dir, os.environ.get(PROJECT_ENV)]
    import agentverify

    candidates.append(Path(agentverify.__file__).resolve().parents[2])
    for cand in candidates:
        if not cand:
            continue
        path = Path(cand)
        if (path / "pyproject.toml").is_file() and (path / "src" / "agentverify").is_dir():
            return path.resolve()
        if cand is project_dir:
            raise UsageError(f"--project-dir {path}: expected the agentverify source tree "
                             "(pyproject.toml and src/agentverify/)")
    raise UsageError("images build needs the agentverify source tree (pyproject.toml + src/): "
                     f"pass --project-dir or set {PROJECT_ENV}")


def stale_source_reason(labels: Mapping[str, str]) -> str | None:
    """Why an agentverify image does not hold this checkout's sources, or None.

    Only judged when agentverify runs from a source tree (an editable install) and the
    image records the hash of the sources it was built from.
    """
    built_from = labels.get(SOURCE_LABEL)
    if not built_from or built_from == "-":
        return None
    try:
        project = _find_project_dir(None)
    except UsageError:
        return None
    here = source_hash(project)
    if here == built_from:
        return None
    return (f"it was built from other agentverify sources than {project} "
            f"({built_from[:12]} vs {here[:12]})")


def build_images(
    config: Config,
    *,
    progress: Progress = print,
    project_dir: str | os.PathLike[str] | None = None,
    rebuild: bool = False,
) -> ImageBuildReport:
    """Build (or find) every image ``config`` needs; tag the ``agentverify/*`` names.

    User images (names outside ``agentverify/``) are only looked up; missing ones are
    listed in ``report.missing``, never pulled.

    Raises:
        BackendUnavailable: no Docker engine, no debootstrap, not root, no mirror.
        StackError: a build step failed (the message carries the tool's last lines).
    """
    t0 = time.monotonic()
    report = ImageBuildReport()
    names = configured_images(config)
    report.names = dict(names)
    engine = _Engine.connect()
    ours = sorted({n for n in names.values() if _is_ours(n)})
    with _build_lock(progress):
        runtime_id: str | None = None
        if ours:
            src = _find_project_dir(project_dir)
            base, python = _ensure_base(engine, report, progress, rebuild=rebuild)
            runtime_id = _ensure_runtime(engine, base, python, src, report, progress,
                                         rebuild=rebuild)
            report.runtime_id = runtime_id
            info = engine.inspect(runtime_id) or {}
            report.runtime_size = info.get("Size")
            for name in ours:
                if engine.image_id(name) == runtime_id:
                    report.present.append(name)
                else:
                    engine.tag(runtime_id, name)
                    report.tagged.append(name)
                    progress(f"tagged {name}")
            if report.present:
                progress(f"{len(report.present)} role tag(s) up to date: "
                         f"{', '.join(report.present)}")
            _prune_runtime(engine, runtime_id, report, progress)
        else:
            progress("no agentverify/* image configured: nothing to build")
        for role, name in sorted(names.items()):
            if _is_ours(name):
                report.roles[role] = runtime_id or ""
                continue
            image_id = engine.image_id(name)
            if image_id is None:
                if name not in report.missing:
                    report.missing.append(name)
                    how = ("will be pulled (stack.pull: true)" if config.stack.pull else
                           "pull it yourself or set stack.pull: true")
                    progress(f"image {name} (stack.images.{role}): missing — {how}")
            else:
                report.roles[role] = image_id
                progress(f"image {name} (stack.images.{role}): present")
    report.seconds = time.monotonic() - t0
    size = f", runtime {report.runtime_size / 1e6:.0f} MB" if report.runtime_size else ""
    progress(f"images ready in {report.seconds:.1f}s (built {len(report.built)}, "
             f"tagged {len(report.tagged)}{size})")
    return report


def ensure_images(config: Config, *, progress: Progress = print,
                  project_dir: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """Make sure every image the stack uses exists; return role -> image id.

    What the docker backend calls before it starts containers. A no-op (a few seconds)
    when nothing changed since the last build.

    Raises:
        BackendUnavailable: see :func:`build_images`; also a user image that is missing
            while ``stack.pull`` is false (the message names it and both fixes).
    """
    report = build_images(config, progress=progress, project_dir=project_dir)
    if report.missing and not config.stack.pull:
        raise BackendUnavailable(
            f"image(s) {', '.join(report.missing)} not on the Docker engine: pull them "
            "yourself, set stack.pull: true, or use agentverify/* names and run "
            "`agentverify images build`")
    return report.roles


def images_present(config: Config) -> list[str]:
    """Image names ``config`` uses that the engine does not have (empty: all there).

    Raises:
        BackendUnavailable: no Docker engine answers.
    """
    engine = _Engine.connect()
    return [name for name in sorted(set(configured_images(config).values()))
            if engine.image_id(name) is None]


# ----------------------------------------------------------------------------------- CLI


def add_images_cli(subparsers: Any) -> None:
    """Register ``agentverify images {build,list}`` on the CLI's sub-parsers."""
    images = subparsers.add_parser(
        "images", help="build the stack's container images without a registry; list them",
        description="Build every image the docker backend needs with no container "
                    "registry (debootstrap + docker import + a local wheelhouse), or list them.")
    actions = images.add_subparsers(dest="images_action", required=True, metavar="ACTION")
    build = actions.add_parser("build", help="build what is missing or out of date; tag the roles")
    listing = actions.add_parser("list", help="show each role's image and whether it exists")
    for p in (build, listing):
        p.add_argument("--env", help="environment overlay to use (default: from config)")
        p.add_argument("--config", help="config file (default: ./agentverify.yaml)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set stack.images.redis=redis:7")
    build.add_argument("--rebuild", action="store_true",
                       help="rebuild the base and runtime images even when their tags exist")
    build.add_argument("--project-dir",
                       help="agentverify source tree to build the wheel from "
                            "(default: the one this agentverify runs from)")
    images.set_defaults(handler=cmd_images)


def _say(line: str) -> None:
    print(line, flush=True)


def cmd_images(args: argparse.Namespace) -> int:
    """``agentverify images build|list``: 0 ok, 2 usage / missing tool (one line), 3 failure."""
    from agentverify.config import load_config, parse_override

    try:
        overrides = dict(parse_override(item) for item in getattr(args, "set", []) or [])
        config = load_config(getattr(args, "config", None), getattr(args, "env", None),
                             overrides=overrides)
        if args.images_action == "list":
            return _list_images(config)
        report = build_images(config, progress=_say, rebuild=getattr(args, "rebuild", False),
                              project_dir=getattr(args, "project_dir", None))
        if report.missing and not config.stack.pull:
            print(f"agentverify: error: missing image(s) {', '.join(report.missing)}: "
                  "pull them yourself or set stack.pull: true", file=sys.stderr)
            return 2
        return 0
    except (UsageError, BackendUnavailable) as exc:
        print(f"agentverify: error: {exc}", file=sys.stderr)
        return 2
    except AgentVerifyError as exc:
        print(f"agentverify: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 3


def _list_images(config: Config) -> int:
    engine = _Engine.connect()
    width = max(len(r) for r in configured_images(config))
    for role, name in sorted(configured_images(config).items()):
        info = engine.inspect(name)
        state = ("missing" if info is None else
                 f"{info['Id'][7:19]}  {info.get('Size', 0) / 1e6:.0f} MB")
        print(f"{role:<{width}}  {name:<32}  {state}")
    for kind in ("base", "runtime"):
        for img in engine.labelled(kind):
            for tag in img.get("RepoTags") or []:
                if tag.startswith((BASE_REPO, RUNTIME_REPO)):
                    print(f"{kind:<{width}}  {tag:<32}  {img['Id'][7:19]}  "
                          f"{img.get('Size', 0) / 1e6:.0f} MB")
    return 0
