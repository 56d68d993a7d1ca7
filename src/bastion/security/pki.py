"""Issuing for the operator PKI: a local CA, server and client certificates (``cryptography``).

``cli/pki.py`` is its command line and ``security/tls.py`` loads what it writes; files and CA
loading live in ``pkifiles.py``, revocation in ``crl.py`` (re-exported here). Private keys are
created 0600, certificates 0644 (both subject to the umask).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bastion.errors import ConfigError
from bastion.security.crl import CrlInfo, Revocation, revoke, write_crl
from bastion.security.pkifiles import (
    CA_CERT,
    CA_CRL,
    CA_KEY,
    KEY_MODE,
    PUBLIC_MODE,
    Authority,
    PrivateKey,
    WrittenFile,
    check_days,
    ensure_directory,
    load_authority,
    refuse_existing,
    utc_now,
    write_file,
)

__all__ = [
    "CA_CERT",
    "CA_CRL",
    "CA_KEY",
    "DEFAULT_SANS",
    "CertificateInfo",
    "CrlInfo",
    "KeyType",
    "PkiInitResult",
    "Revocation",
    "WrittenFile",
    "describe_certificate",
    "init_ca",
    "issue_client",
    "issue_server",
    "parse_san",
    "revoke",
    "write_crl",
]

KeyType = Literal["ec", "rsa"]
"""``ec``: ECDSA on P-256 (the default); ``rsa``: RSA 3072."""

Usage = Literal["server", "client"]

SERVER_NAME = "server"
DEFAULT_SANS = ("DNS:localhost", "IP:127.0.0.1", "IP:::1")
RSA_BITS = 3072
BACKDATE = dt.timedelta(minutes=5)  # tolerate clocks slightly behind ours

# A client name is both a file stem (<name>.crt) and a CN, which may become an MQTT username.
_CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
_RESERVED_NAMES = frozenset({"ca", "server"})
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:\S+")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+")
_USAGE_NAMES = {
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
}


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    """A certificate as written: its files and what an operator wants to see about it."""

    cert: WrittenFile
    key: WrittenFile | None  # None when describing a certificate whose key we did not write
    subject: str  # RFC 4514, e.g. "CN=localhost"
    issuer: str
    sans: tuple[str, ...]  # "DNS:localhost", "IP:127.0.0.1", "email:...", "URI:..."
    usages: tuple[str, ...]  # extended key usages: "serverAuth", "clientAuth"
    is_ca: bool
    serial: int
    fingerprint_sha256: str  # upper-case hex pairs joined by ':' (as `openssl x509` shows)
    not_before: dt.datetime
    not_after: dt.datetime

    @property
    def files(self) -> tuple[WrittenFile, ...]:
        """The files written for this certificate, private key first."""
        return (self.cert,) if self.key is None else (self.key, self.cert)


@dataclass(frozen=True, slots=True)
class PkiInitResult:
    """What ``init_ca`` created: the CA and the first server certificate."""

    directory: Path
    ca: CertificateInfo
    server: CertificateInfo

    @property
    def files(self) -> tuple[WrittenFile, ...]:
        return self.ca.files + self.server.files


# ----------------------------------------------------------------- public operations


def init_ca(
    directory: Path,
    *,
    common_name: str = "Bastion Dev CA",
    days: int = 3650,
    key_type: KeyType = "ec",
    sans: Sequence[str] = (),
    server_common_name: str | None = None,
    server_days: int = 825,
    force: bool = False,
) -> PkiInitResult:
    """Create ``ca.crt``/``ca.key`` and a server certificate ``server.crt``/``server.key``.

    The server certificate carries ``DEFAULT_SANS`` plus ``sans`` (see ``parse_san``) and
    never outlives the CA. Nothing is written if any target exists, unless ``force``.
    """
    check_days(days)
    check_days(server_days)
    _check_key_type(key_type)
    _check_common_name(common_name, "CA common name")
    names = _server_names(sans)
    server_cn = server_common_name or _first_dns(names) or "localhost"
    _check_common_name(server_cn, "server common name")
    targets = [directory / CA_KEY, directory / CA_CERT]
    targets += [directory / f"{SERVER_NAME}.key", directory / f"{SERVER_NAME}.crt"]
    ensure_directory(directory)
    refuse_existing(targets, force)

    key = _new_key(key_type)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = utc_now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True, rsa_key=False), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    key_file = write_file(directory / CA_KEY, _key_pem(key), KEY_MODE, replace=force)
    cert_file = write_file(directory / CA_CERT, _cert_pem(cert), PUBLIC_MODE, replace=force)
    ca_info = describe_certificate(cert, cert_file, key_file)

    authority = Authority(directory, cert, key)
    server = _issue(
        authority,
        directory,
        SERVER_NAME,
        common_name=server_cn,
        names=names,
        usage="server",
        days=server_days,
        key_type=key_type,
        force=force,
    )
    return PkiInitResult(directory=directory, ca=ca_info, server=server)


def issue_server(
    directory: Path,
    *,
    sans: Sequence[str] = (),
    name: str = SERVER_NAME,
    common_name: str | None = None,
    days: int = 825,
    key_type: KeyType = "ec",
    out_dir: Path | None = None,
    force: bool = False,
) -> CertificateInfo:
    """(Re-)issue ``<name>.crt``/``<name>.key`` for a TLS server, signed by the CA in ``directory``.

    SANs are ``DEFAULT_SANS`` plus ``sans``; the files go to ``out_dir`` (default: the CA
    directory) and an existing pair is replaced only with ``force``.
    """
    check_days(days)
    _check_key_type(key_type)
    _check_file_stem(name, reserved=frozenset({"ca"}))
    names = _server_names(sans)
    authority = load_authority(directory)
    target = directory if out_dir is None else out_dir
    ensure_directory(target)
    refuse_existing([target / f"{name}.key", target / f"{name}.crt"], force)
    return _issue(
        authority,
        target,
        name,
        common_name=common_name or _first_dns(names) or "localhost",
        names=names,
        usage="server",
        days=days,
        key_type=key_type,
        force=force,
    )


def issue_client(
    directory: Path,
    name: str,
    *,
    days: int = 825,
    out_dir: Path | None = None,
    sans: Sequence[str] = (),
    key_type: KeyType = "ec",
    force: bool = False,
) -> CertificateInfo:
    """Issue ``<name>.crt``/``<name>.key`` with CN=name and the clientAuth usage.

    ``name`` is 1-64 characters from letters, digits, ``_ . @ -`` starting with a letter or
    digit (``ca`` and ``server`` are reserved). Signed by the CA in ``directory``; written to
    ``out_dir`` (default: the CA directory). ``sans`` are optional, parsed by ``parse_san``.
    """
    check_days(days)
    _check_key_type(key_type)
    _check_file_stem(name, reserved=_RESERVED_NAMES)
    names = _dedupe(parse_san(value) for value in sans)
    authority = load_authority(directory)
    target = directory if out_dir is None else out_dir
    ensure_directory(target)
    refuse_existing([target / f"{name}.key", target / f"{name}.crt"], force)
    return _issue(
        authority,
        target,
        name,
        common_name=name,
        names=names,
        usage="client",
        days=days,
        key_type=key_type,
        force=force,
    )


def parse_san(value: str) -> x509.GeneralName:
    """One subjectAltName from operator text.

    ``DNS:name``, ``IP:addr``, ``email:user@host`` and ``URI:scheme:...`` are explicit; a bare
    value is an IP address if it parses as one, else a DNS name (``*.`` wildcards allowed).
    """
    text = value.strip()
    prefix, sep, rest = text.partition(":")
    kind = prefix.lower() if sep else ""
    try:
        if kind == "dns":
            return x509.DNSName(_dns_name(rest))
        if kind == "ip":
            return x509.IPAddress(ipaddress.ip_address(rest.strip("[]")))
        if kind == "email":
            if not rest.isascii() or not _EMAIL.fullmatch(rest):
                raise ValueError("expected user@host in ASCII")
            return x509.RFC822Name(rest)
        if kind == "uri":
            if not rest.isascii() or not _URI.fullmatch(rest):
                raise ValueError("expected an absolute URI such as mqtts://host/ in ASCII")
            return x509.UniformResourceIdentifier(rest)
        try:
            return x509.IPAddress(ipaddress.ip_address(text.strip("[]")))
        except ValueError:
            return x509.DNSName(_dns_name(text))
    except ValueError as exc:
        raise ConfigError(f"invalid subject alternative name {value!r}: {exc}") from None


def describe_certificate(
    cert: x509.Certificate, cert_file: WrittenFile, key_file: WrittenFile | None = None
) -> CertificateInfo:
    """The operator-facing summary of ``cert`` (subject, SANs, usages, validity, fingerprint)."""
    try:
        san_ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        sans = tuple(_render_name(name) for name in san_ext.value)
    except x509.ExtensionNotFound:
        sans = ()
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        usages = tuple(_USAGE_NAMES.get(oid, oid.dotted_string) for oid in eku)
    except x509.ExtensionNotFound:
        usages = ()
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    return CertificateInfo(
        cert=cert_file,
        key=key_file,
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        sans=sans,
        usages=usages,
        is_ca=is_ca,
        serial=cert.serial_number,
        fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(":").upper(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
    )


# ----------------------------------------------------------------- certificate building


def _issue(
    authority: Authority,
    target: Path,
    stem: str,
    *,
    common_name: str,
    names: list[x509.GeneralName],
    usage: Usage,
    days: int,
    key_type: KeyType,
    force: bool,
) -> CertificateInfo:
    _check_common_name(common_name, "common name")
    key = _new_key(key_type)
    now = utc_now()
    not_after = min(now + dt.timedelta(days=days), authority.cert.not_valid_after_utc)
    eku = ExtendedKeyUsageOID.SERVER_AUTH if usage == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
    ca_ski = authority.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(authority.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _key_usage(ca=False, rsa_key=isinstance(key, rsa.RSAPrivateKey)), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(authority.key, hashes.SHA256())
    key_file = write_file(target / f"{stem}.key", _key_pem(key), KEY_MODE, replace=force)
    cert_file = write_file(target / f"{stem}.crt", _cert_pem(cert), PUBLIC_MODE, replace=force)
    return describe_certificate(cert, cert_file, key_file)


def _key_usage(*, ca: bool, rsa_key: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=rsa_key and not ca,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _new_key(key_type: KeyType) -> PrivateKey:
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


# ----------------------------------------------------------------- names and checks


def _server_names(extra: Sequence[str]) -> list[x509.GeneralName]:
    return _dedupe(parse_san(value) for value in (*DEFAULT_SANS, *extra))


def _dedupe(names: Iterable[x509.GeneralName]) -> list[x509.GeneralName]:
    seen: set[str] = set()
    unique: list[x509.GeneralName] = []
    for name in names:
        key = _render_name(name).lower()
        if key not in seen:
            seen.add(key)
            unique.append(name)
    return unique


def _first_dns(names: Sequence[x509.GeneralName]) -> str | None:
    for name in names:
        if isinstance(name, x509.DNSName) and not name.value.startswith("*"):
            return name.value
    return None


def _render_name(name: x509.GeneralName) -> str:
    if isinstance(name, x509.DNSName):
        return f"DNS:{name.value}"
    if isinstance(name, x509.IPAddress):
        return f"IP:{name.value}"
    if isinstance(name, x509.RFC822Name):
        return f"email:{name.value}"
    if isinstance(name, x509.UniformResourceIdentifier):
        return f"URI:{name.value}"
    return f"{type(name).__name__}:{name.value}"


def _dns_name(text: str) -> str:
    name = text.strip().rstrip(".")
    if not name.isascii():
        raise ValueError("non-ASCII DNS names must be given in their xn-- (punycode) form")
    labels = name.split(".")
    if len(name) > 253 or not labels:
        raise ValueError("not a DNS name")
    first = 1 if labels[0] == "*" and len(labels) > 1 else 0
    if not all(_DNS_LABEL.fullmatch(label) for label in labels[first:]):
        raise ValueError("not a DNS name (letters, digits and '-' in dot-separated labels)")
    return name


def _check_file_stem(name: str, *, reserved: frozenset[str]) -> None:
    if not _CLIENT_NAME.fullmatch(name):
        raise ConfigError(
            f"invalid name {name!r}: use 1-64 letters, digits, '_', '.', '@' or '-', "
            "starting with a letter or digit"
        )
    if name.lower() in reserved:
        raise ConfigError(f"invalid name {name!r}: it is reserved for the PKI's own files")


def _check_common_name(name: str, what: str) -> None:
    if not 1 <= len(name) <= 64 or name != name.strip():
        raise ConfigError(f"invalid {what} {name!r}: expected 1-64 characters, no outer spaces")
    if not name.isprintable():
        raise ConfigError(f"invalid {what} {name!r}: control characters are not allowed")


def _check_key_type(key_type: str) -> None:
    if key_type not in ("ec", "rsa"):
        raise ConfigError(f"invalid key type {key_type!r}: expected 'ec' or 'rsa'")
