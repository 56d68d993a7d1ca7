"""Master keys: the ``KeyProvider`` seam and its local providers (key file, environment).

A master key never encrypts records: it wraps the data keys kept in the database
(``datakeys.py``), which seal the records (``crypto.py``). Providers answer four questions:
which master key is current, which ones they hold, and wrap / unwrap a data key with
associated data that binds it to its data-key id and master-key id.

Plugging in a KMS or Vault: write a class with the ``KeyProvider`` members, backed by the
service's encrypt/decrypt calls (AWS KMS ``Encrypt``/``Decrypt`` with the associated data
as encryption context, Vault transit ``encrypt``/``decrypt`` with it as ``context``), with
master ids naming the service key (an ARN, ``transit/keys/bastion``). Add
``add_master_key``/``remove_master_key`` (``RotatableKeyProvider``) only if Bastion may
create keys there; otherwise rotate in the service and run ``bastion keys rotate --master``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bastion.storage.crypto import KEY_SIZE, NONCE_SIZE, new_key
from bastion.storage.errors import KeyConfigError
from bastion.storage.layout import default_key_file

__all__ = [
    "DEFAULT_KEY_ENV",
    "KEY_FILE_FORMAT",
    "KEY_FILE_VERSION",
    "EnvKeyProvider",
    "FileKeyProvider",
    "KeyProvider",
    "LocalMasterKeys",
    "RotatableKeyProvider",
    "create_key_file",
    "master_key_id",
    "resolve_provider",
]

log = structlog.get_logger("bastion.storage")

DEFAULT_KEY_ENV = "BASTION_MASTER_KEY"
KEY_FILE_FORMAT = "bastion-master-key"
KEY_FILE_VERSION = 1
KEY_FILE_MODE = 0o600
MAX_KEY_FILE_BYTES = 64 * 1024
_PRODUCTION_HINT = (
    "production master keys belong outside the data directory: --key-file on a separate "
    f"volume, ${DEFAULT_KEY_ENV} from a secret store, or a KMS key provider"
)


@runtime_checkable
class KeyProvider(Protocol):
    """Where master keys live. Implementations must be safe to call from any one thread."""

    @property
    def description(self) -> str:
        """Where the keys come from, for messages: ``key file /srv/master.key``."""
        ...

    @property
    def current_master_id(self) -> str:
        """The master key that wraps new data keys."""
        ...

    def master_ids(self) -> frozenset[str]:
        """Every master key this provider can unwrap with."""
        ...

    def wrap(self, master_id: str, data_key: bytes, associated_data: bytes) -> bytes:
        """``data_key`` encrypted under ``master_id``, bound to ``associated_data``."""
        ...

    def unwrap(self, master_id: str, wrapped: bytes, associated_data: bytes) -> bytes:
        """The data key in ``wrapped``; ``KeyConfigError`` if unknown id or not authentic."""
        ...


@runtime_checkable
class RotatableKeyProvider(KeyProvider, Protocol):
    """A provider that can create and delete master keys itself (the key file can)."""

    def add_master_key(self) -> str:
        """Create a master key, make it current, persist; return its id."""
        ...

    def remove_master_key(self, master_id: str) -> None:
        """Delete a master key that is not current."""
        ...


def master_key_id(key: bytes) -> str:
    """``mk-`` and 16 hex digits of a SHA-256 fingerprint: the same key has the same id
    wherever it is kept (file, environment), and a wrong key never passes for the right one."""
    digest = hashlib.sha256(b"bastion-master-key-id\x00" + key).hexdigest()
    return f"mk-{digest[:16]}"


class LocalMasterKeys:
    """Master keys held in memory, wrapping with AES-256-GCM (nonce || ciphertext || tag)."""

    def __init__(self, keys: Mapping[str, bytes], current: str, description: str) -> None:
        self._keys = dict(keys)
        self._aeads = {master_id: AESGCM(key) for master_id, key in keys.items()}
        self._current = current
        self._description = description

    @property
    def description(self) -> str:
        return self._description

    @property
    def current_master_id(self) -> str:
        return self._current

    def master_ids(self) -> frozenset[str]:
        return frozenset(self._aeads)

    def wrap(self, master_id: str, data_key: bytes, associated_data: bytes) -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        return nonce + self._aead(master_id).encrypt(nonce, data_key, associated_data)

    def unwrap(self, master_id: str, wrapped: bytes, associated_data: bytes) -> bytes:
        aead = self._aead(master_id)
        try:
            return aead.decrypt(wrapped[:NONCE_SIZE], wrapped[NONCE_SIZE:], associated_data)
        except InvalidTag:
            raise KeyConfigError(
                f"a data key wrapped by master key {master_id} does not authenticate "
                f"(the database or {self._description} was altered)"
            ) from None

    def _aead(self, master_id: str) -> AESGCM:
        aead = self._aeads.get(master_id)
        if aead is None:
            raise KeyConfigError(f"{self._description} has no master key {master_id}")
        return aead


def _decode_key(text: object, where: str) -> bytes:
    if not isinstance(text, str):
        raise KeyConfigError(f"{where}: expected base64 text")
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyConfigError(f"{where}: not valid base64") from None
    if len(key) != KEY_SIZE:
        raise KeyConfigError(
            f"{where}: expected {KEY_SIZE} random bytes in base64 "
            f"(e.g. from `openssl rand -base64 32`), got {len(key)} bytes"
        )
    return key


# ----------------------------------------------------------------- environment


class EnvKeyProvider(LocalMasterKeys):
    """Master key(s) from an environment variable: base64 of 32 bytes.

    To rotate, put the new key first and the old one after a comma (``NEW,OLD``), run
    ``bastion keys rotate --master`` (which re-wraps the data keys), then drop ``,OLD``.
    """

    def __init__(
        self, name: str = DEFAULT_KEY_ENV, environ: Mapping[str, str] | None = None
    ) -> None:
        env = os.environ if environ is None else environ
        value = env.get(name, "")
        if not value.strip():
            raise KeyConfigError(f"environment variable {name} is not set")
        keys: dict[str, bytes] = {}
        for index, part in enumerate(value.split(",")):
            key = _decode_key(part, f"environment variable {name} (key {index + 1})")
            keys.setdefault(master_key_id(key), key)
        super().__init__(keys, next(iter(keys)), f"environment variable {name}")
        self.name = name


# ----------------------------------------------------------------- key file


class FileKeyProvider(LocalMasterKeys):
    """Master keys in a JSON key file (see ``KEY_FILE_FORMAT``), which it can rotate.

    The file: ``{"format": "bastion-master-key", "version": 1, "current": ID,
    "keys": {ID: BASE64}}``, where each ID is ``master_key_id`` of its key. It is refused
    if others may write it, and a warning is logged if others may read it.
    """

    def __init__(self, path: Path, *, created: bool = False) -> None:
        self.path = path
        self.created = created
        """True if this process created the file (first start without a configured key)."""
        keys, current = _read_key_file(path)
        super().__init__(keys, current, f"key file {path}")

    def unwrap(self, master_id: str, wrapped: bytes, associated_data: bytes) -> bytes:
        if master_id not in self._aeads:
            self.reload()  # another process (`bastion keys rotate --master`) may have added it
        return super().unwrap(master_id, wrapped, associated_data)

    def reload(self) -> None:
        """Read the key file again (it may have been rotated by another process)."""
        keys, current = _read_key_file(self.path)
        self._keys = keys
        self._aeads = {master_id: AESGCM(key) for master_id, key in keys.items()}
        self._current = current

    def add_master_key(self) -> str:
        self.reload()
        key = new_key()
        master_id = master_key_id(key)
        keys = {**self._keys, master_id: key}
        _replace_key_file(self.path, keys, master_id)
        self.reload()
        log.info("storage.master_key_added", path=str(self.path), master_id=master_id)
        return master_id

    def remove_master_key(self, master_id: str) -> None:
        self.reload()
        if master_id == self._current:
            raise KeyConfigError(f"master key {master_id} is current in {self.path}")
        if master_id not in self._keys:
            raise KeyConfigError(f"{self.path} has no master key {master_id}")
        keys = {key_id: key for key_id, key in self._keys.items() if key_id != master_id}
        _replace_key_file(self.path, keys, self._current)
        self.reload()


def _render_key_file(keys: Mapping[str, bytes], current: str) -> bytes:
    document = {
        "format": KEY_FILE_FORMAT,
        "version": KEY_FILE_VERSION,
        "current": current,
        "keys": {
            master_id: base64.b64encode(key).decode("ascii") for master_id, key in keys.items()
        },
    }
    return (json.dumps(document, indent=2) + "\n").encode("utf-8")


def _read_key_file(path: Path) -> tuple[dict[str, bytes], str]:
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise KeyConfigError(f"key file {path} is not a regular file")
        with path.open("rb") as handle:
            data = handle.read(MAX_KEY_FILE_BYTES + 1)
    except FileNotFoundError:
        raise KeyConfigError(f"key file {path} not found") from None
    except OSError as exc:
        raise KeyConfigError(f"cannot read key file {path}: {exc.strerror or exc}") from None
    _check_mode(path, stat.S_IMODE(info.st_mode))
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeyConfigError(f"key file {path} is larger than {MAX_KEY_FILE_BYTES} bytes")
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise KeyConfigError(f"key file {path} is not JSON (a Bastion master key file)") from None
    return _parse_key_file(path, document)


def _parse_key_file(path: Path, document: object) -> tuple[dict[str, bytes], str]:
    if not isinstance(document, dict) or document.get("format") != KEY_FILE_FORMAT:
        raise KeyConfigError(f"key file {path} is not a Bastion master key file")
    version = document.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise KeyConfigError(f"key file {path}: invalid version {version!r}")
    if version > KEY_FILE_VERSION:
        raise KeyConfigError(
            f"key file {path} has version {version}, newer than this Bastion understands "
            f"({KEY_FILE_VERSION}): upgrade Bastion"
        )
    raw_keys, current = document.get("keys"), document.get("current")
    if not isinstance(raw_keys, dict) or not raw_keys:
        raise KeyConfigError(f"key file {path}: no keys")
    keys: dict[str, bytes] = {}
    for master_id, text in raw_keys.items():
        key = _decode_key(text, f"key file {path}: key {master_id}")
        if master_key_id(key) != master_id:
            raise KeyConfigError(
                f"key file {path}: key {master_id} does not match its id (the file was edited)"
            )
        keys[master_id] = key
    if not isinstance(current, str) or current not in keys:
        raise KeyConfigError(f"key file {path}: the current key {current!r} is not in keys")
    return keys, current


def _check_mode(path: Path, mode: int) -> None:
    if mode & 0o022:
        raise KeyConfigError(
            f"key file {path} may be written by other users (mode {mode:04o}): "
            f"run `chmod 600 {path}`"
        )
    if mode & 0o044:
        log.warning(
            "storage.key_file_readable",
            path=str(path),
            mode=f"{mode:04o}",
            hint=f"chmod 600 {path}",
        )


def _write_new(path: Path, data: bytes) -> None:
    """Write ``data`` to the new file ``path``, created 0600 from the first byte."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), KEY_FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError:
        path.unlink(missing_ok=True)
        raise


