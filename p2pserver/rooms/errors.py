"""Errors raised by the event core.

Every error carries the Matrix errcode a client would see, so the HTTP edge
can translate it without guessing. Peers see the message text.
"""

from __future__ import annotations


class MatrixError(Exception):
    """Base class: a failure with a Matrix errcode."""

    errcode: str = "M_UNKNOWN"

    def __init__(self, message: str, *, errcode: str | None = None) -> None:
        super().__init__(message)
        if errcode is not None:
            self.errcode = errcode

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class BadJSON(MatrixError):
    """The JSON is not valid (canonical) JSON for this context."""

    errcode = "M_BAD_JSON"


class UnsupportedRoomVersion(MatrixError):
    errcode = "M_UNSUPPORTED_ROOM_VERSION"


class EventFormatError(MatrixError):
    """A PDU does not have the shape its room version requires."""

    errcode = "M_BAD_JSON"


class EventTooLarge(EventFormatError):
    errcode = "M_TOO_LARGE"


class SignatureError(MatrixError):
    """A signature is missing or does not verify."""

    errcode = "M_FORBIDDEN"


class AuthError(MatrixError):
    """An event is not allowed by the authorization rules."""

    errcode = "M_FORBIDDEN"
