"""kill -9 the broker under a mixed QoS 1 + QoS 2 load, restart it on the same data directory,
and check that nothing acknowledged was lost and no QoS 2 message arrived twice.

Real broker process, real paho-mqtt 2.x clients resuming as devices do (see ``durable.py`` for
what paho re-sends on reconnect), seeded schedule (see ``scenario.py``). For every durable
subscriber and every message acknowledged to its publisher (PUBACK / PUBCOMP) that matches one
of its filters: QoS 1 arrives at least once, QoS 2 exactly once; no QoS 2 message, acknowledged
or not, arrives twice; nothing arrives that was never published; retained messages survive;
every reconnection of every durable client says session present = 1. The control run sends the
same traffic without kills and must lose and duplicate nothing.

Replay a failure with ``BASTION_CRASH_SEED=<seed> pytest tests/crash``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from support.brokerproc import bastion_only

from .scenario import RunResult, new_run, report, run_scenario, verify

pytestmark = pytest.mark.crash


def _run_and_verify(request: pytest.FixtureRequest, result: RunResult) -> None:
    try:
        run_scenario(result)
    except Exception as exc:  # a broker that did not start, a client that never connected
        pytest.fail(report(result, [f"run aborted: {exc}"], request.node.nodeid), pytrace=False)
    problems = verify(result)
    print(report(result, problems, request.node.nodeid))  # shown with -rP / -s
    assert not problems, report(result, problems, request.node.nodeid)


def test_control_run_without_kills_loses_nothing(
    tmp_path: Path, crash_seed: int, request: pytest.FixtureRequest
) -> None:
    _run_and_verify(request, new_run(tmp_path, crash_seed, kills=False))


@bastion_only("mosquitto's persistence is a periodic snapshot, not crash-safe by design")
def test_kill9_loses_nothing_acknowledged(
    tmp_path: Path, crash_seed: int, request: pytest.FixtureRequest
) -> None:
    _run_and_verify(request, new_run(tmp_path, crash_seed, kills=True))
