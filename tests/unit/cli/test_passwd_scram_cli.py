"""CLI tests for ``bastion passwd --scram`` (click's CliRunner): SCRAM-SHA-256 lines."""

from __future__ import annotations

import stat
from pathlib import Path

from click.testing import CliRunner

from bastion.cli.main import main
from bastion.security.passwords import PasswordFile
from bastion.security.scram import DEFAULT_ITERATIONS


def _run(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), input=stdin)
    return result.exit_code, result.stdout, result.stderr


def test_passwd_scram_writes_a_scram_line(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    code, _, err = _run(
        "passwd", str(path), "device1", "--scram", "--password-stdin", stdin="pencil\n"
    )
    assert code == 0, err
    assert "added user 'device1'" in err and "(scram-sha-256)" in err
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().startswith(f"device1:$scram-sha-256${DEFAULT_ITERATIONS}$")
    pw = PasswordFile.load(path)
    assert pw.scram_credential("device1") is not None
    assert pw.verify("device1", b"pencil")  # plain CONNECT passwords keep working


def test_passwd_scram_keeps_other_users_and_can_switch_back(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    assert _run("passwd", str(path), "a", "--password-stdin", stdin="one\n")[0] == 0
    assert _run("passwd", str(path), "b", "--scram", "--password-stdin", stdin="two\n")[0] == 0
    code, _, err = _run("passwd", str(path), "a", "--scram", "--password-stdin", stdin="three\n")
    assert code == 0 and "updated user 'a'" in err
    pw = PasswordFile.load(path)
    assert list(pw) == ["a", "b"]
    assert pw.scheme("a") == pw.scheme("b") == "scram-sha-256"
    assert _run("passwd", str(path), "a", "--password-stdin", stdin="four\n")[0] == 0
    assert PasswordFile.load(path).scheme("a") == "argon2id"


def test_passwd_scram_with_delete_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    assert _run("passwd", str(path), "a", "--scram", "--password-stdin", stdin="x\n")[0] == 0
    code, _, err = _run("passwd", str(path), "a", "--scram", "-D")
    assert code == 2 and "--scram and -D" in err
    assert "a" in PasswordFile.load(path)
