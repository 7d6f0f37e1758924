"""``python -m support_agent``: serve the API with uvicorn on ``HOST``:``PORT``.

SIGTERM (or Ctrl-C) stops accepting connections, lets in-flight requests finish (up to
30 s), closes the clients, logs "stopped" and then ends by that same signal, as uvicorn
does (exit status 143 in a shell or container: "terminated on request"); SIGHUP reopens
the request log file. A bad setting exits 2 with one line on stderr.

Example:
    $ OPENAI_API_KEY=sk-... SUPPORT_CONFIG=config.yaml python -m support_agent
"""

from __future__ import annotations

import logging
import signal
import sys

import uvicorn

from support_agent.app import create_app
from support_agent.config import ConfigError, load_settings

__all__ = ["main"]

#: Seconds uvicorn waits for in-flight requests after SIGTERM before closing them.
GRACEFUL_SHUTDOWN_S = 30


def main() -> int:
    """Run one replica until SIGTERM; the exit status (0 after a clean shutdown)."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"support-agent: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    access_log = app.state.components.access_log
    signal.signal(signal.SIGHUP, lambda *_: access_log.request_reopen())
    server = uvicorn.Server(uvicorn.Config(
        app, host=settings.host, port=settings.port, access_log=False, log_level="warning",
        lifespan="on", server_header=False, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    ))
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
