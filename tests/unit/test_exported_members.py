"""The public surface is exactly what agentverify/__init__.py lists."""

from __future__ import annotations

import subprocess
import sys

import agentverify


def test_all_lists_every_public_name_and_each_resolves() -> None:
    assert sorted(agentverify.__all__) == sorted(set(agentverify.__all__))
    for name in agentverify.__all__:
        assert getattr(agentverify, name) is not None, name
    assert dir(agentverify) == sorted(agentverify.__all__)


def test_every_exported_member_belongs_to_agentverify() -> None:
    for name in agentverify.__all__:
        member = getattr(agentverify, name)
        module = getattr(member, "__module__", "agentverify")
        assert module.startswith("agentverify"), (name, module)


def test_an_unknown_name_is_an_attribute_error() -> None:
    try:
        agentverify.Nope  # noqa: B018
    except AttributeError as exc:
        assert "Nope" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def _modules_after(statement: str, names: tuple[str, ...]) -> list[str]:
    code = (f"import sys; {statement}; "
            f"print([m for m in {names!r} if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    return eval(proc.stdout)  # noqa: S307 - our own printed list


def test_the_plugin_imports_neither_locust_nor_docker() -> None:
    assert _modules_after("import agentverify, agentverify.plugin",
                          ("locust", "gevent", "docker", "testcontainers")) == []


def test_the_services_do_not_import_the_whole_tool() -> None:
    loaded = _modules_after("import agentverify.llm_stub.app",
                            ("agentverify.session", "agentverify.stack.stack"))
    assert loaded == []
