"""Smoke test of the benchmark harness (``benchmarks/run.py``) against both brokers.

Runs every scenario once in quick mode with half-second windows (about 50 s in all), Bastion
and Debian's Mosquitto side by side, and checks the output is well formed and that each
scenario moved something for each broker. No performance ratio is asserted: CI machines are
too noisy for that. A second, shorter run checks ``--profile`` writes its cProfile files.
Skipped only on a developer machine without Mosquitto; in CI (``CI`` set) it runs or fails.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Final

import pytest

REPO: Final = Path(__file__).resolve().parents[3]
RUN: Final = REPO / "benchmarks" / "run.py"
BROKERS: Final = ("bastion", "mosquitto")
QUICK_CONNECTIONS: Final = 500

# The figures a working run has above zero, per scenario.
PRIMARY: Final = {
    "fan_in": ("delivered_per_s", "accepted_per_s"),
    "fan_out": ("delivered_per_s", "accepted_per_s"),
    "qos1": ("delivered_per_s", "accepted_per_s"),
    # own_ratio: relative to qos1 of the same run; the data directory: persistence wrote it
    "qos1_durable": ("delivered_per_s", "accepted_per_s", "own_ratio", "data_dir_kib_after"),
    "latency": ("received", "delivered_per_s", "p50_ms", "p99_ms"),
    "connections": ("connected", "connections_per_s", "connect_s"),
    "tls": ("handshakes_per_s", "handshakes_per_broker_cpu_s"),
    "security": ("delivered_per_s_off", "delivered_per_s_on"),
    "flood": ("probe_received_alone", "probe_received_flood", "flood_delivered_per_s"),
}
WINDOW: Final = ["--duration", "0.5", "--warmup", "0.2"]

pytestmark = pytest.mark.timeout(300)


def _mosquitto_missing() -> bool:
    def found(name: str) -> bool:
        return shutil.which(name) is not None or Path(f"/usr/sbin/{name}").exists()

    return not (found("mosquitto") and found("mosquitto_passwd"))


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    if _mosquitto_missing() and not os.environ.get("CI"):
        pytest.skip("needs Debian's mosquitto (apt-get install mosquitto)")
    proc = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--no-save", *WINDOW, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, f"run.py exited {proc.returncode}:\n{proc.stderr[-6000:]}"
    return proc


@pytest.fixture(scope="module")
def harness() -> subprocess.CompletedProcess[str]:
    return _run("--scenarios", ",".join(PRIMARY))


@pytest.fixture(scope="module")
def rows(harness: subprocess.CompletedProcess[str]) -> dict[tuple[str, str], dict[str, object]]:
    lines = [line for line in harness.stdout.splitlines() if line.startswith("{")]
    parsed = [json.loads(line) for line in lines]
    assert all(isinstance(row, dict) for row in parsed)
    by = {(str(row["scenario"]), str(row["broker"])): row for row in parsed}
    assert len(by) == len(parsed) == len(PRIMARY) * len(BROKERS), sorted(by)
    return by


@pytest.mark.parametrize("broker", BROKERS)
@pytest.mark.parametrize("scenario", sorted(PRIMARY))
def test_scenario_row_is_well_formed_and_moved_something(
    rows: dict[tuple[str, str], dict[str, object]], scenario: str, broker: str
) -> None:
    row = rows[(scenario, broker)]
    assert isinstance(row["description"], str) and row["description"]
    assert row["runs"] == 1
    clients = row["clients"]
    assert isinstance(clients, int) and clients > 0
    lost = row["connections_lost"]
    assert isinstance(lost, list) and all(isinstance(n, int) for n in lost)
    for key, value in row.items():
        if isinstance(value, float):
            assert math.isfinite(value), (key, value)
            assert value >= 0 or key.startswith("slowdown"), (key, value)  # on may beat off
    for key in PRIMARY[scenario]:
        value = row[key]
        assert isinstance(value, int | float) and value > 0, (scenario, broker, key, value)
    if scenario == "connections":
        assert row["connected"] == QUICK_CONNECTIONS


def test_markdown_table_has_every_scenario(harness: subprocess.CompletedProcess[str]) -> None:
    out = harness.stdout
    assert "| scenario | metric | Bastion | Mosquitto | Bastion/Mosquitto |" in out
    for scenario in PRIMARY:
        assert f"\n| {scenario} | " in out, scenario
    assert "Quick mode: the connections scenario opened 500 clients" in out


def test_profile_mode_writes_pstats_and_summaries(tmp_path: Path) -> None:
    proc = _run("--profile", "--scenarios", "fan_in", "--profile-dir", str(tmp_path))
    assert '"broker": "bastion"' in proc.stdout
    assert (tmp_path / "fan_in.pstats").stat().st_size > 0
    text = (tmp_path / "fan_in.txt").read_text()
    assert "by tottime" in text and "by cumulative" in text
    assert "bastion" in text
