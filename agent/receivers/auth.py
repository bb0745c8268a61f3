"""Bearer-token authentication for the receivers (`receivers.*.auth.bearer_token_file`).

A request is checked from its headers alone, before its body is read: one without `Authorization: Bearer
<token>`, or with another token, is answered 401 (HTTP, with `WWW-Authenticate: Bearer`) or UNAUTHENTICATED
(gRPC) and costs nothing else — no body read, no decompression, no decoding, no admission. On aiohttp that is
a middleware; on grpc.aio a server interceptor that, for a refused call, hands grpc a handler taking a request
stream it never reads, so grpc neither reads nor inflates the message.

The token is compared in constant time (`hmac.compare_digest`) and never logged: a log line says
`token=<redacted>`. The file is stat'ed on each request and read again when it changed (another inode, size
or modification time), so a rotated token (a Kubernetes secret, a renamed file) counts from the next request.
A file that cannot be read or is empty during a rotation keeps the last token, with one warning.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from aiohttp import web

from agent.logs import kv
from exporters.secrets import SecretError, SecretFile

log = logging.getLogger("headwater.receivers.auth")

REDACTED = "<redacted>"

MISSING = "missing bearer token: send the header Authorization: Bearer <token>"
WRONG = "invalid bearer token"


class TokenFileError(OSError):
    """The token file cannot be used at start (unreadable, empty, larger than exporters.secrets.MAX_SECRET_BYTES)."""


class BearerToken:
    """The token a receiver requires, from `path` (an `exporters.secrets.SecretFile` checked at every request,
    so a rotated token counts from the next one, and remembered for redaction like the exporters' secrets).

        token = BearerToken("/etc/headwater/receiver.token")
        refusal = token.refusal(request.headers.get("Authorization"))  # None when the request may pass
    """

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._secret = SecretFile(path, key="auth.bearer_token_file", check_every=0.0)
        except SecretError as exc:
            raise TokenFileError(f"cannot use the bearer token file: {exc}") from None

    def refusal(self, authorization: str | None) -> str | None:
        """Why a request with this `Authorization` header value is refused (MISSING or WRONG), or None."""
        token = self._secret.value().encode("utf-8")
        scheme, _, presented = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            return MISSING
        if not hmac.compare_digest(presented.strip().encode("utf-8", "surrogateescape"), token):
            return WRONG
        return None


def www_authenticate(reason: str) -> str:
    """The `WWW-Authenticate` value for a 401 (RFC 6750): which scheme, and whether the token was wrong."""
    return 'Bearer realm="headwater", error="invalid_token"' if reason == WRONG else 'Bearer realm="headwater"'


Respond = Callable[[web.Request, str], web.StreamResponse]


def aiohttp_middleware(token: BearerToken, respond: Respond) -> Any:
    """An aiohttp middleware that answers `respond(request, reason)` (with `WWW-Authenticate` added) to a
    request `token` refuses, before the handler runs."""

    @web.middleware
    async def check_bearer_token(request: web.Request,
                                 handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        reason = token.refusal(request.headers.get("Authorization"))
        if reason is None:
            return await handler(request)
        log.debug("refused", **kv(path=request.path, status=401, reason=reason, token=REDACTED))
        response = respond(request, reason)
        response.headers["WWW-Authenticate"] = www_authenticate(reason)
        return response

    return check_bearer_token


class GrpcBearerInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls `token` refuses with UNAUTHENTICATED; `refused(method, reason)` is told of each."""

    def __init__(self, token: BearerToken, refused: Callable[[str, str], None]) -> None:
        self._token = token
        self._refused = refused

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]],
                                handler_call_details: grpc.HandlerCallDetails) -> Any:
        metadata = handler_call_details.invocation_metadata or ()
        authorization = next((v for k, v in metadata if k == "authorization"), None)
        if isinstance(authorization, bytes):
            authorization = authorization.decode("utf-8", "surrogateescape")
        reason = self._token.refusal(authorization)
        if reason is None:
            return await continuation(handler_call_details)
        method = handler_call_details.method
        self._refused(method, reason)
        log.debug("refused", **kv(method=method, status="UNAUTHENTICATED", reason=reason, token=REDACTED))

        async def deny(_requests: Any, context: grpc.aio.ServicerContext) -> bytes:
            # A request stream that is never iterated: grpc does not read (nor inflate) the message.
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)
            raise AssertionError("unreachable: abort raises")

        return grpc.stream_unary_rpc_method_handler(deny)
