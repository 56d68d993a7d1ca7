"""TLS from the client side: verifying contexts, deliberately obsolete ones (TLS 1.0/1.1 at
OpenSSL security level 0), one bounded handshake, and ``openssl s_server`` / ``s_client``
runs that prove an obsolete client really speaks its version before a broker refuses it.

Processes started here are stopped by PID; every wait is bounded.
"""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

from support.brokerproc import HOST, IN_CI, free_port, port_accepts, require_tool

TIMEOUT: Final = 5.0
LEGACY_CIPHERS: Final = "ALL:@SECLEVEL=0"
# openssl s_client's switch for each obsolete version
OPENSSL_FLAGS: Final = {ssl.TLSVersion.TLSv1: "-tls1", ssl.TLSVersion.TLSv1_1: "-tls1_1"}


def verifying_context(
    ca: Path,
    *,
    cert: Path | None = None,
    key: Path | None = None,
    max_version: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    """A normal client: trusts ``ca``, checks the host name, optionally shows a certificate."""
    context = ssl.create_default_context(cafile=ca)
    if cert is not None:
        context.load_cert_chain(cert, key)
    if max_version is not None:
        context.maximum_version = max_version
    return context


def legacy_context(version: ssl.TLSVersion) -> ssl.SSLContext:
    """A client that speaks only ``version`` (TLS 1.0 or 1.1), every cipher, no verification."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_ciphers(LEGACY_CIPHERS)
    with warnings.catch_warnings():  # Python deprecates these versions: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = version
        context.maximum_version = version
    return context


def require_control(ok: bool, message: str) -> None:
    """A control that failed means this machine cannot run the attack at all (e.g. an OpenSSL
    built without TLS 1.0): skip locally, but fail under CI=true, as for a missing tool."""
    if ok:
        return
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@dataclass(frozen=True, slots=True)
class Handshake:
    version: str | None  # negotiated version, None if the handshake failed
    error: str | None

    @property
    def ok(self) -> bool:
        return self.version is not None


def handshake(
    port: int, context: ssl.SSLContext, *, server_hostname: str | None = HOST
) -> Handshake:
    """One TLS handshake with 127.0.0.1:``port``; the connection is closed right after."""
    try:
        with (
            socket.create_connection((HOST, port), timeout=TIMEOUT) as raw,
            context.wrap_socket(raw, server_hostname=server_hostname) as tls,
        ):
            return Handshake(tls.version(), None)
    except (OSError, ssl.SSLError) as exc:
        return Handshake(None, repr(exc))


@contextmanager
def openssl_server(certfile: Path, keyfile: Path, version: ssl.TLSVersion) -> Iterator[int]:
    """``openssl s_server`` speaking only ``version`` at SECLEVEL 0; yields its port."""
    exe = require_tool("openssl", "openssl")
    port = free_port()
    proc = subprocess.Popen(
        [
            exe,
            "s_server",
            "-accept",
            f"{HOST}:{port}",
            "-cert",
            str(certfile),
            "-key",
            str(keyfile),
            "-cipher",
            LEGACY_CIPHERS,
            OPENSSL_FLAGS[version],
            "-quiet",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while not port_accepts(port):
            assert proc.poll() is None, f"openssl s_server exited with {proc.returncode}"
            assert time.monotonic() < deadline, "openssl s_server did not start listening"
            time.sleep(0.02)
        yield port
    finally:
        proc.terminate()  # our own process, by PID
        try:
            proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(TIMEOUT)


_CIPHER = re.compile(r"^New, \S+, Cipher is (\S+)", re.MULTILINE)
_PROTOCOL = re.compile(r"^\s+Protocol\s*:\s*(\S+)", re.MULTILINE)


def openssl_client(port: int, version: ssl.TLSVersion) -> str | None:
    """``openssl s_client`` restricted to ``version``: the negotiated protocol, or None."""
    exe = require_tool("openssl", "openssl")
    result = subprocess.run(
        [
            exe,
            "s_client",
            "-connect",
            f"{HOST}:{port}",
            OPENSSL_FLAGS[version],
            "-cipher",
            LEGACY_CIPHERS,
            "-servername",
            "localhost",
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 2,
        check=False,
    )
    cipher, protocol = _CIPHER.search(result.stdout), _PROTOCOL.search(result.stdout)
    if cipher is None or cipher.group(1) == "(NONE)" or protocol is None:
        return None  # s_client prints the version it asked for even when nothing was agreed
    return protocol.group(1)
