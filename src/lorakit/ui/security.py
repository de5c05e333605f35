"""What stands between the UI and the network, outermost first:

1. :class:`lorakit.serve.guard.Guard` (shared with ``lorakit serve``): the Host header must name this
   server (no DNS rebinding), a request with an Origin must come from this server's own pages (no
   cross-site POST), and the body has a size cap (large for uploads, small for everything else).
2. :class:`Gate`: browsers' ``Sec-Fetch-Site: cross-site`` is refused for anything but a read, and when
   the UI has a token (always when bound to a non-loopback address) every request — pages, images and
   the API alike — needs it: ``?token=`` once (then a cookie), or ``Authorization: Bearer``.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import secrets
from http.cookies import SimpleCookie
from urllib.parse import parse_qs

from ..serve.guard import Guard, GuardConfig

COOKIE = "lorakit_ui_token"
UPLOAD_PREFIX = "/api/upload/"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    return secrets.token_urlsafe(24)


def render(status: int, message: str, code: str) -> tuple[bytes, str]:
    return json.dumps({"error": message, "code": code}).encode(), "application/json"


class Gate:
    """Token and fetch-site checks (see the module docstring); ``token`` None: loopback without a token."""

    def __init__(self, app, token: str | None):
        self.app, self.token = app, token

    def _presented(self, scope, headers: dict) -> tuple[str | None, bool]:
        """(the token the request carries, whether it came in the query string)."""
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip(), False
        query = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
        if query:
            return query[0], True
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:  # noqa: BLE001  (a malformed cookie header is no token)
            return None, False
        return (cookie[COOKIE].value if COOKIE in cookie else None), False

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if headers.get("sec-fetch-site") == "cross-site" and scope["method"] not in SAFE_METHODS:
            return await _respond(send, 403, "cross-site requests may not change anything here.", "cross_site")
        if self.token is None:
            return await self.app(scope, receive, send)
        given, in_query = self._presented(scope, headers)
        if given is None or not hmac.compare_digest(given.encode(), self.token.encode()):
            return await _respond(send, 401, "this lorakit ui needs its token: open the URL `lorakit ui` printed "
                                             "(…/?token=…), or send 'Authorization: Bearer TOKEN'.", "token_required")
        if not in_query:
            return await self.app(scope, receive, send)

        async def with_cookie(message):  # remember the token, so links and images need no ?token=
            if message["type"] == "http.response.start":
                value = f"{COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict"
                message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", value.encode())]}
            await send(message)
        await self.app(scope, receive, with_cookie)


async def _respond(send, status: int, message: str, code: str) -> None:
    body, kind = render(status, message, code)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", kind.encode()), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class Protected:
    """The app behind a Gate and two Guards: uploads get ``upload_limit`` bytes, other requests ``body_limit``."""

    def __init__(self, app, *, host: str, token: str | None, allowed_hosts: list[str] | None = None,
                 body_limit: int = 1 << 20, upload_limit: int = 4 << 30):
        if not is_loopback(host) and not token:
            raise ValueError(f"binding {host} (not loopback) needs a token; pass --token or let lorakit ui make one.")
        gated = Gate(app, token)
        hosts = list(allowed_hosts or [])
        self.small = Guard(gated, GuardConfig(bind=host, allowed_hosts=hosts, max_body=body_limit), render)
        self.large = Guard(gated, GuardConfig(bind=host, allowed_hosts=hosts, max_body=upload_limit), render)
        self.app = app

    async def __call__(self, scope, receive, send):
        big = scope["type"] == "http" and scope.get("path", "").startswith(UPLOAD_PREFIX)
        await (self.large if big else self.small)(scope, receive, send)
