"""Console logins: the password is the daemon's `http.token` (the API's bearer token), the session a random
id in a cookie (HttpOnly, SameSite=Strict, Secure over HTTPS), kept in memory only: a restart logs everyone
out, which is the safe way round.

Who may do what:
- bound to a loopback address: anyone on this machine may look; acting on alarms needs a login (as the
  API needs the token: an API on a shared host must not let any local user silence alarms);
- bound elsewhere (the configuration then requires HTTPS and a token): every page needs a login.
No token configured: nobody can log in, and the console is read-only.

Every state-changing form carries the session's CSRF token (checked in constant time), and a POST whose
Origin header names another site is refused: SameSite=Strict already keeps the cookie off cross-site
requests, these two hold even in a browser that ignores it.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass

from aiohttp import web

COOKIE = "dcim_session"
MAX_SESSIONS = 1000  # in memory: the oldest go first past this


@dataclass(slots=True)
class Session:
    user: str
    csrf: str
    expires: float  # monotonic
    # What the next page shows once (the outcome of the last action): set by a POST, shown after its redirect.
    flash: str = ""
    error: str = ""


class Sessions:
    def __init__(self, token: str | None, ttl_seconds: float, *, secure: bool, open_views: bool) -> None:
        self._token = token.encode() if token else None
        self.ttl = ttl_seconds
        self.secure = secure
        # Whether pages may be seen without a login (a loopback bind).
        self.open_views = open_views
        self._sessions: dict[str, Session] = {}

    @property
    def can_login(self) -> bool:
        return self._token is not None

    def check_password(self, given: str) -> bool:
        if self._token is None:
            return False
        return hmac.compare_digest(given.encode(), self._token)

    def create(self, user: str) -> tuple[str, Session]:
        self._expire()
        while len(self._sessions) >= MAX_SESSIONS:
            self._sessions.pop(next(iter(self._sessions)))
        sid = secrets.token_urlsafe(32)
        session = Session(user, secrets.token_urlsafe(32), time.monotonic() + self.ttl)
        self._sessions[sid] = session
        return sid, session

    def get(self, request: web.Request) -> Session | None:
        sid = request.cookies.get(COOKIE)
        if not sid:
            return None
        session = self._sessions.get(sid)
        if session is None:
            return None
        if session.expires <= time.monotonic():
            self._sessions.pop(sid, None)
            return None
        return session

    def drop(self, request: web.Request) -> None:
        sid = request.cookies.get(COOKIE)
        if sid:
            self._sessions.pop(sid, None)

    def set_cookie(self, response: web.StreamResponse, sid: str) -> None:
        response.set_cookie(COOKIE, sid, httponly=True, samesite="Strict", secure=self.secure, path="/",
                            max_age=int(self.ttl))

    def clear_cookie(self, response: web.StreamResponse) -> None:
        response.del_cookie(COOKIE, path="/")

    def _expire(self) -> None:
        now = time.monotonic()
        for sid in [s for s, session in self._sessions.items() if session.expires <= now]:
            del self._sessions[sid]


def same_origin(request: web.Request) -> bool:
    """False when the browser says the request comes from another site (Origin, else Referer)."""
    origin = request.headers.get("Origin") or request.headers.get("Referer")
    if not origin or origin == "null":
        # No header: not a browser's cross-site form post (they send Origin on POST); the CSRF token decides.
        return origin is None
    scheme_host = origin.split("://", 1)[-1].split("/", 1)[0]
    return scheme_host == request.host


def csrf_ok(session: Session, given: str) -> bool:
    return bool(given) and hmac.compare_digest(given.encode(), session.csrf.encode())
