"""Who may call the API: the ``Host`` and ``Origin`` checks and the API key.

A server on loopback is still reachable from every web page the user opens: a page can post
a form to ``http://127.0.0.1:8000/v1/face/enroll`` (cross-site request forgery), and a page
whose domain is made to resolve to 127.0.0.1 becomes same-origin with the server (DNS
rebinding) and can read its answers too. Two checks stop both, before the request is read:

- ``Host`` must be one of the names the server answers to (``allowed_hosts``; by default the
  loopback names when bound to loopback): a rebound page sends its own domain;
- a request that is not ``GET``/``HEAD``/``OPTIONS`` and carries an ``Origin`` (every browser
  sends one on a cross-origin ``POST`` or ``DELETE``) must come from the server's own origin.
  Programs that send no ``Origin`` (curl, SDKs) are not browsers and cannot be forged.

With a key (``api_key_file`` or ``$SIGHTKIT_API_KEY``), enrol and delete need it in header
``X-API-Key``, and with ``protect_reads`` (the default) every ``/v1`` endpoint does. A browser
cannot add that header to a cross-origin request without a CORS preflight, which this server
never grants. Keys are compared in constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from starlette.types import ASGIApp, Receive, Scope, Send

from sightkit.serve.config import ServeConfig, is_loopback
from sightkit.serve.errors import ServeError

#: Methods that change nothing, so that a forged one does no harm (the browser keeps the answer).
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: The names of this machine that a browser may put in ``Host``.
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})

# FastAPI reads the dependencies' annotations from this module's globals (they are strings under
# ``from __future__ import annotations``), so what they name must live here.
key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="the server's key, when it has one")


def allowed_hosts(config: ServeConfig) -> frozenset[str] | None:
    """The ``Host`` names the server answers to (``None``: any): ``allowed_hosts``, with the
    loopback names when bound to loopback; without ``allowed_hosts``, only those on loopback."""
    given = {name.strip().lower().strip("[]") for name in config.allowed_hosts.split(",") if name.strip()}
    if is_loopback(config.host):
        return frozenset(given | LOOPBACK_NAMES | {config.host.lower().strip("[]")})
    return frozenset(given) if given else None


def host_name(host: str) -> str:
    """The name of a ``Host`` header without its port: ``[::1]:8000`` -> ``::1``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _refuse(code: str, message: str) -> JSONResponse:
    return JSONResponse({"detail": message, "error": code}, status_code=403)


class Guard:
    """ASGI middleware: refuse (403, JSON) a ``Host`` outside ``hosts`` and an unsafe request from
    another origin (module docstring); before the body is read."""

    def __init__(self, app: ASGIApp, hosts: frozenset[str] | None) -> None:
        self.app, self.hosts = app, hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self.refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope) -> JSONResponse | None:
        headers = {key.decode("latin-1"): value.decode("latin-1") for key, value in scope.get("headers", ())}
        host = headers.get("host", "")
        if self.hosts is not None and host_name(host) not in self.hosts:
            return _refuse(
                "forbidden_host",
                f"Host {host!r} is not a name this server answers to ({', '.join(sorted(self.hosts))}); a page on "
                "another site may be reaching it through DNS rebinding (add the name to allowed_hosts if it is yours)",
            )
        origin = headers.get("origin")
        if scope.get("method", "GET") not in SAFE_METHODS and origin is not None:
            own = f"{scope.get('scheme', 'http')}://{host.strip().lower()}"
            if origin.strip().lower() != own:
                return _refuse(
                    "cross_origin",
                    f"a {scope.get('method')} from origin {origin!r} is refused: only this server's own page "
                    f"({own}) may change data (cross-site request forgery)",
                )
        return None


def key_dependency(api_key: str, needed: bool) -> Callable[..., Awaitable[None]]:
    """A FastAPI dependency that answers 401 unless ``X-API-Key`` equals ``api_key`` (when
    ``needed`` and there is a key)."""
    expected = api_key.encode()

    async def require_key(key: Annotated[str | None, Depends(key_header)]) -> None:
        if needed and expected and not hmac.compare_digest((key or "").encode(), expected):
            message = f"this endpoint needs the server's key in header X-API-Key ({'wrong' if key else 'missing'})"
            raise ServeError(401, "unauthorized", message)

    return require_key
