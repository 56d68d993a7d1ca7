"""The hardened deployment the security suite attacks: its users, ACL, certificates and settings.

Passwords are hashed by the real ``mosquitto_passwd`` (Bastion must read that file unchanged),
the ACL is a Mosquitto ``acl_file``, certificates come from ``bastion pki``. The same files
configure mosquitto under ``BASTION_TEST_BROKER=mosquitto``. Used by ``conftest.py``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypedDict

from support.brokerproc import BrokerSetup, TlsListener, bastion_cli, require_tool
from support.settings import SettingValue, toml_from

ALICE: Final = "alice"  # reads and writes sec/alice/#, reads sec/shared/# but not its secrets
BOB: Final = "bob"  # another device: sec/bob/#, may write (not read) sec/shared/#
ADMIN: Final = "admin"  # reads and writes sec/#, the only one granted $SYS/#
CAROL: Final = "carol"  # has an account and no rules: only the patterns apply
# One account per test that makes logins fail, so back-off and bans never cross tests.
DEVICES: Final = tuple(f"device{n}" for n in range(1, 9))
LEGACY: Final = "legacy"  # a Mosquitto 1.x "$6$" (salted SHA-512) hash

PASSWORDS: Final[Mapping[str, str]] = {
    ALICE: "alice: correct horse",
    BOB: "bob: battery staple",
    ADMIN: "admin: 7 long words",
    CAROL: "carol: no rules",
    **{device: f"{device}: secret" for device in DEVICES},
}
LEGACY_PASSWORD: Final = "legacy: sha512"

# Mosquitto acl_file syntax, deny by default. Tests use a fresh sub-topic each (sec/alice/<ns>).
ACL_TEXT: Final = """\
# Bastion security suite. Nothing before the first `user` line: anonymous clients get nothing.

user alice
topic readwrite sec/alice/#
topic read sec/shared/#
topic deny sec/shared/+/secret/#

user bob
topic readwrite sec/bob/#
topic write sec/shared/#

user admin
topic readwrite sec/#
topic read $SYS/#

user legacy
topic readwrite sec/legacy/#

# Every client may use a subtree named after its client id, every user one named after it.
pattern readwrite sec/clients/%c/#
pattern readwrite sec/users/%u/#
"""

# Settings of the hardened broker beyond the command line (Bastion TOML, dotted names).
HARDENED_SETTINGS: Final[Mapping[str, SettingValue]] = {
    "security.client_id_patterns": ["%u", "%u-*"],
    "mqtt.sys_interval": 1.0,
}
HARDENED_MOSQUITTO: Final = "sys_interval 1\n"


def legacy_sha512_line(user: str, password: str, salt: bytes) -> str:
    """A Mosquitto 1.x password line: ``user:$6$<b64 salt>$<b64 sha512(password + salt)>``."""
    digest = hashlib.sha512(password.encode() + salt).digest()
    return f"{user}:$6${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def mosquitto_passwd(password_file: Path, user: str, password: str) -> None:
    """Add or update ``user`` with the real ``mosquitto_passwd -b`` (PBKDF2-SHA512, ``$7$``)."""
    exe = require_tool("mosquitto_passwd", "mosquitto")
    args = [exe, "-b", str(password_file), user, password]
    if not password_file.exists():
        args.insert(1, "-c")
    _run(args)


def mosquitto_passwd_delete(password_file: Path, user: str) -> None:
    _run([require_tool("mosquitto_passwd", "mosquitto"), "-D", str(password_file), user])


def bastion_passwd(password_file: Path, user: str, password: str) -> None:
    """``bastion passwd FILE USER --password-stdin`` (argon2id)."""
    _run([*bastion_cli(), "passwd", str(password_file), user, "--password-stdin"], password)


def _run(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        args, input=stdin, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, (
        f"{' '.join(args[:3])} ... exited {result.returncode}\n{result.stdout}{result.stderr}"
    )
    return result


@dataclass(frozen=True, slots=True)
class Credentials:
    """The password file and ACL file of the deployment (session-wide, never modified)."""

    password_file: Path
    acl_file: Path

    def setup(
        self,
        *,
        allow_anonymous: bool = False,
        tls: TlsListener | None = None,
        password_file: Path | None = None,
    ) -> BrokerSetup:
        """The hardened broker setup: these files, anonymous refused unless asked for."""
        return BrokerSetup(
            allow_anonymous=allow_anonymous,
            password_file=password_file or self.password_file,
            acl_file=self.acl_file,
            tls=tls,
        )

    def copy_password_file(self, directory: Path) -> Path:
        """A private copy, for a test that edits it and reloads the broker."""
        directory.mkdir(parents=True, exist_ok=True)
        copy = directory / "passwd"
        shutil.copyfile(self.password_file, copy)
        os.chmod(copy, 0o600)
        return copy


def write_credentials(directory: Path) -> Credentials:
    directory.mkdir(parents=True, exist_ok=True)
    password_file = directory / "passwd"
    for user, password in PASSWORDS.items():
        mosquitto_passwd(password_file, user, password)
    with password_file.open("a") as out:
        out.write(legacy_sha512_line(LEGACY, LEGACY_PASSWORD, b"bastion-salt") + "\n")
    os.chmod(password_file, 0o600)
    acl_file = directory / "acl"
    acl_file.write_text(ACL_TEXT)
    return Credentials(password_file, acl_file)


@dataclass(frozen=True, slots=True)
class Pki:
    """Certificates made by ``bastion pki init DIR`` and ``bastion pki client NAME --dir DIR``."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.crt"

    def client(self, name: str) -> tuple[Path, Path]:
        """(certificate, key) of client ``name``."""
        return self.directory / f"{name}.crt", self.directory / f"{name}.key"

    def listener(
        self,
        *,
        cafile: bool = False,
        require_certificate: bool = False,
        min_version: str | None = None,
    ) -> TlsListener:
        return TlsListener(
            certfile=self.directory / "server.crt",
            keyfile=self.directory / "server.key",
            cafile=self.ca if cafile or require_certificate else None,
            require_certificate=require_certificate,
            min_version=min_version,
        )


def make_pki(directory: Path, clients: tuple[str, ...]) -> Pki:
    _run([*bastion_cli(), "pki", "init", str(directory)])
    for name in clients:
        _run([*bastion_cli(), "pki", "client", name, "--dir", str(directory)])
    return Pki(directory)


class BrokerConfig(TypedDict):
    """Keyword arguments of ``start_broker`` / ``BrokerFactory`` for the settings files."""

    bastion_toml: str
    mosquitto_conf: str


def hardened_config(extra: Mapping[str, SettingValue] | None = None) -> BrokerConfig:
    """``broker_factory`` keyword arguments for the hardened settings plus ``extra``.

    ``extra`` holds Bastion settings (dotted names); mosquitto has no equivalent for most, so
    tests that depend on them are Bastion-only.
    """
    settings = {**HARDENED_SETTINGS, **(extra or {})}
    return BrokerConfig(bastion_toml=toml_from(settings), mosquitto_conf=HARDENED_MOSQUITTO)


__all__ = [
    "ACL_TEXT",
    "ADMIN",
    "ALICE",
    "BOB",
    "CAROL",
    "DEVICES",
    "HARDENED_MOSQUITTO",
    "HARDENED_SETTINGS",
    "LEGACY",
    "LEGACY_PASSWORD",
    "PASSWORDS",
    "BrokerConfig",
    "Credentials",
    "Pki",
    "bastion_passwd",
    "hardened_config",
    "make_pki",
    "mosquitto_passwd",
    "mosquitto_passwd_delete",
    "write_credentials",
]
