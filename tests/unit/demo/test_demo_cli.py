"""``bastion demo`` options and refusals (``cli/demo.py``): clear one-line errors, exit 2.

Only what fails before any process starts is checked here; the running demo is the e2e test's.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from bastion.cli.main import main


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, ["demo", *args], prog_name="bastion")


def test_help_names_every_option() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for option in ("--state-dir", "--duration", "--attack", "--host", "--port", "--interval"):
        assert option in result.stdout
    assert "--key-file" in result.stdout and "--view" in result.stdout


@pytest.mark.parametrize("duration", ["3", "-1", "100000", "soon"])
def test_bad_durations_are_usage_errors(duration: str) -> None:
    result = invoke("--duration", duration)
    assert result.exit_code == 2
    assert "--duration" in result.stderr
    assert "Traceback" not in result.output


def test_a_state_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("x")
    result = invoke("--state-dir", str(path), "--duration", "5", "--view", "plain")
    assert result.exit_code == 2, result.output
    assert re.search(r"Invalid value for '--state-dir': .* is a file", result.stderr)
    assert path.read_text() == "x"


def test_a_file_inside_the_path_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    result = invoke("--state-dir", str(tmp_path / "file" / "demo"), "--view", "plain")
    assert result.exit_code == 2, result.output
    assert re.search(r"^bastion: error: .*file/demo", result.stderr, re.MULTILINE), result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_a_foreign_directory_is_refused_untouched(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    result = invoke("--state-dir", str(tmp_path), "--view", "plain")
    assert result.exit_code == 2
    assert "was not made by `bastion demo`" in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]
