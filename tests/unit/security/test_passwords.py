"""Unit tests for ``bastion.security.passwords``: Mosquitto vectors, argon2id, errors, saving.

The ``$7$`` and ``$6$`` lines were made by Debian's ``mosquitto_passwd`` 2.0.11 (``-H sha512``
for ``$6$``); argon2 uses argon2-cffi's cheapest profile so the suite stays fast.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Literal

import argon2
import pytest
from argon2.profiles import CHEAPEST, RFC_9106_LOW_MEMORY

from bastion.errors import ConfigError
from bastion.security.passwords import PasswordFile, validate_username

# Made with: mosquitto_passwd -b pw sensor1 'temp-s3cret' (and so on; $6$ with -H sha512).
MOSQUITTO_FILE = (
    "sensor1:$7$101$rsrvoBrwVPM0bTTz$RJeDqe5y+IqJhbBwmyUy4hvSTxGEEWHTWtudraAeef7WuuNpVODLuTOV"
    "g1vQnoDrtCt8faKbf3fSQ2H2hvwYuw==\n"
    "alert service:$7$101$KzzZE7MNP7Yf7XB4$Xs+MMuXgqoBLmAHPcjW+zWJCh57RNfm5gYZQsrGrduZxcNxl2xcz"
    "vqJvUwdLAgVI1zzC8fiKCjGtSLw56EoJuw==\n"
    "legacy:$6$2L7vvP/oA3y4zOCT$ORGYI9j55Likt3Q3QnW/23b0yZnNDipLl2IZVTp9mOOzOx3xUbezqP5WX9QcE"
    "rnFzPPRaooueveFqg54401rTw==\n"
    "emptyish:$6$aWm/0IMl1xe++JX/$HkpTFTRq/r1t9GwE7v5R7MWMbipIZ/tF4hppsM1yFg7W3GjeYvwDDrX03xHj"
    "1RUokYFU/uPR3l/0bw606ARVtA==\n"
)
PASSWORDS = {
    "sensor1": b"temp-s3cret",
    "alert service": "pässwörd ü".encode(),
    "legacy": b"old-but-gold",
    "emptyish": b"x",
}
# Not from the tool (Debian's 2.0.11 has no -I): PBKDF2-HMAC-SHA512, 1000 iterations,
# salt bytes 1..12, password "rotate-me", by the algorithm mosquitto_passwd documents.
CUSTOM_ITERATIONS = (
    "custom:$7$1000$AQIDBAUGBwgJCgsM$vye0T8rZouDNvPtJ10Kd9r3kc6Hm6cPR67Y8jJDobebMqKDrNmTd+gG/"
    "XH7XiKrp4+Lz++WDdz7i2XJ7THSSmw==\n"
)
SALT_B64 = "rsrvoBrwVPM0bTTz"
HASH_B64 = (
    "RJeDqe5y+IqJhbBwmyUy4hvSTxGEEWHTWtudraAeef7WuuNpVODLuTOVg1vQnoDrtCt8faKbf3fSQ2H2hvwYuw=="
)


def cheap() -> argon2.PasswordHasher:
    return argon2.PasswordHasher.from_parameters(CHEAPEST)


class CountingHasher(argon2.PasswordHasher):
    """A cheap hasher that counts argon2 verifications (the timing-equaliser's work)."""

    def __init__(self) -> None:
        super().__init__(
            time_cost=CHEAPEST.time_cost,
            memory_cost=CHEAPEST.memory_cost,
            parallelism=CHEAPEST.parallelism,
            hash_len=CHEAPEST.hash_len,
            salt_len=CHEAPEST.salt_len,
        )
        self.verifications = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        self.verifications += 1
        return super().verify(hash, password)


def write(tmp_path: Path, text: str, name: str = "passwd") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- Mosquitto formats ------------------------------------------------------------------


def test_mosquitto_passwd_vectors_verify(tmp_path: Path) -> None:
    pw = PasswordFile.load(write(tmp_path, MOSQUITTO_FILE), hasher=cheap())
    assert list(pw) == ["sensor1", "alert service", "legacy", "emptyish"]
    for user, password in PASSWORDS.items():
        assert pw.verify(user, password), user
        assert not pw.verify(user, password + b"!"), user
        assert not pw.verify(user, b""), user
    assert pw.scheme("sensor1") == "sha512-pbkdf2"
    assert pw.scheme("legacy") == "sha512"


def test_pbkdf2_iteration_count_is_honoured() -> None:
    pw = PasswordFile.parse(CUSTOM_ITERATIONS, hasher=cheap())
    assert pw.verify("custom", b"rotate-me")
    assert not pw.verify("custom", b"rotate-me ")
    # The same salt and digest under Mosquitto's default count must not verify.
    wrong = CUSTOM_ITERATIONS.replace("$7$1000$", "$7$101$")
    assert not PasswordFile.parse(wrong, hasher=cheap()).verify("custom", b"rotate-me")


def test_mosquitto_hashes_need_rehash() -> None:
    pw = PasswordFile.parse(MOSQUITTO_FILE, hasher=cheap())
    assert pw.needs_rehash("sensor1")
    assert pw.needs_rehash("legacy")
    assert not pw.needs_rehash("nobody")


def test_whitespace_comments_and_crlf_like_mosquitto() -> None:
    text = (
        "# made by mosquitto_passwd\r\n"
        "\r\n"
        f"  sensor1 : $7$101${SALT_B64}${HASH_B64}  \r\n"
        "   # indented comment\n"
    )
    pw = PasswordFile.parse(text, hasher=cheap())
    assert list(pw) == ["sensor1"]
    assert pw.verify("sensor1", b"temp-s3cret")


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="mosquitto not installed")
def test_file_made_by_the_real_tool_now(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.touch()
    for args in (["-b"], ["-H", "sha512", "-b"]):
        user = "u" + str(len(args))
        subprocess.run(
            ["mosquitto_passwd", *args, str(path), user, "fresh pw"],
            check=True,
            capture_output=True,
            timeout=10,
        )
    pw = PasswordFile.load(path, hasher=cheap())
    assert pw.scheme("u1") == "sha512-pbkdf2"
    assert pw.scheme("u3") == "sha512"
    assert pw.verify("u1", b"fresh pw")
    assert pw.verify("u3", b"fresh pw")
    assert not pw.verify("u1", b"fresh pw2")


# --- argon2id -----------------------------------------------------------------------------


def test_argon2_round_trip_through_a_file(tmp_path: Path) -> None:
    pw = PasswordFile(hasher=cheap())
    pw.set("sensor1", b"correct horse")
    pw.set("dashboard", "ünïcode".encode())
    path = tmp_path / "passwd"
    pw.save(path)
    assert path.read_text().startswith("sensor1:$argon2id$v=19$")
    again = PasswordFile.load(path, hasher=cheap())
    assert again.verify("sensor1", b"correct horse")
    assert again.verify("dashboard", "ünïcode".encode())
    assert not again.verify("sensor1", b"correct horse ")
    assert again.scheme("sensor1") == "argon2id"
    assert not again.needs_rehash("sensor1")


def test_stronger_parameters_flag_old_argon2_hashes_for_rehash() -> None:
    weak = PasswordFile(hasher=cheap())
    weak.set("u", b"pw")
    stronger = argon2.PasswordHasher(
        time_cost=2, memory_cost=CHEAPEST.memory_cost * 2, parallelism=1
    )
    reread = PasswordFile.parse(weak.dumps(), hasher=stronger)
    assert reread.needs_rehash("u")
    assert reread.verify("u", b"pw")  # still verifies under its own parameters


def test_set_replaces_a_mosquitto_hash_in_place() -> None:
    pw = PasswordFile.parse(MOSQUITTO_FILE, hasher=cheap())
    pw.set("legacy", b"new secret")
    assert pw.scheme("legacy") == "argon2id"
    assert not pw.verify("legacy", b"old-but-gold")
    assert pw.verify("legacy", b"new secret")
    assert list(pw) == ["sensor1", "alert service", "legacy", "emptyish"]


def test_default_parameters_are_rfc9106_low_memory() -> None:
    assert argon2.PasswordHasher().time_cost == RFC_9106_LOW_MEMORY.time_cost
    assert argon2.PasswordHasher().memory_cost == RFC_9106_LOW_MEMORY.memory_cost


# --- no oracle for user existence --------------------------------------------------------


def test_unknown_user_and_wrong_password_look_the_same() -> None:
    hasher = CountingHasher()
    pw = PasswordFile.parse(MOSQUITTO_FILE, hasher=hasher)
    pw.set("modern", b"pw")
    results = {}
    for user in ("nobody", "modern", "sensor1", "legacy"):
        before = hasher.verifications
        results[user] = pw.verify(user, b"wrong")
        # Every path costs exactly one argon2 verification.
        assert hasher.verifications - before == 1, user
    assert results == {"nobody": False, "modern": False, "sensor1": False, "legacy": False}


def test_unknown_user_never_verifies_even_with_the_dummy_password() -> None:
    pw = PasswordFile(hasher=cheap())
    assert not pw.verify("nobody", b"bastion: no such user")
    assert not pw.verify("", b"")


# --- errors -------------------------------------------------------------------------------

BAD_LINES = [
    ("sensor1 $7$101$abc$def", "no ':' found"),
    (f":$7$101${SALT_B64}${HASH_B64}", "empty username"),
    ("u:", "hash is empty"),
    (f"u:$5$rounds$${SALT_B64}${HASH_B64}", "unknown hash scheme"),
    ("u:plaintext-password", "unknown hash scheme"),
    ("u:$argon2i$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA", "unknown hash scheme"),
    ("u:$argon2id$v=19$nonsense", "malformed argon2id hash"),
    (f"u:$7$abc${SALT_B64}${HASH_B64}", "iteration count is not a decimal number"),
    (f"u:$7$-5${SALT_B64}${HASH_B64}", "iteration count is not a decimal number"),
    (f"u:$7$0${SALT_B64}${HASH_B64}", "iteration count must be between 1 and"),
    (f"u:$7$99999999999${SALT_B64}${HASH_B64}", "iteration count must be between 1 and"),
    (f"u:$7$101${HASH_B64}", "$7$ hash must be"),
    (f"u:$7$101$!!notb64!!${HASH_B64}", "salt is not valid base64"),
    (f"u:$7$101${SALT_B64}${HASH_B64.rstrip('=')}", "hash is not valid base64"),
    (f"u:$7$101$AAAA${HASH_B64}", "salt must decode to 12 bytes, not 3"),
    (f"u:$7$101${SALT_B64}$AAAA", "hash must decode to 64 bytes, not 3"),
    (f"u:$6$101${SALT_B64}${HASH_B64}", "$6$ hash must be"),
    ("u:$6$ünï$x", "salt is not valid base64"),
]


@pytest.mark.parametrize(("line", "problem"), BAD_LINES)
def test_malformed_lines_name_file_line_and_problem(
    tmp_path: Path, line: str, problem: str
) -> None:
    path = write(tmp_path, f"# header\n\n{line}\n")
    with pytest.raises(ConfigError) as info:
        PasswordFile.load(path, hasher=cheap())
    message = str(info.value)
    assert message.startswith(f"{path}:3: ")
    assert problem in message
    # Never echo the hash material back into logs.
    assert SALT_B64 not in message
    assert HASH_B64[:20] not in message
    assert "plaintext-password" not in message


def test_duplicate_user_is_an_error() -> None:
    text = MOSQUITTO_FILE + f"sensor1:$7$101${SALT_B64}${HASH_B64}\n"
    with pytest.raises(ConfigError, match=r"passwd:5: user 'sensor1' is already defined on line 1"):
        PasswordFile.parse(text, source="passwd", hasher=cheap())


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read password file .*missing"):
        PasswordFile.load(tmp_path / "missing", hasher=cheap())
    with pytest.raises(ConfigError, match="cannot read password file"):
        PasswordFile.load(tmp_path, hasher=cheap())


def test_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    path.write_bytes(b"# ok\n\xff\xfe:$7$\n")
    with pytest.raises(ConfigError, match=r"passwd:2: not valid UTF-8"):
        PasswordFile.load(path, hasher=cheap())


@pytest.mark.parametrize(
    "username", ["", "a:b", "a\nb", "a\rb", "nul\x00", "#admin", " padded", "padded\t"]
)
def test_set_refuses_usernames_that_cannot_round_trip(username: str) -> None:
    pw = PasswordFile(hasher=cheap())
    with pytest.raises(ValueError):
        pw.set(username, b"pw")
    assert len(pw) == 0


def test_validate_username_accepts_ordinary_names() -> None:
    for name in ("sensor1", "alert service", "ünïcode", "a#b", "a/b"):
        validate_username(name)


# --- saving -------------------------------------------------------------------------------


def test_save_keeps_comments_order_and_formats(tmp_path: Path) -> None:
    original = (
        "# Bastion users\n"
        + MOSQUITTO_FILE.splitlines(keepends=True)[0]
        + "\n"
        + "  # sensors below\n"
        + "".join(MOSQUITTO_FILE.splitlines(keepends=True)[1:])
    )
    path = write(tmp_path, original)
    pw = PasswordFile.load(path, hasher=cheap())
    assert pw.delete("alert service")
    assert not pw.delete("alert service")
    pw.set("newcomer", b"pw")
    pw.save(path)
    lines = path.read_text().splitlines()
    assert lines[0] == "# Bastion users"
    assert lines[1].startswith("sensor1:$7$101$rsrvoBrwVPM0bTTz$")
    assert lines[2] == ""
    assert lines[3] == "  # sensors below"
    assert [line.split(":")[0] for line in lines[4:]] == ["legacy", "emptyish", "newcomer"]
    again = PasswordFile.load(path, hasher=cheap())
    assert again.verify("sensor1", b"temp-s3cret")  # untouched Mosquitto hash still verifies
    assert again.verify("newcomer", b"pw")
    assert "alert service" not in again


def test_save_is_0600_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = write(tmp_path, MOSQUITTO_FILE)
    path.chmod(0o644)
    pw = PasswordFile.load(path, hasher=cheap())
    pw.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    fresh = tmp_path / "fresh"
    PasswordFile(hasher=cheap()).save(fresh)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600
    assert fresh.read_text() == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh", "passwd"]


def test_save_replaces_atomically(tmp_path: Path) -> None:
    path = write(tmp_path, MOSQUITTO_FILE)
    before = os.stat(path).st_ino
    pw = PasswordFile.load(path, hasher=cheap())
    pw.save(path)
    assert os.stat(path).st_ino != before  # a new file renamed over the old one
    assert path.read_text() == MOSQUITTO_FILE


def test_save_failure_is_a_config_error_and_keeps_nothing(tmp_path: Path) -> None:
    pw = PasswordFile(hasher=cheap())
    with pytest.raises(ConfigError, match="cannot write password file"):
        pw.save(tmp_path / "no" / "such" / "dir" / "passwd")
    assert list(tmp_path.iterdir()) == []


def test_a_repeated_good_login_skips_the_slow_hash_and_nothing_else_does(tmp_path: Path) -> None:
    hasher = CountingHasher()
    pw = PasswordFile(hasher)
    pw.set("dev", b"right")
    legacy = PasswordFile.parse(
        "old:$7$101$YxvlGJ7qUrdC8eWh$6N0A2vfpeUFJK0xkWgOnY50uxQoUAulFOnbMa6vHJ6AL+r8mKDNRn/"
        "w2H3L3lZzPP5yAkiImye5qW4fl9OwShQ==\n",
        hasher=hasher,
    )
    hasher.verifications = 0
    assert pw.verify("dev", b"right")
    assert hasher.verifications == 1
    assert pw.verify("dev", b"right")  # remembered: no second argon2id verification
    assert hasher.verifications == 1
    assert not pw.verify("dev", b"wrong")  # a wrong password always pays the full cost
    assert not pw.verify("nobody", b"right")
    assert hasher.verifications == 3
    pw.set("dev", b"new")  # a changed password forgets the old one at once
    assert not pw.verify("dev", b"right")
    assert pw.verify("dev", b"new")
    assert pw.delete("dev")
    assert not pw.verify("dev", b"new")
    hasher.verifications = 0
    assert legacy.verify("old", b"pass0") and legacy.verify("old", b"pass0")
    assert hasher.verifications == 1  # legacy hashes too (the equaliser ran once)
