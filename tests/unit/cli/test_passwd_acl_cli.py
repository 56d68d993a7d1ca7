"""CLI tests for ``bastion passwd`` and ``bastion acl check`` (click's CliRunner)."""

from __future__ import annotations

import stat
from pathlib import Path

from click.testing import CliRunner

from bastion.cli.main import main
from bastion.security.passwords import PasswordFile

# Made by Debian's mosquitto_passwd 2.0.11 (password "temp-s3cret"): kept byte for byte.
MOSQUITTO_LINE = (
    "sensor1:$7$101$rsrvoBrwVPM0bTTz$RJeDqe5y+IqJhbBwmyUy4hvSTxGEEWHTWtudraAeef7WuuNpVODLuTOV"
    "g1vQnoDrtCt8faKbf3fSQ2H2hvwYuw=="
)


def _run(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), input=stdin)
    return result.exit_code, result.stdout, result.stderr


def test_passwd_creates_file_with_argon2id_and_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    code, _, err = _run("passwd", str(path), "sensor1", "--password-stdin", stdin="pw-1\n")
    assert code == 0, err
    assert "added user 'sensor1'" in err
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().startswith("sensor1:$argon2id$")
    assert PasswordFile.load(path).verify("sensor1", b"pw-1")


def test_passwd_prompts_twice(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    code, _, err = _run("passwd", str(path), "u", stdin="secret\nsecret\n")
    assert code == 0, err
    assert PasswordFile.load(path).verify("u", b"secret")


def test_passwd_keeps_other_lines_and_deletes(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    path.write_text("# operators\n" + MOSQUITTO_LINE + "\n")
    assert _run("passwd", str(path), "new", "--password-stdin", stdin="x\n")[0] == 0
    text = path.read_text()
    assert text.startswith("# operators\n" + MOSQUITTO_LINE + "\n")
    code, _, err = _run("passwd", str(path), "new", "-D")
    assert code == 0, err
    assert "deleted user 'new'" in err
    assert path.read_text() == "# operators\n" + MOSQUITTO_LINE + "\n"
    assert PasswordFile.load(path).verify("sensor1", b"temp-s3cret")


def test_passwd_errors(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    code, _, err = _run("passwd", str(path), "nobody", "-D")
    assert code == 2
    assert "no user 'nobody'" in err
    code, _, err = _run("passwd", str(path), "a:b", "--password-stdin", stdin="x\n")
    assert code == 2
    assert "invalid username" in err
    code, _, err = _run("passwd", str(path), "u", "--password-stdin", stdin="\n")
    assert code == 2
    assert "the password is empty" in err
    bad = tmp_path / "bad"
    bad.write_text("no colon here\n")
    code, _, err = _run("passwd", str(bad), "u", "--password-stdin", stdin="x\n")
    assert code == 2
    assert f"{bad}:1" in err
    assert bad.read_text() == "no colon here\n"  # nothing lost


ACL = """\
topic read public/#

user sensor1
topic write temp/sensor1

user logger
topic read #
"""


def test_acl_check_names_the_deciding_rule(tmp_path: Path) -> None:
    acl = tmp_path / "acl.conf"
    acl.write_text(ACL)
    code, out, _ = _run(
        "acl",
        "check",
        "--acl-file",
        str(acl),
        "--user",
        "sensor1",
        "--topic",
        "temp/sensor1",
        "--op",
        "write",
    )
    assert code == 0
    assert out.splitlines()[0] == "ALLOW: user 'sensor1' write 'temp/sensor1'"
    assert f"{acl}:4" in out
    code, out, _ = _run(
        "acl",
        "check",
        "--acl-file",
        str(acl),
        "--user",
        "sensor1",
        "--topic",
        "#",
        "--op",
        "subscribe",
    )
    assert code == 1
    assert "denied by default" in out
    code, out, _ = _run(
        "acl", "check", "--acl-file", str(acl), "--topic", "public/news", "--op", "read"
    )
    assert code == 0
    assert "anonymous clients" in out


def test_acl_check_from_config_table(tmp_path: Path) -> None:
    config = tmp_path / "bastion.toml"
    config.write_text('[[security.acl.rules]]\nuser = "logger"\naccess = "read"\ntopic = "#"\n')
    code, out, _ = _run(
        "acl", "check", "-c", str(config), "--user", "logger", "--topic", "a/b", "--op", "read"
    )
    assert code == 0, out
    code, out, _ = _run(
        "acl", "check", "-c", str(config), "--user", "logger", "--topic", "a/b", "--op", "write"
    )
    assert code == 1


def test_acl_check_errors(tmp_path: Path) -> None:
    code, _, err = _run(
        "acl", "check", "--acl-file", str(tmp_path / "missing"), "--topic", "t", "--op", "read"
    )
    assert code == 2
    assert "missing" in err
    config = tmp_path / "empty.toml"
    config.write_text("")
    code, _, err = _run("acl", "check", "-c", str(config), "--topic", "t", "--op", "read")
    assert code == 2
    assert "no ACL configured" in err