def _sync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _temp_beside(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")


def _replace_key_file(path: Path, keys: Mapping[str, bytes], current: str) -> None:
    temp = _temp_beside(path)
    try:
        _write_new(temp, _render_key_file(keys, current))
        os.replace(temp, path)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise KeyConfigError(f"cannot write key file {path}: {exc.strerror or exc}") from None
    _sync_directory(path.parent)


def create_key_file(path: Path) -> FileKeyProvider:
    """A new key file at ``path`` with one random master key, mode 0600; never overwrites.

    The content is written to a temporary file and linked into place, so a concurrent
    reader sees either no file or a complete one. If another process won the race, its
    file is used.
    """
    key = new_key()
    data = _render_key_file({master_key_id(key): key}, master_key_id(key))
    temp = _temp_beside(path)
    try:
        _write_new(temp, data)
        try:
            os.link(temp, path)
        except FileExistsError:
            return FileKeyProvider(path)
        except OSError:  # no hard links on this file system: create the file in place
            _write_new(path, data)
        finally:
            temp.unlink(missing_ok=True)
    except FileExistsError:
        return FileKeyProvider(path)
    except OSError as exc:
        raise KeyConfigError(f"cannot create key file {path}: {exc.strerror or exc}") from None
    _sync_directory(path.parent)
    log.warning("storage.master_key_created", path=str(path), hint=_PRODUCTION_HINT)
    return FileKeyProvider(path, created=True)


def resolve_provider(
    data_dir: Path,
    *,
    key_file: Path | None = None,
    key_env: str = DEFAULT_KEY_ENV,
    environ: Mapping[str, str] | None = None,
    create: bool = False,
) -> KeyProvider:
    """The configured master key provider, in order: ``key_file``, ``$key_env``, the key
    file in ``data_dir`` (created with a warning when missing, if ``create``).

    Configuring both ``key_file`` and ``$key_env`` is refused as ambiguous.
    """
    env = os.environ if environ is None else environ
    from_env = bool(env.get(key_env, "").strip())
    if key_file is not None and from_env:
        raise KeyConfigError(
            f"both a key file ({key_file}) and the environment variable {key_env} are set: "
            f"use one master key source"
        )
    if key_file is not None:
        if create and not key_file.exists() and not key_file.is_symlink():
            return create_key_file(key_file)
        return FileKeyProvider(key_file)
    if from_env:
        return EnvKeyProvider(key_env, env)
    default = default_key_file(data_dir)
    if default.exists() or default.is_symlink():
        return FileKeyProvider(default)
    if not create:
        raise KeyConfigError(
            f"no master key: {default} does not exist, and neither --key-file nor ${key_env} "
            f"is set; the data in {data_dir} is encrypted under a master key: restore {default} "
            f"from your backup, or give its location with --key-file (a new key cannot read "
            f"the old data; Bastion leaves the files untouched)"
        )
    return create_key_file(default)
