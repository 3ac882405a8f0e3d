"""/metrics, /healthz and /readyz for the coordinator, on a small thread-served HTTP server."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve_status(
    host: str, port: int, registry: CollectorRegistry, ready: Callable[[], tuple[bool, str]]
) -> WSGIServer:
    """Start serving in a daemon thread; ``ready`` says whether /readyz is 200 and why not."""
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path in ("/healthz", "/readyz"):
            ok, why = (True, "ok") if path == "/healthz" else ready()
            start_response(
                "200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")]
            )
            return [why.encode() + b"\n"]
        result: Iterable[bytes] = metrics_app(environ, start_response)
        return result

    server = make_server(host, port, app, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, name="status-http", daemon=True).start()
    return server
