"""Lean MQTT 3.1.1 load generator: raw asyncio (uvloop when installed) clients in worker processes.

Packets are pre-encoded once; received data is counted by parsing only fixed headers and
remaining lengths (plus the packet id of QoS 1 PUBLISHes, to acknowledge them). Clients may
connect over TLS (``WorkerPlan.tls_ca``), with a username and password, and with clean
session 0 (a durable session). A worker process runs one *job*: the throughput ``WorkerPlan``
here, or the probes of ``probes.py``; the driver functions at the bottom start, release and
collect them. Used by ``benchmarks/run.py``; imports nothing from Bastion. Loopback only,
every phase bounded in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import resource
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Final, Protocol, cast

HOST: Final = "127.0.0.1"
KEEPALIVE: Final = 300  # seconds: longer than any run, so no PINGREQ is needed
PUBLISH_BATCH: Final = 64  # QoS 0 messages per write
PID_RING: Final = 4096  # pre-encoded QoS 1 packet ids cycle through 1..PID_RING
PUBLISHER_SNDBUF: Final = 64 * 1024  # small, so a paused publisher resumes promptly
CONNECT_CONCURRENCY: Final = 50
CONNECT_TIMEOUT: Final = 10.0
BARRIER_TIMEOUT: Final = 60.0

# ---------------------------------------------------------------------------------- encoders


def remaining_length(n: int) -> bytes:
    """MQTT variable byte integer."""
    out = bytearray()
    for _ in range(4):
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)
    raise ValueError("remaining length too large")


def _utf8(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


def connect_packet(
    client_id: str,
    keepalive: int = KEEPALIVE,
    username: str | None = None,
    password: str | None = None,
    clean_session: bool = True,
) -> bytes:
    """MQTT 3.1.1 CONNECT, no will; credentials when given. ``clean_session=False`` asks for
    a durable session (clean session 0), which outlives the connection."""
    flags = (
        (0x02 if clean_session else 0)
        | (0x80 if username is not None else 0)
        | (0x40 if password is not None else 0)
    )
    body = _utf8("MQTT") + bytes([4, flags]) + keepalive.to_bytes(2, "big") + _utf8(client_id)
    if username is not None:
        body += _utf8(username)
    if password is not None:
        body += _utf8(password)
    return b"\x10" + remaining_length(len(body)) + body


def publish_packet(topic: str, payload: bytes, qos: int = 0, packet_id: int = 0) -> bytes:
    body = _utf8(topic) + (packet_id.to_bytes(2, "big") if qos else b"") + payload
    return bytes([0x30 | (qos << 1)]) + remaining_length(len(body)) + body


def subscribe_packet(packet_id: int, topic_filter: str, qos: int) -> bytes:
    body = packet_id.to_bytes(2, "big") + _utf8(topic_filter) + bytes([qos])
    return b"\x82" + remaining_length(len(body)) + body


def puback_packet(packet_id: int) -> bytes:
    return b"\x40\x02" + packet_id.to_bytes(2, "big")


DISCONNECT: Final = b"\xe0\x00"
PUBACKS: Final = tuple(puback_packet(i) for i in range(65536))

# ---------------------------------------------------------------------------------- plan


@dataclass(frozen=True, slots=True)
class PublisherSpec:
    client_id: str
    topic: str
    qos: int = 0
    in_flight: int = 0  # QoS 1: messages kept unacknowledged; QoS 0: flood (0)
    username: str | None = None
    password: str | None = None
    clean_session: bool = True  # False: MQTT 3.1.1 clean session 0 (a durable session)


@dataclass(frozen=True, slots=True)
class SubscriberSpec:
    client_id: str
    topic_filter: str
    qos: int = 0
    username: str | None = None
    password: str | None = None
    clean_session: bool = True  # False: MQTT 3.1.1 clean session 0 (a durable session)


class Job(Protocol):
    """What a worker process runs (``WorkerPlan`` or a probe of ``probes.py``).

    ``run`` sends ``("ready", clients)`` on ``conn`` once connected, waits for the driver's
    start time, works, and returns its result (sent to the driver as ``("result", ...)``).
    """

    def deadline(self) -> float:
        """Longest the job may take, in seconds, from the start of the worker."""
        ...

    async def run(self, conn: Connection) -> WorkerResult: ...


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    """What one worker process runs: its clients, and the phase lengths in seconds."""

    port: int
    publishers: tuple[PublisherSpec, ...]
    subscribers: tuple[SubscriberSpec, ...]
    payload_size: int
    warmup: float
    duration: float
    tls_ca: str | None = None  # PEM CA file: connect with TLS 1.3 and verify the broker
    connect_concurrency: int = CONNECT_CONCURRENCY  # CONNECTs awaiting their CONNACK at once
    connect_timeout: float = CONNECT_TIMEOUT  # per connection, TCP/TLS connect and CONNACK

    def deadline(self) -> float:
        """Connecting, the barrier, warm-up, the window, a margin."""
        clients = len(self.publishers) + len(self.subscribers)
        rounds = clients / max(1, self.connect_concurrency) + 2
        connecting = self.connect_timeout * rounds
        return connecting + BARRIER_TIMEOUT + self.warmup + self.duration + 10.0

    async def run(self, conn: Connection) -> WorkerResult:
        return await _run_worker(self, conn)


@dataclass(slots=True)
class WorkerResult:
    """Counts inside the measurement window [t0, t1] (monotonic clock, seconds)."""

    pid: int
    t0: float = 0.0
    t1: float = 0.0
    published: int = 0  # QoS 0: messages handed to the socket; QoS 1: PUBACKs received
    delivered: int = 0  # PUBLISH packets received by subscribers
    connected: int = 0
    lost: int = 0  # connections the broker closed before the end of the window
    errors: list[str] = field(default_factory=list)
    samples: list[float] = field(default_factory=list)  # probes: latencies in ms
    extra: dict[str, float] = field(default_factory=dict)  # probes: job-specific figures


# ---------------------------------------------------------------------------------- protocol


class Client(asyncio.Protocol):
    """One MQTT connection. Counts PUBLISH (received) and PUBACK packets; answers QoS 1."""

    __slots__ = (
        "_rest",
        "ack_qos1",
        "acks",
        "closed",
        "connack",
        "on_acks",
        "paused",
        "received",
        "resumed",
        "sent",
        "suback",
        "transport",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, ack_qos1: bool) -> None:
        self._rest = b""
        self.ack_qos1 = ack_qos1
        self.received = 0
        self.acks = 0
        self.sent = 0  # QoS 0 messages written by flood()
        self.connack: asyncio.Future[int] = loop.create_future()
        self.suback: asyncio.Future[int] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.resumed: asyncio.Future[None] | None = None
        self.paused = False
        self.transport: asyncio.Transport | None = None
        self.on_acks: Publisher | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        for fut in (self.connack, self.suback):
            if not fut.done():
                fut.set_result(-1)
        if not self.closed.done():
            self.closed.set_result(None)
        self.resume_writing()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.resumed is not None and not self.resumed.done():
            self.resumed.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self._rest:
            data = self._rest + data
        n = len(data)
        i = 0
        received = acks = 0
        replies: list[bytes] | None = None
        while i + 2 <= n:
            length = data[i + 1]
            head = 2
            if length & 0x80:  # multi-byte remaining length
                length &= 0x7F
                shift = 7
                while True:
                    if i + head >= n:
                        length = -1
                        break
                    byte = data[i + head]
                    head += 1
                    length |= (byte & 0x7F) << shift
                    shift += 7
                    if not byte & 0x80 or head > 5:
                        break
                if length < 0:
                    break
            end = i + head + length
            if end > n:
                break
            kind = data[i] >> 4
            if kind == 3:
                received += 1
                if data[i] & 0x06 and self.ack_qos1:
                    at = i + head + 2 + ((data[i + head] << 8) | data[i + head + 1])
                    if replies is None:
                        replies = []
                    replies.append(PUBACKS[(data[at] << 8) | data[at + 1]])
            elif kind == 4:
                acks += 1
            elif kind == 2 and not self.connack.done():
                self.connack.set_result(data[i + 3])
            elif kind == 9 and not self.suback.done():
                self.suback.set_result(data[end - 1])
            i = end
        self._rest = data[i:]
        self.received += received
        if replies and self.transport is not None:
            self.transport.write(b"".join(replies))
        if acks:
            self.acks += acks
            if self.on_acks is not None:
                self.on_acks.acked(acks)


class Publisher:
    """QoS 1 publisher keeping ``in_flight`` messages unacknowledged (refilled on PUBACK)."""

    __slots__ = ("client", "next", "packets", "running")

    def __init__(self, client: Client, spec: PublisherSpec, payload: bytes) -> None:
        self.client = client
        self.packets = [
            publish_packet(spec.topic, payload, 1, pid) for pid in range(1, PID_RING + 1)
        ]
        self.next = 0
        self.running = False

    def send(self, count: int) -> None:
        transport = self.client.transport
        if not self.running or transport is None or transport.is_closing():
            return
        start = self.next
        stop = start + count
        if stop <= PID_RING:
            chunk = self.packets[start:stop]
        else:
            chunk = self.packets[start:] + self.packets[: stop - PID_RING]
        self.next = stop % PID_RING
        transport.write(b"".join(chunk))

    def acked(self, count: int) -> None:
        self.send(count)


async def flood(client: Client, batch: bytes, per_batch: int, stop_at: float) -> None:
    """Write pre-encoded QoS 0 batches as fast as the socket takes them until ``stop_at``.

    Counts messages in ``client.sent``: in steady state (socket buffers full, writes paused
    and resumed) that is the rate at which the broker reads them, i.e. accepts them.
    """
    transport = client.transport
    assert transport is not None
    loop = asyncio.get_running_loop()
    # bounded: the deadline check ends it; each pass writes one batch or waits for drain
    while time.monotonic() < stop_at and not transport.is_closing():
        if client.paused:
            client.resumed = loop.create_future()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(client.resumed, max(0.0, stop_at - time.monotonic()))
            continue
        transport.write(batch)
        client.sent += per_batch
        await asyncio.sleep(0)


# ---------------------------------------------------------------------------------- worker


def client_context(ca_file: str) -> ssl.SSLContext:
    """TLS 1.3 only, the broker verified against ``ca_file``; no session is ever resumed
    (no ``session=`` is passed and tickets are refused), so every connection is a full
    handshake."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_verify_locations(ca_file)
    context.options |= ssl.OP_NO_TICKET
    return context


