"""Bastion and Mosquitto side by side: throughput scenarios, medians of repeats, ratios.

For each scenario and repeat, starts a fresh broker (Bastion via ``python -m bastion serve``,
Debian's ``mosquitto`` with an equivalent configuration; the order alternates), drives it with
``loadgen.py`` worker processes, and prints one JSON line per (scenario, broker) and a Markdown
table; both go to ``benchmarks/results/<date>-<host>.{json,md}``. Loopback only; stops only
the processes it started.

    python benchmarks/run.py [--quick] [--scenarios fan_in,fan_out,qos1] [--repeat 3]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loadgen
from loadgen import PublisherSpec, SubscriberSpec, WorkerPlan

ROOT: Final = Path(__file__).resolve().parent.parent
RESULTS_DIR: Final = ROOT / "benchmarks" / "results"
HOST: Final = loadgen.HOST
START_TIMEOUT: Final = 20.0
STOP_TIMEOUT: Final = 10.0
PAYLOAD_SIZE: Final = 64
BROKERS: Final = ("bastion", "mosquitto")

RELAXED_NOTE: Final = (
    "Bastion runs with allow_anonymous = true and its per-client publish budget and per-IP "
    "connection limits raised to effectively unlimited ([limits] in the generated TOML) so "
    "its rate limiter does not cap the benchmark; Mosquitto has no such limits. Both: "
    "max_inflight_messages 32, max_queued_messages 1000, max_queued_bytes 16 MiB, "
    "max_packet_size 1 MiB, no persistence. Mosquitto keeps its default set_tcp_nodelay "
    "false (Nagle on); Bastion's transports set TCP_NODELAY."
)

BASTION_TOML: Final = """\
[[listeners]]
host = "127.0.0.1"
port = {port}

[security]
allow_anonymous = true

[mqtt]
max_inflight_messages = 32
max_queued_messages = 1000
max_queued_bytes = 16777216
max_packet_size = 1048576

[limits]
client = {{ messages_per_second = 1e9, burst_messages = 1e9, bytes_per_second = 1e12, \
burst_bytes = 1e12 }}
connections_per_second_per_ip = 1e6
connection_burst_per_ip = 1e6
max_connections_per_ip = 100000
flap_connects_per_client = 1000000
flap_connects_per_ip = 1000000

[logging]
level = "warning"
format = "json"
"""

MOSQUITTO_CONF: Final = """\
listener {port} 127.0.0.1
allow_anonymous true
persistence false
max_inflight_messages 32
max_queued_messages 1000
max_queued_bytes 16777216
max_packet_size 1048576
log_dest stderr
log_type error
log_type warning
"""

# ---------------------------------------------------------------------------------- scenarios


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    description: str
    publishers: Callable[[], list[PublisherSpec]]
    subscribers: Callable[[], list[SubscriberSpec]]
    delivered_label: str  # what the delivered count means
    accepted_label: str  # what the accepted count means
    accepted_from_reads: bool  # QoS 0: broker's bytes read / PUBLISH size; QoS 1: PUBACKs

    def publish_size(self) -> float:
        """Mean size of the scenario's PUBLISH packets, in bytes."""
        payload = bytes(PAYLOAD_SIZE)
        sizes = [len(loadgen.publish_packet(p.topic, payload, p.qos, 1)) for p in self.publishers()]
        return sum(sizes) / len(sizes)


SCENARIOS: Final = {
    s.name: s
    for s in (
        Scenario(
            "fan_in",
            "50 publishers QoS 0 (64-byte payloads, sensors/<i>/temp, flooding), "
            "1 subscriber on sensors/#",
            lambda: [PublisherSpec(f"pub-{i}", f"sensors/{i}/temp") for i in range(50)],
            lambda: [SubscriberSpec("sub-0", "sensors/#")],
            "delivered msgs/s",
            "accepted msgs/s",
            True,
        ),
        Scenario(
            "fan_out",
            "1 publisher QoS 0 (64-byte payloads, flooding), 100 subscribers on the same topic",
            lambda: [PublisherSpec("pub-0", "fanout/topic")],
            lambda: [SubscriberSpec(f"sub-{i}", "fanout/topic") for i in range(100)],
            "deliveries/s",
            "accepted msgs/s",
            True,
        ),
        Scenario(
            "qos1",
            "10 publishers QoS 1, 10 messages in flight each (64 bytes), 1 QoS 1 subscriber",
            lambda: [
                PublisherSpec(f"pub-{i}", f"qos1/{i}", qos=1, in_flight=10) for i in range(10)
            ],
            lambda: [SubscriberSpec("sub-0", "qos1/#", qos=1)],
            "delivered msgs/s",
            "accepted (PUBACKed) msgs/s",
            False,
        ),
    )
}


