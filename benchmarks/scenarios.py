"""The benchmark scenarios, and how one run of each goes against one fresh broker.

A ``Scenario`` has ``run(bench, broker_kind, repeat_index) -> Sample`` (the figures of one run,
as a flat dict of floats), the Markdown rows it contributes (``metrics``), the figures that a
healthy run has above zero (``primary``, checked by the CI smoke test) and a note for the
report; a scenario with a ``baseline`` also gets figures relative to that scenario's row of the
same broker in the same run (``relate``: qos1_durable over qos1). Throughput scenarios (fan_in,
fan_out, qos1, qos1_durable, and security, which runs fan_in with security off and on) drive
``loadgen.WorkerPlan`` workers; latency, connections, tls and flood drive the probes of
``probes.py``. Used by ``benchmarks/run.py``.
"""

from __future__ import annotations

import contextlib
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import loadgen
from brokers import (
    BrokerProc,
    BrokerSetup,
    Materials,
    dir_size,
    open_files_limit,
    start_broker,
    vm_rss_kib,
)
from loadgen import Job, PublisherSpec, SubscriberSpec, WorkerPlan, WorkerResult
from probes import HandshakePlan, IdlePlan, LatencyPlan

PAYLOAD_SIZE: Final = 64
READY_TIMEOUT: Final = 60.0
AUTH_READY_TIMEOUT: Final = 300.0  # Bastion spends about one argon2id check per login
AUTH_CONNECT_CONCURRENCY: Final = 4  # logins awaiting their CONNACK at once, per worker
AUTH_CONNECT_TIMEOUT: Final = 120.0
FAN_IN_PUBLISHERS: Final = 50
QUICK_SECURITY_PUBLISHERS: Final = 10
COLLECT_TIMEOUT: Final = 30.0
LATENCY_RATE: Final = 1000.0  # msgs/s of the latency publisher
FLOOD_PROBE_RATE: Final = 50.0  # msgs/s of the well-behaved client in the flood scenario
CONNECT_CONCURRENCY: Final = 200  # connections being opened at once, over all workers
CONNECT_PHASE_TIMEOUT: Final = 300.0
RSS_SETTLE: Final = 1.0  # seconds between the last CONNACK and the RSS reading
TLS_CLIENTS_PER_WORKER: Final = 8

Sample = dict[str, float]


@dataclass(slots=True)
class Bench:
    """Settings shared by every run, and the cProfile files collected so far."""

    workdir: Path
    materials: Materials
    workers: int
    warmup: float
    duration: float
    cpus: tuple[set[int] | None, set[int] | None]  # broker cores, generator cores
    connections: int
    quick: bool = False
    profile_dir: Path | None = None  # set: Bastion runs under cProfile, one file per run
    profiles: dict[str, list[Path]] = field(default_factory=dict)  # label -> .pstats files


@dataclass(frozen=True, slots=True)
class Metric:
    """One Markdown row: ``unit`` is count, ms, s, kib, mib, pct, x (a ratio) or cpu (with
    ``key2``)."""

    label: str
    key: str
    unit: str = "count"
    ratio: bool = True
    key2: str = ""


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    description: str  # str.format fields: connections, tls_clients
    run: Callable[[Bench, str, int], Sample]
    metrics: tuple[Metric, ...]
    primary: tuple[str, ...]  # figures a healthy run has above zero
    note: str = ""
    derive: Callable[[dict[str, float]], dict[str, float]] | None = None  # from the medians
    # figures relative to the row of scenario ``baseline``, same broker, same run (medians)
    baseline: str = ""
    relate: Callable[[dict[str, float], dict[str, float]], dict[str, float]] | None = None


CPU_ROW: Final = Metric(
    "broker CPU / generator CPU (cores)", "broker_cpu_share", "cpu", False, "generator_cpu_share"
)

# ---------------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def fresh_broker(bench: Bench, kind: str, setup: BrokerSetup, label: str) -> Iterator[BrokerProc]:
    """A fresh broker for one run (Bastion under cProfile in profile mode), stopped after it;
    this process then stays on the generator cores, which forked workers inherit."""
    profile = None
    if bench.profile_dir is not None and kind == "bastion":
        bench.profile_dir.mkdir(parents=True, exist_ok=True)
        profile = bench.profile_dir / f"{label}-{len(bench.profiles.get(label, []))}.pstats"
    broker = start_broker(
        kind,
        bench.workdir,
        broker_cpus=bench.cpus[0],
        setup=setup,
        materials=bench.materials,
        profile=profile,
    )
    try:
        if bench.cpus[1]:
            os.sched_setaffinity(0, bench.cpus[1])
        yield broker
        if broker.proc.poll() is not None:
            raise RuntimeError(f"{kind} died during {label}:\n{broker.log_tail()}")
    finally:
        code = broker.stop()
    if profile is not None:
        if code != 0 or not profile.exists():
            raise RuntimeError(f"bastion under cProfile exited with {code}, no {profile.name}")
        bench.profiles.setdefault(label, []).append(profile)


