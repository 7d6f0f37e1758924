"""The user's agent image, built from ``stack.agent.source`` without a registry.

``stack.agent.source`` is a directory with a ``pyproject.toml`` (its wheel is built) or a
``requirements.txt`` (the directory itself is copied into the image, on
``PYTHONPATH``). ``agentverify images build`` layers it on the same Debian base image as
the rest of the stack, in a venv of its own (``/opt/agent``, first on ``PATH``, so the
agent's ``{python}`` is this venv's interpreter): a wheel house of the agent's own
dependencies (``[project].dependencies`` and ``requirements.txt``, built on the host for
the image's Python and cached like agentverify's), then the agent. Nothing is pulled;
``docker build`` runs with network ``none``.

The image is content-tagged ``agentverify/agent-build:<hash>`` (base tag, every wheel,
the agent's wheel or sources, the Dockerfile) and the agent's role name
(``agentverify/agent:<stack.image_tag>``) points at it. It carries the hash of the
sources it was built from (:data:`AGENT_SOURCE_LABEL`): the docker backend refuses an
agent image built from other sources than the directory's (a green run on an old build
would be a lie).

Example:
    >>> agent_dockerfile("agentverify/base:abc", has_wheel=True).splitlines()[2]
    'FROM agentverify/base:abc AS deps'
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentverify.errors import ConfigError, StackError
from agentverify.images.engine import Engine
from agentverify.images.naming import HASH_LABEL, LABEL, short_hash
from agentverify.images.wheels import (
    ensure_project_wheel,
    ensure_requirement_wheels,
    file_sha256,
)
from agentverify.images.workdirs import scratch_root

if TYPE_CHECKING:
    from agentverify.config import Config
    from agentverify.images.build import ImageBuildReport

__all__ = ["AGENT_BUILD_REPO", "AGENT_SOURCE_LABEL", "agent_dockerfile", "agent_requirements",
           "agent_source_dir", "agent_source_files", "agent_source_hash", "agent_stale_reason",
           "ensure_agent_image"]

AGENT_BUILD_REPO = "agentverify/agent-build"
#: label of an agent image: hash of the ``stack.agent.source`` files it was built from
AGENT_SOURCE_LABEL = "agentverify.agent-source-hash"
VENV = "/opt/agent"
_SKIP_DIRS = {".git", ".hg", ".svn", ".venv", "venv", "__pycache__", ".mypy_cache",
              ".pytest_cache", ".ruff_cache", ".tox", "node_modules", "build", "dist"}
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def agent_source_dir(config: Config) -> Path | None:
    """The directory ``stack.agent.source`` names (relative to the config file), or None.

    Raises:
        ConfigError: it is not a directory with a pyproject.toml or requirements.txt.
    """
    source = config.stack.agent.source
    if not source:
        return None
    path = config.path(source).resolve()
    if not path.is_dir():
        raise ConfigError(f"directory not found: {path}", source=config.source,
                          key="stack.agent.source")
    if not ((path / "pyproject.toml").is_file() or (path / "requirements.txt").is_file()):
        raise ConfigError(f"{path} has neither a pyproject.toml nor a requirements.txt: "
                          "expected a Python project to layer on the base image",
                          source=config.source, key="stack.agent.source")
    return path


def agent_source_files(src: Path) -> list[Path]:
    """The files of the agent's source tree, relative and sorted (caches, VCS and build
    directories left out)."""
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = sorted(d for d in dirnames
                             if d not in _SKIP_DIRS and not d.endswith(".egg-info"))
        for name in filenames:
            if name.endswith((".pyc", ".pyo")) or name.startswith(".#"):
                continue
            out.append((Path(dirpath) / name).relative_to(src))
    return sorted(out, key=lambda p: p.as_posix())


def agent_source_hash(src: Path) -> str:
    """Hash of every file of the agent's source tree (paths and bytes)."""
    h = hashlib.sha256()
    for rel in agent_source_files(src):
        h.update(rel.as_posix().encode() + b"\0" + (src / rel).read_bytes() + b"\0")
    return h.hexdigest()


def agent_requirements(src: Path) -> list[str]:
    """The agent's dependencies: ``[project].dependencies`` and ``requirements.txt``."""
    reqs: list[str] = []
    pyproject = src / "pyproject.toml"
    if pyproject.is_file():
        try:
            data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{pyproject}: cannot read the agent's dependencies ({exc})",
                              key="stack.agent.source") from exc
        reqs += [str(r).strip() for r in data.get("project", {}).get("dependencies", [])]
    requirements = src / "requirements.txt"
    if requirements.is_file():
        for line in requirements.read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            if line and not line.startswith("-"):
                reqs.append(line)
    return sorted(set(reqs))


