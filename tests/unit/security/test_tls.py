"""Unit tests for ``bastion.security.tls``: real handshakes on 127.0.0.1 against the server
context (versions, ciphers, mTLS, CRL), identities, file errors, and reload under asyncio.

Certificates come from ``bastion.security.pki``; the handshake helper lives in ``tlskit.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from tlskit import (
    TIMEOUT,
    client_context,
    handshake,
    legacy_client,
    permissive_server,
)

from bastion.errors import ConfigError
from bastion.security import pki
from bastion.security.tls import (
    TLS12_CIPHERS,
    ServerContextHolder,
    TlsSettings,
    build_server_context,
    identity_from_peer_cert,
)

TLS13_SUITES = {"TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_GCM_SHA256"}


@pytest.fixture
def pki_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "pki"
    pki.init_ca(directory)
    pki.issue_client(directory, "dev1")
    pki.issue_client(directory, "dev2")
    return directory


def settings_for(pki_dir: Path, **changes: object) -> TlsSettings:
    base = TlsSettings(certfile=pki_dir / "server.crt", keyfile=pki_dir / "server.key")
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def mtls(pki_dir: Path, **changes: object) -> TlsSettings:
    defaults: dict[str, object] = {"cafile": pki_dir / "ca.crt", "require_certificate": True}
    return settings_for(pki_dir, **(defaults | changes))


def client_of(pki_dir: Path, name: str | None = None) -> ssl.SSLContext:
    if name is None:
        return client_context(pki_dir / "ca.crt")
    return client_context(
        pki_dir / "ca.crt", cert=pki_dir / f"{name}.crt", key=pki_dir / f"{name}.key"
    )


# ----------------------------------------------------------------- protocol versions and ciphers


def test_tls13_is_negotiated_by_default(pki_dir: Path) -> None:
    outcome = handshake(build_server_context(settings_for(pki_dir)), client_of(pki_dir))
    assert outcome.ok, outcome.errors
    assert outcome.version == "TLSv1.3"
    assert outcome.cipher in TLS13_SUITES
    assert outcome.peercert == {}  # no cafile: client certificates are not asked for


def test_tls12_client_is_refused_when_minimum_is_13(pki_dir: Path) -> None:
    client = client_context(pki_dir / "ca.crt", max_version=ssl.TLSVersion.TLSv1_2)
    outcome = handshake(build_server_context(settings_for(pki_dir)), client)
    assert not outcome.ok
    assert "UNSUPPORTED_PROTOCOL" in repr(outcome.server_error).upper()


def test_tls12_client_is_accepted_when_minimum_is_12(pki_dir: Path) -> None:
    client = client_context(pki_dir / "ca.crt", max_version=ssl.TLSVersion.TLSv1_2)
    outcome = handshake(build_server_context(settings_for(pki_dir, min_version="1.2")), client)
    assert outcome.ok, outcome.errors
    assert outcome.version == "TLSv1.2"
    assert outcome.cipher is not None
    assert outcome.cipher.startswith("ECDHE-ECDSA-") and (
        "GCM" in outcome.cipher or "CHACHA20" in outcome.cipher
    )


@pytest.mark.parametrize("legacy", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1], ids=str)
@pytest.mark.parametrize("minimum", ["1.2", "1.3"])
def test_tls10_and_tls11_are_always_refused(
    pki_dir: Path, legacy: ssl.TLSVersion, minimum: str
) -> None:
    # Control: this client really can speak the old version (to a deliberately weak server).
    control = handshake(
        permissive_server(pki_dir / "server.crt", pki_dir / "server.key"),
        legacy_client(legacy),
        server_hostname=None,
    )
    if not control.ok:
        pytest.skip(f"local OpenSSL cannot build a {legacy.name} client at all: {control.errors}")
    assert control.version is not None and control.version.replace(".", "_") == legacy.name

    server = build_server_context(settings_for(pki_dir, min_version=minimum))
    outcome = handshake(server, legacy_client(legacy), server_hostname=None)
    assert not outcome.ok
    assert outcome.version is None
    assert "UNSUPPORTED_PROTOCOL" in repr(outcome.server_error).upper()


@pytest.mark.parametrize("minimum", ["1.0", "1.1", "SSLv3", "1", ""])
def test_minimum_below_12_cannot_be_configured(pki_dir: Path, minimum: str) -> None:
    with pytest.raises(ConfigError, match=r"min_version must be '1\.2' or '1\.3'"):
        settings_for(pki_dir, min_version=minimum)


def test_context_settings(pki_dir: Path) -> None:
    context = build_server_context(settings_for(pki_dir, min_version="1.2"))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.maximum_version == ssl.TLSVersion.MAXIMUM_SUPPORTED
    for option in (ssl.OP_NO_COMPRESSION, ssl.OP_NO_RENEGOTIATION, ssl.OP_NO_TICKET):
        assert context.options & option
    assert context.num_tickets == 0
    assert context.verify_mode == ssl.CERT_NONE
    assert context.verify_flags & ssl.VERIFY_X509_STRICT
    for cipher in context.get_ciphers():
        assert cipher["aead"], cipher["name"]
        if cipher["protocol"] == "TLSv1.3":
            assert cipher["name"] in TLS13_SUITES
        else:
            assert cipher["protocol"] == "TLSv1.2" and cipher["kea"] == "kx-ecdhe", cipher
    assert "@SECLEVEL=2" in TLS12_CIPHERS


def test_session_tickets_can_be_enabled(pki_dir: Path) -> None:
    context = build_server_context(settings_for(pki_dir, session_tickets=True))
    assert not context.options & ssl.OP_NO_TICKET
    assert context.num_tickets == 2


# ----------------------------------------------------------------- client certificates


def test_verify_modes(pki_dir: Path) -> None:
    ca = pki_dir / "ca.crt"
    assert build_server_context(settings_for(pki_dir)).verify_mode == ssl.CERT_NONE
    assert build_server_context(settings_for(pki_dir, cafile=ca)).verify_mode == ssl.CERT_OPTIONAL
    assert build_server_context(mtls(pki_dir)).verify_mode == ssl.CERT_REQUIRED


def test_required_certificate_missing_is_refused(pki_dir: Path) -> None:
    outcome = handshake(build_server_context(mtls(pki_dir)), client_of(pki_dir))
    assert not outcome.ok
    assert "CERTIFICATE" in repr(outcome.server_error).upper()


def test_required_certificate_present_passes(pki_dir: Path) -> None:
    outcome = handshake(build_server_context(mtls(pki_dir)), client_of(pki_dir, "dev1"))
    assert outcome.ok, outcome.errors
    assert outcome.peercert is not None
    assert identity_from_peer_cert(outcome.peercert, "cn") == "dev1"


def test_certificate_from_another_ca_is_refused(pki_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    pki.init_ca(other)
    pki.issue_client(other, "intruder")
    client = client_context(
        pki_dir / "ca.crt", cert=other / "intruder.crt", key=other / "intruder.key"
    )
    outcome = handshake(build_server_context(mtls(pki_dir)), client)
    assert not outcome.ok
    assert "CERTIFICATE_VERIFY_FAILED" in repr(outcome.server_error).upper()


def test_optional_certificate(pki_dir: Path) -> None:
    server = build_server_context(settings_for(pki_dir, cafile=pki_dir / "ca.crt"))
    without = handshake(server, client_of(pki_dir))
    assert without.ok, without.errors
    assert without.peercert == {}
    with_cert = handshake(server, client_of(pki_dir, "dev2"))
    assert with_cert.ok, with_cert.errors
    assert identity_from_peer_cert(with_cert.peercert, "cn") == "dev2"


def test_revoked_certificate_is_refused_with_the_crl(pki_dir: Path) -> None:
    pki.revoke(pki_dir, pki_dir / "dev2.crt")
    server = build_server_context(mtls(pki_dir, crlfile=pki_dir / "ca.crl"))
    assert server.verify_flags & ssl.VERIFY_CRL_CHECK_LEAF

    good = handshake(server, client_of(pki_dir, "dev1"))
    assert good.ok, good.errors
    revoked = handshake(server, client_of(pki_dir, "dev2"))
    assert not revoked.ok
    assert "REVOKED" in repr(revoked.server_error).upper()
    # without the CRL the same certificate is accepted: the refusal really is the CRL's doing
    assert handshake(build_server_context(mtls(pki_dir)), client_of(pki_dir, "dev2")).ok


def sign_crl(
    pki_dir: Path,
    path: Path,
    *,
    last_update: dt.datetime,
    next_update: dt.datetime | None = None,
    revoked: list[int] | None = None,
) -> None:
    """A CRL signed by the test CA with exactly the given times and serials."""
    key = serialization.load_pem_private_key((pki_dir / "ca.key").read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    ca = x509.load_pem_x509_certificate((pki_dir / "ca.crt").read_bytes())
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(last_update)
        .next_update(next_update or last_update + dt.timedelta(days=1))
    )
    for serial in revoked or []:
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(last_update)
        builder = builder.add_revoked_certificate(entry.build())
    path.write_bytes(builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))


def test_expired_crl_is_a_config_error(pki_dir: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    sign_crl(
        pki_dir,
        pki_dir / "old.crl",
        last_update=now - dt.timedelta(days=10),
        next_update=now - dt.timedelta(days=1),
    )
    with pytest.raises(ConfigError, match=r"old\.crl: the CRL of CN=Bastion Dev CA expired"):
        build_server_context(mtls(pki_dir, crlfile=pki_dir / "old.crl"))


def test_crl_of_another_ca_is_a_config_error(pki_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    pki.init_ca(other, common_name="Other CA")
    pki.write_crl(other)
    with pytest.raises(ConfigError, match="CRL of CN=Other CA is not signed by a CA in"):
        build_server_context(mtls(pki_dir, crlfile=other / "ca.crl"))


def test_crlfile_without_a_crl_is_a_config_error(pki_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"crlfile .*ca\.crt: no PEM CRL"):
        build_server_context(mtls(pki_dir, crlfile=pki_dir / "ca.crt"))


@pytest.mark.parametrize(
    ("changes", "what"),
    [
        ({"require_certificate": True}, "require_certificate"),
        ({"crlfile": Path("ca.crl")}, "crlfile"),
        ({"use_identity_as_username": "cn"}, "use_identity_as_username"),
    ],
)
def test_client_certificate_options_need_a_cafile(
    pki_dir: Path, changes: dict[str, object], what: str
) -> None:
    with pytest.raises(ConfigError, match=f"TLS {what} needs a cafile"):
        settings_for(pki_dir, **changes)


def test_identity_mode_is_checked(pki_dir: Path) -> None:
    with pytest.raises(ConfigError, match="use_identity_as_username must be"):
        settings_for(pki_dir, cafile=pki_dir / "ca.crt", use_identity_as_username="dn")


# ----------------------------------------------------------------- file errors


def test_missing_certfile(pki_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"TLS certfile .*nope\.crt: file not found"):
        build_server_context(settings_for(pki_dir, certfile=pki_dir / "nope.crt"))


def test_directory_as_keyfile(pki_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"TLS keyfile .*pki: not a regular file"):
        build_server_context(settings_for(pki_dir, keyfile=pki_dir))


def test_key_that_does_not_match(pki_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"keyfile .*dev1\.key does not match certfile .*server"):
        build_server_context(settings_for(pki_dir, keyfile=pki_dir / "dev1.key"))


def test_not_pem(pki_dir: Path) -> None:
    der = pki_dir / "server.der"
    cert = x509.load_pem_x509_certificate((pki_dir / "server.crt").read_bytes())
    der.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    with pytest.raises(ConfigError, match=r"certfile .*server\.der: not PEM"):
        build_server_context(settings_for(pki_dir, certfile=der))


def test_broken_pem(pki_dir: Path) -> None:
    bad = pki_dir / "bad.crt"
    bad.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    with pytest.raises(ConfigError, match=r"certfile .*bad\.crt: no valid PEM certificate"):
        build_server_context(settings_for(pki_dir, certfile=bad))
    with pytest.raises(ConfigError, match=r"cafile .*bad\.crt: no valid PEM certificate"):
        build_server_context(settings_for(pki_dir, cafile=bad))


def test_key_that_is_not_a_key(pki_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"keyfile .*server\.crt: not a PEM private key"):
        build_server_context(settings_for(pki_dir, keyfile=pki_dir / "server.crt"))


def test_encrypted_key(pki_dir: Path) -> None:
    key = serialization.load_pem_private_key((pki_dir / "server.key").read_bytes(), password=None)
    encrypted = pki_dir / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(ConfigError, match=r"encrypted\.key: the key is encrypted"):
        build_server_context(settings_for(pki_dir, keyfile=encrypted))


# ----------------------------------------------------------------- identities


def test_identity_from_a_real_handshake(pki_dir: Path) -> None:
    pki.issue_client(
        pki_dir, "dev3", sans=["IP:10.1.2.3", "email:dev3@example.com", "DNS:dev3.lan"]
    )
    outcome = handshake(build_server_context(mtls(pki_dir)), client_of(pki_dir, "dev3"))
    assert outcome.ok, outcome.errors
    assert outcome.peercert is not None and outcome.peercert_der is not None
    for cert in (outcome.peercert, outcome.peercert_der):
        assert identity_from_peer_cert(cert, "cn") == "dev3"
        assert identity_from_peer_cert(cert, "san") == "dev3@example.com"  # IP skipped
        assert identity_from_peer_cert(cert, "none") is None


def test_san_identity_needs_a_san(pki_dir: Path) -> None:
    outcome = handshake(build_server_context(mtls(pki_dir)), client_of(pki_dir, "dev1"))
    assert outcome.peercert is not None and outcome.peercert_der is not None
    assert identity_from_peer_cert(outcome.peercert, "san") is None
    assert identity_from_peer_cert(outcome.peercert_der, "san") is None


@pytest.mark.parametrize(
    ("cert", "source", "expected"),
    [
        (None, "cn", None),
        ({}, "cn", None),
        (b"", "san", None),
        (b"not der", "cn", None),
        ({"subject": ((("commonName", "a"),), (("commonName", "b"),))}, "cn", None),  # ambiguous
        ({"subject": ((("organizationName", "x"), ("commonName", "s1")),)}, "cn", "s1"),
        ({"subject": ((("commonName", "bad\x00name"),),)}, "cn", None),
        ({"subject": ((("commonName", "line\nbreak"),),)}, "cn", None),
        ({"subject": ((("commonName", ""),),)}, "cn", None),
        ({"subject": "garbage"}, "cn", None),
        (
            {"subjectAltName": (("IP Address", "10.0.0.1"), ("URI", "urn:dev:9"))},
            "san",
            "urn:dev:9",
        ),
        ({"subjectAltName": (("DNS", "a.example"), ("email", "b@example"))}, "san", "a.example"),
        ({"subjectAltName": (("IP Address", "10.0.0.1"),)}, "san", None),
        ({"subjectAltName": (("DNS", "a.example"),)}, "none", None),
    ],
)
def test_identity_extraction(
    cert: dict[str, object] | bytes | None, source: str, expected: str | None
) -> None:
    assert identity_from_peer_cert(cert, source) == expected  # type: ignore[arg-type]


# ----------------------------------------------------------------- reload under asyncio


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


@asynccontextmanager
async def tls_server(context: ssl.SSLContext) -> AsyncIterator[int]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), TIMEOUT)


class Conn:
    """An asyncio TLS client connection that can prove it still works."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, context: ssl.SSLContext) -> Conn:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="localhost"),
            TIMEOUT,
        )
        conn = cls(reader, writer)
        await conn.echo(b"hello")
        return conn

    async def echo(self, data: bytes) -> None:
        self.writer.write(data)
        await asyncio.wait_for(self.writer.drain(), TIMEOUT)
        assert await asyncio.wait_for(self.reader.readexactly(len(data)), TIMEOUT) == data

    @property
    def server_sans(self) -> list[str]:
        der = self.writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        cert = x509.load_der_x509_certificate(der)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return [str(value) for value in san.get_values_for_type(x509.DNSName)]

    async def close(self) -> None:
        self.writer.close()
        with suppress(ConnectionError, ssl.SSLError):
            await asyncio.wait_for(self.writer.wait_closed(), TIMEOUT)


