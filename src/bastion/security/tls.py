"""TLS for the listeners: a hardened server ``ssl.SSLContext``, its reload, client identities.

``transport/`` starts each connection's TLS session (``SSLContext.wrap_bio``, see
``transport/tlslayer.py``) from ``ServerContextHolder.listener_context``, and ``runtime/``
calls ``reload()`` on SIGHUP; files come from ``security/pki.py`` or any CA.
"""

from __future__ import annotations

import datetime as dt
import re
import ssl
import threading
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

from bastion.errors import ConfigError

__all__ = [
    "TLS12_CIPHERS",
    "IdentitySource",
    "ServerContextHolder",
    "TlsMinVersion",
    "TlsReload",
    "TlsSettings",
    "build_server_context",
    "identity_from_peer_cert",
]

TlsMinVersion = Literal["1.2", "1.3"]
IdentitySource = Literal["none", "cn", "san"]

# TLS 1.2 only: ephemeral ECDH key exchange with an AEAD cipher (AES-GCM, ChaCha20-Poly1305).
# TLS 1.3 suites are OpenSSL's defaults, all AEAD: AES-256-GCM, ChaCha20-Poly1305, AES-128-GCM.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!PSK:!SRP:!DSS:@SECLEVEL=2"

_MIN_VERSIONS: dict[str, ssl.TLSVersion] = {
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
}
_HARDENING = ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
_MAX_FILE_BYTES = 1 << 20
_MAX_USERNAME_BYTES = 65_535
_CRL_BLOCK = re.compile(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", re.DOTALL)
_SAN_IDENTITY_TYPES = ("DNS", "email", "URI")  # getpeercert() names, in certificate order
_SSL_REASONS = {
    "KEY_VALUES_MISMATCH": "the private key does not match the certificate",
    "EE_KEY_TOO_SMALL": "the key is too small (RSA and DSA need at least 2048 bits)",
    "CA_MD_TOO_WEAK": "the certificate's signature algorithm is too weak",
    "NO_START_LINE": "no PEM data found",
}

_IssuerKey = (
    dsa.DSAPublicKey
    | rsa.RSAPublicKey
    | ec.EllipticCurvePublicKey
    | ed25519.Ed25519PublicKey
    | ed448.Ed448PublicKey
)


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """Everything the server context is built from (one listener's TLS table).

    ``min_version`` is ``"1.3"`` (default) or ``"1.2"``; nothing older can be configured.
    With ``cafile`` clients may present a certificate (CERT_OPTIONAL); ``require_certificate``
    makes it mandatory. ``crlfile`` (PEM, needs ``cafile``) is checked for the client's own
    certificate. ``use_identity_as_username`` takes the username from a verified client
    certificate: ``cn`` or ``san`` (see ``identity_from_peer_cert``). ``session_tickets`` off
    means no TLS 1.3 resumption, so a revoked certificate cannot ride on an old session.
    ``x509_strict`` rejects malformed client certificates (e.g. v1 certificates without
    extensions); turn it off only for legacy devices.
    """

    certfile: Path
    keyfile: Path
    cafile: Path | None = None
    min_version: TlsMinVersion = "1.3"
    require_certificate: bool = False
    use_identity_as_username: IdentitySource = "none"
    crlfile: Path | None = None
    session_tickets: bool = False
    x509_strict: bool = True

    def __post_init__(self) -> None:
        if self.min_version not in _MIN_VERSIONS:
            raise ConfigError(
                f"TLS min_version must be '1.2' or '1.3', got {self.min_version!r} "
                "(TLS 1.0, 1.1 and SSLv3 are never accepted)"
            )
        if self.use_identity_as_username not in ("none", "cn", "san"):
            raise ConfigError(
                "TLS use_identity_as_username must be 'none', 'cn' or 'san', "
                f"got {self.use_identity_as_username!r}"
            )
        if self.cafile is None:
            for needed, what in (
                (self.require_certificate, "require_certificate"),
                (self.crlfile is not None, "crlfile"),
                (self.use_identity_as_username != "none", "use_identity_as_username"),
            ):
                if needed:
                    raise ConfigError(
                        f"TLS {what} needs a cafile to verify client certificates against"
                    )


@dataclass(frozen=True, slots=True)
class TlsReload:
    """The configuration new handshakes get: what ``ServerContextHolder`` loaded last."""

    generation: int  # 1 for the first build, +1 per successful reload
    subject: str  # of the server certificate, RFC 4514
    not_after: dt.datetime
    fingerprint_sha256: str  # upper-case hex pairs joined by ':'


def build_server_context(settings: TlsSettings) -> ssl.SSLContext:
    """A new server context for ``settings``; any unusable file raises ``ConfigError``."""
    return _build(settings)[0]


class ServerContextHolder:
    """One listener's TLS configuration, reloadable without dropping connections.

    A listener keeps the one context it was given, so start every connection from
    ``listener_context`` (``wrap_bio``, as the transport does, or ``create_server``): it
    carries the protocol policy (versions, ciphers, options, verify mode and flags) and an
    ``sni_callback``, which OpenSSL runs for every ClientHello, with or without SNI, and which
    moves the connection (``SSLSocket`` or ``SSLObject``) onto ``context``, a complete context
    built from the files; the certificate, key, chain and trust store (CAs, CRLs) then come
    from it. ``reload()`` builds a fresh ``context`` (a bad file raises ``ConfigError`` and
    changes nothing), swaps the reference, and sets the policy on ``listener_context`` again.
    OpenSSL copies the policy into a connection when it starts, so both changes reach only
    later handshakes: each sees the old configuration or the new, never a mix, and
    established connections carry on (dropping revoked clients is the broker's call). A
    removed CA or a newly revoked certificate is really gone for new handshakes; calling
    ``load_cert_chain`` again on one shared context would swap the certificate but only ever
    add to its trust store.

    Reload from the event loop's thread (``loop.add_signal_handler``); a lock also keeps
    concurrent reloads in order.
    """

    def __init__(self, settings: TlsSettings) -> None:
        self._lock = threading.Lock()
        self._settings = settings
        self._context, leaf = _build(settings)
        self._current = _describe(1, leaf)
        # Policy only, no certificate and no trust store: should a handshake ever skip the
        # callback it fails instead of running on a stale configuration.
        self._listener = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        _apply_policy(self._listener, settings)
        self._listener.sni_callback = self._select

    @property
    def listener_context(self) -> ssl.SSLContext:
        return self._listener

    @property
    def context(self) -> ssl.SSLContext:
        return self._context

    @property
    def settings(self) -> TlsSettings:
        return self._settings

    @property
    def current(self) -> TlsReload:
        return self._current

    @property
    def generation(self) -> int:
        return self._current.generation

    def reload(self, settings: TlsSettings | None = None) -> TlsReload:
        """Re-read the files (of ``settings``, default the current ones) for new handshakes."""
        new = self._settings if settings is None else settings
        with self._lock:
            fresh, leaf = _build(new)  # raises before anything live changes
            _apply_policy(self._listener, new)  # setters only: cannot fail on a file
            self._context = fresh
            self._settings = new
            self._current = _describe(self._current.generation + 1, leaf)
            return self._current

    def _select(
        self, connection: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext
    ) -> None:
        connection.context = self._context


def identity_from_peer_cert(
    cert: Mapping[str, object] | bytes | None, source: IdentitySource
) -> str | None:
    """The username a verified client certificate stands for, or None.

    ``cert`` is ``getpeercert()`` (a dict) or ``getpeercert(binary_form=True)`` (DER); pass
    only certificates of a verified handshake: this function does not verify anything.
    ``cn``: the subject's commonName (None if absent or repeated). ``san``: the first
    subjectAltName of type DNS, email (rfc822Name) or URI, in certificate order; IP addresses
    and other types are skipped. A value that is empty, longer than an MQTT string or contains
    control characters gives None. ``none`` always gives None.
    """
    if source == "none" or not cert:
        return None
    if isinstance(cert, bytes):
        candidates = _der_identities(cert, source)
    else:
        candidates = _dict_identities(cert, source)
    if source == "cn":
        return _usable(candidates[0]) if len(candidates) == 1 else None
    return _usable(candidates[0]) if candidates else None


# ----------------------------------------------------------------- context configuration


def _build(settings: TlsSettings) -> tuple[ssl.SSLContext, x509.Certificate]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    leaf = _load_files(context, settings)
    _apply_policy(context, settings)
    return context, leaf


def _describe(generation: int, leaf: x509.Certificate) -> TlsReload:
    digest = leaf.fingerprint(hashes.SHA256()).hex(":").upper()
    return TlsReload(
        generation=generation,
        subject=leaf.subject.rfc4514_string(),
        not_after=leaf.not_valid_after_utc,
        fingerprint_sha256=digest,
    )


def _load_files(context: ssl.SSLContext, settings: TlsSettings) -> x509.Certificate:
    """Check every file with clear errors, then load them into a new ``context``."""
    cert_pem = _read(settings.certfile, "certfile")
    key_pem = _read(settings.keyfile, "keyfile")
    leaf = _check_pair(settings, cert_pem, key_pem)
    if settings.cafile is not None:
        cafile = settings.cafile
        cas = _load_certificates(cafile, "cafile")
        if settings.crlfile is not None:
            _check_crls(settings.crlfile, cafile, cas)
    # The SECLEVEL in the cipher string also bounds the certificate's key size.
    context.set_ciphers(TLS12_CIPHERS)
    _ssl_call(
        lambda: context.load_cert_chain(settings.certfile, settings.keyfile, password=_no_password),
        f"certfile {settings.certfile} / keyfile {settings.keyfile}",
    )
    if settings.cafile is not None:
        _ssl_call(lambda: context.load_verify_locations(cafile=cafile), f"cafile {cafile}")
    if settings.crlfile is not None:
        crlfile = settings.crlfile
        _ssl_call(lambda: context.load_verify_locations(cafile=crlfile), f"crlfile {crlfile}")
    return leaf


def _apply_policy(context: ssl.SSLContext, settings: TlsSettings) -> None:
    """Versions, ciphers, options and verification: plain setters, safe on a live context."""
    context.minimum_version = _MIN_VERSIONS[settings.min_version]
    context.maximum_version = ssl.TLSVersion.MAXIMUM_SUPPORTED
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= _HARDENING
    if settings.session_tickets:
        context.options &= ~ssl.OP_NO_TICKET
        context.num_tickets = 2
    else:
        context.options |= ssl.OP_NO_TICKET
        context.num_tickets = 0
    flags = ssl.VERIFY_X509_TRUSTED_FIRST
    if settings.x509_strict:
        flags |= ssl.VERIFY_X509_STRICT
    if settings.crlfile is not None:
        flags |= ssl.VERIFY_CRL_CHECK_LEAF
    context.verify_flags = flags
    if settings.cafile is None:
        context.verify_mode = ssl.CERT_NONE
    elif settings.require_certificate:
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context.verify_mode = ssl.CERT_OPTIONAL


def _no_password() -> bytes:
    # Never let OpenSSL prompt on a terminal for an encrypted key (it would hang a daemon).
    return b""


def _ssl_call(action: Callable[[], object], what: str) -> None:
    try:
        action()
    except ssl.SSLError as exc:
        problem = _SSL_REASONS.get(exc.reason or "", exc.strerror or str(exc))
        raise ConfigError(f"TLS {what}: {problem}") from None
    except OSError as exc:
        raise ConfigError(f"TLS {what}: {exc.strerror or exc}") from None


def _read(path: Path, what: str) -> bytes:
    try:
        if not path.is_file():
            problem = "file not found" if not path.exists() else "not a regular file"
            raise ConfigError(f"TLS {what} {path}: {problem}")
        with path.open("rb") as handle:
            data = handle.read(_MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"TLS {what} {path}: cannot read it ({exc.strerror or exc})") from None
    if len(data) > _MAX_FILE_BYTES:
        raise ConfigError(f"TLS {what} {path}: larger than {_MAX_FILE_BYTES} bytes")
    if b"-----BEGIN " not in data:
        raise ConfigError(f"TLS {what} {path}: not PEM (DER files must be converted to PEM)")
    return data


def _load_certificates(path: Path, what: str, data: bytes | None = None) -> list[x509.Certificate]:
    pem = _read(path, what) if data is None else data
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise ConfigError(f"TLS {what} {path}: no valid PEM certificate in it") from None
    return certs


def _check_pair(settings: TlsSettings, cert_pem: bytes, key_pem: bytes) -> x509.Certificate:
    leaf = _load_certificates(settings.certfile, "certfile", cert_pem)[0]
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise ConfigError(
            f"TLS keyfile {settings.keyfile}: the key is encrypted; Bastion needs an "
            "unencrypted key (protect it with mode 0600 instead)"
        ) from None
    except ValueError:
        raise ConfigError(f"TLS keyfile {settings.keyfile}: not a PEM private key") from None
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise ConfigError(
            f"TLS keyfile {settings.keyfile} does not match certfile {settings.certfile} "
            "(the first certificate in certfile must be the server's own)"
        )
    return leaf


def _check_crls(crlfile: Path, cafile: Path, cas: list[x509.Certificate]) -> None:
    """Every CRL must parse, come from a CA in ``cafile``, carry its signature and be current."""
    blocks = _CRL_BLOCK.findall(_read(crlfile, "crlfile"))
    if not blocks:
        raise ConfigError(f"TLS crlfile {crlfile}: no PEM CRL (X509 CRL) in it")
    now = dt.datetime.now(dt.UTC)
    for block in blocks:
        try:
            crl = x509.load_pem_x509_crl(block)
        except ValueError:
            raise ConfigError(f"TLS crlfile {crlfile}: a CRL in it does not parse") from None
        issuer = crl.issuer.rfc4514_string()
        signers = [ca for ca in cas if ca.subject == crl.issuer]
        keys = [ca.public_key() for ca in signers]
        if not any(isinstance(k, _IssuerKey) and crl.is_signature_valid(k) for k in keys):
            raise ConfigError(
                f"TLS crlfile {crlfile}: the CRL of {issuer} is not signed by a CA in {cafile}"
            )
        if crl.next_update_utc is not None and crl.next_update_utc <= now:
            raise ConfigError(
                f"TLS crlfile {crlfile}: the CRL of {issuer} expired on "
                f"{crl.next_update_utc:%Y-%m-%d %H:%M} UTC (refresh it: bastion pki crl)"
            )


# ----------------------------------------------------------------- identities


def _dict_identities(cert: Mapping[str, object], source: IdentitySource) -> list[str]:
    if source == "cn":
        pairs = [pair for rdn in _tuple(cert.get("subject")) for pair in _pairs(rdn)]
        return [value for key, value in pairs if key == "commonName"]
    pairs = _pairs(cert.get("subjectAltName"))
    return [value for key, value in pairs if key in _SAN_IDENTITY_TYPES]


def _der_identities(der: bytes, source: IdentitySource) -> list[str]:
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return []
    if source == "cn":
        values = [attr.value for attr in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        return [value if isinstance(value, str) else "" for value in values]
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return []
    return [
        name.value
        for name in names
        if isinstance(name, x509.DNSName | x509.RFC822Name | x509.UniformResourceIdentifier)
    ]


def _tuple(value: object) -> tuple[object, ...]:
    return value if isinstance(value, tuple) else ()


def _pairs(value: object) -> list[tuple[str, str]]:
    """The ``(name, value)`` string pairs of a ``getpeercert()`` field; anything else skipped."""
    pairs: list[tuple[str, str]] = []
    for item in _tuple(value):
        pair = _tuple(item)
        if len(pair) == 2 and isinstance(pair[0], str) and isinstance(pair[1], str):
            pairs.append((pair[0], pair[1]))
    return pairs


def _usable(identity: str) -> str | None:
    try:
        size = len(identity.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates
        return None
    if size == 0 or size > _MAX_USERNAME_BYTES:
        return None
    if any(unicodedata.category(ch) == "Cc" for ch in identity):
        return None
    return identity
