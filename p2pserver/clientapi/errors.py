"""Client API errors: the spec's JSON ``{errcode, error}`` and HTTP status.

Every failure a client can cause is a :class:`~p2pserver.rooms.errors.MatrixError`
(from the event core, the engine or this package) whose errcode maps to an
HTTP status by :data:`STATUS_FOR_ERRCODE` (spec: Client-Server API, "Standard
error response" and each endpoint's documented status). :class:`ApiError`
names its status explicitly when one errcode has several (M_UNRECOGNIZED is
404 for an unknown endpoint and 405 for a known one with the wrong method).

Any other exception is a bug of ours: the HTTP edge logs it and answers 500
M_UNKNOWN, which must never happen for a client's mistake.

:class:`UserInteractiveAuth` is not a failure: it is the 401 answer of
User-Interactive Authentication, whose body (flows, params, session,
completed, and an errcode if a stage failed) the client acts on.
"""

from __future__ import annotations

from typing import Any

from p2pserver.rooms.errors import MatrixError

__all__ = [
    "STATUS_FOR_ERRCODE",
    "ApiError",
    "UserInteractiveAuth",
    "error_body",
    "status_for",
]

STATUS_FOR_ERRCODE: dict[str, int] = {
    "M_FORBIDDEN": 403,
    "M_UNKNOWN_TOKEN": 401,
    "M_MISSING_TOKEN": 401,
    "M_USER_LOCKED": 401,
    "M_BAD_JSON": 400,
    "M_NOT_JSON": 400,
    "M_NOT_FOUND": 404,
    "M_LIMIT_EXCEEDED": 429,
    "M_UNRECOGNIZED": 404,
    "M_UNKNOWN": 400,
    "M_UNAUTHORIZED": 401,
    "M_USER_DEACTIVATED": 403,
    "M_USER_IN_USE": 400,
    "M_INVALID_USERNAME": 400,
    "M_ROOM_IN_USE": 400,
    "M_INVALID_ROOM_STATE": 400,
    "M_UNSUPPORTED_ROOM_VERSION": 400,
    "M_INCOMPATIBLE_ROOM_VERSION": 400,
    "M_BAD_STATE": 400,
    "M_GUEST_ACCESS_FORBIDDEN": 403,
    "M_MISSING_PARAM": 400,
    "M_INVALID_PARAM": 400,
    "M_TOO_LARGE": 413,
    "M_EXCLUSIVE": 400,
    "M_WEAK_PASSWORD": 400,
    "M_UNABLE_TO_AUTHORISE_JOIN": 400,
    "M_UNABLE_TO_GRANT_JOIN": 502,
    "M_SERVER_NOT_TRUSTED": 403,
    "M_THREEPID_DENIED": 403,
    "M_THREEPID_NOT_FOUND": 400,
}


def status_for(error: MatrixError) -> int:
    if isinstance(error, ApiError):
        return error.status
    return STATUS_FOR_ERRCODE.get(error.errcode, 400)


class ApiError(MatrixError):
    """A client-visible error with an explicit HTTP status and extra body keys."""

    def __init__(self, status: int, errcode: str, message: str, **extra: Any) -> None:
        super().__init__(message, errcode=errcode)
        self.status = status
        self.extra = extra

    @classmethod
    def of(cls, errcode: str, message: str, **extra: Any) -> ApiError:
        """An error with the errcode's usual status."""
        return cls(STATUS_FOR_ERRCODE.get(errcode, 400), errcode, message, **extra)


def error_body(error: MatrixError) -> dict[str, Any]:
    body: dict[str, Any] = {"errcode": error.errcode, "error": error.message}
    if isinstance(error, ApiError):
        body.update(error.extra)
    return body


class UserInteractiveAuth(Exception):
    """Answer 401 with a User-Interactive Authentication body."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(body.get("error", "authentication required"))
        self.body = body