@pytest.fixture
async def conns() -> AsyncIterator[list[Conn]]:
    opened: list[Conn] = []
    yield opened
    for conn in opened:  # the test body closes them; this only cleans up after a failure
        conn.writer.transport.abort()
    for _ in range(3):
        await asyncio.sleep(0)  # let the aborts finish closing their sockets


async def test_reload_swaps_the_certificate_for_new_handshakes_only(
    pki_dir: Path, conns: list[Conn]
) -> None:
    holder = ServerContextHolder(settings_for(pki_dir))
    listener, first = holder.listener_context, holder.context
    async with tls_server(listener) as port:
        before = await Conn.open(port, client_of(pki_dir))
        conns.append(before)
        assert before.server_sans == ["localhost"]

        assert holder.current.subject == "CN=localhost"
        info = pki.issue_server(pki_dir, sans=["reloaded.example"], force=True)  # same names
        report = holder.reload()
        assert report == holder.current
        assert report.generation == holder.generation == 2
        assert report.fingerprint_sha256 == info.fingerprint_sha256
        assert report.not_after == info.not_after
        assert holder.listener_context is listener  # asyncio keeps the object it was given
        assert holder.context is not first  # the configuration was swapped as a whole

        after = await Conn.open(port, client_of(pki_dir))
        conns.append(after)
        assert after.server_sans == ["localhost", "reloaded.example"]
        await before.echo(b"still here")  # the established connection was not disturbed
        assert before.server_sans == ["localhost"]
        await before.close()
        await after.close()


