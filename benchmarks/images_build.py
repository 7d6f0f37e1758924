"""Time `agentverify images build`: one build (cold or warm, as the machine is), then a
second one with nothing changed, which must build nothing and take a few seconds.

    .venv/bin/python benchmarks/images_build.py [--rebuild]

Prints one JSON object: seconds of each run, what each built, the runtime image size.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from agentverify.config import load_config
from agentverify.errors import AgentVerifyError
from agentverify.images import build_images


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rebuild", action="store_true",
                        help="debootstrap and rebuild the runtime image on the first run")
    args = parser.parse_args()
    config = load_config()
    runs = []
    try:
        for rebuild in (args.rebuild, False):
            start = time.monotonic()
            report = build_images(config, progress=lambda line: print(line, file=sys.stderr),
                                  rebuild=rebuild)
            runs.append({"seconds": round(time.monotonic() - start, 1),
                         "built": report.built, "tagged": report.tagged})
    except AgentVerifyError as exc:
        print(f"images_build: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"first": runs[0], "second": runs[1], "runtime": report.runtime,
                      "runtime_mb": round((report.runtime_size or 0) / 1e6)}, indent=1))
    return 0 if not runs[1]["built"] else 1


if __name__ == "__main__":
    sys.exit(main())
