"""The demo's state directory: made from nothing on the first run, reused on the next ones.

Holds a dev PKI (``security/pki.py``, as ``bastion pki`` makes it), one random password per
client of ``access.py`` (``credentials/<name>.password``, 0600) hashed into ``passwd``, the
ACL, and beside them what the broker and the logger keep (``bastion.db``, ``logger.db``,
``master.key``) and the logs. ``brokerconfig.py`` writes ``bastion.toml`` into it.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final

from argon2 import PasswordHasher
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from bastion.demo.access import CLIENTS, acl_text, client_names
from bastion.demo.errors import DemoError
from bastion.errors import ConfigError
from bastion.security import pki
from bastion.security.passwords import PasswordFile
from bastion.security.pkifiles import KEY_MODE, load_authority, load_cert, utc_now, write_file
from bastion.storage.layout import database_path, default_key_file

__all__ = ["PreparedState", "StateLayout", "prepare_state_dir"]

MARKER: Final = ".bastion-demo"
DIR_MODE: Final = 0o700
PASSWORD_BYTES: Final = 24  # 192 random bits, URL-safe base64: no shell quoting needed
MAX_CREDENTIAL_BYTES: Final = 4096
SERVER_RENEW_DAYS: Final = 7  # re-issue the server certificate when it expires sooner


@dataclass(frozen=True, slots=True)
class StateLayout:
    """Where everything of one demo lives, all under ``root``."""

    root: Path

    @property
    def marker(self) -> Path:
        return self.root / MARKER

    @property
    def pids(self) -> Path:
        """The PIDs of the running children (removed by a clean stop)."""
        return self.root / "pids.json"

    @property
    def config(self) -> Path:
        return self.root / "bastion.toml"

    @property
    def passwd(self) -> Path:
        return self.root / "passwd"

    @property
    def acl(self) -> Path:
        return self.root / "acl"

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def ca_cert(self) -> Path:
        return self.pki / pki.CA_CERT

    @property
    def server_cert(self) -> Path:
        return self.pki / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.pki / "server.key"

    @property
    def credentials(self) -> Path:
        return self.root / "credentials"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def audit_log(self) -> Path:
        return self.logs / "audit.log"

    @property
    def broker_db(self) -> Path:
        return database_path(self.root)

    @property
    def logger_db(self) -> Path:
        return self.root / "logger.db"

    @property
    def master_key(self) -> Path:
        return default_key_file(self.root)

    def credential(self, client: str) -> Path:
        """The file holding ``client``'s password (one line)."""
        return self.credentials / f"{client}.password"

    def log(self, component: str) -> Path:
        """The log file of a child process (its stderr, JSON lines)."""
        return self.logs / f"{component}.log"


@dataclass(frozen=True, slots=True)
class PreparedState:
    """A state directory ready for a run, with the passwords of every client."""

    layout: StateLayout
    passwords: Mapping[str, str]
    fresh: bool  # the directory was created by this run
    created: tuple[str, ...] = field(default=())  # what this run made, for people
    reused: tuple[str, ...] = field(default=())  # what an earlier run made and this one uses
    lock: BinaryIO | None = field(default=None, compare=False, repr=False)

    def release(self) -> None:
        """Let another run use the directory (also happens when this process ends)."""
        if self.lock is not None:
            self.lock.close()


def prepare_state_dir(
    root: Path, *, server_host: str = "127.0.0.1", hasher: PasswordHasher | None = None
) -> PreparedState:
    """Create or check ``root``: PKI, credentials, password file and ACL; ``DemoError`` if broken.

    ``server_host`` is the address clients connect to: the server certificate must name it
    (it is re-issued when it does not, or when it is about to expire). ``hasher`` overrides
    argon2id's default cost (tests use a cheap one).
    """
    layout = StateLayout(root)
    fresh = _open_root(layout)
    lock = _lock(layout)
    created: list[str] = []
    reused: list[str] = []
    try:
        _prepare_pki(layout, server_host, created, reused)
        passwords, made = _prepare_credentials(layout, created, reused)
        _prepare_passwd(layout, passwords, made, created=created, reused=reused, hasher=hasher)
        _write(layout.acl, acl_text().encode(), KEY_MODE)
        _make_dir(layout.logs)
    except BaseException:
        lock.close()
        raise
    return PreparedState(layout, passwords, fresh, tuple(created), tuple(reused), lock)


