"""The last link of the sending chain (docs/architecture.md, "the sending chain", link 5): one HTTP exchange,
nothing else.

A transport knows nothing of formats, retries or batches: `send(request) -> response` and `close()`. The
connection above it decides what a response means. Tests put a fake transport here (a plain async function
wrapped in `FunctionTransport`), so negotiation and session logic are tested without a network; the
end-to-end tests use `AiohttpTransport` against real receivers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp

from exporters.client_security import ClientSecurity
from exporters.secrets import headers_for_log, redact

USER_AGENT = "headwater/0.1.0"
log = logging.getLogger("headwater.exporters.transport")
MAX_RESPONSE_BODY = 64 * 1024
"""Bytes of a response body kept: enough for any receiver's error message, bounded against a hostile one."""


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """`headers` keys are compared case-insensitively by whoever reads them: use `header()`."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        for key, value in self.headers.items():
            if key.lower() == lowered:
                return value
        return None

    @property
    def text(self) -> str:
        """The body as text for messages, with any known secret taken out (a receiver may echo a token)."""
        return redact(self.body.decode("utf-8", errors="replace"))


class TransportError(Exception):
    """No response came: connection refused or reset, DNS, timeout. Always worth a retry."""


class Transport(Protocol):
    async def send(self, request: HttpRequest) -> HttpResponse: ...

    async def close(self) -> None: ...


class FunctionTransport:
    """A transport that calls `handler`: the tests' fake, and a way to plug anything in."""

    def __init__(self, handler: Callable[[HttpRequest], Awaitable[HttpResponse]]) -> None:
        self._handler = handler
        self.closed = False

    async def send(self, request: HttpRequest) -> HttpResponse:
        return await self._handler(request)

    async def close(self) -> None:
        self.closed = True


class AiohttpTransport:
    """HTTP/1.1 with keep-alive through one aiohttp session, created on first use (inside the event loop).

        transport = AiohttpTransport(timeout=30.0, headers={"X-Scope-OrgID": "tenant-a"})
        response = await transport.send(HttpRequest("POST", url, headers, body))
        await transport.close()

    `timeout` bounds one exchange. `headers` go on every request (a request's own headers win). `security`:
    TLS (its context, made once, and the server name to check) and the `Authorization` value of each request.
    """

    def __init__(self, *, timeout: float, headers: Mapping[str, str] | None = None,
                 security: ClientSecurity | None = None) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._headers = {"User-Agent": USER_AGENT, **(headers or {})}
        self._security = security
        self._session: aiohttp.ClientSession | None = None

    async def send(self, request: HttpRequest) -> HttpResponse:
        if self._session is None:
            self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout, auto_decompress=False)
        headers = dict(request.headers)
        security = self._security
        tls: dict[str, object] = {}
        if security is not None:
            authorization = security.authorization()
            if authorization is not None:
                headers["Authorization"] = authorization
            if security.ssl is not None:
                tls["ssl"] = security.ssl
            if security.server_name is not None:
                tls["server_hostname"] = security.server_name
        try:
            async with self._session.request(
                request.method, request.url, headers=headers, data=request.body or None, **tls
            ) as response:
                body = await response.content.read(MAX_RESPONSE_BODY)
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("exchange", extra={"kv": {"method": request.method, "url": request.url,
                                                        "status": response.status, "body_bytes": len(request.body),
                                                        "headers": headers_for_log(headers)}})
                return HttpResponse(response.status, dict(response.headers), body)
        except aiohttp.ClientConnectorCertificateError as exc:
            trust = security.trust if security is not None else "the system's CA certificates"
            raise TransportError(f"{request.method} {request.url}: TLS: the server's certificate was not "
                                 f"verified against {trust}: {exc.certificate_error}") from exc
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise TransportError(f"{request.method} {request.url}: {type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
