"""09 mosquitto_pub / mosquitto_sub: Eclipse's command-line clients against the broker.

mosquitto_sub's debug output is block-buffered on a pipe, but message lines are flushed, so
readiness is signalled with a retained marker message it receives right after its SUBACK.
Missing tools skip the module locally and fail it under CI=true.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from typing import IO

import pytest

from support.brokerproc import Broker, require_tool
from support.clients import Clients, unique
from support.pahoclient import V5, V311

pytestmark = pytest.mark.interop

FORMAT = "MSG|%t|%q|%r|%p"  # '@' would be strftime in -F; '%' sequences are the message fields
VERSIONS = {V311: "mqttv311", V5: "mqttv5"}
both_versions = pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])


class ToolProcess:
    """A mosquitto_sub process whose stdout lines are read by a thread into a queue."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.argv = list(argv)
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.history: list[str] = []
        self.early: list[tuple[str, int, bool, str]] = []  # arrived before the ready marker
        assert self.proc.stdout is not None
        self._reader = threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True)
        self._reader.start()

    def _pump(self, stream: IO[bytes]) -> None:
        for raw_line in iter(stream.readline, b""):
            self.lines.put(raw_line.decode("utf-8", "replace").rstrip("\n"))

    def next_message(self, timeout: float = 10.0) -> tuple[str, int, bool, str]:
        """The next ``MSG|topic|qos|retain|payload`` line as (topic, qos, retain, payload)."""
        if self.early:
            return self.early.pop(0)
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                break
            self.history.append(line)
            if line.startswith("MSG|"):
                _, topic, qos, retain, payload = line.split("|", 4)
                return topic, int(qos), retain == "1", payload
        raise AssertionError(f"no message from {self.argv[0]} in {timeout}s: {self.history}")

    def wait(self, timeout: float = 10.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.argv} still running after {timeout}s") from None

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Signal our own child by PID (never by name), then reap it."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


