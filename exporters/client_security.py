"""TLS and credentials for the agent's outgoing connections (remote write, OTLP upstream).

Build one `ClientSecurity` per exporter, when the exporter is built (at start, and again when a reload
replaces it): the `ssl.SSLContext` is made once there, so a certificate problem is a start-up or reload
error naming the file, not a failure on every send; the transport then asks it for the `Authorization`
value of each request, which follows a rotated token or password file (`exporters.secrets.SecretFile`).

    security = ClientSecurity.build(TlsSettings(ca_file="ca.pem", cert_file="me.pem", key_file="me.key"),
                                    AuthSettings(bearer_token_file="/run/secrets/token"), who="exporters.otlp")
    session.post(url, ssl=security.ssl, server_hostname=security.server_name,
                 headers={"Authorization": security.authorization()})

Nothing here shows a secret: `repr` of either settings class holds paths only, and failures name files.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

from exporters.secrets import SecretFile, basic_credentials

log = logging.getLogger("headwater.exporters.tls")


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """Trust `ca_file` (PEM; empty: the system's CAs), present `cert_file` + `key_file` (mTLS), check the
    server's certificate for `server_name` (empty: the URL's host). `insecure_skip_verify` checks nothing,
    and says so in a warning."""

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    server_name: str = ""
    insecure_skip_verify: bool = False


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """HTTP basic auth (`username` and the password in `password_file`) or a bearer token in
    `bearer_token_file`, or neither; never both."""

    username: str = ""
    password_file: str = ""
    bearer_token_file: str = ""


class ClientSecurity:
    """What a transport applies to each request: `ssl` (None: plain HTTP or the default checks),
    `server_name` (None: the URL's host) and `authorization()` (None: no header)."""

    def __init__(self, ssl_context: ssl.SSLContext | None, server_name: str | None, trust: str,
                 authorization: Callable[[], str | None], tls: TlsSettings | None = None, who: str = "") -> None:
        self.ssl = ssl_context
        self._tls = tls
        self._who = who
        self.server_name = server_name
        self.trust = trust
        """What the server's certificate is checked against, for error messages: `tls.ca_file /x/ca.pem`."""
        self.authorization = authorization

    def __repr__(self) -> str:
        return f"ClientSecurity(trust={self.trust!r}, server_name={self.server_name!r})"

    @classmethod
    def build(cls, tls: TlsSettings | None, auth: AuthSettings | None, *, who: str,
              clock: Callable[[], float] = time.monotonic, check_only: bool = False) -> ClientSecurity:
        """`who`: the config key path of the exporter (`exporters.remote_write[0]`), for messages. Raises
        ValueError (SecretError, a bad certificate or key) naming the key and the file. `check_only`: building
        to see whether it can be built (`headwater validate`), so nothing is logged."""
        context = tls_context(tls, who, warn=not check_only) if tls is not None else None
        if tls is None or not tls.ca_file:
            trust = "the system's CA certificates"
        else:
            trust = f"{who}.tls.ca_file {tls.ca_file}"
        if tls is not None and tls.insecure_skip_verify:
            trust = f"nothing ({who}.tls.insecure_skip_verify)"
        server_name = (tls.server_name or None) if tls is not None else None
        return cls(context, server_name, trust, authorizer(auth, who, clock), tls, who)

    def reload_tls(self) -> None:
        """Make the TLS context again from the same files (a reload: renewed certificates at the same paths).
        New connections use it; ValueError naming the file, with the running context kept, when one cannot be
        used."""
        if self._tls is not None:
            self.ssl = tls_context(self._tls, self._who)


_warned_insecure: set[str] = set()  # keys already warned about: once per process, not at every reload


def tls_context(tls: TlsSettings, who: str, *, warn: bool = True) -> ssl.SSLContext:
    """A client context as `tls` says; ValueError naming the key and file when one cannot be used."""
    key = f"{who}.tls"
    if bool(tls.cert_file) != bool(tls.key_file):
        raise ValueError(f"{key}: cert_file and key_file go together (a client certificate needs its key)")
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if tls.ca_file:
        try:
            context.load_verify_locations(cafile=tls.ca_file)
        except OSError as exc:
            raise ValueError(f"{key}.ca_file: cannot use {tls.ca_file} as CA certificates: "
                             f"{_why(exc)}") from None
    if tls.cert_file:
        try:
            context.load_cert_chain(tls.cert_file, tls.key_file, password=_no_password)
        except OSError as exc:
            raise ValueError(f"{key}.cert_file/key_file: cannot use {tls.cert_file} with {tls.key_file}: "
                             f"{_why(exc)} (both PEM, the key unencrypted and matching the certificate)") from None
    if tls.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if tls.insecure_skip_verify and warn and key not in _warned_insecure:
        _warned_insecure.add(key)
        log.warning("TLS certificate checks are off: anyone on the path can read and change what is sent",
                    extra={"kv": {"key": f"{key}.insecure_skip_verify"}})
    return context


def authorizer(auth: AuthSettings | None, who: str, clock: Callable[[], float] = time.monotonic
               ) -> Callable[[], str | None]:
    """The `Authorization` value of the next request, read from the configured file (re-read when it
    changes, checked at most once a second)."""
    if auth is None or not (auth.password_file or auth.bearer_token_file):
        return lambda: None
    if auth.password_file and auth.bearer_token_file:
        raise ValueError(f"{who}: basic_auth and bearer_token_file exclude each other; set one")
    if auth.bearer_token_file:
        token = SecretFile(auth.bearer_token_file, key=f"{who}.bearer_token_file", clock=clock)
        return lambda: f"Bearer {token.value()}"
    if not auth.username:
        raise ValueError(f"{who}.basic_auth.username: expected a user name beside password_file")
    password = SecretFile(auth.password_file, key=f"{who}.basic_auth.password_file", clock=clock)
    cached: list[str] = ["", ""]  # password, header: base64 once per password, not per request

    def basic() -> str:
        value = password.value()
        if value != cached[0]:
            cached[:] = [value, basic_credentials(auth.username, value)]
        return cached[1]

    return basic


def _no_password() -> bytes:
    """An encrypted key is refused instead of OpenSSL asking for its passphrase on a terminal."""
    return b""


def _why(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    return exc.strerror or str(exc)
