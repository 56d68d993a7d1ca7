"""Runs the scripted attacker (``attacks.py``) beside the demo, in a thread of its own.

The attacks are a coroutine; giving them their own event loop in their own thread keeps the
orchestrator's loop (views, logs, children) responsive whatever an attack does, and lets
the orchestrator cancel them at Ctrl-C. Results arrive one by one as each attack ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from bastion.demo.attacks import AttackResult, AttackTarget, run_attacks
from bastion.demo.view import AttackLine

__all__ = ["AttackRunner"]


class AttackRunner:
    """One run of every attack against ``host:tls_port``; results readable at any time."""

    def __init__(
        self,
        *,
        host: str,
        tls_port: int,
        cafile: Path,
        state_dir: Path,
        credentials: Mapping[str, str],
    ) -> None:
        self._target = AttackTarget(
            host=host,
            tls_port=tls_port,
            cafile=cafile,
            state_dir=state_dir,
            credentials=dict(credentials),
            plain_port=None,
        )
        self._lock = threading.Lock()
        self._results: list[AttackLine] = []
        self._fresh: list[AttackLine] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[list[AttackResult]] | None = None
        self._thread: threading.Thread | None = None
        self.error: str | None = None
        self.started_at: float | None = None
        self.ended_at: float | None = None

    def start(self) -> None:
        """Start the attacks now (once)."""
        if self._thread is None:
            self.started_at = time.monotonic()
            self._thread = threading.Thread(target=self._main, name="demo-attacks", daemon=True)
            self._thread.start()

    @property
    def done(self) -> bool:
        """Whether the attacks have ended (or never started)."""
        return self._thread is None or not self._thread.is_alive()

    def results(self) -> list[AttackLine]:
        """Every result so far, in the order the attacks ended."""
        with self._lock:
            return list(self._results)

    def fresh(self) -> list[AttackLine]:
        """The results that arrived since the last call."""
        with self._lock:
            fresh, self._fresh = self._fresh, []
            return fresh

    def cancel(self, timeout: float) -> None:
        """Cancel what still runs and wait up to ``timeout`` s for the thread to end."""
        loop, task = self._loop, self._task
        if loop is not None and task is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(task.cancel)
        if self._thread is not None:
            self._thread.join(timeout)

    def _report(self, result: AttackResult) -> None:
        line = AttackLine(result.name, result.control, result.blocked, result.detail)
        with self._lock:
            self._results.append(line)
            self._fresh.append(line)

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._task = loop.create_task(run_attacks(self._target, self._report))
            returned = loop.run_until_complete(self._task)
            with self._lock:
                for result in returned[len(self._results) :]:  # any the attacker did not report
                    line = AttackLine(result.name, result.control, result.blocked, result.detail)
                    self._results.append(line)
                    self._fresh.append(line)
        except asyncio.CancelledError:
            self.error = "attacks cancelled before they finished"
        except Exception as exc:  # an attacker bug must not take the demo down
            self.error = f"the attacker failed: {type(exc).__name__}: {exc}"
        finally:
            self.ended_at = time.monotonic()
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