async def test_reload_applies_each_new_crl(pki_dir: Path, conns: list[Conn]) -> None:
    pki.write_crl(pki_dir)
    holder = ServerContextHolder(mtls(pki_dir, crlfile=pki_dir / "ca.crl"))
    async with tls_server(holder.listener_context) as port:
        dev1 = await Conn.open(port, client_of(pki_dir, "dev1"))
        conns.append(dev1)
        # two CRLs signed within the same second: the newer one must still be the one used
        pki.revoke(pki_dir, pki_dir / "dev2.crt")
        holder.reload()
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            conns.append(await Conn.open(port, client_of(pki_dir, "dev2")))
        fresh = await Conn.open(port, client_of(pki_dir, "dev1"))  # not revoked (yet)
        conns.append(fresh)
        await fresh.close()

        pki.revoke(pki_dir, pki_dir / "dev1.crt")
        holder.reload()
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            conns.append(await Conn.open(port, client_of(pki_dir, "dev1")))
        await dev1.echo(b"established connections are the broker's to drop")
        await dev1.close()


def test_reload_forgets_a_removed_ca(pki_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    pki.init_ca(other, common_name="Retired CA")
    pki.issue_client(other, "old-device")
    bundle = tmp_path / "bundle.crt"
    bundle.write_bytes((pki_dir / "ca.crt").read_bytes() + (other / "ca.crt").read_bytes())
    holder = ServerContextHolder(mtls(pki_dir, cafile=bundle))
    old_device = client_context(
        pki_dir / "ca.crt", cert=other / "old-device.crt", key=other / "old-device.key"
    )
    assert handshake(holder.listener_context, old_device).ok

    bundle.write_bytes((pki_dir / "ca.crt").read_bytes())
    holder.reload()
    refused = handshake(holder.listener_context, old_device)
    assert not refused.ok
    assert "CERTIFICATE_VERIFY_FAILED" in repr(refused.server_error).upper()
    assert handshake(holder.listener_context, client_of(pki_dir, "dev1")).ok


def test_reload_changes_the_protocol_policy(pki_dir: Path) -> None:
    holder = ServerContextHolder(settings_for(pki_dir))
    tls12 = client_context(pki_dir / "ca.crt", max_version=ssl.TLSVersion.TLSv1_2)
    assert not handshake(holder.listener_context, tls12).ok
    holder.reload(settings_for(pki_dir, min_version="1.2"))
    assert holder.settings.min_version == "1.2"
    outcome = handshake(holder.listener_context, tls12)
    assert outcome.ok, outcome.errors
    assert outcome.version == "TLSv1.2"


def test_handshakes_without_sni_are_moved_too(pki_dir: Path) -> None:
    holder = ServerContextHolder(settings_for(pki_dir))
    pki.issue_server(pki_dir, sans=["reloaded.example"], force=True)
    holder.reload()
    client = client_of(pki_dir)
    client.check_hostname = False
    outcome = handshake(holder.listener_context, client, server_hostname=None)  # sends no SNI
    assert outcome.ok, outcome.errors
    assert outcome.server_cert_der is not None
    assert b"reloaded.example" in outcome.server_cert_der


async def test_failed_reload_keeps_serving_the_old_files(pki_dir: Path, conns: list[Conn]) -> None:
    holder = ServerContextHolder(settings_for(pki_dir))
    current = holder.context
    async with tls_server(holder.listener_context) as port:
        pki.issue_server(pki_dir, sans=["never.example"], force=True)
        (pki_dir / "server.key").unlink()
        (pki_dir / "server.key").write_text("-----BEGIN PRIVATE KEY-----\ntruncated\n")
        with pytest.raises(ConfigError, match=r"keyfile .*server\.key"):
            holder.reload()
        assert holder.generation == 1 and holder.context is current
        conn = await Conn.open(port, client_of(pki_dir))
        conns.append(conn)
        assert conn.server_sans == ["localhost"]
        await conn.close()


def test_reloading_the_same_context_in_place_only_half_works(pki_dir: Path, tmp_path: Path) -> None:
    """Why reload swaps contexts: ``load_cert_chain`` again on one context does switch the
    certificate for new handshakes, but its trust store only accumulates."""
    other = tmp_path / "other"
    pki.init_ca(other)
    pki.issue_client(other, "old-device")
    pki.write_crl(pki_dir)
    bundle = tmp_path / "bundle.crt"
    bundle.write_bytes((pki_dir / "ca.crt").read_bytes() + (other / "ca.crt").read_bytes())
    context = build_server_context(mtls(pki_dir, cafile=bundle))
    pki.issue_server(pki_dir, sans=["in-place.example"], force=True)
    context.load_cert_chain(pki_dir / "server.crt", pki_dir / "server.key")
    context.load_verify_locations(pki_dir / "ca.crt")  # "drop" the other CA: nothing is removed

    outcome = handshake(context, client_of(pki_dir, "dev1"))
    assert outcome.ok and outcome.server_cert_der is not None
    assert b"in-place.example" in outcome.server_cert_der
    old_device = client_context(
        pki_dir / "ca.crt", cert=other / "old-device.crt", key=other / "old-device.key"
    )
    assert handshake(context, old_device).ok  # still trusted

    # Two CRLs with the same lastUpdate (two revocations within a second): OpenSSL keeps
    # using the one it loaded first, so the newly revoked certificate is still accepted.
    when = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=1)
    sign_crl(pki_dir, pki_dir / "first.crl", last_update=when)
    crl_context = build_server_context(mtls(pki_dir, crlfile=pki_dir / "first.crl"))
    dev1 = x509.load_pem_x509_certificate((pki_dir / "dev1.crt").read_bytes())
    sign_crl(pki_dir, pki_dir / "second.crl", last_update=when, revoked=[dev1.serial_number])
    crl_context.load_verify_locations(pki_dir / "second.crl")
    assert handshake(crl_context, client_of(pki_dir, "dev1")).ok  # revoked, yet accepted
    holder = ServerContextHolder(mtls(pki_dir, crlfile=pki_dir / "first.crl"))
    holder.reload(mtls(pki_dir, crlfile=pki_dir / "second.crl"))
    assert not handshake(holder.listener_context, client_of(pki_dir, "dev1")).ok
