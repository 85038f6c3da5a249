"""The console's routes, on the daemon's HTTP server (dcim/app/http_api.py):

    GET  /                         the hall: racks by room and row, coloured by alarms and utilization
    GET  /racks/{id}               a rack: its metrics, feeds (PDU scalars, phases, outlets), CDU (coolant)
    GET  /devices                  every device: online, degraded, offline; last good poll; why
    GET  /alarms                   active alarms (acknowledge, shelve, maintenance); maintenance windows
    GET  /events                   the event log: alarm history and the audit trail, newest first
    GET  /events/stream            server-sent events: `hall` (racks that changed), `alarms`, `devices`
    GET  /login                    the login form
    GET  /static/{file}            console.css, console.js (package data: they ship in the wheel)
    POST /console/login | /console/logout
    POST /console/alarms/{key}/ack | shelve | unshelve, /console/maintenance    (session + CSRF token)

Who may see and do what: dcim/app/console/auth.py. The HTTP API's bearer-token check leaves /console/
alone (http_api.CONSOLE_PREFIX): these forms are checked here, by session and CSRF token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Awaitable, Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import structlog
from aiohttp import web

from dcim.app.config import Config, HttpConfig, is_loopback
from dcim.app.console import pages
from dcim.app.console.actions import Actions, Done
from dcim.app.console.auth import Session, Sessions, csrf_ok, same_origin
from dcim.app.console.live import CoordinatorLike, DeviceView, LiveState, RackView, devices, judge
from dcim.core.audit import AuditLog
from dcim.core.samples import Sample
from dcim.core.topology import Topology
from dcim.rules.store import AlarmNotActive, AlarmNotFound, AlarmRecord, AlarmStore

log = structlog.get_logger(__name__)

STATIC = {"console.css": "text/css", "console.js": "text/javascript"}
# How often the live task looks again when nothing woke it (alarm timers, suppressions, stale pollers),
# and the least time between two looks (a burst of batches is one update).
IDLE_SECONDS = 1.0
COALESCE_SECONDS = 0.2
KEEPALIVE_SECONDS = 15.0
MAX_STREAMS = 100  # open event streams (browser tabs) at once
EVENTS_LIMIT = 300
AUDIT_TAIL_BYTES = 512 * 1024
HEADERS = {
    # Everything comes from this server; no inline script, no framing.
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class RulesLike(Protocol):
    @property
    def store(self) -> AlarmStore: ...


class DaemonLike(Protocol):
    """What the console reads of the daemon (dcim/app/daemon.py); attributes, since a reload swaps them."""

    @property
    def config(self) -> Config: ...
    @property
    def topology(self) -> Topology: ...
    @property
    def coordinators(self) -> Mapping[str, CoordinatorLike]: ...
    @property
    def rules(self) -> RulesLike | None: ...
    @property
    def audit(self) -> AuditLog: ...


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Console:
    def __init__(self, daemon: DaemonLike, config: HttpConfig) -> None:
        self.daemon = daemon
        token = config.token.get_secret_value() if config.token is not None else None
        self.sessions = Sessions(token, config.session_ttl, secure=config.tls_cert_file is not None,
                                 open_views=is_loopback(config.host))
        self.live = LiveState()  # the daemon adds it to its pipeline
        self._wake = asyncio.Event()
        self.live.on_change.append(self._wake.set)
        self._subscribers: set[asyncio.Queue[str | None]] = set()
        self._last: dict[str, Any] = {}
        self._task: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._static = {name: (resources.files("dcim.app.console") / "static" / name).read_bytes()
                        for name in STATIC}

    @property
    def store(self) -> AlarmStore:
        rules = self.daemon.rules
        assert rules is not None, "the daemon serves HTTP only with the rule engine"
        return rules.store

    def register(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/", self._page(self._hall))
        r.add_get("/racks/{rack}", self._page(self._rack))
        r.add_get("/devices", self._page(self._devices))
        r.add_get("/alarms", self._page(self._alarms))
        r.add_get("/events", self._page(self._events))
        r.add_get("/events/stream", self._stream)
        r.add_get("/login", self._login_form)
        r.add_get("/static/{name}", self._static_file)
        r.add_post("/console/login", self._login)
        r.add_post("/console/logout", self._logout)
        r.add_post("/console/alarms/{key:.+}/{action:ack|shelve|unshelve}", self._alarm_action)
        r.add_post("/console/maintenance", self._maintenance)
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)

    # ---- lifecycle: the live task runs while the server does --------------------------------------------

    async def _on_startup(self, app: web.Application) -> None:
        self._closing.clear()
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="http-api:console-live")

    async def _on_shutdown(self, app: web.Application) -> None:
        # Before aiohttp waits for open requests: the event streams end now, not at its shutdown timeout.
        self._closing.set()
        for queue in list(self._subscribers):
            queue.put_nowait(None)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ---- pages ------------------------------------------------------------------------------------------

    def _page(self, render: Callable[[web.Request, Session | None], Awaitable[tuple[str, str, str]]]) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            session = self.sessions.get(request)
            if session is None and not self.sessions.open_views:
                return _redirect(f"/login?next={quote(request.path_qs, safe='')}")
            title, body, live = await render(request, session)
            flash = error = ""
            if session is not None:
                flash, error, session.flash, session.error = session.flash, session.error, "", ""
            return self._html(pages.page(title, body, site=self.daemon.topology.site, active=_active(request.path),
                                         user=session.user if session else None,
                                         can_login=self.sessions.can_login, live=live, flash=flash, error=error,
                                         here=request.path_qs, csrf=session.csrf if session else ""))
        return handler

    def _html(self, text: str, status: int = 200) -> web.Response:
        return web.Response(text=text, status=status, content_type="text/html", charset="utf-8", headers=HEADERS)

    def _active_alarms(self) -> list[AlarmRecord]:
        return self.store.active()

    def _racks(self) -> list[RackView]:
        return judge(self.daemon.topology, self.live, self._active_alarms())

    def _device_views(self) -> list[DeviceView]:
        return devices(self.daemon.config.devices, self.daemon.coordinators, self.live, self.daemon.topology)

    async def _hall(self, request: web.Request, session: Session | None) -> tuple[str, str, str]:
        return "Hall", pages.hall(self._racks()), "hall"

    async def _rack(self, request: web.Request, session: Session | None) -> tuple[str, str, str]:
        rack_id = request.match_info["rack"]
        topology = self.daemon.topology
        place = topology.racks.get(rack_id)
        if place is None:
            raise web.HTTPNotFound(reason="no such rack")
        [view] = [r for r in self._racks() if r.id == rack_id]
        metrics = self._samples(rack_id, "rack")
        sections: list[tuple[str, str, list[Sample]]] = []
        for side in ("a", "b"):
            feed = getattr(place.rack.feeds, side)
            if feed is not None:
                sections.append((f"Feed {side.upper()}", feed.pdu, self._samples(feed.pdu)))
        if place.rack.cdu:
            sections.append(("Coolant (CDU)", place.rack.cdu, self._samples(place.rack.cdu)))
        listed = {device for _, device, _ in sections}
        for device in self.daemon.config.devices:
            if device.id not in listed and dict(topology.tags(device.id)).get("rack") == rack_id:
                sections.append((str(device.kind).upper(), device.id, self._samples(device.id)))
        subjects = {rack_id, *listed}
        alarms = [a for a in self._active_alarms() if a.subject in subjects]
        coolant = self._samples(place.rack.cdu) if place.rack.cdu else None
        body = pages.rack_page(view, metrics, sections, alarms, self._device_views(), coolant)
        return f"Rack {rack_id}", body, f"rack:{rack_id}"

    def _samples(self, device: str, measurement: str | None = None) -> list[Sample]:
        live = self.live.devices.get(device)
        if live is None:
            return []
        return live.group_samples(measurement)

    async def _devices(self, request: web.Request, session: Session | None) -> tuple[str, str, str]:
        return "Devices", pages.devices_page(self._device_views()), "devices"

    async def _alarms(self, request: web.Request, session: Session | None) -> tuple[str, str, str]:
        body = pages.alarms_page(self._active_alarms(), self.store.maintenance(),
                                 csrf=session.csrf if session else None, can_login=self.sessions.can_login)
        return "Alarms", body, "alarms"

    async def _events(self, request: web.Request, session: Session | None) -> tuple[str, str, str]:
        history = await self.store.history_async(EVENTS_LIMIT)
        audit = await asyncio.to_thread(_audit_tail, self.daemon.audit.path, EVENTS_LIMIT)
        events = [_history_event(r) for r in history] + [_audit_event(r) for r in audit]
        events.sort(key=lambda e: -int(e["ts_ns"]))
        return "Events", pages.events_page(events[:EVENTS_LIMIT]), "events"

    async def _static_file(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in STATIC:
            raise web.HTTPNotFound()
        return web.Response(body=self._static[name], content_type=STATIC[name], charset="utf-8",
                            headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"})

    # ---- login ------------------------------------------------------------------------------------------

    async def _login_form(self, request: web.Request) -> web.StreamResponse:
        next_url = _local(request.query.get("next", "/"))
        return self._login_html(next_url)

    def _login_html(self, next_url: str, error: str = "", status: int = 200) -> web.Response:
        body = pages.login_page(next_url, error=error, can_login=self.sessions.can_login)
        return self._html(pages.page("Log in", body, site=self.daemon.topology.site, active="/login", user=None,
                                     can_login=self.sessions.can_login), status)

    async def _login(self, request: web.Request) -> web.StreamResponse:
        if not same_origin(request):
            return self._html("cross-site request refused", 403)
        form = await request.post()
        user = str(form.get("user", "")).strip()
        next_url = _local(str(form.get("next", "/")))
        if not self.sessions.can_login:
            return self._login_html(next_url, status=403)
        if not user or len(user) > 100 or any(c.isspace() or c in ":@" for c in user):
            return self._login_html(next_url, "a name without spaces, ':' or '@' is needed", 400)
        if not self.sessions.check_password(str(form.get("password", ""))):
            log.warning("console login refused", user=user, peer=request.remote)
            return self._login_html(next_url, "wrong password", 403)
        sid, _ = self.sessions.create(user)
        log.info("console login", user=user, peer=request.remote)
        response = _redirect(next_url)
        self.sessions.set_cookie(response, sid)
        return response

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        session = self.sessions.get(request)
        form = await request.post()
        if session is not None and same_origin(request) and csrf_ok(session, str(form.get("csrf", ""))):
            self.sessions.drop(request)
        response = _redirect("/")
        self.sessions.clear_cookie(response)
        return response

    # ---- actions ----------------------------------------------------------------------------------------

    async def _acting(self, request: web.Request) -> tuple[Session, Mapping[str, Any]] | web.Response:
        session = self.sessions.get(request)
        if session is None:
            return self._html("log in first", 401)
        form = await request.post()
        if not same_origin(request) or not csrf_ok(session, str(form.get("csrf", ""))):
            log.warning("console action refused: bad CSRF token or origin", user=session.user, path=request.path)
            return self._html("request refused (stale form or another site): reload the page", 403)
        return session, form

    def _actions(self) -> Actions:
        return Actions(self.store, self.daemon.audit)

    async def _alarm_action(self, request: web.Request) -> web.StreamResponse:
        checked = await self._acting(request)
        if isinstance(checked, web.Response):
            return checked
        session, form = checked
        key, action = request.match_info["key"], request.match_info["action"]
        actions = self._actions()

        async def run() -> Done:
            if action == "ack":
                return await actions.acknowledge(key, session.user, str(form.get("comment", ""))[:1000])
            if action == "shelve":
                return await actions.shelve(key, _minutes(form), session.user)
            return await actions.unshelve(key, session.user)

        return await self._outcome(session, run, f"alarm {action} from the console", key)

    async def _maintenance(self, request: web.Request) -> web.StreamResponse:
        checked = await self._acting(request)
        if isinstance(checked, web.Response):
            return checked
        session, form = checked
        subject = str(form.get("subject", "")).strip()

        async def run() -> Done:
            if not subject or len(subject) > 64:
                raise ValueError("a rack or device id is needed")
            return await self._actions().maintenance(subject, _minutes(form), str(form.get("reason", ""))[:1000],
                                                     session.user)

        return await self._outcome(session, run, "maintenance window from the console", subject)

    async def _outcome(self, session: Session, run: Callable[[], Awaitable[Done]], what: str,
                       subject: str) -> web.StreamResponse:
        try:
            done = await run()
        except AlarmNotFound:
            session.error = f"no alarm {subject}"
        except (AlarmNotActive, ValueError) as err:
            session.error = str(err)
        else:
            if done.audit_error:
                session.error = f"{done.message}, but the audit trail could not be written: {done.audit_error}"
            else:
                session.flash = f"{done.message} (audit #{done.audit_seq})"
            log.info(what, subject=subject, user=session.user, audit=done.audit_seq)
        self._wake.set()
        return _redirect("/alarms")

    # ---- live updates -----------------------------------------------------------------------------------

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        session = self.sessions.get(request)
        if session is None and not self.sessions.open_views:
            return self._html("log in first", 401)
        if len(self._subscribers) >= MAX_STREAMS:
            return self._html("too many open consoles", 503)
        response = web.StreamResponse(headers={**HEADERS, "Content-Type": "text/event-stream",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=100)
        self._subscribers.add(queue)
        try:
            # The whole picture first: the page may be older than what changed since it was rendered.
            await response.write(self._first().encode())
            self._wake.set()
            while not self._closing.is_set():
                # A comment line now and then: a browser that went away is noticed (the write fails) even
                # in a quiet hall, and proxies keep the stream open.
                try:
                    async with asyncio.timeout(KEEPALIVE_SECONDS):
                        message = await queue.get()
                except TimeoutError:
                    message = ": keepalive\n\n"
                if message is None:
                    break
                await response.write(message.encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._subscribers.discard(queue)
        return response

    def _first(self) -> str:
        racks = [r.to_dict() for r in self._racks()]
        statuses = [[d.id, d.status, d.reason] for d in self._device_views()]
        return ("retry: 2000\n" + _event("hall", {"racks": racks, "full": True}) + _event("alarms", self._counts())
                + _event("devices", {"devices": statuses}))

    def _counts(self) -> dict[str, Any]:
        active = self._active_alarms()
        return {"active": len(active), "critical": sum(1 for a in active if str(a.severity) == "critical"),
                "signature": [[a.key, str(a.severity), a.acknowledged, a.shelved_until_ns, a.suppressed]
                              for a in active]}

    async def _watch(self) -> None:
        """Compare what the pages show with what is true now; tell the subscribers what changed."""
        while not self._closing.is_set():
            # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a cancellation that arrives as the
            # event is set, and the task would never end (the server's shutdown waits for it).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(IDLE_SECONDS):
                    await self._wake.wait()
            self._wake.clear()
            if self._subscribers:
                try:
                    self._publish()
                except Exception:
                    # One bad round must not end live updates for good; the next one tries again.
                    log.exception("console live update failed")
            await asyncio.sleep(COALESCE_SECONDS)

    def _publish(self) -> None:
        messages = []
        racks = {r.id: r.to_dict() for r in self._racks()}
        before = self._last.get("racks", {})
        changed = [r for rack_id, r in racks.items() if before.get(rack_id) != r]
        if changed:
            messages.append(_event("hall", {"racks": changed, "full": False}))
        counts = self._counts()
        if counts != self._last.get("alarms"):
            messages.append(_event("alarms", counts))
        statuses = [[d.id, d.status, d.reason] for d in self._device_views()]
        if statuses != self._last.get("devices"):
            messages.append(_event("devices", {"devices": statuses}))
        self._last = {"racks": racks, "alarms": counts, "devices": statuses}
        for message in messages:
            for queue in list(self._subscribers):
                try:
                    queue.put_nowait(message)
                except asyncio.QueueFull:
                    # A browser that does not read: its stream ends; it reconnects and gets the whole picture.
                    self._subscribers.discard(queue)
                    while not queue.empty():
                        queue.get_nowait()
                    queue.put_nowait(None)


def _event(name: str, data: Any) -> str:
    return f"event: {name}\ndata: {json.dumps(data, default=str, separators=(',', ':'))}\n\n"


def _redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location, **HEADERS})


def _local(url: str) -> str:
    """Only a path on this server (no open redirect to another site)."""
    if not url.startswith("/") or url.startswith("//") or "\\" in url:
        return "/"
    return url


def _active(path: str) -> str:
    for href, _ in reversed(pages.NAV):
        if href != "/" and path.startswith(href):
            return href
    return "/" if path == "/" or path.startswith("/racks") else ""


def _minutes(form: Mapping[str, Any]) -> float:
    try:
        return float(str(form.get("minutes", "")))
    except ValueError:
        raise ValueError("minutes must be a number") from None


def _history_event(record: AlarmRecord) -> dict[str, Any]:
    return {"ts_ns": record.updated_ns, "source": "alarm", "what": f"{record.severity} {record.state}",
            "subject": record.subject, "detail": f"{record.key}: {record.message}",
            "by": f"ack {record.ack_by}" if record.acknowledged else ""}


def _audit_event(record: Mapping[str, Any]) -> dict[str, Any]:
    value = record.get("value")
    reason = record.get("reason") or ""
    detail = f"{value}" + (f" ({reason})" if reason else "")
    return {"ts_ns": int(record.get("ts_ns") or 0), "source": "audit",
            "what": f"{record.get('point', '')} {record.get('outcome', '')}", "subject": record.get("device", ""),
            "detail": detail, "by": f"{record.get('origin', '')} #{record.get('seq', '')}"}


def _audit_tail(path: Path, limit: int) -> list[dict[str, Any]]:
    """The last `limit` readable records of the audit trail, reading only its end (it only grows)."""
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - AUDIT_TAIL_BYTES))
            lines = fh.read().splitlines()
            if size > AUDIT_TAIL_BYTES:
                lines = lines[1:]  # cut mid-line
    except FileNotFoundError:
        return []
    out = []
    for line in lines[-limit:]:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out
