"""Assembles a running broker: settings -> policy -> broker core -> listeners.

Owns the event loop (uvloop when installed), the timer loop that drives ``Broker.tick``,
connection timeouts and the audit trail, and the signals: SIGINT/SIGTERM stop gracefully
(wills handled, sockets closed, exit code 0), SIGHUP reloads passwords, ACL and TLS files.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import structlog

from bastion import __version__
from bastion.broker.core import Broker
from bastion.broker.messages import Message
from bastion.config.schema import ListenerSettings, Settings
from bastion.errors import ConfigError
from bastion.runtime.persistence import (
    GroupCommitter,
    Persistence,
    open_persistence,
    restore_broker,
)
from bastion.runtime.security import (
    SecurityMonitor,
    build_policy,
    load_credentials,
    tls_holders,
    warn_plain_listener,
)
from bastion.security.defences import build_defences
from bastion.security.policy import Policy
from bastion.security.tls import ServerContextHolder
from bastion.transport.tcp import ConnectionRegistry, Front, ListenerInfo, protocol_factory

log = structlog.get_logger("bastion.runtime")

TICK_MAX_INTERVAL = 1.0  # seconds; keep-alive and CONNECT timeouts are checked this often
SHUTDOWN_GRACE = 2.0  # seconds to let final packets drain before the loop stops
PASSWORD_CHECK_THREADS = 2  # argon2id is memory-hard: a small pool bounds CPU and memory


def run(settings: Settings) -> int:
    """Run the broker until SIGINT/SIGTERM; the return value is the process exit code.

    Raises ``ConfigError`` for files the settings name that cannot be used (password file,
    ACL, certificates), before anything listens.
    """
    try:
        import uvloop  # noqa: PLC0415 - optional accelerator
    except ImportError:
        return asyncio.run(serve(settings))
    return uvloop.run(serve(settings))


class _Runtime:
    """The parts of a running broker that signal handlers and the ticker need."""

    def __init__(self, settings: Settings, persistence: Persistence | None) -> None:
        self.settings = settings
        self.policy: Policy = build_policy(settings.security)
        self.tls = tls_holders(settings)
        self.monitor = SecurityMonitor(settings.security.audit_log)
        self.persistence = persistence
        self.broker = Broker(
            settings.mqtt,
            self.policy,
            on_security_event=self.monitor.record,
            journal=None if persistence is None else persistence.journal,
        )
        self.committer: GroupCommitter | None = None
        if persistence is not None:
            restore_broker(persistence, self.broker)
            self.committer = GroupCommitter(persistence, settings.storage, self.broker.stats)
        self.monitor.set_publisher(self._publish_sys)
        self.defences = build_defences(settings.limits)
        self.registry = ConnectionRegistry()
        self.executor = ThreadPoolExecutor(PASSWORD_CHECK_THREADS, "bastion-auth")
        self.front = Front(
            broker=self.broker,
            settings=settings.mqtt,
            policy=self.policy,
            defences=self.defences,
            report=self.monitor.record,
            executor=self.executor,
            registry=self.registry,
        )

    def _publish_sys(self, topic: str, payload: bytes) -> None:
        self.broker.router.publish(Message(topic, payload, 0, False), time.monotonic())

    def reload(self) -> None:
        """SIGHUP: re-read passwords, ACL and certificates; keep the old ones on any error."""
        try:
            passwords, acl = load_credentials(self.settings.security)
        except ConfigError as exc:
            log.error("reload.failed", what="credentials", error=str(exc))
        else:
            self.policy.reload(passwords=passwords, acl=acl)
            removed = self.broker.recheck_subscriptions(time.monotonic())
            log.info("reload.credentials", subscriptions_removed=removed)
        for index, holder in self.tls.items():
            try:
                done = holder.reload()
            except ConfigError as exc:
                log.error("reload.failed", what="tls", listener=index, error=str(exc))
            else:
                log.info("reload.tls", listener=index, generation=done.generation)

    def tick(self, now: float) -> float | None:
        self.registry.check_timeouts(now)
        for event in self.defences.sweep(now):
            self.monitor.record(event, now)
        self.monitor.tick(now)
        self.monitor.publish_counters(now, self.settings.mqtt.sys_interval)
        return self.broker.tick(now)


async def serve(settings: Settings, started: asyncio.Event | None = None) -> int:
    """Serve until a stop signal; ``started`` is set once every listener is bound."""
    loop = asyncio.get_running_loop()
    persistence = open_persistence(settings.storage)  # StorageError: refuse to start
    try:
        runtime = _Runtime(settings, persistence)
    except BaseException:
        if persistence is not None:
            persistence.store.close()
        raise
    servers: list[asyncio.Server] = []
    for index, listener in enumerate(settings.listeners):
        warn_plain_listener(listener)
        server = await _start_listener(runtime, index, listener)
        if server is None:
            for other in servers:
                other.close()
            runtime.executor.shutdown(wait=False)
            if runtime.committer is not None:
                runtime.committer.close()
            return 1
        servers.append(server)

    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGHUP, runtime.reload)
    # Everything built so far lives as long as the process: keep it out of the cyclic
    # collector's scans, so collections stay short on the hot path (latency tail).
    gc.collect()
    gc.freeze()
    log.info("broker.started", version=__version__, listeners=len(servers))
    if started is not None:
        started.set()

    ticker = asyncio.create_task(_tick_loop(runtime, stop))
    committer = runtime.committer
    committing = None if committer is None else asyncio.create_task(committer.run(stop))
    await stop.wait()
    log.info("broker.stopping")
    for server in servers:
        server.close()
    now = time.monotonic()
    runtime.broker.shutdown(now)
    runtime.registry.close_all()
    await _drain(runtime.registry)
    ticker.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await ticker
    if committer is not None and committing is not None:
        await committing
        await committer.commit()  # what the last disconnects journaled
        committer.close()
    runtime.monitor.close(time.monotonic())
    runtime.executor.shutdown(wait=False, cancel_futures=True)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(sig)
    log.info("broker.stopped")
    return 0


async def _start_listener(
    runtime: _Runtime, index: int, listener: ListenerSettings
) -> asyncio.Server | None:
    holder: ServerContextHolder | None = runtime.tls.get(index)
    # TLS is run by each connection (``transport/tlslayer.py``), not by asyncio, so that
    # failed handshakes can be reported and the gate is applied before any handshake work.
    info = ListenerInfo(
        name=listener.name or listener.address,
        tls_context=holder.listener_context if holder is not None else None,
        handshake_timeout=runtime.settings.mqtt.connect_timeout,
        identity_mode=listener.tls.use_identity_as_username if listener.tls else "none",
        max_qos=listener.max_qos,
    )
    loop = asyncio.get_running_loop()
    try:
        server = await loop.create_server(
            protocol_factory(runtime.front, info),
            listener.host,
            listener.port,
            reuse_address=True,
        )
    except OSError as exc:
        log.error("listener.failed", address=listener.address, error=_bind_error(exc))
        return None
    log.info(
        "listener.started",
        address=listener.address,
        protocol="mqtt+tls" if holder is not None else "mqtt",
    )
    return server


async def _tick_loop(runtime: _Runtime, stop: asyncio.Event) -> None:
    """Drive the broker's timers and the connections' timeouts until ``stop`` is set."""
    while not stop.is_set():
        now = time.monotonic()
        deadline = runtime.tick(now)
        delay = TICK_MAX_INTERVAL
        if deadline is not None:
            delay = min(delay, max(0.0, deadline - now))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=max(delay, 0.01))


async def _drain(registry: ConnectionRegistry) -> None:
    """Wait (bounded) until the connections closed at shutdown have gone."""
    deadline = time.monotonic() + SHUTDOWN_GRACE
    while len(registry) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


def _bind_error(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "address already in use (is another broker running on this port?)"
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "address not available on this machine"
    return exc.strerror or str(exc)


__all__ = ["run", "serve"]