def plans_for(
    scenario: Scenario, port: int, workers: int, warmup: float, duration: float
) -> list[WorkerPlan]:
    """Subscribers and publishers in separate processes (so the OS scheduler, not one event
    loop, shares the generator's CPU between them), each role spread round-robin."""
    pubs = scenario.publishers()
    subs = scenario.subscribers()
    n_sub = max(1, min(len(subs), workers // 2))
    n_pub = max(1, min(len(pubs), workers - n_sub))
    plans = [
        WorkerPlan(port, (), tuple(subs[w::n_sub]), PAYLOAD_SIZE, warmup, duration)
        for w in range(n_sub)
    ]
    plans += [
        WorkerPlan(port, tuple(pubs[w::n_pub]), (), PAYLOAD_SIZE, warmup, duration)
        for w in range(n_pub)
    ]
    return plans


# ---------------------------------------------------------------------------------- brokers


@dataclass(eq=False, slots=True)
class BrokerProc:
    """A broker process this script started; only it is ever signalled."""

    kind: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]

    def log_tail(self, limit: int = 4000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text("utf-8", "replace")[-limit:]
        return "<no log>"

    def stop(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
        finally:
            self.log_file.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def mosquitto_exe() -> str:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(exe).exists():
        raise SystemExit("mosquitto is not installed (apt-get install mosquitto)")
    return exe


def start_broker(kind: str, workdir: Path, broker_cpus: set[int] | None) -> BrokerProc:
    port = free_port()
    if kind == "bastion":
        config = workdir / f"bastion-{port}.toml"
        config.write_text(BASTION_TOML.format(port=port))
        cmd = [sys.executable, "-m", "bastion", "serve", "-c", str(config)]
    else:
        config = workdir / f"mosquitto-{port}.conf"
        root = "user root\n" if os.geteuid() == 0 else ""
        config.write_text(MOSQUITTO_CONF.format(port=port) + root)
        cmd = [mosquitto_exe(), "-c", str(config)]
    log_path = workdir / f"{kind}-{port}.log"
    log_file = log_path.open("wb")
    own = os.sched_getaffinity(0)
    if broker_cpus:  # the child inherits the CPU set in effect when it is forked
        os.sched_setaffinity(0, broker_cpus)
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        os.sched_setaffinity(0, own)
    broker = BrokerProc(kind, port, proc, log_path, log_file)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            broker.stop()
            raise RuntimeError(f"{kind} exited with {proc.returncode}:\n{broker.log_tail()}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), 0.2):
            return broker
        time.sleep(0.05)
    broker.stop()
    raise RuntimeError(f"{kind} did not accept connections within {START_TIMEOUT}s")


# ---------------------------------------------------------------------------------- one run


@dataclass(frozen=True, slots=True)
class Sample:
    delivered_per_s: float  # PUBLISH packets received by the subscribers
    accepted_per_s: float  # taken in by the broker (see Scenario.accepted_from_reads)
    offered_per_s: float  # QoS 0: written by the generator; QoS 1: PUBACKs received
    broker_cpu_share: float  # broker CPU seconds per wall second in the window
    generator_cpu_share: float  # all workers' CPU seconds per wall second
    delivered_per_broker_cpu_s: float
    clients: int
    lost: int  # connections the broker closed during the run


def run_once(
    kind: str,
    scenario: Scenario,
    *,
    workdir: Path,
    workers: int,
    warmup: float,
    duration: float,
    cpus: tuple[set[int] | None, set[int] | None],
) -> Sample:
    broker = start_broker(kind, workdir, cpus[0])
    try:
        if cpus[1]:
            os.sched_setaffinity(0, cpus[1])  # forked workers inherit the generator's cores
        group = loadgen.start_workers(plans_for(scenario, broker.port, workers, warmup, duration))
        try:
            clients = loadgen.wait_ready(group, 60.0)
        except BaseException:
            loadgen.stop_workers(group)
            raise
        go = time.monotonic() + 0.2
        loadgen.release(group, go)
        pids = [p.pid for p in group.procs if p.pid is not None]
        time.sleep(max(0.0, go + warmup - time.monotonic()))
        r0 = loadgen.bytes_read(broker.proc.pid)
        b0, g0, w0 = loadgen.cpu_seconds(broker.proc.pid), _cpu(pids), time.monotonic()
        time.sleep(max(0.0, go + warmup + duration - time.monotonic()))
        b1, g1, w1 = loadgen.cpu_seconds(broker.proc.pid), _cpu(pids), time.monotonic()
        r1 = loadgen.bytes_read(broker.proc.pid)
        results = loadgen.collect(group, 30.0)  # the window is over: workers only wrap up
        if broker.proc.poll() is not None:
            raise RuntimeError(f"{kind} died during {scenario.name}:\n{broker.log_tail()}")
    finally:
        broker.stop()
    errors = [e for r in results for e in r.errors]
    if errors:
        raise RuntimeError(f"{kind} {scenario.name}: load generator errors: {errors}")
    delivered = sum(r.delivered for r in results)
    delivered_rate = sum(r.delivered / (r.t1 - r.t0) for r in results)
    offered_rate = sum(r.published / (r.t1 - r.t0) for r in results)
    wall = w1 - w0
    broker_cpu = b1 - b0
    return Sample(
        delivered_per_s=delivered_rate,
        accepted_per_s=(
            (r1 - r0) / (w1 - w0) / scenario.publish_size()
            if scenario.accepted_from_reads
            else offered_rate
        ),
        offered_per_s=offered_rate,
        broker_cpu_share=broker_cpu / wall,
        generator_cpu_share=(g1 - g0) / wall,
        delivered_per_broker_cpu_s=delivered / broker_cpu if broker_cpu > 0 else 0.0,
        clients=clients,
        lost=sum(r.lost for r in results),
    )


def _cpu(pids: Sequence[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += loadgen.cpu_seconds(pid)
    return total


# ---------------------------------------------------------------------------------- report


def machine() -> dict[str, object]:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError), open("/proc/meminfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
                break
    return {
        "host": socket.gethostname(),
        "cores": os.cpu_count(),
        "cpu_model": model,
        "ram_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
    }


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("bastion", "uvloop"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip()
        if commit:
            out["bastion_commit"] = commit
    with contextlib.suppress(OSError, subprocess.SubprocessError, SystemExit):
        text = subprocess.run(
            [mosquitto_exe(), "-h"], capture_output=True, text=True, timeout=5, check=False
        ).stdout
        out["mosquitto"] = text.splitlines()[0].removeprefix("mosquitto version ").strip()
    return out


def _fmt(x: float) -> str:
    return f"{x:,.0f}"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "n/a"


def markdown(rows: list[dict[str, object]], meta: dict[str, object]) -> str:
    by = {(str(r["scenario"]), str(r["broker"])): r for r in rows}
    m = meta["machine"]
    v = meta["versions"]
    assert isinstance(m, dict) and isinstance(v, dict)
    lines = [
        f"Measured {meta['date']} on {m['host']}: {m['cores']} cores ({m['cpu_model']}), "
        f"{m['ram_gib']} GiB RAM, Linux {m['kernel']}; Python {v['python']}, "
        f"uvloop {v['uvloop']}, Bastion {v['bastion']} ({v.get('bastion_commit', '?')}), "
        f"Mosquitto {v.get('mosquitto', '?')}. {meta['mode']}; medians of {meta['repeat']} "
        f"run(s) of {meta['duration']} s after {meta['warmup']} s warm-up, fresh broker per run, "
        f"order alternated. {meta['pinning']}",
        "",
        "| scenario | metric | Bastion | Mosquitto | Bastion/Mosquitto |",
        "|---|---|---:|---:|---:|",
    ]
    for name in meta["scenarios"]:  # type: ignore[attr-defined]
        scenario = SCENARIOS[name]
        b, q = by.get((name, "bastion")), by.get((name, "mosquitto"))
        if b is None or q is None:
            continue
        metrics = [
            (scenario.delivered_label, "delivered_per_s"),
            (scenario.accepted_label, "accepted_per_s"),
            ("delivered per broker CPU-second", "delivered_per_broker_cpu_s"),
        ]
        for label, key in metrics:
            bv, qv = float(b[key]), float(q[key])  # type: ignore[arg-type]
            lines.append(f"| {name} | {label} | {_fmt(bv)} | {_fmt(qv)} | {_ratio(bv, qv)} |")
        lines.append(
            f"| {name} | broker CPU / generator CPU (cores) | "
            f"{float(b['broker_cpu_share']):.2f} / {float(b['generator_cpu_share']):.2f} | "  # type: ignore[arg-type]
            f"{float(q['broker_cpu_share']):.2f} / {float(q['generator_cpu_share']):.2f} | |"  # type: ignore[arg-type]
        )
    lines += ["", RELAXED_NOTE]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------- main


def pinning() -> tuple[set[int] | None, set[int] | None, str]:
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return None, None, "Not pinned (one core)."
    broker, gen = {cores[0]}, set(cores[1:])
    return broker, gen, f"Broker pinned to core {cores[0]}, generator to cores {sorted(gen)}."


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="~2 s per scenario, 1 repeat")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--repeat", type=int, default=None, help="runs per broker (default 3)")
    parser.add_argument("--duration", type=float, default=None, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=None, help="seconds before measuring")
    parser.add_argument("--workers", type=int, default=None, help="generator processes")
    parser.add_argument("--brokers", default=",".join(BROKERS))
    parser.add_argument("--no-save", action="store_true", help="do not write results/")
    parser.add_argument("--keep-logs", type=Path, default=None, help="broker configs and logs")
    args = parser.parse_args(argv)

    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    brokers = [b.strip() for b in args.brokers.split(",") if b.strip()]
    if unknown or not names or any(b not in BROKERS for b in brokers) or not brokers:
        parser.error(f"scenarios: {', '.join(SCENARIOS)}; brokers: {', '.join(BROKERS)}")
    repeat = max(1, min(args.repeat or (1 if args.quick else 3), 20))
    duration = min(args.duration or (2.0 if args.quick else 8.0), 600.0)
    warmup = min(args.warmup if args.warmup is not None else (0.5 if args.quick else 1.0), 60.0)
    broker_cpus, gen_cpus, pin_text = pinning()
    workers = max(1, min(args.workers or max(2, len(gen_cpus or {0})), 16))
    print(f"# {RELAXED_NOTE}", file=sys.stderr, flush=True)
    print(f"# {pin_text} {workers} generator worker process(es).", file=sys.stderr, flush=True)

    started = versions()  # before the runs: the commit the broker under test was started from
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="bastion-bench-") as scratch:
        tmp = args.keep_logs or scratch
        Path(tmp).mkdir(parents=True, exist_ok=True)
        for s_index, name in enumerate(names):
            samples: dict[str, list[Sample]] = {b: [] for b in brokers}
            for r in range(repeat):
                order = brokers if (s_index + r) % 2 == 0 else brokers[::-1]
                for kind in order:
                    sample = run_once(
                        kind,
                        SCENARIOS[name],
                        workdir=Path(tmp),
                        workers=workers,
                        warmup=warmup,
                        duration=duration,
                        cpus=(broker_cpus, gen_cpus),
                    )
                    samples[kind].append(sample)
                    print(f"# {name} {kind} run {r + 1}/{repeat}: {sample}", file=sys.stderr)
            for kind in brokers:
                row = summarise(name, kind, samples[kind])
                rows.append(row)
                print(json.dumps(row), flush=True)

    meta: dict[str, object] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "versions": started,
        "mode": "quick mode" if args.quick else "default mode",
        "repeat": repeat,
        "duration": duration,
        "warmup": warmup,
        "workers": workers,
        "pinning": pin_text,
        "scenarios": names,
        "note": RELAXED_NOTE,
    }
    table = markdown(rows, meta) if set(brokers) == set(BROKERS) else ""
    print(table)
    if not args.no_save:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        stem = f"{dt.datetime.now(dt.UTC):%Y-%m-%d}-{socket.gethostname()}"
        stem += "-quick" if args.quick else ""  # a smoke run never replaces a full one
        (RESULTS_DIR / f"{stem}.json").write_text(
            json.dumps({"meta": meta, "results": rows}, indent=2) + "\n"
        )
        (RESULTS_DIR / f"{stem}.md").write_text(table)
        print(f"# wrote {RESULTS_DIR / stem}.json and .md", file=sys.stderr)
    return 0


def summarise(name: str, kind: str, samples: list[Sample]) -> dict[str, object]:
    def med(key: str) -> float:
        return round(float(statistics.median(getattr(s, key) for s in samples)), 3)

    return {
        "scenario": name,
        "broker": kind,
        "description": SCENARIOS[name].description,
        "delivered_per_s": med("delivered_per_s"),
        "accepted_per_s": med("accepted_per_s"),
        "offered_per_s": med("offered_per_s"),
        "delivered_per_broker_cpu_s": med("delivered_per_broker_cpu_s"),
        "broker_cpu_share": med("broker_cpu_share"),
        "generator_cpu_share": med("generator_cpu_share"),
        "clients": samples[0].clients,
        "connections_lost": [s.lost for s in samples],
        "runs": len(samples),
        "delivered_per_s_runs": [round(s.delivered_per_s) for s in samples],
    }


if __name__ == "__main__":
    sys.exit(main())
