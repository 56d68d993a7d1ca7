"""Fixtures of the crash suite: the seed that replays a run.

``BASTION_CRASH_SEED`` (decimal or 0x-hex) fixes it; otherwise every pytest session draws a
new one, shared by the control run and the kill run of that session (same traffic), and it is
printed in every failure so the run can be replayed.
"""

from __future__ import annotations

import os
import random
from collections.abc import Generator
from typing import Final

import pytest

SEED_ENV: Final = "BASTION_CRASH_SEED"


@pytest.fixture(scope="session")
def crash_seed() -> int:
    raw = os.environ.get(SEED_ENV, "").strip()
    if raw:
        return int(raw, 0)
    return random.SystemRandom().randrange(2**32)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Name the seed in the report of a failed crash test (also when it failed in setup)."""
    report = yield
    if report.failed and isinstance(item, pytest.Function) and "crash_seed" in item.funcargs:
        seed = item.funcargs["crash_seed"]
        report.sections.append(("crash seed", f"{SEED_ENV}={seed} to replay"))
    return report
