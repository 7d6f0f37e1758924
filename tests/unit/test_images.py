"""Unit tests of ``agentverify images``: no Docker engine, no debootstrap, no network.

Mirror parsing, content hashes, the Dockerfile, the wheelhouse closure for the image's
Python, the build orchestration against a fake engine, and the one-line errors.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

import pytest

from agentverify import cli
from agentverify.cli import cmd_images
from agentverify.config import load_config
from agentverify.errors import BackendUnavailable, StackError
from agentverify.images import (
    BASE_PACKAGES,
    DebianMirror,
    base_image_tag,
    build_images,
    configured_images,
    ensure_images,
    find_debian_mirror,
    images_present,
    parse_deb822_sources,
    parse_sources_list,
    render_dockerfile,
    requirements_hash,
    runtime_content_hash,
    runtime_requirements,
    source_hash,
    stages,
    target_environment,
    unsatisfied_requirements,
)
from agentverify.images import build as images_build
from agentverify.images.engine import Engine

DEB822 = """\
# a deb-src entry first: must be ignored
Types: deb-src
URIs: http://src.example/debian
Suites: bookworm
Components: main

Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://updates-only.example/debian
Suites: bookworm-updates
Components: main

Types: deb
URIs: http://disabled.example/debian
Suites: bookworm
Components: main
Enabled: no

