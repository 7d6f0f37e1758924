"""What callers use: build, ensure, check and list the images a config names.

What is here: :func:`configured_images` (role -> image name, ``stack.images`` over the
defaults), :func:`build_images` (both stages, then every ``agentverify/*`` role name
tagged onto the runtime image; user images only looked up) with its
:class:`ImageBuildReport`, :func:`ensure_images` (what the docker backend needs before it
starts containers), :func:`images_present` (names the engine lacks),
:func:`list_images` (each role's image and every built image, for ``agentverify images
list``) and :func:`stale_source_reason` (whether an image holds this checkout's sources).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agentverify.config import Config
from agentverify.errors import BackendUnavailable, UsageError
from agentverify.images.agent import agent_source_dir, agent_stale_reason, ensure_agent_image
from agentverify.images.engine import Engine
from agentverify.images.naming import BASE_REPO, OWN_PREFIX, RUNTIME_REPO, SOURCE_LABEL
from agentverify.images.stages import ensure_base, ensure_runtime, prune_runtime
from agentverify.images.wheels import source_hash
from agentverify.images.workdirs import build_lock

__all__ = ["PROJECT_ENV", "ImageBuildReport", "build_images", "configured_images",
           "ensure_images", "images_present", "list_images", "stale_source_reason"]

PROJECT_ENV = "AGENTVERIFY_PROJECT_DIR"
Progress = Callable[[str], None]


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
    agent: str | None = None                                  # agent image from stack.agent.source
    agent_id: str | None = None
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
    from agentverify.stack.spec import default_images

    names = {role: config.stack.images.get(role, default)
             for role, default in default_images(config).items()}
    for role, name in config.stack.images.items():
        names.setdefault(role, name)
    for version, knobs in sorted(config.stack.versions.items()):
        if knobs.image:
            names[f"agent@{version}"] = knobs.image
    return names


def _is_ours(name: str) -> bool:
    return name.startswith(OWN_PREFIX)


def _source_agent_roles(config: Config, names: Mapping[str, str]) -> set[str]:
    """The roles whose image is the agent built from ``stack.agent.source``."""
    from agentverify.stack.spec import SOURCE_AGENT_REPO

    if not config.stack.agent.source:
        return set()
    return {role for role, name in names.items()
            if name.rpartition(":")[0] == SOURCE_AGENT_REPO}


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


def stale_source_reason(labels: Mapping[str, str], config: Config | None = None) -> str | None:
    """Why an agentverify image does not hold this checkout's sources, or None.

    Only judged when agentverify runs from a source tree (an editable install) and the
    image records the hash of the sources it was built from; an agent image built from
    ``stack.agent.source`` is judged against that directory (with ``config``).
    """
    agent = agent_stale_reason(dict(labels), config)
    if agent:
        return agent
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
    agent_roles = _source_agent_roles(config, names)
    agent_source_dir(config)  # a missing or unusable source is one line, before any work
    engine = Engine.connect()
    ours = sorted({n for role, n in names.items() if _is_ours(n) and role not in agent_roles})
    # a private tag (stack.image_tag) is someone's own set of images: never prune theirs
    # or anybody else's from it
    prune = config.stack.image_tag == "local"
    with build_lock(progress):
        runtime_id: str | None = None
        base = python = None
        src = _find_project_dir(project_dir) if ours else None
        if ours or agent_roles:
            base, python = ensure_base(engine, report, progress, rebuild=rebuild)
        if agent_roles:
            assert base is not None and python is not None
            report.agent_id = ensure_agent_image(engine, base, python, config, report,
                                                 progress, rebuild=rebuild)
            for name in sorted({names[r] for r in agent_roles}):
                if engine.image_id(name) == report.agent_id:
                    report.present.append(name)
                else:
                    engine.tag(report.agent_id, name)
                    report.tagged.append(name)
                    progress(f"tagged {name} (the agent, from stack.agent.source)")
        if ours:
            assert base is not None and python is not None and src is not None
            runtime_id = ensure_runtime(engine, base, python, src, report, progress,
                                         rebuild=rebuild, prune=prune)
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
            if prune:
                prune_runtime(engine, runtime_id, report, progress)
        elif not agent_roles:
            progress("no agentverify/* image configured: nothing to build")
        for role, name in sorted(names.items()):
            if role in agent_roles:
                report.roles[role] = report.agent_id or ""
                continue
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
    engine = Engine.connect()
    return [name for name in sorted(set(configured_images(config).values()))
            if engine.image_id(name) is None]


def list_images(config: Config) -> list[tuple[str, str, str]]:
    """``(role, image name, state)`` for each role's image, then ``(kind, tag, state)`` for
    every base and runtime image on the engine; state is ``missing`` or ``ID  SIZE MB``.

    Raises:
        BackendUnavailable: no Docker engine answers.
    """
    engine = Engine.connect()
    rows = []
    for role, name in sorted(configured_images(config).items()):
        info = engine.inspect(name)
        state = ("missing" if info is None else
                 f"{info['Id'][7:19]}  {info.get('Size', 0) / 1e6:.0f} MB")
        rows.append((role, name, state))
    for kind in ("base", "runtime"):
        for img in engine.labelled(kind):
            for tag in img.get("RepoTags") or []:
                if tag.startswith((BASE_REPO, RUNTIME_REPO)):
                    rows.append((kind, tag, f"{img['Id'][7:19]}  {img.get('Size', 0) / 1e6:.0f} MB"))
    return rows
