"""Certificates made for a test with the `openssl` command: a CA, a server certificate for 127.0.0.1 and
localhost, and a client certificate, all signed by that CA (EC P-256, valid for a day). Strict enough for
Python 3.13's default `VERIFY_X509_STRICT` (key usage on the CA, key identifiers on the leaves).

A machine without `openssl` fails the tests that need it (FileNotFoundError), as a missing peer does.
"""

from __future__ import annotations

import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

_CA_EXT = ("basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"
           "subjectKeyIdentifier=hash\n")
_LEAF_EXT = ("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
             "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n")


@dataclass(frozen=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _run(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_ca(directory: Path, name: str = "test-ca") -> tuple[Path, Path]:
    """A self-signed CA: (certificate, key)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key, ext = directory / f"{name}.crt", directory / f"{name}.key", directory / f"{name}.ext"
    ext.write_text(_CA_EXT)
    _run("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key))
    csr = directory / f"{name}.csr"
    _run("req", "-new", "-key", str(key), "-subj", f"/CN={name}", "-out", str(csr))
    _run("x509", "-req", "-in", str(csr), "-signkey", str(key), "-days", "1", "-extfile", str(ext), "-out", str(cert))
    return cert, key


def make_leaf(directory: Path, name: str, ca: tuple[Path, Path], usage: str, alt_names: str = "") -> tuple[Path, Path]:
    """A certificate `ca` signed: (certificate, key). `usage`: serverAuth or clientAuth."""
    cert, key, csr, ext = (directory / f"{name}.{s}" for s in ("crt", "key", "csr", "ext"))
    ext.write_text(_LEAF_EXT + f"extendedKeyUsage={usage}\n" + (f"subjectAltName={alt_names}\n" if alt_names else ""))
    _run("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key))
    _run("req", "-new", "-key", str(key), "-subj", f"/CN={name}", "-out", str(csr))
    _run("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-set_serial",
         str(secrets.randbits(62) + 1), "-days", "1", "-extfile", str(ext), "-out", str(cert))
    return cert, key


def make_certs(directory: Path) -> Certs:
    ca = make_ca(directory)
    server = make_leaf(directory, "server", ca, "serverAuth", "IP:127.0.0.1,DNS:localhost")
    client = make_leaf(directory, "client", ca, "clientAuth")
    return Certs(ca[0], server[0], server[1], client[0], client[1])