async def open_client(
    loop: asyncio.AbstractEventLoop,
    port: int,
    client_id: str,
    *,
    ack: bool = False,
    ssl_context: ssl.SSLContext | None = None,
    username: str | None = None,
    password: str | None = None,
    keepalive: int = KEEPALIVE,
    timeout: float = CONNECT_TIMEOUT,
    clean_session: bool = True,
) -> Client:
    """Connect (TLS when ``ssl_context``), send CONNECT, wait for a successful CONNACK.
    ``clean_session=False``: a durable session (MQTT 3.1.1 clean session 0)."""
    server_hostname = HOST if ssl_context is not None else None
    _, proto = await asyncio.wait_for(
        loop.create_connection(
            lambda: Client(loop, ack), HOST, port, ssl=ssl_context, server_hostname=server_hostname
        ),
        timeout,
    )
    assert isinstance(proto, Client) and proto.transport is not None
    proto.transport.write(connect_packet(client_id, keepalive, username, password, clean_session))
    code = await asyncio.wait_for(proto.connack, timeout)
    if code != 0:
        raise ConnectionError(f"{client_id}: CONNACK return code {code}")
    return proto


async def recv(conn: Connection, timeout: float) -> object:
    """The driver's next word on ``conn`` (without blocking the event loop)."""
    loop = asyncio.get_running_loop()

    def wait() -> object:
        if not conn.poll(timeout):
            raise TimeoutError("no word from the benchmark driver")
        return conn.recv()

    return await loop.run_in_executor(None, wait)


