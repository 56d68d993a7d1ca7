"""Probe jobs for ``loadgen`` worker processes: latency, idle connections, TLS handshakes.

* ``LatencyPlan``: one client that publishes QoS 0 messages carrying their send time
  (``time.monotonic_ns``, one clock for every process on Linux) on an absolute schedule,
  and/or subscribes to the topic and records publish-to-deliver latencies.
* ``IdlePlan``: opens many idle MQTT 3.1.1 connections with bounded concurrency, tells the
  driver when every CONNACK is in, and holds them until the driver says ``close``.
* ``HandshakePlan``: concurrent clients that repeat TLS 1.3 handshake, CONNECT, CONNACK,
  DISCONNECT for the measurement window.

Each follows ``loadgen.Job``: it reports ``("ready", clients)``, waits for the driver's start
time and returns a ``loadgen.WorkerResult``. Imports nothing from Bastion; loopback only; every
loop is bounded in count and in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import struct
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Final, cast

import loadgen
from loadgen import (
    BARRIER_TIMEOUT,
    CONNECT_TIMEOUT,
    DISCONNECT,
    HOST,
    WorkerResult,
    connect_packet,
    publish_packet,
    subscribe_packet,
)

STAMP: Final = struct.Struct(">QQ")  # send time (monotonic ns), sequence number
LATE_GRACE: Final = 0.5  # seconds a subscriber keeps listening after the window
EARLY_NS: Final = 600_000  # a message due this soon is sent now (uvloop timers are 1 ms)
MAX_SAMPLES: Final = 2_000_000  # latencies kept per probe
CLOSE_WAIT: Final = 1.0  # seconds a handshake client waits for the broker to close first
MAX_ERRORS: Final = 5  # error messages kept per job
IDLE_KEEPALIVE: Final = 60

# ---------------------------------------------------------------------------------- latency


def _fixed_header(data: bytes, i: int, n: int) -> tuple[int, int] | None:
    """(header length, remaining length) of the packet at ``data[i]``; None if incomplete."""
    length = 0
    for k in range(4):
        if i + 1 + k >= n:
            return None
        byte = data[i + 1 + k]
        length |= (byte & 0x7F) << (7 * k)
        if not byte & 0x80:
            return 2 + k, length
    raise ValueError("malformed remaining length")


class StampClient(asyncio.Protocol):
    """An MQTT connection that records the latency of every stamped PUBLISH it receives."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._rest = b""
        self.transport: asyncio.Transport | None = None
        self.connack: asyncio.Future[int] = loop.create_future()
        self.suback: asyncio.Future[int] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.sent_ns: list[int] = []  # send stamps of the messages received
        self.latency_ns: list[int] = []  # and their publish-to-deliver latencies

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        for fut in (self.connack, self.suback):
            if not fut.done():
                fut.set_result(-1)
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        if self._rest:
            data = self._rest + data
        n = len(data)
        i = 0
        while i + 2 <= n:  # bounded: every pass consumes one whole packet or stops
            header = _fixed_header(data, i, n)
            if header is None:
                break
            head, length = header
            end = i + head + length
            if end > n:
                break
            kind = data[i] >> 4
            body = i + head
            if kind == 3:
                at = body + 2 + ((data[body] << 8) | data[body + 1])
                at += 2 if data[i] & 0x06 else 0
                if end - at >= STAMP.size and len(self.sent_ns) < MAX_SAMPLES:
                    stamp, _ = STAMP.unpack_from(data, at)
                    self.sent_ns.append(stamp)
                    self.latency_ns.append(now - stamp)
            elif kind == 2 and not self.connack.done():
                self.connack.set_result(data[i + 3])
            elif kind == 9 and not self.suback.done():
                self.suback.set_result(data[end - 1])
            i = end
        self._rest = data[i:]


