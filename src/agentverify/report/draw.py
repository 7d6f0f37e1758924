"""A drawing worker of the HTML report: ``python -m agentverify.report.draw``.

Reads a JSON list of scenario-section keys (one line on stdin) and writes the JSON list
of their drawn sections on stdout (see :class:`agentverify.report.html._Sections`, which
starts it). Not a user-facing command.
"""

from __future__ import annotations

import json
import sys

from agentverify.report.html import draw_section


def main() -> int:
    keys = json.loads(sys.stdin.readline())
    json.dump([draw_section(key) for key in keys], sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
