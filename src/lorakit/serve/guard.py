"""``Guard``: an ASGI middleware that keeps a local HTTP server for its own user (``lorakit serve``,
``lorakit ui``). Pure ASGI, no framework import.

    app = Guard(app, GuardConfig(bind="127.0.0.1", allowed_hosts=["myhost.lan"],
                                 allowed_origins=["http://localhost:3000"], max_body=1 << 20))

Every HTTP request (and WebSocket handshake) is checked, in this order:

* **Host** (DNS rebinding: a web page whose domain re-resolves to 127.0.0.1 sends its own name as
  Host). Allowed: the names in ``allowed_hosts`` (``"*"``: any), and, by bind address, loopback
  binds (127.x, ::1, localhost) → ``localhost``, ``127.0.0.1``, ``::1``; a wildcard bind (0.0.0.0,
  ::) → those, any IP literal (a rebinding attack needs a DNS name) and this machine's host name;
  any other address → itself. The port is not compared (as Django's ALLOWED_HOSTS).
* **Origin** (cross-site requests: any page can POST ``text/plain`` to localhost without a CORS
  preflight). A request carrying ``Origin`` must come from this server (the Host's name and port)
  or from one of ``allowed_origins`` (``"*"``: any; ``"null"`` must be listed to allow sandboxed
  pages). Allowed foreign origins get CORS headers and preflight (``OPTIONS``) answers.
* **Body size**: a ``Content-Length`` above ``max_body`` is refused before anything is read; a
  chunked body is counted as it arrives and refused when it passes the limit (the application
  then sees the client disconnect).

Refusals are 400 (Host), 403 (Origin) and 413 (body), answered by ``render(status, message,
code)`` (default: OpenAI's error shape ``{"error": {"message", "type", "param", "code"}}``).
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_BINDS = ("", "0.0.0.0", "::")
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


@dataclass
class GuardConfig:
    """What :class:`Guard` lets through."""

    bind: str = "127.0.0.1"
    """The address the server listens on; decides the Host names accepted by default."""
    allowed_hosts: list[str] = field(default_factory=list)
    """Extra Host names (a reverse proxy's or the machine's DNS name); ``"*"`` turns the check off."""
    allowed_origins: list[str] = field(default_factory=list)
    """Web origins (``scheme://host[:port]``) allowed to call across origins; ``"*"``: any."""
    max_body: int | None = 1 << 20
    """Largest request body in bytes (``None``: no limit)."""


def _split_host(host: str) -> tuple[str, str | None]:
    """``name[:port]`` / ``[v6][:port]`` / ``v6`` -> (lower-case name without trailing dot, port or None)."""
    host = host.strip().lower()
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        return name, rest[1:] if rest.startswith(":") else None
    if host.count(":") == 1:
        name, port = host.split(":")
        return name.rstrip("."), port
    return host.rstrip("."), None


def _hostname(host: str) -> str:
    return _split_host(host)[0]


def _ip(name: str):
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def _origin(value: str) -> tuple[str, str, int] | None:
    """``scheme://host[:port]`` -> (scheme, host, port); None when it is not such an origin."""
    try:
        parts = urlsplit(value.strip().lower())
        port = parts.port or DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname or port is None:
        return None
    return parts.scheme, parts.hostname.rstrip("."), port


def openai_error(status: int, message: str, code: str) -> tuple[bytes, str]:
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return json.dumps(body).encode(), "application/json"


class Guard:
    """The ASGI middleware (see the module docstring); ``config`` is a :class:`GuardConfig`."""

    def __init__(self, app, config: GuardConfig,
                 render: Callable[[int, str, str], tuple[bytes, str]] = openai_error):
        self.app, self.config, self.render = app, config, render
        self.any_host = "*" in config.allowed_hosts
        self.any_origin = "*" in config.allowed_origins
        self.origins = {o for o in (_origin(x) for x in config.allowed_origins if x not in ("*", "null")) if o}
        self.null_origin = "null" in config.allowed_origins
        bind = _hostname(config.bind) if config.bind not in WILDCARD_BINDS else config.bind
        self.wildcard = bind in WILDCARD_BINDS
        names = {_hostname(h) for h in config.allowed_hosts if h != "*"}
        bind_ip = _ip(bind)
        if self.wildcard or bind == "localhost" or (bind_ip is not None and bind_ip.is_loopback):
            names.update(LOOPBACK_NAMES)
        if self.wildcard:
            names.add(socket.gethostname().lower())
        names.add(bind)
        self.hosts = frozenset(names - {""})

    # -- the checks (usable on their own) ------------------------------------------------------------
    def host_allowed(self, host: str | None) -> bool:
        if self.any_host:
            return True
        if not host:
            return False
        name = _hostname(host)
        if name in self.hosts:
            return True
        ip = _ip(name)
        return ip is not None and (self.wildcard or ip.is_loopback and "127.0.0.1" in self.hosts)

    def origin_problem(self, origin: str | None, host: str | None) -> str | None:
        """Why a request from ``origin`` to this ``host`` is refused (None: allowed)."""
        if origin is None or self.any_origin or self.same_origin(origin, host):
            return None
        if origin.strip() == "null":
            return None if self.null_origin else "a page without an origin (sandboxed or file://) may not call it"
        parsed = _origin(origin)
        if parsed is None:
            return f"Origin {origin!r} is not a web origin"
        return None if parsed in self.origins else f"cross-origin requests from {origin} are refused"

    @staticmethod
    def same_origin(origin: str, host: str | None) -> bool:
        """The page is served by this server: same host name, and same port (a Host without port, as a
        reverse proxy sends it, matches the origin's default port)."""
        parsed = _origin(origin)
        if parsed is None or not host:
            return False
        name, port = _split_host(host)
        if port is None:
            return parsed[1] == name and parsed[2] == DEFAULT_PORTS.get(parsed[0])
        return parsed[1] == name and port.isdigit() and parsed[2] == int(port)

    def foreign_allowed(self, origin: str | None) -> bool:
        """A listed foreign origin (it gets CORS headers)."""
        if origin is None:
            return False
        return self.any_origin or (origin.strip() == "null" and self.null_origin) or _origin(origin) in self.origins

    # -- ASGI ------------------------------------------------------------------------------------------
    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host, origin = headers.get("host"), headers.get("origin")
        problem = None
        if not self.host_allowed(host):
            names = ", ".join(sorted(self.hosts)) or "none"
            problem = (400, f"Host {host!r} is not a name of this server (accepted: {names}); if you reach it "
                            "through another name, start it with --allowed-host NAME.", "host_not_allowed")
        else:
            why = self.origin_problem(origin, host)
            if why is not None:
                problem = (403, f"{why}; to let a web page on another origin use this server, start it with "
                                f"--allow-origin ORIGIN.", "origin_not_allowed")
        if problem is not None:
            if scope["type"] == "websocket":
                return await send({"type": "websocket.close", "code": 1008})
            return await self._respond(send, *problem)
        if scope["type"] == "websocket":
            return await self.app(scope, receive, send)
        cors = self.foreign_allowed(origin) and not self.same_origin(origin, host)
        if cors and scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            return await self._preflight(send, origin, headers.get("access-control-request-headers", ""))
        limit = self.config.max_body
        length = headers.get("content-length")
        if limit is not None and length is not None and (not length.isdigit() or int(length) > limit):
            return await self._respond(send, *self._too_large(length))
        await self._run(scope, receive, send, limit, origin if cors else None)

    async def _run(self, scope, receive, send, limit, cors_origin):
        state = {"read": 0, "started": False, "refused": False}

        async def counted_receive():
            message = await receive()
            if message["type"] == "http.request" and limit is not None and not state["refused"]:
                state["read"] += len(message.get("body", b""))
                if state["read"] > limit:
                    state["refused"] = True
                    if not state["started"]:
                        state["started"] = True
                        await self._respond(send, *self._too_large(None))
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            if state["refused"]:
                return  # the 413 answered the request; the application's reply is dropped
            if message["type"] == "http.response.start":
                state["started"] = True
                if cors_origin is not None:
                    message = {**message, "headers": [*message.get("headers", []),
                                                      (b"access-control-allow-origin", cors_origin.encode("latin-1")),
                                                      (b"vary", b"Origin")]}
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not state["refused"]:
                raise  # the application's reaction to the cut body (ClientDisconnect) is not an error

    def _too_large(self, length: str | None) -> tuple[int, str, str]:
        size = f" ({length} bytes)" if length is not None and length.isdigit() else ""
        return (413, f"the request body{size} is larger than this server's limit of {self.config.max_body} bytes; "
                     "send a smaller request (or start the server with a larger --max-body-bytes).",
                "request_too_large")

    async def _respond(self, send, status: int, message: str, code: str) -> None:
        body, content_type = self.render(status, message, code)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def _preflight(self, send, origin: str, requested_headers: str) -> None:
        headers = [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin"),
                   (b"access-control-allow-methods", b"GET, POST, OPTIONS"), (b"access-control-max-age", b"600"),
                   (b"content-length", b"0")]
        if requested_headers:
            headers.append((b"access-control-allow-headers", requested_headers.encode("latin-1")))
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