# ----------------------------------------------------------------- the directory


def _make_dir(path: Path) -> None:
    try:
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    except FileExistsError:
        raise DemoError(f"{path} exists and is not a directory") from None
    except OSError as exc:
        raise DemoError(f"cannot create directory {path}: {exc.strerror or exc}") from None
    if not path.is_dir():
        raise DemoError(f"{path} exists and is not a directory")


def _open_root(layout: StateLayout) -> bool:
    """Create the directory (0700) or accept an existing demo directory; True if new."""
    root = layout.root
    if root.exists() and not root.is_dir():
        raise DemoError(f"state directory {root} exists and is not a directory")
    fresh = not root.exists()
    if not fresh and not layout.marker.exists():
        try:
            empty = not any(root.iterdir())
        except OSError as exc:
            raise DemoError(f"cannot read state directory {root}: {exc.strerror or exc}") from None
        if not empty:
            raise DemoError(
                f"{root} is not empty and was not made by `bastion demo` (no {MARKER} in it): "
                "give a new or empty directory with --state-dir"
            )
        fresh = True
    _make_dir(root)
    try:
        if stat.S_IMODE(root.stat().st_mode) & 0o077:
            root.chmod(DIR_MODE)  # secrets live here: only the owner may enter
    except OSError as exc:
        raise DemoError(f"cannot restrict {root} to its owner: {exc.strerror or exc}") from None
    if not layout.marker.exists():
        _write(layout.marker, b"bastion demo state directory: delete it to start afresh\n", 0o644)
    return fresh


def _lock(layout: StateLayout) -> BinaryIO:
    """Hold the directory for this process: a second demo on it is refused, not mixed in."""
    try:
        handle = layout.marker.open("rb")
    except OSError as exc:
        raise DemoError(f"cannot open {layout.marker}: {exc.strerror or exc}") from None
    try:
        import fcntl  # noqa: PLC0415 - POSIX only; elsewhere the directory is not locked
    except ImportError:
        return handle
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise DemoError(
            f"another `bastion demo` is using {layout.root}: stop it first, or give this one "
            "another --state-dir"
        ) from None
    return handle


def _write(path: Path, data: bytes, mode: int) -> None:
    try:
        write_file(path, data, mode, replace=True)
    except ConfigError as exc:
        raise DemoError(str(exc)) from None


def _damaged(layout: StateLayout, problem: str, remedy: Path) -> DemoError:
    return DemoError(
        f"state directory {layout.root} is damaged: {problem}; delete {remedy} "
        f"(it is made again) or the whole directory to start afresh"
    )


# ----------------------------------------------------------------- PKI


def _prepare_pki(layout: StateLayout, host: str, created: list[str], reused: list[str]) -> None:
    ca_files = (layout.ca_cert, layout.pki / pki.CA_KEY)
    present = [path.exists() for path in ca_files]
    extra_sans = () if _default_san(host) else (host,)
    if not any(present):
        try:
            pki.init_ca(layout.pki, common_name="Bastion Demo CA", sans=extra_sans, force=True)
        except ConfigError as exc:
            raise DemoError(f"cannot create the demo PKI: {exc}") from None
        _make_private(layout.pki)
        created.append(f"a dev CA and a server certificate in {layout.pki}")
        return
    try:
        authority = load_authority(layout.pki)
    except ConfigError as exc:
        raise _damaged(layout, str(exc), layout.pki) from None
    reason = _server_cert_problem(layout, authority.cert, host)
    if reason is None:
        reused.append(f"the dev CA and server certificate in {layout.pki}")
        return
    try:
        pki.issue_server(layout.pki, sans=extra_sans, force=True)
    except ConfigError as exc:
        raise _damaged(layout, str(exc), layout.pki) from None
    reused.append(f"the dev CA in {layout.pki}")
    created.append(f"a new server certificate ({reason})")


