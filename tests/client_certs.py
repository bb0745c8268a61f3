"""Certificates made in the test, with the `openssl` command line: a CA, a server certificate it signs for
127.0.0.1 / localhost (or other names), and a client certificate for mTLS. Nothing is fetched and nothing is
kept between tests.

    ca = make_ca(tmp_path, "test-ca")
    server = ca.issue(tmp_path, "server", names=("127.0.0.1", "localhost"))
    client = ca.issue(tmp_path, "client", client=True)
    context = server_context(server, client_ca=ca)     # an aiohttp test receiver demanding a client certificate

EC P-256 keys, so generating a set takes milliseconds.
"""

from __future__ import annotations

import ipaddress
import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path


def _openssl(*args: str, cwd: Path) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        raise AssertionError("the openssl command is needed to make test certificates; install openssl")
    result = subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)} failed:\n{result.stderr}")


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Authority:
    cert: Path
    key: Path
    serial: list[int]

    def issue(self, directory: Path, name: str, *, names: tuple[str, ...] = ("127.0.0.1", "localhost"),
              client: bool = False) -> Pair:
        """A certificate for `names` (IP addresses or DNS names) signed by this CA, for a server or a client."""
        directory.mkdir(parents=True, exist_ok=True)
        key, csr, cert = directory / f"{name}.key", directory / f"{name}.csr", directory / f"{name}.pem"
        ext = directory / f"{name}.ext"
        sans = ",".join(f"IP:{n}" if _is_ip(n) else f"DNS:{n}" for n in names)
        usage = "clientAuth" if client else "serverAuth"
        ext.write_text(f"basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage={usage}\n"
                       + (f"subjectAltName={sans}\n" if names else ""))
        _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key), cwd=directory)
        _openssl("req", "-new", "-key", str(key), "-subj", f"/CN={name}", "-out", str(csr), cwd=directory)
        self.serial[0] += 1
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key),
                 "-set_serial", str(self.serial[0]), "-days", "2", "-sha256", "-extfile", str(ext),
                 "-out", str(cert), cwd=directory)
        return Pair(cert, key)


def make_ca(directory: Path, name: str) -> Authority:
    directory.mkdir(parents=True, exist_ok=True)
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key), cwd=directory)
    _openssl("req", "-x509", "-new", "-key", str(key), "-subj", f"/CN={name}", "-days", "2", "-sha256",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-out", str(cert), cwd=directory)
    return Authority(cert, key, [1000])


def server_context(pair: Pair, client_ca: Authority | None = None) -> ssl.SSLContext:
    """A server-side context presenting `pair`; with `client_ca`, clients must present a certificate it signed."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pair.cert, pair.key)
    if client_ca is not None:
        context.load_verify_locations(cafile=client_ca.cert)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