class Tools:
    """Runs mosquitto_pub / mosquitto_sub against one broker; cleans up what it started."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.pub_exe = require_tool("mosquitto_pub")
        self.sub_exe = require_tool("mosquitto_sub")
        self.started: list[ToolProcess] = []

    def _common(self, version: int) -> list[str]:
        return ["-h", self.broker.host, "-p", str(self.broker.port), "-V", VERSIONS[version]]

    def pub(self, version: int, *args: str, stdin: bytes | None = None) -> None:
        """Run mosquitto_pub to completion and check it succeeded."""
        argv = [self.pub_exe, *self._common(version), *args]
        result = subprocess.run(argv, input=stdin, capture_output=True, timeout=10, check=False)
        assert result.returncode == 0, f"{argv} -> {result.returncode}: {result.stderr!r}"

    def sub(self, version: int, ready_topic: str, *args: str) -> ToolProcess:
        """Start mosquitto_sub and wait until it is subscribed (it got the retained marker).

        ``ready_topic`` must hold a retained message and must not match the other filters.
        """
        argv = [self.sub_exe, *self._common(version), "-F", FORMAT, "-W", "20"]
        proc = ToolProcess([*argv, "-t", ready_topic, *args])
        self.started.append(proc)
        early: list[tuple[str, int, bool, str]] = []
        while (message := proc.next_message())[0] != ready_topic:
            early.append(message)  # e.g. queued session messages, sent before the SUBACK
        assert message[2], f"ready marker not retained: {proc.history}"
        proc.early = early
        return proc

    def close(self) -> None:
        for proc in self.started:
            proc.stop()


@pytest.fixture
def tools(broker: Broker) -> Iterator[Tools]:
    helper = Tools(broker)
    yield helper
    helper.close()


@pytest.fixture
def ready(broker: Broker, mqtt: Clients, ns: str) -> str:
    """A topic holding a retained marker, for mosquitto_sub readiness."""
    topic = f"{ns}-ready"
    mqtt.paho(broker, V5).publish(topic, b"ready", 1, retain=True)
    return topic


@both_versions
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_pub_to_sub(tools: Tools, ready: str, ns: str, version: int, qos: int) -> None:
    topic = f"{ns}/cli"
    sub = tools.sub(version, ready, "-t", topic, "-q", str(qos), "-C", "3")
    for i in range(2):
        tools.pub(version, "-t", topic, "-q", str(qos), "-m", f"hello {i}")
    assert sub.next_message() == (topic, qos, False, "hello 0")
    assert sub.next_message() == (topic, qos, False, "hello 1")
    # -C 3 counted the marker too, so mosquitto_sub exits cleanly after these
    assert sub.wait() == 0


@both_versions
def test_pub_to_paho_with_properties_and_stdin_payload(
    broker: Broker, mqtt: Clients, tools: Tools, ns: str, version: int
) -> None:
    topic = f"{ns}/cli"
    watcher = mqtt.paho(broker, V5)
    watcher.subscribe(topic, 2)
    payload = os.urandom(100_000)
    extra = ["-D", "publish", "user-property", "origin", "cli"] if version == V5 else []
    tools.pub(version, "-t", topic, "-q", "2", "-s", *extra, stdin=payload)
    msg = watcher.expect()
    assert (msg.payload, msg.qos) == (payload, 2)
    if version == V5:
        assert msg.props.get_pairs() == [("origin", "cli")]


@both_versions
def test_paho_to_sub(
    broker: Broker, mqtt: Clients, tools: Tools, ready: str, *, ns: str, version: int
) -> None:
    topic = f"{ns}/cli"
    sub = tools.sub(version, ready, "-t", f"{ns}/+", "-q", "1")
    mqtt.paho(broker, version).publish(topic, "ünïcødé ✓", 1)
    assert sub.next_message() == (topic, 1, False, "ünïcødé ✓")


@both_versions
def test_retained_round_trip(tools: Tools, ready: str, ns: str, version: int) -> None:
    topic = f"{ns}/retained"
    tools.pub(version, "-t", topic, "-q", "1", "-r", "-m", "v1")
    tools.pub(version, "-t", topic, "-q", "1", "-r", "-m", "v2")
    first = tools.sub(version, ready, "-t", topic, "-q", "1", "-C", "2")
    assert first.next_message() == (topic, 1, True, "v2")
    assert first.wait() == 0
    tools.pub(version, "-t", topic, "-q", "1", "-r", "-n")  # zero-length retained: clear it
    tools.pub(version, "-t", f"{ns}/after", "-q", "1", "-r", "-m", "sentinel")
    second = tools.sub(version, ready, "-t", topic, "-t", f"{ns}/after", "-q", "1", "-C", "2")
    # only the sentinel is still retained: the cleared topic sends nothing
    assert second.next_message() == (f"{ns}/after", 1, True, "sentinel")
    assert second.wait() == 0


@both_versions
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_will_of_killed_mosquitto_sub(
    broker: Broker,
    mqtt: Clients,
    tools: Tools,
    ready: str,
    *,
    ns: str,
    version: int,
    sig: signal.Signals,
) -> None:
    """SIGKILL: no DISCONNECT, so the will goes out. SIGINT: mosquitto_sub 2.0 disconnects
    with reason 0x04 (Disconnect with Will Message) under v5 and plainly under 3.1.1.
    """
    will_topic = f"{ns}/will"
    watcher = mqtt.paho(broker, V5)
    watcher.subscribe(will_topic, 1)
    sub = tools.sub(
        version,
        ready,
        "-t",
        f"{ns}/nothing",
        "--will-topic",
        will_topic,
        "--will-payload",
        "cli died",
        "--will-qos",
        "1",
    )
    sub.stop(sig)
    if sig == signal.SIGKILL or version == V5:
        msg = watcher.expect()
        assert (msg.topic, msg.payload, msg.qos) == (will_topic, b"cli died", 1)
    else:  # a plain DISCONNECT discards the will [MQTT-3.1.2-10]
        watcher.expect_none(0.5)


@both_versions
def test_persistent_session_queues_for_mosquitto_sub(
    tools: Tools, ready: str, ns: str, version: int
) -> None:
    topic, client_id = f"{ns}/queued", unique()
    session = ["-c", "-i", client_id, "-q", "1", "-t", topic]
    first = tools.sub(version, ready, *session)
    first.stop(signal.SIGINT)  # clean disconnect, session kept (-c)
    tools.pub(version, "-t", topic, "-q", "1", "-m", "while you were away")
    back = tools.sub(version, ready, *session, "-C", "2")
    assert back.next_message() == (topic, 1, False, "while you were away")
    assert back.wait() == 0
