"""Certificate revocation for the operator PKI: ``ca.crl`` (PEM), signed by the CA.

``security/tls.py`` checks client certificates against it (``crlfile``) and ``cli/pki.py``
runs ``revoke`` and ``write_crl``; CA loading and file writing live in ``pkifiles.py``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization

from bastion.errors import ConfigError
from bastion.security.pkifiles import (
    CA_CRL,
    PUBLIC_MODE,
    Authority,
    WrittenFile,
    check_days,
    load_authority,
    load_cert,
    read_bytes,
    utc_now,
    write_file,
)

__all__ = ["CrlInfo", "Revocation", "revoke", "write_crl"]


@dataclass(frozen=True, slots=True)
class CrlInfo:
    """A certificate revocation list as written by ``write_crl`` or ``revoke``."""

    file: WrittenFile
    issuer: str
    number: int
    revoked_serials: tuple[int, ...]
    last_update: dt.datetime
    next_update: dt.datetime


@dataclass(frozen=True, slots=True)
class Revocation:
    """The outcome of ``revoke``: which certificate, and the CRL that now lists it."""

    serial: int
    subject: str
    already_revoked: bool
    crl: CrlInfo


def write_crl(directory: Path, *, days: int = 365) -> CrlInfo:
    """Create ``ca.crl``, or re-sign it with the same entries and a fresh validity period.

    A TLS server that checks CRLs refuses every client once the CRL's next update has passed,
    so refresh it (``bastion pki crl``) before then.
    """
    return _sign_crl(load_authority(directory), days=days, add=None)


def revoke(
    directory: Path,
    cert_path: Path,
    *,
    reason: x509.ReasonFlags | None = None,
    days: int = 365,
) -> Revocation:
    """Add the certificate at ``cert_path`` to ``ca.crl`` (created if needed), re-signed.

    The certificate must have been issued by the CA in ``directory``; revoking it twice only
    refreshes the CRL.
    """
    authority = load_authority(directory)
    cert = load_cert(cert_path, "certificate")
    try:
        cert.verify_directly_issued_by(authority.cert)
    except (ValueError, TypeError, InvalidSignature):
        raise ConfigError(
            f"{cert_path} was not issued by the CA in {directory}; it cannot be revoked there"
        ) from None
    existing = _read_crl(authority)
    already = existing is not None and (
        existing.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
    )
    entry = None
    if not already:
        builder = (
            x509.RevokedCertificateBuilder()
            .serial_number(cert.serial_number)
            .revocation_date(utc_now())
        )
        if reason is not None:
            builder = builder.add_extension(x509.CRLReason(reason), critical=False)
        entry = builder.build()
    info = _sign_crl(authority, days=days, add=entry, existing=existing)
    return Revocation(
        serial=cert.serial_number,
        subject=cert.subject.rfc4514_string(),
        already_revoked=already,
        crl=info,
    )


def _sign_crl(
    authority: Authority,
    *,
    days: int,
    add: x509.RevokedCertificate | None,
    existing: x509.CertificateRevocationList | None = None,
) -> CrlInfo:
    check_days(days)
    if existing is None:
        existing = _read_crl(authority)
    now = utc_now()  # lastUpdate: never ahead, or OpenSSL ignores the CRL as "not yet valid"
    number = 1
    entries: list[x509.RevokedCertificate] = []
    if existing is not None:
        try:
            number = existing.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
            number += 1
        except x509.ExtensionNotFound:
            number = 1
        entries = list(existing)
    if add is not None:
        entries.append(add)
    ca_ski = authority.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(authority.cert.subject)
        .last_update(now)
        .next_update(now + dt.timedelta(days=days))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
    )
    for entry in entries:
        builder = builder.add_revoked_certificate(entry)
    crl = builder.sign(authority.key, hashes.SHA256())
    path = authority.directory / CA_CRL
    written = write_file(
        path, crl.public_bytes(serialization.Encoding.PEM), PUBLIC_MODE, replace=True
    )
    return CrlInfo(
        file=written,
        issuer=crl.issuer.rfc4514_string(),
        number=number,
        revoked_serials=tuple(entry.serial_number for entry in entries),
        last_update=crl.last_update_utc,
        next_update=now + dt.timedelta(days=days),
    )


def _read_crl(authority: Authority) -> x509.CertificateRevocationList | None:
    path = authority.directory / CA_CRL
    if not path.exists():
        return None
    try:
        crl = x509.load_pem_x509_crl(read_bytes(path, "CRL"))
    except ValueError:
        raise ConfigError(f"{path}: not a PEM certificate revocation list") from None
    if crl.issuer != authority.cert.subject or not crl.is_signature_valid(
        authority.key.public_key()
    ):
        raise ConfigError(f"{path} was not signed by the CA in {authority.directory}")
    return crl
