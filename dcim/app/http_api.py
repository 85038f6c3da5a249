"""The daemon's HTTP API (aiohttp), bound to 127.0.0.1 by default.

    GET    /healthz                          200 {"ok": true, ...} or 503 {"ok": false, ...}
    GET    /metrics                          Prometheus text format
    GET    /api/v1/alarms                    active alarms; ?all=1 history (newest first, ?limit=N)
    GET    /api/v1/alarms/{key}              one alarm
    POST   /api/v1/alarms/{key}/ack          {"user": "...", "comment": "..."}           (token)
    POST   /api/v1/alarms/{key}/shelve       {"minutes": 60, "user": "..."}              (token)
    DELETE /api/v1/alarms/{key}/shelve                                                   (token)
    GET    /api/v1/maintenance               windows not over yet
    POST   /api/v1/maintenance               {"subject": "A01", "minutes": 90, "reason": "..."}  (token)

Alarm keys contain a slash (`rack-power/A01`): it may be sent as is or encoded as `%2F`.

Anything that changes state needs `Authorization: Bearer <http.token>`: 401 without it, 403 with a wrong
one (compared in constant time). With no token configured, state-changing calls are refused (403, saying
so): an API on a shared host must not let any local user silence alarms.

The web console (dcim/app/console) adds its pages to the same application; its forms, under /console/, are
checked by login session and CSRF token instead. Off loopback the configuration requires HTTPS
(http.tls_cert_file, http.tls_key_file) and a token.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import json
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Protocol

import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dcim.app import api_writes
from dcim.app.config import HttpConfig
from dcim.core.metrics import REGISTRY, Registry
from dcim.rules.store import AlarmNotActive, AlarmNotFound

log = structlog.get_logger(__name__)

REQUESTS = REGISTRY.counter("dcim_http_requests_total", "HTTP API requests", ("route", "code"))

# Paths under it are the web console's forms (dcim/app/console), which do their own login check.
CONSOLE_PREFIX = "/console/"

HealthCheck = Callable[[], dict[str, Any] | Awaitable[dict[str, Any]]]
_NS_PER_MINUTE = 60 * 1_000_000_000


class AlarmStoreLike(Protocol):
    """What the API needs of rules.store.AlarmStore."""

    def active(self) -> list[Any]: ...
    async def history_async(self, limit: int = 100) -> list[Any]: ...
    async def get_async(self, key: str) -> Any: ...
    async def acknowledge_async(self, key: str, user: str, comment: str = "") -> Any: ...
    async def shelve_async(self, key: str, until_ns: int, user: str) -> Any: ...
    async def unshelve_async(self, key: str) -> Any: ...
    async def add_maintenance_async(self, subject: str, start_ns: int, end_ns: int, reason: str) -> Any: ...
    def maintenance(self, now_ns: int | None = None) -> list[Any]: ...


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AckBody(_Body):
    user: Annotated[str, Field(min_length=1, max_length=100)] = "api"
    comment: Annotated[str, Field(max_length=1000)] = ""


class ShelveBody(_Body):
    # Up to a week: a shelved alarm is a forgotten alarm.
    minutes: Annotated[float, Field(gt=0, le=7 * 24 * 60)]
    user: Annotated[str, Field(min_length=1, max_length=100)] = "api"


class MaintenanceBody(_Body):
    subject: Annotated[str, Field(min_length=1, max_length=64)]
    minutes: Annotated[float, Field(gt=0, le=31 * 24 * 60)]
    # Start in this many minutes (0: now).
    start_in_minutes: Annotated[float, Field(ge=0, le=365 * 24 * 60)] = 0
    reason: Annotated[str, Field(max_length=1000)] = ""


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, default=str))


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return _json({"error": message, **extra}, status)


class HttpApi:
    def __init__(
        self,
        config: HttpConfig,
        store: AlarmStoreLike,
        *,
        registry: Registry = REGISTRY,
        health: HealthCheck | None = None,
        now_ns: Callable[[], int] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.registry = registry
        self.health = health
        clock = getattr(store, "clock", None)
        self.now_ns: Callable[[], int] = now_ns or (clock.now_ns if clock is not None else time.time_ns)
        self._token = config.token.get_secret_value().encode() if config.token is not None else None
        self.port: int | None = None
        self.ready = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.app = self._app()

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024)
        r = app.router
        r.add_get("/healthz", self._healthz)
        r.add_get("/metrics", self._metrics)
        r.add_get("/api/v1/alarms", self._alarms)
        r.add_get("/api/v1/alarms/{key:.+}", self._alarm)
        r.add_post("/api/v1/alarms/{key:.+}/ack", self._ack)
        r.add_post("/api/v1/alarms/{key:.+}/shelve", self._shelve)
        r.add_delete("/api/v1/alarms/{key:.+}/shelve", self._unshelve)
        r.add_get("/api/v1/maintenance", self._maintenance)
        r.add_post("/api/v1/maintenance", self._add_maintenance)
        api_writes.register(app, self)  # POST /api/v1/devices/{device}/points/{point}: dcim/app/api_writes.py
        return app

    async def start(self) -> None:
        """Bind the listener now: a port that is taken is a start-up error (OSError), raised here before
        the daemon starts anything that runs for long."""
        runner = web.AppRunner(self.app, handle_signals=False, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.config.host, self.config.port, ssl_context=self._tls())
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        log.info("http api listening", host=self.config.host, port=self.port,
                 scheme="https" if self.config.tls_cert_file else "http",
                 writes="token" if self._token else "refused (no http.token)")
        self.ready.set()

    def _tls(self) -> ssl.SSLContext | None:
        """HTTPS when http.tls_cert_file is set (the configuration requires it off loopback). A file that
        cannot be read is an OSError (ssl.SSLError is one): a start-up error, like a taken port."""
        if self.config.tls_cert_file is None or self.config.tls_key_file is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.config.tls_cert_file, self.config.tls_key_file)
        return context

    async def serve(self) -> None:
        """Serve (on the listener `start` bound) until cancelled; the port is closed on the way out."""
        if self._runner is None:
            await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.close()

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        self.ready.clear()
        if runner is not None:
            await runner.cleanup()

    async def run(self) -> None:
        """Bind and serve until cancelled."""
        await self.serve()

    # -- plumbing -----------------------------------------------------------------------------
    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        route = request.match_info.route.resource.canonical if request.match_info.route.resource else "other"
        try:
            # The console's forms are checked by session and CSRF token (dcim/app/console/auth.py).
            if request.method not in ("GET", "HEAD", "OPTIONS") and not request.path.startswith(CONSOLE_PREFIX):
                refused = self._authorize(request)
                if refused is not None:
                    response: web.StreamResponse = refused
                    return response
            response = await handler(request)
        except web.HTTPException as err:
            response = _error(err.status, err.reason)
        except Exception:
            # A bug in a handler: one 500 with no details, the traceback in the log.
            log.exception("http api handler failed", path=request.path)
            response = _error(500, "internal error")
        REQUESTS.inc(route=route, code=str(response.status))
        return response

    def _authorize(self, request: web.Request) -> web.Response | None:
        if self._token is None:
            return _error(403, "state-changing calls are disabled: no http.token is configured")
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            response = _error(401, "a bearer token is required (Authorization: Bearer <token>)")
            response.headers["WWW-Authenticate"] = 'Bearer realm="dcim"'
            return response
        if not hmac.compare_digest(given.strip().encode(), self._token):
            return _error(403, "wrong token")
        return None

    async def _body(self, request: web.Request, model: type[_Body]) -> Any:
        raw = await request.read()
        try:
            data = json.loads(raw) if raw.strip() else {}
        except ValueError as err:
            raise _BadRequest(f"the body is not JSON: {err}") from err
        try:
            return model.model_validate(data)
        except ValidationError as err:
            problems = [f"{'.'.join(str(p) for p in e['loc']) or '(body)'}: {e['msg']}" for e in err.errors()]
            raise _BadRequest("; ".join(problems)) from err

    async def _operate(self, fn: Callable[[], Awaitable[Any]]) -> web.Response:
        try:
            record = await fn()
        except _BadRequest as err:
            return _error(400, str(err))
        except AlarmNotFound as err:
            return _error(404, f"no alarm {err.args[0]!r}" if err.args else "no such alarm")
        except AlarmNotActive as err:
            return _error(409, str(err))
        except ValueError as err:  # a value the store refuses
            return _error(400, str(err))
        return _json({"alarm": record.to_dict()})

    # -- handlers -----------------------------------------------------------------------------
    async def _healthz(self, request: web.Request) -> web.Response:
        if self.health is None:
            return _json({"ok": True})
        try:
            result = self.health()
            if inspect.isawaitable(result):
                result = await result
            report = dict(result)
        except Exception as err:
            # A health check that cannot even run is not healthy; still an answer, not a 500.
            log.exception("health check failed")
            return _json({"ok": False, "error": f"health check failed: {type(err).__name__}"}, 503)
        return _json(report, 200 if report.get("ok") else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.registry.render().encode(), headers={
            "Content-Type": "text/plain; version=0.0.4; charset=utf-8", "X-Content-Type-Options": "nosniff"})

    async def _alarms(self, request: web.Request) -> web.Response:
        if request.query.get("all", "") not in ("", "0", "false"):
            try:
                limit = int(request.query.get("limit", "100"))
            except ValueError:
                return _error(400, "limit must be an integer")
            if not 1 <= limit <= 10_000:
                return _error(400, "limit must be between 1 and 10000")
            # On the store's SQLite writer thread, after the writes queued before it.
            records = await self.store.history_async(limit)
        else:
            records = self.store.active()
        return _json({"alarms": [r.to_dict() for r in records]})

    async def _alarm(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        return await self._operate(lambda: self.store.get_async(key))

    async def _ack(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        try:
            body = await self._body(request, AckBody)
        except _BadRequest as err:
            return _error(400, str(err))
        log.info("alarm acknowledged over http", alarm=key, user=body.user)
        return await self._operate(lambda: self.store.acknowledge_async(key, body.user, body.comment))

    async def _shelve(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        try:
            body = await self._body(request, ShelveBody)
        except _BadRequest as err:
            return _error(400, str(err))
        until = self.now_ns() + int(body.minutes * _NS_PER_MINUTE)
        log.info("alarm shelved over http", alarm=key, user=body.user, minutes=body.minutes)
        return await self._operate(lambda: self.store.shelve_async(key, until, body.user))

    async def _unshelve(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        log.info("alarm unshelved over http", alarm=key)
        return await self._operate(lambda: self.store.unshelve_async(key))

    async def _maintenance(self, request: web.Request) -> web.Response:
        return _json({"windows": [w.to_dict() for w in self.store.maintenance()]})

    async def _add_maintenance(self, request: web.Request) -> web.Response:
        try:
            body = await self._body(request, MaintenanceBody)
        except _BadRequest as err:
            return _error(400, str(err))
        start = self.now_ns() + int(body.start_in_minutes * _NS_PER_MINUTE)
        end = start + int(body.minutes * _NS_PER_MINUTE)
        try:
            window = await self.store.add_maintenance_async(body.subject, start, end, body.reason)
        except ValueError as err:
            return _error(400, str(err))
        log.info("maintenance window added over http", subject=body.subject, minutes=body.minutes)
        return _json({"window": window.to_dict()}, 201)


class _BadRequest(Exception):
    pass
