"""Every backend implements the Backend protocol, method by method, signature by
signature (after testcontainers' tests/core/test_protocol_compliance.py); the handles
they return are ServiceTargets and Peers. The fake used by unit tests complies too, so
what the Stack's unit tests prove holds for the real backends' interface."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest

from agentverify.stack.backend import BACKENDS, Backend, Handle, Peer
from agentverify.stack.wait import ServiceTarget
from tests.unit.fakes import FakeBackend


def _protocol_methods(protocol: type) -> dict[str, inspect.Signature]:
    out = {}
    for name, member in vars(protocol).items():
        if name.startswith("_") or not callable(member):
            continue
        out[name] = inspect.signature(member)
    return out


def _backend_classes() -> list[type]:
    classes = []
    for path in BACKENDS.values():
        module, _, cls = path.rpartition(".")
        classes.append(getattr(importlib.import_module(module), cls))
    return [*classes, FakeBackend]


@pytest.mark.parametrize("cls", _backend_classes(), ids=lambda c: c.__name__)
def test_backend_implements_every_protocol_method_with_its_signature(cls: type) -> None:
    assert isinstance(getattr(cls, "name", None), str)
    for name, wanted in _protocol_methods(Backend).items():
        impl = getattr(cls, name, None)
        assert impl is not None, f"{cls.__name__} lacks {name}()"
        got = inspect.signature(impl)
        got_params = dict(got.parameters)
        for pname, param in wanted.parameters.items():
            assert pname in got_params, f"{cls.__name__}.{name}() lacks parameter {pname!r}"
            assert got_params[pname].kind == param.kind, \
                f"{cls.__name__}.{name}({pname}) is {got_params[pname].kind}, expected {param.kind}"
            has_default = param.default is not inspect.Parameter.empty
            assert has_default == (got_params[pname].default is not inspect.Parameter.empty), \
                f"{cls.__name__}.{name}({pname}): default differs from the protocol"
        extra = [p for n, p in got_params.items() if n not in wanted.parameters]
        for p in extra:  # implementation-only parameters must not change how callers call
            assert p.default is not inspect.Parameter.empty, \
                f"{cls.__name__}.{name}() adds a required parameter {p.name!r}"


@pytest.mark.parametrize("cls", _backend_classes(), ids=lambda c: c.__name__)
def test_backend_instances_are_backends_with_their_pytest_id(cls: type) -> None:
    backend = cls()
    assert isinstance(backend, Backend)
    assert backend.pytest_id() == backend.name


def test_handles_are_service_targets_and_peers(tmp_path: Path) -> None:
    from agentverify.stack.runstate import RunContext
    from agentverify.stack.spec import Port, ServiceSpec

    backend = FakeBackend()
    backend.open(RunContext.create("fake", state_dir=tmp_path))
    spec = ServiceSpec(name="svc", role="cache", image="x", command=("x",), ports=(Port("p", 1),))
    handle = backend.start(spec, "svc", peers={})
    assert isinstance(handle, Handle)
    assert isinstance(handle, ServiceTarget)
    peer: Peer = handle  # the Stack hands handles to backends as peers
    assert peer.address("p") == ("svc-g1", 1)