def _cpu(pids: Sequence[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += loadgen.cpu_seconds(pid)
    return total


def busy_seconds() -> float:
    """CPU seconds the whole machine spent in processes (user, nice, system) or stolen by the
    hypervisor, from /proc/stat. Interrupt time is left out: loopback traffic of the run
    itself is mostly softirq time, charged to no process."""
    with open("/proc/stat", encoding="ascii") as fh:
        fields = [int(x) for x in fh.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, _irq, _softirq, steal = fields
    return (user + nice + system + steal) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Window:
    """What the workers reported, and the broker's and generator's use over the window."""

    results: list[WorkerResult]  # in the order of the jobs
    clients: int
    connect_s: float  # from starting the workers until all were connected and subscribed
    wall: float
    broker_cpu: float
    generator_cpu: float
    other_cpu: float  # CPU seconds of everything else on the machine (noise)
    broker_bytes_read: int
    broker_disk_written: int  # write_bytes of /proc/<pid>/io: what went to the disk
    broker_main_cpu: float  # CPU seconds of the broker's main thread (Bastion: its event loop)
    data_dir_bytes: int  # the broker's data directory at the end of the window (persistence)

    def shares(self, suffix: str = "") -> Sample:
        """Broker, generator and other CPU per wall second in the window (cores)."""
        return {
            f"broker_cpu_share{suffix}": self.broker_cpu / self.wall,
            f"generator_cpu_share{suffix}": self.generator_cpu / self.wall,
            f"other_cpu_share{suffix}": max(0.0, self.other_cpu / self.wall),
        }


def drive(
    bench: Bench, broker: BrokerProc, jobs: Sequence[Job], ready_timeout: float = READY_TIMEOUT
) -> Window:
    """Run ``jobs`` in worker processes: ready, start together 0.2 s from now, measure the
    window [start + warmup, start + warmup + duration], collect; raises on worker errors."""
    started = time.monotonic()
    group = loadgen.start_workers(jobs)
    try:
        clients = loadgen.wait_ready(group, ready_timeout)
    except BaseException:
        loadgen.stop_workers(group)
        raise
    connect_s = time.monotonic() - started
    go = time.monotonic() + 0.2
    loadgen.release(group, go)
    pids = [p.pid for p in group.procs if p.pid is not None]
    time.sleep(max(0.0, go + bench.warmup - time.monotonic()))
    r0, d0 = loadgen.bytes_read(broker.pid), loadgen.disk_bytes_written(broker.pid)
    m0 = loadgen.cpu_seconds(broker.pid, broker.pid)
    b0, g0, w0, s0 = loadgen.cpu_seconds(broker.pid), _cpu(pids), time.monotonic(), busy_seconds()
    time.sleep(max(0.0, go + bench.warmup + bench.duration - time.monotonic()))
    b1, g1, w1, s1 = loadgen.cpu_seconds(broker.pid), _cpu(pids), time.monotonic(), busy_seconds()
    m1 = loadgen.cpu_seconds(broker.pid, broker.pid)
    r1, d1 = loadgen.bytes_read(broker.pid), loadgen.disk_bytes_written(broker.pid)
    stored = dir_size(broker.data_dir) if broker.data_dir is not None else 0
    results = loadgen.collect(group, COLLECT_TIMEOUT)  # the window is over: workers wrap up
    errors = [e for r in results for e in r.errors]
    if errors:
        raise RuntimeError(f"{broker.kind}: load generator errors: {errors}")
    other = (s1 - s0) - (b1 - b0) - (g1 - g0)
    return Window(
        results,
        clients,
        connect_s,
        w1 - w0,
        b1 - b0,
        g1 - g0,
        other,
        r1 - r0,
        d1 - d0,
        m1 - m0,
        stored,
    )


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted values (0.0 when there are none)."""
    if not ordered:
        return 0.0
    return float(ordered[max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))])


def plans_for(
    bench: Bench,
    port: int,
    publishers: Sequence[PublisherSpec],
    subscribers: Sequence[SubscriberSpec],
    *,
    tls_ca: str | None = None,
    auth: bool = False,
) -> list[Job]:
    """Subscribers and publishers in separate processes (so the OS scheduler, not one event
    loop, shares the generator's CPU between them), each role spread round-robin. ``auth``:
    a few logins at a time with a long timeout (a login may cost the broker a lot)."""
    n_sub = max(1, min(len(subscribers), bench.workers // 2))
    n_pub = max(1, min(len(publishers), bench.workers - n_sub))
    w, d = bench.warmup, bench.duration
    gate = (
        (AUTH_CONNECT_CONCURRENCY, AUTH_CONNECT_TIMEOUT)
        if auth
        else (loadgen.CONNECT_CONCURRENCY, loadgen.CONNECT_TIMEOUT)
    )
    plans: list[Job] = [
        WorkerPlan(port, (), tuple(subscribers[k::n_sub]), PAYLOAD_SIZE, w, d, tls_ca, *gate)
        for k in range(n_sub)
    ]
    plans += [
        WorkerPlan(port, tuple(publishers[k::n_pub]), (), PAYLOAD_SIZE, w, d, tls_ca, *gate)
        for k in range(n_pub)
    ]
    return plans


def throughput(
    bench: Bench,
    broker: BrokerProc,
    publishers: Sequence[PublisherSpec],
    subscribers: Sequence[SubscriberSpec],
    *,
    accepted_from_reads: bool,
    tls_ca: str | None = None,
    auth: bool = False,
) -> Sample:
    """One throughput window. Accepted: QoS 0, the broker's bytes read over the PUBLISH
    size (plain TCP only); QoS 1, the PUBACKs the publishers received."""
    plans = plans_for(bench, broker.port, publishers, subscribers, tls_ca=tls_ca, auth=auth)
    window = drive(bench, broker, plans, AUTH_READY_TIMEOUT if auth else READY_TIMEOUT)
    results = window.results
    delivered = sum(r.delivered for r in results)
    offered = sum(r.published / (r.t1 - r.t0) for r in results)
    payload = bytes(PAYLOAD_SIZE)
    size = sum(len(loadgen.publish_packet(p.topic, payload, p.qos, 1)) for p in publishers)
    sample: Sample = {
        "delivered_per_s": sum(r.delivered / (r.t1 - r.t0) for r in results),
        "accepted_per_s": (
            window.broker_bytes_read / window.wall / (size / len(publishers))
            if accepted_from_reads
            else offered
        ),
        "offered_per_s": offered,
        **window.shares(),
        "delivered_per_broker_cpu_s": delivered / window.broker_cpu if window.broker_cpu else 0.0,
        "connect_s": window.connect_s,
        "clients": window.clients,
        "lost": sum(r.lost for r in results),
    }
    if broker.data_dir is not None:  # persistence: what reached the disk during the window
        # Bastion's main thread runs the event loop, its storage thread the group commits
        sample["broker_main_thread_cpu_share"] = window.broker_main_cpu / window.wall
        sample["broker_other_threads_cpu_share"] = max(
            0.0, (window.broker_cpu - window.broker_main_cpu) / window.wall
        )
        written = window.broker_disk_written / window.wall
        sample["disk_written_kib_per_s"] = written / 1024
        accepted = sample["accepted_per_s"]
        sample["disk_bytes_per_accepted"] = written / accepted if accepted > 0 else 0.0
        sample["data_dir_kib_window"] = window.data_dir_bytes / 1024
    return sample


# ---------------------------------------------------------------------------------- throughput


def fan_in_clients(
    publishers: int = FAN_IN_PUBLISHERS,
) -> tuple[list[PublisherSpec], list[SubscriberSpec]]:
    return (
        [PublisherSpec(f"pub-{i}", f"sensors/{i}/temp") for i in range(publishers)],
        [SubscriberSpec("sub-0", "sensors/#")],
    )


def qos1_clients(durable: bool = False) -> tuple[list[PublisherSpec], list[SubscriberSpec]]:
    """10 QoS 1 publishers with 10 in flight each, one QoS 1 subscriber on qos1/#.
    ``durable``: the subscriber asks for clean session 0. The publishers keep clean session
    1 either way: for QoS 1 a broker keeps no session state of a publisher (the unacknowledged
    messages are the client's state), so their flag changes nothing it must store."""
    return (
        [PublisherSpec(f"pub-{i}", f"qos1/{i}", qos=1, in_flight=10) for i in range(10)],
        [SubscriberSpec("sub-0", "qos1/#", qos=1, clean_session=not durable)],
    )


def throughput_scenario(
    name: str,
    description: str,
    clients: Callable[[], tuple[list[PublisherSpec], list[SubscriberSpec]]],
    labels: tuple[str, str],  # what the delivered and the accepted counts mean
    accepted_from_reads: bool,
) -> Scenario:
    def run(bench: Bench, kind: str, repeat: int) -> Sample:
        publishers, subscribers = clients()
        with fresh_broker(bench, kind, BrokerSetup(), name) as broker:
            return throughput(
                bench, broker, publishers, subscribers, accepted_from_reads=accepted_from_reads
            )

    metrics = (
        Metric(labels[0], "delivered_per_s"),
        Metric(labels[1], "accepted_per_s"),
        Metric("delivered per broker CPU-second", "delivered_per_broker_cpu_s"),
        CPU_ROW,
    )
    return Scenario(name, description, run, metrics, ("delivered_per_s",))


# ---------------------------------------------------------------------------------- durable


def check_durable(kind: str, data_dir: Path, subscribers: Sequence[SubscriberSpec]) -> None:
    """After the broker stopped: its data directory must hold what persistence promises.
    Bastion: bastion.db with every subscriber's session and subscription (read-only, with
    SQLite; client ids and topic filters are stored in the clear). Mosquitto: mosquitto.db,
    which it writes at exit. Raises RuntimeError otherwise (a benchmark of a broker that
    does not persist would measure the wrong thing)."""
    name = "bastion.db" if kind == "bastion" else "mosquitto.db"
    path = data_dir / name
    if not path.is_file() or path.stat().st_size == 0:
        found = sorted(p.name for p in data_dir.iterdir()) if data_dir.is_dir() else []
        raise RuntimeError(f"{kind}: no {name} in {data_dir} after the run (found {found})")
    if kind != "bastion":
        return
    with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
        for spec in subscribers:
            sessions = db.execute(
                "SELECT count(*) FROM sessions WHERE client_id = ?", (spec.client_id,)
            ).fetchone()[0]
            subscriptions = db.execute(
                "SELECT count(*) FROM subscriptions WHERE client_id = ? AND topic_filter = ?",
                (spec.client_id, spec.topic_filter),
            ).fetchone()[0]
            if not sessions or not subscriptions:
                raise RuntimeError(
                    f"bastion: {path} has {sessions} session(s) and {subscriptions} "
                    f"subscription(s) of durable subscriber {spec.client_id}, expected 1 each"
                )


def run_qos1_durable(bench: Bench, kind: str, repeat: int) -> Sample:
    """qos1 with a durable subscriber on a broker persisting to a fresh data directory."""
    publishers, subscribers = qos1_clients(durable=True)
    setup = BrokerSetup(persistence=True)
    with fresh_broker(bench, kind, setup, "qos1_durable") as broker:
        sample = throughput(bench, broker, publishers, subscribers, accepted_from_reads=False)
    assert broker.data_dir is not None
    check_durable(kind, broker.data_dir, subscribers)
    sample["data_dir_kib_after"] = dir_size(broker.data_dir) / 1024
    return sample


def own_ratio(durable: dict[str, float], plain: dict[str, float]) -> dict[str, float]:
    """The broker's durable rates over its own non-durable (qos1) rates, same run."""
    out = {}
    for key, name in (("delivered_per_s", "own_ratio"), ("accepted_per_s", "own_ratio_accepted")):
        base = plain.get(key, 0.0)
        out[name] = round(durable.get(key, 0.0) / base, 3) if base > 0 else 0.0
    return out


# ---------------------------------------------------------------------------------- latency


def latency_figures(samples: list[float], suffix: str = "") -> Sample:
    ordered = sorted(samples)
    return {
        f"p50_ms{suffix}": percentile(ordered, 50),
        f"p99_ms{suffix}": percentile(ordered, 99),
        f"p999_ms{suffix}": percentile(ordered, 99.9),
        f"max_ms{suffix}": ordered[-1] if ordered else 0.0,
    }


def run_latency(bench: Bench, kind: str, repeat: int) -> Sample:
    with fresh_broker(bench, kind, BrokerSetup(), "latency") as broker:
        probe = "latency/probe"
        w, d = bench.warmup, bench.duration
        window = drive(
            bench,
            broker,
            [
                LatencyPlan(broker.port, "lat-sub", probe, 0.0, True, PAYLOAD_SIZE, w, d),
                LatencyPlan(broker.port, "lat-pub", probe, LATENCY_RATE, False, PAYLOAD_SIZE, w, d),
            ],
        )
    samples = [s for r in window.results for s in r.samples]
    sent = sum(r.published for r in window.results)
    return {
        **latency_figures(samples),
        "sent": sent,
        "received": len(samples),
        "missing": sent - len(samples),
        "delivered_per_s": len(samples) / bench.duration,
        **window.shares(),
        "clients": window.clients,
        "lost": sum(r.lost for r in window.results),
    }


# ---------------------------------------------------------------------------------- connections


def run_connections(bench: Bench, kind: str, repeat: int) -> Sample:
    count = bench.connections
    with fresh_broker(bench, kind, BrokerSetup(), "connections") as broker:
        limit = open_files_limit(broker.pid)
        if 0 <= limit < count + 64:
            raise RuntimeError(f"{kind} may open only {limit} files; {count} clients need more")
        k = max(1, min(bench.workers, count))
        shares = [count // k + (1 if i < count % k else 0) for i in range(k)]
        jobs = [
            IdlePlan(broker.port, f"idle-{w}", shares[w], max(1, CONNECT_CONCURRENCY // k))
            for w in range(k)
        ]
        group = loadgen.start_workers(jobs)
        try:
            loadgen.wait_ready(group, READY_TIMEOUT)
            time.sleep(0.5)  # a broker that just started may still be settling
            rss0, cpu0 = vm_rss_kib(broker.pid), loadgen.cpu_seconds(broker.pid)
            go = time.monotonic() + 0.2
            loadgen.release(group, go)
            done = loadgen.replies(group, "connected", CONNECT_PHASE_TIMEOUT)
            cpu1 = loadgen.cpu_seconds(broker.pid)
            time.sleep(RSS_SETTLE)
            rss1 = vm_rss_kib(broker.pid)
            loadgen.release(group, "close")
        except BaseException:
            loadgen.stop_workers(group)
            raise
        results = loadgen.collect(group, COLLECT_TIMEOUT)
    errors = [e for r in results for e in r.errors]
    if errors:
        raise RuntimeError(f"{kind}: load generator errors: {errors}")
    connected = sum(r.connected for r in results)
    finished = go
    for value in done:  # (connected, monotonic time of the worker's last CONNACK)
        assert isinstance(value, tuple)
        finished = max(finished, float(value[1]))
    seconds = finished - go
    return {
        "connected": connected,
        "connect_s": seconds,
        "connections_per_s": connected / seconds if seconds > 0 else 0.0,
        "connects_per_broker_cpu_s": connected / (cpu1 - cpu0) if cpu1 > cpu0 else 0.0,
        "rss_before_mib": rss0 / 1024,
        "rss_after_mib": rss1 / 1024,
        "rss_per_connection_kib": (rss1 - rss0) / connected if connected else 0.0,
        "clients": connected,
        "lost": sum(r.lost for r in results),
    }


# ---------------------------------------------------------------------------------- tls


def run_tls(bench: Bench, kind: str, repeat: int) -> Sample:
    with fresh_broker(bench, kind, BrokerSetup(tls=True), "tls") as broker:
        ca = str(bench.materials.ca_file)
        jobs = [
            HandshakePlan(
                broker.port, ca, f"tls-{w}", TLS_CLIENTS_PER_WORKER, bench.warmup, bench.duration
            )
            for w in range(bench.workers)
        ]
        window = drive(bench, broker, jobs)
    done = sum(r.published for r in window.results)
    return {
        "handshakes_per_s": done / bench.duration,
        "handshakes_per_broker_cpu_s": done / window.broker_cpu if window.broker_cpu else 0.0,
        "failed": sum(r.extra.get("failed", 0.0) for r in window.results),
        **window.shares(),
        "clients": window.clients,
        "lost": 0,
    }


# ---------------------------------------------------------------------------------- security


def security_publishers(bench: Bench) -> int:
    return QUICK_SECURITY_PUBLISHERS if bench.quick else FAN_IN_PUBLISHERS


def security_files(bench: Bench) -> None:
    """A password for every fan_in client; the ACL lets each publisher write its own topic
    and the subscriber read sensors/#."""
    publishers, subscribers = fan_in_clients(security_publishers(bench))
    names = [p.client_id for p in publishers] + [s.client_id for s in subscribers]
    users = {name: f"pw-{name}" for name in names}
    acl = [f"user {p.client_id}\ntopic write {p.topic}\n" for p in publishers]
    acl += [f"user {s.client_id}\ntopic read {s.topic_filter}\n" for s in subscribers]
    bench.materials.ensure_auth(users, "\n".join(acl))


def run_security(bench: Bench, kind: str, repeat: int) -> Sample:
    security_files(bench)
    publishers, subscribers = fan_in_clients(security_publishers(bench))
    secure_pubs = [
        PublisherSpec(p.client_id, p.topic, username=p.client_id, password=f"pw-{p.client_id}")
        for p in publishers
    ]
    secure_subs = [
        SubscriberSpec(
            s.client_id, s.topic_filter, username=s.client_id, password=f"pw-{s.client_id}"
        )
        for s in subscribers
    ]
    bench.materials.ensure_pki()
    ca = str(bench.materials.ca_file)
    secure = BrokerSetup(tls=True, auth=True, default_limits=True)
    variants = [
        ("off", BrokerSetup(), publishers, subscribers, None),
        ("on", secure, secure_pubs, secure_subs, ca),
    ]
    if repeat % 2:
        variants.reverse()
    sample: Sample = {"clients": 0, "lost": 0}
    for name, setup, pubs, subs, tls_ca in variants:
        label = "security" if name == "on" else "security-off"
        with fresh_broker(bench, kind, setup, label) as broker:
            figures = throughput(
                bench,
                broker,
                pubs,
                subs,
                accepted_from_reads=False,
                tls_ca=tls_ca,
                auth=setup.auth,
            )
        for key in (
            "delivered_per_s",
            "offered_per_s",
            "delivered_per_broker_cpu_s",
            "broker_cpu_share",
            "generator_cpu_share",
            "other_cpu_share",
            "connect_s",
        ):
            sample[f"{key}_{name}"] = figures[key]
        sample["clients"] = figures["clients"]
        sample["lost"] += figures["lost"]
    return sample


def security_slowdown(medians: dict[str, float]) -> dict[str, float]:
    """1 - on/off in percent, of the delivered rates and of delivered per broker CPU-second."""
    out = {}
    for key, name in (
        ("delivered_per_s", "slowdown_pct"),
        ("delivered_per_broker_cpu_s", "slowdown_per_cpu_pct"),
    ):
        off, on = medians[f"{key}_off"], medians[f"{key}_on"]
        out[name] = round(100.0 * (1.0 - on / off), 1) if off > 0 else 0.0
    return out


# ---------------------------------------------------------------------------------- flood


def run_flood(bench: Bench, kind: str, repeat: int) -> Sample:
    w, d = bench.warmup, bench.duration
    rate = FLOOD_PROBE_RATE
    with fresh_broker(bench, kind, BrokerSetup(default_limits=True), "flood") as broker:
        port = broker.port
        alone = drive(
            bench,
            broker,
            [LatencyPlan(port, "probe-alone", "probe/alone", rate, True, PAYLOAD_SIZE, w, d)],
        )
        flood = drive(
            bench,
            broker,
            [
                LatencyPlan(port, "probe-flood", "probe/flood", rate, True, PAYLOAD_SIZE, w, d),
                WorkerPlan(port, (PublisherSpec("flooder", "flood/x"),), (), PAYLOAD_SIZE, w, d),
                WorkerPlan(
                    port, (), (SubscriberSpec("flood-sink", "flood/#"),), PAYLOAD_SIZE, w, d
                ),
            ],
        )
    probe, flooder, sink = flood.results
    return {
        **latency_figures(alone.results[0].samples, "_alone"),
        **latency_figures(probe.samples, "_flood"),
        "probe_received_alone": alone.results[0].delivered,
        "probe_received_flood": probe.delivered,
        "probe_sent_flood": probe.published,
        "flood_offered_per_s": flooder.published / (flooder.t1 - flooder.t0),
        "flood_delivered_per_s": sink.delivered / (sink.t1 - sink.t0),
        **flood.shares("_flood"),
        "clients": flood.clients,
        "lost": sum(r.lost for r in (*alone.results, *flood.results)),
    }


# ---------------------------------------------------------------------------------- the list

SECURITY_NOTE: Final = (
    "security: fan_in twice per broker, each on a fresh broker, in alternating order. Off: "
    "plain TCP, anonymous, no ACL, Bastion's relaxed limits (as fan_in). On: a TLS 1.3 "
    "listener, every client logs in with a username and password from a password file ($7$ "
    "PBKDF2-SHA512 hashes made by mosquitto_passwd, read by both brokers), an ACL file "
    "(Mosquitto syntax, read by both) granting each publisher write on its own topic and the "
    "subscriber read on sensors/#, and Bastion's DEFAULT [limits]: 1,000 msgs/s with a burst "
    "of 2,000 per client, so its 50 publishers can have at most 50,000 msgs/s accepted. "
    "Slowdown = 1 - on/off of the median delivered rates (target for Bastion: at most 20 %)."
)

QOS1_DURABLE_NOTE: Final = (
    "qos1_durable: the qos1 traffic, but the subscriber connects with clean session 0 (a "
    "durable session; the publishers keep clean session 1: for QoS 1 a broker holds no session "
    "state of a publisher), and every broker start gets a fresh, empty data directory in the "
    "run's scratch directory. Bastion: [storage] enabled = true with its defaults, sync = "
    '"full" (fsync at every commit), group commit (at most every 1 ms or 256 writes) and '
    "encryption at rest (AES-256-GCM); it PUBACKs a message only once it is committed and "
    "fsynced for the durable subscriber. Mosquitto: persistence true with its default "
    "autosave_interval (1800 s): it writes mosquitto.db only periodically and at exit, and "
    "PUBACKs before anything reaches the disk, so it promises less (a crash loses what arrived "
    "since the last save). Broker CPU per thread from /proc/<pid>/task/<tid>/stat: Bastion's "
    "main thread runs its event loop, its other threads are mostly the storage thread (SQLite "
    "and sealing); Mosquitto has one thread. Disk writes: write_bytes of /proc/<pid>/io over "
    "the window per accepted message; data directory: the broker's files after it stopped (a "
    "run fails unless bastion.db holds the subscriber's session and subscription, or "
    "mosquitto.db exists). Own ratio: the broker's delivered msgs/s here over its delivered "
    "msgs/s in qos1 of the same run, n/a when qos1 did not run (target for Bastion: at least "
    "0.5)."
)

SCENARIOS: Final = {
    s.name: s
    for s in (
        throughput_scenario(
            "fan_in",
            "50 publishers QoS 0 (64-byte payloads, sensors/<i>/temp, flooding), "
            "1 subscriber on sensors/#",
            fan_in_clients,
            ("delivered msgs/s", "accepted msgs/s"),
            True,
        ),
        throughput_scenario(
            "fan_out",
            "1 publisher QoS 0 (64-byte payloads, flooding), 100 subscribers on the same topic",
            lambda: (
                [PublisherSpec("pub-0", "fanout/topic")],
                [SubscriberSpec(f"sub-{i}", "fanout/topic") for i in range(100)],
            ),
            ("deliveries/s", "accepted msgs/s"),
            True,
        ),
        throughput_scenario(
            "qos1",
            "10 publishers QoS 1, 10 messages in flight each (64 bytes), 1 QoS 1 subscriber",
            qos1_clients,
            ("delivered msgs/s", "accepted (PUBACKed) msgs/s"),
            False,
        ),
        Scenario(
            "qos1_durable",
            "qos1 with persistence on: the subscriber has a durable session (clean session 0); "
            "Bastion [storage] enabled (sync full, default group commit), Mosquitto "
            "persistence true",
            run_qos1_durable,
            (
                Metric("delivered msgs/s", "delivered_per_s"),
                Metric("accepted (PUBACKed) msgs/s", "accepted_per_s"),
                Metric("delivered per broker CPU-second", "delivered_per_broker_cpu_s"),
                CPU_ROW,
                Metric(
                    "broker CPU: main thread / other threads (cores)",
                    "broker_main_thread_cpu_share",
                    "cpu",
                    False,
                    "broker_other_threads_cpu_share",
                ),
                Metric("durable / non-durable (own ratio)", "own_ratio", "x", False),
                Metric(
                    "disk writes in the window (bytes per accepted msg)",
                    "disk_bytes_per_accepted",
                    ratio=False,
                ),
                Metric("data directory after stop (KiB)", "data_dir_kib_after", "kib", False),
            ),
            ("delivered_per_s", "accepted_per_s", "data_dir_kib_after"),
            QOS1_DURABLE_NOTE,
            baseline="qos1",
            relate=own_ratio,
        ),
        Scenario(
            "latency",
            "1 publisher QoS 0 at a fixed 1,000 msgs/s (64-byte payloads carrying the send "
            "time), 1 subscriber on its topic",
            run_latency,
            (
                Metric("publish-to-deliver p50 (ms)", "p50_ms", "ms"),
                Metric("publish-to-deliver p99 (ms)", "p99_ms", "ms"),
                Metric("publish-to-deliver p99.9 (ms)", "p999_ms", "ms"),
                Metric("delivered msgs/s (1,000 sent)", "delivered_per_s"),
            ),
            ("received", "p50_ms"),
            "latency: the publisher is paced on an absolute schedule (message k due at start + "
            "k ms) and stamps each message with time.monotonic_ns() as it writes it; latency is "
            "the subscriber's receive time minus the stamp (both generator processes); "
            "nearest-rank percentiles over the messages stamped inside the window.",
        ),
        Scenario(
            "connections",
            "{connections:,} idle MQTT 3.1.1 clients (clean session, keep-alive 60 s), "
            "opened 200 at a time over the generator workers",
            run_connections,
            (
                Metric("time to connect {connections:,} clients (s)", "connect_s", "s"),
                Metric("connections/s", "connections_per_s"),
                Metric("connections per broker CPU-second", "connects_per_broker_cpu_s"),
                Metric("broker RSS per connection (KiB)", "rss_per_connection_kib", "kib"),
                Metric("broker RSS with all connected (MiB)", "rss_after_mib", "mib"),
            ),
            ("connected", "connections_per_s"),
            "connections: time from the start signal to the last CONNACK; RSS is VmRSS of "
            "/proc/<pid>/status, per connection = (1 s after the last CONNACK - before "
            "connecting) / clients. Generator and brokers run with RLIMIT_NOFILE raised to the "
            "hard limit; Mosquitto has max_connections -1.",
        ),
        Scenario(
            "tls",
            "{tls_clients} concurrent clients repeating a full TLS 1.3 handshake (no "
            "resumption), CONNECT, CONNACK, DISCONNECT",
            run_tls,
            (
                Metric("handshakes/s (TLS 1.3 + CONNECT/CONNACK)", "handshakes_per_s"),
                Metric("handshakes per broker CPU-second", "handshakes_per_broker_cpu_s"),
                CPU_ROW,
            ),
            ("handshakes_per_s",),
            "tls: dev PKI from `bastion pki init` (ECDSA P-256), TLS 1.3 only on both brokers, "
            "no session resumption; a handshake counts once its CONNACK is in and the broker "
            "has closed after DISCONNECT (or 1 s passed). Mosquitto keeps Nagle on by default, "
            "so its wall-clock rate is latency-bound rather than CPU-bound: compare "
            "handshakes per broker CPU-second.",
        ),
        Scenario(
            "security",
            "fan_in with security off (plain TCP, anonymous, relaxed limits) and on (TLS 1.3, "
            "passwords, ACL, Bastion's default limits)",
            run_security,
            (
                Metric("delivered msgs/s, security off", "delivered_per_s_off"),
                Metric("delivered msgs/s, security on", "delivered_per_s_on"),
                Metric("slowdown on vs off (%)", "slowdown_pct", "pct", False),
                Metric("delivered per broker CPU-second, off", "delivered_per_broker_cpu_s_off"),
                Metric("delivered per broker CPU-second, on", "delivered_per_broker_cpu_s_on"),
                Metric("slowdown per broker CPU-second (%)", "slowdown_per_cpu_pct", "pct", False),
                Metric("time to connect all clients, on (s)", "connect_s_on", "s"),
                Metric(
                    "broker CPU / generator CPU, on (cores)",
                    "broker_cpu_share_on",
                    "cpu",
                    False,
                    "generator_cpu_share_on",
                ),
            ),
            ("delivered_per_s_off", "delivered_per_s_on"),
            SECURITY_NOTE,
            security_slowdown,
        ),
        Scenario(
            "flood",
            "a client publishing 50 msgs/s QoS 0 to a topic it subscribes to, alone and while "
            "another client floods QoS 0 PUBLISH (a third subscribes to the flood)",
            run_flood,
            (
                Metric("probe p99 alone (ms)", "p99_ms_alone", "ms"),
                Metric("probe p99 under flood (ms)", "p99_ms_flood", "ms"),
                Metric("flood offered msgs/s", "flood_offered_per_s"),
                Metric("flood delivered msgs/s", "flood_delivered_per_s"),
            ),
            ("probe_received_alone", "probe_received_flood", "flood_delivered_per_s"),
            "flood: both phases on the same fresh broker. Bastion runs with its DEFAULT [limits] "
            "(1,000 msgs/s, burst 2,000 per client, throttle: it stops reading from the "
            "flooder); Mosquitto has no per-client limiter. Offered = what the flooder's socket "
            "took, so it follows the broker's read rate. Probe, flooder and sink share the "
            "generator core(s): part of the p99 under flood is generator-side scheduling.",
        ),
    )
}