async def _connect_all(
    plan: WorkerPlan, result: WorkerResult
) -> tuple[list[Client], list[tuple[Client, PublisherSpec]]]:
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(plan.connect_concurrency)
    context = client_context(plan.tls_ca) if plan.tls_ca else None

    async def sub(spec: SubscriberSpec) -> Client:
        async with gate:
            client = await open_client(
                loop,
                plan.port,
                spec.client_id,
                ack=True,
                ssl_context=context,
                username=spec.username,
                password=spec.password,
                timeout=plan.connect_timeout,
                clean_session=spec.clean_session,
            )
            assert client.transport is not None
            client.transport.write(subscribe_packet(1, spec.topic_filter, spec.qos))
            granted = await asyncio.wait_for(client.suback, plan.connect_timeout)
            if granted not in (0, 1, 2):
                raise ConnectionError(f"{spec.client_id}: SUBACK {granted:#x}")
            return client

    async def pub(spec: PublisherSpec) -> tuple[Client, PublisherSpec]:
        async with gate:
            client = await open_client(
                loop,
                plan.port,
                spec.client_id,
                ssl_context=context,
                username=spec.username,
                password=spec.password,
                timeout=plan.connect_timeout,
                clean_session=spec.clean_session,
            )
            assert client.transport is not None
            sock = client.transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, PUBLISHER_SNDBUF)
            return client, spec

    subs = await asyncio.gather(*(sub(s) for s in plan.subscribers))
    pubs = await asyncio.gather(*(pub(p) for p in plan.publishers))
    result.connected = len(subs) + len(pubs)
    return list(subs), list(pubs)


