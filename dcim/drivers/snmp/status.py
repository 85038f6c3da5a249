"""An agent's error-status (RFC 3416) as the driver's own error, the same for every request path."""

from __future__ import annotations

from collections.abc import Sequence

from dcim.drivers.errors import AuthError, BadResponse, DriverError

ERROR_STATUS = ("noError", "tooBig", "noSuchName", "badValue", "readOnly", "genErr", "noAccess", "wrongType",
                "wrongLength", "wrongEncoding", "wrongValue", "noCreation", "inconsistentValue",
                "resourceUnavailable", "commitFailed", "undoFailed", "authorizationError", "notWritable",
                "inconsistentName")
# Refusals that no retry will change: the credentials or the view do not allow the request.
ACCESS_STATUSES = {"noAccess", "authorizationError", "notWritable", "readOnly"}


class StatusError(BadResponse):
    """The agent answered with an error-status; `index` is the 1-based position of the var-bind at fault."""

    def __init__(self, message: str, status: str, index: int) -> None:
        super().__init__(message)
        self.status = status
        self.index = index


def status_name(status: int) -> str:
    return ERROR_STATUS[status] if 0 <= status < len(ERROR_STATUS) else f"error-status {status}"


def status_error(where: str, status: str, index: int, asked: Sequence[Sequence[int]]) -> DriverError:
    """The error for an error-status `status` at var-bind `index` of a request for the OIDs `asked`."""
    oid = " at " + ".".join(map(str, asked[index - 1])) if 0 < index <= len(asked) else ""
    if status in ACCESS_STATUSES:
        return AuthError(f"{where}: refused: {status}{oid}")
    return StatusError(f"{where}: error-status {status}{oid}", status, index)
