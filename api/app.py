"""The Sanic app factory: one blueprint per API family on one shared engine, in one process.

Every error leaves as JSON in the called API's shape. A 500 is a bug: it is logged with the request id.
With SEMANTIC_API_KEY set every route but OPEN_PATHS needs the key (docs/security.md).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import signal
import time

from sanic import Sanic
from sanic.exceptions import PayloadTooLarge, RequestCancelled, SanicException
from sanic.response import empty
from sanic.response import json as json_response

from api import access_log
from api.errors import ApiError, error_body, is_anthropic
from api.metrics import Metrics
from api.ollama_format import error_body as ollama_error_body
from api.ollama_format import is_ollama
from api.routes import admin, agent_files, agents, anthropic, ollama, openai, responses, system
from api.state import ServerState
from engine.errors import EngineClosed, EngineError, ModelLoadError, RequestError
from engine.settings import Settings

log = logging.getLogger("agent_memory.api")

CLIENT_GONE = 499  # a client that closed the connection first (nginx's status; streams report it too)
# Load balancers probe /health without a key; /metrics tells traffic and session counts, so it needs one.
OPEN_PATHS = {"/", "/health", "/openapi.json"}
# Request line and headers together (Sanic's own default, stated here because docs/security.md names it).
MAX_HEAD_BYTES = 8192
# Generation may run for many minutes; Sanic's default 60 s response timeout would cut it off.
RESPONSE_TIMEOUT_S = 24 * 3600
# After the grace period the running turns are ended with an error event; this long more lets their
# streams send it and close before Sanic drops whatever connection is still open.
SHUTDOWN_FLUSH_S = 10.0
SHUTDOWN_MESSAGE = "the server is shutting down; retry shortly"
ROUTED_METHODS = ("GET", "POST", "PATCH", "DELETE")


def create_app(settings: Settings, engine, name: str = "agent_memory") -> Sanic:
    """The app for `engine` (an engine.engine.Engine, started when the server starts, closed when it stops)."""
    # Logging is the caller's (serve sets it up once): Sanic's own handlers would print every line twice.
    app = Sanic(name, configure_logging=False)
    app.config.REQUEST_MAX_SIZE = settings.max_request_mb * 1024 * 1024
    app.config.REQUEST_MAX_HEADER_SIZE = MAX_HEAD_BYTES
    app.config.RESPONSE_TIMEOUT = RESPONSE_TIMEOUT_S
    app.config.REQUEST_TIMEOUT = 120
    app.config.FALLBACK_ERROR_FORMAT = "json"
    # SIGTERM/SIGINT: stop accepting, give running turns the grace period, then end them with an error
    # (end_turns_past_grace); Sanic closes the connections left after that and the flush time.
    app.config.GRACEFUL_SHUTDOWN_TIMEOUT = settings.shutdown_grace_s + SHUTDOWN_FLUSH_S
    app.ctx.server = ServerState(settings, engine, Metrics(lambda: engine))
    for blueprint in (system.bp, anthropic.bp, openai.bp, responses.bp, ollama.bp, agents.bp, agent_files.bp, admin.bp):
        app.blueprint(blueprint)

    @app.before_server_start
    async def start_engine(app):
        if engine.state == "loading" and not engine.started:
            engine.start(wait=False)
            app.add_task(_log_load_failure(engine), name="log-load-failure")

    @app.before_server_stop
    async def second_signal_exits_at_once(app):
        # Shutdown has begun (running requests get the grace period). A second SIGTERM/SIGINT means "now":
        # exit without waiting; every file on disk is complete (temp + fsync + rename), so nothing is corrupt.
        loop = asyncio.get_running_loop()
        for number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(number, _exit_now, number)

    @app.before_server_stop
    async def end_turns_past_grace(app):
        # Sanic waits for open connections on this loop while the grace period runs
        app.ctx.grace_timer = asyncio.get_running_loop().call_later(
            settings.shutdown_grace_s, _end_running_turns, app.ctx.server
        )

    @app.after_server_stop
    async def stop_engine(app):
        engine.close()  # finishes queued work and writes every pending KV block to disk

    app.on_request(_on_request, priority=100)
    app.on_response(_on_response)
    app.error_handler.add(Exception, _on_error)
    app.error_handler.add(RequestCancelled, _on_client_gone)
    return app


async def _log_load_failure(engine) -> None:
    """A model that fails to load leaves the server up (/health says why); the log says it too."""
    while engine.state == "loading":
        await asyncio.sleep(0.5)
    if engine.state == "failed":
        log.error("the model did not load: %s; /health answers 503 until an admin swap loads one", engine.load_error)


def _end_running_turns(server) -> None:
    if len(server.turns):
        log.warning("grace period over: ending %d running turn(s) with an error", len(server.turns))
    server.turns.end_all(SHUTDOWN_MESSAGE)


def _exit_now(number: int) -> None:
    log.warning("second %s: exiting now; pending KV writes are dropped", signal.Signals(number).name)
    os._exit(128 + number)


async def _on_request(request):
    request.ctx.started = time.perf_counter()
    request.ctx.streamed = False
    request.ctx.route_label = f"/{request.route.path}" if request.route else "unmatched"
    request.ctx.tenant = ""  # the one tenant there is without named keys (SEMANTIC_API_KEYS)
    settings = request.app.ctx.server.settings
    if request.method == "OPTIONS" and settings.cors_origin_list:
        return empty(status=204)  # CORS preflight: headers are added on the way out
    path = request.path
    if path in OPEN_PATHS or request.method == "NONE":
        # Method NONE: Sanic could not read the request (too large, malformed) and answers its error with
        # a stand-in request; a 401 would hide the real status. (Not an empty head: under ASGI every
        # request has one.)
        return None
    if path.startswith("/admin"):
        _check_admin(request, settings)
    elif settings.api_keys:
        request.ctx.tenant = _tenant_of(_offered_key(request), settings.tenant_keys)
    elif settings.api_key and not hmac.compare_digest(_header_bytes(_offered_key(request)), settings.api_key.encode()):
        raise ApiError(401, "invalid API key")
    return None


def _offered_key(request) -> str:
    """The OpenAI SDK sends `Authorization: Bearer`, the Anthropic SDK `x-api-key`: either is accepted."""
    offered = request.headers.get("x-api-key")
    if offered is None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        offered = token.strip() if scheme.lower() == "bearer" else None
    if offered is None:
        raise ApiError(401, "missing API key: send it as `x-api-key: KEY` or `Authorization: Bearer KEY`")
    return offered


def _tenant_of(offered: str, tenant_keys: dict[str, str]) -> str:
    """The tenant whose key was offered; 401 for none. Every key is compared, each in constant time."""
    offered_bytes = _header_bytes(offered)
    found = None
    for key, tenant in tenant_keys.items():
        if hmac.compare_digest(offered_bytes, key.encode()):
            found = tenant
    if found is None:
        raise ApiError(401, "invalid API key")
    return found


def _check_admin(request, settings: Settings) -> None:
    if not settings.admin_key:
        raise ApiError(403, "admin routes are disabled: set SEMANTIC_ADMIN_KEY to enable them")
    offered = request.headers.get("x-admin-key", "")
    if not hmac.compare_digest(_header_bytes(offered), settings.admin_key.encode()):
        raise ApiError(401 if not offered else 403, "missing or wrong X-Admin-Key")


def _header_bytes(value: str) -> bytes:
    # A header's non-UTF-8 bytes arrive as lone surrogates (Sanic decodes heads with surrogateescape).
    return value.encode("utf-8", "surrogateescape")


async def _on_response(request, response):
    server = request.app.ctx.server
    origins = server.settings.cors_origin_list
    origin = request.headers.get("origin")
    if origins and origin and ("*" in origins or origin in origins):
        response.headers["Access-Control-Allow-Origin"] = "*" if "*" in origins else origin
        response.headers["Access-Control-Allow-Headers"] = "*"
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, PATCH, DELETE, OPTIONS"
        response.headers["Vary"] = "Origin"
    response.headers["x-request-id"] = str(request.id)
    note = getattr(request.ctx, "turn_note", None)
    if note is not None and note.miss_reason:
        response.headers["x-cache-miss-reason"] = note.miss_reason  # ASCII: engine/turn.py's words and numbers
    if not getattr(request.ctx, "streamed", False):  # streams are counted and logged when they end
        started = getattr(request.ctx, "started", time.perf_counter())
        route = getattr(request.ctx, "route_label", "unmatched")
        seconds = time.perf_counter() - started
        tenant = getattr(request.ctx, "tenant", "")
        server.metrics.observe_request(route, request.method, response.status, seconds, tenant)
        access_log.write(request, response.status)


def _on_error(request, exception: Exception):
    error = _as_api_error(request, exception)
    path = request.path if request.head else _unread_path(request)
    body = ollama_error_body(error) if is_ollama(path) else error_body(is_anthropic(path, request.headers), error)
    return json_response(body, status=error.status, headers=error.headers)


def _on_client_gone(request, exception: RequestCancelled):
    # The client left before its answer: nothing reaches it; metrics and the access log count a 499.
    return empty(status=CLIENT_GONE)


def _as_api_error(request, exception: Exception) -> ApiError:
    if isinstance(exception, ApiError):
        return exception
    if isinstance(exception, RequestError | ModelLoadError):
        return ApiError(400, str(exception))
    if isinstance(exception, EngineClosed):
        return ApiError(503, str(exception), headers={"Retry-After": "5"})
    if isinstance(exception, PayloadTooLarge) and not request.head:
        return _head_too_large(request)
    if isinstance(exception, SanicException):
        status = exception.status_code
        message = {
            404: f"no route {request.method} {request.path}; see /openapi.json",
            405: f"method {request.method} is not allowed on {request.path}",
            413: f"the request body is larger than the {request.app.config.REQUEST_MAX_SIZE // (1024 * 1024)} MB "
            "limit (SEMANTIC_MAX_REQUEST_MB)",
        }.get(status, str(exception))
        headers = dict(exception.headers or {})  # a 405's Allow among them, for routes without parameters
        if status == 405 and not any(name.lower() == "allow" for name in headers):
            headers["Allow"] = _allowed_methods(request)
        return ApiError(status, message, headers=headers)
    if isinstance(exception, EngineError):
        log.error("request %s failed: %s", request.id, exception)
        return ApiError(500, str(exception), headers={"x-should-retry": "false"})
    log.exception("request %s: unexpected server error", request.id)
    return ApiError(500, f"internal server error (request id {request.id})")


def _allowed_methods(request) -> str:
    """The methods routed for the request's path: Sanic names them in a 405 only for paths without
    parameters."""
    allowed = []
    for method in ROUTED_METHODS:
        try:
            request.app.router.get(request.path, method, None)
        except SanicException:
            continue
        allowed.append(method)
    return ", ".join(allowed)


def _received(request) -> bytes:
    """What Sanic had received of a request it could not read. Its buffer is an internal (hence the getattr):
    without it, an over-long head is a 431 and its error is in the OpenAI shape."""
    return bytes(getattr(request.stream, "recv_buffer", b""))


def _unread_path(request) -> str:
    # "POST /v1/messages?beta=true HTTP/1.1": the path picks the error's shape.
    parts = _received(request).split(b"\r\n", 1)[0].split(b" ")
    return parts[1].split(b"?", 1)[0].decode("latin-1") if len(parts) > 1 else request.path


def _head_too_large(request) -> ApiError:
    """414 when the request line alone takes more than half the limit (a long URL), else 431: Sanic raises
    one PayloadTooLarge for both."""
    received = _received(request)
    line_end = received.find(b"\r\n")
    request_line_bytes = len(received) if line_end == -1 else line_end
    if request_line_bytes * 2 > MAX_HEAD_BYTES:
        return ApiError(414, f"the URL is too long: request line and headers are limited to {MAX_HEAD_BYTES} bytes")
    return ApiError(
        431, f"the request headers are too large: request line and headers are limited to {MAX_HEAD_BYTES} bytes"
    )
