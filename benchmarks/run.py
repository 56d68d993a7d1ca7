"""Bastion and Mosquitto side by side: throughput, latency, connections, TLS, security, flood.

For each scenario and repeat, starts a fresh broker (Bastion via ``python -m bastion serve``,
Debian's ``mosquitto`` with an equivalent configuration; the order alternates), drives it with
``loadgen.py`` / ``probes.py`` worker processes, and prints one JSON line per (scenario,
broker) with the medians of the repeats, and a Markdown table with the Bastion/Mosquitto
ratios; both go to ``benchmarks/results/<date>-<host>.{json,md}`` (``-quick`` added in quick
mode). The broker is pinned to the first core, the generator to the others. Loopback only;
stops only the processes it started, by PID.

Scenarios (``scenarios.py`` has the details):

* ``fan_in``, ``fan_out``, ``qos1``: throughput (delivered and accepted msgs/s, per broker
  CPU-second).
* ``qos1_durable``: qos1 with a durable subscriber (clean session 0) and persistence on
  (Bastion ``[storage]`` with sync "full" and group commit, Mosquitto ``persistence true``),
  each broker start in a fresh data directory; also each broker's ratio to its own qos1 rate
  when qos1 is in the same run, its disk writes and its data directory's size.
* ``latency``: one publisher at a paced 1,000 msgs/s, one subscriber: p50/p99/p99.9 ms.
* ``connections``: 5,000 idle clients (500 with ``--quick``; ``--connections N``): time to
  connect them all and broker RSS per connection.
* ``tls``: repeated TLS 1.3 handshake + CONNECT/CONNACK/DISCONNECT: per second and per broker
  CPU-second.
* ``security``: fan_in with security off and on (TLS 1.3, passwords, ACL, Bastion's default
  limits): the slowdown in percent.
* ``flood``: a 50 msgs/s client's p99 latency alone and while another client floods (Bastion
  with its default rate limits).

``--profile`` runs Bastion alone under cProfile (``python -m cProfile -o FILE -m bastion
serve``; SIGTERM makes Bastion exit 0, so the statistics get written) and writes, per scenario,
``benchmarks/results/profiles/<scenario>.pstats`` (the repeats merged; the security scenario
writes ``security.pstats`` for security on and ``security-off.pstats``) and ``<scenario>.txt``
with the top 30 functions by tottime and by cumtime. Profiled figures are not comparable, so
that mode writes no results JSON or table.

    python benchmarks/run.py [--quick] [--scenarios fan_in,latency,...] [--repeat 3]
    python benchmarks/run.py --profile --scenarios fan_in,tls
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loadgen
from brokers import BROKERS, RELAXED_NOTE, Materials
from report import machine, markdown, relate, summarise, versions, write_profiles
from scenarios import SCENARIOS, TLS_CLIENTS_PER_WORKER, Bench, Sample

ROOT: Final = Path(__file__).resolve().parent.parent
RESULTS_DIR: Final = ROOT / "benchmarks" / "results"
CONNECTIONS: Final = 5000
QUICK_CONNECTIONS: Final = 500
NOISE_WARNING: Final = 0.2  # cores used by other processes during a window


def pinning() -> tuple[set[int] | None, set[int] | None, str]:
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return None, None, "Not pinned (one core)."
    broker, gen = {cores[0]}, set(cores[1:])
    return broker, gen, f"Broker pinned to core {cores[0]}, generator to cores {sorted(gen)}."


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="~2 s per scenario, 1 repeat")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--repeat", type=int, default=None, help="runs per broker (default 3)")
    parser.add_argument("--duration", type=float, default=None, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=None, help="seconds before measuring")
    parser.add_argument("--workers", type=int, default=None, help="generator processes")
    parser.add_argument("--connections", type=int, default=None, help="idle clients (5000)")
    parser.add_argument("--brokers", default=None, help="default: bastion,mosquitto")
    parser.add_argument("--no-save", action="store_true", help="do not write results/")
    parser.add_argument("--keep-logs", type=Path, default=None, help="broker configs and logs")
    parser.add_argument("--profile", action="store_true", help="Bastion under cProfile")
    parser.add_argument(
        "--profile-dir", type=Path, default=RESULTS_DIR / "profiles", help="for --profile"
    )
    args = parser.parse_args(argv)
    args.names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    default_brokers = "bastion" if args.profile else ",".join(BROKERS)
    args.broker_list = [b.strip() for b in (args.brokers or default_brokers).split(",")]
    unknown = [n for n in args.names if n not in SCENARIOS]
    if (
        unknown
        or not args.names
        or not args.broker_list
        or not set(args.broker_list) <= set(BROKERS)
    ):
        parser.error(f"scenarios: {', '.join(SCENARIOS)}; brokers: {', '.join(BROKERS)}")
    if args.profile and args.broker_list != ["bastion"]:
        parser.error("--profile runs Bastion only (profiled figures are not comparable)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    repeat = max(1, min(args.repeat or (1 if args.quick else 3), 20))
    duration = min(args.duration or (2.0 if args.quick else 8.0), 600.0)
    warmup = min(args.warmup if args.warmup is not None else (0.5 if args.quick else 1.0), 60.0)
    connections = max(
        1, min(args.connections or (QUICK_CONNECTIONS if args.quick else CONNECTIONS), 50_000)
    )
    broker_cpus, gen_cpus, pin_text = pinning()
    workers = max(1, min(args.workers or max(2, len(gen_cpus or {0})), 16))
    nofile = loadgen.raise_nofile()  # brokers and generator workers inherit it
    params = {"connections": connections, "tls_clients": TLS_CLIENTS_PER_WORKER * workers}
    print(f"# {RELAXED_NOTE}", file=sys.stderr, flush=True)
    print(
        f"# {pin_text} {workers} generator worker process(es). RLIMIT_NOFILE {nofile}.",
        file=sys.stderr,
        flush=True,
    )

    started = versions()  # before the runs: the commit the broker under test was started from
    rows: list[dict[str, object]] = []
    unprinted: list[dict[str, object]] = []  # rows waiting for their baseline scenario
    with tempfile.TemporaryDirectory(prefix="bastion-bench-") as scratch:
        tmp = Path(args.keep_logs or scratch).resolve()
        tmp.mkdir(parents=True, exist_ok=True)
        bench = Bench(
            workdir=tmp,
            materials=Materials(tmp / "materials"),
            workers=workers,
            warmup=warmup,
            duration=duration,
            cpus=(broker_cpus, gen_cpus),
            connections=connections,
            quick=args.quick,
            profile_dir=tmp / "profile-runs" if args.profile else None,
        )
        for s_index, name in enumerate(args.names):
            samples: dict[str, list[Sample]] = {b: [] for b in args.broker_list}
            for r in range(repeat):
                order = args.broker_list if (s_index + r) % 2 == 0 else args.broker_list[::-1]
                for kind in order:
                    began = time.monotonic()
                    sample = SCENARIOS[name].run(bench, kind, r)
                    samples[kind].append(sample)
                    shown = {k: round(v, 3) for k, v in sample.items()}
                    took = time.monotonic() - began
                    print(
                        f"# {name} {kind} run {r + 1}/{repeat} ({took:.1f} s): {shown}",
                        file=sys.stderr,
                    )
                    noise = max(
                        (v for k, v in sample.items() if k.startswith("other_cpu")), default=0
                    )
                    if noise > NOISE_WARNING:
                        print(
                            f"# warning: other processes used {noise:.2f} cores during that run",
                            file=sys.stderr,
                        )
            for kind in args.broker_list:
                row = summarise(name, kind, samples[kind], params)
                rows.append(row)
                unprinted.append(row)
            relate(rows)
            later = set(args.names[s_index + 1 :])
            for row in [
                r for r in unprinted if SCENARIOS[str(r["scenario"])].baseline not in later
            ]:
                print(json.dumps(row), flush=True)
                unprinted.remove(row)
        if args.profile:
            for path in write_profiles(bench.profiles, args.profile_dir):
                print(f"# wrote {path}", file=sys.stderr)
            return 0

    meta: dict[str, object] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "versions": started,
        "mode": "quick mode" if args.quick else "default mode",
        "quick": args.quick,
        "repeat": repeat,
        "duration": duration,
        "warmup": warmup,
        "workers": workers,
        "pinning": pin_text,
        "rlimit_nofile": nofile,
        "scenarios": args.names,
        "params": params,
        "note": RELAXED_NOTE,
    }
    table = markdown(rows, meta) if set(args.broker_list) == set(BROKERS) else ""
    print(table)
    if not args.no_save:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        stem = f"{dt.datetime.now(dt.UTC):%Y-%m-%d}-{socket.gethostname()}"
        stem += "-quick" if args.quick else ""  # a smoke run never replaces a full one
        if args.names != list(SCENARIOS):  # nor does a run of some scenarios
            stem += "-" + "-".join(args.names)
        (RESULTS_DIR / f"{stem}.json").write_text(
            json.dumps({"meta": meta, "results": rows}, indent=2) + "\n"
        )
        (RESULTS_DIR / f"{stem}.md").write_text(table)
        print(f"# wrote {RESULTS_DIR / stem}.json and .md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
