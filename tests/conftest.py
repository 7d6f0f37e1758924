"""Shared test configuration: pytester for plugin tests; os.environ restored per test."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

pytest_plugins = ("pytester",)


@pytest.fixture(autouse=True)
def _restore_os_environ() -> Iterator[None]:
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