Types: deb deb-src
URIs: https://mirror.example/debian/ http://second.example/debian
Suites: bookworm bookworm-updates
Components: main contrib non-free-firmware
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
"""

SOURCES_LIST = """\
# deb http://commented.example/debian bookworm main
deb-src http://src.example/debian bookworm main
deb http://security.example/debian-security bookworm-security main
deb [arch=amd64 signed-by=/usr/share/keyrings/a.gpg] http://contrib-only.example/debian bookworm contrib
deb [ arch=amd64 signed-by=/usr/share/keyrings/debian.gpg ] http://mirror.example/debian/ bookworm main contrib
deb http://later.example/debian bookworm main
"""


# ----------------------------------------------------------------------------- mirrors


def test_deb822_takes_first_binary_entry_serving_the_suite_with_main() -> None:
    mirror = parse_deb822_sources(DEB822, source="debian.sources")
    assert mirror == DebianMirror("https://mirror.example/debian",
                                  "/usr/share/keyrings/debian-archive-keyring.gpg",
                                  "debian.sources")


def test_deb822_suite_must_match_exactly_and_main_is_required() -> None:
    text = ("Types: deb\nURIs: http://m.example/debian\nSuites: bookworm-backports\n"
            "Components: main\n\nTypes: deb\nURIs: http://n.example/debian\n"
            "Suites: bookworm\nComponents: contrib\n")
    assert parse_deb822_sources(text) is None
    assert parse_deb822_sources(text, suite="bookworm-backports").url == "http://m.example/debian"


def test_deb822_folded_fields_and_inline_keys() -> None:
    text = ("Types: deb\nURIs:\n http://folded.example/debian\nSuites: trixie\n bookworm\n"
            "Components: main\nSigned-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n"
            " mQINBGP...\n -----END PGP PUBLIC KEY BLOCK-----\n")
    mirror = parse_deb822_sources(text)
    assert mirror is not None and mirror.url == "http://folded.example/debian"
    assert mirror.signed_by is not None and mirror.signed_by.startswith("-----BEGIN")


def test_deb822_skips_unusable_uri_schemes() -> None:
    text = ("Types: deb\nURIs: cdrom:[Debian]/ mirror+file:/etc/apt/mirrors.txt "
            "http://real.example/debian\nSuites: bookworm\nComponents: main\n")
    assert parse_deb822_sources(text).url == "http://real.example/debian"


def test_sources_list_options_in_brackets_and_components() -> None:
    mirror = parse_sources_list(SOURCES_LIST, source="sources.list")
    assert mirror == DebianMirror("http://mirror.example/debian",
                                  "/usr/share/keyrings/debian.gpg", "sources.list")


def test_sources_list_plain_line_and_no_match() -> None:
    assert parse_sources_list("deb http://p.example/debian bookworm main\n").url == \
        "http://p.example/debian"
    assert parse_sources_list("deb http://p.example/debian bullseye main\n") is None
    assert parse_sources_list("deb [trusted=yes] http://p.example bookworm\n") is None


def _apt_dir(tmp_path: Path, *, sources: str | None = None, lst: str | None = None) -> Path:
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    if sources is not None:
        (apt / "sources.list.d" / "debian.sources").write_text(sources)
    if lst is not None:
        (apt / "sources.list").write_text(lst)
    return apt


def test_find_mirror_prefers_env_override_then_deb822_then_sources_list(tmp_path: Path) -> None:
    apt = _apt_dir(tmp_path, sources=DEB822, lst=SOURCES_LIST)
    got = find_debian_mirror(environ={"AGENTVERIFY_DEBIAN_MIRROR": "http://local/debian/"},
                             apt_dir=apt)
    assert got.url == "http://local/debian" and got.source == "AGENTVERIFY_DEBIAN_MIRROR"
    got = find_debian_mirror(environ={}, apt_dir=apt)
    assert got.url == "https://mirror.example/debian"
    assert got.source.endswith("debian.sources")
    apt2 = _apt_dir(tmp_path / "b", lst=SOURCES_LIST)
    assert find_debian_mirror(environ={}, apt_dir=apt2).url == "http://mirror.example/debian"


def test_find_mirror_none_is_one_line_with_the_fix(tmp_path: Path) -> None:
    apt = _apt_dir(tmp_path, lst="deb http://x.example/debian bullseye main\n")
    with pytest.raises(BackendUnavailable) as info:
        find_debian_mirror(environ={}, apt_dir=apt)
    assert "AGENTVERIFY_DEBIAN_MIRROR=" in str(info.value)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------ hashing


def test_base_tag_is_stable_order_independent_and_tracks_packages() -> None:
    tag = base_image_tag()
    assert tag == base_image_tag(tuple(reversed(BASE_PACKAGES)))
    assert tag.startswith("agentverify/base:") and len(tag.split(":")[1]) == 12
    assert base_image_tag((*BASE_PACKAGES, "vim-tiny")) != tag
    assert base_image_tag(BASE_PACKAGES[1:]) != tag
    assert base_image_tag(suite="trixie") != tag


def _project(tmp_path: Path, deps: list[str] | None = None) -> Path:
    root = tmp_path / "proj"
    (root / "src" / "agentverify").mkdir(parents=True)
    deps = deps if deps is not None else ["httpx>=0.27", "redis>=5.0"]
    (root / "pyproject.toml").write_text(
        "[project]\nname = 'agentverify'\nversion = '0.1.0'\n"
        f"dependencies = {json.dumps(deps)}\n")
    (root / "src" / "agentverify" / "__init__.py").write_text('"""x"""\n')
    return root


def test_source_hash_changes_with_sources_and_pyproject_only(tmp_path: Path) -> None:
    root = _project(tmp_path)
    first = source_hash(root)
    assert source_hash(root) == first
    cache = root / "src" / "agentverify" / "__pycache__"
    cache.mkdir()
    (cache / "x.cpython-311.pyc").write_bytes(b"junk")
    (root / "src" / "agentverify.egg-info").mkdir()
    (root / "src" / "agentverify.egg-info" / "PKG-INFO").write_text("x")
    (root / "tests").mkdir()
    (root / "tests" / "test_x.py").write_text("x")
    assert source_hash(root) == first
    mod = root / "src" / "agentverify" / "mod.py"
    mod.write_text("A = 1\n")
    second = source_hash(root)
    assert second != first
    mod.write_text("A = 2\n")
    assert source_hash(root) != second
    mod.write_text("A = 1\n")
    assert source_hash(root) == second
    with (root / "pyproject.toml").open("a") as fh:
        fh.write("# changed\n")
    assert source_hash(root) != second


def test_runtime_requirements_drop_dev_only_packages(tmp_path: Path) -> None:
    root = _project(tmp_path, ["redis>=5.0", "locust>=2.20", "docker>=7", "PyYAML>=6.0",
                               "testcontainers[redis]>=4"])
    assert runtime_requirements(root) == ["PyYAML>=6.0", "redis>=5.0"]


def test_requirements_hash_tracks_requirements_and_image_python() -> None:
    h = requirements_hash(["a", "b"], "3.11.2")
    assert h == requirements_hash(["b", "a"], "3.11.2")
    assert h != requirements_hash(["a", "b", "c"], "3.11.2")
    assert h != requirements_hash(["a", "b"], "3.11.9")


def test_runtime_content_hash_tracks_base_wheels_project_and_requirements() -> None:
    wheels = {"a-1-py3-none-any.whl": "1" * 64, "b-2-py3-none-any.whl": "2" * 64}
    h = runtime_content_hash("agentverify/base:x", wheels, "p" * 64, ["a", "b"])
    assert h == runtime_content_hash("agentverify/base:x", dict(reversed(wheels.items())),
                                     "p" * 64, ["b", "a"])
    assert h != runtime_content_hash("agentverify/base:y", wheels, "p" * 64, ["a", "b"])
    assert h != runtime_content_hash("agentverify/base:x", {**wheels, "c.whl": "3" * 64},
                                     "p" * 64, ["a", "b"])
    assert h != runtime_content_hash("agentverify/base:x", wheels, "q" * 64, ["a", "b"])
    assert h != runtime_content_hash("agentverify/base:x", wheels, "p" * 64, ["a"])


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile_builds_from_the_local_base_offline() -> None:
    text = render_dockerfile("agentverify/base:abc123", "def456")
    froms = [line for line in text.splitlines() if line.startswith("FROM ")]
    assert froms == ["FROM agentverify/base:abc123 AS deps", "FROM agentverify/base:abc123"]
    assert "COPY wheels /wheelhouse" in text
    assert "LABEL agentverify.image=deps-stage agentverify.content-hash=-" in text
    assert "agentverify.content-hash=abc" in render_dockerfile("b:1", "x", deps_hash="abc")
    assert "python3 -m venv /opt/agentverify" in text
    assert text.count("--no-index") == 2
    assert "-r /wheelhouse/requirements.txt" in text
    assert "COPY --from=deps /opt/agentverify /opt/agentverify" in text
    # the imported base has no PATH: it must be spelled out, never "$PATH"
    assert "ENV PATH=/opt/agentverify/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin" \
        in text
    assert "$PATH" not in text
    assert "LABEL agentverify.image=runtime agentverify.content-hash=def456" in text
    assert "http" not in text  # nothing is fetched


# ------------------------------------------------------------- wheelhouse for the image


def _wheel(directory: Path, name: str, version: str, requires: list[str]) -> Path:
    path = directory / f"{name}-{version}-py3-none-any.whl"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    meta += "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{name}-{version}.dist-info/METADATA", meta)
    return path


def test_markers_are_evaluated_for_the_image_python(tmp_path: Path) -> None:
    wheels = [
        _wheel(tmp_path, "redis", "8.1.0",
               ['async-timeout>=4.0.3; python_full_version < "3.11.3"',
                'cryptography; extra == "ocsp"']),
        _wheel(tmp_path, "httpx", "0.28.1", ["idna"]),
        _wheel(tmp_path, "idna", "3.10", []),
    ]
    reqs = ["redis>=5.0", "httpx>=0.27"]
    assert unsatisfied_requirements(wheels, reqs, target_environment("3.11.7")) == []
    assert unsatisfied_requirements(wheels, reqs, target_environment("3.11.2")) == \
        ["async-timeout>=4.0.3"]
    assert unsatisfied_requirements(wheels, ["redis[ocsp]"], target_environment("3.11.7")) == \
        ["cryptography"]
    wheels.append(_wheel(tmp_path, "async_timeout", "5.0.1", []))
    assert unsatisfied_requirements(wheels, reqs, target_environment("3.11.2")) == []
    assert unsatisfied_requirements(wheels, ["idna>=4"], target_environment("3.11.2")) == \
        ["idna>=4"]


def test_python_version_is_read_from_dpkg_status() -> None:
    status = ("Package: python3\nStatus: install ok installed\nVersion: 3.11.2-1+b1\n\n"
              "Package: python3.11-minimal\nStatus: install ok installed\n"
              "Version: 3.11.2-6+deb12u8\n")
    assert stages._python_version_from_dpkg_status(status) == "3.11.2"
    with pytest.raises(StackError):
        stages._python_version_from_dpkg_status("Package: bash\nVersion: 5.2\n")


# ------------------------------------------------------------------------ configuration


def test_configured_images_defaults_overrides_and_version_images(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(environ={}, overrides={"stack.images.redis": "redis:7-alpine",
                                             "stack.versions.v2.image": "agentverify/agent:v2"})
    names = configured_images(cfg)
    assert names["redis"] == "redis:7-alpine"
    assert names["agent"] == names["milvus"] == "agentverify/python:local"
    assert names["lb"] == "agentverify/nginx:local"
    assert names["alertmanager"] == "agentverify/prometheus:local"
    assert names["agent@v2"] == "agentverify/agent:v2"


# ------------------------------------------------------------------ a fake Docker engine


class FakeEngine:
    """In-memory stand-in for images.engine.Engine: name -> image id."""

    def __init__(self, present: dict[str, str] | None = None, labels: dict[str, Any] | None = None):
        self.images = dict(present or {})
        self.labels = labels or {}
        self.tagged: list[str] = []

    def inspect(self, name: str) -> dict[str, Any] | None:
        if name not in self.images and name not in self.images.values():
            return None
        image_id = self.images.get(name, name)
        return {"Id": image_id, "Size": 803_000_000,
                "Config": {"Labels": self.labels.get(name, {})}}

    def image_id(self, name: str) -> str | None:
        info = self.inspect(name)
        return None if info is None else info["Id"]

    def tag(self, image_id: str, name: str) -> None:
        self.images[name] = image_id
        self.tagged.append(name)

    def labelled(self, value: str) -> list[dict[str, Any]]:
        return []

    def build(self, *args: Any, **kwargs: Any) -> str:
        raise AssertionError("nothing must be built")

    def import_stream(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("nothing must be imported")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("AGENTVERIFY_CACHE_DIR", str(path))
    monkeypatch.setenv("AGENTVERIFY_BUILD_DIR", str(tmp_path))
    monkeypatch.delenv("AGENTVERIFY_DEBIAN_MIRROR", raising=False)
    return path


def _seed_cache(cache: Path, project: Path, python: str) -> str:
    """Pre-fill the wheelhouse and project-wheel caches; return the runtime tag."""
    reqs = runtime_requirements(project)
    deps = cache / "wheelhouse" / requirements_hash(reqs, python)
    deps.mkdir(parents=True)
    whl = _wheel(deps, "httpx", "0.28.1", [])
    (deps / "requirements.txt").write_text("\n".join(reqs) + "\n")
    wheels = {whl.name: hashlib.sha256(whl.read_bytes()).hexdigest()}
    (deps / "manifest.json").write_text(json.dumps({"wheels": wheels}))
    proj = cache / "project" / source_hash(project)[:12]
    proj.mkdir(parents=True)
    pw = _wheel(proj, "agentverify", "0.1.0", [])
    pw_sha = hashlib.sha256(pw.read_bytes()).hexdigest()
    (proj / "manifest.json").write_text(json.dumps({"wheels": {pw.name: pw_sha}}))
    return f"agentverify/runtime:{runtime_content_hash(base_image_tag(), wheels, pw_sha, reqs)}"


def test_nothing_changed_builds_nothing(tmp_path: Path, cache: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    project = _project(tmp_path)
    runtime = _seed_cache(cache, project, "3.11.2")
    base = base_image_tag()
    engine = FakeEngine({base: "sha256:base", runtime: "sha256:rt",
                         "agentverify/redis:local": "sha256:old"},
                        labels={base: {"agentverify.python": "3.11.2"}})
    monkeypatch.setattr(Engine, "connect", classmethod(lambda cls: engine))
    monkeypatch.chdir(tmp_path)
    cfg = load_config(environ={}, overrides={"stack.images.lb": "nginx:1.25"})
    lines: list[str] = []
    report = build_images(cfg, progress=lines.append, project_dir=project)
    assert report.built == []
    assert report.runtime == runtime and report.runtime_id == "sha256:rt"
    assert sorted(report.tagged) == ["agentverify/prometheus:local", "agentverify/python:local",
                                     "agentverify/redis:local"]
    assert report.missing == ["nginx:1.25"]
    assert "lb" not in report.roles and report.roles["redis"] == "sha256:rt"
    assert f"base image {base}: present (python 3.11.2)" in lines
    assert f"runtime image {runtime}: present" in lines
    assert any("nginx:1.25 (stack.images.lb): missing — pull it yourself or set stack.pull: true"
               in line for line in lines)
    # second run: every role tag is already there
    again = build_images(cfg, progress=lines.append, project_dir=project)
    assert again.built == [] and again.tagged == []
    assert len(again.present) == 3
    with pytest.raises(BackendUnavailable, match="stack.pull: true"):
        ensure_images(cfg, progress=lambda line: None, project_dir=project)
    cfg_pull = load_config(environ={}, overrides={"stack.images.lb": "nginx:1.25",
                                                  "stack.pull": True})
    roles = ensure_images(cfg_pull, progress=lambda line: None, project_dir=project)
    assert roles["milvus"] == "sha256:rt" and "lb" not in roles


def test_user_images_only_are_checked_not_built(tmp_path: Path, cache: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    engine = FakeEngine({"redis:7": "sha256:r"})
    monkeypatch.setattr(Engine, "connect", classmethod(lambda cls: engine))
    monkeypatch.setattr(images_build, "configured_images", lambda cfg: {"redis": "redis:7"})
    monkeypatch.chdir(tmp_path)
    lines: list[str] = []
    report = build_images(load_config(environ={}), progress=lines.append)
    assert report.roles == {"redis": "sha256:r"} and report.built == []
    assert "image redis:7 (stack.images.redis): present" in lines
    assert images_present(load_config(environ={})) == []


# ----------------------------------------------------------------- one-line CLI errors


def _args(*argv: str) -> argparse.Namespace:
    return cli._parser().parse_args(list(argv))


def test_cli_registers_build_and_list() -> None:
    args = _args("images", "build", "--rebuild", "--set", "stack.pull=true", "--env", "dev")
    assert args.command == "images" and args.images_action == "build" and args.rebuild
    assert cli.COMMANDS[args.command] is cmd_images
    assert _args("images", "list").images_action == "list"
    with pytest.raises(SystemExit):
        _args("images")


def test_missing_docker_engine_is_one_line_exit_2(
        tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import docker
    import docker.errors

    def refuse(**kwargs: Any) -> Any:
        raise docker.errors.DockerException("Error while fetching server API version: refused")

    monkeypatch.setattr(docker, "from_env", refuse)
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(shutil, "which", lambda *a, **k: "/usr/sbin/dockerd")
    assert cmd_images(_args("images", "build")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "start the Docker engine: dockerd" in err

    monkeypatch.setattr(shutil, "which", lambda *a, **k: None)
    assert cmd_images(_args("images", "list")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "apt-get install docker.io" in err and "start the Docker engine: dockerd" in err


def test_missing_debootstrap_is_one_line_exit_2(
        tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(Engine, "connect", classmethod(lambda cls: FakeEngine()))
    monkeypatch.setattr(shutil, "which", lambda *a, **k: None)
    project = _project(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert cmd_images(_args("images", "build", "--project-dir", str(project))) == 2
    err = capsys.readouterr().err
    assert err == ("agentverify: error: debootstrap not found: install debootstrap: "
                   "apt-get install debootstrap\n")


def test_not_root_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda *a, **k: "/usr/sbin/debootstrap")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(BackendUnavailable, match=r"debootstrap needs root"):
        stages._require_debootstrap()


def test_bad_project_dir_and_bad_config_are_usage_errors(
        tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(Engine, "connect", classmethod(lambda cls: FakeEngine()))
    monkeypatch.chdir(tmp_path)
    assert cmd_images(_args("images", "build", "--project-dir", str(tmp_path / "nope"))) == 2
    assert "expected the agentverify source tree" in capsys.readouterr().err
    assert cmd_images(_args("images", "build", "--set", "stack.replicas=zero")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "stack.replicas" in err


def test_a_failed_step_is_exit_3_with_the_cause(
        tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise StackError("debootstrap bookworm exited 1")

    monkeypatch.setattr(Engine, "connect", classmethod(lambda cls: FakeEngine()))
    monkeypatch.setattr(images_build, "ensure_base", broken)
    monkeypatch.chdir(tmp_path)
    assert cmd_images(_args("images", "build", "--project-dir", str(_project(tmp_path)))) == 3
    assert "StackError: debootstrap bookworm exited 1" in capsys.readouterr().err


def test_an_image_built_from_other_sources_is_called_stale() -> None:
    from agentverify.images import SOURCE_LABEL, source_hash, stale_source_reason

    here = source_hash(Path(__file__).resolve().parents[2])
    assert stale_source_reason({}) is None  # an image that records nothing is not judged
    assert stale_source_reason({SOURCE_LABEL: here}) is None
    reason = stale_source_reason({SOURCE_LABEL: "0" * 64})
    assert reason is not None and "other agentverify sources" in reason
    assert f"000000000000 vs {here[:12]}" in reason
