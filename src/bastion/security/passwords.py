"""Password files of ``user:hash`` lines: argon2id or SCRAM-SHA-256 written, Mosquitto's read.

Pure library, file I/O only in ``load``/``save``: ``security.policy`` asks ``verify`` at CONNECT and
``scram_credential`` for MQTT 5 SCRAM (``scram.py``); ``bastion passwd`` (cli) uses the write side.
``PasswordFile`` documents the format and timing.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import argon2
from argon2.exceptions import InvalidHashError, VerificationError

from bastion.errors import ConfigError
from bastion.security import scram
from bastion.security.scram import ScramCredential

__all__ = [
    "MAX_PBKDF2_ITERATIONS",
    "MOSQUITTO_SALT_BYTES",
    "PasswordFile",
    "validate_username",
]

MOSQUITTO_SALT_BYTES = 12
"""Salt length of ``mosquitto_passwd`` hashes; Mosquitto 2 refuses any other length."""

_SHA512_BYTES = 64
_SHA256_BYTES = 32

MAX_PBKDF2_ITERATIONS = 10_000_000
"""Upper bound on ``$7$`` iterations: a larger count would make each login a denial of service."""

_ARGON2ID_PREFIX = "$argon2id$"
_SCRAM_SCHEME = "scram-sha-256"
_DUMMY_PASSWORD = b"bastion: no such user"


@dataclass(frozen=True, slots=True)
class _Argon2Hash:
    encoded: str


@dataclass(frozen=True, slots=True)
class _MosquittoHash:
    """A decoded ``$6$`` (``iterations`` None: one SHA-512) or ``$7$`` (PBKDF2) hash."""

    encoded: str
    salt: bytes
    digest: bytes
    iterations: int | None

    def matches(self, password: bytes) -> bool:
        if self.iterations is None:
            candidate = hashlib.sha512(password + self.salt).digest()
        else:
            candidate = hashlib.pbkdf2_hmac(
                "sha512", password, self.salt, self.iterations, _SHA512_BYTES
            )
        return hmac.compare_digest(candidate, self.digest)


@dataclass(frozen=True, slots=True)
class _ScramHash:
    """A ``$scram-sha-256$`` line: usable for SCRAM and, by deriving, for plain passwords."""

    encoded: str
    credential: ScramCredential

    def matches(self, password: bytes) -> bool:
        return scram.verify_password(self.credential, password)


_Hash = _Argon2Hash | _MosquittoHash | _ScramHash
_SCHEMES = "expected $argon2id$, $scram-sha-256$, $7$ or $6$"


def validate_username(username: str) -> None:
    """Raise ``ValueError`` unless ``username`` can be stored in (and read back from) a file.

    Refused: empty names, ``:`` (the field separator), line breaks and U+0000, a leading
    ``#`` (the line would read back as a comment) and leading/trailing whitespace (which
    Mosquitto and Bastion strip when reading).
    """
    if not username:
        raise ValueError("username is empty")
    if ":" in username:
        raise ValueError("username contains ':'")
    if any(ch in username for ch in "\r\n\x00"):
        raise ValueError("username contains a line break or U+0000")
    if username.startswith("#"):
        raise ValueError("username starts with '#'")
    if username != username.strip():
        raise ValueError("username has leading or trailing whitespace")


def _b64(field: str, what: str, expected_len: int) -> bytes:
    """Decode strict standard base64 (padding required) of an exact decoded length."""
    try:
        raw = base64.b64decode(field.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError(f"{what} is not valid base64") from None
    if len(raw) != expected_len:
        raise ValueError(f"{what} must decode to {expected_len} bytes, not {len(raw)}")
    return raw


def _parse_iterations(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise ValueError("iteration count is not a decimal number")
    iterations = int(text)
    if not 1 <= iterations <= MAX_PBKDF2_ITERATIONS:
        raise ValueError(f"iteration count must be between 1 and {MAX_PBKDF2_ITERATIONS}")
    return iterations


def _parse_hash(encoded: str) -> _Hash:
    """Decode one hash field; ``ValueError`` says what is wrong without quoting the hash."""
    if not encoded:
        raise ValueError("password hash is empty")
    if encoded.startswith(_ARGON2ID_PREFIX):
        try:
            argon2.extract_parameters(encoded)
        except InvalidHashError:
            raise ValueError("malformed argon2id hash") from None
        return _Argon2Hash(encoded)
    fields = encoded.split("$")
    if fields[0] != "" or len(fields) < 2:
        raise ValueError(f"unknown hash scheme ({_SCHEMES})")
    scheme = fields[1]
    if scheme == _SCRAM_SCHEME:
        return _parse_scram(encoded, fields)
    if scheme == "7":
        if len(fields) != 5:
            raise ValueError("$7$ hash must be $7$<iterations>$<salt>$<hash>")
        iterations: int | None = _parse_iterations(fields[2])
        salt_b64, digest_b64 = fields[3], fields[4]
    elif scheme == "6":
        if len(fields) != 4:
            raise ValueError("$6$ hash must be $6$<salt>$<hash>")
        iterations = None
        salt_b64, digest_b64 = fields[2], fields[3]
    else:
        raise ValueError(f"unknown hash scheme ({_SCHEMES})")
    salt = _b64(salt_b64, "salt", MOSQUITTO_SALT_BYTES)
    digest = _b64(digest_b64, "hash", _SHA512_BYTES)
    return _MosquittoHash(encoded, salt, digest, iterations)


def _parse_scram(encoded: str, fields: list[str]) -> _ScramHash:
    if len(fields) != 6:
        raise ValueError(
            "$scram-sha-256$ hash must be "
            "$scram-sha-256$<iterations>$<salt>$<stored key>$<server key>"
        )
    iterations = _parse_iterations(fields[2])
    try:
        salt = base64.b64decode(fields[3].encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError("salt is not valid base64") from None
    stored_key = _b64(fields[4], "stored key", _SHA256_BYTES)
    server_key = _b64(fields[5], "server key", _SHA256_BYTES)
    credential = ScramCredential(salt, iterations, stored_key, server_key)  # may raise ValueError
    return _ScramHash(encoded, credential)


def _encode_scram(credential: ScramCredential) -> str:
    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode("ascii")

    return (
        f"${_SCRAM_SCHEME}${credential.iterations}${b64(credential.salt)}"
        f"${b64(credential.stored_key)}${b64(credential.server_key)}"
    )


class PasswordFile:
    """The users of one password file, their hashes, and the comment lines between them.

    File format (files made by ``mosquitto_passwd`` load unchanged):

    * one ``username:hash`` per line; blank lines and lines whose first non-blank character
      is ``#`` are comments, kept verbatim and in place when the file is saved again;
    * ``$argon2id$v=19$m=...,t=...,p=...$<salt>$<tag>`` (argon2-cffi's PHC string), what
      Bastion writes by default;
    * ``$scram-sha-256$<iterations>$<base64 salt>$<base64 stored key>$<base64 server key>``
      (``bastion passwd --scram``): the RFC 5802 credential of SCRAM-SHA-256 — PBKDF2-HMAC-
      SHA256 of the (SASLprep'd) password, ``StoredKey = SHA-256(HMAC(salted, "Client Key"))``,
      ``ServerKey = HMAC(salted, "Server Key")``, 32 bytes each; 4096 to 10,000,000
      iterations, an 8 to 64 byte salt (16 written). Such a user can log in with MQTT 5
      enhanced authentication (``SCRAM-SHA-256``) *and* with a plain CONNECT password, which
      is checked by deriving the keys again;
    * ``$7$<iterations>$<base64 salt>$<base64 hash>``: PBKDF2-HMAC-SHA512 of the password
      with the 12-byte salt, 64-byte output (``mosquitto_passwd`` 2.x, its default);
    * ``$6$<base64 salt>$<base64 hash>``: one SHA-512 of ``password || salt`` (12-byte salt;
      Mosquitto 1.6 and earlier, ``mosquitto_passwd -H sha512``).

    Base64 is the standard alphabet with padding. Whitespace around the username and the hash
    is ignored, as Mosquitto does. Duplicate users are an error (Mosquitto keeps both).

    Timing: ``verify`` always costs about one argon2id verification. An unknown user is
    checked against a dummy argon2id hash, and a ``$6$``/``$7$``/``$scram-sha-256$`` check is
    padded with the same dummy verification, so neither the answer nor (to the precision of
    argon2's own cost) the time tells an unknown user from a wrong password. Digests are
    compared with ``hmac.compare_digest``.

    New hashes use argon2-cffi's defaults, which are RFC 9106's second recommended
    ("low-memory") profile: argon2id, t=3, m=64 MiB, p=4, 16-byte salt, 32-byte tag (about
    50 ms per hash or check). Pass another ``argon2.PasswordHasher`` to change them (tests use
    ``argon2.profiles.CHEAPEST``). A ``$6$``/``$7$`` user, or one hashed with other argon2
    parameters, ``needs_rehash``: the caller may store a new hash after a successful login.
    A SCRAM user never does (an argon2id hash would end its SCRAM logins).
    """

    def __init__(self, hasher: argon2.PasswordHasher | None = None) -> None:
        self._hasher = hasher if hasher is not None else argon2.PasswordHasher()
        self._hashes: dict[str, _Hash] = {}
        # File order: a comment/blank line kept verbatim, or (None, username) for a user line.
        self._lines: list[tuple[str | None, str | None]] = []
        self._dummy = self._hasher.hash(_DUMMY_PASSWORD)
        # username -> keyed fingerprint of the password that last verified. A device that
        # reconnects with the same credentials skips the deliberately slow hash (a reconnect
        # storm of thousands of devices would otherwise take minutes); a wrong password never
        # matches it and always pays the full cost. The key lives only in this process.
        self._verified: dict[str, bytes] = {}
        self._fingerprint_key = os.urandom(32)

    # -- reading -----------------------------------------------------------------------

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], hasher: argon2.PasswordHasher | None = None
    ) -> PasswordFile:
        """Read a password file; ``ConfigError`` names ``file:line`` and the problem."""
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"cannot read password file {os.fspath(path)}: {exc.strerror}"
            ) from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            raise ConfigError(f"{os.fspath(path)}:{line}: not valid UTF-8") from None
        return cls.parse(text, source=os.fspath(path), hasher=hasher)

    @classmethod
    def parse(
        cls, text: str, source: str = "<password file>", hasher: argon2.PasswordHasher | None = None
    ) -> PasswordFile:
        """Parse the text of a password file; ``source`` names it in error messages."""
        result = cls(hasher)
        first_seen: dict[str, int] = {}
        lines = text.split("\n")
        if lines[-1] == "":
            lines.pop()  # the file's final newline
        for number, raw_line in enumerate(lines, start=1):
            raw = raw_line.removesuffix("\r")
            stripped = raw.strip()
            if not stripped or stripped.startswith("#"):
                result._lines.append((raw, None))
                continue
            where = f"{source}:{number}"
            user_field, colon, hash_field = raw.partition(":")
            if not colon:
                raise ConfigError(f"{where}: expected 'username:hash' (no ':' found)")
            username = user_field.strip()
            if not username:
                raise ConfigError(f"{where}: empty username")
            if username in first_seen:
                raise ConfigError(
                    f"{where}: user {username!r} is already defined on line {first_seen[username]}"
                )
            try:
                parsed = _parse_hash(hash_field.strip())
            except ValueError as exc:
                raise ConfigError(f"{where}: user {username!r}: {exc}") from None
            first_seen[username] = number
            result._hashes[username] = parsed
            result._lines.append((None, username))
        return result

    def __contains__(self, username: object) -> bool:
        return username in self._hashes

    def __len__(self) -> int:
        return len(self._hashes)

    def __iter__(self) -> Iterator[str]:
        """Usernames in file order."""
        return iter(list(self._hashes))

    # -- checking ----------------------------------------------------------------------

    def verify(self, username: str, password: bytes) -> bool:
        """True only if ``username`` exists and ``password`` matches its hash.

        The credentials that verified last for a user are remembered as a keyed fingerprint
        (HMAC-SHA256 under a per-process random key), so the same user and password verify
        again without the slow hash; anything else pays one argon2id verification.
        """
        entry = self._hashes.get(username)
        fingerprint = None
        if entry is not None:
            fingerprint = self._fingerprint(username, password)
            known = self._verified.get(username)
            if known is not None and hmac.compare_digest(known, fingerprint):
                return True
        if isinstance(entry, _Argon2Hash):
            ok = self._argon2_verify(entry.encoded, password)
        else:
            # Unknown user, a legacy or a SCRAM hash: spend one argon2id verification anyway.
            self._argon2_verify(self._dummy, password)
            ok = entry is not None and entry.matches(password)
        if ok and fingerprint is not None:
            self._verified[username] = fingerprint
        return ok

    def _fingerprint(self, username: str, password: bytes) -> bytes:
        message = username.encode("utf-8") + b"\0" + password
        return hmac.new(self._fingerprint_key, message, hashlib.sha256).digest()

    def _argon2_verify(self, encoded: str, password: bytes) -> bool:
        try:
            return self._hasher.verify(encoded, password)
        except (VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, username: str) -> bool:
        """Should this user's hash be replaced (legacy scheme or weaker argon2 parameters)?

        False for an unknown user.
        """
        entry = self._hashes.get(username)
        if entry is None:
            return False
        if isinstance(entry, _MosquittoHash):
            return True
        if isinstance(entry, _ScramHash):
            return False
        return self._hasher.check_needs_rehash(entry.encoded)

    def scheme(self, username: str) -> str | None:
        """``"argon2id"``, ``"scram-sha-256"``, ``"sha512-pbkdf2"`` ($7$), ``"sha512"`` ($6$),
        or None if unknown."""
        entry = self._hashes.get(username)
        if entry is None:
            return None
        if isinstance(entry, _Argon2Hash):
            return "argon2id"
        if isinstance(entry, _ScramHash):
            return _SCRAM_SCHEME
        return "sha512" if entry.iterations is None else "sha512-pbkdf2"

    def scram_credential(self, username: str) -> ScramCredential | None:
        """The user's SCRAM-SHA-256 credential; None for unknown and non-SCRAM users."""
        entry = self._hashes.get(username)
        return entry.credential if isinstance(entry, _ScramHash) else None

    @property
    def has_scram(self) -> bool:
        """True when at least one user has a SCRAM-SHA-256 credential."""
        return any(isinstance(entry, _ScramHash) for entry in self._hashes.values())

    def decoy_secret(self) -> bytes:
        """A key for SCRAM's fake salts of unknown users, derived from the file's secret hashes.

        Stable while the file is unchanged (restarts included), so an unknown name keeps its
        fake salt as a real user keeps their salt; any change to the hashes changes it.
        """
        digest = hashlib.sha256(b"bastion scram decoy key\x00")
        for entry in sorted(self._hashes.values(), key=lambda e: e.encoded):
            digest.update(entry.encoded.encode("utf-8") + b"\n")
        return digest.digest()

    # -- writing -----------------------------------------------------------------------

    def set(self, username: str, password: bytes) -> None:
        """Add or replace ``username`` with a fresh argon2id hash of ``password``.

        ``ValueError`` if the username cannot be stored (see ``validate_username``).
        """
        validate_username(username)
        encoded = self._hasher.hash(password)
        self._verified.pop(username, None)
        if username not in self._hashes:
            self._lines.append((None, username))
        self._hashes[username] = _Argon2Hash(encoded)

    def set_scram(
        self, username: str, password: bytes, *, iterations: int = scram.DEFAULT_ITERATIONS
    ) -> None:
        """Add or replace ``username`` with a fresh SCRAM-SHA-256 credential (random salt).

        ``ValueError`` if the username cannot be stored or the iteration count is out of range.
        """
        validate_username(username)
        credential = scram.derive_credential(password, iterations=iterations)
        self._verified.pop(username, None)
        if username not in self._hashes:
            self._lines.append((None, username))
        self._hashes[username] = _ScramHash(_encode_scram(credential), credential)

    def delete(self, username: str) -> bool:
        """Remove ``username``; False if there was no such user."""
        self._verified.pop(username, None)
        if self._hashes.pop(username, None) is None:
            return False
        self._lines = [line for line in self._lines if line[1] != username]
        return True

    def dumps(self) -> str:
        """The file's text: comments where they were, users in order, newline-terminated."""
        out: list[str] = []
        for comment, username in self._lines:
            if username is None:
                out.append(comment or "")
            else:
                out.append(f"{username}:{self._hashes[username].encoded}")
        return "".join(f"{line}\n" for line in out)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the file atomically, mode 0600: temp file in the same directory, fsync, rename.

        A reader sees the old file or the new one, never a mix; ``ConfigError`` on failure
        (the old file is then untouched).
        """
        target = Path(path)
        directory = target.parent
        payload = self.dumps().encode("utf-8")
        try:
            fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=".tmp")
        except OSError as exc:
            raise ConfigError(f"cannot write password file {target}: {exc.strerror}") from None
        try:
            with os.fdopen(fd, "wb") as handle:
                os.fchmod(handle.fileno(), 0o600)
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp_name, target)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
            if isinstance(exc, OSError):
                raise ConfigError(f"cannot write password file {target}: {exc.strerror}") from None
            raise
        _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable; best effort (not every platform can open a directory)."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