async def paced_publish(
    transport: asyncio.Transport,
    *,
    topic: str,
    payload_size: int,
    rate: float,
    start: float,
    stop: float,
    window: tuple[float, float],
) -> int:
    """Publish QoS 0 stamped messages at ``rate``/s from ``start`` to ``stop`` (monotonic
    seconds), message k due at ``start + k / rate`` (an absolute schedule: no drift; a late
    loop catches up at once). The stamp is taken when the message is written. Returns how many
    messages were stamped inside ``window``."""
    size = max(payload_size, STAMP.size)
    header = publish_packet(topic, bytes(size))[:-size]
    pad = bytes(size - STAMP.size)
    interval = 1e9 / rate
    start_ns, stop_ns = int(start * 1e9), int(stop * 1e9)
    t0_ns, t1_ns = int(window[0] * 1e9), int(window[1] * 1e9)
    total = int((stop - start) * rate)
    sent = in_window = 0
    for _ in range(total * 50 + 10_000):  # each pass sends, or sleeps until a message is due
        now = time.monotonic_ns()
        if sent >= total or now > stop_ns + 1_000_000_000 or transport.is_closing():
            break
        due = start_ns + int(sent * interval)
        if due - now > EARLY_NS:
            await asyncio.sleep((due - now) / 1e9)
            continue
        chunks = []
        for _ in range(total - sent):  # every message due by now (normally one)
            if start_ns + int(sent * interval) - now > EARLY_NS:
                break
            stamp = time.monotonic_ns()
            chunks.append(header + STAMP.pack(stamp, sent) + pad)
            in_window += t0_ns <= stamp < t1_ns
            sent += 1
        transport.write(b"".join(chunks))
    return in_window


@dataclass(frozen=True, slots=True)
class LatencyPlan:
    """One probe client: publishes ``rate`` msgs/s to ``topic`` (0: does not publish) and/or
    subscribes to it and records the latencies of messages stamped inside the window."""

    port: int
    client_id: str
    topic: str
    rate: float
    subscribe: bool
    payload_size: int
    warmup: float
    duration: float

    def deadline(self) -> float:
        return CONNECT_TIMEOUT * 3 + BARRIER_TIMEOUT + self.warmup + self.duration + 15.0

    async def run(self, conn: Connection) -> WorkerResult:
        result = WorkerResult(pid=os.getpid())
        loop = asyncio.get_running_loop()
        _, proto = await asyncio.wait_for(
            loop.create_connection(lambda: StampClient(loop), HOST, self.port), CONNECT_TIMEOUT
        )
        assert isinstance(proto, StampClient) and proto.transport is not None
        transport = proto.transport
        transport.write(connect_packet(self.client_id))
        if await asyncio.wait_for(proto.connack, CONNECT_TIMEOUT) != 0:
            raise ConnectionError(f"{self.client_id}: CONNACK refused")
        if self.subscribe:
            transport.write(subscribe_packet(1, self.topic, 0))
            if await asyncio.wait_for(proto.suback, CONNECT_TIMEOUT) not in (0, 1, 2):
                raise ConnectionError(f"{self.client_id}: SUBACK refused")
        result.connected = 1
        conn.send(("ready", 1))
        go = await loadgen.recv(conn, BARRIER_TIMEOUT)
        assert isinstance(go, float)
        t0, t1 = go + self.warmup, go + self.warmup + self.duration
        await asyncio.sleep(max(0.0, go - time.monotonic()))
        if self.rate > 0:
            result.published = await paced_publish(
                transport,
                topic=self.topic,
                payload_size=self.payload_size,
                rate=self.rate,
                start=go,
                stop=t1,
                window=(t0, t1),
            )
        await asyncio.sleep(max(0.0, t1 + (LATE_GRACE if self.subscribe else 0) - time.monotonic()))
        t0_ns, t1_ns = int(t0 * 1e9), int(t1 * 1e9)
        result.samples = [
            lat / 1e6
            for sent, lat in zip(proto.sent_ns, proto.latency_ns, strict=True)
            if t0_ns <= sent < t1_ns
        ]
        result.delivered = len(result.samples)
        result.t0, result.t1 = t0, t1
        result.lost = int(proto.closed.done())
        if not transport.is_closing():
            transport.write(DISCONNECT)
            transport.close()
        return result


# ---------------------------------------------------------------------------------- idle