_DOCKERFILE = """\
# Generated by `agentverify images build` from stack.agent.source; built with --network
# none, FROM the local base image. Stage 1: the agent's dependencies into its own venv.
FROM {base} AS deps
LABEL {label}=agent-deps-stage {hash_label}={deps_hash}
COPY wheels /wheelhouse
RUN python3 -m venv {venv} \\
 && {venv}/bin/pip install --no-index --no-cache-dir --disable-pip-version-check \\
      --find-links /wheelhouse -r /wheelhouse/requirements.txt

FROM {base}
COPY --from=deps {venv} {venv}
{install}
ENV PATH={venv}/bin:{path} VIRTUAL_ENV={venv} LANG=C.UTF-8 PYTHONUNBUFFERED=1{pythonpath}
LABEL {label}=agent {hash_label}={content_hash} agentverify.base={base} \
      {source_label}={source_hash}
"""
_INSTALL_WHEEL = """\
COPY project /tmp/agent-wheel
RUN {venv}/bin/pip install --no-index --no-deps --no-cache-dir --disable-pip-version-check \\
      /tmp/agent-wheel/*.whl \\
 && rm -rf /tmp/agent-wheel \\
 && {venv}/bin/pip check --disable-pip-version-check"""
_INSTALL_APP = "COPY app {venv}/app"


def agent_dockerfile(base: str, *, has_wheel: bool, content_hash: str = "",
                     deps_hash: str = "", source: str = "") -> str:
    """The agent image's Dockerfile (the hashes only land in LABELs)."""
    install = (_INSTALL_WHEEL if has_wheel else _INSTALL_APP).format(venv=VENV)
    return _DOCKERFILE.format(
        base=base, venv=VENV, path=_DEFAULT_PATH, label=LABEL, hash_label=HASH_LABEL,
        content_hash=content_hash or "-", deps_hash=deps_hash or "-", install=install,
        pythonpath="" if has_wheel else f" PYTHONPATH={VENV}/app",
        source_label=AGENT_SOURCE_LABEL, source_hash=source or "-")


def agent_stale_reason(labels: dict[str, str], config: Any) -> str | None:
    """Why an agent image does not hold ``stack.agent.source`` as it is now, or None
    (also None for an image that is not an agent image, or a config without a source)."""
    built_from = labels.get(AGENT_SOURCE_LABEL)
    if not built_from or built_from == "-" or config is None:
        return None
    src = agent_source_dir(config)
    if src is None:
        return None
    here = agent_source_hash(src)
    if here == built_from:
        return None
    return (f"it was built from other agent sources than {src} ({built_from[:12]} vs "
            f"{here[:12]})")


def ensure_agent_image(engine: Engine, base: str, python_version: str, config: Config,
                       report: ImageBuildReport, progress: Callable[[str], None], *,
                       rebuild: bool) -> str:
    """The agent's image for ``config`` (built when its content tag is missing); its id."""
    from agentverify.images.stages import _link_or_copy

    src = agent_source_dir(config)
    assert src is not None
    t0 = time.monotonic()
    reqs = agent_requirements(src)
    deps_dir, wheels, reqs, new = ensure_requirement_wheels(reqs, python_version, progress)
    digest = agent_source_hash(src)
    has_wheel = (src / "pyproject.toml").is_file()
    agent_wheel: Path | None = None
    if has_wheel:
        agent_wheel, built = ensure_project_wheel(
            src, progress, files=agent_source_files(src), digest=digest,
            cache="agent-project", what=f"the agent's wheel from {src}")
    progress(f"agent wheelhouse: {len(wheels)} wheels ({new} new) for {src.name} "
             f"{time.monotonic() - t0:.1f}s")
    payload = json.dumps({"base": base, "wheels": dict(sorted(wheels.items())),
                          "requirements": reqs,
                          "agent": file_sha256(agent_wheel) if agent_wheel else digest,
                          "dockerfile": agent_dockerfile(base, has_wheel=has_wheel)},
                         sort_keys=True)
    content = short_hash(hashlib.sha256(payload.encode()).hexdigest())
    tag = f"{AGENT_BUILD_REPO}:{content}"
    report.agent = tag
    existing = None if rebuild else engine.image_id(tag)
    if existing is not None:
        progress(f"agent image {tag}: present")
        return existing
    if engine.image_id(base) is None:  # never let the builder fall back to a pull
        raise StackError(f"base image {base} vanished before the agent build; run again")
    t1 = time.monotonic()
    progress(f"agent image {tag}: building from {src} (docker build, network none) ...")
    with tempfile.TemporaryDirectory(prefix="agentverify-agent-ctx-", dir=scratch_root()) as tmp:
        ctx = Path(tmp)
        (ctx / "wheels").mkdir()
        for name in [*wheels, "requirements.txt"]:
            _link_or_copy(deps_dir / name, ctx / "wheels" / name)
        if agent_wheel is not None:
            (ctx / "project").mkdir()
            _link_or_copy(agent_wheel, ctx / "project" / agent_wheel.name)
        else:
            for rel in agent_source_files(src):
                (ctx / "app" / rel).parent.mkdir(parents=True, exist_ok=True)
                _link_or_copy(src / rel, ctx / "app" / rel)
        (ctx / "Dockerfile").write_text(
            agent_dockerfile(base, has_wheel=has_wheel, content_hash=content,
                             deps_hash=deps_dir.name, source=digest), encoding="utf-8")
        image_id = engine.build(ctx, tag, nocache=rebuild,
                                log=lambda line: progress(f"  {line[:110]}"))
    progress(f"agent image {tag}: built in {time.monotonic() - t1:.1f}s")
    report.built.append(tag)
    return image_id

