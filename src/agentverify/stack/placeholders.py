"""Placeholders in a service's strings, and how each way of running resolves them.

Strings in ``command``, ``env`` and ``files`` of a
:class:`~agentverify.stack.spec.ServiceSpec` may hold placeholders; each backend resolves
them for itself, so one spec runs as a local process and as a container:

==========================  ==========================================================
``${port:NAME}``            the port this service listens on for port NAME
``${bind}``                 the address to bind (127.0.0.1 locally, 0.0.0.0 in a container)
``${confdir}``              directory holding this service's rendered ``files``
``${datadir}``              this service's persistent data directory
``${python}``               the Python interpreter that has agentverify installed
``${user}``                 the user the service runs as
``${addr:SVC}``             ``host:port`` of service SVC's first port, as this service sees it
``${addr:SVC:PORT}``        the same for a named port
``${url:SVC}``              ``scheme://host:port`` of SVC's first port
``${host:SVC}``             host of SVC as this service sees it
==========================  ==========================================================

A user writes the friendlier ``{name}`` form in ``stack.agent.command``, ``.ingest`` and
``.env`` (:data:`USER_PLACEHOLDERS`); :func:`expand_user_template` turns it into the
table above, so a user's agent is rendered by the same machinery as every service.

What is here: :func:`render_template` (every placeholder of a string replaced),
:func:`make_resolver` (the table above for one instance, on any backend) and the view
from inside a container, shared by the docker backend and the compose rendering:
:func:`container_resolver`, with the directories every container mounts
(:data:`CONF_DIR`, :data:`DATA_DIR`).

Example:
    >>> resolve = make_resolver(who="web", ports={"http": 8000}, bind="127.0.0.1",
    ...                         confdir="/c", datadir="/d", python="python3", user="me",
    ...                         lookup=lambda svc, port: ("127.0.0.1", 6379, "redis"))
    >>> render_template("--port ${port:http} --cache ${url:redis}", resolve)
    '--port 8000 --cache redis://127.0.0.1:6379'
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from agentverify.errors import StackError

if TYPE_CHECKING:
    from agentverify.stack.spec import ServiceSpec

__all__ = ["CONF_DIR", "CONTAINER_BIND", "CONTAINER_PYTHON", "CONTAINER_USER", "DATA_DIR",
           "USER_PLACEHOLDERS", "Resolver", "container_resolver", "expand_user_template",
           "make_resolver", "render_template"]

#: what a service binds inside its own network namespace (a container)
CONTAINER_BIND = "0.0.0.0"
#: where a container finds its rendered files and its data directory
CONF_DIR = "/agentverify/conf"
DATA_DIR = "/agentverify/data"
#: the interpreter and the user of the agentverify images
CONTAINER_PYTHON = "python3"
CONTAINER_USER = "root"

_PLACEHOLDER = re.compile(r"\$\{([a-z]+)(?::([A-Za-z0-9_.-]+))?(?::([A-Za-z0-9_.-]+))?\}")

#: ``{name}`` in a user's argv / env -> what it stands for (``{version}`` is added per spec)
USER_PLACEHOLDERS: dict[str, str] = {
    "python": "${python}",          # the interpreter that has agentverify (and the agent)
    "host": "${bind}",              # the address to bind: 127.0.0.1, 0.0.0.0 in a container
    "bind": "${bind}",
    "port": "${port:http}",         # the port to listen on
    "config": "${confdir}/config.yaml",   # the seed-format config.yaml written for the agent
    "knowledge": "${confdir}/knowledge",  # the documents of stack.knowledge_dir (ingest)
    "confdir": "${confdir}",
    "datadir": "${datadir}",        # the instance's own data directory (logs ...)
}
_USER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")

#: ``(kind, a, b) -> text``: what ``${kind:a:b}`` becomes for one instance
Resolver = Callable[[str, str | None, str | None], str]


def render_template(text: str, resolve: Resolver) -> str:
    """Replace every ``${kind[:a[:b]]}`` placeholder with ``resolve(kind, a, b)``."""
    return _PLACEHOLDER.sub(lambda m: str(resolve(m.group(1), m.group(2), m.group(3))), text)


def expand_user_template(text: str, values: Mapping[str, str] | None = None,
                         *, allowed: Mapping[str, str] = USER_PLACEHOLDERS) -> str:
    """A user's ``{name}`` placeholders as ``${...}`` ones (``{{`` / ``}}``: literal braces;
    ``${...}`` already written is kept as it is).

    Args:
        text: one argv item or env value.
        values: more ``{name}`` -> text for this spec (e.g. ``{"version": "v2"}``).
        allowed: the placeholders of this kind of string (an ingest job has no ``{port}``).

    Raises:
        ValueError: an unknown ``{name}``; the message lists the valid ones.

    Example:
        >>> expand_user_template("--port={port}")
        '--port=${port:http}'
    """
    table = {**allowed, **(values or {})}

    def one(m: re.Match[str]) -> str:
        whole = m.group(0)
        if whole in ("{{", "}}"):
            return whole[0]
        if m.start() > 0 and text[m.start() - 1] == "$":
            return whole  # ${kind...}: agentverify's own form, resolved by the backend
        name = m.group(1)
        if name not in table:
            raise ValueError(f"unknown placeholder {{{name}}}; expected one of "
                             + ", ".join("{" + k + "}" for k in sorted(table))
                             + " (write {{ and }} for literal braces)")
        return table[name]

    return _USER.sub(one, text)


def make_resolver(*, who: str, ports: Mapping[str, int], bind: str, confdir: str,
                  datadir: str, python: str, user: str,
                  lookup: Callable[[str, str | None], tuple[str, int, str]]) -> Resolver:
    """The placeholder table above, for one instance on one backend.

    Args:
        who: the instance, for messages.
        ports: this instance's port name -> the port it listens on (first is default).
        bind, confdir, datadir, python, user: what ``${bind}`` ... ``${user}`` become.
        lookup: ``(service, port name or None) -> (host, port, scheme)`` of a peer as
            this instance reaches it.
    """

    def resolve(kind: str, a: str | None, b: str | None) -> str:
        if kind == "port":
            if not a:
                return str(next(iter(ports.values())))
            if a in ports:
                return str(ports[a])
            return str(lookup(a, b)[1])  # ${port:SVC[:PORT]}
        fixed = {"bind": bind, "confdir": confdir, "datadir": datadir, "python": python,
                 "user": user}
        if kind in fixed:
            return fixed[kind]
        if kind in {"addr", "host", "url"}:
            if not a:
                raise StackError(f"{who}: ${{{kind}}} needs a service name")
            host, port, scheme = lookup(a, b)
            if kind == "host":
                return host
            if kind == "addr":
                return f"{host}:{port}"
            return f"{scheme}://{host}:{port}"
        raise StackError(f"{who}: unknown placeholder ${{{kind}}}")

    return resolve


def container_resolver(spec: ServiceSpec, lookup: Callable[[str, str | None],
                                                           tuple[str, int, str]],
                       *, who: str | None = None) -> Resolver:
    """Placeholder resolution as seen from inside a container.

    Args:
        spec: the service whose strings are rendered.
        lookup: ``(service, port name or None) -> (host, container port, scheme)`` of a
            peer as this container reaches it (a network alias or a compose DNS name).
        who: the instance name for error messages.
    """
    return make_resolver(who=who or spec.name, ports={p.name: p.port for p in spec.ports},
                         bind=CONTAINER_BIND, confdir=CONF_DIR, datadir=DATA_DIR,
                         python=CONTAINER_PYTHON, user=CONTAINER_USER, lookup=lookup)