@dataclass(frozen=True, slots=True)
class IdlePlan:
    """``count`` idle clients (clean session, keep-alive ``IDLE_KEEPALIVE`` s) opened at most
    ``concurrency`` at a time from the start time; then ``("connected", (n, monotonic time
    the last CONNACK came))`` to the driver, and the connections are held until its ``close``
    (at most ``hold`` seconds)."""

    port: int
    prefix: str
    count: int
    concurrency: int
    hold: float = 120.0

    def deadline(self) -> float:
        return BARRIER_TIMEOUT + CONNECT_TIMEOUT * (self.count / self.concurrency + 2) + self.hold

    async def run(self, conn: Connection) -> WorkerResult:
        loadgen.raise_nofile()
        result = WorkerResult(pid=os.getpid())
        loop = asyncio.get_running_loop()
        conn.send(("ready", 0))
        go = await loadgen.recv(conn, BARRIER_TIMEOUT)
        assert isinstance(go, float)
        await asyncio.sleep(max(0.0, go - time.monotonic()))
        gate = asyncio.Semaphore(self.concurrency)

        async def one(i: int) -> loadgen.Client | None:
            async with gate:
                try:
                    return await loadgen.open_client(
                        loop, self.port, f"{self.prefix}-{i}", keepalive=IDLE_KEEPALIVE
                    )
                except (OSError, TimeoutError, ConnectionError) as exc:
                    if len(result.errors) < MAX_ERRORS:
                        result.errors.append(f"client {i}: {type(exc).__name__}: {exc}")
                    return None

        opened = await asyncio.gather(*(one(i) for i in range(self.count)))
        done = time.monotonic()
        clients = [c for c in opened if c is not None]
        result.connected = len(clients)
        if len(clients) < self.count:
            result.errors.append(f"{self.count - len(clients)} of {self.count} did not connect")
        result.t0, result.t1 = go, done
        conn.send(("connected", (len(clients), done)))
        with contextlib.suppress(TimeoutError):
            await loadgen.recv(conn, self.hold)  # the driver's "close"
        result.lost = sum(c.closed.done() for c in clients)
        for client in clients:
            if client.transport is not None and not client.transport.is_closing():
                client.transport.write(DISCONNECT)
                client.transport.close()
        return result


# ---------------------------------------------------------------------------------- tls


async def handshake_once(
    loop: asyncio.AbstractEventLoop, port: int, context: ssl.SSLContext, client_id: str
) -> None:
    """A full TLS 1.3 handshake, CONNECT, CONNACK, DISCONNECT; the broker closes first."""
    client = await loadgen.open_client(loop, port, client_id, ssl_context=context)
    assert client.transport is not None
    client.transport.write(DISCONNECT)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(client.closed), CLOSE_WAIT)
    client.transport.close()


@dataclass(frozen=True, slots=True)
class HandshakePlan:
    """``clients`` concurrent loops of ``handshake_once`` from the start time to the end of
    the window; counts the ones completed inside it (``published``) and the failures."""

    port: int
    ca_file: str
    prefix: str
    clients: int
    warmup: float
    duration: float

    def deadline(self) -> float:
        return BARRIER_TIMEOUT + self.warmup + self.duration + CONNECT_TIMEOUT * 3 + 10.0

    async def run(self, conn: Connection) -> WorkerResult:
        result = WorkerResult(pid=os.getpid())
        loop = asyncio.get_running_loop()
        context = loadgen.client_context(self.ca_file)
        conn.send(("ready", self.clients))
        go = await loadgen.recv(conn, BARRIER_TIMEOUT)
        assert isinstance(go, float)
        t0, t1 = go + self.warmup, go + self.warmup + self.duration
        await asyncio.sleep(max(0.0, go - time.monotonic()))
        failures: list[str] = []  # the first few messages
        failed = 0
        cap = int((self.warmup + self.duration) * 100_000) + 100  # > any real handshake rate

        async def repeat(k: int) -> None:
            nonlocal failed
            for n in range(cap):
                if time.monotonic() >= t1:
                    return
                try:
                    await handshake_once(loop, self.port, context, f"{self.prefix}-{k}-{n}")
                except (OSError, TimeoutError, ConnectionError, ssl.SSLError) as exc:
                    failed += 1
                    if len(failures) < MAX_ERRORS:
                        failures.append(f"{type(exc).__name__}: {exc}")
                    await asyncio.sleep(0.01)
                    continue
                if t0 <= time.monotonic() < t1:
                    result.published += 1

        await asyncio.gather(*(repeat(k) for k in range(self.clients)))
        result.t0, result.t1 = t0, t1
        result.connected = self.clients
        result.extra = {"failed": float(failed)}
        if failed and not result.published:  # occasional failures are counted, not fatal
            result.errors = failures[:MAX_ERRORS]
        return result