async def _run_worker(plan: WorkerPlan, conn: Connection) -> WorkerResult:
    result = WorkerResult(pid=os.getpid())
    subs, pubs = await _connect_all(plan, result)
    conn.send(("ready", result.connected))
    go = await recv(conn, BARRIER_TIMEOUT)
    assert isinstance(go, float)  # monotonic time at which publishing starts
    t0_at, t1_at = go + plan.warmup, go + plan.warmup + plan.duration
    payload = bytes(plan.payload_size)
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, go - time.monotonic()))

    qos1 = [Publisher(c, s, payload) for c, s in pubs if s.qos == 1]
    for publisher in qos1:
        publisher.client.on_acks = publisher
        publisher.running = True
    for publisher, (_, spec) in zip(qos1, [p for p in pubs if p[1].qos == 1], strict=True):
        publisher.send(spec.in_flight)
    floods = [
        asyncio.ensure_future(
            flood(c, publish_packet(s.topic, payload) * PUBLISH_BATCH, PUBLISH_BATCH, t1_at)
        )
        for c, s in pubs
        if s.qos == 0
    ]
    counts: dict[str, tuple[float, int, int]] = {}

    def snapshot(name: str) -> None:
        # published: PUBACKs for QoS 1 publishers, messages written for QoS 0 floods
        counts[name] = (
            time.monotonic(),
            sum(c.received for c in subs),
            sum(c.acks + c.sent for c, _ in pubs),
        )

    snapshot("t0")  # replaced by the timer below unless the loop is too busy to run it
    loop.call_later(max(0.0, t0_at - time.monotonic()), snapshot, "t0")
    await asyncio.sleep(max(0.0, t1_at - time.monotonic()))
    snapshot("t1")
    for publisher in qos1:
        publisher.running = False
    await asyncio.gather(*floods)
    result.lost = sum(c.closed.done() for c in subs + [c for c, _ in pubs])
    t0, delivered0, published0 = counts["t0"]
    t1, delivered1, published1 = counts["t1"]
    result.t0, result.t1 = t0, t1
    result.delivered = delivered1 - delivered0
    result.published = published1 - published0
    for client in subs + [c for c, _ in pubs]:
        if client.transport is not None and not client.transport.is_closing():
            client.transport.write(DISCONNECT)
            client.transport.close()
    return result


