"""Routing client API requests to endpoint handlers, and what a handler gets.

Rules:
- Endpoints are registered once, without prefix, and answered under each of
  their prefixes: ``/_matrix/client/v3`` and the legacy ``/_matrix/client/r0``
  by default, ``/_matrix/client/v1`` for the endpoints the spec versions so.
  Unprefixed paths (``/.well-known/matrix/client``) are registered as such.
- The path is split on ``/`` *before* percent-decoding each segment, so an
  encoded ``/`` inside a room alias, event type or transaction ID stays part
  of its segment. One trailing ``/`` is ignored (``/pushrules/`` is
  ``/pushrules``).
- No route for the path: 404 M_UNRECOGNIZED. A route for the path but not
  for the method: 405 M_UNRECOGNIZED (spec: "Common error codes").
- A pattern segment ``{name}`` matches any one segment; literal segments win
  over placeholders when two routes match (``/devices/{id}`` vs a literal).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from p2pserver.clientapi.errors import ApiError
from p2pserver.clientapi.http import Request
from p2pserver.rooms.canonical_json import encode_json_loose, parse_json
from p2pserver.rooms.errors import BadJSON

if TYPE_CHECKING:
    from p2pserver.clientapi.server import ClientAPI

CLIENT_PREFIXES = ("/_matrix/client/v3", "/_matrix/client/r0")
V1_PREFIXES = ("/_matrix/client/v1",)


@dataclass(frozen=True, slots=True)
class Requester:
    """Who made an authenticated request."""

    user_id: str
    device_id: str


@dataclass
class Ctx:
    """Everything an endpoint handler is given."""

    api: ClientAPI
    request: Request
    params: dict[str, str]
    requester_or_none: Requester | None
    _body: Any = field(default=None, repr=False)
    _parsed: bool = field(default=False, repr=False)

    @property
    def requester(self) -> Requester:
        assert self.requester_or_none is not None, "route registered without auth"
        return self.requester_or_none

    @property
    def user_id(self) -> str:
        return self.requester.user_id

    def json(self, *, optional: bool = False) -> dict[str, Any]:
        """The request body as a JSON object.

        Not JSON at all: 400 M_NOT_JSON, as for strings that are no
        Unicode (lone surrogates, which ``\\ud800`` escapes decode to:
        nothing could store, sign or send them on). JSON but not an
        object: 400 M_BAD_JSON. An empty body is ``{}`` when ``optional``.
        """
        if not self._parsed:
            self._body = _parse_body(self.request.body, optional=optional)
            self._parsed = True
        return self._body

    def query(self, name: str) -> str | None:
        return self.request.query_value(name)

    def query_int(
        self, name: str, default: int, *, minimum: int = 0, maximum: int = 2**53 - 1
    ) -> int:
        value = self.query(name)
        if value is None or value == "":
            return default
        try:
            number = int(value)
        except ValueError:
            raise ApiError.of("M_INVALID_PARAM", f"{name} must be an integer") from None
        return max(minimum, min(maximum, number))

    def query_bool(self, name: str, default: bool = False) -> bool:
        value = self.query(name)
        if value is None:
            return default
        if value in ("true", "1"):
            return True
        if value in ("false", "0"):
            return False
        raise ApiError.of("M_INVALID_PARAM", f"{name} must be true or false")


def parse_decimal(text: str) -> int | None:
    """``text`` as a number if it is ASCII digits for at most SQLite's 2**63-1, else None.

    For the numbers in IDs and tokens we issue. ``str.isdigit`` alone is
    not enough: it takes digits ``int`` refuses (``"²"``) and any length.
    """
    if not (text.isascii() and text.isdigit()) or len(text) > 19:
        return None
    value = int(text)
    return value if value < 2**63 else None


def _parse_body(body: bytes, *, optional: bool) -> dict[str, Any]:
    if not body.strip():
        if optional:
            return {}
        raise ApiError.of("M_NOT_JSON", "the request body must be a JSON object")
    try:
        value = parse_json(body, strict=False)
        encode_json_loose(value)  # BadJSON for a lone surrogate
    except BadJSON as exc:
        raise ApiError.of("M_NOT_JSON", exc.message) from None
    if not isinstance(value, dict):
        raise ApiError.of("M_BAD_JSON", "the request body must be a JSON object")
    return value


Endpoint = Callable[[Ctx], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    pattern: tuple[str, ...]
    endpoint: Endpoint
    auth: bool

    def match(self, segments: tuple[str, ...]) -> dict[str, str] | None:
        params: dict[str, str] = {}
        for pattern, segment in zip(self.pattern, segments, strict=True):
            if pattern.startswith("{"):
                params[pattern[1:-1]] = segment
            elif pattern != segment:
                return None
        return params

    @property
    def literal_count(self) -> int:
        return sum(1 for p in self.pattern if not p.startswith("{"))


class Router:
    def __init__(self) -> None:
        self._routes: dict[int, list[Route]] = {}

    def add(
        self,
        method: str,
        path: str,
        endpoint: Endpoint,
        *,
        auth: bool = True,
        prefixes: tuple[str, ...] = CLIENT_PREFIXES,
    ) -> None:
        for prefix in prefixes or ("",):
            pattern = tuple(_split(prefix + path))
            routes = self._routes.setdefault(len(pattern), [])
            routes.append(Route(method, pattern, endpoint, auth))
            routes.sort(key=lambda r: -r.literal_count)

    def resolve(self, method: str, raw_path: str) -> tuple[Route, dict[str, str]]:
        try:
            segments = tuple(unquote(s, errors="strict") for s in _split(raw_path))
        except UnicodeDecodeError:
            raise ApiError.of("M_UNRECOGNIZED", "the path is not valid UTF-8") from None
        path_known = False
        for route in self._routes.get(len(segments), ()):
            params = route.match(segments)
            if params is None:
                continue
            if route.method == method or (method == "HEAD" and route.method == "GET"):
                return route, params
            path_known = True
        if path_known:
            raise ApiError(405, "M_UNRECOGNIZED", f"{method} is not allowed on this endpoint")
        raise ApiError(404, "M_UNRECOGNIZED", "unrecognized request")


def _split(path: str) -> list[str]:
    if path.endswith("/") and len(path) > 1:
        path = path[:-1]
    return path.split("/")[1:]


def json_bytes(value: Mapping[str, Any] | list[Any]) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