def _make_private(directory: Path) -> None:
    try:
        directory.chmod(DIR_MODE)
    except OSError as exc:
        raise DemoError(f"cannot restrict {directory}: {exc.strerror or exc}") from None


def _default_san(host: str) -> bool:
    return host in ("localhost", "127.0.0.1", "::1")


def _server_cert_problem(layout: StateLayout, ca: x509.Certificate, host: str) -> str | None:
    """Why the server certificate must be re-issued, or None when it is fine."""
    if not (layout.server_cert.exists() and layout.server_key.exists()):
        return "it was missing"
    try:
        cert = load_cert(layout.server_cert, "server certificate")
    except ConfigError as exc:
        raise _damaged(layout, str(exc), layout.pki) from None
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return "it was not issued by the demo CA"
    remaining = cert.not_valid_after_utc - utc_now()
    if remaining.days < SERVER_RENEW_DAYS:
        return "it was about to expire"
    if not _names_host(cert, host):
        return f"it did not name {host}"
    return None


def _names_host(cert: x509.Certificate, host: str) -> bool:
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host.lower() in (name.lower() for name in sans.get_values_for_type(x509.DNSName))
    return address in sans.get_values_for_type(x509.IPAddress)


# ----------------------------------------------------------------- credentials


def _prepare_credentials(
    layout: StateLayout, created: list[str], reused: list[str]
) -> tuple[dict[str, str], bool]:
    """Every client's password, read or made; True when any was made now."""
    _make_dir(layout.credentials)
    _make_private(layout.credentials)
    passwords: dict[str, str] = {}
    made: list[str] = []
    for name in client_names():
        path = layout.credential(name)
        if path.exists() or path.is_symlink():
            passwords[name] = _read_credential(layout, path)
            continue
        password = secrets.token_urlsafe(PASSWORD_BYTES)
        _create_secret(path, (password + "\n").encode())
        passwords[name] = password
        made.append(name)
    if made:
        created.append(f"{len(made)} client passwords in {layout.credentials} ({', '.join(made)})")
    if len(made) < len(CLIENTS):
        reused.append(f"{len(CLIENTS) - len(made)} client passwords in {layout.credentials}")
    return passwords, bool(made)


def _read_credential(layout: StateLayout, path: Path) -> str:
    if not path.is_file():
        raise _damaged(layout, f"{path} is not a regular file", path)
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_CREDENTIAL_BYTES + 1)
    except OSError as exc:
        raise _damaged(layout, f"cannot read {path}: {exc.strerror or exc}", path) from None
    try:
        password = data.decode("utf-8").partition("\n")[0].strip()
    except UnicodeDecodeError:
        raise _damaged(layout, f"{path} is not UTF-8 text", path) from None
    if len(data) > MAX_CREDENTIAL_BYTES or not password:
        raise _damaged(layout, f"{path} holds no usable password", path)
    return password


def _create_secret(path: Path, data: bytes) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, KEY_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        raise DemoError(f"cannot create {path}: {exc.strerror or exc}") from None


def _prepare_passwd(
    layout: StateLayout,
    passwords: Mapping[str, str],
    new_passwords: bool,
    *,
    created: list[str],
    reused: list[str],
    hasher: PasswordHasher | None,
) -> None:
    """Hash the passwords into ``passwd`` unless it already holds exactly these users."""
    current: PasswordFile | None = None
    if layout.passwd.exists():
        try:
            current = PasswordFile.load(layout.passwd, hasher)
        except ConfigError:
            current = None  # derived from the credentials: simply made again
    if current is not None and set(current) == set(passwords) and not new_passwords:
        reused.append(f"the password file {layout.passwd}")
        return
    hashed = PasswordFile(hasher)
    for name, password in passwords.items():
        hashed.set(name, password.encode())
    try:
        hashed.save(layout.passwd)
    except ConfigError as exc:
        raise DemoError(str(exc)) from None
    created.append(f"the password file {layout.passwd} (argon2id)")