def _worker_main(job: Job, conn: Connection) -> None:
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            result = runner.run(asyncio.wait_for(job.run(conn), job.deadline()))
    except Exception as exc:  # reported to the driver, which fails the run
        result = WorkerResult(pid=os.getpid(), errors=[f"{type(exc).__name__}: {exc}"])
    conn.send(("result", result))
    conn.close()


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when installed, else asyncio's default."""
    try:
        import uvloop  # noqa: PLC0415 - optional accelerator
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def raise_nofile() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ---------------------------------------------------------------------------------- driver


@dataclass(slots=True)
class Workers:
    """Worker processes started by ``start_workers`` (and only they are stopped by it)."""

    procs: list[mp.process.BaseProcess]
    pipes: list[Connection]


def start_workers(jobs: Sequence[Job]) -> Workers:
    """One forked worker process per job."""
    ctx = mp.get_context("fork")
    procs: list[mp.process.BaseProcess] = []
    pipes: list[Connection] = []
    for job in jobs:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker_main, args=(job, child), daemon=True)
        proc.start()
        child.close()
        procs.append(proc)
        pipes.append(parent)
    return Workers(procs, pipes)


def replies(workers: Workers, expected: str, timeout: float) -> list[object]:
    """One ``(expected, value)`` message from every worker, in order; returns the values.

    A worker that failed sends its result instead, whose errors are raised here."""
    deadline = time.monotonic() + timeout
    values: list[object] = []
    for pipe in workers.pipes:
        if not pipe.poll(max(0.0, deadline - time.monotonic())):
            raise TimeoutError(f"a load generator worker did not send {expected!r} in time")
        kind, value = pipe.recv()
        if kind != expected:
            detail = value.errors if isinstance(value, WorkerResult) else value
            raise RuntimeError(f"load generator worker failed: {detail}")
        values.append(value)
    return values


def wait_ready(workers: Workers, timeout: float) -> int:
    """Wait until every worker has connected and subscribed; returns the client count."""
    return sum(int(cast(int, v)) for v in replies(workers, "ready", timeout))


def release(workers: Workers, go: object) -> None:
    """Send ``go`` (the start time, or another word of the driver) to every worker."""
    for pipe in workers.pipes:
        pipe.send(go)


def collect(workers: Workers, timeout: float) -> list[WorkerResult]:
    deadline = time.monotonic() + timeout
    results: list[WorkerResult] = []
    try:
        for pipe in workers.pipes:
            if not pipe.poll(max(0.0, deadline - time.monotonic())):
                raise TimeoutError("a load generator worker did not report in time")
            kind, value = pipe.recv()
            assert kind == "result" and isinstance(value, WorkerResult)
            results.append(value)
    finally:
        stop_workers(workers)
    return results


def stop_workers(workers: Workers) -> None:
    for proc in workers.procs:
        proc.join(5.0)
        if proc.is_alive():
            proc.terminate()  # our own child, by its Process handle (PID)
            proc.join(5.0)
    for pipe in workers.pipes:
        pipe.close()


def bytes_read(pid: int) -> int:
    """``rchar`` of /proc/<pid>/io: bytes the process got from read(2)-like calls."""
    with open(f"/proc/{pid}/io", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """utime + stime of a process from /proc/<pid>/stat, in seconds; with ``tid``, of that
    one thread (/proc/<pid>/task/<tid>/stat; the main thread's tid is the pid)."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    with open(path, encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def disk_bytes_written(pid: int) -> int:
    """``write_bytes`` of /proc/<pid>/io: bytes the process (all its threads) caused to be
    sent to the storage layer; 0 where the kernel keeps no I/O accounting."""
    with open(f"/proc/{pid}/io", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    return 0
