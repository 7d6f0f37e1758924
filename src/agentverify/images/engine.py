"""The Docker engine as an image build uses it.

What is here: :class:`Engine`, the few engine calls a build makes (inspect, import a
root filesystem, build with no network, tag, list by label, remove), with every docker
SDK and requests error mapped to an agentverify error in one place, and the one-line
hint when no engine answers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from agentverify.errors import BackendUnavailable, StackError
from agentverify.images.naming import LABEL

__all__ = ["Engine"]


class Engine:
    """The few Docker engine calls an image build makes; every docker error is mapped here."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.api = client.api

    @classmethod
    def connect(cls) -> Engine:
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
