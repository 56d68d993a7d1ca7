"""Assembles a running broker: settings -> policy -> broker core -> listeners.

Owns the event loop (uvloop when installed), the timer loop that drives ``Broker.tick`` and
connection timeouts, and the signals: SIGINT/SIGTERM stop gracefully (wills handled, sockets
closed, exit code 0).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import signal
import time

import structlog

from bastion import __version__
from bastion.broker.core import Broker
from bastion.config.schema import ListenerSettings, Settings
from bastion.security.policy import Policy
from bastion.transport.tcp import ConnectionRegistry, protocol_factory

log = structlog.get_logger("bastion.runtime")

TICK_MAX_INTERVAL = 1.0  # seconds; keep-alive and CONNECT timeouts are checked this often
SHUTDOWN_GRACE = 2.0  # seconds to let final packets drain before the loop stops


def run(settings: Settings) -> int:
    """Run the broker until SIGINT/SIGTERM; the return value is the process exit code."""
    try:
        import uvloop  # noqa: PLC0415 - optional accelerator
    except ImportError:
        return asyncio.run(serve(settings))
    return uvloop.run(serve(settings))


async def serve(settings: Settings, started: asyncio.Event | None = None) -> int:
    """Serve until a stop signal; ``started`` is set once every listener is bound."""
    loop = asyncio.get_running_loop()
    if settings.security.allow_anonymous:
        log.warning(
            "security.anonymous_allowed",
            detail="allow_anonymous is on: any client may connect without credentials",
        )
    policy = Policy(allow_anonymous=settings.security.allow_anonymous)
    broker = Broker(settings.mqtt, policy)
    registry = ConnectionRegistry()
    servers: list[asyncio.Server] = []
    for listener in settings.listeners:
        try:
            server = await loop.create_server(
                protocol_factory(broker, settings.mqtt, registry),
                listener.host,
                listener.port,
                reuse_address=True,
            )
        except OSError as exc:
            log.error("listener.failed", address=_address(listener), error=_bind_error(exc))
            for other in servers:
                other.close()
            return 1
        servers.append(server)
        log.info("listener.started", address=_address(listener), protocol="mqtt")

    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    log.info("broker.started", version=__version__, listeners=len(servers))
    if started is not None:
        started.set()

    ticker = asyncio.create_task(_tick_loop(broker, registry, stop))
    await stop.wait()
    log.info("broker.stopping")
    for server in servers:
        server.close()
    broker.shutdown(time.monotonic())
    registry.close_all()
    await _drain(registry)
    ticker.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await ticker
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(sig)
    log.info("broker.stopped")
    return 0


async def _tick_loop(broker: Broker, registry: ConnectionRegistry, stop: asyncio.Event) -> None:
    """Drive the broker's timers and the connections' timeouts until ``stop`` is set."""
    while not stop.is_set():
        now = time.monotonic()
        registry.check_timeouts(now)
        deadline = broker.tick(now)
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


def _address(listener: ListenerSettings) -> str:
    host = listener.host
    return f"[{host}]:{listener.port}" if ":" in host else f"{host}:{listener.port}"


def _bind_error(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "address already in use (is another broker running on this port?)"
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "address not available on this machine"
    return exc.strerror or str(exc)


__all__ = ["run", "serve"]
