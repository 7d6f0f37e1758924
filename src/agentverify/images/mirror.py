"""Which Debian mirror the base image is bootstrapped from.

What is here: :func:`find_debian_mirror` (``AGENTVERIFY_DEBIAN_MIRROR``, else this
machine's apt sources: deb822 ``*.sources`` first, then one-line ``sources.list``
entries), the two parsers it uses and the :class:`DebianMirror` it returns. The mirror
is used at build time only and is never written into the repository or an image tag.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from agentverify.errors import BackendUnavailable

__all__ = ["MIRROR_ENV", "SUITE", "DebianMirror", "find_debian_mirror", "parse_deb822_sources",
           "parse_sources_list"]

SUITE = "bookworm"
MIRROR_ENV = "AGENTVERIFY_DEBIAN_MIRROR"


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
