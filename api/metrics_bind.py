"""The keyless /metrics listener on SOFTLABEL_METRICS_BIND (e.g. an internal-only address)."""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from api.routes.metrics import PROMETHEUS_TEXT, exposition
from core.db import session_scope

logger = logging.getLogger("softlabel.api")


class _MetricsHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path.split("?", 1)[0] != "/metrics":
            self.send_error(404)
            return
        with session_scope() as session:
            body = exposition(session)
        self.send_response(200)
        self.send_header("Content-Type", PROMETHEUS_TEXT)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def parse_bind(bind: str) -> tuple[str, int]:
    """("host", port) of "host:port" (IPv6 as "[::1]:9108"); ValueError otherwise."""
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"SOFTLABEL_METRICS_BIND must be host:port, but got {bind!r}")
    return host.strip("[]"), int(port)


def start_metrics_listener(bind: str) -> ThreadingHTTPServer:
    """Serve GET /metrics without a key on `bind` from a daemon thread; returns the server."""
    server = ThreadingHTTPServer(parse_bind(bind), _MetricsHandler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    logger.info("metrics listener on %s", bind)
    return server
