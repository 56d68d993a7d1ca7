"""Files of the operator PKI: loading the CA from its directory and writing PEM files safely.

``security/pki.py`` (issuing) and ``security/crl.py`` (revoking) build on it. Files are
created with their final mode from the first byte (O_EXCL, or a fresh temp file + rename).
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from bastion.errors import ConfigError

__all__ = [
    "CA_CERT",
    "CA_CRL",
    "CA_KEY",
    "KEY_MODE",
    "MAX_DAYS",
    "PUBLIC_MODE",
    "Authority",
    "PrivateKey",
    "WrittenFile",
    "check_days",
    "ensure_directory",
    "load_authority",
    "load_cert",
    "read_bytes",
    "refuse_existing",
    "utc_now",
    "write_file",
]

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
CA_CRL = "ca.crl"

KEY_MODE = 0o600
PUBLIC_MODE = 0o644
DIRECTORY_MODE = 0o755
MAX_DAYS = 36_500
MAX_PEM_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class WrittenFile:
    """A file this module wrote, with the permission bits it really has (after the umask)."""

    path: Path
    mode: int


@dataclass(frozen=True, slots=True)
class Authority:
    """A CA loaded from its directory: certificate, private key and where it lives."""

    directory: Path
    cert: x509.Certificate
    key: PrivateKey


def load_authority(directory: Path) -> Authority:
    """The CA in ``directory`` (``ca.crt`` + ``ca.key``), checked to be a usable, current CA."""
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    for path in (cert_path, key_path):
        if not path.exists():
            raise ConfigError(
                f"no CA in {directory}: {path} not found "
                f"(create one with `bastion pki init {directory}`)"
            )
    cert = load_cert(cert_path, "CA certificate")
    try:
        key = serialization.load_pem_private_key(read_bytes(key_path, "CA key"), password=None)
    except TypeError:
        raise ConfigError(
            f"{key_path}: the CA key is encrypted; an unencrypted key is needed"
        ) from None
    except ValueError:
        raise ConfigError(f"{key_path}: not a PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ConfigError(f"{key_path}: unsupported key type (expected an EC or RSA key)")
    if _spki(key.public_key()) != _spki(cert.public_key()):
        raise ConfigError(f"{key_path} does not match the CA certificate {cert_path}")
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound:
        raise ConfigError(
            f"{cert_path} is not a usable CA certificate (missing extensions)"
        ) from None
    if not constraints.ca:
        raise ConfigError(f"{cert_path} is not a CA certificate (BasicConstraints CA:FALSE)")
    if cert.not_valid_after_utc <= utc_now():
        raise ConfigError(f"the CA certificate {cert_path} expired on {cert.not_valid_after_utc}")
    return Authority(directory, cert, key)


def load_cert(path: Path, what: str) -> x509.Certificate:
    """The PEM certificate at ``path``; ``what`` names it in errors."""
    data = read_bytes(path, what)
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise ConfigError(f"{path}: not a PEM certificate") from None


def read_bytes(path: Path, what: str) -> bytes:
    """The contents of a regular file of at most ``MAX_PEM_BYTES``, or a ``ConfigError``."""
    if path.exists() and not path.is_file():
        raise ConfigError(f"cannot read {what} {path}: not a regular file")
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_PEM_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} not found") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_PEM_BYTES:
        raise ConfigError(f"{what} {path} is larger than {MAX_PEM_BYTES} bytes")
    return data


def _spki(public_key: CertificatePublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# ----------------------------------------------------------------- files


def ensure_directory(directory: Path) -> None:
    """Create ``directory`` (and parents) if needed; a file in the way is a ``ConfigError``."""
    try:
        directory.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"{directory} exists and is not a directory") from None
    except OSError as exc:
        raise ConfigError(f"cannot create directory {directory}: {exc.strerror or exc}") from None


def refuse_existing(paths: Iterable[Path], force: bool) -> None:
    """Unless ``force``, fail on the first of ``paths`` that exists (dangling links count)."""
    if force:
        return
    for path in paths:
        if path.exists() or path.is_symlink():
            raise ConfigError(f"{path} already exists; refusing to overwrite it (use --force)")


def write_file(path: Path, data: bytes, mode: int, *, replace: bool) -> WrittenFile:
    """Create ``path`` with ``mode`` from the start: O_EXCL, or a fresh temp file + rename."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    flags |= getattr(os, "O_CLOEXEC", 0)
    target = path
    if replace:
        target = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(target, flags, mode)
    except FileExistsError:
        raise ConfigError(
            f"{path} already exists; refusing to overwrite it (use --force)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot create {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(target, path)
    except OSError as exc:
        if replace:
            target.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
    return WrittenFile(path=path, mode=stat.S_IMODE(path.lstat().st_mode))


def check_days(days: int) -> None:
    """A validity period must be 1 to ``MAX_DAYS`` days."""
    if not 1 <= days <= MAX_DAYS:
        raise ConfigError(f"invalid validity of {days} days: expected 1 to {MAX_DAYS}")


def utc_now() -> dt.datetime:
    """Now, in UTC, to the second (certificate times have no fractions)."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0)
