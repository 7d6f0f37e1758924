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

Modules, by concept:

==============  ============================================================================
``mirror``      which Debian mirror the base is bootstrapped from
``wheels``      runtime requirements, the wheel house for the image's Python, the
                project's own wheel and the hash of its sources
``engine``      the Docker engine calls a build makes, errors mapped in one place
``stages``      the base stage (debootstrap + import) and the runtime stage (docker build)
``build``       what callers use: build / ensure / check / list images, stale sources
``naming``      image repositories, labels and the content-hash length
``workdirs``    the cache directory, scratch space and the one-build-at-a-time lock
==============  ============================================================================

The command line (``agentverify images build|list``) is in :mod:`agentverify.cli`.

Example:
    >>> from agentverify.config import load_config
    >>> roles = ensure_images(load_config())            # doctest: +SKIP
    base image agentverify/base:3f9c0a1b2d4e: present
    ...
    >>> roles["redis"]                                  # doctest: +SKIP
    'sha256:...'
"""

from agentverify.images.build import (
    ImageBuildReport,
    build_images,
    configured_images,
    ensure_images,
    images_present,
    list_images,
    stale_source_reason,
)
from agentverify.images.mirror import (
    DebianMirror,
    find_debian_mirror,
    parse_deb822_sources,
    parse_sources_list,
)
from agentverify.images.naming import SOURCE_LABEL
from agentverify.images.stages import (
    BASE_PACKAGES,
    base_image_tag,
    render_dockerfile,
    runtime_content_hash,
)
from agentverify.images.wheels import (
    requirements_hash,
    runtime_requirements,
    source_hash,
    target_environment,
    unsatisfied_requirements,
)

__all__ = [
    "BASE_PACKAGES",
    "SOURCE_LABEL",
    "DebianMirror",
    "ImageBuildReport",
    "base_image_tag",
    "build_images",
    "configured_images",
    "ensure_images",
    "find_debian_mirror",
    "images_present",
    "list_images",
    "parse_deb822_sources",
    "parse_sources_list",
    "render_dockerfile",
    "requirements_hash",
    "runtime_content_hash",
    "runtime_requirements",
    "source_hash",
    "stale_source_reason",
    "target_environment",
    "unsatisfied_requirements",
]
