"""The HTTP gateway (``forgeone gateway``): webhooks and HTTP callers into ForgeOne.

- ``POST /invoke/PLUGIN/FN``: the body is the input of a fast call through
  ForgeClient; the reply body is the output (``application/octet-stream``) with
  ``X-Forge-Worker``, ``X-Forge-Version`` and ``X-Forge-Duration-Us`` headers.
- ``POST /hooks/NAME``: the body is published on the hook's configured subject
  (a trigger, a stream or any subscriber takes it from there); ``202``.
- ``GET /healthz``: 200 while connected to NATS.

Routes, bearer tokens and limits come from a small JSON file (docs/triggers.md
has an example). Bodies are bounded by the route's limit both from
``Content-Length`` (refused before a byte of the body is read) and while
streaming (refused as soon as the limit is passed); a refused request's
connection is closed rather than drained. Every failure is JSON
``{"error": {"code": ..., "message": ...}}`` with the status of its code: 404
unknown route, plugin or function; 401 no bearer token, 403 a wrong one; 413
too large; 429 saturated (the gateway's own in-flight cap, or OVERLOADED); 504
timeout; 502 no worker serves the plugin; 503 NATS or a stream unavailable.

It is a separate process so that workers stay on the bus only.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
from aiohttp import web

from schemas.codec import DecodeError, Struct, field_spec, from_obj
from schemas.errors import (
    BadRequest,
    Denied,
    ErrorCode,
    ForgeError,
    InputTooLarge,
    NotFound,
    Overloaded,
    Timeout,
    Unavailable,
)
from schemas.manifest import FUNCTION_PATTERN, NAME_PATTERN
from schemas.messages import HEADER_MSG_ID, HEADER_TRACEPARENT
from schemas.triggers import TRIGGER_NAME_PATTERN, check_subject

from .client import ForgeClient

log = logging.getLogger("forge.gateway")

DEFAULT_MAX_BODY = 1024 * 1024
READ_CHUNK = 64 * 1024
HEADER_HOOK = "Forge-Hook"

#: HTTP status of each wire error code.
STATUS: dict[ErrorCode, int] = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.PLUGIN_NOT_FOUND: 404,
    ErrorCode.FUNCTION_NOT_FOUND: 404,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.DENIED: 403,
    ErrorCode.INPUT_TOO_LARGE: 413,
    ErrorCode.PLUGIN_ERROR: 422,
    ErrorCode.REJECTED: 422,
    ErrorCode.OVERLOADED: 429,
    ErrorCode.NO_WORKERS: 502,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.TIMEOUT: 504,
    ErrorCode.DEADLINE_EXCEEDED: 504,
}


@dataclass(frozen=True, slots=True)
class InvokeRoute(Struct):
    """``POST /invoke/<plugin>/<fn>`` for one plugin (or ``*``: any)."""

    plugin: str = field_spec(pattern=f"\\*|{NAME_PATTERN}")
    functions: list[str] = field_spec(
        default_factory=list, item_pattern=FUNCTION_PATTERN, doc="Allowed; empty: all."
    )
    tokens: list[str] = field_spec(default_factory=list, doc="Bearer tokens; empty: open.")
    timeout_s: float = field_spec(default=5.0)
    max_body_bytes: int = field_spec(default=0, ge=0, doc="0: the gateway's limit.")


@dataclass(frozen=True, slots=True)
class HookRoute(Struct):
    """``POST /hooks/<name>``: the body is published on ``subject``."""

    name: str = field_spec(pattern=TRIGGER_NAME_PATTERN)
    subject: str = field_spec(max_len=256)
    tokens: list[str] = field_spec(default_factory=list)
    max_body_bytes: int = field_spec(default=0, ge=0)
    jetstream: bool = field_spec(
        default=False, doc="Publish to JetStream and answer once stored (the subject's stream)."
    )

    def __post_init__(self) -> None:
        check_subject(self.subject, "hook subject", wildcards=False)


@dataclass(frozen=True, slots=True)
class GatewayConfig(Struct):
    host: str = field_spec(default="127.0.0.1", max_len=256)
    port: int = field_spec(default=8080, ge=0, le=65535)
    max_body_bytes: int = field_spec(default=DEFAULT_MAX_BODY, ge=1)
    max_in_flight: int = field_spec(default=256, ge=1, doc="Requests at once; past it 429.")
    invoke: list[InvokeRoute] = field_spec(default_factory=list)
    hooks: list[HookRoute] = field_spec(default_factory=list)


def load_config(path: Path) -> GatewayConfig:
    try:
        return from_obj(GatewayConfig, json.loads(path.read_text()))
    except (OSError, ValueError, DecodeError) as e:
        raise BadRequest(f"gateway config {path}: {e}") from None


class _Unauthorized(ForgeError):
    code = ErrorCode.DENIED


def error_response(err: ForgeError, status: int | None = None) -> web.Response:
    status = status or STATUS.get(err.code, 500)
    body = {"error": {"code": err.code.value, "message": err.message}}
    resp = web.json_response(body, status=status)
    if status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="forgeone"'
    if status in (429, 502, 503):
        resp.headers["Retry-After"] = "1"
    return resp


class Gateway:
    def __init__(self, client: ForgeClient, config: GatewayConfig) -> None:
        self.client = client
        self.config = config
        self.js = client.nc.jetstream(timeout=5)
        self._slots = asyncio.Semaphore(config.max_in_flight)
        self._invoke = {r.plugin: r for r in config.invoke}
        self._hooks = {h.name: h for h in config.hooks}

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body_bytes)
        app.router.add_post("/invoke/{plugin}/{fn}", self._on_invoke)
        app.router.add_post("/hooks/{name}", self._on_hook)
        app.router.add_get("/healthz", self._on_health)
        return app

    async def start(self, host: str, port: int) -> tuple[web.AppRunner, int]:
        """Serve on ``host:port`` (0: a free port); returns the runner and the port."""
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        bound = sockets[0].getsockname()[1] if sockets else port
        return runner, int(bound)

    # --- shared checks ----------------------------------------------------------------
    @staticmethod
    def _authorize(request: web.Request, tokens: list[str]) -> None:
        if not tokens:
            return
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise _Unauthorized("this route needs 'Authorization: Bearer <token>'")
        given_b = given.strip().encode()
        if not any(hmac.compare_digest(given_b, t.encode()) for t in tokens):
            raise Denied("the bearer token is not valid for this route")

    async def _body(self, request: web.Request, limit: int) -> bytes:
        """The whole body, refused once it exceeds ``limit`` (before reading, when the
        declared length already does)."""
        declared = request.content_length
        if declared is not None and declared > limit:
            raise InputTooLarge(f"body of {declared} bytes exceeds the limit of {limit}")
        buf = bytearray()
        async for chunk in request.content.iter_chunked(READ_CHUNK):
            buf += chunk
            if len(buf) > limit:
                raise InputTooLarge(f"body exceeds the limit of {limit} bytes")
        return bytes(buf)

    async def _guarded(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self._slots.locked():
            return error_response(
                Overloaded(f"the gateway has {self.config.max_in_flight} requests in flight")
            )
        async with self._slots:
            try:
                resp: web.StreamResponse = await handler(request)
                return resp
            except _Unauthorized as e:
                return error_response(e, 401)
            except InputTooLarge as e:
                resp = error_response(e)
                resp.force_close()  # do not drain what the client still sends
                return resp
            except ForgeError as e:
                return error_response(e)
            except Exception as e:
                log.exception("event=gateway_failed path=%s", request.path)
                return error_response(ForgeError(f"{type(e).__name__}: {e}"), 500)  # INTERNAL

    # --- routes -----------------------------------------------------------------------
    async def _on_invoke(self, request: web.Request) -> web.StreamResponse:
        return await self._guarded(request, self._invoke_inner)

    async def _invoke_inner(self, request: web.Request) -> web.StreamResponse:
        plugin, fn = request.match_info["plugin"], request.match_info["fn"]
        route = self._invoke.get(plugin) or self._invoke.get("*")
        if route is None or (route.functions and fn not in route.functions):
            raise NotFound(f"no invoke route for {plugin}/{fn}")
        self._authorize(request, route.tokens)
        body = await self._body(request, route.max_body_bytes or self.config.max_body_bytes)
        result = await self.client.invoke_result(
            plugin, fn, body, route.timeout_s, traceparent=request.headers.get(HEADER_TRACEPARENT)
        )
        if not result.ok:
            assert result.error is not None
            raise result.error.to_exception()
        return web.Response(
            body=result.output,
            content_type="application/octet-stream",
            headers={
                "X-Forge-Worker": result.worker,
                "X-Forge-Version": result.version,
                "X-Forge-Duration-Us": str(result.duration_us),
            },
        )

    async def _on_hook(self, request: web.Request) -> web.StreamResponse:
        return await self._guarded(request, self._hook_inner)

    async def _hook_inner(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        route = self._hooks.get(name)
        if route is None:
            raise NotFound(f"no hook {name!r}")
        self._authorize(request, route.tokens)
        body = await self._body(request, route.max_body_bytes or self.config.max_body_bytes)
        headers = {HEADER_HOOK: name}
        if request.content_type:
            headers["Content-Type"] = request.content_type
        traceparent = request.headers.get(HEADER_TRACEPARENT)
        if traceparent:
            headers[HEADER_TRACEPARENT] = traceparent
        reply: dict[str, Any] = {"accepted": True, "subject": route.subject}
        try:
            if route.jetstream:
                key = request.headers.get("Idempotency-Key")
                if key:
                    headers[HEADER_MSG_ID] = f"hook:{name}:{key[:200]}"
                ack = await self.js.publish(route.subject, body, headers=headers)
                reply.update(stream=ack.stream, seq=ack.seq, duplicate=bool(ack.duplicate))
            else:
                await self.client.nc.publish(route.subject, body, headers=headers)
                await self.client.nc.flush(timeout=5)
        except (nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError):
            raise Unavailable(f"no stream stores {route.subject!r}") from None
        except (nats.errors.TimeoutError, TimeoutError):
            raise Timeout(f"NATS did not confirm the event on {route.subject!r}") from None
        except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError) as e:
            raise Unavailable(f"NATS connection: {type(e).__name__}") from None
        return web.json_response(reply, status=202)

    async def _on_health(self, request: web.Request) -> web.StreamResponse:
        if self.client.nc.is_connected:
            return web.json_response({"ok": True})
        return error_response(Unavailable("not connected to NATS"))


async def serve(a: argparse.Namespace) -> int:
    config = load_config(Path(a.config))
    client = await ForgeClient.connect(a.nats_url, a.prefix, a.creds)
    gateway = Gateway(client, config)
    runner, port = await gateway.start(
        a.host or config.host, config.port if a.port is None else a.port
    )
    print(f"gateway ready http://{a.host or config.host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    await client.close()
    return 0


def run_gateway(a: argparse.Namespace) -> int:
    import uvloop

    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )
    return int(uvloop.run(serve(a)))
