"""Server-side TLS for the receivers: an `ssl.SSLContext` for aiohttp and credentials for grpc.aio, both from
the same PEM files (`receivers.*.tls`).

With `client_ca_file` a client must present a certificate that CA signed (mutual TLS): the handshake fails
otherwise, before any request is read. TLS 1.2 is the oldest version offered. Both builders read the files
at once, so a missing file, a key that does not match its certificate or a CA file that is not PEM stops the
listener from starting with an error naming the file, instead of failing every handshake later.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc

from agent.config.schema import ReceiverTlsConfig


class TlsSetupError(OSError):
    """The TLS files cannot be used; an OSError, so a listener that cannot start says so the usual way."""


def server_ssl_context(tls: ReceiverTlsConfig) -> ssl.SSLContext:
    """For `aiohttp.web.TCPSite(ssl_context=...)`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise TlsSetupError(f"cannot load the TLS certificate {tls.cert_file!r} with its key {tls.key_file!r} "
                            f"(tls.cert_file, tls.key_file): {_reason(exc)}") from None
    if tls.client_ca_file:
        try:
            context.load_verify_locations(cafile=tls.client_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise TlsSetupError(f"cannot load the client CA {tls.client_ca_file!r} (tls.client_ca_file): "
                                f"{_reason(exc)}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def grpc_server_credentials(tls: ReceiverTlsConfig) -> grpc.ServerCredentials:
    """For `grpc.aio.Server.add_secure_port`. grpc checks the files only at the first handshake, so they are
    checked here as `server_ssl_context` reads them first."""
    server_ssl_context(tls)
    key, chain = Path(tls.key_file).read_bytes(), Path(tls.cert_file).read_bytes()
    ca = Path(tls.client_ca_file).read_bytes() if tls.client_ca_file else None
    return grpc.ssl_server_credentials([(key, chain)], root_certificates=ca, require_client_auth=ca is not None)


def tls_mode(tls: ReceiverTlsConfig | None) -> str:
    """How a listener serves, for its "listening" log line: `none`, `tls` or `mtls`."""
    return "none" if tls is None else "mtls" if tls.client_ca_file else "tls"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)
