"""Writes over the daemon's HTTP API: the route `dcim write` uses when a daemon runs.

    POST /api/v1/devices/{device}/points/{point}     (token)
         {"value": 450, "user": "alice", "dry_run": false, "confirm": false}

Every call goes through the daemon's write guard (rules.writes), so the HTTP API is no way around the
profile, the device's own range, armed, maintenance windows or the rate limit, and every call is in the
audit trail with origin `api:<user>` and the first 8 hex digits of the token's SHA-256 (which token was
used, never the token). A write that stops equipment (outlet off or cycle, a chiller or pump stop) needs
`"confirm": true`.

Answers (the body is the result in every case: outcome, reason, old, new, raw, address, seq):
200 verified or dry-run, 409 refused (nothing was sent), 502 failed or sent but not verified,
503 when this daemon has no write path (no devices polled), 400 for a malformed body.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Annotated, Any, Protocol

import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dcim.rules.writes import WriteGuard, WriteRequest

if TYPE_CHECKING:
    from dcim.app.config import HttpConfig


class WriteApi(Protocol):
    """What the route needs of the HTTP API (kept as a protocol: the API imports this module)."""

    @property
    def config(self) -> HttpConfig: ...

log = structlog.get_logger(__name__)

STATUS = {"verified": 200, "dry-run": 200, "refused": 409, "failed": 502, "unverified": 502}


class WriteBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: float | int | bool | str
    user: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[^\s:@]+$")] = "api"
    dry_run: bool = False
    confirm: bool = False


def register(app: web.Application, api: WriteApi) -> None:
    """Add the write route; the daemon sets `api.writes` to its WriteGuard."""

    async def write(request: web.Request) -> web.Response:
        guard: WriteGuard | None = getattr(api, "writes", None)
        if guard is None:
            return _json({"error": "this daemon has no write path (no devices are polled)"}, 503)
        try:
            raw = await request.read()
            body = WriteBody.model_validate(json.loads(raw) if raw.strip() else {})
        except ValueError as err:
            if isinstance(err, ValidationError):
                message = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(body)'}: {e['msg']}"
                                    for e in err.errors())
            else:
                message = f"the body is not JSON: {err}"
            return _json({"error": message}, 400)
        token = api.config.token.get_secret_value() if api.config.token is not None else ""
        fingerprint = hashlib.sha256(token.encode()).hexdigest()[:8]
        result = await guard.write(WriteRequest(
            request.match_info["device"], request.match_info["point"], body.value,
            origin=f"api:{body.user}@token:{fingerprint}", dry_run=body.dry_run, confirmed=body.confirm))
        return _json(result.to_dict(), STATUS.get(result.outcome, 500))

    app.router.add_post("/api/v1/devices/{device}/points/{point}", write)


def _json(data: Any, status: int) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, default=str))
